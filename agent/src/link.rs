//! The agent's link to the coordinator: dial out, say Hello, report, obey.
//!
//! This module owns the streams to the coordinator's replicas, one session
//! per configured address at the same time, each dialed again on its own
//! with bounded exponential backoff. A hub owns what they share:
//! - reports: at once when the member's role, leader, release, format or
//!   health changes, and as a heartbeat otherwise, each to every session
//!   (followers keep a warm view, so a new leader can gate at once). A
//!   SetCadence from any session sets the cadence until that session ends;
//! - commands: from any session (only the leader sends them) to the one
//!   executor, which runs an id at most once and refuses a deposed leader's
//!   term. A result goes to every session that is up, and waits for one when
//!   none is; a refusal of one delivery (an old term, a reused id) goes to
//!   its sender alone;
//! - the grants a command asks for ([`LinkGranter`]): the presigned store
//!   requests the coordinator signs (the agent holds no store credentials),
//!   asked on the session that sent the running command.
//!
//! ```text
//!  replica a ◀─▶ session ─┐  Event (Dialed, Up, Inbound, Down)
//!  replica b ◀─▶ session ─┼──────────────▶ hub ──▶ executor (one command at a time)
//!  replica c ◀─▶ session ─┘◀── reports, results, grant requests (try_send)
//! ```
//!
//! The hub never waits on a session: one that stops taking messages is
//! dropped and dialed again, so a stuck replica holds up no other.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_domain::{
    AgentCommand, CommandId, CommandOutcome, Hello, MemberId, ProcessReport, Report,
};
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

use crate::executor::{Answer, Executor};
use crate::resources::ResourceReader;
use crate::watcher::Observation;

/// Why one session with the coordinator ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("coordinator address {addr:?} is invalid: {detail}")]
    BadAddress { addr: String, detail: String },
    #[error("cannot reach coordinator at {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("coordinator refused member {member} ({code}): {message}")]
    Refused {
        member: MemberId,
        /// The gRPC code, e.g. `PermissionDenied`.
        code: String,
        message: String,
    },
    #[error("stream to coordinator broke: {0}")]
    Stream(String),
    /// The TLS layer refused the connection, for a reason a probe named.
    #[error("cannot talk to coordinator at {addr}: {why}")]
    Tls { addr: String, why: String },
    #[error("coordinator sent a message this agent cannot understand: {0}")]
    BadMessage(String),
    #[error("coordinator at {addr} stopped taking messages; dropped its session")]
    Stalled { addr: String },
}

