//! The coordinator's configuration: TOML once at start, environment
//! overrides, validated into [`CoordinatorConfig`]. A bad config names the
//! key; `main` turns it into exit 64. Nothing else reads the environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_domain::MemberId;
use baton_planner::Policy;
use baton_planner::policy::OnStall;
use hyper::Uri;
use serde::Deserialize;

use crate::alerts::pagerduty::{self, RoutingKey, Severity};
use baton_net::http::parse_url;

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
    #[error("config key `alerting.sink[{index}].{key}` is invalid: {reason}")]
    InvalidSink {
        index: usize,
        key: &'static str,
        reason: String,
    },
    #[error("environment variable {var} (overrides `{key}`) is invalid: {reason}")]
    Env {
        var: &'static str,
        key: &'static str,
        reason: String,
    },
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
    store: Option<RawStore>,
    metrics_listen: Option<String>,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    alerting: RawAlerting,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    kind: String,
    path: Option<PathBuf>,
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
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
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
    /// The artifact store (a directory for now).
    pub store: Option<PathBuf>,
    /// Where `/metrics` is served (plain HTTP); None: not served.
    pub metrics_listen: Option<SocketAddr>,
    pub policy: Policy,
    /// Where alerts go (`[alerting]`); no sinks by default.
    pub alerting: AlertingConfig,
}

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
        Self::from_toml(&text, path, env)
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
        let tls = raw.tls.map(|t| TlsConfig {
            cert: t.cert,
            key: t.key,
            client_ca: t.client_ca,
        });
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
        let store = match raw.store {
            None => None,
            Some(RawStore { kind, path }) => match kind.as_str() {
                "dir" => {
                    Some(path.ok_or_else(|| invalid("store.path", "missing for kind = \"dir\""))?)
                }
                other => {
                    return Err(invalid(
                        "store.kind",
                        format!("unknown store {other:?}; known: dir"),
                    ));
                }
            },
        };
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
        let policy = policy(raw.policy, members.len())?;
        let alerting = alerting(raw.alerting)?;
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
            alerting,
        })
    }
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
    let max_unavailable = raw.max_unavailable.unwrap_or(d.max_unavailable);
    let cap = Policy::quorum_cap(members);
    if max_unavailable == 0 || max_unavailable > cap {
        return Err(invalid(
            "policy.max_unavailable",
            format!(
                "{max_unavailable} is outside 1..={cap} for {members} members ((N-1)/2 keeps quorum)"
            ),
        ));
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
    };
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerting {
    refresh_interval_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    give_up_after_ms: Option<u64>,
    #[serde(default)]
    sink: Vec<RawSink>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    kind: String,
    name: Option<String>,
    url: Option<String>,
    generator_url: Option<String>,
    routing_key: Option<RoutingKey>,
    routing_key_file: Option<PathBuf>,
    severity: Option<String>,
}

/// Alert delivery (`[alerting]`): the sinks, and how long to keep trying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertingConfig {
    /// How often active alerts are re-posted to Alertmanager sinks.
    pub refresh_interval: Duration,
    /// The longest delay between two delivery attempts.
    pub max_backoff: Duration,
    /// A notification undelivered this long is dropped (and logged).
    pub give_up_after: Duration,
    /// In the order configured; empty means alerts are only logged.
    pub sinks: Vec<SinkConfig>,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        let d = crate::alerts::NotifierSettings::default();
        AlertingConfig {
            refresh_interval: d.refresh_interval,
            max_backoff: d.max_backoff,
            give_up_after: d.give_up_after,
            sinks: Vec::new(),
        }
    }
}

/// One `[[alerting.sink]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkConfig {
    /// Unique among sinks; defaults to the kind.
    pub name: String,
    pub kind: SinkKind,
}

/// A sink's kind and its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkKind {
    /// Alertmanager API v2; `url` is the base URL (`/api/v2/alerts` is added).
    Alertmanager {
        url: Uri,
        generator_url: Option<String>,
    },
    /// PagerDuty Events API v2.
    PagerDuty {
        url: Uri,
        routing_key: RoutingKey,
        severity: Severity,
    },
    /// The generic JSON webhook (see `alerts::webhook`).
    Webhook { url: Uri },
}

const SINK_KINDS: &str = "alertmanager, pagerduty, webhook";

