//! Alert delivery: getting [`Alert`]s to the on-call without ever holding
//! up a rollout.
//!
//! - [`AlertSink`]: one destination behind one trait, with its
//!   [`SinkError`] saying whether a failure is worth retrying.
//! - [`alertmanager`], [`pagerduty`], [`webhook`]: the three sinks, each
//!   owning its wire shape and nothing else.
//! - [`config`]: the `[alerting]` section, parsed and validated here and
//!   embedded in the root config.
//! - the one HTTP(S) client they share is `baton_net::http` (rustls with
//!   `ring`).
//! - [`notifier`]: the spawned tasks that queue, retry, refresh and count;
//!   [`NotifierHandle::notify`] is synchronous and never waits on a sink.
//! - [`build_sinks`]: from the validated `[alerting]` config to sinks.
//!
//! This module decides *how* an alert is delivered, never *whether* one
//! fires: that is the planner's ([`baton_planner::alerts`]).

pub mod alertmanager;
pub mod config;
pub mod notifier;
pub mod pagerduty;
pub mod webhook;

#[cfg(test)]
pub(crate) mod testing;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use baton_planner::UnixMs;
pub use baton_planner::alerts::{Alert, AlertStatus};
use futures::future::BoxFuture;
use hyper::Uri;

pub use self::alertmanager::AlertmanagerSink;
use self::config::{AlertingConfig, SinkConfig, SinkKind};
pub use self::notifier::{Notifier, NotifierHandle, NotifierSettings, SinkStats};
pub use self::pagerduty::PagerDutySink;
pub use self::webhook::WebhookSink;
use baton_net::http::{self, HttpClient, HttpError};

/// One place alerts go. Implementations turn an [`Alert`] into one request
/// and report how it went; queueing and retrying are the notifier's job.
pub trait AlertSink: Send + Sync + Debug {
    /// The sink's name in logs and stats (unique per coordinator).
    fn name(&self) -> &str;

    /// Delivers one notification (firing or resolved), once.
    fn send<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<(), SinkError>>;

    /// Whether the destination forgets a firing alert that is not re-sent
    /// (Alertmanager resolves it after its `resolve_timeout`), so the
    /// notifier must re-post active alerts every refresh interval.
    fn needs_refresh(&self) -> bool {
        false
    }
}

/// Why a sink did not take an alert. [`SinkError::is_retryable`] splits
/// the transient (retry with backoff) from the permanent (log and drop).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("alert sink {sink}: cannot reach {url}: {reason}; check that it is up, retrying")]
    Unreachable {
        sink: String,
        url: String,
        reason: String,
    },
    #[error("alert sink {sink}: {url} did not answer within {timeout:?}; retrying")]
    Timeout {
        sink: String,
        url: String,
        timeout: Duration,
    },
    #[error("alert sink {sink}: {url} answered {status} (busy or failing): {body:?}; retrying")]
    Unavailable {
        sink: String,
        url: String,
        status: u16,
        body: String,
    },
    #[error(
        "alert sink {sink}: {url} refused the alert with {status}: {body:?}; \
         check this sink's url and key in [[alerting.sink]]; not retried"
    )]
    Refused {
        sink: String,
        url: String,
        status: u16,
        body: String,
    },
    #[error("alert sink {sink}: cannot send to {url}: {reason}; not retried")]
    Request {
        sink: String,
        url: String,
        reason: String,
    },
    #[error("alert sink {sink}: {reason}; fix this sink in [[alerting.sink]]")]
    BadUrl { sink: String, reason: String },
    #[error("alert sinks: cannot set up the HTTP(S) client: {0}")]
    Client(HttpError),
}

