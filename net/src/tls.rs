//! Client-side TLS for every baton client (rustls on ring): the gRPC links
//! (agent to coordinator, CLI to coordinator, the etcd adapter to etcd)
//! through tonic, and the HTTP client in [`crate::http`].
//!
//! Owns reading the PEM files once, checking that they hold what they
//! should ([`ClientTls::rustls_config`]), applying them to a tonic
//! `Endpoint`, and probing a handshake to say why a connection failed
//! ([`ClientTls::probe`]); every client uses it, so all speak the same TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A TLS file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read TLS {what} {path}: {source}")]
pub struct TlsFileError {
    pub what: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// PEM material that does not hold what it should, or that rustls refuses.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("the CA file holds no usable PEM certificate: {0}")]
    BadCa(String),
    #[error("the certificate file holds no usable PEM certificate: {0}")]
    BadCert(String),
    #[error("the key file holds no usable PEM private key: {0}")]
    BadKey(String),
    #[error("{0:?} is not a valid server name to verify the certificate against")]
    BadDomain(String),
    #[error("rustls refuses this TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Why TLS files could not be read again ([`ClientTls::fresh`]).
#[derive(Debug, thiserror::Error)]
pub enum TlsReloadError {
    #[error(transparent)]
    File(#[from] TlsFileError),
    #[error(transparent)]
    Config(#[from] TlsConfigError),
}

/// Why one TLS connection to a server did not hold ([`ClientTls::probe`]).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{addr:?} is not host:port")]
    BadAddr { addr: String },
    #[error(transparent)]
    Config(#[from] TlsConfigError),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("the TLS handshake with {addr} failed: {}", client_side(source))]
    Handshake {
        addr: String,
        source: std::io::Error,
    },
    #[error(
        "{addr} rejected the TLS connection right after the handshake: {}",
        client_side(source)
    )]
    Rejected {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr} closed the TLS connection right after the handshake")]
    Closed { addr: String },
    /// The server refused the handshake, and this client had sent no
    /// certificate: that is why.
    #[error(
        "{addr} refused the TLS connection because this client sent no certificate ({}); give it a client certificate and key",
        client_side(source)
    )]
    NoClientCert {
        addr: String,
        source: std::io::Error,
    },
}

/// An IO error from a client's handshake, explained when rustls says why.
fn client_side(e: &std::io::Error) -> String {
    match crate::why::rustls_error(e) {
        Some(r) => crate::why::explain(r, crate::why::Side::Client),
        None => e.to_string(),
    }
}

/// The `host:port` of `scheme://host:port[/...]`.
fn authority(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    rest.split(['/', '?', '#']).next().filter(|a| !a.is_empty())
}

/// Why calls to the gRPC server at `url` fail at the TLS layer, if they do:
/// with `tls`, a probing handshake's cause and what to do; for an
/// `http://` URL, whether the server speaks TLS there. None when TLS is
/// not the problem (or cannot be told within `wait`).
pub async fn diagnose(url: &str, tls: Option<&ClientTls>, wait: Duration) -> Option<String> {
    let addr = authority(url)?;
    match tls {
        Some(tls) if url.starts_with("https://") => match tls.probe(addr, wait).await {
            Err(
                e @ (HandshakeError::Handshake { .. }
                | HandshakeError::Rejected { .. }
                | HandshakeError::NoClientCert { .. }
                | HandshakeError::Config(_)),
            ) => Some(match tls.own_expiry() {
                // The server only says "expired"; this side knows when.
                Some(at) if e.to_string().contains("has expired") => {
                    format!("{e} (this client's certificate expired at {at})")
                }
                _ => e.to_string(),
            }),
            _ => None,
        },
        _ if url.starts_with("http://") => speaks_tls(addr, wait).await.then(|| {
            format!(
                "{addr} speaks TLS, and this side sent plaintext: use https:// and give the CA that signs its certificate (--ca-cert, or [tls] ca), and a client certificate (--cert and --key, or [tls] cert and key)"
            )
        }),
        _ => None,
    }
}

/// Takes any server certificate, to learn only whether a server speaks TLS.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Whether the server at `addr` answers a TLS ClientHello with a TLS
/// handshake (its certificate is not checked, and nothing is sent after).
pub async fn speaks_tls(addr: &str, wait: Duration) -> bool {
    let Some((host, _)) = addr.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Ok(name) = ServerName::try_from(host.to_owned()) else {
        return false;
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(builder) = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
    else {
        return false;
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        match connector.connect(name, tcp).await {
            Ok(_) => Some(true),
            // The server answered in TLS, then refused (no client
            // certificate, say): it still speaks TLS.
            Err(e) => Some(matches!(
                crate::why::rustls_error(&e),
                Some(rustls::Error::AlertReceived(_))
            )),
        }
    };
    matches!(tokio::time::timeout(wait, attempt).await, Ok(Some(true)))
}

/// PEM material for a client: the CA that signs the server, and optionally
/// this client's own certificate and key (mTLS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    pub ca_pem: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to verify the server certificate against, when it differs
    /// from the host in the URL.
    pub domain: Option<String>,
    /// The files the PEM was read from ([`ClientTls::load`]), so that
    /// [`ClientTls::fresh`] can read them again after a rotation.
    pub files: Option<ClientTlsFiles>,
}

