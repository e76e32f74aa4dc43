//! Which addresses may be spoken to in plaintext: loopback only.
//!
//! Owns the one rule every baton process applies to an `http://` address
//! (an agent's `coordinator`, the CLI's `--coordinator`, a replica's
//! `replication.peers`): its host must be `localhost` or a loopback IP
//! literal. A name that merely resolves to loopback does not count, since
//! what it resolves to can change under a running process.

use std::net::IpAddr;

/// True when `host` (a URL's host, brackets allowed around IPv6) is
/// `localhost` or a loopback IP address.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The host of `scheme://host[:port][/...]`, or None when `url` has no
/// `://`.
pub fn url_host(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split_once(']').map(|(h, _)| h);
    }
    Some(authority.rsplit_once(':').map_or(authority, |(h, _)| h))
}

/// Why a plaintext address was refused, for an error naming the key:
/// None when `url` is https, or http to a loopback host.
pub fn plaintext_refusal(url: &str) -> Option<String> {
    let lower = url.to_ascii_lowercase();
    if !lower.starts_with("http://") {
        return None;
    }
    match url_host(url) {
        Some(host) if is_loopback_host(host) => None,
        Some(host) => Some(format!(
            "{url} is plaintext http:// to {host}, which is not loopback: anyone on the path could read and forge what is said; use https:// with [tls], or a loopback address (127.0.0.1, ::1, localhost)"
        )),
        None => Some(format!("{url} has no host")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_may_be_plaintext() {
        for ok in [
            "http://127.0.0.1:7400",
            "http://127.3.4.5:1/",
            "http://localhost:7400",
            "http://LOCALHOST",
            "http://[::1]:7400",
            "https://10.1.2.3:7400",
            "https://coord.example:7400",
        ] {
            assert_eq!(plaintext_refusal(ok), None, "{ok}");
        }
        for bad in [
            "http://10.1.2.3:7400",
            "http://coord.example:7400",
            "http://[fe80::1]:7400",
            "http://0.0.0.0:7400",
            "http://127.0.0.1.evil:7400",
            "http://localhost.evil:1",
            "HTTP://10.0.0.1:1",
            "http://user@10.0.0.1:1",
        ] {
            let why = plaintext_refusal(bad).unwrap_or_default();
            assert!(why.contains("not loopback"), "{bad}: {why}");
        }
        assert_eq!(url_host("http://[::1]:7400/x"), Some("::1"));
        assert_eq!(url_host("http://127.0.0.1@10.0.0.1:1"), Some("10.0.0.1"));
        assert_eq!(url_host("no scheme"), None);
    }
}