impl SinkError {
    /// Connection failures, timeouts, 5xx, 429 and 408 are worth retrying;
    /// any other refusal would be refused again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SinkError::Unreachable { .. }
                | SinkError::Timeout { .. }
                | SinkError::Unavailable { .. }
        )
    }

    fn from_http(sink: &str, url: &Uri, error: HttpError) -> SinkError {
        let (sink, url) = (sink.to_owned(), url.to_string());
        match error {
            HttpError::Connect(reason)
            | HttpError::Transport(reason)
            | HttpError::ReadAnswer(reason) => SinkError::Unreachable { sink, url, reason },
            HttpError::Timeout(timeout) => SinkError::Timeout { sink, url, timeout },
            other @ (HttpError::BadUrl { .. }
            | HttpError::Tls(_)
            | HttpError::Encode(_)
            | HttpError::Request(_)) => SinkError::Request {
                sink,
                url,
                reason: other.to_string(),
            },
        }
    }
}

/// POSTs `body` as JSON and sorts the answer: any 2xx is delivered; 408,
/// 429 and 5xx are retryable; anything else is a permanent refusal.
async fn post(
    client: &HttpClient,
    sink: &str,
    url: &Uri,
    body: &impl serde::Serialize,
) -> Result<(), SinkError> {
    let answer = client
        .post_json(url, body)
        .await
        .map_err(|e| SinkError::from_http(sink, url, e))?;
    let status = answer.status;
    if status.is_success() {
        return Ok(());
    }
    let (sink, url, body) = (sink.to_owned(), url.to_string(), answer.quoted_body());
    let code = status.as_u16();
    if status.is_server_error() || code == 429 || code == 408 {
        Err(SinkError::Unavailable {
            sink,
            url,
            status: code,
            body,
        })
    } else {
        Err(SinkError::Refused {
            sink,
            url,
            status: code,
            body,
        })
    }
}

/// `at` as an RFC 3339 UTC timestamp with milliseconds
/// (`2023-11-14T22:13:20.000Z`), the form all three sinks take.
pub fn rfc3339(at: UnixMs) -> String {
    at.rfc3339()
}

/// Builds the configured sinks, sharing one HTTP client. An empty
/// `[alerting]` gives no sinks (alerts are then only logged).
pub fn build_sinks(config: &AlertingConfig) -> Result<Vec<Arc<dyn AlertSink>>, SinkError> {
    if config.sinks.is_empty() {
        return Ok(Vec::new());
    }
    let client = HttpClient::new(http::DEFAULT_TIMEOUT).map_err(SinkError::Client)?;
    config
        .sinks
        .iter()
        .map(|sink| build_sink(sink, &client))
        .collect()
}

fn build_sink(config: &SinkConfig, client: &HttpClient) -> Result<Arc<dyn AlertSink>, SinkError> {
    let name = config.name.clone();
    Ok(match &config.kind {
        SinkKind::Alertmanager { url, generator_url } => Arc::new(
            AlertmanagerSink::new(name, url, client.clone())?
                .with_generator_url(generator_url.clone()),
        ),
        SinkKind::PagerDuty {
            url,
            routing_key,
            severity,
        } => Arc::new(PagerDutySink::new(
            name,
            url.clone(),
            routing_key.clone(),
            *severity,
            client.clone(),
        )),
        SinkKind::Webhook { url } => Arc::new(WebhookSink::new(name, url.clone(), client.clone())),
    })
}

/// The notifier's timing from `[alerting]` (other settings keep their
/// defaults).
pub fn notifier_settings(config: &AlertingConfig) -> NotifierSettings {
    NotifierSettings {
        refresh_interval: config.refresh_interval,
        max_backoff: config.max_backoff,
        give_up_after: config.give_up_after,
        ..NotifierSettings::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_is_transient_failures_only() {
        let s = || "am".to_owned();
        let u = || "http://127.0.0.1:1/".to_owned();
        let unavailable = SinkError::Unavailable {
            sink: s(),
            url: u(),
            status: 503,
            body: String::new(),
        };
        let refused = SinkError::Refused {
            sink: s(),
            url: u(),
            status: 400,
            body: "bad".to_owned(),
        };
        assert!(unavailable.is_retryable());
        assert!(!refused.is_retryable());
        let text = refused.to_string();
        assert!(
            text.contains("am") && text.contains("http://127.0.0.1:1/") && text.contains("400")
        );
    }

    #[test]
    fn no_sinks_configured_builds_none() {
        let sinks = build_sinks(&AlertingConfig::default()).unwrap();
        assert!(sinks.is_empty());
    }
}
