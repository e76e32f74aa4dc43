//! The agent's link to the coordinator: dial out, say Hello, report, obey.
//!
//! This module owns the stream to the coordinator. It reports at once when
//! the member's role, leader, release, format or health changes, and as a
//! heartbeat otherwise (the coordinator can ask for a faster cadence during a
//! catch-up or a handover). It reconnects with bounded exponential backoff. A
//! command id is run at most once: a repeated id is answered from the stored
//! result. It also carries the grants a command asks for ([`LinkGranter`]):
//! the presigned store requests the coordinator signs, since the agent holds
//! no store credentials.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_domain::{AgentCommand, CommandOutcome, Hello, MemberId, ProcessReport, Report};
use baton_proto::v1::{
    self, agent_link_client::AgentLinkClient, agent_message, coordinator_message,
};
use baton_store::StoreError;
use baton_store::granted::{Grant, GrantMethod, Granter};
use baton_store::s3::Presigned;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::executor::Executor;
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
    pub tls: Option<baton_net::tls::ClientTls>,
    /// The watcher's polling interval, shortened while the coordinator
    /// gates on this member.
    pub poll: PollControl,
}

/// The member watcher's polling interval. While the coordinator asks for a
/// faster report cadence (it is gating on this member: healthy on the new
/// release, caught up), the member is read ten times per report interval,
/// so a gate sees the change within milliseconds rather than a poll later.
#[derive(Debug, Clone)]
pub struct PollControl {
    normal: Duration,
    /// The interval the watcher polls at; shared by every clone of the control.
    tx: Arc<watch::Sender<Duration>>,
}

/// The fastest the member is ever polled.
pub const FASTEST_POLL: Duration = Duration::from_millis(10);

impl PollControl {
    /// A control at `normal`, and the receiver the watcher follows.
    pub fn new(normal: Duration) -> (PollControl, watch::Receiver<Duration>) {
        let (tx, rx) = watch::channel(normal);
        (
            PollControl {
                normal,
                tx: Arc::new(tx),
            },
            rx,
        )
    }

    /// The interval for a report cadence of `every` when the configured
    /// heartbeat is `heartbeat`.
    pub fn interval_for(&self, every: Duration, heartbeat: Duration) -> Duration {
        if every < heartbeat {
            (every / 10).max(FASTEST_POLL).min(self.normal)
        } else {
            self.normal
        }
    }

    fn set(&self, every: Duration, heartbeat: Duration) {
        let want = self.interval_for(every, heartbeat);
        self.tx.send_if_modified(|cur| {
            let changed = *cur != want;
            *cur = want;
            changed
        });
    }
}

/// One grant a command task waits for: what it asks, and where the
/// coordinator's answer goes.
#[derive(Debug)]
pub struct GrantAsk {
    method: v1::GrantMethod,
    key: String,
    reply: oneshot::Sender<Option<v1::grant::Answer>>,
}

/// How long one grant may take to come back before it is asked again.
const GRANT_WAIT: Duration = Duration::from_secs(10);
/// How many times a grant is asked (a session may end and another begin
/// in between).
const GRANT_ATTEMPTS: u32 = 4;

/// The agent's [`Granter`]: asks the coordinator, over whichever session is
/// up, for the presigned requests a command needs.
#[derive(Debug, Clone)]
pub struct LinkGranter {
    member: MemberId,
    tx: mpsc::Sender<GrantAsk>,
}

/// A granter and the receiver that [`run`] serves it from.
pub fn granter(member: MemberId) -> (LinkGranter, mpsc::Receiver<GrantAsk>) {
    let (tx, rx) = mpsc::channel(16);
    (LinkGranter { member, tx }, rx)
}

impl LinkGranter {
    fn err(&self, key: &str, detail: String) -> StoreError {
        StoreError::Object {
            location: "the coordinator's store (presigned requests)".to_owned(),
            key: key.to_owned(),
            detail: format!("member {}: {detail}", self.member),
        }
    }

    async fn ask(
        &self,
        method: v1::GrantMethod,
        key: &str,
    ) -> Result<v1::grant::Answer, StoreError> {
        let mut last = String::new();
        for attempt in 0..GRANT_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
            let (reply, answer) = oneshot::channel();
            let ask = GrantAsk {
                method,
                key: key.to_owned(),
                reply,
            };
            if self.tx.send(ask).await.is_err() {
                return Err(self.err(key, "the agent is shutting down".to_owned()));
            }
            match tokio::time::timeout(GRANT_WAIT, answer).await {
                Ok(Ok(Some(a))) => return Ok(a),
                Ok(Ok(None)) => last = "the coordinator sent an empty grant".to_owned(),
                Ok(Err(_)) => last = "the session with the coordinator ended".to_owned(),
                Err(_) => last = format!("no grant from the coordinator within {GRANT_WAIT:?}"),
            }
        }
        Err(self.err(
            key,
            format!("asking the coordinator for a presigned {} failed {GRANT_ATTEMPTS} times: {last}; check the agent's link to the coordinator", method.as_str_name()),
        ))
    }
}

