//! The agent's configuration: parsed once from TOML, overridden from the
//! environment, validated into [`AgentConfig`].
//!
//! This module owns the rules for every section but `[target]`, which the
//! adapter its `kind` names parses and validates (see
//! [`crate::adapter::REGISTRY`]). A bad config is a [`ConfigError`] that
//! names the key; the command line turns it into exit 64. Nothing else in
//! the agent reads the environment or the config file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use baton_domain::MemberId;
use baton_net::tls::ClientTls;
use serde::Deserialize;

use crate::adapter::{self, AdapterConfig, SectionError};

/// A config problem, always naming the key and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML for the agent: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}` is invalid: {reason}")]
    Invalid { key: &'static str, reason: String },
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

/// The file as written by the operator. Every field is optional here so that
/// the environment can fill it; [`AgentConfig::validate`] decides.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    member_id: Option<String>,
    cluster_id: Option<String>,
    /// One address, or an array of them (one per coordinator replica);
    /// checked by [`coordinators`].
    coordinator: Option<toml::Value>,
    heartbeat_ms: Option<u64>,
    poll_ms: Option<u64>,
    data_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    probe_listen: Option<String>,
    /// Parsed by the adapter its `kind` names (see [`crate::adapter::REGISTRY`]).
    target: Option<toml::Table>,
    run: Option<RawRun>,
    tls: Option<RawTls>,
    /// The shared `[store]` section (`kind = "dir"` or `"s3"`), parsed by
    /// [`baton_store::config::StoreSection`].
    store: Option<toml::Table>,
    probes: Option<RawProbes>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbes {
    /// Signed so that a negative value is named by its key, not by serde.
    tolerable_lag: Option<i64>,
}

/// The default `[probes] tolerable_lag`: revisions a member may be behind its
/// own commit index and still count as ready.
pub const DEFAULT_TOLERABLE_LAG: u64 = 10;
/// The largest `[probes] tolerable_lag` accepted; more is surely a typo.
pub const MAX_TOLERABLE_LAG: u64 = 1_000_000_000;

/// Settings for `/readyz` and gRPC health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbesConfig {
    /// Ready needs `committed - applied <= tolerable_lag`.
    pub tolerable_lag: u64,
}

pub use baton_store::config::StoreConfig;
use baton_store::config::StoreSection;

/// Where the agent's releases come from and its backups go.
#[derive(Debug, Clone)]
pub enum AgentStore {
    /// A directory the agent reads and writes itself (`kind = "dir"`: the
    /// demo, or a shared mount).
    Dir(StoreConfig),
    /// The coordinator's store (`kind = "coordinator"`), reached only
    /// through the requests the coordinator presigns for each command: the
    /// agent holds no store credentials. `ca_file` is the CA the store's
    /// TLS is checked against, if not the webpki roots.
    Coordinator { ca_file: Option<PathBuf> },
}

impl AgentStore {
    /// Where the store is, for messages.
    pub fn location(&self) -> String {
        match self {
            AgentStore::Dir(c) => c.location(),
            AgentStore::Coordinator { .. } => {
                "the coordinator's store (presigned requests)".to_owned()
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    domain: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    mode: String,
    #[serde(default)]
    command: Vec<String>,
    /// Directory holding `releases/<version>/` and the `current` link.
    base_dir: Option<PathBuf>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    stop_timeout_ms: Option<u64>,
    /// exec mode: the operator's own start and stop commands.
    #[serde(default)]
    start: Vec<String>,
    #[serde(default)]
    stop: Vec<String>,
}

/// How the agent relates to its member's process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunMode {
    /// Something else (systemd, a test, an operator) runs the member; the
    /// agent only watches it.
    External,
    /// The agent runs the member from a command template and restarts it
    /// after a crash unless it was told to stop.
    Supervise(SuperviseConfig),
    /// The operator's own commands start and stop the member (a systemd
    /// unit, a container runtime, a script); the agent runs them and waits.
    Exec(ExecConfig),
}

/// Settings for [`RunMode::Exec`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecConfig {
    /// argv templates; `{release_dir}` and `{data_dir}` are substituted.
    pub start: Vec<String>,
    pub stop: Vec<String>,
    /// Holds `releases/<version>/` and `current`, when baton installs
    /// releases; None when the operator's commands do it all.
    pub base_dir: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    /// Bound on each command.
    pub timeout: Duration,
}

/// Settings for [`RunMode::Supervise`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuperviseConfig {
    /// argv template; `{release_dir}` and `{data_dir}` are substituted.
    pub command: Vec<String>,
    /// Holds `releases/<version>/` and the `current` symlink.
    pub base_dir: PathBuf,
    pub env: BTreeMap<String, String>,
    pub stop_timeout: Duration,
}

