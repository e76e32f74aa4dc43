//! The `[alerting]` section: its raw TOML shape, the validated
//! [`AlertingConfig`] (sinks and delivery timing), and the values a sink's
//! settings are made of (PagerDuty's [`RoutingKey`] and [`Severity`]).
//!
//! This module owns parsing and validating the section; the root config
//! (`crate::config`) embeds it. It imports nothing from the rest of the
//! alerts module, so neither the root config nor the sinks form an import
//! circle with it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use baton_net::http::parse_url;
use hyper::Uri;
use serde::{Deserialize, Serialize};

/// A bad `[alerting]` value, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum AlertingConfigError {
    #[error("config key `{key}` is invalid: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("config key `alerting.sink[{index}].{key}` is invalid: {reason}")]
    InvalidSink {
        index: usize,
        key: &'static str,
        reason: String,
    },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> AlertingConfigError {
    AlertingConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The notifier's first retry delay; each further retry doubles it.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(200);

/// PagerDuty's Events API v2 endpoint.
pub const DEFAULT_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// An Events API v2 integration key. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct RoutingKey(String);

impl RoutingKey {
    pub fn new(key: impl Into<String>) -> Self {
        RoutingKey(key.into())
    }

    pub fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// The key itself, for the request body only (never for logs).
    pub(in crate::alerts) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RoutingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RoutingKey(<redacted>)")
    }
}

/// The severities Events API v2 accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Critical,
    Error,
    Warning,
    Info,
}

impl Severity {
    pub const NAMES: &'static str = "critical, error, warning or info";

    pub fn parse(text: &str) -> Option<Severity> {
        match text {
            "critical" => Some(Severity::Critical),
            "error" => Some(Severity::Error),
            "warning" => Some(Severity::Warning),
            "info" => Some(Severity::Info),
            _ => None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerting {
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
        AlertingConfig {
            refresh_interval: Duration::from_secs(60),
            max_backoff: Duration::from_secs(10),
            give_up_after: Duration::from_secs(3600),
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

impl AlertingConfig {
    /// Validates `[alerting]`.
    pub fn from_raw(raw: RawAlerting) -> Result<AlertingConfig, AlertingConfigError> {
        alerting(raw)
    }
}

fn alerting(raw: RawAlerting) -> Result<AlertingConfig, AlertingConfigError> {
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
    let first_retry = INITIAL_BACKOFF;
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
            return Err(AlertingConfigError::InvalidSink {
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

fn sink(index: usize, raw: RawSink) -> Result<SinkConfig, AlertingConfigError> {
    let bad =
        |key: &'static str, reason: String| AlertingConfigError::InvalidSink { index, key, reason };
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
            let parsed = url("url", raw_url.as_deref().unwrap_or(DEFAULT_URL))?;
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
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::config::{ConfigError, CoordinatorConfig};

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
