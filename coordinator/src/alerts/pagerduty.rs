//! The PagerDuty sink: Events API v2 (`POST /v2/enqueue`, answered 202).
//!
//! A firing alert is a `trigger`, its resolution a `resolve`; both carry the
//! alert's [`Alert::key`] as `dedup_key`, so PagerDuty folds them into one
//! incident:
//!
//! ```json
//! {"routing_key": "…", "event_action": "trigger",
//!  "dedup_key": "BatonCatchUpStalled/c1/n2/r7", "client": "baton",
//!  "payload": {"summary": "…", "source": "n2", "severity": "critical",
//!              "timestamp": "2023-11-14T22:13:20.000Z", "component": "baton",
//!              "group": "c1", "class": "BatonCatchUpStalled",
//!              "custom_details": {"alertname": "…", "lag": "40", …}}}
//! {"routing_key": "…", "event_action": "resolve",
//!  "dedup_key": "BatonCatchUpStalled/c1/n2/r7"}
//! ```
//!
//! `source` is the member, or the cluster for cluster-wide alerts;
//! `custom_details` holds every label and annotation. PagerDuty keeps an
//! incident open until it is resolved, so there is no refresh. This module
//! owns the event shape and keeps the routing key out of logs.

use std::collections::BTreeMap;

use futures::FutureExt;
use futures::future::BoxFuture;
use hyper::Uri;
use serde::Serialize;

use super::{Alert, AlertSink, AlertStatus, SinkError, post, rfc3339};
use baton_net::http::HttpClient;
use baton_planner::alerts::NONE_LABEL;

pub use super::config::{DEFAULT_URL, RoutingKey, Severity};

/// PagerDuty cuts `payload.summary` at this many characters.
const MAX_SUMMARY_CHARS: usize = 1024;

/// PagerDuty's limit on `dedup_key`.
pub const MAX_DEDUP_KEY_BYTES: usize = 255;

/// `key` as PagerDuty's `dedup_key`: itself when it fits, else a prefix
/// and a hash of the whole key, so the same alert always maps to the same
/// key and two long keys sharing a prefix still differ.
pub fn dedup_key(key: &str) -> String {
    if key.len() <= MAX_DEDUP_KEY_BYTES {
        return key.to_owned();
    }
    // FNV-1a, 64 bits: stable across builds and platforms.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let suffix = format!("#{hash:016x}");
    let mut cut = MAX_DEDUP_KEY_BYTES - suffix.len();
    while !key.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &key[..cut])
}

/// Sends alerts to one PagerDuty service (one routing key).
#[derive(Debug)]
pub struct PagerDutySink {
    name: String,
    url: Uri,
    routing_key: RoutingKey,
    severity: Severity,
    client: HttpClient,
}

#[derive(Debug, Serialize)]
struct Event<'a> {
    routing_key: &'a str,
    event_action: &'static str,
    dedup_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Payload<'a>>,
}

#[derive(Debug, Serialize)]
struct Payload<'a> {
    summary: String,
    source: &'a str,
    severity: Severity,
    timestamp: String,
    component: &'static str,
    group: &'a str,
    class: &'a str,
    custom_details: BTreeMap<&'a str, &'a str>,
}

impl PagerDutySink {
    pub fn new(
        name: String,
        url: Uri,
        routing_key: RoutingKey,
        severity: Severity,
        client: HttpClient,
    ) -> Self {
        PagerDutySink {
            name,
            url,
            routing_key,
            severity,
            client,
        }
    }

    fn event<'a>(&'a self, alert: &'a Alert) -> Event<'a> {
        let routing_key = self.routing_key.expose();
        let dedup_key = dedup_key(&alert.key());
        if alert.status == AlertStatus::Resolved {
            return Event {
                routing_key,
                event_action: "resolve",
                dedup_key,
                client: None,
                payload: None,
            };
        }
        let label = |key: &str| alert.labels.get(key).map_or(NONE_LABEL, String::as_str);
        let source = match alert.member() {
            NONE_LABEL => label("cluster"),
            member => member,
        };
        let custom_details = alert
            .labels
            .iter()
            .chain(&alert.annotations)
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let summary = alert.summary();
        let summary = match summary.char_indices().nth(MAX_SUMMARY_CHARS) {
            Some((cut, _)) => summary[..cut].to_owned(),
            None => summary,
        };
        Event {
            routing_key,
            event_action: "trigger",
            dedup_key,
            client: Some("baton"),
            payload: Some(Payload {
                summary,
                source,
                severity: self.severity,
                timestamp: rfc3339(alert.starts_at),
                component: "baton",
                group: label("cluster"),
                class: alert.name(),
                custom_details,
            }),
        }
    }
}

impl AlertSink for PagerDutySink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<(), SinkError>> {
        async move { post(&self.client, &self.name, &self.url, &self.event(alert)).await }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use baton_planner::UnixMs;
    use baton_planner::alerts::{CATCH_UP_STALLED, ROLLOUT_PAUSED};
    use serde_json::json;

    use super::*;
    use crate::alerts::testing::{RecordingServer, TlsServer};
    use baton_net::http::parse_url;