/// A validated agent configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub member: MemberId,
    pub cluster: String,
    /// `http://host:port` or `https://host:port` of each coordinator
    /// replica (one to [`MAX_COORDINATORS`], all with the same scheme, no
    /// two the same); the agent holds a session with every one.
    pub coordinators: Vec<String>,
    pub heartbeat: Duration,
    /// How often the member is read.
    pub poll: Duration,
    /// The member's data directory (for free-disk reporting).
    pub data_dir: PathBuf,
    /// Where the agent keeps its own state (pidfile, member log).
    pub state_dir: PathBuf,
    pub probe_listen: SocketAddr,
    /// The `[target]` section: which adapter watches the member, and its settings.
    pub target: Arc<dyn AdapterConfig>,
    pub run: RunMode,
    /// TLS to the coordinator; required when `coordinator` is https.
    pub tls: Option<ClientTls>,
    /// Where releases come from and backups go (`[store]`: a dir, or the
    /// coordinator's store through presigned requests).
    pub store: Option<AgentStore>,
    pub probes: ProbesConfig,
}

/// The most coordinator replicas an agent links to (a 7-replica
/// coordinator is already more than a rollout needs).
pub const MAX_COORDINATORS: usize = 7;

/// The environment variables that override config keys, read once at start.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("BATON_AGENT_MEMBER_ID", "member_id"),
    ("BATON_AGENT_CLUSTER_ID", "cluster_id"),
    ("BATON_AGENT_COORDINATOR", "coordinator"),
    ("BATON_AGENT_HEARTBEAT_MS", "heartbeat_ms"),
    ("BATON_AGENT_PROBE_LISTEN", "probe_listen"),
    ("BATON_AGENT_PROBES_TOLERABLE_LAG", "probes.tolerable_lag"),
];