/// Where a client's PEM files are: the CA, and its certificate and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTlsFiles {
    pub ca: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// The bytes of TLS file `path` (`what` names it in the error).
pub(crate) fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError {
        what,
        path: path.to_owned(),
        source,
    })
}

impl ClientTls {
    pub fn load(
        ca: &Path,
        identity: Option<(&Path, &Path)>,
        domain: Option<String>,
    ) -> Result<Self, TlsFileError> {
        let ca_pem = read("CA certificate", ca)?;
        let identity_pem = match identity {
            Some((cert, key)) => Some((read("certificate", cert)?, read("key", key)?)),
            None => None,
        };
        Ok(ClientTls {
            ca_pem,
            identity: identity_pem,
            domain,
            files: Some(ClientTlsFiles {
                ca: ca.to_owned(),
                identity: identity.map(|(c, k)| (c.to_owned(), k.to_owned())),
            }),
        })
    }

    /// The same files read again, for a new connection after certificates
    /// were rotated; as it was when it was not read from files. An
    /// unreadable or unusable file is an error (the caller may go on with
    /// what it had).
    pub fn fresh(&self) -> Result<ClientTls, TlsReloadError> {
        let Some(files) = &self.files else {
            return Ok(self.clone());
        };
        let identity = files
            .identity
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        let again = ClientTls::load(&files.ca, identity, self.domain.clone())?;
        again.rustls_config()?;
        Ok(again)
    }

