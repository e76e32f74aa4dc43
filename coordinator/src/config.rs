//! The coordinator's configuration: TOML once at start, environment
//! overrides, validated into [`CoordinatorConfig`]. A bad config names the
//! key; `main` turns it into exit 64. Nothing else reads the environment.
//!
//! The root config is built from the subsystems' own sections, each parsed
//! and validated by the subsystem that owns it ([`crate::alerts::config`]
//! for `[alerting]`); this module owns the top-level keys, `[tls]`,
//! `[operators]`, `[store]` and `[policy]`, and imports no subsystem that imports it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_domain::MemberId;
use baton_planner::Policy;
use baton_planner::policy::{BackupPolicy, OnStall};
use serde::Deserialize;

pub use baton_store::config::StoreConfig;
use baton_store::config::StoreSection;

use crate::access::Role;
use crate::alerts::config::{AlertingConfig, AlertingConfigError, RawAlerting};

/// A config problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML for the coordinator: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}` is invalid: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error(transparent)]
    Alerting(#[from] AlertingConfigError),
    #[error("environment variable {var} (overrides `{key}`) is invalid: {reason}")]
    Env {
        var: &'static str,
        key: &'static str,
        reason: String,
    },
    /// The `[store]` section; its message names the key.
    #[error(transparent)]
    Store(Box<baton_store::config::ConfigError>),
}

impl From<baton_store::config::ConfigError> for ConfigError {
    fn from(e: baton_store::config::ConfigError) -> Self {
        ConfigError::Store(Box::new(e))
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster_id: Option<String>,
    listen: Option<String>,
    heartbeat_ms: Option<u64>,
    members: Option<Vec<String>>,
    tls: Option<RawTls>,
    state_dir: Option<PathBuf>,
    release_name: Option<String>,
    /// The shared `[store]` section (`kind = "dir"` or `"s3"`).
    store: Option<toml::Table>,
    metrics_listen: Option<String>,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    alerting: RawAlerting,
    replication: Option<RawReplication>,
    /// `[operators]`: each operator certificate's name, and its role.
    operators: Option<BTreeMap<String, String>>,
    /// `[tokens]`: bearer tokens by name, each `{ sha256, role }`.
    tokens: Option<BTreeMap<String, RawToken>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    sha256: String,
    role: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplication {
    id: u64,
    peers: BTreeMap<String, String>,
}

/// The journal's replicas (`[replication]`): this one's id and every
/// replica's address. Without the section, one replica (id 1) at `listen`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replication {
    pub id: u64,
    /// Every replica's address (`http://` or `https://`), by id.
    pub peers: BTreeMap<u64, String>,
}

/// How many replicas a journal may have: an even count survives no more
/// failures than one fewer, and more than five only slows every commit.
pub const REPLICA_COUNTS: [usize; 3] = [1, 3, 5];

fn replication(
    raw: Option<RawReplication>,
    listen: SocketAddr,
    tls: bool,
) -> Result<Replication, ConfigError> {
    let scheme = if tls { "https" } else { "http" };
    let Some(raw) = raw else {
        return Ok(Replication {
            id: 1,
            peers: BTreeMap::from([(1, format!("{scheme}://{listen}"))]),
        });
    };
    let mut peers = BTreeMap::new();
    for (id, addr) in raw.peers {
        let n: u64 = id.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            invalid(
                "replication.peers",
                format!("{id:?} is not a replica id (a whole number from 1)"),
            )
        })?;
        let rest = addr.strip_prefix(&format!("{scheme}://")).ok_or_else(|| {
            invalid(
                "replication.peers",
                format!(
                    "replica {n}'s address {addr:?} must start with {scheme}:// ({})",
                    if tls {
                        "[tls] is set"
                    } else {
                        "[tls] is not set"
                    }
                ),
            )
        })?;
        if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
            return Err(invalid(
                "replication.peers",
                format!("replica {n}'s address {addr:?} must be {scheme}://HOST:PORT"),
            ));
        }
        if let Some(why) = baton_net::addr::plaintext_refusal(&addr) {
            return Err(invalid("replication.peers", format!("replica {n}: {why}")));
        }
        if peers.values().any(|a| *a == addr) {
            return Err(invalid(
                "replication.peers",
                format!("{addr} is listed for two replicas"),
            ));
        }
        peers.insert(n, addr);
    }
    if !REPLICA_COUNTS.contains(&peers.len()) {
        return Err(invalid(
            "replication.peers",
            format!(
                "{} replicas listed; use 1, 3 or 5 (a majority must agree on every entry, so an even count survives no more failures than one fewer)",
                peers.len()
            ),
        ));
    }
    let own = peers.get(&raw.id).ok_or_else(|| {
        invalid(
            "replication.id",
            format!(
                "{} is not in replication.peers ({:?})",
                raw.id,
                peers.keys().collect::<Vec<_>>()
            ),
        )
    })?;
    if let Ok(addr) = own[scheme.len() + 3..].parse::<SocketAddr>()
        && addr.port() != listen.port()
    {
        return Err(invalid(
            "replication.peers",
            format!(
                "replica {}'s own address {own} is not where it listens ({listen})",
                raw.id
            ),
        ));
    }
    Ok(Replication { id: raw.id, peers })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    tolerable_lag: Option<u64>,
    max_unavailable: Option<usize>,
    stop_timeout_ms: Option<u64>,
    health_timeout_ms: Option<u64>,
    catchup_timeout_ms: Option<u64>,
    stall_after_ms: Option<u64>,
    handover_timeout_ms: Option<u64>,
    soak_ms: Option<u64>,
    on_stall: Option<String>,
    steady_stall_after_ms: Option<u64>,
    agent_down_after_ms: Option<u64>,
    start_retries: Option<u32>,
    allow_quorum_loss: Option<bool>,
    backup: Option<String>,
    backup_keep_days: Option<u64>,
    min_state_disk_free_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