impl AgentConfig {
    /// Reads `path`, applies `env` overrides, validates.
    pub fn load(path: &Path, env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path, env)
    }

    /// Parses TOML text (`path` is only used in messages).
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
            let bad = |reason: String| ConfigError::Env { var, key, reason };
            match *key {
                "member_id" => raw.member_id = Some(value.clone()),
                "cluster_id" => raw.cluster_id = Some(value.clone()),
                "coordinator" => {
                    // A comma-separated list, one address per replica.
                    let mut addrs = Vec::new();
                    for (i, addr) in value.split(',').map(str::trim).enumerate() {
                        if addr.is_empty() {
                            return Err(bad(format!(
                                "address {} of {value:?} is empty; give the replicas' addresses separated by commas",
                                i + 1
                            )));
                        }
                        addrs.push(toml::Value::String(addr.to_owned()));
                    }
                    raw.coordinator = Some(toml::Value::Array(addrs));
                }
                "heartbeat_ms" => {
                    raw.heartbeat_ms = Some(value.parse().map_err(|e| bad(format!("{e}")))?)
                }
                "probe_listen" => raw.probe_listen = Some(value.clone()),
                "probes.tolerable_lag" => {
                    let lag: u64 = value.trim().parse().map_err(|e| {
                        bad(format!("{value:?} is not a whole number of revisions: {e}"))
                    })?;
                    raw.probes
                        .get_or_insert_with(RawProbes::default)
                        .tolerable_lag = Some(i64::try_from(lag).unwrap_or(i64::MAX));
                }
                _ => {}
            }
        }
        Self::validate(raw, path)
    }

    fn validate(raw: RawConfig, path: &Path) -> Result<Self, ConfigError> {
        let member = MemberId::new(
            raw.member_id
                .ok_or_else(|| invalid("member_id", "missing"))?,
        )
        .map_err(|e| invalid("member_id", e.to_string()))?;
        let cluster = raw
            .cluster_id
            .ok_or_else(|| invalid("cluster_id", "missing"))?;
        if cluster.is_empty() {
            return Err(invalid("cluster_id", "empty"));
        }
        let coordinators = coordinators(
            raw.coordinator
                .ok_or_else(|| invalid("coordinator", "missing"))?,
        )?;
        let heartbeat = Duration::from_millis(raw.heartbeat_ms.unwrap_or(1000));
        if !(Duration::from_millis(50)..=Duration::from_secs(60)).contains(&heartbeat) {
            return Err(invalid("heartbeat_ms", "must be between 50 and 60000"));
        }
        let poll = Duration::from_millis(raw.poll_ms.unwrap_or(100));
        if !(Duration::from_millis(10)..=heartbeat).contains(&poll) {
            return Err(invalid("poll_ms", "must be between 10 and heartbeat_ms"));
        }
        let data_dir = raw.data_dir.ok_or_else(|| invalid("data_dir", "missing"))?;
        let state_dir = raw
            .state_dir
            .ok_or_else(|| invalid("state_dir", "missing"))?;
        let probe_listen: SocketAddr = raw
            .probe_listen
            .as_deref()
            .unwrap_or("127.0.0.1:0")
            .parse()
            .map_err(|e| invalid("probe_listen", format!("{e}")))?;
        let target = raw
            .target
            .ok_or_else(|| invalid("target", "missing [target] table"))?;
        let target = adapter::parse_section(target).map_err(|e| match e {
            SectionError::Invalid { key, reason } => ConfigError::Invalid { key, reason },
            SectionError::Shape { message } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
        })?;
        let run = match raw.run {
            None => RunMode::External,
            Some(run) => match run.mode.as_str() {
                "external" => RunMode::External,
                "supervise" => {
                    if run.command.is_empty() {
                        return Err(invalid("run.command", "supervise mode needs a command"));
                    }
                    let base_dir = run
                        .base_dir
                        .ok_or_else(|| invalid("run.base_dir", "supervise mode needs base_dir"))?;
                    RunMode::Supervise(SuperviseConfig {
                        command: run.command,
                        base_dir,
                        env: run.env,
                        stop_timeout: Duration::from_millis(run.stop_timeout_ms.unwrap_or(10_000)),
                    })
                }
                "exec" => {
                    if run.start.is_empty() || run.stop.is_empty() {
                        return Err(invalid(
                            "run.start",
                            "exec mode needs both start and stop commands",
                        ));
                    }
                    RunMode::Exec(ExecConfig {
                        start: run.start,
                        stop: run.stop,
                        base_dir: run.base_dir,
                        env: run.env,
                        timeout: Duration::from_millis(run.stop_timeout_ms.unwrap_or(60_000)),
                    })
                }
                other => {
                    return Err(invalid(
                        "run.mode",
                        format!("unknown mode {other:?}; known: external, supervise, exec"),
                    ));
                }
            },
        };
        let tls = match raw.tls {
            None => None,
            Some(t) => {
                let identity = match (&t.cert, &t.key) {
                    (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
                    (None, None) => None,
                    _ => return Err(invalid("tls.cert", "cert and key must be set together")),
                };
                Some(
                    ClientTls::load(&t.ca, identity, t.domain.clone())
                        .map_err(|e| invalid("tls", e.to_string()))?,
                )
            }
        };
        let https = coordinators.iter().all(|c| c.starts_with("https://"));
        if https != tls.is_some() {
            return Err(invalid(
                "tls",
                "an https:// coordinator needs [tls] with at least `ca`, and [tls] needs https://",
            ));
        }
        let store = raw.store.map(store_section).transpose()?;
        let tolerable_lag = match raw.probes.and_then(|p| p.tolerable_lag) {
            None => DEFAULT_TOLERABLE_LAG,
            Some(lag) => u64::try_from(lag)
                .ok()
                .filter(|l| *l <= MAX_TOLERABLE_LAG)
                .ok_or_else(|| {
                    invalid(
                        "probes.tolerable_lag",
                        format!("{lag} is not between 0 and {MAX_TOLERABLE_LAG} revisions"),
                    )
                })?,
        };
        Ok(AgentConfig {
            member,
            cluster,
            coordinators,
            heartbeat,
            poll,
            data_dir,
            state_dir,
            probe_listen,
            target,
            run,
            tls,
            store,
            probes: ProbesConfig { tolerable_lag },
        })
    }
}

