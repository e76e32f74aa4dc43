//! Why a TLS handshake failed, in an operator's words: the cause and what to
//! do next, for either side of the connection.
//!
//! Owns turning a `rustls::Error` (as tokio-rustls wraps it in an
//! `io::Error`) into one sentence. The server side ([`crate::server_tls`])
//! logs it for each refused peer; the clients (the CLI, the agent) say it
//! when a call fails ([`crate::tls::ClientTls::probe`]). It decides
//! nothing: it only names.

use rustls::pki_types::UnixTime;
use rustls::{AlertDescription, CertificateError, Error};

/// Which end of the handshake is explaining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The server refused (or was refused by) a client.
    Server,
    /// A client refused (or was refused by) the server.
    Client,
}

/// `t` as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc(t: UnixTime) -> String {
    let secs = t.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The names a certificate holds, as rustls lists them
/// (`DnsName("a")`, `IpAddress(127.0.0.1)`), plainly: `a, 127.0.0.1`.
fn names(presented: &[String]) -> String {
    if presented.is_empty() {
        return "no name at all".to_owned();
    }
    presented
        .iter()
        .map(|p| {
            p.strip_prefix("IpAddress(")
                .or_else(|| p.strip_prefix("DnsName("))
                .map_or(p.as_str(), |inner| inner.trim_end_matches(')'))
                .trim_matches('"')
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rustls error inside `e`, if tokio-rustls put one there.
pub fn rustls_error(e: &std::io::Error) -> Option<&Error> {
    e.get_ref()?.downcast_ref::<Error>()
}

/// The cause of a failed handshake, as `side` saw it, and what to do.
pub fn explain(e: &Error, side: Side) -> String {
    let (them, theirs, fix_theirs, ours) = match side {
        Side::Server => (
            "the client",
            "the client's certificate",
            "give the client a certificate signed by this server's client_ca",
            "this server's certificate",
        ),
        Side::Client => (
            "the server",
            "the server's certificate",
            "give the CA that signs the server's certificate (--ca-cert, or [tls] ca)",
            "this client's certificate",
        ),
    };
    match e {
        Error::NoCertificatesPresented => format!(
            "{them} sent no certificate, and one is required; {}",
            match side {
                Side::Server => "configure the client's [tls] cert and key (or --cert and --key)",
                Side::Client => "the server must present one",
            }
        ),
        Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                format!(
                    "{theirs} is not signed by a CA this side trusts (unknown CA); {fix_theirs}"
                )
            }
            CertificateError::ExpiredContext { time, not_after } => format!(
                "{theirs} expired at {} (it is now {}); renew it",
                utc(*not_after),
                utc(*time)
            ),
            CertificateError::Expired => format!("{theirs} has expired; renew it"),
            CertificateError::NotValidYetContext { time, not_before } => format!(
                "{theirs} is not valid before {} (it is now {}); check the clocks, or reissue it",
                utc(*not_before),
                utc(*time)
            ),
            CertificateError::NotValidYet => {
                format!("{theirs} is not valid yet; check the clocks, or reissue it")
            }
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            } => format!(
                "{theirs} is for {}, not {}; connect by a name the certificate holds, or reissue it with that name",
                names(presented),
                expected.to_str()
            ),
            CertificateError::NotValidForName => format!(
                "{theirs} is not for the name connected to; connect by a name the certificate holds, or reissue it"
            ),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                format!(
                    "{theirs} may not be used for this (extended key usage); reissue it for {}",
                    match side {
                        Side::Server => "client authentication",
                        Side::Client => "server authentication",
                    }
                )
            }
            CertificateError::Revoked => format!("{theirs} is revoked"),
            other => format!("{theirs} was refused: {other:?}"),
        },
        Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired => format!(
                "{them} requires a client certificate and none was sent; give {}",
                match side {
                    Side::Client => "--cert and --key (or the agent's [tls] cert and key)",
                    Side::Server => "the client one",
                }
            ),
            // DecryptError: the signature did not verify against the CA of
            // that name (another CA with the same name, say).
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::DecryptError => format!(
                "{them} does not trust {ours} (unknown CA); {}",
                match side {
                    Side::Client =>
                        "use a certificate signed by the CA in the coordinator's client_ca",
                    Side::Server => "give the client the CA that signs this server's certificate",
                }
            ),
            AlertDescription::CertificateExpired => {
                format!("{them} says {ours} has expired; renew it")
            }
            AlertDescription::CertificateUnknown | AlertDescription::UnsupportedCertificate => {
                format!("{them} refused {ours} ({alert:?}); check its key usage and names")
            }
            AlertDescription::HandshakeFailure | AlertDescription::ProtocolVersion => {
                format!("{them} and this side share no TLS version or cipher suite ({alert:?})")
            }
            other => format!("{them} ended the handshake with the alert {other:?}"),
        },
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => format!(
            "{them} does not speak TLS on this port ({e}); {}",
            match side {
                Side::Client => "use http:// if it serves plaintext, or check the port",
                Side::Server =>
                    "the client must use https:// with a CA (it may be speaking plaintext http://)",
            }
        ),
        other => format!("the TLS handshake failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_are_utc() {
        let at = |s| utc(UnixTime::since_unix_epoch(Duration::from_secs(s)));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_796_083_199), "2026-11-30T23:59:59Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn each_cause_is_named_with_what_to_do() {
        let cases = [
            (
                Error::NoCertificatesPresented,
                Side::Server,
                "the client sent no certificate",
            ),
            (
                Error::InvalidCertificate(CertificateError::UnknownIssuer),
                Side::Client,
                "the server's certificate is not signed by a CA this side trusts (unknown CA); give the CA",
            ),
            (
                Error::InvalidCertificate(CertificateError::ExpiredContext {
                    time: UnixTime::since_unix_epoch(Duration::from_secs(1_796_083_199)),
                    not_after: UnixTime::since_unix_epoch(Duration::from_secs(951_782_400)),
                }),
                Side::Server,
                "the client's certificate expired at 2000-02-29T00:00:00Z",
            ),
            (
                Error::AlertReceived(AlertDescription::CertificateRequired),
                Side::Client,
                "requires a client certificate and none was sent; give --cert and --key",
            ),
            (
                Error::AlertReceived(AlertDescription::UnknownCA),
                Side::Client,
                "the server does not trust this client's certificate (unknown CA)",
            ),
        ];
        for (e, side, want) in cases {
            let got = explain(&e, side);
            assert!(got.contains(want), "{e:?}: {got}");
        }
    }
}
