//! The agent's link to the coordinator: dial out, say Hello, report, obey.
//!
//! This module owns the stream to the coordinator. It reports at once when
//! the member's role, leader, release, format or health changes, and as a
//! heartbeat otherwise (the coordinator can ask for a faster cadence during a
//! catch-up or a handover). It reconnects with bounded exponential backoff. A
//! command id is run at most once: a repeated id is answered from the stored
//! result.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_domain::{Hello, MemberId, Report};
use baton_proto::v1::{
    self, agent_link_client::AgentLinkClient, agent_message, command, coordinator_message,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::resources::ResourceReader;
use crate::watcher::Observation;

/// Why one session with the coordinator ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("coordinator address {addr:?} is invalid: {detail}")]
    BadAddress { addr: String, detail: String },
    #[error("cannot reach coordinator at {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("coordinator refused member {member}: {message}")]
    Refused { member: MemberId, message: String },
    #[error("stream to coordinator broke: {0}")]
    Stream(String),
    #[error("coordinator sent a message this agent cannot understand: {0}")]
    BadMessage(String),
}

/// Everything a link needs; built once by `run`.
#[derive(Debug)]
pub struct LinkConfig {
    pub hello: Hello,
    pub coordinator: String,
    pub heartbeat: Duration,
    pub tls: Option<baton_proto::tls::ClientTls>,
}

/// Counters the tests and probes read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub sessions: u64,
    pub reports_sent: u64,
    pub connected: bool,
    pub last_error: Option<String>,
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn build_report(
    member: &MemberId,
    obs: &Observation,
    resources: baton_domain::Resources,
) -> Report {
    let s = &obs.state;
    Report {
        member: member.clone(),
        role: s.role,
        leader: s.leader.clone(),
        committed_revision: s.committed_revision,
        applied_revision: s.applied_revision.min(s.committed_revision),
        release: s.release.clone(),
        format_version: s.format_version,
        health: s.health,
        health_detail: s.health_detail.clone(),
        resources,
        timestamp_unix_ms: now_unix_ms(),
        term: s.term,
    }
}

