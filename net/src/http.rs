//! The one HTTP client: hyper-util's pooled client over hyper-rustls (the
//! `ring` provider; webpki roots, or a private CA and a client certificate
//! from [`ClientTls`]), for `http` and `https` URLs, one request at a time
//! with a whole-request timeout. The coordinator's alert sinks POST JSON
//! through it; the etcd adapter GETs etcd's `/version` (the cluster version
//! has no gRPC call), `baton-agent probe` GETs the agent's probes, and the
//! agent's presigned store sends the S3 requests the coordinator signed
//! ([`HttpClient::exchange`], and [`HttpClient::open`] for a body read as
//! it arrives).
//!
//! This module owns URL checking ([`parse_url`]) and the transport outcome
//! ([`HttpError`]). It does not decide what a status code means: each
//! caller does that.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;

use crate::tls::{ClientTls, TlsConfigError};

/// How long one request (connect, send, read the answer) may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The most of an answer's body we read (error bodies end up in logs).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How much of an answer's body an error message quotes.
const QUOTED_ANSWER_CHARS: usize = 300;

/// Why a POST did not produce an answer, or a URL is unusable.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url:?} is not a usable URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot set up TLS (ring provider): {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot encode the request body as JSON: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("cannot build the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the request failed: {0}")]
    Transport(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot read the answer: {0}")]
    ReadAnswer(String),
}

/// Parses and checks a sink URL: `http` or `https`, with a host, without
/// credentials (they would end up in logs; use a routing key instead).
pub fn parse_url(url: &str) -> Result<Uri, HttpError> {
    let bad = |reason: &str| HttpError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| {
        bad(&format!("{e}; expected e.g. http://127.0.0.1:9093"))
    })?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(bad(&format!("scheme {other:?}; use http or https"))),
        None => return Err(bad("no scheme; start it with http:// or https://")),
    }
    let Some(authority) = uri.authority() else {
        return Err(bad("no host"));
    };
    if authority.as_str().contains('@') {
        return Err(bad("credentials in the URL are not supported"));
    }
    if authority.host().is_empty() {
        return Err(bad("no host"));
    }
    Ok(uri)
}

/// The answer to a POST: its status and (the start of) its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub body: String,
}

impl Answer {
    /// The body, cut short enough to quote in an error message.
    pub fn quoted_body(&self) -> String {
        let trimmed = self.body.trim();
        match trimmed.char_indices().nth(QUOTED_ANSWER_CHARS) {
            Some((cut, _)) => format!("{}…", &trimmed[..cut]),
            None => trimmed.to_owned(),
        }
    }
}

/// The `User-Agent` of a client built without [`HttpClient::with_user_agent`].
const DEFAULT_USER_AGENT: &str = concat!("baton-coordinator/", env!("CARGO_PKG_VERSION"));

/// A pooled JSON-over-HTTP(S) client. Cheap to clone; clones share the pool.
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    user_agent: &'static str,
}

impl HttpClient {
    /// A client trusting the webpki (Mozilla) roots, as real PagerDuty needs.
    pub fn new(timeout: Duration) -> Result<Self, HttpError> {
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        Self::with_roots(roots, timeout)
    }