fn alerting(raw: RawAlerting) -> Result<AlertingConfig, ConfigError> {
    let d = AlertingConfig::default();
    let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
    let refresh_interval = ms(raw.refresh_interval_ms, d.refresh_interval);
    if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&refresh_interval) {
        return Err(invalid(
            "alerting.refresh_interval_ms",
            "must be between 1000 and 300000 (below Alertmanager's resolve_timeout, 5 min by default)",
        ));
    }
    let max_backoff = ms(raw.max_backoff_ms, d.max_backoff);
    let first_retry = crate::alerts::NotifierSettings::default().initial_backoff;
    if max_backoff < first_retry {
        return Err(invalid(
            "alerting.max_backoff_ms",
            format!(
                "must be at least {} (the first retry delay)",
                first_retry.as_millis()
            ),
        ));
    }
    let give_up_after = ms(raw.give_up_after_ms, d.give_up_after);
    if give_up_after.is_zero() {
        return Err(invalid("alerting.give_up_after_ms", "must be above 0"));
    }
    let mut sinks: Vec<SinkConfig> = Vec::new();
    for (index, raw) in raw.sink.into_iter().enumerate() {
        let sink = sink(index, raw)?;
        if let Some(other) = sinks.iter().position(|s| s.name == sink.name) {
            return Err(ConfigError::InvalidSink {
                index,
                key: "name",
                reason: format!(
                    "{:?} is already the name of alerting.sink[{other}]; give each sink its own `name`",
                    sink.name
                ),
            });
        }
        sinks.push(sink);
    }
    Ok(AlertingConfig {
        refresh_interval,
        max_backoff,
        give_up_after,
        sinks,
    })
}

