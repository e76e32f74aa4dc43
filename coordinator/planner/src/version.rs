//! Version rules as data: which release a member may move to from the one
//! it runs.
//!
//! Each adapter states its [`VersionRule`] in its agent's Hello; this module
//! owns what the rules mean ([`check`]) and the rule assumed for an agent
//! too old to state one ([`rule_for`]). The data-format rule, which holds
//! for every adapter, is preflight's own check.

use baton_domain::Report;
pub use baton_domain::VersionRule;

/// Why a version path is refused. The texts name the rule and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("cannot read the version path from {from:?} to {to:?}; refusing rather than guessing")]
    Unreadable { from: String, to: String },
    #[error(
        "the cluster version is {major}.{minor} ({cluster}), so {to} would be a downgrade below it: once every member ran {major}.{minor} the cluster may write data {to} cannot read; roll forward instead"
    )]
    BelowClusterVersion {
        cluster: String,
        major: u64,
        minor: u64,
        to: String,
    },
    #[error("{from} -> {to} changes the major version; upgrade one minor release at a time")]
    MajorChange { from: String, to: String },
    #[error(
        "{from} -> {to} skips minor release {major}.{skipped}; upgrade one minor release at a time"
    )]
    SkipsMinor {
        from: String,
        to: String,
        major: u64,
        skipped: u64,
    },
}

/// etcd's rule: one minor release at a time, no major change, never below
/// the cluster version.
pub const ETCD: VersionRule = VersionRule::SemverOneMinor {
    no_major_change: true,
    not_below_cluster_version: true,
};

/// `major.minor` of a version like `3.4.23` or `v3.5.0`.
fn major_minor(v: &str) -> Option<(u64, u64)> {
    let mut it = v.trim_start_matches('v').split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Whether `rule` lets a member on release `from` move to `to`, given the
/// cluster-wide version it reports (empty, or unreadable, if none).
pub fn check(
    rule: &VersionRule,
    from: &str,
    to: &str,
    cluster_version: &str,
) -> Result<(), Refusal> {
    let VersionRule::SemverOneMinor {
        no_major_change,
        not_below_cluster_version,
    } = *rule
    else {
        return Ok(());
    };
    let (Some(cur), Some(tgt)) = (major_minor(from), major_minor(to)) else {
        return Err(Refusal::Unreadable {
            from: from.to_owned(),
            to: to.to_owned(),
        });
    };
    if not_below_cluster_version
        && let Some(cl) = major_minor(cluster_version)
        && tgt < cl
    {
        return Err(Refusal::BelowClusterVersion {
            cluster: cluster_version.to_owned(),
            major: cl.0,
            minor: cl.1,
            to: to.to_owned(),
        });
    }
    if tgt.0 != cur.0 {
        if no_major_change {
            return Err(Refusal::MajorChange {
                from: from.to_owned(),
                to: to.to_owned(),
            });
        }
        // A new major may follow; minors count from there.
        return Ok(());
    }
    if tgt.1 > cur.1 + 1 {
        return Err(Refusal::SkipsMinor {
            from: from.to_owned(),
            to: to.to_owned(),
            major: cur.0,
            skipped: cur.1 + 1,
        });
    }
    Ok(())
}

/// What still keeps a cluster that runs `target` everywhere from being done,
/// by `rule`: for a rule that keeps the cluster-wide version (etcd's), a
/// cluster version below the target's `major.minor` (etcd moves it a few
/// seconds after the last member upgrades; until then a downgrade would
/// still be allowed). None when nothing is left.
pub fn post_check(rule: &VersionRule, target: &str, cluster_version: &str) -> Option<String> {
    let VersionRule::SemverOneMinor {
        not_below_cluster_version: true,
        ..
    } = *rule
    else {
        return None;
    };
    let tgt = major_minor(target)?;
    match major_minor(cluster_version) {
        Some(cl) if cl >= tgt => None,
        Some(_) => Some(format!(
            "cluster version {cluster_version} has not reached {}.{} yet",
            tgt.0, tgt.1
        )),
        None => Some(format!(
            "cluster version {cluster_version:?} is not readable yet (waiting for {}.{})",
            tgt.0, tgt.1
        )),
    }
}

/// Why etcd's rule ([`ETCD`]) refuses going from `current` to `target`,
/// given the cluster-wide version, or None when the path is allowed.
pub fn version_path(current: &str, target: &str, cluster: &str) -> Option<String> {
    check(&ETCD, current, target, cluster)
        .err()
        .map(|r| r.to_string())
}

/// The rule a member's path is judged by: the one its agent stated, or for
/// an agent too old to state one, the rule inferred from its report as
/// before rules were data: etcd's when it reports a cluster version, else
/// only the data format.
pub fn rule_for(stated: Option<VersionRule>, report: &Report) -> VersionRule {
    stated.unwrap_or(if report.state.cluster_version.is_empty() {
        VersionRule::FormatOnly
    } else {
        ETCD
    })
}