impl Granter for LinkGranter {
    fn presign<'a>(
        &'a self,
        method: GrantMethod,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Grant, StoreError>> {
        Box::pin(async move {
            let wire = match method {
                GrantMethod::Get => v1::GrantMethod::Get,
                GrantMethod::Put => v1::GrantMethod::Put,
                GrantMethod::Delete => v1::GrantMethod::Delete,
            };
            match self.ask(wire, key).await? {
                v1::grant::Answer::Request(r) => Ok(Grant {
                    request: Presigned {
                        method: r.method,
                        url: r.url,
                        headers: r.headers.into_iter().map(|h| (h.name, h.value)).collect(),
                        expires_in: Duration::from_millis(u64::from(r.expires_in_ms)),
                    },
                    location: r.location,
                }),
                v1::grant::Answer::Refused(why) => {
                    Err(self.err(key, format!("the coordinator refused: {why}")))
                }
                v1::grant::Answer::Keys(_) => Err(self.err(
                    key,
                    "the coordinator answered a presign with a listing".to_owned(),
                )),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            match self.ask(v1::GrantMethod::List, prefix).await? {
                v1::grant::Answer::Keys(k) => {
                    let mut keys = k.keys;
                    keys.sort();
                    Ok(keys)
                }
                v1::grant::Answer::Refused(why) => {
                    Err(self.err(prefix, format!("the coordinator refused: {why}")))
                }
                v1::grant::Answer::Request(_) => Err(self.err(
                    prefix,
                    "the coordinator answered a listing with a presigned request".to_owned(),
                )),
            }
        })
    }
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
    process: ProcessReport,
) -> Report {
    let mut state = obs.state.clone();
    state.applied_revision = state.applied_revision.min(state.committed_revision);
    Report {
        member: member.clone(),
        state,
        resources,
        timestamp_unix_ms: now_unix_ms(),
        process,
    }
}

/// Runs sessions with the coordinator until `shutdown`.
pub async fn run(
    cfg: LinkConfig,
    mut observations: watch::Receiver<Option<Observation>>,
    mut resources: ResourceReader,
    stats: watch::Sender<LinkStats>,
    executor: Arc<Executor>,
    mut grants: mpsc::Receiver<GrantAsk>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    // Results outlive sessions: one finished while disconnected is sent on
    // the next session (and a resent id is answered from the journal anyway).
    let (results_tx, mut results_rx) = mpsc::channel::<CommandOutcome>(64);
    let mut io = SessionIo {
        observations: &mut observations,
        resources: &mut resources,
        stats: &stats,
        executor: &executor,
        results_tx: &results_tx,
        results_rx: &mut results_rx,
        grants: &mut grants,
    };
    loop {
        let started = tokio::time::Instant::now();
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return,
            r = session(&cfg, &mut io) => r,
        };
        stats.send_modify(|s| s.connected = false);
        // No coordinator, no gate: back to the configured polling.
        cfg.poll.set(cfg.heartbeat, cfg.heartbeat);
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

/// What a session borrows from the link for its lifetime.
struct SessionIo<'a> {
    /// The watcher's latest observation; a salient change is reported at once.
    observations: &'a mut watch::Receiver<Option<Observation>>,
    resources: &'a mut ResourceReader,
    /// Publishes the link's counters to the metrics.
    stats: &'a watch::Sender<LinkStats>,
    executor: &'a Arc<Executor>,
    /// Where command tasks send their outcomes; outlives sessions.
    results_tx: &'a mpsc::Sender<CommandOutcome>,
    /// Outcomes waiting to be sent on the current (or next) session.
    results_rx: &'a mut mpsc::Receiver<CommandOutcome>,
    /// Grants command tasks ask for; each is asked on the current session.
    grants: &'a mut mpsc::Receiver<GrantAsk>,
}

async fn session(cfg: &LinkConfig, io: &mut SessionIo<'_>) -> Result<(), LinkError> {
    let SessionIo {
        observations,
        resources,
        stats,
        executor,
        results_tx,
        results_rx,
        grants,
    } = io;
    // Grants asked on this session, by request id. Dropped with the
    // session: their askers see it ended and ask again on the next one.
    let mut pending: HashMap<u64, oneshot::Sender<Option<v1::grant::Answer>>> = HashMap::new();
    let mut next_grant = 0u64;
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
    // The runner's view of the process: every exit is news at once.
    let mut exits = executor.exits();
    let mut exits_live = true;
    let mut last_sent = build_report(member, &first, resources.read(), exits.borrow().report());
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
            // Biased: a process change (an exit, or the reset a start makes)
            // is reported before the result of the command that caused it,
            // so the coordinator never judges a start on an older count.
            biased;
            changed = exits.changed(), if exits_live => {
                if changed.is_err() {
                    exits_live = false;
                    continue;
                }
                let process = exits.borrow_and_update().report();
                if process != last_sent.process {
                    let obs = observations.borrow().clone();
                    if let Some(obs) = obs {
                        let report = build_report(member, &obs, last_sent.resources, process);
                        send(&tx, agent_message::Body::Report(report.clone().into())).await?;
                        stats.send_modify(|s| s.reports_sent += 1);
                        last_sent = report;
                        next_beat = tokio::time::Instant::now() + heartbeat;
                    }
                }
            }
            changed = observations.changed() => {
                changed.map_err(|_| LinkError::Stream("member watcher stopped".into()))?;
                let obs = observations.borrow_and_update().clone();
                if let Some(obs) = obs {
                    let report = build_report(member, &obs, last_sent.resources, exits.borrow().report());
                    // While the coordinator gates on this member (it asked
                    // for a faster cadence), a revision change is news too.
                    let fast = heartbeat < cfg.heartbeat;
                    let revisions = |r: &Report| (r.state.committed_revision, r.state.applied_revision);
                    let moved = revisions(&report) != revisions(&last_sent);
                    if report.salient() != last_sent.salient() || (fast && moved) {
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
                    let report = build_report(member, &obs, resources.read(), exits.borrow().report());
                    send(&tx, agent_message::Body::Report(report.clone().into())).await?;
                    stats.send_modify(|s| s.reports_sent += 1);
                    last_sent = report;
                }
                next_beat = tokio::time::Instant::now() + heartbeat;
            }
            Some(outcome) = results_rx.recv() => {
                send(&tx, agent_message::Body::Result(outcome.into())).await?;
            }
            Some(ask) = grants.recv() => {
                next_grant += 1;
                pending.insert(next_grant, ask.reply);
                let req = v1::GrantRequest {
                    request_id: next_grant,
                    method: ask.method.into(),
                    key: ask.key,
                };
                send(&tx, agent_message::Body::GrantRequest(req)).await?;
            }
            msg = inbound.message() => {
                let msg = msg
                    .map_err(|status| LinkError::Stream(format!("{}: {}", status.code(), status.message())))?
                    .ok_or_else(|| LinkError::Stream("coordinator closed the stream".into()))?;
                match msg.body {
                    Some(coordinator_message::Body::SetCadence(v1::SetCadence { report_interval_ms })) => {
                        let wanted = Duration::from_millis(u64::from(report_interval_ms));
                        let faster = wanted < heartbeat;
                        heartbeat = wanted.clamp(Duration::from_millis(50), cfg.heartbeat.max(Duration::from_millis(50)));
                        // Asked to speed up (a preflight or a gate waits on
                        // live reports): the first one goes out now.
                        next_beat = if faster {
                            tokio::time::Instant::now()
                        } else {
                            next_beat.min(tokio::time::Instant::now() + heartbeat)
                        };
                        cfg.poll.set(heartbeat, cfg.heartbeat);
                        tracing::debug!(member = %member, ?heartbeat, "report cadence changed");
                    }
                    Some(coordinator_message::Body::Command(cmd)) => {
                        let cmd = AgentCommand::try_from(cmd)
                            .map_err(|e| LinkError::BadMessage(e.to_string()))?;
                        if let Some(done) = executor.stored(&cmd) {
                            send(&tx, agent_message::Body::Result(done.into())).await?;
                        } else {
                            // Run off the session so reports keep flowing.
                            let (ex, out) = (Arc::clone(executor), results_tx.clone());
                            tokio::spawn(async move {
                                let outcome = ex.run(cmd).await;
                                let _ = out.send(outcome).await;
                            });
                        }
                    }
                    Some(coordinator_message::Body::Grant(g)) => {
                        if let Some(reply) = pending.remove(&g.request_id) {
                            let _ = reply.send(g.answer);
                        }
                    }
                    None => return Err(LinkError::BadMessage("empty coordinator message".into())),
                }
            }
        }
    }
}

#[cfg(test)]
mod poll_tests {
    use super::*;

    #[test]
    fn fast_cadence_polls_ten_times_per_report() {
        let ms = Duration::from_millis;
        let (p, rx) = PollControl::new(ms(50));
        // Normal cadence: the configured poll.
        assert_eq!(p.interval_for(ms(300), ms(300)), ms(50));
        // Gated at 100 ms reports: every 10 ms, never faster than 10 ms,
        // never slower than configured.
        assert_eq!(p.interval_for(ms(100), ms(300)), ms(10));
        assert_eq!(p.interval_for(ms(50), ms(300)), FASTEST_POLL);
        assert_eq!(p.interval_for(ms(290), ms(2000)), ms(29));
        assert_eq!(p.interval_for(ms(1000), ms(2000)), ms(50));
        p.set(ms(100), ms(300));
        assert_eq!(*rx.borrow(), ms(10));
        p.set(ms(300), ms(300));
        assert_eq!(*rx.borrow(), ms(50));
    }
}