fn sink(index: usize, raw: RawSink) -> Result<SinkConfig, ConfigError> {
    let bad = |key: &'static str, reason: String| ConfigError::InvalidSink { index, key, reason };
    let url = |key: &'static str, text: &str| parse_url(text).map_err(|e| bad(key, e.to_string()));
    let only_for = |key: &'static str, set: bool, kind: &str| {
        if set {
            Err(bad(key, format!("only applies to kind = {kind:?}")))
        } else {
            Ok(())
        }
    };
    let RawSink {
        kind,
        name,
        url: raw_url,
        generator_url,
        routing_key,
        routing_key_file,
        severity,
    } = raw;
    let pagerduty_keys = [
        ("routing_key", routing_key.is_some()),
        ("routing_key_file", routing_key_file.is_some()),
        ("severity", severity.is_some()),
    ];
    let sink_kind = match kind.as_str() {
        "alertmanager" | "webhook" => {
            for (key, set) in pagerduty_keys {
                only_for(key, set, "pagerduty")?;
            }
            let Some(raw_url) = raw_url else {
                return Err(bad("url", format!("missing for kind = {kind:?}")));
            };
            let parsed = url("url", &raw_url)?;
            if kind == "webhook" {
                only_for("generator_url", generator_url.is_some(), "alertmanager")?;
                SinkKind::Webhook { url: parsed }
            } else {
                if let Some(g) = &generator_url {
                    url("generator_url", g)?;
                }
                SinkKind::Alertmanager {
                    url: parsed,
                    generator_url,
                }
            }
        }
        "pagerduty" => {
            only_for("generator_url", generator_url.is_some(), "alertmanager")?;
            let parsed = url("url", raw_url.as_deref().unwrap_or(pagerduty::DEFAULT_URL))?;
            let routing_key = match (routing_key, routing_key_file) {
                (Some(key), None) => key,
                (None, Some(path)) => {
                    let text = std::fs::read_to_string(&path).map_err(|e| {
                        bad(
                            "routing_key_file",
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?;
                    RoutingKey::new(text.trim())
                }
                (Some(_), Some(_)) => {
                    return Err(bad(
                        "routing_key",
                        "set either routing_key or routing_key_file, not both".to_owned(),
                    ));
                }
                (None, None) => {
                    return Err(bad(
                        "routing_key",
                        "missing: set routing_key (or routing_key_file) to the Events API v2 integration key".to_owned(),
                    ));
                }
            };
            if routing_key.is_blank() {
                return Err(bad("routing_key", "is empty".to_owned()));
            }
            let severity = match severity.as_deref() {
                None => Severity::default(),
                Some(text) => Severity::parse(text)
                    .ok_or_else(|| bad("severity", format!("{text:?}; use {}", Severity::NAMES)))?,
            };
            SinkKind::PagerDuty {
                url: parsed,
                routing_key,
                severity,
            }
        }
        other => {
            return Err(bad(
                "kind",
                format!("unknown sink kind {other:?}; known: {SINK_KINDS}"),
            ));
        }
    };
    let name = name.unwrap_or(kind);
    if name.trim().is_empty() {
        return Err(bad("name", "is empty".to_owned()));
    }
    Ok(SinkConfig {
        name,
        kind: sink_kind,
    })
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
    fn good_config_and_env_override() {
        let c = load(GOOD, &[("BATON_LISTEN", "127.0.0.1:9000")]).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.members.len(), 3);
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

#[cfg(test)]
mod alerting_tests {
    use super::*;

    const BASE: &str = "cluster_id = \"demo\"\nmembers = [\"n1\", \"n2\", \"n3\"]\n";

    fn load(alerting: &str) -> Result<CoordinatorConfig, ConfigError> {
        CoordinatorConfig::from_toml(
            &format!("{BASE}{alerting}"),
            Path::new("c.toml"),
            &BTreeMap::new(),
        )
    }

    #[test]
    fn no_alerting_table_means_no_sinks_and_default_timing() {
        let c = load("").unwrap();
        assert_eq!(c.alerting, AlertingConfig::default());
        assert!(c.alerting.sinks.is_empty());
        assert_eq!(c.alerting.refresh_interval, Duration::from_secs(60));
        assert_eq!(c.alerting.max_backoff, Duration::from_secs(10));
        assert_eq!(c.alerting.give_up_after, Duration::from_secs(3600));
    }

    #[test]
    fn every_sink_kind_parses() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("pd.key");
        std::fs::write(&key_file, "fedcba9876543210fedcba9876543210\n").unwrap();
        let c = load(&format!(
            "[alerting]\nrefresh_interval_ms = 30000\nmax_backoff_ms = 5000\ngive_up_after_ms = 600000\n\
             [[alerting.sink]]\nkind = \"alertmanager\"\nurl = \"http://127.0.0.1:9093\"\n\
             generator_url = \"http://coordinator:7400/\"\n\
             [[alerting.sink]]\nkind = \"pagerduty\"\nrouting_key = \"0123456789abcdef0123456789abcdef\"\n\
             [[alerting.sink]]\nkind = \"pagerduty\"\nname = \"pd-db\"\nrouting_key_file = {key_file:?}\n\
             severity = \"warning\"\nurl = \"http://127.0.0.1:8080/v2/enqueue\"\n\
             [[alerting.sink]]\nkind = \"webhook\"\nurl = \"https://hooks.example.com/baton?x=1\"\n"
        ))
        .unwrap();
        let a = &c.alerting;
        assert_eq!(a.refresh_interval, Duration::from_secs(30));
        assert_eq!(a.max_backoff, Duration::from_secs(5));
        assert_eq!(a.give_up_after, Duration::from_secs(600));
        let names: Vec<&str> = a.sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["alertmanager", "pagerduty", "pd-db", "webhook"]);
        assert_eq!(
            a.sinks[0].kind,
            SinkKind::Alertmanager {
                url: Uri::from_static("http://127.0.0.1:9093"),
                generator_url: Some("http://coordinator:7400/".to_owned()),
            }
        );
        assert_eq!(
            a.sinks[1].kind,
            SinkKind::PagerDuty {
                url: Uri::from_static("https://events.pagerduty.com/v2/enqueue"),
                routing_key: RoutingKey::new("0123456789abcdef0123456789abcdef"),
                severity: Severity::Critical,
            }
        );
        assert_eq!(
            a.sinks[2].kind,
            SinkKind::PagerDuty {
                url: Uri::from_static("http://127.0.0.1:8080/v2/enqueue"),
                routing_key: RoutingKey::new("fedcba9876543210fedcba9876543210"),
                severity: Severity::Warning,
            }
        );
        assert_eq!(
            a.sinks[3].kind,
            SinkKind::Webhook {
                url: Uri::from_static("https://hooks.example.com/baton?x=1"),
            }
        );
        assert!(
            !format!("{c:?}").contains("0123456789abcdef"),
            "routing keys stay out of Debug"
        );
        let sinks = crate::alerts::build_sinks(a).unwrap();
        let built: Vec<(&str, bool)> = sinks
            .iter()
            .map(|s| (s.name(), s.needs_refresh()))
            .collect();
        assert_eq!(
            built,
            [
                ("alertmanager", true),
                ("pagerduty", false),
                ("pd-db", false),
                ("webhook", false)
            ]
        );
    }

    #[test]
    fn bad_alerting_configs_name_the_key_and_say_why() {
        let am = "[[alerting.sink]]\nkind = \"alertmanager\"\nurl = \"http://127.0.0.1:9093\"\n";
        for (text, key, why) in [
            (
                "[alerting]\nrefresh_interval_ms = 0\n".to_owned(),
                "`alerting.refresh_interval_ms`",
                "between",
            ),
            (
                "[alerting]\nrefresh_interval_ms = 600000\n".to_owned(),
                "`alerting.refresh_interval_ms`",
                "resolve_timeout",
            ),
            (
                "[alerting]\nmax_backoff_ms = 10\n".to_owned(),
                "`alerting.max_backoff_ms`",
                "200",
            ),
            (
                "[alerting]\ngive_up_after_ms = 0\n".to_owned(),
                "`alerting.give_up_after_ms`",
                "above 0",
            ),
            (
                "[alerting]\nretries = 3\n".to_owned(),
                "retries",
                "unknown field",
            ),
            (
                "[[alerting.sink]]\nkind = \"slack\"\nurl = \"http://x\"\n".to_owned(),
                "`alerting.sink[0].kind`",
                "alertmanager, pagerduty, webhook",
            ),
            (
                "[[alerting.sink]]\nkind = \"webhook\"\n".to_owned(),
                "`alerting.sink[0].url`",
                "missing",
            ),
            (
                "[[alerting.sink]]\nkind = \"webhook\"\nurl = \"ftp://host/x\"\n".to_owned(),
                "`alerting.sink[0].url`",
                "http or https",
            ),
            (
                "[[alerting.sink]]\nkind = \"alertmanager\"\nurl = \"127.0.0.1:9093\"\n".to_owned(),
                "`alerting.sink[0].url`",
                "scheme",
            ),
            (
                "[[alerting.sink]]\nkind = \"pagerduty\"\n".to_owned(),
                "`alerting.sink[0].routing_key`",
                "missing",
            ),
            (
                "[[alerting.sink]]\nkind = \"pagerduty\"\nrouting_key = \" \"\n".to_owned(),
                "`alerting.sink[0].routing_key`",
                "empty",
            ),
            (
                "[[alerting.sink]]\nkind = \"pagerduty\"\nrouting_key = \"k\"\nrouting_key_file = \"/k\"\n"
                    .to_owned(),
                "`alerting.sink[0].routing_key`",
                "not both",
            ),
            (
                "[[alerting.sink]]\nkind = \"pagerduty\"\nrouting_key_file = \"/nonexistent/baton/pd.key\"\n"
                    .to_owned(),
                "`alerting.sink[0].routing_key_file`",
                "/nonexistent/baton/pd.key",
            ),
            (
                "[[alerting.sink]]\nkind = \"pagerduty\"\nrouting_key = \"k\"\nseverity = \"page\"\n"
                    .to_owned(),
                "`alerting.sink[0].severity`",
                "critical, error, warning or info",
            ),
            (
                format!("{am}routing_key = \"k\"\n"),
                "`alerting.sink[0].routing_key`",
                "pagerduty",
            ),
            (
                "[[alerting.sink]]\nkind = \"webhook\"\nurl = \"http://h/\"\ngenerator_url = \"http://g/\"\n"
                    .to_owned(),
                "`alerting.sink[0].generator_url`",
                "alertmanager",
            ),
            (
                format!("{am}{am}"),
                "`alerting.sink[1].name`",
                "alerting.sink[0]",
            ),
            (
                format!("{am}name = \"\"\n"),
                "`alerting.sink[0].name`",
                "empty",
            ),
            (
                format!("{am}colour = \"red\"\n"),
                "colour",
                "unknown field",
            ),
        ] {
            let err = load(&text).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains(why),
                "{text}: {err} should name {key} and say {why}"
            );
        }
    }

    /// The shipped example configures alerting too.
    #[test]
    fn the_shipped_example_has_an_alerting_section() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/coordinator.toml");
        let c = CoordinatorConfig::load(&path, &BTreeMap::new()).unwrap();
        assert!(!c.alerting.sinks.is_empty());
    }
}
