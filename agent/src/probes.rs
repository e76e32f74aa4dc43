//! On-node HTTP probes: `/healthz` and `/readyz`.
//!
//! `/healthz` answers 200 while the agent runs and can reach its member;
//! `/readyz` answers 200 while the member serves (healthy, knows a leader).
//! Each non-200 body is one line naming the member and the reason. This
//! module only reads the published observation; it changes nothing.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use baton_domain::{Health, MemberId};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::executor::Executor;
use crate::watcher::Observation;

#[derive(Clone, Debug)]
struct ProbeState {
    member: MemberId,
    obs: watch::Receiver<Option<Observation>>,
    executor: Arc<Executor>,
}

/// The verdict of one probe: `Ok(line)` or `Err(reason)`.
pub fn healthz(member: &MemberId, obs: Option<&Observation>) -> Result<String, String> {
    match obs {
        None => Err(format!("member {member}: not read yet")),
        Some(o) if !o.reachable => Err(format!(
            "member {member}: unreachable: {}",
            o.state.health_detail
        )),
        Some(_) => Ok(format!("member {member}: agent running, member reachable")),
    }
}

/// Ready means the member serves right now.
pub fn readyz(member: &MemberId, obs: Option<&Observation>) -> Result<String, String> {
    let o = obs.ok_or_else(|| format!("member {member}: not read yet"))?;
    match o.state.health {
        Health::Healthy => Ok(format!("member {member}: serving as {}", o.state.role)),
        h => Err(format!("member {member}: {h}: {}", o.state.health_detail)),
    }
}

fn answer(r: Result<String, String>) -> (StatusCode, String) {
    match r {
        Ok(line) => (StatusCode::OK, line + "\n"),
        Err(line) => (StatusCode::SERVICE_UNAVAILABLE, line + "\n"),
    }
}

/// Serves the probes on an already-bound listener until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    member: MemberId,
    obs: watch::Receiver<Option<Observation>>,
    executor: Arc<Executor>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/healthz",
            get(|State(s): State<ProbeState>| async move {
                answer(healthz(&s.member, s.obs.borrow().as_ref()))
            }),
        )
        .route(
            "/readyz",
            get(|State(s): State<ProbeState>| async move {
                answer(readyz(&s.member, s.obs.borrow().as_ref()))
            }),
        )
        // The command journal: each id with how many times it ran here.
        .route(
            "/commands",
            get(|State(s): State<ProbeState>| async move { axum::Json(s.executor.entries()) }),
        )
        .with_state(ProbeState {
            member,
            obs,
            executor,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// The address a probe listener is bound to, for logs.
pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}/healthz")
}
