//! The generic webhook sink: `POST url` with one JSON object per
//! notification. The shape is stable; fields may be added, never renamed or
//! removed, and `version` changes if that promise is ever broken:
//!
//! ```json
//! {"version": "1",
//!  "status": "firing",
//!  "alert": {"key": "BatonCatchUpStalled/c1/n2/r7",
//!            "labels": {"alertname": "BatonCatchUpStalled", "cluster": "c1",
//!                       "member": "n2", "rollout": "r7"},
//!            "annotations": {"summary": "…", "lag": "40", "trend": "…",
//!                            "stalled_for": "…", "runbook": "…"},
//!            "starts_at": "2023-11-14T22:13:20.000Z",
//!            "ends_at": null}}
//! ```
//!
//! - `status` is `firing` or `resolved`; a resolved notification has the
//!   same `key` and `starts_at` as its firing one, and `ends_at` set.
//! - Times are RFC 3339 UTC; `ends_at` is `null` while firing.
//! - Delivery is at least once: a receiver may see a notification twice
//!   (a retry after a lost answer) and should key on `key` + `status`.
//! - Any 2xx answer is success; 408, 429 and 5xx are retried; any other
//!   answer drops the notification.
//!
//! This module owns that shape; it does not retry.

use std::collections::BTreeMap;

use futures::FutureExt;
use futures::future::BoxFuture;
use hyper::Uri;
use serde::Serialize;

use super::{Alert, AlertSink, AlertStatus, SinkError, post, rfc3339};
use baton_net::http::HttpClient;

/// The version of the body shape above.
pub const FORMAT_VERSION: &str = "1";

/// Posts every notification to one URL.
#[derive(Debug)]
pub struct WebhookSink {
    name: String,
    url: Uri,
    client: HttpClient,
}

#[derive(Debug, Serialize)]
struct Body<'a> {
    version: &'static str,
    status: AlertStatus,
    alert: WireAlert<'a>,
}

#[derive(Debug, Serialize)]
struct WireAlert<'a> {
    key: String,
    labels: &'a BTreeMap<String, String>,
    annotations: &'a BTreeMap<String, String>,
    starts_at: String,
    ends_at: Option<String>,
}

impl WebhookSink {
    pub fn new(name: String, url: Uri, client: HttpClient) -> Self {
        WebhookSink { name, url, client }
    }

    fn body<'a>(&self, alert: &'a Alert) -> Body<'a> {
        Body {
            version: FORMAT_VERSION,
            status: alert.status,
            alert: WireAlert {
                key: alert.key(),
                labels: &alert.labels,
                annotations: &alert.annotations,
                starts_at: rfc3339(alert.starts_at),
                ends_at: alert.ends_at.map(rfc3339),
            },
        }
    }
}

impl AlertSink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<(), SinkError>> {
        async move { post(&self.client, &self.name, &self.url, &self.body(alert)).await }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use baton_planner::UnixMs;
    use baton_planner::alerts::AGENT_DOWN;
    use serde_json::json;

    use super::*;
    use crate::alerts::testing::RecordingServer;
    use baton_net::http::parse_url;

    #[tokio::test]
    async fn posts_the_documented_shape() {
        let server = RecordingServer::start(204).await;
        let url = parse_url(&format!("{}/hooks/baton?team=db", server.base_url())).unwrap();
        let client = HttpClient::new(Duration::from_secs(2)).unwrap();
        let sink = WebhookSink::new("hook".to_owned(), url, client);
        assert!(!sink.needs_refresh());
        let alert = Alert::firing(
            AGENT_DOWN,
            "c1",
            Some("n3"),
            None,
            UnixMs(1_700_000_000_000),
        )
        .annotate("summary", "agent on n3 is silent");
        sink.send(&alert).await.unwrap();
        sink.send(&alert.resolved(UnixMs(1_700_000_000_500)))
            .await
            .unwrap();

        let got = server.wait_for(2, Duration::from_secs(5)).await;
        assert!(got.iter().all(|r| r.path == "/hooks/baton?team=db"));
        let alert_json = |ends_at: serde_json::Value| {
            json!({
                "key": "BatonAgentDown/c1/n3/none",
                "labels": {"alertname": "BatonAgentDown", "cluster": "c1",
                           "member": "n3", "rollout": "none"},
                "annotations": {"summary": "agent on n3 is silent"},
                "starts_at": "2023-11-14T22:13:20.000Z",
                "ends_at": ends_at
            })
        };
        assert_eq!(
            got[0].body,
            json!({"version": "1", "status": "firing", "alert": alert_json(json!(null))})
        );
        assert_eq!(
            got[1].body,
            json!({"version": "1", "status": "resolved",
                   "alert": alert_json(json!("2023-11-14T22:13:20.500Z"))})
        );
    }
}
