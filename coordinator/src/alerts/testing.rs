//! Test doubles for alert delivery: a real HTTP listener that records what
//! sinks post and answers scripted statuses, the same over TLS, and a fake
//! [`AlertSink`] that records calls and fails on demand.
//!
//! Everything binds `127.0.0.1:0` and stops when dropped. Test-only.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Alert, AlertSink, SinkError};

/// One request a test server saw, and the status it answered.
#[derive(Clone, Debug)]
pub(crate) struct Recorded {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub content_type: Option<String>,
    pub body: serde_json::Value,
    pub answered: u16,
}

#[derive(Debug)]
struct Script {
    default_status: u16,
    next: Mutex<VecDeque<u16>>,
    recorded: Mutex<Vec<Recorded>>,
}

impl Script {
    fn new(default_status: u16) -> Arc<Script> {
        Arc::new(Script {
            default_status,
            next: Mutex::new(VecDeque::new()),
            recorded: Mutex::new(Vec::new()),
        })
    }

    fn record(
        &self,
        method: String,
        path: String,
        content_type: Option<String>,
        body: &[u8],
    ) -> u16 {
        let answered = self
            .next
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(self.default_status);
        let body = serde_json::from_slice(body)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(body).into()));
        self.recorded.lock().unwrap().push(Recorded {
            method,
            path,
            content_type,
            body,
            answered,
        });
        answered
    }

    fn recorded(&self) -> Vec<Recorded> {
        self.recorded.lock().unwrap().clone()
    }

    /// Polls until `n` requests were recorded; panics with what was seen
    /// if `within` passes first.
    async fn wait_for(&self, n: usize, within: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.recorded();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} requests within {within:?}, got {}: {got:#?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A plain-HTTP listener (axum) recording every request.
#[derive(Debug)]
pub(crate) struct RecordingServer {
    addr: SocketAddr,
    script: Arc<Script>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

async fn record(
    State(script): State<Arc<Script>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), ToString::to_string);
    let status = script.record(method.to_string(), path, content_type, &body);
    StatusCode::from_u16(status).unwrap()
}

impl RecordingServer {
    /// Listens on a fresh port, answering `default_status` unless scripted.
    pub async fn start(default_status: u16) -> RecordingServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        RecordingServer::serve(listener, default_status)
    }

    /// Serves on an already-bound listener.
    pub fn serve(listener: TcpListener, default_status: u16) -> RecordingServer {
        let addr = listener.local_addr().unwrap();
        let script = Script::new(default_status);
        let stop = CancellationToken::new();
        let app = Router::new().fallback(record).with_state(script.clone());
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .unwrap();
        });
        RecordingServer {
            addr,
            script,
            stop,
            task,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next requests get these statuses, in order.
    pub fn script(&self, statuses: impl IntoIterator<Item = u16>) {
        self.script.next.lock().unwrap().extend(statuses);
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.script.recorded()
    }

    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Recorded> {
        self.script.wait_for(n, within).await
    }
}

impl Drop for RecordingServer {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}

/// An HTTPS listener (rustls, ring) with its own CA: reads one HTTP/1.1
/// request per connection, records it, answers and closes.
#[derive(Debug)]
pub(crate) struct TlsServer {
    addr: SocketAddr,
    ca: rustls::pki_types::CertificateDer<'static>,
    script: Arc<Script>,
    task: JoinHandle<()>,
}

impl TlsServer {
    pub async fn start(default_status: u16) -> TlsServer {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap().der().clone();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Script::new(default_status);
        let serving = script.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, script) = (acceptor.clone(), serving.clone());
                tokio::spawn(async move {
                    let exchange = async {
                        let mut tls = acceptor.accept(tcp).await.ok()?;
                        let (head, body) = read_request(&mut tls).await?;
                        let mut words = head.lines().next()?.split(' ');
                        let (method, path) = (words.next()?.to_owned(), words.next()?.to_owned());
                        let content_type = header(&head, "content-type");
                        let status = script.record(method, path, content_type, &body);
                        let answer = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        );
                        tls.write_all(answer.as_bytes()).await.ok()?;
                        tls.shutdown().await.ok()
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(5), exchange).await;
                });
            }
        });
        TlsServer {
            addr,
            ca,
            script,
            task,
        }
    }

    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Roots trusting only this server's CA.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        roots
    }

    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Recorded> {
        self.script.wait_for(n, within).await
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// Reads one request's head and its `content-length` body (at most 64 KiB).
async fn read_request(stream: &mut (impl AsyncReadExt + Unpin)) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while buf.len() < 64 * 1024 {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = header(&head, "content-length")?.parse().ok()?;
            let mut body = buf[end + 4..].to_vec();
            while body.len() < len {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            return Some((head, body));
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    None
}

/// A fake sink: records every attempt (with its time), fails as scripted,
/// and can be held shut so attempts hang.
#[derive(Debug)]
pub(crate) struct FakeSink {
    name: String,
    refresh: bool,
    calls: Mutex<Vec<(Instant, Alert)>>,
    /// Outcomes of the next attempts (`true` = retryable failure, `false`
    /// = permanent); attempts past the script succeed.
    failures: Mutex<VecDeque<bool>>,
    /// When set, each attempt takes a permit first.
    gate: Option<Arc<Semaphore>>,
}

impl FakeSink {
    pub fn new(name: &str, refresh: bool) -> FakeSink {
        FakeSink {
            name: name.to_owned(),
            refresh,
            calls: Mutex::new(Vec::new()),
            failures: Mutex::new(VecDeque::new()),
            gate: None,
        }
    }

    /// Attempts wait for a permit of `gate`.
    pub fn gated(mut self, gate: Arc<Semaphore>) -> FakeSink {
        self.gate = Some(gate);
        self
    }

    /// The next `n` attempts fail (retryably or not).
    pub fn fail_next(&self, n: usize, retryable: bool) {
        self.failures
            .lock()
            .unwrap()
            .extend(std::iter::repeat_n(retryable, n));
    }

    pub fn calls(&self) -> Vec<Alert> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(_, a)| a.clone())
            .collect()
    }

    pub fn call_times(&self) -> Vec<Instant> {
        self.calls.lock().unwrap().iter().map(|(t, _)| *t).collect()
    }
}

impl AlertSink for FakeSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<(), SinkError>> {
        async move {
            self.calls
                .lock()
                .unwrap()
                .push((Instant::now(), alert.clone()));
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            let failure = self.failures.lock().unwrap().pop_front();
            let (sink, url) = (self.name.clone(), "fake://".to_owned());
            match failure {
                None => Ok(()),
                Some(true) => Err(SinkError::Unavailable {
                    sink,
                    url,
                    status: 503,
                    body: String::new(),
                }),
                Some(false) => Err(SinkError::Refused {
                    sink,
                    url,
                    status: 400,
                    body: String::new(),
                }),
            }
        }
        .boxed()
    }

    fn needs_refresh(&self) -> bool {
        self.refresh
    }
}

/// Polls `condition` every 10 ms until it holds; panics after `within`.
pub(crate) async fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
