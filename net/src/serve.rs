//! A bounded HTTP server for baton's plain-HTTP ports (the agent's probe
//! port, the coordinator's `/metrics`): HTTP/1 and h2c on one listener,
//! with limits a stranger cannot talk its way past.
//!
//! Owns the accept loop and its limits: a client has [`HEADER_TIMEOUT`] to
//! send a request's headers, a connection lives at most
//! [`CONNECTION_LIFETIME`], and at most [`PER_PEER`] connections per peer
//! address (and [`TOTAL`] in all, [`crate::slots`]) are open at once; one more is
//! closed at once, logged once a minute per peer. So a slowloris from one host cannot
//! starve the kubelet's or systemd's probes from another, nor the process
//! of file descriptors. What is served is the caller's (any tower service).

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::slots::PeerSlots;
use crate::throttle::Throttle;

/// How long a client may take to send one request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may stay open, however busy.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// How many connections one peer address may hold open.
pub const PER_PEER: usize = 32;
/// How many connections may be open in all.
pub const TOTAL: usize = 256;

/// Serves `service` on `listener` until `shutdown`; `what` names the port
/// in log lines ("probe port", "metrics").
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    what: &'static str,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    S: tower_service::Service<
            hyper::Request<Incoming>,
            Response = hyper::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let open = Arc::new(PeerSlots::new(PER_PEER, TOTAL));
    let crowded: Throttle<IpAddr> = Throttle::new(Duration::from_secs(60));
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = open.admit(Some(peer.ip())) else {
            if let Some(suppressed) = crowded.allow(&peer.ip(), tokio::time::Instant::now()) {
                tracing::warn!(what, peer = %peer, per_peer = PER_PEER, total = TOTAL, suppressed, "too many open connections; closed a new one (logged once a minute per peer)");
            }
            drop(tcp);
            continue;
        };
        let service = TowerToHyperService::new(service.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            builder.http2().timer(TokioTimer::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
            tokio::select! {
                _ = conn => {}
                () = tokio::time::sleep(CONNECTION_LIFETIME) => {}
                () = stop.cancelled() => {}
            }
        });
    }
}
