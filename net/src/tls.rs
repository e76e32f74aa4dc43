//! Client-side TLS for every baton gRPC link (rustls through tonic).
//!
//! Owns reading the PEM files once and applying them to an `Endpoint`; the
//! agent's link and the `baton` CLI both use it, so both speak the same TLS.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A TLS file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read TLS {what} {path}: {source}")]
pub struct TlsFileError {
    pub what: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
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
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
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
        let identity = match identity {
            Some((cert, key)) => Some((read("certificate", cert)?, read("key", key)?)),
            None => None,
        };
        Ok(ClientTls {
            ca_pem,
            identity,
            domain,
        })
    }

    /// Applies this TLS config to `endpoint`.
    pub fn apply(&self, endpoint: Endpoint) -> Result<Endpoint, tonic::transport::Error> {
        let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            cfg = cfg.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = &self.domain {
            cfg = cfg.domain_name(d.clone());
        }
        endpoint.tls_config(cfg)
    }
}
