//! Table tests of version rules as data: each rule, each path.

#![allow(clippy::unwrap_used)]

mod common;

use baton_planner::preflight::{ArtifactVerdict, PreflightInput, preflight};
use baton_planner::version::{ETCD, Refusal, VersionRule, check, rule_for};
use baton_planner::{Policy, ReleaseRef, View};
use common::*;

type Row = (
    VersionRule,
    &'static str,
    &'static str,
    &'static str,
    Result<(), Refusal>,
);

#[test]
fn each_rule_on_each_path() {
    let lax = VersionRule::SemverOneMinor {
        no_major_change: false,
        not_below_cluster_version: false,
    };
    let fmt = VersionRule::FormatOnly;
    let table: Vec<Row> = vec![
        (fmt, "3.4.23", "3.7.0", "3.4.0", Ok(())),
        (fmt, "weird", "v9", "", Ok(())),
        (ETCD, "3.4.23", "3.5.1", "3.4.0", Ok(())),
        (ETCD, "v3.5.1", "v3.5.2", "3.5.0", Ok(())),
        (ETCD, "3.5.1", "3.4.23", "3.4.0", Ok(())),
        (ETCD, "3.5.1", "3.4.23", "", Ok(())),
        (
            ETCD,
            "3.4.23",
            "3.6.0",
            "3.4.0",
            Err(Refusal::SkipsMinor {
                from: "3.4.23".into(),
                to: "3.6.0".into(),
                major: 3,
                skipped: 5,
            }),
        ),
        (
            ETCD,
            "3.5.1",
            "3.4.23",
            "3.5.0",
            Err(Refusal::BelowClusterVersion {
                cluster: "3.5.0".into(),
                major: 3,
                minor: 5,
                to: "3.4.23".into(),
            }),
        ),
        (
            ETCD,
            "3.5.1",
            "4.0.0",
            "3.5.0",
            Err(Refusal::MajorChange {
                from: "3.5.1".into(),
                to: "4.0.0".into(),
            }),
        ),
        (
            ETCD,
            "weird",
            "3.5.1",
            "3.4.0",
            Err(Refusal::Unreadable {
                from: "weird".into(),
                to: "3.5.1".into(),
            }),
        ),
        (lax, "3.5.1", "3.4.23", "3.5.0", Ok(())),
        (lax, "3.5.1", "4.0.0", "3.5.0", Ok(())),
        (
            lax,
            "3.4.1",
            "3.6.0",
            "",
            Err(Refusal::SkipsMinor {
                from: "3.4.1".into(),
                to: "3.6.0".into(),
                major: 3,
                skipped: 5,
            }),
        ),
    ];
    for (rule, from, to, cluster, want) in table {
        assert_eq!(
            check(&rule, from, to, cluster),
            want,
            "{rule:?} {from} -> {to} (cluster {cluster})"
        );
    }
}

#[test]
fn an_agent_that_states_no_rule_gets_the_rule_inferred_as_before() {
    let view = cluster(&[("n1", L, 100)]);
    let mut report = view.members[&id("n1")].report.clone().unwrap();
    assert_eq!(rule_for(None, &report), VersionRule::FormatOnly);
    report.state.cluster_version = "3.5.0".into();
    assert_eq!(rule_for(None, &report), ETCD);
    assert_eq!(
        rule_for(Some(VersionRule::FormatOnly), &report),
        VersionRule::FormatOnly
    );
}

fn etcd_view(rule: Option<VersionRule>) -> View {
    let mut view = cluster(&[("n1", L, 100), ("n2", F, 100)]);
    for v in view.members.values_mut() {
        let r = v.report.as_mut().unwrap();
        r.state.release = "3.4.23".into();
        r.state.cluster_version = "3.4.0".into();
        v.version_rule = rule;
    }
    view
}

fn version_checks(view: &View, to: &str) -> Vec<String> {
    let artifact = ArtifactVerdict::Verified {
        release: ReleaseRef {
            version: to.into(),
            ..target()
        },
        size: 1,
    };
    preflight(
        &PreflightInput {
            view,
            target_version: to,
            artifact: &artifact,
            required_disk: 0,
            coordinator_state_free: None,
            allow_mixed: false,
        },
        &Policy::default(),
    )
    .into_iter()
    .filter(|c| c.check == "version-path")
    .map(|c| c.detail)
    .collect()
}

#[test]
fn preflight_judges_each_member_by_the_rule_in_its_view() {
    let skip = "3.4.23 -> 3.6.0 skips minor release 3.5; upgrade one minor release at a time";
    for rule in [Some(ETCD), None] {
        assert_eq!(
            version_checks(&etcd_view(rule), "3.6.0"),
            vec![format!("member n1: {skip}"), format!("member n2: {skip}")],
            "{rule:?}"
        );
        assert_eq!(
            version_checks(&etcd_view(rule), "3.5.1"),
            Vec::<String>::new()
        );
    }
    assert_eq!(
        version_checks(&etcd_view(Some(VersionRule::FormatOnly)), "3.6.0"),
        Vec::<String>::new(),
        "a format-only adapter has no version path rule"
    );
    // A member that cannot be read reports no release: the health check names it.
    let down = with_down(etcd_view(Some(ETCD)), "n2");
    let down = {
        let mut v = down;
        v.members
            .get_mut(&id("n2"))
            .unwrap()
            .report
            .as_mut()
            .unwrap()
            .state
            .release = String::new();
        v
    };
    assert_eq!(
        version_checks(&down, "3.6.0"),
        vec![format!("member n1: {skip}")]
    );
}
