//! The Alertmanager sink: `POST {base_url}/api/v2/alerts` with a JSON array
//! of one postable alert (Alertmanager API v2):
//!
//! ```json
//! [{"labels": {"alertname": "BatonCatchUpStalled", "cluster": "c1",
//!              "member": "n2", "rollout": "r7"},
//!   "annotations": {"summary": "…", "lag": "40", "runbook": "…"},
//!   "startsAt": "2023-11-14T22:13:20.000Z",
//!   "endsAt": "2023-11-14T22:20:00.000Z",
//!   "generatorURL": "http://…"}]
//! ```
//!
//! `endsAt` is sent only on the resolved notification. Alertmanager resolves
//! a firing alert by itself once its `resolve_timeout` passes without a
//! re-post, so this sink asks the notifier for refreshes. This module owns
//! the wire shape; it does not retry.

use futures::FutureExt;
use futures::future::BoxFuture;
use hyper::Uri;
use serde::Serialize;

use super::{Alert, AlertSink, AlertStatus, SinkError, post, rfc3339};
use baton_net::http::{HttpClient, parse_url};

/// Where Alertmanager v2 takes alerts, below its base URL.
const ALERTS_PATH: &str = "/api/v2/alerts";

/// Posts alerts to one Alertmanager (for an HA pair, configure one sink per
/// replica: Alertmanager gossips and deduplicates).
#[derive(Debug)]
pub struct AlertmanagerSink {
    name: String,
    url: Uri,
    generator_url: Option<String>,
    client: HttpClient,
}

/// One entry of the `postableAlerts` array.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PostableAlert<'a> {
    labels: &'a std::collections::BTreeMap<String, String>,
    annotations: &'a std::collections::BTreeMap<String, String>,
    starts_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ends_at: Option<String>,
    #[serde(rename = "generatorURL", skip_serializing_if = "Option::is_none")]
    generator_url: Option<&'a str>,
}

impl AlertmanagerSink {
    /// A sink posting to `base_url` (e.g. `http://127.0.0.1:9093`, or with a
    /// route prefix such as `http://host/alertmanager`).
    pub fn new(name: String, base_url: &Uri, client: HttpClient) -> Result<Self, SinkError> {
        let bad = |reason: String| SinkError::BadUrl {
            sink: name.clone(),
            reason,
        };
        if base_url.query().is_some() {
            return Err(bad(format!(
                "Alertmanager base URL {base_url} has a query; give only scheme, host, port and any route prefix"
            )));
        }
        let base = base_url.to_string();
        let url = parse_url(&format!("{}{ALERTS_PATH}", base.trim_end_matches('/')))
            .map_err(|e| bad(e.to_string()))?;
        Ok(AlertmanagerSink {
            name,
            url,
            generator_url: None,
            client,
        })
    }

    /// Sets the `generatorURL` every alert links back to (e.g. the
    /// coordinator's status page).
    pub fn with_generator_url(mut self, url: Option<String>) -> Self {
        self.generator_url = url;
        self
    }

    /// The full URL alerts are posted to.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    fn body<'a>(&'a self, alert: &'a Alert) -> [PostableAlert<'a>; 1] {
        let ends_at = match alert.status {
            AlertStatus::Firing => None,
            // A resolution without its time still ends now-ish: use the
            // start, which Alertmanager accepts as "already over".
            AlertStatus::Resolved => Some(rfc3339(alert.ends_at.unwrap_or(alert.starts_at))),
        };
        [PostableAlert {
            labels: &alert.labels,
            annotations: &alert.annotations,
            starts_at: rfc3339(alert.starts_at),
            ends_at,
            generator_url: self.generator_url.as_deref(),
        }]
    }
}

impl AlertSink for AlertmanagerSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<(), SinkError>> {
        async move { post(&self.client, &self.name, &self.url, &self.body(alert)).await }.boxed()
    }

    fn needs_refresh(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use baton_planner::UnixMs;
    use baton_planner::alerts::CATCH_UP_STALLED;
    use serde_json::json;

    use super::*;
    use crate::alerts::testing::RecordingServer;

    fn client() -> HttpClient {
        HttpClient::new(Duration::from_secs(2)).unwrap()
    }

    #[tokio::test]
    async fn posts_an_array_with_starts_at_and_ends_at_only_when_resolved() {
        let server = RecordingServer::start(200).await;
        let base = parse_url(&format!("{}/", server.base_url())).unwrap();
        let sink = AlertmanagerSink::new("am".to_owned(), &base, client())
            .unwrap()
            .with_generator_url(Some("http://coordinator/status".to_owned()));
        assert!(sink.needs_refresh());
        let firing = Alert::firing(
            CATCH_UP_STALLED,
            "c1",
            Some("n2"),
            Some("r7"),
            UnixMs(1_700_000_000_123),
        )
        .annotate("summary", "n2 is not catching up")
        .annotate("lag", "40");
        sink.send(&firing).await.unwrap();
        sink.send(&firing.resolved(UnixMs(1_700_000_060_000)))
            .await
            .unwrap();

        let got = server.wait_for(2, Duration::from_secs(5)).await;
        assert_eq!(got.len(), 2);
        for r in &got {
            assert_eq!(r.method, "POST");
            assert_eq!(r.path, "/api/v2/alerts");
            assert_eq!(r.content_type.as_deref(), Some("application/json"));
        }
        let labels = json!({"alertname": "BatonCatchUpStalled", "cluster": "c1",
                            "member": "n2", "rollout": "r7"});
        let annotations = json!({"summary": "n2 is not catching up", "lag": "40"});
        assert_eq!(
            got[0].body,
            json!([{"labels": labels, "annotations": annotations,
                    "startsAt": "2023-11-14T22:13:20.123Z",
                    "generatorURL": "http://coordinator/status"}])
        );
        assert_eq!(
            got[1].body,
            json!([{"labels": labels, "annotations": annotations,
                    "startsAt": "2023-11-14T22:13:20.123Z",
                    "endsAt": "2023-11-14T22:14:20.000Z",
                    "generatorURL": "http://coordinator/status"}])
        );
    }

    #[tokio::test]
    async fn a_route_prefix_is_kept_and_statuses_are_sorted() {
        let server = RecordingServer::start(200).await;
        server.script([503, 400]);
        let base = parse_url(&format!("{}/am", server.base_url())).unwrap();
        let sink = AlertmanagerSink::new("am".to_owned(), &base, client()).unwrap();
        let alert = Alert::firing(CATCH_UP_STALLED, "c1", None, None, UnixMs(0));
        let busy = sink.send(&alert).await.unwrap_err();
        assert!(busy.is_retryable(), "{busy}");
        let refused = sink.send(&alert).await.unwrap_err();
        assert!(!refused.is_retryable(), "{refused}");
        let text = refused.to_string();
        assert!(text.contains("am") && text.contains("/am/api/v2/alerts") && text.contains("400"));
        let got = server.wait_for(2, Duration::from_secs(5)).await;
        assert!(got.iter().all(|r| r.path == "/am/api/v2/alerts"));
    }

    #[test]
    fn a_base_url_with_a_query_is_refused() {
        let base = parse_url("http://127.0.0.1:9093/?x=1").unwrap();
        let err = AlertmanagerSink::new("am".to_owned(), &base, client()).unwrap_err();
        assert!(err.to_string().contains("query"), "{err}");
    }
}