    /// A client trusting only `roots` (a private CA, or a test's).
    pub fn with_roots(roots: RootCertStore, timeout: Duration) -> Result<Self, HttpError> {
        let tls = rustls::ClientConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self::build(tls, None, timeout))
    }

    /// A client trusting `tls`'s CA, presenting its client certificate (if
    /// any) and verifying the server against its `domain` (if set).
    pub fn with_tls(tls: &ClientTls, timeout: Duration) -> Result<Self, TlsConfigError> {
        let server_name = tls.server_name()?;
        Ok(Self::build(tls.rustls_config()?, server_name, timeout))
    }

    /// The same client, sending `user_agent` (e.g. `baton-agent/0.1.0`).
    pub fn with_user_agent(mut self, user_agent: &'static str) -> Self {
        self.user_agent = user_agent;
        self
    }

    fn build(
        tls: rustls::ClientConfig,
        server_name: Option<rustls::pki_types::ServerName<'static>>,
        timeout: Duration,
    ) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(timeout));
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let builder = match server_name {
            Some(name) => builder
                .https_or_http()
                .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name)),
            None => builder.https_or_http(),
        };
        let connector = builder.enable_http1().wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        HttpClient {
            client,
            timeout,
            user_agent: DEFAULT_USER_AGENT,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// POSTs `body` as JSON to `url` and returns the answer, whatever its
    /// status. Connecting, sending and reading share one timeout.
    pub async fn post_json(
        &self,
        url: &Uri,
        body: &impl serde::Serialize,
    ) -> Result<Answer, HttpError> {
        let json = serde_json::to_vec(body)?;
        let request = Request::post(url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, self.user_agent)
            .body(Full::new(Bytes::from(json)))?;
        self.send(request).await
    }

    /// GETs `url` and returns the answer, whatever its status, under the
    /// same one timeout.
    pub async fn get(&self, url: &Uri) -> Result<Answer, HttpError> {
        let request = Request::get(url.clone())
            .header(USER_AGENT, self.user_agent)
            .body(Full::new(Bytes::new()))?;
        self.send(request).await
    }

    /// Sends `method` to `url` with `headers` and `body`, and reads the
    /// answer (its first 64 KiB) whatever its status, under the one timeout.
    pub async fn exchange(
        &self,
        method: hyper::Method,
        url: &Uri,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<Answer, HttpError> {
        let request = self.request(method, url, headers, body)?;
        self.send(request).await
    }

    /// Sends `method` to `url` with `headers` and no body, and returns the
    /// response once its head has arrived (within the timeout). The body is
    /// the caller's to read, at its own pace and with its own stall limit.
    pub async fn open(
        &self,
        method: hyper::Method,
        url: &Uri,
        headers: &[(String, String)],
    ) -> Result<hyper::Response<hyper::body::Incoming>, HttpError> {
        let request = self.request(method, url, headers, Bytes::new())?;
        tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| HttpError::Timeout(self.timeout))?
            .map_err(|e| {
                if e.is_connect() {
                    HttpError::Connect(chain(&e))
                } else {
                    HttpError::Transport(chain(&e))
                }
            })
    }

    fn request(
        &self,
        method: hyper::Method,
        url: &Uri,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, HttpError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(url.clone())
            .header(USER_AGENT, self.user_agent);
        for (name, value) in headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        Ok(builder.body(Full::new(body))?)
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Result<Answer, HttpError> {
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                if e.is_connect() {
                    HttpError::Connect(chain(&e))
                } else {
                    HttpError::Transport(chain(&e))
                }
            })?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| HttpError::ReadAnswer(e.to_string()))?
                .to_bytes();
            Ok(Answer {
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout(self.timeout))?
    }
}

/// An error and its causes on one line, each cause once ("client error
/// (Connect): tcp connect error: Connection refused"). Shared by every
/// baton client that reports transport errors (this one, the etcd adapter).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    // Bounded: error chains are short, but never trust a cycle.
    for _ in 0..8 {
        let Some(cause) = source else { break };
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn an_error_chain_names_each_cause_once() {
        // The innermost cause is already quoted inside its parent's text.
        let os = Layer("connection refused (os error 111)", None);
        let tcp = Layer(
            "tcp connect error: connection refused (os error 111) dialing 127.0.0.1:9",
            Some(Box::new(os)),
        );
        let top = Layer("client error (Connect)", Some(Box::new(tcp)));
        assert_eq!(
            chain(&top),
            "client error (Connect): tcp connect error: connection refused (os error 111) dialing 127.0.0.1:9"
        );
    }

    #[test]
    fn urls_must_be_http_or_https_with_a_host_and_no_credentials() {
        assert!(parse_url("http://127.0.0.1:9093").is_ok());
        assert!(parse_url("https://events.pagerduty.com/v2/enqueue").is_ok());
        for (url, why) in [
            ("ftp://host/x", "scheme"),
            ("127.0.0.1:9093", "scheme"),
            ("/api/v2/alerts", "scheme"),
            ("http://user:pw@host/", "credentials"),
            ("not a url", "expected"),
        ] {
            let err = parse_url(url).unwrap_err().to_string();
            assert!(err.contains(why), "{url}: {err} should mention {why}");
        }
    }

    #[test]
    fn quoted_bodies_are_trimmed_and_cut() {
        let long = Answer {
            status: StatusCode::BAD_REQUEST,
            body: format!("  {}  ", "é".repeat(1000)),
        };
        let quoted = long.quoted_body();
        assert_eq!(quoted.chars().count(), QUOTED_ANSWER_CHARS + 1);
        assert!(quoted.ends_with('…'));
        let short = Answer {
            status: StatusCode::OK,
            body: " ok\n".to_owned(),
        };
        assert_eq!(short.quoted_body(), "ok");
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let client = HttpClient::new(Duration::from_secs(2)).unwrap();
        let url = parse_url(&format!("http://127.0.0.1:{port}/x")).unwrap();
        let err = client.post_json(&url, &serde_json::json!({})).await;
        assert!(matches!(err, Err(HttpError::Connect(_))), "{err:?}");
    }
}