/// Runs sessions with the coordinator until `shutdown`.
pub async fn run(
    cfg: LinkConfig,
    mut observations: watch::Receiver<Option<Observation>>,
    mut resources: ResourceReader,
    stats: watch::Sender<LinkStats>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut results: HashMap<String, v1::CommandResult> = HashMap::new();
    loop {
        let started = tokio::time::Instant::now();
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return,
            r = session(&cfg, &mut observations, &mut resources, &stats, &mut results) => r,
        };
        stats.send_modify(|s| s.connected = false);
        if let Err(e) = outcome {
            tracing::warn!(member = %cfg.hello.member, error = %e, retry_in = ?backoff, "coordinator session ended");
            stats.send_modify(|s| s.last_error = Some(e.to_string()));
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn session(
    cfg: &LinkConfig,
    observations: &mut watch::Receiver<Option<Observation>>,
    resources: &mut ResourceReader,
    stats: &watch::Sender<LinkStats>,
    results: &mut HashMap<String, v1::CommandResult>,
) -> Result<(), LinkError> {
    let member = &cfg.hello.member;
    let endpoint = Endpoint::from_shared(cfg.coordinator.clone())
        .map_err(|e| LinkError::BadAddress {
            addr: cfg.coordinator.clone(),
            detail: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    let endpoint = match &cfg.tls {
        Some(tls) => tls.apply(endpoint).map_err(|e| LinkError::BadAddress {
            addr: cfg.coordinator.clone(),
            detail: format!("TLS setup: {e}"),
        })?,
        None => endpoint,
    };
    let channel = endpoint.connect().await.map_err(|e| LinkError::Connect {
        addr: cfg.coordinator.clone(),
        detail: e.to_string(),
    })?;

    // Wait for a first observation so the first report is real.
    let first = observations
        .wait_for(Option::is_some)
        .await
        .map_err(|_| LinkError::Stream("member watcher stopped".into()))?
        .clone()
        .ok_or_else(|| LinkError::Stream("no observation".into()))?;

    let (tx, rx) = mpsc::channel::<v1::AgentMessage>(64);
    let send = |tx: &mpsc::Sender<v1::AgentMessage>, body| {
        let tx = tx.clone();
        async move {
            tx.send(v1::AgentMessage { body: Some(body) })
                .await
                .map_err(|_| LinkError::Stream("outbound stream closed".into()))
        }
    };
    send(&tx, agent_message::Body::Hello(cfg.hello.clone().into())).await?;
    let mut last_sent = build_report(member, &first, resources.read());
    send(&tx, agent_message::Body::Report(last_sent.clone().into())).await?;

    let mut inbound = AgentLinkClient::new(channel)
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|status| match status.code() {
            tonic::Code::InvalidArgument
            | tonic::Code::PermissionDenied
            | tonic::Code::NotFound
            | tonic::Code::FailedPrecondition => LinkError::Refused {
                member: member.clone(),
                message: status.message().to_owned(),
            },
            _ => LinkError::Connect {
                addr: cfg.coordinator.clone(),
                detail: status.message().to_owned(),
            },
        })?
        .into_inner();
    stats.send_modify(|s| {
        s.sessions += 1;
        s.reports_sent += 1;
        s.connected = true;
        s.last_error = None;
    });
    tracing::info!(member = %member, coordinator = %cfg.coordinator, "connected to coordinator");

    let mut heartbeat = cfg.heartbeat;
    let mut next_beat = tokio::time::Instant::now() + heartbeat;
    loop {
        tokio::select! {
            changed = observations.changed() => {
                changed.map_err(|_| LinkError::Stream("member watcher stopped".into()))?;
                let obs = observations.borrow_and_update().clone();
                if let Some(obs) = obs {
                    let report = build_report(member, &obs, last_sent.resources);
                    if report.salient() != last_sent.salient() {
                        send(&tx, agent_message::Body::Report(report.clone().into())).await?;
                        stats.send_modify(|s| s.reports_sent += 1);
                        last_sent = report;
                        next_beat = tokio::time::Instant::now() + heartbeat;
                    }
                }
            }
            () = tokio::time::sleep_until(next_beat) => {
                let obs = observations.borrow().clone();
                if let Some(obs) = obs {
                    let report = build_report(member, &obs, resources.read());
                    send(&tx, agent_message::Body::Report(report.clone().into())).await?;
                    stats.send_modify(|s| s.reports_sent += 1);
                    last_sent = report;
                }
                next_beat = tokio::time::Instant::now() + heartbeat;
            }
            msg = inbound.message() => {
                let msg = msg
                    .map_err(|status| LinkError::Stream(format!("{}: {}", status.code(), status.message())))?
                    .ok_or_else(|| LinkError::Stream("coordinator closed the stream".into()))?;
                match msg.body {
                    Some(coordinator_message::Body::SetCadence(v1::SetCadence { report_interval_ms })) => {
                        let wanted = Duration::from_millis(u64::from(report_interval_ms));
                        heartbeat = wanted.clamp(Duration::from_millis(50), cfg.heartbeat.max(Duration::from_millis(50)));
                        next_beat = next_beat.min(tokio::time::Instant::now() + heartbeat);
                        tracing::debug!(member = %member, ?heartbeat, "report cadence changed");
                    }
                    Some(coordinator_message::Body::Command(cmd)) => {
                        let result = execute(cmd, results)?;
                        send(&tx, agent_message::Body::Result(result)).await?;
                    }
                    None => return Err(LinkError::BadMessage("empty coordinator message".into())),
                }
            }
        }
    }
}

/// Runs a command once; a repeated id gets the stored result.
fn execute(
    cmd: v1::Command,
    results: &mut HashMap<String, v1::CommandResult>,
) -> Result<v1::CommandResult, LinkError> {
    let v1::Command { id, step } = cmd;
    if id.is_empty() {
        return Err(LinkError::BadMessage("command without an id".into()));
    }
    if let Some(done) = results.get(&id) {
        return Ok(done.clone());
    }
    let (outcome, detail) = match step {
        Some(command::Step::Noop(v1::Noop {})) => (v1::Outcome::Ok, String::new()),
        None => (v1::Outcome::Failed, "command has no step".to_owned()),
    };
    let result = v1::CommandResult {
        id: id.clone(),
        outcome: outcome as i32,
        detail,
    };
    results.insert(id, result.clone());
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_command_id_returns_the_stored_result() {
        let mut results = HashMap::new();
        let noop = |id: &str| v1::Command {
            id: id.into(),
            step: Some(command::Step::Noop(v1::Noop {})),
        };
        let a = execute(noop("c1"), &mut results).unwrap();
        let bad = v1::Command {
            id: "c1".into(),
            step: None,
        };
        // Same id, different body: the stored result wins, nothing runs again.
        assert_eq!(execute(bad, &mut results).unwrap(), a);
        assert_eq!(results.len(), 1);
        assert!(execute(noop(""), &mut results).is_err());
    }
}