/// The `coordinator` key: one address, or an array of one to
/// [`MAX_COORDINATORS`] distinct addresses that all start with `http://` or
/// all with `https://`.
fn coordinators(value: toml::Value) -> Result<Vec<String>, ConfigError> {
    let addrs = match value {
        toml::Value::String(addr) => vec![addr],
        toml::Value::Array(values) => values
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                toml::Value::String(addr) => Ok(addr),
                other => Err(invalid(
                    "coordinator",
                    format!(
                        "entry {} is a {}, not an address string",
                        i + 1,
                        other.type_str()
                    ),
                )),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(invalid(
                "coordinator",
                format!(
                    "is a {}; give an address string, or an array of them (one per coordinator replica)",
                    other.type_str()
                ),
            ));
        }
    };
    if addrs.is_empty() || addrs.len() > MAX_COORDINATORS {
        return Err(invalid(
            "coordinator",
            format!(
                "{} addresses given; give 1 to {MAX_COORDINATORS} (one per coordinator replica)",
                addrs.len()
            ),
        ));
    }
    for (i, addr) in addrs.iter().enumerate() {
        if !(addr.starts_with("http://") || addr.starts_with("https://")) {
            return Err(invalid(
                "coordinator",
                format!("{addr:?} must start with http:// or https://"),
            ));
        }
        if let Some(why) = baton_net::addr::plaintext_refusal(addr) {
            return Err(invalid("coordinator", why));
        }
        if addrs[..i]
            .iter()
            .any(|a| a.trim_end_matches('/') == addr.trim_end_matches('/'))
        {
            return Err(invalid(
                "coordinator",
                format!("{addr:?} is given twice; name each coordinator replica once"),
            ));
        }
    }
    let https = addrs.iter().filter(|a| a.starts_with("https://")).count();
    if https != 0 && https != addrs.len() {
        return Err(invalid(
            "coordinator",
            format!(
                "{addrs:?} mixes http:// and https://; every coordinator replica is reached the same way"
            ),
        ));
    }
    Ok(addrs)
}

