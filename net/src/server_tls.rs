//! Server-side TLS for baton's gRPC listeners (rustls on ring, accepted
//! here and handed to tonic as ready streams).
//!
//! Owns reading the server's PEM files (certificate, key, and the client
//! CA whose certificates clients must present), building the rustls
//! config, reloading it when asked ([`ServerTls::reload`], on SIGHUP) or
//! when the files change ([`ServerTls::watch`]), and accepting
//! connections with it ([`accept`]): every handshake that fails is logged
//! once per peer address and cause per minute, naming the peer and why
//! ([`crate::why`]). A reload that fails keeps the config in use and says
//! why. It decides nothing about who a peer is (see [`crate::identity`]).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::throttle::Throttle;
use crate::tls::{TlsFileError, read};
use crate::why::{Side, explain, rustls_error};

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many handshakes may be in progress at once; more wait for a turn.
const HANDSHAKES: usize = 256;

/// The server's TLS files, as the config names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    /// Let a client without a certificate finish the handshake (the
    /// services then decide: an operator call may carry a bearer token;
    /// agents and replicas are refused). A certificate that is presented
    /// must still verify.
    pub client_cert_optional: bool,
}

/// Why the server's TLS config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    #[error(transparent)]
    File(#[from] TlsFileError),
    #[error("{what} {path} holds no usable PEM {wanted}: {detail}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        wanted: &'static str,
        detail: String,
    },
    #[error("rustls refuses this server TLS setup (cert {cert}, key {key}): {source}")]
    Rustls {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

fn pem_error(
    what: &'static str,
    path: &Path,
    wanted: &'static str,
    detail: String,
) -> ServerTlsError {
    ServerTlsError::Pem {
        what,
        path: path.to_owned(),
        wanted,
        detail,
    }
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ServerTlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, "certificate", e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error(
            what,
            path,
            "certificate",
            "no CERTIFICATE section".into(),
        ));
    }
    Ok(certs)
}

/// The rustls config `files` describe: this server's chain and key, and
/// client certificates required, verified against the client CA.
pub fn build(files: &ServerTlsFiles) -> Result<rustls::ServerConfig, ServerTlsError> {
    let chain = certs("certificate", &files.cert)?;
    let key_pem = read("key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| pem_error("key", &files.key, "private key", e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in certs("client CA", &files.client_ca)? {
        roots.add(ca).map_err(|e| {
            pem_error(
                "client CA",
                &files.client_ca,
                "CA certificate",
                e.to_string(),
            )
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let rustls = |source| ServerTlsError::Rustls {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    };
    let mut verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone());
    if files.client_cert_optional {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier
        .build()
        .map_err(|e| rustls(rustls::Error::General(e.to_string())))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rustls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(rustls)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// When each file was last changed, and how long it is, to notice a change.
type Stamps = Vec<Option<(SystemTime, u64)>>;

fn stamps(files: &ServerTlsFiles) -> Stamps {
    [&files.cert, &files.key, &files.client_ca]
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// The server's TLS config, reloadable while connections are accepted:
/// each new handshake uses the config of that moment; connections already
/// open keep theirs. Clones share one config.
#[derive(Debug, Clone)]
pub struct ServerTls {
    files: ServerTlsFiles,
    current: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    stamps: Arc<Mutex<Stamps>>,
}

impl ServerTls {
    /// Reads and checks `files`.
    pub fn load(files: ServerTlsFiles) -> Result<ServerTls, ServerTlsError> {
        let before = stamps(&files);
        let config = build(&files)?;
        Ok(ServerTls {
            files,
            current: Arc::new(RwLock::new(Arc::new(config))),
            stamps: Arc::new(Mutex::new(before)),
        })
    }

    /// The config new handshakes use.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the files again and, when they make a good config, uses it
    /// for every new handshake. On an error the config in use stays.
    pub fn reload(&self) -> Result<(), ServerTlsError> {
        let before = stamps(&self.files);
        let config = build(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) = before;
        Ok(())
    }

    /// Reloads (logging the outcome) when a file changed since the config
    /// in use was read; true when it did change.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamps(&self.files);
        {
            let mut seen = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return false;
            }
            // Looked at once per change, whatever the outcome.
            *seen = now;
        }
        self.reload_logged("a TLS file changed");
        true
    }

    /// [`ServerTls::reload`], logged: `why` says what asked for it.
    pub fn reload_logged(&self, why: &str) {
        match self.reload() {
            Ok(()) => tracing::info!(
                cert = %self.files.cert.display(),
                why,
                "TLS certificate, key and client CA reloaded; new connections use them"
            ),
            Err(e) => tracing::error!(
                error = %e,
                why,
                "TLS reload failed; still serving with the certificates loaded before. Fix the files (or put the old ones back) and send SIGHUP"
            ),
        }
    }

    /// Checks the files every `every` until `stop`, reloading on a change.
    pub fn watch(&self, every: Duration, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {
                        tls.reload_if_changed();
                    }
                }
            }
        })
    }
}

/// Accepts TCP connections on `listener` and completes each TLS handshake
/// with `tls`'s config of that moment, off the accept loop, each within
/// 10 s; yields the streams that made it. A failed handshake is logged
/// once per peer address and cause per minute. Ends at `stop`.
pub fn accept(
    listener: TcpListener,
    tls: ServerTls,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    let refused: Arc<Throttle<(IpAddr, String)>> = Arc::new(Throttle::new(Duration::from_secs(60)));
    let turns = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: say so and
                        // go on; a busy loop is avoided by the pause.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let Ok(turn) = turns.clone().acquire_owned().await else {
                return;
            };
            let (tx, refused, acceptor) = (
                tx.clone(),
                refused.clone(),
                tokio_rustls::TlsAcceptor::from(tls.config()),
            );
            tokio::spawn(async move {
                let _turn = turn;
                handshake(tcp, peer, acceptor, &refused, tx).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    refused: &Throttle<(IpAddr, String)>,
    tx: mpsc::Sender<io::Result<TlsStream<TcpStream>>>,
) {
    // One deadline for the whole handshake, the peek included.
    let attempt = async {
        let plaintext = looks_like_plaintext(&tcp).await;
        (plaintext, acceptor.accept(tcp).await)
    };
    let why = match tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await {
        Ok((_, Ok(tls))) => {
            let _ = tx.send(Ok(tls)).await;
            return;
        }
        Ok((true, Err(_))) => {
            "the client spoke plaintext to this TLS port; it must use https:// with the CA that signs this server's certificate".to_owned()
        }
        Ok((false, Err(e))) => failure_text(&e),
        Err(_) => format!(
            "the client did not finish its TLS handshake within {} s",
            HANDSHAKE_TIMEOUT.as_secs()
        ),
    };
    if let Some(suppressed) = refused.allow(&(peer.ip(), why.clone()), tokio::time::Instant::now())
    {
        tracing::warn!(peer = %peer, reason = %why, suppressed, "refused a TLS handshake (logged once a minute per peer and cause; suppressed counts the others)");
    }
}

fn failure_text(e: &io::Error) -> String {
    match rustls_error(e) {
        Some(r) => explain(r, Side::Server),
        None => format!("the TLS handshake failed: {e}"),
    }
}

/// True when the first bytes the client sent are not a TLS record but
/// plaintext HTTP (an `http://` client on this TLS port). Peeks only.
async fn looks_like_plaintext(tcp: &TcpStream) -> bool {
    let mut first = [0u8; 4];
    match tcp.peek(&mut first).await {
        Ok(n) if n > 0 => first[0] != 0x16 && first[..n].iter().all(u8::is_ascii),
        _ => false,
    }
}