/// Everything a link needs; built once by `run`.
#[derive(Debug)]
pub struct LinkConfig {
    pub hello: Hello,
    /// One address per coordinator replica; a session is held with each.
    pub coordinators: Vec<String>,
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

/// The agent's [`Granter`]: asks the coordinator, over the session that
/// sent the running command, for the presigned requests it needs.
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

/// A coordinator replica: its place in [`LinkConfig::coordinators`].
type Replica = usize;

/// How many messages may wait for one session's stream; a session that
/// stops taking them (a stuck replica) is dropped and dialed again, so
/// that it never holds up the others.
const OUTBOUND_BUFFER: usize = 64;

/// What each session needs to dial its replica and say Hello.
#[derive(Debug)]
struct Dial {
    hello: Hello,
    tls: Option<baton_net::tls::ClientTls>,
}

impl Dial {
    /// The TLS files as they are now (read again for every connection, so
    /// rotated certificates are used without a restart); the ones read
    /// before when the files cannot be read or used, with a warning.
    fn current_tls(&self) -> Option<baton_net::tls::ClientTls> {
        let tls = self.tls.as_ref()?;
        Some(tls.fresh().unwrap_or_else(|e| {
            tracing::warn!(member = %self.hello.member, error = %e, "cannot read the [tls] files again; connecting with the ones read before. Fix the files");
            tls.clone()
        }))
    }
}

/// What a session tells the hub, in the order it happened.
#[derive(Debug)]
enum Event {
    /// The session said Hello on `outbound`: its first report goes there
    /// now (the coordinator answers only after it), then every report.
    Dialed {
        replica: Replica,
        outbound: mpsc::Sender<v1::AgentMessage>,
        /// Ends the session (the hub drops a replica that stopped reading).
        stop: CancellationToken,
    },
    /// The coordinator answered: results and grants go to it too.
    Up { replica: Replica },
    /// A message from the coordinator, converted at the edge.
    Inbound { replica: Replica, message: Inbound },
    /// The session ended (it is dialed again after its backoff).
    Down { replica: Replica, error: String },
}

/// A coordinator message as the hub acts on it.
#[derive(Debug)]
enum Inbound {
    Cadence(Duration),
    Command(AgentCommand),
    Grant {
        request_id: u64,
        answer: Option<v1::grant::Answer>,
    },
}

/// A command task's answer, and which delivery of the command it answers.
#[derive(Debug)]
struct Finished {
    answer: Answer,
    /// The replica that sent this delivery.
    from: Replica,
    delivery: u64,
}

/// Runs one session per coordinator replica until `shutdown`, each dialed
/// again on its own with bounded backoff, and the hub that serves them all:
/// every report goes to every session, a command from any of them goes to
/// the one executor, and its result goes back on every session that is up
/// (kept until one is).
pub async fn run(
    cfg: LinkConfig,
    observations: watch::Receiver<Option<Observation>>,
    resources: ResourceReader,
    stats: watch::Sender<LinkStats>,
    executor: Arc<Executor>,
    grants: mpsc::Receiver<GrantAsk>,
    shutdown: CancellationToken,
) {
    let dial = Arc::new(Dial {
        hello: cfg.hello.clone(),
        tls: cfg.tls.clone(),
    });
    let (events_tx, events) = mpsc::channel(OUTBOUND_BUFFER);
    let mut replicas = tokio::task::JoinSet::new();
    for (replica, addr) in cfg.coordinators.iter().enumerate() {
        replicas.spawn(replica_sessions(
            replica,
            addr.clone(),
            dial.clone(),
            observations.clone(),
            events_tx.clone(),
            shutdown.clone(),
        ));
    }
    drop(events_tx);
    let (hub, finished) = Hub::new(&cfg, &stats, &executor, resources, observations);
    hub.run(events, finished, grants, &shutdown).await;
    // The hub is gone: a session waiting to tell it something sees that.
    while replicas.join_next().await.is_some() {}
}

/// Sessions with the replica at `addr`, one after another, until `shutdown`.
async fn replica_sessions(
    replica: Replica,
    addr: String,
    dial: Arc<Dial>,
    mut observations: watch::Receiver<Option<Observation>>,
    events: mpsc::Sender<Event>,
    shutdown: CancellationToken,
) {
    let member = &dial.hello.member;
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = tokio::time::Instant::now();
        let stop = shutdown.child_token();
        let tls = dial.current_tls();
        let ended = tokio::select! {
            () = stop.cancelled() => LinkError::Stalled { addr: addr.clone() },
            Err(e) = session(replica, &addr, &dial, tls.as_ref(), &mut observations, &events, &stop) => e,
        };
        if shutdown.is_cancelled() {
            return;
        }
        // A connection that could not be made: say why when TLS is why.
        let ended = match ended {
            LinkError::Connect { .. } => {
                match baton_net::tls::diagnose(&addr, tls.as_ref(), Duration::from_secs(2)).await {
                    Some(why) => LinkError::Tls {
                        addr: addr.clone(),
                        why,
                    },
                    None => ended,
                }
            }
            other => other,
        };
        tracing::warn!(member = %member, coordinator = %addr, error = %ended, retry_in = ?backoff, "coordinator session ended");
        let down = Event::Down {
            replica,
            error: ended.to_string(),
        };
        if events.send(down).await.is_err() {
            return;
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

/// One session with the replica at `addr`: dial, say Hello, hand the
/// outbound stream to the hub, then pass on what the coordinator sends
/// until the stream breaks.
async fn session(
    replica: Replica,
    addr: &str,
    dial: &Dial,
    tls: Option<&baton_net::tls::ClientTls>,
    observations: &mut watch::Receiver<Option<Observation>>,
    events: &mpsc::Sender<Event>,
    stop: &CancellationToken,
) -> Result<std::convert::Infallible, LinkError> {
    let member = &dial.hello.member;
    let hub_gone = || LinkError::Stream("the agent is shutting down".into());
    let endpoint = Endpoint::from_shared(addr.to_owned())
        .map_err(|e| LinkError::BadAddress {
            addr: addr.to_owned(),
            detail: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    let endpoint = match tls {
        Some(tls) => tls.apply(endpoint).map_err(|e| LinkError::BadAddress {
            addr: addr.to_owned(),
            detail: format!("TLS setup: {e}"),
        })?,
        None => endpoint,
    };
    let channel = endpoint.connect().await.map_err(|e| LinkError::Connect {
        addr: addr.to_owned(),
        detail: e.to_string(),
    })?;

    // Wait for a first observation so the first report is real.
    observations
        .wait_for(Option::is_some)
        .await
        .map_err(|_| LinkError::Stream("member watcher stopped".into()))?;
    let (tx, rx) = mpsc::channel::<v1::AgentMessage>(OUTBOUND_BUFFER);
    let hello = agent_message::Body::Hello(dial.hello.clone().into());
    tx.try_send(v1::AgentMessage { body: Some(hello) })
        .map_err(|_| LinkError::Stream("outbound stream closed".into()))?;
    let dialed = Event::Dialed {
        replica,
        outbound: tx,
        stop: stop.clone(),
    };
    events.send(dialed).await.map_err(|_| hub_gone())?;

    let mut inbound = AgentLinkClient::new(channel)
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|status| match status.code() {
            tonic::Code::InvalidArgument
            | tonic::Code::PermissionDenied
            | tonic::Code::NotFound
            | tonic::Code::FailedPrecondition => LinkError::Refused {
                member: member.clone(),
                code: format!("{:?}", status.code()),
                message: status.message().to_owned(),
            },
            _ => LinkError::Connect {
                addr: addr.to_owned(),
                detail: status.message().to_owned(),
            },
        })?
        .into_inner();
    events
        .send(Event::Up { replica })
        .await
        .map_err(|_| hub_gone())?;
    tracing::info!(member = %member, coordinator = %addr, "connected to coordinator");

    loop {
        let msg = inbound
            .message()
            .await
            .map_err(|status| {
                LinkError::Stream(format!("{}: {}", status.code(), status.message()))
            })?
            .ok_or_else(|| LinkError::Stream("coordinator closed the stream".into()))?;
        let message = match msg.body {
            Some(coordinator_message::Body::SetCadence(v1::SetCadence { report_interval_ms })) => {
                Inbound::Cadence(Duration::from_millis(u64::from(report_interval_ms)))
            }
            Some(coordinator_message::Body::Command(cmd)) => Inbound::Command(
                AgentCommand::try_from(cmd).map_err(|e| LinkError::BadMessage(e.to_string()))?,
            ),
            Some(coordinator_message::Body::Grant(v1::Grant { request_id, answer })) => {
                Inbound::Grant { request_id, answer }
            }
            None => return Err(LinkError::BadMessage("empty coordinator message".into())),
        };
        events
            .send(Event::Inbound { replica, message })
            .await
            .map_err(|_| hub_gone())?;
    }
}

/// A session the hub sends to.
#[derive(Debug)]
struct Attached {
    /// The session's outbound stream; dropping it ends the stream.
    outbound: mpsc::Sender<v1::AgentMessage>,
    stop: CancellationToken,
    /// The coordinator answered: results and grants go here too, not
    /// only reports.
    up: bool,
    /// Grants asked on this session, by request id. Dropped with the
    /// session: their askers see it ended and ask again.
    pending: HashMap<u64, oneshot::Sender<Option<v1::grant::Answer>>>,
}

/// The one owner of what the sessions share: the reports, the commands
/// and their results, and the grants.
struct Hub<'a> {
    cfg: &'a LinkConfig,
    /// Publishes the link's counters to the metrics.
    stats: &'a watch::Sender<LinkStats>,
    executor: &'a Arc<Executor>,
    resources: ResourceReader,
    /// The watcher's latest observation; a salient change is reported at once.
    observations: watch::Receiver<Option<Observation>>,
    /// The runner's view of the process: every exit is news at once.
    exits: watch::Receiver<crate::runner::supervise::ProcState>,
    /// The sessions that said Hello, by replica.
    sessions: BTreeMap<Replica, Attached>,
    /// The last report, sent to every session attached then.
    last_sent: Option<Report>,
    /// The report cadence: the configured heartbeat, or what a replica asked.
    heartbeat: Duration,
    /// The replica whose faster cadence holds; when its session ends, the
    /// configured heartbeat (and polling) is back.
    cadence_from: Option<Replica>,
    next_beat: tokio::time::Instant,
    /// Results that found no session up; sent on the next one that is.
    unsent: VecDeque<CommandOutcome>,
    /// Grant asks waiting for the session they go to.
    asks: VecDeque<GrantAsk>,
    /// Commands handed to the executor, by id: the replica that sent the
    /// newest delivery (the command's grants are asked there), and which
    /// delivery that was.
    in_flight: HashMap<CommandId, (Replica, u64)>,
    deliveries: u64,
    /// The replica that sent the last command the executor took.
    last_commander: Option<Replica>,
    next_grant: u64,
    /// Where command tasks send their answers.
    finished_tx: mpsc::Sender<Finished>,
}

impl<'a> Hub<'a> {
    /// A hub with no session yet, and the receiver of its command tasks'
    /// answers.
    fn new(
        cfg: &'a LinkConfig,
        stats: &'a watch::Sender<LinkStats>,
        executor: &'a Arc<Executor>,
        resources: ResourceReader,
        observations: watch::Receiver<Option<Observation>>,
    ) -> (Self, mpsc::Receiver<Finished>) {
        let (finished_tx, finished) = mpsc::channel(OUTBOUND_BUFFER);
        let hub = Hub {
            cfg,
            stats,
            executor,
            resources,
            observations,
            exits: executor.exits(),
            sessions: BTreeMap::new(),
            last_sent: None,
            heartbeat: cfg.heartbeat,
            cadence_from: None,
            next_beat: tokio::time::Instant::now() + cfg.heartbeat,
            unsent: VecDeque::new(),
            asks: VecDeque::new(),
            in_flight: HashMap::new(),
            deliveries: 0,
            last_commander: None,
            next_grant: 0,
            finished_tx,
        };
        (hub, finished)
    }

    async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut finished: mpsc::Receiver<Finished>,
        mut grants: mpsc::Receiver<GrantAsk>,
        shutdown: &CancellationToken,
    ) {
        let mut exits_live = true;
        let mut observing = true;
        loop {
            tokio::select! {
                // Biased: a process change (an exit, or the reset a start
                // makes) is reported before the result of the command that
                // caused it, so the coordinator never judges a start on an
                // older count.
                biased;
                () = shutdown.cancelled() => return,
                changed = self.exits.changed(), if exits_live => {
                    if changed.is_err() {
                        exits_live = false;
                        continue;
                    }
                    self.process_changed();
                }
                changed = self.observations.changed(), if observing => {
                    if changed.is_err() {
                        observing = false;
                        continue;
                    }
                    self.observed();
                }
                () = tokio::time::sleep_until(self.next_beat) => self.beat(),
                Some(f) = finished.recv() => self.finished(f),
                Some(ask) = grants.recv() => {
                    self.asks.push_back(ask);
                    self.route_asks();
                }
                Some(event) = events.recv() => self.event(event),
            }
        }
    }

    fn member(&self) -> &MemberId {
        &self.cfg.hello.member
    }

    fn is_up(&self, replica: Replica) -> bool {
        self.sessions.get(&replica).is_some_and(|s| s.up)
    }

    /// Sends `body` on `replica`'s session; a session that stopped taking
    /// messages is dropped. Whether it was sent.
    fn send(&mut self, replica: Replica, body: agent_message::Body) -> bool {
        let Some(session) = self.sessions.get(&replica) else {
            return false;
        };
        match session
            .outbound
            .try_send(v1::AgentMessage { body: Some(body) })
        {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(member = %self.member(), coordinator = %self.cfg.coordinators[replica], "coordinator stopped taking messages; dropping its session");
                self.detach(replica);
                false
            }
            // The session is ending; its Down follows.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.detach(replica);
                false
            }
        }
    }