    /// When this client's own certificate stopped being valid, if it has.
    pub fn own_expiry(&self) -> Option<String> {
        let (cert, _) = self.identity.as_ref()?;
        let der = CertificateDer::pem_slice_iter(cert).next()?.ok()?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).ok()?;
        let not_after = parsed.validity().not_after.timestamp();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        let not_after = u64::try_from(not_after).ok()?;
        (not_after < now).then(|| {
            crate::why::utc(rustls::pki_types::UnixTime::since_unix_epoch(
                Duration::from_secs(not_after),
            ))
        })
    }

    /// This TLS config as tonic's, for an `Endpoint` (or a client built on
    /// tonic, such as etcd-client).
    pub fn tonic_config(&self) -> ClientTlsConfig {
        let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            cfg = cfg.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = &self.domain {
            cfg = cfg.domain_name(d.clone());
        }
        cfg
    }

    /// Applies this TLS config to `endpoint`.
    pub fn apply(&self, endpoint: Endpoint) -> Result<Endpoint, tonic::transport::Error> {
        endpoint.tls_config(self.tonic_config())
    }

    /// The server name to verify the certificate against instead of the
    /// URL's host, when `domain` is set.
    pub fn server_name(&self) -> Result<Option<ServerName<'static>>, TlsConfigError> {
        self.domain
            .as_ref()
            .map(|d| {
                ServerName::try_from(d.clone()).map_err(|_| TlsConfigError::BadDomain(d.clone()))
            })
            .transpose()
    }

    /// Opens one TLS connection to `addr` (`host:port`), completes the
    /// handshake, and waits up to `wait` for the server to reject it (in TLS
    /// 1.3 a server that wants a client certificate says so only after the
    /// client's side of the handshake is done). Ok when the connection
    /// holds. For saying why a connection failed: tonic and hyper send at
    /// once, and the server's reset can overtake its alert.
    pub async fn probe(&self, addr: &str, wait: Duration) -> Result<(), HandshakeError> {
        use tokio::io::AsyncReadExt;
        let bad = || HandshakeError::BadAddr {
            addr: addr.to_owned(),
        };
        let (host, _port) = addr.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = match self.server_name()? {
            Some(name) => name,
            None => ServerName::try_from(host.to_owned()).map_err(|_| bad())?,
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(self.rustls_config()?));
        let attempt =
            async {
                let tcp = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|source| HandshakeError::Connect {
                        addr: addr.to_owned(),
                        source,
                    })?;
                let mut tls = connector.connect(name, tcp).await.map_err(|source| {
                    HandshakeError::Handshake {
                        addr: addr.to_owned(),
                        source,
                    }
                })?;
                let mut byte = [0u8; 1];
                match tls.read(&mut byte).await {
                    Ok(0) => Err(HandshakeError::Closed {
                        addr: addr.to_owned(),
                    }),
                    // The server talks: the handshake holds.
                    Ok(_) => Ok(()),
                    Err(source) => Err(HandshakeError::Rejected {
                        addr: addr.to_owned(),
                        source,
                    }),
                }
            };
        let refused_for_want_of_a_cert = |e: &std::io::Error| {
            self.identity.is_none()
                && matches!(
                    crate::why::rustls_error(e),
                    Some(rustls::Error::AlertReceived(
                        rustls::AlertDescription::CertificateRequired
                            | rustls::AlertDescription::BadCertificate
                            | rustls::AlertDescription::HandshakeFailure
                    ))
                )
        };
        match tokio::time::timeout(wait, attempt).await {
            Ok(Err(
                HandshakeError::Handshake { addr, source }
                | HandshakeError::Rejected { addr, source },
            )) if refused_for_want_of_a_cert(&source) => {
                Err(HandshakeError::NoClientCert { addr, source })
            }
            Ok(result) => result,
            // Still open after `wait`: the handshake holds (or the server
            // is too slow to say; not a TLS verdict either way).
            Err(_) => Ok(()),
        }
    }

    /// This TLS config as a rustls client config on the ring provider. Also
    /// the check that the PEM files hold a CA certificate, and a certificate
    /// and key that belong together: tonic only finds out at connect time.
    pub fn rustls_config(&self) -> Result<rustls::ClientConfig, TlsConfigError> {
        let mut roots = rustls::RootCertStore::empty();
        let mut found = 0;
        for cert in CertificateDer::pem_slice_iter(&self.ca_pem) {
            let cert = cert.map_err(|e| TlsConfigError::BadCa(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| TlsConfigError::BadCa(e.to_string()))?;
            found += 1;
        }
        if found == 0 {
            return Err(TlsConfigError::BadCa("no CERTIFICATE section".to_owned()));
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
        self.server_name()?;
        Ok(match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| TlsConfigError::BadCert(e.to_string()))?;
                if chain.is_empty() {
                    return Err(TlsConfigError::BadCert("no CERTIFICATE section".to_owned()));
                }
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| TlsConfigError::BadKey(e.to_string()))?;
                builder.with_client_auth_cert(chain, key)?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

    /// PEM (cert, key) pairs: a CA, a server for 127.0.0.1, a client.
    struct Pki {
        ca: Vec<u8>,
        server: (Vec<u8>, Vec<u8>),
        client: (Vec<u8>, Vec<u8>),
    }

    fn new_pki() -> Pki {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem().into_bytes();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |san: &str| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec![san.to_owned()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
        };
        Pki {
            ca: ca_pem,
            server: leaf("127.0.0.1"),
            client: leaf("client"),
        }
    }

    /// A TLS server on loopback that requires a client certificate signed
    /// by the CA, and writes one byte to every client it accepts.
    async fn mtls_server(pki: &Pki) -> String {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(&pki.ca).unwrap())
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(&pki.server.0).unwrap()],
                PrivateKeyDer::from_pem_slice(&pki.server.1).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tls.write_all(b"!").await;
                        let _ = tls.flush().await;
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_probe_says_when_the_server_wants_a_client_certificate() {
        let pki = new_pki();
        let addr = mtls_server(&pki).await;
        let wait = Duration::from_secs(5);
        let without = ClientTls {
            ca_pem: pki.ca.clone(),
            identity: None,
            domain: None,
            files: None,
        };
        let err = without.probe(&addr, wait).await.unwrap_err();
        assert!(
            matches!(err, HandshakeError::NoClientCert { .. })
                && err.to_string().contains("this client sent no certificate"),
            "{err}"
        );
        let with = ClientTls {
            identity: Some(pki.client.clone()),
            ..without.clone()
        };
        with.probe(&addr, wait).await.unwrap();
        // A CA that did not sign the server: refused by this side.
        let other = new_pki();
        let stranger = ClientTls {
            ca_pem: other.ca,
            identity: Some(other.client),
            domain: None,
            files: None,
        };
        let err = stranger.probe(&addr, wait).await.unwrap_err();
        assert!(matches!(err, HandshakeError::Handshake { .. }), "{err}");
    }

    #[test]
    fn pem_files_must_hold_what_they_should() {
        let pki = new_pki();
        let tls = |ca: &[u8], identity: Option<(&[u8], &[u8])>| ClientTls {
            ca_pem: ca.to_vec(),
            identity: identity.map(|(c, k)| (c.to_vec(), k.to_vec())),
            domain: None,
            files: None,
        };
        assert!(tls(&pki.ca, None).rustls_config().is_ok());
        assert!(
            tls(&pki.ca, Some((&pki.client.0, &pki.client.1)))
                .rustls_config()
                .is_ok()
        );
        assert!(matches!(
            tls(b"junk", None).rustls_config(),
            Err(TlsConfigError::BadCa(_))
        ));
        assert!(matches!(
            tls(&pki.ca, Some((&pki.client.1, &pki.client.1))).rustls_config(),
            Err(TlsConfigError::BadCert(_))
        ));
        assert!(matches!(
            tls(&pki.ca, Some((&pki.client.0, &pki.client.0))).rustls_config(),
            Err(TlsConfigError::BadKey(_))
        ));
        let bad_domain = ClientTls {
            domain: Some("not a name!".to_owned()),
            ..tls(&pki.ca, None)
        };
        assert!(matches!(
            bad_domain.rustls_config(),
            Err(TlsConfigError::BadDomain(_))
        ));
    }
}