/// Server TLS material (rustls via tonic).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA whose certificates clients must present: agents, operators
    /// and replica peers are known by them.
    pub client_ca: PathBuf,
}

impl TlsConfig {
    /// Every file `[tls]` names can be read: a missing or unreadable one is
    /// a bad config, named by its key, not a failure later at start.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        for (key, path) in [
            ("tls.cert", &self.cert),
            ("tls.key", &self.key),
            ("tls.client_ca", &self.client_ca),
        ] {
            if let Err(e) = std::fs::File::open(path) {
                return Err(invalid(
                    key,
                    format!(
                        "cannot read {}: {e}; point {key} at a PEM file the coordinator can read",
                        path.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A validated coordinator configuration.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub cluster: String,
    /// Where agents and operators connect (one gRPC server).
    pub listen: SocketAddr,
    /// The heartbeat agents are expected to keep; freshness is 3 of them.
    pub heartbeat: Duration,
    /// The cluster's members, in the operator's order.
    pub members: Vec<MemberId>,
    pub tls: Option<TlsConfig>,
    /// Where the rollout journal lives.
    pub state_dir: PathBuf,
    /// The release name in the artifact store.
    pub release_name: String,
    /// The artifact and backup store (`[store]`: a directory or an S3
    /// bucket); releases and backups both open from it.
    pub store: Option<StoreConfig>,
    /// Where `/metrics` is served (plain HTTP); None: not served.
    pub metrics_listen: Option<SocketAddr>,
    pub policy: Policy,
    /// How long a finalized rollout's pre-upgrade backup stays pinned
    /// (`policy.backup_keep_days`, default 7).
    pub backup_keep: Duration,
    /// Where alerts go (`[alerting]`); no sinks by default.
    pub alerting: AlertingConfig,
    /// The role of each operator, by the name in its certificate
    /// (`spiffe://<cluster>/operator/<name>`).
    pub operators: BTreeMap<String, Role>,
    /// The journal's replicas; one by default.
    pub replication: Replication,
    /// Bearer tokens by name: the sha256 of each (lowercase hex; the token
    /// itself is never in the config) and its role. Only over TLS.
    pub tokens: BTreeMap<String, (String, Role)>,
}

/// `policy.backup_keep_days` when unset: seven days.
pub const DEFAULT_BACKUP_KEEP: Duration = Duration::from_secs(7 * 86_400);

/// Environment variables that override keys.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("BATON_CLUSTER_ID", "cluster_id"),
    ("BATON_LISTEN", "listen"),
    ("BATON_HEARTBEAT_MS", "heartbeat_ms"),
    ("BATON_MEMBERS", "members"),
    ("BATON_METRICS_LISTEN", "metrics_listen"),
];

impl CoordinatorConfig {
    pub fn load(path: &Path, env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::from_toml(&text, path, env)?;
        if let Some(tls) = &config.tls {
            tls.check_files()?;
        }
        Ok(config)
    }

    pub fn from_toml(
        text: &str,
        path: &Path,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
        for (var, key) in ENV_OVERRIDES {
            let Some(value) = env.get(*var) else { continue };
            match *key {
                "cluster_id" => raw.cluster_id = Some(value.clone()),
                "listen" => raw.listen = Some(value.clone()),
                "metrics_listen" => raw.metrics_listen = Some(value.clone()),
                "heartbeat_ms" => {
                    raw.heartbeat_ms = Some(value.parse().map_err(|e| ConfigError::Env {
                        var,
                        key,
                        reason: format!("{e}"),
                    })?)
                }
                "members" => {
                    raw.members = Some(value.split(',').map(|s| s.trim().to_owned()).collect())
                }
                _ => {}
            }
        }
        let cluster = raw
            .cluster_id
            .ok_or_else(|| invalid("cluster_id", "missing"))?;
        if cluster.is_empty() {
            return Err(invalid("cluster_id", "empty"));
        }
        let listen: SocketAddr = raw
            .listen
            .as_deref()
            .unwrap_or("127.0.0.1:7400")
            .parse()
            .map_err(|e| invalid("listen", format!("{e}")))?;
        let heartbeat = Duration::from_millis(raw.heartbeat_ms.unwrap_or(1000));
        if !(Duration::from_millis(50)..=Duration::from_secs(60)).contains(&heartbeat) {
            return Err(invalid("heartbeat_ms", "must be between 50 and 60000"));
        }
        let raw_members = raw.members.ok_or_else(|| invalid("members", "missing"))?;
        if raw_members.is_empty() {
            return Err(invalid(
                "members",
                "empty: list every member of the cluster",
            ));
        }
        let mut members = Vec::new();
        for m in raw_members {
            let id = MemberId::new(m).map_err(|e| invalid("members", e.to_string()))?;
            if members.contains(&id) {
                return Err(invalid("members", format!("{id} is listed twice")));
            }
            members.push(id);
        }
        let tls = match raw.tls {
            None => None,
            Some(t) => Some(TlsConfig {
                cert: t.cert,
                key: t.key,
                client_ca: t.client_ca.ok_or_else(|| {
                    invalid(
                        "tls.client_ca",
                        "agents, operators and replica peers are known by their client certificates, so [tls] needs the CA that signs them; set it",
                    )
                })?,
            }),
        };
        if tls.is_none() && !listen.ip().is_loopback() {
            return Err(invalid(
                "listen",
                format!(
                    "{listen} is not loopback and [tls] is not set: plaintext may only bind to loopback"
                ),
            ));
        }
        let state_dir = raw
            .state_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/baton"));
        let release_name = raw.release_name.unwrap_or_else(|| "samplekv".to_owned());
        if baton_store::check_name(&release_name).is_err() {
            return Err(invalid("release_name", "use only [A-Za-z0-9._-]"));
        }
        let store = raw.store.map(|t| store_section(t, env)).transpose()?;
        let metrics_listen = match raw.metrics_listen.as_deref() {
            None | Some("") => None,
            Some(addr) => {
                let addr: SocketAddr = addr.parse().map_err(|e| {
                    invalid(
                        "metrics_listen",
                        format!("{addr:?}: {e}; use IP:PORT, e.g. 127.0.0.1:9464"),
                    )
                })?;
                if addr == listen {
                    return Err(invalid(
                        "metrics_listen",
                        format!("{addr} is also `listen`; give metrics its own port"),
                    ));
                }
                Some(addr)
            }
        };
        let backup_keep = match raw.policy.backup_keep_days {
            None => DEFAULT_BACKUP_KEEP,
            Some(0) => {
                return Err(invalid(
                    "policy.backup_keep_days",
                    "must be at least 1: a finalized rollout's backup is what `rollback --restore` needs",
                ));
            }
            Some(d) if d > 3650 => {
                return Err(invalid(
                    "policy.backup_keep_days",
                    format!("{d} is more than 3650 (ten years)"),
                ));
            }
            Some(d) => Duration::from_secs(d * 86_400),
        };
        let policy = policy(raw.policy, members.len())?;
        let alerting = AlertingConfig::from_raw(raw.alerting)?;
        let replication = replication(raw.replication, listen, tls.is_some())?;
        let role_of = |key: &'static str, name: &str, role: &str| match role {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(invalid(
                key,
                format!(
                    "{name:?} has role {:?}; a role is viewer, operator or admin",
                    baton_domain::echo(other)
                ),
            )),
        };
        let mut tokens = BTreeMap::new();
        for (name, t) in raw.tokens.unwrap_or_default() {
            if tls.is_none() {
                return Err(invalid(
                    "tokens",
                    "bearer tokens are accepted only over TLS; set [tls] (or remove [tokens])",
                ));
            }
            if !baton_domain::is_path_name(&name) {
                return Err(invalid(
                    "tokens",
                    format!(
                        "{:?} is not a token name (1 to 128 characters of [A-Za-z0-9._-])",
                        baton_domain::echo(&name)
                    ),
                ));
            }
            let hex = t.sha256.to_ascii_lowercase();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    "tokens",
                    format!(
                        "token {name:?}: sha256 must be 64 hex digits (printf %s \"$TOKEN\" | sha256sum); the token itself never goes in the config"
                    ),
                ));
            }
            let role = role_of("tokens", &name, &t.role)?;
            tokens.insert(name, (hex, role));
        }
        let mut operators = BTreeMap::new();
        for (name, role) in raw.operators.unwrap_or_default() {
            let role = role_of("operators", &name, &role)?;
            if name.is_empty() || name.contains('/') {
                return Err(invalid(
                    "operators",
                    format!(
                        "{name:?} is not an operator name (the last part of spiffe://<cluster>/operator/<name>)"
                    ),
                ));
            }
            operators.insert(name, role);
        }
        Ok(CoordinatorConfig {
            cluster,
            listen,
            heartbeat,
            members,
            tls,
            state_dir,
            release_name,
            store,
            metrics_listen,
            policy,
            backup_keep,
            alerting,
            replication,
            operators,
            tokens,
        })
    }
}