    /// Forgets `replica`'s session and ends it.
    fn detach(&mut self, replica: Replica) {
        let Some(session) = self.sessions.remove(&replica) else {
            return;
        };
        session.stop.cancel();
        if self.cadence_from == Some(replica) {
            // No one gates on this member now: back to the configured cadence.
            self.cadence_from = None;
            self.heartbeat = self.cfg.heartbeat;
            self.cfg.poll.set(self.cfg.heartbeat, self.cfg.heartbeat);
        }
        let up = self.sessions.values().any(|s| s.up);
        self.stats.send_modify(|s| s.connected = up);
    }

    /// Sends `report` to every session attached.
    fn report(&mut self, report: Report) {
        let replicas: Vec<Replica> = self.sessions.keys().copied().collect();
        let mut sent = 0;
        for replica in replicas {
            let body = agent_message::Body::Report(report.clone().into());
            sent += u64::from(self.send(replica, body));
        }
        self.stats.send_modify(|s| s.reports_sent += sent);
        self.last_sent = Some(report);
        self.next_beat = tokio::time::Instant::now() + self.heartbeat;
    }

    /// A fresh report to every session (a heartbeat, or a new session's first).
    fn fresh_report(&mut self) -> bool {
        let Some(obs) = self.observations.borrow().clone() else {
            return false;
        };
        let process = self.exits.borrow().report();
        let resources = self.resources.read();
        let report = build_report(self.member(), &obs, resources, process);
        self.report(report);
        true
    }

