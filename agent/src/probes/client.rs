//! The client side of the probes: one GET, bounded in time, turned into
//! a pass/fail and the one-line reason. `baton-agent probe` is this plus
//! an exit code.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_net::http::HttpClient;
use hyper::Uri;

use crate::config::{AgentConfig, ConfigError};

/// Which probe to ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// `/healthz`: the agent runs and reaches its member.
    Health,
    /// `/readyz`: the member serves and is caught up.
    Ready,
}

impl Probe {
    pub fn path(self) -> &'static str {
        match self {
            Probe::Health => "/healthz",
            Probe::Ready => "/readyz",
        }
    }
}

/// Why a probe could not be asked, or got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad config {path}: {source}")]
    BadConfig { path: PathBuf, source: ConfigError },
    #[error(
        "config {path}: probe_listen {addr} has port 0, so the agent's probe port is chosen at start; pass --url http://127.0.0.1:PORT"
    )]
    NoFixedPort { path: PathBuf, addr: SocketAddr },
    #[error("bad probe URL {url:?}: {reason}; expected http://HOST:PORT")]
    BadUrl { url: String, reason: String },
    #[error("give --config FILE (or BATON_AGENT_CONFIG) or --url http://127.0.0.1:PORT")]
    NoTarget,
    #[error("agent not answering at {addr}: {detail}")]
    NotAnswering { addr: String, detail: String },
}

impl ClientError {
    /// True when the fault is in the probe's own arguments or config
    /// (exit 64), not in the agent's answer (exit 1).
    pub fn is_usage(&self) -> bool {
        !matches!(self, ClientError::NotAnswering { .. })
    }
}

/// What the agent answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status was 200.
    pub pass: bool,
    /// The first line of the body (or the status when there is none).
    pub line: String,
}

/// Where a local client reaches a listener bound to `listen`: a wildcard
/// address becomes the loopback of its family.
pub fn local_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// The agent's probe base URL: `--url` as given, else from the config
/// (`--config` or `BATON_AGENT_CONFIG`), loaded and validated as the
/// agent itself would (with the same `env` overrides).
pub fn base_url(
    url: Option<&str>,
    config: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<String, ClientError> {
    if let Some(url) = url {
        parse_base(url)?;
        return Ok(url.trim_end_matches('/').to_owned());
    }
    let path = config.ok_or(ClientError::NoTarget)?;
    let cfg = AgentConfig::load(path, env).map_err(|source| ClientError::BadConfig {
        path: path.to_owned(),
        source,
    })?;
    if cfg.probe_listen.port() == 0 {
        return Err(ClientError::NoFixedPort {
            path: path.to_owned(),
            addr: cfg.probe_listen,
        });
    }
    Ok(format!("http://{}", local_addr(cfg.probe_listen)))
}

/// Checks `url` is `http://HOST:PORT` (a trailing `/` allowed); returns
/// the authority to dial.
fn parse_base(url: &str) -> Result<String, ClientError> {
    let bad = |reason: &str| ClientError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: hyper::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("the probe port speaks plain http"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.port_u16().is_none() {
        return Err(bad("no port"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad(
            "give the base URL only; the probe adds /healthz or /readyz",
        ));
    }
    Ok(authority.as_str().to_owned())
}

/// GETs `probe` from the agent at `base`, all within `timeout`.
pub async fn check(base: &str, probe: Probe, timeout: Duration) -> Result<Answer, ClientError> {
    let authority = parse_base(base)?;
    let not_answering = |detail: String| ClientError::NotAnswering {
        addr: authority.clone(),
        detail,
    };
    // The one HTTP client (baton-net); it bounds the whole exchange by
    // `timeout` and the answer's size.
    let client = HttpClient::new(timeout).map_err(|e| not_answering(e.to_string()))?;
    let url: Uri = format!("http://{authority}{}", probe.path())
        .parse()
        .map_err(|e| not_answering(format!("cannot build the request: {e}")))?;
    let answer = client
        .get(&url)
        .await
        .map_err(|e| not_answering(e.to_string()))?;
    let status = answer.status;
    let line = answer
        .body
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{} answered HTTP {status}", probe.path()));
    Ok(Answer {
        pass: status == hyper::StatusCode::OK,
        line,
    })
}
