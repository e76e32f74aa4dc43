//! Server-side TLS for baton's gRPC listeners (rustls through tonic).
//!
//! Owns reading the server's PEM files once and building tonic's
//! `ServerTlsConfig`; with a client CA it requires client certificates
//! (mTLS). It decides nothing about who a peer is.

use std::path::Path;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::tls::TlsFileError;

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError {
        what,
        path: path.to_owned(),
        source,
    })
}

/// A server identity (`cert`, `key`) and, when `client_ca` is given, the CA
/// whose certificates clients must present.
pub fn server_tls(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerTlsConfig, TlsFileError> {
    let mut cfg = ServerTlsConfig::new().identity(Identity::from_pem(
        read("certificate", cert)?,
        read("key", key)?,
    ));
    if let Some(ca) = client_ca {
        cfg = cfg.client_ca_root(Certificate::from_pem(read("client CA", ca)?));
    }
    Ok(cfg)
}