    fn process_changed(&mut self) {
        let process = self.exits.borrow_and_update().report();
        let Some(last) = &self.last_sent else { return };
        if process == last.process {
            return;
        }
        let resources = last.resources;
        let obs = self.observations.borrow().clone();
        if let Some(obs) = obs {
            let report = build_report(self.member(), &obs, resources, process);
            self.report(report);
        }
    }

    fn observed(&mut self) {
        let obs = self.observations.borrow_and_update().clone();
        let (Some(obs), Some(last)) = (obs, &self.last_sent) else {
            return;
        };
        let report = build_report(
            self.member(),
            &obs,
            last.resources,
            self.exits.borrow().report(),
        );
        // While the coordinator gates on this member (it asked for a
        // faster cadence), a revision change is news too.
        let fast = self.heartbeat < self.cfg.heartbeat;
        let revisions = |r: &Report| (r.state.committed_revision, r.state.applied_revision);
        let moved = revisions(&report) != revisions(last);
        if report.salient() != last.salient() || (fast && moved) {
            self.report(report);
        }
    }

    fn beat(&mut self) {
        // Nobody to tell: no need to read the host.
        if self.sessions.is_empty() || !self.fresh_report() {
            self.next_beat = tokio::time::Instant::now() + self.heartbeat;
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Dialed {
                replica,
                outbound,
                stop,
            } => {
                let attached = Attached {
                    outbound,
                    stop,
                    up: false,
                    pending: HashMap::new(),
                };
                if let Some(old) = self.sessions.insert(replica, attached) {
                    old.stop.cancel();
                }
                if !self.fresh_report() {
                    self.detach(replica);
                }
            }
            Event::Up { replica } => {
                let Some(session) = self.sessions.get_mut(&replica) else {
                    return;
                };
                session.up = true;
                self.stats.send_modify(|s| {
                    s.sessions += 1;
                    s.connected = true;
                    s.last_error = None;
                });
                while let Some(outcome) = self.unsent.pop_front() {
                    if !self.send(replica, agent_message::Body::Result(outcome.clone().into())) {
                        self.unsent.push_front(outcome);
                        break;
                    }
                }
                self.route_asks();
            }
            Event::Inbound { replica, message } => match message {
                Inbound::Cadence(wanted) => self.cadence(replica, wanted),
                Inbound::Command(cmd) => self.command(replica, cmd),
                Inbound::Grant { request_id, answer } => {
                    let reply = self
                        .sessions
                        .get_mut(&replica)
                        .and_then(|s| s.pending.remove(&request_id));
                    if let Some(reply) = reply {
                        let _ = reply.send(answer);
                    }
                }
            },
            Event::Down { replica, error } => {
                self.detach(replica);
                self.stats.send_modify(|s| s.last_error = Some(error));
            }
        }
    }

    fn cadence(&mut self, replica: Replica, wanted: Duration) {
        let cfg = self.cfg;
        let faster = wanted < self.heartbeat;
        self.heartbeat = wanted.clamp(
            Duration::from_millis(50),
            cfg.heartbeat.max(Duration::from_millis(50)),
        );
        self.cadence_from = (self.heartbeat < cfg.heartbeat).then_some(replica);
        // Asked to speed up (a preflight or a gate waits on live reports):
        // the first one goes out now.
        let now = tokio::time::Instant::now();
        self.next_beat = if faster {
            now
        } else {
            self.next_beat.min(now + self.heartbeat)
        };
        cfg.poll.set(self.heartbeat, cfg.heartbeat);
        tracing::debug!(member = %cfg.hello.member, coordinator = %cfg.coordinators[replica], heartbeat = ?self.heartbeat, "report cadence changed");
    }

    fn command(&mut self, from: Replica, cmd: AgentCommand) {
        if let Some(answer) = self.executor.answer_stored(&cmd) {
            if let Answer::Outcome(_) = answer {
                self.last_commander = Some(from);
            }
            self.answer(answer, from);
            return;
        }
        self.deliveries += 1;
        let delivery = self.deliveries;
        self.in_flight.insert(cmd.id.clone(), (from, delivery));
        self.last_commander = Some(from);
        // Run off the hub so reports keep flowing.
        let (ex, out) = (Arc::clone(self.executor), self.finished_tx.clone());
        tokio::spawn(async move {
            let answer = ex.answer(cmd).await;
            let _ = out
                .send(Finished {
                    answer,
                    from,
                    delivery,
                })
                .await;
        });
        // A re-sent command may now be asked for on its new sender.
        self.route_asks();
    }

    fn finished(&mut self, f: Finished) {
        let id = &f.answer.outcome().id;
        if self
            .in_flight
            .get(id)
            .is_some_and(|(_, d)| *d == f.delivery)
        {
            self.in_flight.remove(id);
        }
        self.answer(f.answer, f.from);
    }