/// The `[store]` table: its `kind` checked here (so a bad one is named as
/// `store.kind`), the rest by the shared [`StoreSection`], resolved with the
/// `AWS_*` credentials from `env` when the file names none.
fn store_section(
    table: toml::Table,
    env: &BTreeMap<String, String>,
) -> Result<StoreConfig, ConfigError> {
    if let Some(why) = baton_store::config::bad_kind(&table) {
        return Err(invalid("store.kind", why));
    }
    Ok(StoreSection::resolve_table(table, &|k: &str| {
        env.get(k).filter(|v| !v.is_empty()).cloned()
    })?)
}

fn policy(raw: RawPolicy, members: usize) -> Result<Policy, ConfigError> {
    let d = Policy::default();
    let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
    let on_stall = match raw.on_stall.as_deref() {
        None | Some("pause") => OnStall::Pause,
        Some("wait") => OnStall::Wait,
        Some("rollback") => OnStall::Rollback,
        Some(other) => {
            return Err(invalid(
                "policy.on_stall",
                format!("{other:?}; use pause, wait or rollback"),
            ));
        }
    };
    // Required unless the operator says otherwise: no member is stopped
    // without a verified backup to go back to.
    let backup = match raw.backup.as_deref() {
        None | Some("required") => BackupPolicy::Required,
        Some("optional") => BackupPolicy::Optional,
        Some("off") => BackupPolicy::Off,
        Some(other) => {
            return Err(invalid(
                "policy.backup",
                format!("{other:?}; use required, optional or off"),
            ));
        }
    };
    let max_unavailable = raw.max_unavailable.unwrap_or(d.max_unavailable);
    let allow_quorum_loss = raw.allow_quorum_loss.unwrap_or(false);
    // Quorum: a majority of members must stay up, so at most (N-1)/2 may
    // be down. A single member has no quorum to keep (its upgrade is an
    // outage by nature); two members have none to spare.
    let spare = members.saturating_sub(1) / 2;
    if max_unavailable == 0 {
        return Err(invalid("policy.max_unavailable", "must be at least 1"));
    }
    if members >= 2 && max_unavailable > spare {
        let outage_accepted = spare == 0 && max_unavailable == 1 && allow_quorum_loss;
        if !outage_accepted {
            return Err(invalid(
                "policy.max_unavailable",
                if spare == 0 {
                    format!(
                        "{max_unavailable} is more than (N-1)/2 = 0 for {members} members: stopping any member of a {members}-member quorum cluster loses quorum, so it cannot be rolled without an outage. Add a member first, or set policy.allow_quorum_loss = true (with max_unavailable = 1) to accept the outage"
                    )
                } else {
                    format!(
                        "{max_unavailable} is more than (N-1)/2 = {spare} for {members} members: that many down loses quorum; use at most {spare}"
                    )
                },
            ));
        }
    }
    let p = Policy {
        tolerable_lag: raw.tolerable_lag.unwrap_or(d.tolerable_lag),
        max_unavailable,
        stop_timeout: ms(raw.stop_timeout_ms, d.stop_timeout),
        health_timeout: ms(raw.health_timeout_ms, d.health_timeout),
        catchup_timeout: ms(raw.catchup_timeout_ms, d.catchup_timeout),
        stall_after: ms(raw.stall_after_ms, d.stall_after),
        handover_timeout: ms(raw.handover_timeout_ms, d.handover_timeout),
        soak: ms(raw.soak_ms, d.soak),
        on_stall,
        steady_stall_after: ms(raw.steady_stall_after_ms, d.steady_stall_after),
        agent_down_after: ms(raw.agent_down_after_ms, d.agent_down_after),
        start_retries: raw.start_retries.unwrap_or(d.start_retries),
        allow_quorum_loss,
        backup,
        min_state_disk_free: raw
            .min_state_disk_free_bytes
            .unwrap_or(d.min_state_disk_free),
    };
    if p.min_state_disk_free < 4096 {
        return Err(invalid(
            "policy.min_state_disk_free_bytes",
            "must be at least 4096: a journal needs room for its next entries",
        ));
    }
    for (key, v) in [
        ("policy.stop_timeout_ms", p.stop_timeout),
        ("policy.health_timeout_ms", p.health_timeout),
        ("policy.catchup_timeout_ms", p.catchup_timeout),
        ("policy.stall_after_ms", p.stall_after),
        ("policy.handover_timeout_ms", p.handover_timeout),
        ("policy.steady_stall_after_ms", p.steady_stall_after),
        ("policy.agent_down_after_ms", p.agent_down_after),
    ] {
        if v.is_zero() {
            return Err(invalid(key, "must be above 0"));
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<CoordinatorConfig, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CoordinatorConfig::from_toml(text, Path::new("c.toml"), &env)
    }

    const GOOD: &str = "cluster_id = \"demo\"\nmembers = [\"n1\", \"n2\", \"n3\"]\n";

    #[test]
    fn tokens_are_hashes_with_roles_and_need_tls() {
        let sha = "ab".repeat(32);
        let tls = "[tls]\ncert = \"/c.crt\"\nkey = \"/c.key\"\nclient_ca = \"/ca.crt\"\n";
        let with = |tokens: &str, tls: &str| {
            load(
                &format!("{GOOD}listen = \"127.0.0.1:7400\"\n{tls}[tokens]\n{tokens}\n"),
                &[],
            )
        };
        let c = with(
            &format!(
                "ci = {{ sha256 = \"{}\", role = \"operator\" }}",
                sha.to_uppercase()
            ),
            tls,
        )
        .unwrap();
        assert_eq!(c.tokens["ci"], (sha.clone(), Role::Operator));
        for (tokens, tls, says) in [
            (
                format!("ci = {{ sha256 = \"{sha}\", role = \"operator\" }}"),
                "",
                "only over TLS",
            ),
            (
                "ci = { sha256 = \"abc\", role = \"operator\" }".to_owned(),
                tls,
                "64 hex digits",
            ),
            (
                format!("ci = {{ sha256 = \"{sha}\", role = \"root\" }}"),
                tls,
                "a role is viewer, operator or admin",
            ),
            (
                format!("\"a/b\" = {{ sha256 = \"{sha}\", role = \"viewer\" }}"),
                tls,
                "not a token name",
            ),
        ] {
            let (key, reason) = invalid_key(with(&tokens, tls).unwrap_err());
            assert_eq!(key, "tokens", "{reason}");
            assert!(reason.contains(says), "{says:?} in {reason:?}");
        }
    }

    fn invalid_key(e: ConfigError) -> (&'static str, String) {
        match e {
            ConfigError::Invalid { key, reason } => (key, reason),
            other => panic!("not an invalid key: {other}"),
        }
    }

    #[test]
    fn a_tls_file_that_cannot_be_read_is_named_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, "pem").unwrap();
            p
        };
        let (cert, key, ca) = (file("c.crt"), file("c.key"), file("ca.crt"));
        let config = dir.path().join("coordinator.toml");
        let write = |cert: &Path, key: &Path, ca: &Path| {
            std::fs::write(
                &config,
                format!("{GOOD}[tls]\ncert = {cert:?}\nkey = {key:?}\nclient_ca = {ca:?}\n"),
            )
            .unwrap();
        };
        write(&cert, &key, &ca);
        assert!(CoordinatorConfig::load(&config, &BTreeMap::new()).is_ok());
        let missing = dir.path().join("missing.pem");
        for (k, c, kk, a) in [
            ("tls.cert", &missing, &key, &ca),
            ("tls.key", &cert, &missing, &ca),
            ("tls.client_ca", &cert, &key, &missing),
        ] {
            write(c, kk, a);
            let (key, reason) =
                invalid_key(CoordinatorConfig::load(&config, &BTreeMap::new()).unwrap_err());
            assert_eq!(key, k);
            assert!(reason.contains("missing.pem"), "{reason}");
        }
    }

    #[test]
    fn tls_needs_a_client_ca_and_operators_need_a_known_role() {
        let tls = "[tls]\ncert = \"c.crt\"\nkey = \"c.key\"\n";
        let (key, reason) = invalid_key(load(&format!("{GOOD}{tls}"), &[]).unwrap_err());
        assert_eq!(key, "tls.client_ca");
        assert!(
            reason.contains("known by their client certificates"),
            "{reason}"
        );
        let c = load(
            &format!("{GOOD}[operators]\nalice = \"admin\"\nvic = \"viewer\"\n{tls}client_ca = \"ca.crt\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(c.tls.unwrap().client_ca, PathBuf::from("ca.crt"));
        assert_eq!(
            c.operators,
            BTreeMap::from([
                ("alice".to_owned(), Role::Admin),
                ("vic".to_owned(), Role::Viewer)
            ])
        );
        for (table, says) in [
            ("alice = \"root\"", "a role is viewer, operator or admin"),
            ("\"a/b\" = \"admin\"", "is not an operator name"),
        ] {
            let (key, reason) =
                invalid_key(load(&format!("{GOOD}[operators]\n{table}\n"), &[]).unwrap_err());
            assert_eq!(key, "operators");
            assert!(reason.contains(says), "{reason}");
        }
    }

    #[test]
    fn replication_defaults_to_one_replica_and_checks_every_peer() {
        let c = load(GOOD, &[]).unwrap();
        assert_eq!(c.replication.id, 1);
        assert_eq!(
            c.replication.peers,
            BTreeMap::from([(1, "http://127.0.0.1:7400".to_owned())])
        );
        let three = |id: &str, peers: &str| {
            load(
                &format!(
                    "{GOOD}listen = \"127.0.0.1:7402\"\n[replication]\nid = {id}\npeers = {{ {peers} }}\n"
                ),
                &[],
            )
        };
        let ok = "\"1\" = \"http://127.0.0.1:7401\", \"2\" = \"http://127.0.0.1:7402\", \"3\" = \"http://127.0.0.1:7403\"";
        let c = three("2", ok).unwrap();
        assert_eq!(c.replication.id, 2);
        assert_eq!(c.replication.peers.len(), 3);
        for (id, peers, key, says) in [
            ("4", ok, "replication.id", "not in replication.peers"),
            ("1", ok, "replication.peers", "not where it listens"),
            (
                "1",
                "\"1\" = \"http://127.0.0.1:7402\", \"2\" = \"http://127.0.0.1:7401\"",
                "replication.peers",
                "use 1, 3 or 5",
            ),
            (
                "2",
                "\"1\" = \"https://a:1\", \"2\" = \"http://127.0.0.1:7402\", \"3\" = \"http://127.0.0.8:1\"",
                "replication.peers",
                "must start with http://",
            ),
            (
                "2",
                "\"1\" = \"http://127.0.0.9:1\", \"2\" = \"http://127.0.0.1:7402\", \"3\" = \"http://127.0.0.9:1\"",
                "replication.peers",
                "listed for two",
            ),
            (
                "2",
                "\"x\" = \"http://127.0.0.9:1\", \"2\" = \"http://127.0.0.1:7402\", \"3\" = \"http://127.0.0.8:1\"",
                "replication.peers",
                "not a replica id",
            ),
            (
                "2",
                "\"1\" = \"http://127.0.0.9\", \"2\" = \"http://127.0.0.1:7402\", \"3\" = \"http://127.0.0.8:1\"",
                "replication.peers",
                "HOST:PORT",
            ),
            (
                "2",
                "\"1\" = \"http://10.1.2.3:7401\", \"2\" = \"http://127.0.0.1:7402\", \"3\" = \"http://127.0.0.8:1\"",
                "replication.peers",
                "replica 1: http://10.1.2.3:7401 is plaintext http:// to 10.1.2.3, which is not loopback",
            ),
        ] {
            match three(id, peers) {
                Err(ConfigError::Invalid { key: k, reason }) => {
                    assert_eq!(k, key, "{reason}");
                    assert!(reason.contains(says), "{says:?} in {reason:?}");
                }
                other => panic!("{id} {peers}: {other:?}"),
            }
        }
    }

    #[test]
    fn good_config_and_env_override() {
        let c = load(GOOD, &[("BATON_LISTEN", "127.0.0.1:9000")]).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.members.len(), 3);
    }

    #[test]
    fn backup_keep_days_defaults_to_a_week_and_is_bounded() {
        assert_eq!(load(GOOD, &[]).unwrap().backup_keep, DEFAULT_BACKUP_KEEP);
        assert_eq!(
            load(GOOD, &[]).unwrap().policy.backup,
            BackupPolicy::Required
        );
        let c = load(&format!("{GOOD}[policy]\nbackup_keep_days = 30\n"), &[]).unwrap();
        assert_eq!(c.backup_keep, Duration::from_secs(30 * 86_400));
        for days in [0, 3651] {
            let err = load(&format!("{GOOD}[policy]\nbackup_keep_days = {days}\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains("`policy.backup_keep_days`"), "{err}");
        }
    }

    #[test]
    fn metrics_listen_is_optional_overridable_and_checked() {
        assert_eq!(load(GOOD, &[]).unwrap().metrics_listen, None);
        let c = load(&format!("{GOOD}metrics_listen = \"127.0.0.1:9464\"\n"), &[]).unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        let c = load(
            &format!("{GOOD}metrics_listen = \"127.0.0.1:9464\"\n"),
            &[("BATON_METRICS_LISTEN", "127.0.0.1:9500")],
        )
        .unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9500".parse().unwrap()));
        for (text, env) in [
            (format!("{GOOD}metrics_listen = \"localhost\"\n"), vec![]),
            (GOOD.to_owned(), vec![("BATON_METRICS_LISTEN", "9464")]),
            (
                format!("{GOOD}listen = \"127.0.0.1:7400\"\nmetrics_listen = \"127.0.0.1:7400\"\n"),
                vec![],
            ),
        ] {
            let err = load(&text, &env).unwrap_err().to_string();
            assert!(
                err.contains("`metrics_listen`"),
                "{err} should name metrics_listen"
            );
        }
    }

    #[test]
    fn bad_configs_name_the_key() {
        for (text, key) in [
            ("cluster_id = \"demo\"\n".to_owned(), "`members`"),
            (format!("{GOOD}listen = \"0.0.0.0:7400\"\n"), "`listen`"),
            (
                "cluster_id = \"d\"\nmembers = [\"n1\", \"n1\"]\n".to_owned(),
                "`members`",
            ),
            (
                "cluster_id = \"d\"\nmembers = [\"\"]\n".to_owned(),
                "`members`",
            ),
            (format!("{GOOD}heartbeat_ms = 5\n"), "`heartbeat_ms`"),
            (format!("{GOOD}nope = 5\n"), "nope"),
            (
                format!("{GOOD}[policy]\nmax_unavailable = 2\n"),
                "`policy.max_unavailable`",
            ),
            (
                format!("{GOOD}[policy]\non_stall = \"panic\"\n"),
                "`policy.on_stall`",
            ),
            (format!("{GOOD}[store]\nkind = \"ftp\"\n"), "`store.kind`"),
        ] {
            let err = load(&text, &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
    }

    #[test]
    fn the_store_is_a_dir_or_an_s3_bucket_and_a_bad_one_names_the_key() {
        let c = load(
            &format!("{GOOD}[store]\nkind = \"dir\"\npath = \"/srv/s\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(
            c.store.as_ref().map(|s| s.location()).as_deref(),
            Some("/srv/s")
        );
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("s3-secret");
        std::fs::write(&secret, "coord-secret\n").unwrap();
        let s3 = format!(
            "{GOOD}[store]\nkind = \"s3\"\nbucket = \"rel\"\nendpoint = \"http://127.0.0.1:9000\"\n"
        );
        let c = load(
            &format!("{s3}access_key_id = \"AK\"\nsecret_access_key_file = {secret:?}\n"),
            &[],
        )
        .unwrap();
        assert_eq!(c.store.as_ref().unwrap().location(), "s3://rel");
        assert!(!format!("{c:?}").contains("coord-secret"), "{c:?}");
        let c = load(
            &s3,
            &[("AWS_ACCESS_KEY_ID", "AK"), ("AWS_SECRET_ACCESS_KEY", "S")],
        )
        .unwrap();
        assert!(matches!(c.store, Some(StoreConfig::S3(_))));
        for (text, want) in [
            (s3.clone(), "no S3 credentials"),
            (format!("{GOOD}[store]\npath = \"/s\"\n"), "`store.kind`"),
            (format!("{GOOD}[store]\nkind = \"dir\"\n"), "path"),
            (format!("{s3}buckit = \"x\"\n"), "buckit"),
        ] {
            let err = load(&text, &[]).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should name {want}");
        }
    }

    /// Quorum at config load: more than (N-1)/2 down is refused, naming the
    /// key and the numbers; a 2-member cluster cannot roll without an
    /// outage unless the operator accepts it.
    #[test]
    fn max_unavailable_is_judged_against_quorum() {
        let two = "cluster_id = \"d\"\nmembers = [\"n1\", \"n2\"]\n";
        let err = load(&format!("{two}[policy]\nmax_unavailable = 1\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`policy.max_unavailable`")
                && err.contains("(N-1)/2 = 0 for 2 members")
                && err.contains("cannot be rolled without an outage")
                && err.contains("allow_quorum_loss = true"),
            "{err}"
        );
        // The default (1) is refused just the same.
        assert!(load(two, &[]).is_err());
        let ok = load(
            &format!("{two}[policy]\nmax_unavailable = 1\nallow_quorum_loss = true\n"),
            &[],
        )
        .unwrap();
        assert!(ok.policy.allow_quorum_loss);
        let five = "cluster_id = \"d\"\nmembers = [\"a\", \"b\", \"c\", \"d\", \"e\"]\n";
        assert_eq!(
            load(&format!("{five}[policy]\nmax_unavailable = 2\n"), &[])
                .unwrap()
                .policy
                .max_unavailable,
            2
        );
        let err = load(
            &format!("{five}[policy]\nmax_unavailable = 3\nallow_quorum_loss = true\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("(N-1)/2 = 2 for 5 members"), "{err}");
        // One member has no quorum to keep.
        assert!(load("cluster_id = \"d\"\nmembers = [\"solo\"]\n", &[]).is_ok());
        assert_eq!(
            load(&format!("{GOOD}[policy]\nstart_retries = 2\n"), &[])
                .unwrap()
                .policy
                .start_retries,
            2
        );
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The example shipped under deploy/ must stay a valid config.
    #[test]
    fn the_shipped_example_config_is_valid() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/coordinator.toml");
        let c = CoordinatorConfig::load(&path, &BTreeMap::new()).unwrap();
        assert_eq!(c.members.len(), 3);
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/etcd-coordinator.toml");
        let c = CoordinatorConfig::load(&path, &BTreeMap::new()).unwrap();
        assert_eq!(c.release_name, "etcd");
    }
}