    fn sink(url: &str, client: HttpClient) -> PagerDutySink {
        PagerDutySink::new(
            "pd".to_owned(),
            parse_url(url).unwrap(),
            RoutingKey::new("0123456789abcdef0123456789abcdef"),
            Severity::Critical,
            client,
        )
    }

    fn stalled() -> Alert {
        Alert::firing(
            CATCH_UP_STALLED,
            "c1",
            Some("n2"),
            Some("r7"),
            UnixMs(1_700_000_000_000),
        )
        .annotate("summary", "n2 is not catching up")
        .annotate("lag", "40")
        .annotate("runbook", "see docs")
    }

    #[test]
    fn a_long_key_becomes_a_stable_dedup_key_within_the_limit() {
        assert_eq!(
            dedup_key("BatonAgentDown/c/n1/none"),
            "BatonAgentDown/c/n1/none"
        );
        let long = format!("BatonCatchUpStalled/{}/n2/none", "é".repeat(200));
        let other = format!("BatonCatchUpStalled/{}/n3/none", "é".repeat(200));
        let (a, b) = (dedup_key(&long), dedup_key(&other));
        assert!(a.len() <= MAX_DEDUP_KEY_BYTES && b.len() <= MAX_DEDUP_KEY_BYTES);
        assert_eq!(a, dedup_key(&long), "stable");
        assert_ne!(a, b, "same prefix, different alerts");
        assert!(a.starts_with("BatonCatchUpStalled/é"));
    }

    #[tokio::test]
    async fn trigger_and_resolve_share_the_dedup_key() {
        let server = RecordingServer::start(202).await;
        let client = HttpClient::new(Duration::from_secs(2)).unwrap();
        let sink = sink(&format!("{}/v2/enqueue", server.base_url()), client);
        assert!(!sink.needs_refresh());
        let alert = stalled();
        sink.send(&alert).await.unwrap();
        sink.send(&alert.resolved(UnixMs(1_700_000_100_000)))
            .await
            .unwrap();

        let got = server.wait_for(2, Duration::from_secs(5)).await;
        assert!(
            got.iter()
                .all(|r| r.path == "/v2/enqueue" && r.method == "POST")
        );
        assert_eq!(
            got[0].body,
            json!({
                "routing_key": "0123456789abcdef0123456789abcdef",
                "event_action": "trigger",
                "dedup_key": "BatonCatchUpStalled/c1/n2/r7",
                "client": "baton",
                "payload": {
                    "summary": "n2 is not catching up",
                    "source": "n2",
                    "severity": "critical",
                    "timestamp": "2023-11-14T22:13:20.000Z",
                    "component": "baton",
                    "group": "c1",
                    "class": "BatonCatchUpStalled",
                    "custom_details": {
                        "alertname": "BatonCatchUpStalled", "cluster": "c1",
                        "member": "n2", "rollout": "r7",
                        "summary": "n2 is not catching up", "lag": "40",
                        "runbook": "see docs"
                    }
                }
            })
        );
        assert_eq!(
            got[1].body,
            json!({
                "routing_key": "0123456789abcdef0123456789abcdef",
                "event_action": "resolve",
                "dedup_key": "BatonCatchUpStalled/c1/n2/r7"
            })
        );
    }

    #[test]
    fn a_cluster_wide_alert_names_the_cluster_as_source_and_long_summaries_are_cut() {
        let client = HttpClient::new(Duration::from_secs(2)).unwrap();
        let sink = sink("http://127.0.0.1:1/", client);
        let alert = Alert::firing(ROLLOUT_PAUSED, "c1", None, Some("r7"), UnixMs(0))
            .annotate("summary", "x".repeat(2000));
        let event = serde_json::to_value(sink.event(&alert)).unwrap();
        assert_eq!(event["payload"]["source"], "c1");
        assert_eq!(
            event["payload"]["summary"].as_str().map(str::len),
            Some(1024)
        );
    }

    #[test]
    fn the_routing_key_stays_out_of_debug_output() {
        let client = HttpClient::new(Duration::from_secs(2)).unwrap();
        let text = format!("{:?}", sink("http://127.0.0.1:1/", client));
        assert!(!text.contains("0123456789abcdef"), "{text}");
        assert!(text.contains("redacted"));
    }

    #[test]
    fn severities_parse() {
        assert_eq!(Severity::parse("warning"), Some(Severity::Warning));
        assert_eq!(Severity::parse("Critical"), None);
    }

    /// Real PagerDuty is HTTPS: the same client speaks TLS (rustls, ring)
    /// to a server whose CA it trusts.
    #[tokio::test]
    async fn delivers_over_https() {
        let server = TlsServer::start(202).await;
        let client = HttpClient::with_roots(server.roots(), Duration::from_secs(5)).unwrap();
        let sink = sink(&format!("{}/v2/enqueue", server.base_url()), client);
        sink.send(&stalled()).await.unwrap();
        let got = server.wait_for(1, Duration::from_secs(5)).await;
        assert_eq!(got[0].path, "/v2/enqueue");
        assert_eq!(got[0].body["event_action"], "trigger");
    }
}