    /// A refusal of one delivery goes back to its sender alone (another
    /// replica may be owed the command's real outcome); an outcome goes to
    /// every session up, or waits for one.
    fn answer(&mut self, answer: Answer, from: Replica) {
        match answer {
            Answer::Refused(refusal) => {
                let id = refusal.id.clone();
                if !self.send(from, agent_message::Body::Result(refusal.into())) {
                    tracing::debug!(member = %self.member(), %id, "the refusal's sender is gone; dropped it");
                }
            }
            Answer::Outcome(outcome) => {
                let up: Vec<Replica> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.up)
                    .map(|(r, _)| *r)
                    .collect();
                let mut sent = false;
                for replica in up {
                    sent |= self.send(replica, agent_message::Body::Result(outcome.clone().into()));
                }
                if !sent {
                    self.unsent.push_back(outcome);
                }
            }
        }
    }

    /// Where a grant goes: the replica that sent the running command (its
    /// newest delivery), once its session is up; with no command running,
    /// the one that sent the last command, or any that is up.
    fn grant_route(&self) -> Option<Replica> {
        let running = self.executor.current();
        match running.and_then(|id| self.in_flight.get(&id)) {
            Some((origin, _)) => Some(*origin).filter(|r| self.is_up(*r)),
            None => self
                .last_commander
                .filter(|r| self.is_up(*r))
                .or_else(|| self.sessions.iter().find(|(_, s)| s.up).map(|(r, _)| *r)),
        }
    }

    /// Asks every waiting grant that has a session to go to.
    fn route_asks(&mut self) {
        let mut waiting = VecDeque::new();
        while let Some(ask) = self.asks.pop_front() {
            // Its asker gave up on it (and asks again).
            if ask.reply.is_closed() {
                continue;
            }
            let Some(replica) = self.grant_route() else {
                waiting.push_back(ask);
                continue;
            };
            self.next_grant += 1;
            let request_id = self.next_grant;
            let req = v1::GrantRequest {
                request_id,
                method: ask.method.into(),
                key: ask.key.clone(),
            };
            if !self.send(replica, agent_message::Body::GrantRequest(req)) {
                waiting.push_back(ask);
                continue;
            }
            if let Some(session) = self.sessions.get_mut(&replica) {
                session.pending.insert(request_id, ask.reply);
            }
        }
        self.asks = waiting;
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

#[cfg(test)]
mod hub_tests {
    use baton_domain::{Action, Fence, Health, Role};

    use super::*;
    use crate::adapter::MemberState;
    use crate::adapter::fake::FakeAdapter;
    use crate::runner::{External, MemberProcess};

    pub(super) fn observation(role: Role) -> Observation {
        let mut state = MemberState::unreachable(String::new());
        state.role = role;
        state.health = Health::Healthy;
        state.release = "v1".into();
        Observation {
            state,
            reachable: true,
            at: tokio::time::Instant::now(),
        }
    }

    pub(super) fn hello() -> Hello {
        Hello {
            member: MemberId::new("n1").unwrap(),
            cluster: "c1".into(),
            agent_version: "test".into(),
            adapter_kind: "fake".into(),
            version_rule: None,
            stage_checks: Vec::new(),
        }
    }

    /// What a hub borrows, owned by the test.
    struct Rig {
        dir: tempfile::TempDir,
        cfg: LinkConfig,
        poll: watch::Receiver<Duration>,
        stats: watch::Sender<LinkStats>,
        obs: watch::Sender<Option<Observation>>,
        executor: Arc<Executor>,
    }

    fn rig(process: impl FnOnce(&std::path::Path) -> Box<dyn MemberProcess>) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (poll, poll_rx) = PollControl::new(Duration::from_millis(100));
        let executor = Executor::open(
            MemberId::new("n1").unwrap(),
            dir.path(),
            Arc::new(FakeAdapter::default()),
            process(dir.path()),
            None,
        )
        .unwrap();
        Rig {
            cfg: LinkConfig {
                hello: hello(),
                coordinators: vec!["http://a".into(), "http://b".into(), "http://c".into()],
                heartbeat: Duration::from_secs(1),
                tls: None,
                poll,
            },
            dir,
            poll: poll_rx,
            stats: watch::channel(LinkStats::default()).0,
            obs: watch::channel(Some(observation(Role::Follower))).0,
            executor: Arc::new(executor),
        }
    }

    fn external(_: &std::path::Path) -> Box<dyn MemberProcess> {
        Box::new(External {
            member: MemberId::new("n1").unwrap(),
        })
    }

    impl Rig {
        fn hub(&self) -> (Hub<'_>, mpsc::Receiver<Finished>) {
            Hub::new(
                &self.cfg,
                &self.stats,
                &self.executor,
                ResourceReader::new(self.dir.path(), self.dir.path()),
                self.obs.subscribe(),
            )
        }
    }

    /// A fake session: what the hub sends it, and its stop token.
    struct Fake {
        rx: mpsc::Receiver<v1::AgentMessage>,
        stop: CancellationToken,
    }

    impl Fake {
        /// What the hub sent since last asked, in words.
        fn sent(&mut self) -> Vec<String> {
            let mut seen = Vec::new();
            while let Ok(m) = self.rx.try_recv() {
                seen.push(match m.body {
                    Some(agent_message::Body::Report(_)) => "report".to_owned(),
                    Some(agent_message::Body::Result(r)) => {
                        let outcome = CommandOutcome::try_from(r).unwrap();
                        match outcome.result {
                            Ok(_) => format!("{} ok", outcome.id),
                            Err(e) => format!("{} failed: {e}", outcome.id),
                        }
                    }
                    Some(agent_message::Body::GrantRequest(g)) => {
                        format!("grant {} {}", g.request_id, g.key)
                    }
                    other => format!("{other:?}"),
                });
            }
            seen
        }
    }

    fn dial(hub: &mut Hub<'_>, replica: Replica, capacity: usize) -> Fake {
        let (outbound, rx) = mpsc::channel(capacity);
        let stop = CancellationToken::new();
        hub.event(Event::Dialed {
            replica,
            outbound,
            stop: stop.clone(),
        });
        Fake { rx, stop }
    }

    fn up(hub: &mut Hub<'_>, replica: Replica) -> Fake {
        let fake = dial(hub, replica, OUTBOUND_BUFFER);
        hub.event(Event::Up { replica });
        fake
    }

    fn down(hub: &mut Hub<'_>, replica: Replica) {
        hub.event(Event::Down {
            replica,
            error: format!("replica {replica} went away"),
        });
    }

    fn command(id: &str, term: Option<u64>) -> AgentCommand {
        AgentCommand {
            id: CommandId(id.into()),
            action: Action::StepDown {
                to: MemberId::new("n2").unwrap(),
            },
            stop_timeout_ms: None,
            even_if_leader: false,
            fence: term.map(|term| Fence {
                journal: "j-1".into(),
                term,
            }),
        }
    }

    fn send(hub: &mut Hub<'_>, replica: Replica, cmd: AgentCommand) {
        hub.event(Event::Inbound {
            replica,
            message: Inbound::Command(cmd),
        });
    }

    async fn settle(hub: &mut Hub<'_>, finished: &mut mpsc::Receiver<Finished>) {
        let f = tokio::time::timeout(Duration::from_secs(10), finished.recv())
            .await
            .unwrap()
            .unwrap();
        hub.finished(f);
    }

    #[tokio::test]
    async fn every_report_goes_to_every_session_and_a_new_one_first_gets_a_fresh_one() {
        let rig = rig(external);
        let (mut hub, _finished) = rig.hub();
        let mut a = dial(&mut hub, 0, OUTBOUND_BUFFER);
        assert_eq!(a.sent(), ["report"], "the report the handshake waits for");
        assert!(!rig.stats.borrow().connected, "dialed is not connected");
        let mut b = dial(&mut hub, 1, OUTBOUND_BUFFER);
        assert_eq!(
            (a.sent(), b.sent()),
            (vec!["report".into()], vec!["report".into()])
        );
        hub.event(Event::Up { replica: 0 });
        hub.event(Event::Up { replica: 1 });
        assert!(rig.stats.borrow().connected);
        hub.beat();
        rig.obs.send_replace(Some(observation(Role::Leader)));
        hub.observed();
        // The same observation again is no news.
        rig.obs.send_replace(Some(observation(Role::Leader)));
        hub.observed();
        for fake in [&mut a, &mut b] {
            assert_eq!(fake.sent(), ["report", "report"]);
        }
        let stats = rig.stats.borrow().clone();
        assert_eq!((stats.sessions, stats.reports_sent), (2, 7));
        down(&mut hub, 0);
        assert!(a.stop.is_cancelled());
        assert!(rig.stats.borrow().connected, "b is still up");
        hub.beat();
        assert_eq!((a.sent(), b.sent()), (vec![], vec!["report".to_owned()]));
        down(&mut hub, 1);
        let stats = rig.stats.borrow().clone();
        assert!(!stats.connected);
        assert_eq!(stats.last_error.as_deref(), Some("replica 1 went away"));
    }

    #[tokio::test]
    async fn a_result_goes_to_every_session_up_and_waits_when_none_is() {
        let rig = rig(external);
        let (mut hub, mut finished) = rig.hub();
        let mut a = up(&mut hub, 0);
        let mut b = dial(&mut hub, 1, OUTBOUND_BUFFER);
        let mut c = up(&mut hub, 2);
        for fake in [&mut a, &mut b, &mut c] {
            fake.sent();
        }
        send(&mut hub, 0, command("r1-1", None));
        settle(&mut hub, &mut finished).await;
        assert_eq!(a.sent(), ["r1-1 ok"]);
        assert_eq!(c.sent(), ["r1-1 ok"], "a follower keeps a warm view");
        assert!(b.sent().is_empty(), "not up yet: reports only");
        // A repeat from another replica: the stored result, to all up.
        hub.event(Event::Up { replica: 1 });
        send(&mut hub, 1, command("r1-1", None));
        for fake in [&mut a, &mut b, &mut c] {
            assert_eq!(fake.sent(), ["r1-1 ok"]);
        }
        // Every session goes while a command runs: its result waits.
        send(&mut hub, 2, command("r1-2", None));
        for r in 0..3 {
            down(&mut hub, r);
        }
        settle(&mut hub, &mut finished).await;
        let mut b = dial(&mut hub, 1, OUTBOUND_BUFFER);
        assert_eq!(b.sent(), ["report"], "not before the session is up");
        hub.event(Event::Up { replica: 1 });
        assert_eq!(b.sent(), ["r1-2 ok"]);
        assert!(hub.unsent.is_empty());
    }

    #[tokio::test]
    async fn a_deposed_leaders_refusal_goes_only_to_it() {
        let rig = rig(external);
        let (mut hub, mut finished) = rig.hub();
        let mut a = up(&mut hub, 0);
        let mut b = up(&mut hub, 1);
        a.sent();
        b.sent();
        send(&mut hub, 1, command("r1-1", Some(2)));
        settle(&mut hub, &mut finished).await;
        assert_eq!(
            (a.sent(), b.sent()),
            (vec!["r1-1 ok".into()], vec!["r1-1 ok".into()])
        );
        // The old leader (term 1) still sends: only it hears the refusal.
        send(&mut hub, 0, command("r1-2", Some(1)));
        send(&mut hub, 0, command("r1-1", Some(1)));
        let refused = a.sent();
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(
            refused
                .iter()
                .all(|r| r.contains("deposed coordinator leader")),
            "{refused:?}"
        );
        assert!(b.sent().is_empty());
        // So does a refusal that comes out of the executor's queue.
        let late = Answer::Refused(CommandOutcome {
            id: CommandId("r1-3".into()),
            result: Err("deposed".into()),
        });
        hub.finished(Finished {
            answer: late,
            from: 0,
            delivery: 0,
        });
        assert_eq!(a.sent(), ["r1-3 failed: deposed"]);
        assert!(b.sent().is_empty());
        assert_eq!(rig.executor.fenced_total(), 2);
    }

    #[tokio::test]
    async fn a_faster_cadence_from_any_session_holds_until_that_session_ends() {
        let rig = rig(external);
        let (mut hub, _finished) = rig.hub();
        let _a = up(&mut hub, 0);
        let _b = up(&mut hub, 1);
        hub.event(Event::Inbound {
            replica: 1,
            message: Inbound::Cadence(Duration::from_millis(200)),
        });
        assert_eq!(hub.heartbeat, Duration::from_millis(200));
        assert_eq!(*rig.poll.borrow(), Duration::from_millis(20));
        down(&mut hub, 0);
        assert_eq!(
            hub.heartbeat,
            Duration::from_millis(200),
            "a's loss changes nothing"
        );
        down(&mut hub, 1);
        assert_eq!(hub.heartbeat, Duration::from_secs(1));
        assert_eq!(*rig.poll.borrow(), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_session_that_stops_reading_is_dropped_and_holds_up_no_other() {
        let rig = rig(external);
        let (mut hub, _finished) = rig.hub();
        let mut stuck = dial(&mut hub, 0, 1);
        let mut b = up(&mut hub, 1);
        hub.event(Event::Up { replica: 0 });
        // b's first report filled the stuck one's buffer: it was dropped.
        assert!(stuck.stop.is_cancelled());
        assert!(!hub.sessions.contains_key(&0));
        hub.beat();
        assert_eq!(b.sent(), ["report", "report"]);
        assert_eq!(stuck.sent(), ["report"]);
    }

    #[tokio::test]
    async fn a_grant_is_asked_on_the_session_that_sent_the_running_command() {
        let rig = rig(|dir| {
            let exec = crate::config::ExecConfig {
                start: vec!["/bin/sh".into(), "-c".into(), "sleep 1".into()],
                stop: vec!["true".into()],
                base_dir: None,
                env: Default::default(),
                timeout: Duration::from_secs(10),
            };
            Box::new(crate::runner::exec::Exec::new(
                MemberId::new("n1").unwrap(),
                exec,
                dir.to_owned(),
            ))
        });
        let (mut hub, mut finished) = rig.hub();
        let mut a = up(&mut hub, 0);
        let mut b = up(&mut hub, 1);
        a.sent();
        b.sent();
        let start = |term| AgentCommand {
            action: Action::Start,
            ..command("r1-1", Some(term))
        };
        send(&mut hub, 1, start(3));
        while rig.executor.current().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ask = |hub: &mut Hub<'_>, key: &str| {
            let (reply, answer) = oneshot::channel();
            hub.asks.push_back(GrantAsk {
                method: v1::GrantMethod::Get,
                key: key.into(),
                reply,
            });
            hub.route_asks();
            answer
        };
        let first = ask(&mut hub, "k1");
        assert_eq!(
            (a.sent(), b.sent()),
            (vec![], vec!["grant 1 k1".to_owned()])
        );
        hub.event(Event::Inbound {
            replica: 1,
            message: Inbound::Grant {
                request_id: 1,
                answer: Some(v1::grant::Answer::Refused("no".into())),
            },
        });
        assert_eq!(
            first.await.unwrap(),
            Some(v1::grant::Answer::Refused("no".into()))
        );
        // Its sender is down: the ask waits for it, not for another.
        down(&mut hub, 1);
        let _waiting = ask(&mut hub, "k2");
        assert!(a.sent().is_empty());
        let mut b = up(&mut hub, 1);
        assert_eq!(b.sent(), ["report", "grant 2 k2"]);
        assert_eq!(a.sent(), ["report"], "b's first report, to every session");
        // A new leader re-sends the running command: its grants go there.
        send(&mut hub, 0, start(4));
        let _moved = ask(&mut hub, "k3");
        assert_eq!(
            (a.sent(), b.sent()),
            (vec!["grant 3 k3".to_owned()], vec![])
        );
        settle(&mut hub, &mut finished).await;
        settle(&mut hub, &mut finished).await;
        assert!(hub.in_flight.is_empty());
        assert_eq!(a.sent(), ["r1-1 ok", "r1-1 ok"]);
    }
}

#[cfg(test)]
mod wire_tests {
    use std::sync::Mutex;

    use baton_domain::{Action, Fence, Role};
    use baton_proto::v1::CoordinatorMessage;
    use baton_proto::v1::agent_link_server::{AgentLink as AgentLinkRpc, AgentLinkServer};
    use tokio::net::TcpListener;
    use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
    use tonic::{Request, Response, Status, Streaming};

    use super::*;
    use crate::adapter::fake::FakeAdapter;

    type ToAgent = mpsc::Sender<Result<CoordinatorMessage, Status>>;

    /// A coordinator replica that, like the real one, answers a stream
    /// after its Hello and first Report; it records what the agent sends,
    /// in words, and sends what the test gives it.
    #[derive(Clone, Default)]
    struct FakeReplica {
        seen: Arc<Mutex<Vec<String>>>,
        to_agent: Arc<Mutex<Option<ToAgent>>>,
    }

    fn word(body: Option<agent_message::Body>) -> String {
        match body {
            Some(agent_message::Body::Hello(_)) => "hello".into(),
            Some(agent_message::Body::Report(_)) => "report".into(),
            Some(agent_message::Body::Result(r)) => {
                let outcome = CommandOutcome::try_from(r).unwrap();
                let how = if outcome.result.is_ok() {
                    "ok"
                } else {
                    "failed"
                };
                format!("{} {how}", outcome.id)
            }
            other => format!("{other:?}"),
        }
    }

    #[tonic::async_trait]
    impl AgentLinkRpc for FakeReplica {
        type ConnectStream = ReceiverStream<Result<CoordinatorMessage, Status>>;

        async fn connect(
            &self,
            request: Request<Streaming<v1::AgentMessage>>,
        ) -> Result<Response<Self::ConnectStream>, Status> {
            let mut inbound = request.into_inner();
            for _ in 0..2 {
                let m = inbound
                    .message()
                    .await?
                    .ok_or_else(|| Status::invalid_argument("no handshake"))?;
                self.seen.lock().unwrap().push(word(m.body));
            }
            let (tx, rx) = mpsc::channel(16);
            *self.to_agent.lock().unwrap() = Some(tx);
            let seen = self.seen.clone();
            tokio::spawn(async move {
                while let Ok(Some(m)) = inbound.message().await {
                    seen.lock().unwrap().push(word(m.body));
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        }
    }

    impl FakeReplica {
        fn serve(&self, listener: TcpListener) -> tokio::task::JoinHandle<()> {
            let service = AgentLinkServer::new(self.clone());
            tokio::spawn(async move {
                let _ = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(TcpListenerStream::new(listener))
                    .await;
            })
        }

        fn seen(&self) -> Vec<String> {
            self.seen.lock().unwrap().clone()
        }

        async fn send(&self, body: coordinator_message::Body) {
            let tx = self.to_agent.lock().unwrap().clone().unwrap();
            tx.send(Ok(CoordinatorMessage { body: Some(body) }))
                .await
                .unwrap();
        }
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn the_agent_holds_a_session_with_every_replica_and_dials_a_missing_one_again() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            FakeReplica::default(),
            FakeReplica::default(),
            FakeReplica::default(),
        );
        let la = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let lb = TcpListener::bind("127.0.0.1:0").await.unwrap();
        // c is down at first: its port is free, nothing listens.
        let c_addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let url = |l: &TcpListener| format!("http://{}", l.local_addr().unwrap());
        let coordinators = vec![url(&la), url(&lb), format!("http://{c_addr}")];
        let mut servers = vec![a.serve(la), b.serve(lb)];

        let member = MemberId::new("n1").unwrap();
        let executor = Arc::new(
            Executor::open(
                member.clone(),
                dir.path(),
                Arc::new(FakeAdapter::default()),
                Box::new(crate::runner::External { member }),
                None,
            )
            .unwrap(),
        );
        let (poll, _poll_rx) = PollControl::new(Duration::from_millis(50));
        let (_obs_tx, obs) = watch::channel(Some(super::hub_tests::observation(Role::Follower)));
        let (stats_tx, stats) = watch::channel(LinkStats::default());
        let (_granter, grants) = granter(MemberId::new("n1").unwrap());
        let shutdown = CancellationToken::new();
        let link = tokio::spawn(run(
            LinkConfig {
                hello: super::hub_tests::hello(),
                coordinators,
                heartbeat: Duration::from_millis(200),
                tls: None,
                poll,
            },
            obs,
            ResourceReader::new(dir.path(), dir.path()),
            stats_tx,
            executor.clone(),
            grants,
            shutdown.clone(),
        ));

        until("a and b connected", || stats.borrow().sessions == 2).await;
        assert!(stats.borrow().connected);
        for replica in [&a, &b] {
            assert_eq!(replica.seen()[..2], ["hello", "report"]);
        }
        until("heartbeats reach a and b", || {
            a.seen().len() > 3 && b.seen().len() > 3
        })
        .await;
        until("c's failure is named", || {
            let err = stats.borrow().last_error.clone().unwrap_or_default();
            err.contains(&c_addr.to_string())
        })
        .await;
        assert!(stats.borrow().connected, "a and b are still up");

        // The leader (b) sends a command; both replicas hear its result.
        let command = AgentCommand {
            id: CommandId("r1-1".into()),
            action: Action::StepDown {
                to: MemberId::new("n2").unwrap(),
            },
            stop_timeout_ms: None,
            even_if_leader: false,
            fence: Some(Fence {
                journal: "j-1".into(),
                term: 2,
            }),
        };
        b.send(coordinator_message::Body::Command(command.into()))
            .await;
        until("the result reaches a and b", || {
            [&a, &b]
                .iter()
                .all(|r| r.seen().iter().any(|w| w == "r1-1 ok"))
        })
        .await;
        assert_eq!(executor.entries().len(), 1);

        // c comes up: it is dialed again on its own and gets reports.
        servers.push(c.serve(TcpListener::bind(c_addr).await.unwrap()));
        until("c connected", || stats.borrow().sessions == 3).await;
        until("heartbeats reach c", || c.seen().len() > 3).await;
        assert_eq!(c.seen()[..2], ["hello", "report"]);
        assert!(c.seen().iter().all(|w| w == "hello" || w == "report"));

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), link)
            .await
            .expect("the link stops on shutdown")
            .unwrap();
        for server in &servers {
            server.abort();
        }
    }
}