/// The `[store]` table. `kind = "coordinator"` (with an optional
/// `ca_file`) is the agent's own; `kind = "dir"` goes to the shared
/// [`StoreSection`]. `kind = "s3"` is refused: an agent holds no S3
/// credentials, the coordinator presigns what each command needs.
fn store_section(table: toml::Table) -> Result<AgentStore, ConfigError> {
    match table.get("kind").and_then(|k| k.as_str()) {
        Some("coordinator") => {
            let mut ca_file = None;
            for (key, value) in &table {
                match (key.as_str(), value) {
                    ("kind", _) => {}
                    ("ca_file", toml::Value::String(path)) if !path.is_empty() => {
                        ca_file = Some(PathBuf::from(path));
                    }
                    ("ca_file", _) => {
                        return Err(invalid("store.ca_file", "must be the path of a PEM file"));
                    }
                    (other, _) => {
                        return Err(invalid(
                            "store",
                            format!(
                                "unknown key {other:?} for kind = \"coordinator\"; known: kind, ca_file"
                            ),
                        ));
                    }
                }
            }
            Ok(AgentStore::Coordinator { ca_file })
        }
        Some("s3") => Err(invalid(
            "store.kind",
            "an agent holds no S3 credentials: set kind = \"coordinator\", and the coordinator (whose [store] is the bucket) presigns each request a command needs",
        )),
        Some("dir") => Ok(AgentStore::Dir(StoreSection::resolve_table(
            table,
            &|_: &str| None,
        )?)),
        Some(other) => Err(invalid(
            "store.kind",
            format!("unknown store {other:?}; known: dir, coordinator"),
        )),
        None => Err(invalid(
            "store.kind",
            "missing: set kind = \"coordinator\" or kind = \"dir\"",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
member_id = "n1"
cluster_id = "demo"
coordinator = "http://127.0.0.1:7400"
data_dir = "/tmp/d"
state_dir = "/tmp/s"
[target]
kind = "samplekv"
addr = "127.0.0.1:7101"
[run]
mode = "supervise"
command = ["{release_dir}/samplekv", "--data-dir", "{data_dir}"]
base_dir = "/tmp/b"
"#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<AgentConfig, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AgentConfig::from_toml(text, Path::new("agent.toml"), &env)
    }

    #[test]
    fn a_good_config_loads_with_defaults() {
        let c = load(GOOD, &[]).unwrap();
        assert_eq!(c.member.as_str(), "n1");
        assert_eq!(c.heartbeat, Duration::from_secs(1));
        assert!(matches!(c.run, RunMode::Supervise(_)));
        assert_eq!(c.probes.tolerable_lag, DEFAULT_TOLERABLE_LAG);
    }

    #[test]
    fn tolerable_lag_comes_from_the_file_or_the_env_and_is_checked() {
        let text = format!("{GOOD}\n[probes]\ntolerable_lag = 3\n");
        assert_eq!(load(&text, &[]).unwrap().probes.tolerable_lag, 3);
        let c = load(&text, &[("BATON_AGENT_PROBES_TOLERABLE_LAG", "0")]).unwrap();
        assert_eq!(c.probes.tolerable_lag, 0);
        let c = load(GOOD, &[("BATON_AGENT_PROBES_TOLERABLE_LAG", " 42 ")]).unwrap();
        assert_eq!(c.probes.tolerable_lag, 42);

        let err = load(GOOD, &[("BATON_AGENT_PROBES_TOLERABLE_LAG", "-1")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("BATON_AGENT_PROBES_TOLERABLE_LAG")
                && err.contains("`probes.tolerable_lag`"),
            "{err}"
        );
        let err = load(&format!("{GOOD}\n[probes]\ntolerable_lag = -1\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("tolerable_lag"), "{err}");
        let err = load(
            &format!("{GOOD}\n[probes]\ntolerable_lag = 2000000000\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`probes.tolerable_lag`"), "{err}");
        let err = load(&format!("{GOOD}\n[probes]\nlag = 1\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("lag"), "{err}");
    }

    #[test]
    fn etcd_tls_files_are_read_at_load_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let etcd = GOOD.replace(
            "kind = \"samplekv\"\naddr = \"127.0.0.1:7101\"\n",
            &format!(
                "kind = \"etcd\"\naddr = \"127.0.0.1:2379\"\n[target.tls]\nca = {:?}\n",
                dir.path().join("ca.crt")
            ),
        );
        let err = load(&etcd, &[]).unwrap_err().to_string();
        assert!(
            err.contains("`target.tls.ca`") && err.contains("ca.crt"),
            "{err}"
        );
        let err = load(&etcd.replace("kind = \"etcd\"", "kind = \"samplekv\""), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`target.tls`"), "{err}");
        let plain = GOOD.replace("kind = \"samplekv\"", "kind = \"etcd\"");
        let c = load(&plain, &[]).unwrap();
        assert_eq!(c.target.kind(), "etcd");
        assert!(format!("{:?}", c.target).contains("tls: None"), "{c:?}");
    }

    #[test]
    fn the_store_is_a_dir_or_the_coordinators_and_never_s3_credentials() {
        let c = load(
            &format!("{GOOD}[store]\nkind = \"dir\"\npath = \"/srv/s\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(
            c.store.as_ref().map(|s| s.location()).as_deref(),
            Some("/srv/s")
        );
        assert!(load(GOOD, &[]).unwrap().store.is_none());
        let c = load(&format!("{GOOD}[store]\nkind = \"coordinator\"\n"), &[]).unwrap();
        assert!(matches!(
            c.store,
            Some(AgentStore::Coordinator { ca_file: None })
        ));
        let c = load(
            &format!("{GOOD}[store]\nkind = \"coordinator\"\nca_file = \"/etc/baton/s3-ca.pem\"\n"),
            &[],
        )
        .unwrap();
        assert!(
            matches!(&c.store, Some(AgentStore::Coordinator { ca_file: Some(p) }) if p == Path::new("/etc/baton/s3-ca.pem"))
        );
        let s3 = format!(
            "{GOOD}[store]\nkind = \"s3\"\nbucket = \"rel\"\nendpoint = \"http://127.0.0.1:9000\"\n"
        );
        let cases = [
            (
                s3.clone(),
                "key `store.kind` is invalid: an agent holds no S3 credentials: set kind = \"coordinator\"",
            ),
            (
                format!("{s3}secret_access_key = \"inline-secret\"\n"),
                "no S3 credentials",
            ),
            (format!("{GOOD}[store]\nkind = \"ftp\"\n"), "`store.kind`"),
            (format!("{GOOD}[store]\npath = \"/s\"\n"), "`store.kind`"),
            (format!("{GOOD}[store]\nkind = \"dir\"\n"), "path"),
            (
                format!("{GOOD}[store]\nkind = \"dir\"\npath = \"/s\"\nbukcet = 1\n"),
                "bukcet",
            ),
            (
                format!("{GOOD}[store]\nkind = \"coordinator\"\nbucket = \"b\"\n"),
                "\"bucket\"",
            ),
        ];
        for (text, want) in cases {
            let err = load(
                &text,
                &[
                    ("AWS_ACCESS_KEY_ID", "AKENV"),
                    ("AWS_SECRET_ACCESS_KEY", "agent-secret"),
                ],
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(want), "{err} should name {want}");
            assert!(
                !err.contains("inline-secret") && !err.contains("agent-secret"),
                "{err}"
            );
        }
    }

    #[test]
    fn env_overrides_the_file() {
        let c = load(
            GOOD,
            &[
                ("BATON_AGENT_MEMBER_ID", "n7"),
                ("BATON_AGENT_HEARTBEAT_MS", "200"),
            ],
        )
        .unwrap();
        assert_eq!(c.member.as_str(), "n7");
        assert_eq!(c.heartbeat, Duration::from_millis(200));
    }

    #[test]
    fn coordinator_is_one_address_or_one_per_replica() {
        let one = load(GOOD, &[]).unwrap();
        assert_eq!(one.coordinators, ["http://127.0.0.1:7400"]);
        let three = GOOD.replace(
            "coordinator = \"http://127.0.0.1:7400\"",
            "coordinator = [\"http://127.0.0.1:7400\", \"http://127.0.0.2:7400\", \"http://127.0.0.3:7400\"]",
        );
        let c = load(&three, &[]).unwrap();
        assert_eq!(
            c.coordinators,
            [
                "http://127.0.0.1:7400",
                "http://127.0.0.2:7400",
                "http://127.0.0.3:7400"
            ]
        );
        let env = |v: &str| load(GOOD, &[("BATON_AGENT_COORDINATOR", v)]);
        assert_eq!(
            env("http://127.0.0.1:1").unwrap().coordinators,
            ["http://127.0.0.1:1"],
            "one address in the env, as before"
        );
        assert_eq!(
            env(" http://127.0.0.1:1, http://127.0.0.2:1 ,http://127.0.0.3:1")
                .unwrap()
                .coordinators,
            [
                "http://127.0.0.1:1",
                "http://127.0.0.2:1",
                "http://127.0.0.3:1"
            ]
        );
        let err = env("http://127.0.0.1:1,,http://127.0.0.2:1")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("BATON_AGENT_COORDINATOR")
                && err.contains("`coordinator`")
                && err.contains("address 2"),
            "{err}"
        );
        let err = env("http://127.0.0.1:1,http://127.0.0.1:1/")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`coordinator`") && err.contains("given twice"),
            "{err}"
        );
    }

    #[test]
    fn bad_coordinator_lists_name_the_key_and_the_fault() {
        let with = |value: &str| {
            GOOD.replace(
                "coordinator = \"http://127.0.0.1:7400\"",
                &format!("coordinator = {value}"),
            )
        };
        let eight: Vec<String> = (1..=8)
            .map(|i| format!("\"http://127.0.0.{i}:7400\""))
            .collect();
        let cases = [
            (with("[]"), "0 addresses given; give 1 to 7"),
            (
                with(&format!("[{}]", eight.join(", "))),
                "8 addresses given",
            ),
            (
                with("[\"http://127.0.0.1:1\", \"http://127.0.0.2:1\", \"http://127.0.0.1:1\"]"),
                "\"http://127.0.0.1:1\" is given twice",
            ),
            (
                with("[\"http://127.0.0.1:1\", \"https://b:1\"]"),
                "mixes http:// and https://",
            ),
            (
                with("[\"http://127.0.0.1:1\", \"tcp://b:1\"]"),
                "\"tcp://b:1\" must start with http:// or https://",
            ),
            (with("[\"http://127.0.0.1:1\", 7]"), "entry 2 is a integer"),
            (
                with("\"http://10.1.2.3:7400\""),
                "plaintext http:// to 10.1.2.3, which is not loopback",
            ),
            (with("7400"), "is a integer; give an address string"),
            (
                with("[\"https://a:1\", \"https://b:1\"]"),
                "an https:// coordinator needs [tls]",
            ),
        ];
        for (text, want) in cases {
            let err = load(&text, &[]).unwrap_err().to_string();
            let key = if want.contains("[tls]") {
                "`tls`"
            } else {
                "`coordinator`"
            };
            assert!(
                err.contains(key) && err.contains(want),
                "{err} should say {key}: {want}"
            );
        }
        // 7 is the most; with [tls], every one is https.
        let seven = with(&format!("[{}]", eight[..7].join(", ")));
        assert_eq!(load(&seven, &[]).unwrap().coordinators.len(), 7);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ca.crt"),
            "-----BEGIN X-----\n-----END X-----\n",
        )
        .unwrap();
        let tls = format!("\n[tls]\nca = {:?}\n", dir.path().join("ca.crt"));
        let https = with("[\"https://a:1\", \"https://b:1\"]") + &tls;
        assert_eq!(load(&https, &[]).unwrap().coordinators.len(), 2);
        let err = load(
            &(with("[\"http://127.0.0.1:1\", \"http://127.0.0.2:1\"]") + &tls),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`tls`") && err.contains("[tls] needs https://"),
            "{err}"
        );
    }

    #[test]
    fn bad_configs_name_the_key() {
        let cases = [
            (
                GOOD.replace("mode = \"supervise\"", "mode = \"exec\""),
                "`run.start`",
            ),
            (GOOD.replace("\"n1\"", "\"\""), "`member_id`"),
            (GOOD.replace("http://127", "tcp://127"), "`coordinator`"),
            (
                GOOD.replace("samplekv\"\naddr", "nosuch\"\naddr"),
                "`target.kind`",
            ),
            (GOOD.replace("supervise", "daemon"), "`run.mode`"),
            (
                GOOD.replace("[target]\n", "heartbeat_ms = 1\n[target]\n"),
                "`heartbeat_ms`",
            ),
        ];
        for (text, key) in cases {
            let err = load(&text, &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
        let err = load(GOOD, &[("BATON_AGENT_HEARTBEAT_MS", "fast")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("BATON_AGENT_HEARTBEAT_MS"), "{err}");
        let err = load(&format!("{GOOD}\nbogus = 1\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The example shipped under deploy/ must stay a valid config.
    #[test]
    fn the_shipped_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/agent.toml");
        let c = AgentConfig::load(&path, &BTreeMap::new()).unwrap();
        assert_eq!(c.member.as_str(), "n1");
        assert!(matches!(c.run, RunMode::Supervise(_)));
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/etcd-agent.toml");
        let c = AgentConfig::load(&path, &BTreeMap::new()).unwrap();
        assert_eq!(c.target.kind(), "etcd");
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/exec-agent.toml");
        let c = AgentConfig::load(&path, &BTreeMap::new()).unwrap();
        assert_eq!(c.target.kind(), "exec");
    }

    /// The agent.toml inside the Kubernetes ConfigMap, with the env the pod
    /// spec sets, must be a valid config too.
    #[test]
    fn the_kubernetes_configmap_config_is_valid() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/agent-sidecar.yaml");
        let yaml = std::fs::read_to_string(&path).unwrap();
        let (_, block) = yaml.split_once("agent.toml: |\n").unwrap();
        let toml: String = block
            .lines()
            .take_while(|l| l.starts_with("    ") || l.is_empty())
            .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
            .collect();
        let env = BTreeMap::from([
            ("BATON_AGENT_MEMBER_ID".to_owned(), "orders-kv-0".to_owned()),
            (
                "BATON_AGENT_PROBE_LISTEN".to_owned(),
                "0.0.0.0:7480".to_owned(),
            ),
        ]);
        // The secret's files, where the pod mounts them.
        let tls = tempfile::tempdir().unwrap();
        for f in ["ca.crt", "tls.crt", "tls.key"] {
            std::fs::write(tls.path().join(f), "-----BEGIN X-----\n-----END X-----\n").unwrap();
        }
        let toml = toml.replace("/etc/baton/tls", &tls.path().to_string_lossy());
        let c = AgentConfig::from_toml(&toml, &path, &env).unwrap();
        assert_eq!(c.member.as_str(), "orders-kv-0");
    }
}
