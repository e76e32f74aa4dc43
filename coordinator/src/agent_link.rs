//! The agent link: the [`AgentLink`] seam the driver sends through, and its
//! tonic implementation, the gRPC service where agents' streams arrive.
//!
//! The driver hands [`Outbound`] domain values to [`AgentLink::send`]; only
//! this module turns them into wire messages ([`to_wire`]). The service owns
//! the session protocol: the first message must be a Hello, the second a
//! Report, both within 5 s; only then is a session opened in the
//! [`FleetView`]. Streams still in that handshake are capped per peer
//! address and in all, so strangers that never speak cannot crowd agents
//! out for longer than the deadline. Under mutual
//! TLS the Hello must be backed by the client certificate: it may claim only
//! the member the certificate names (`spiffe://<cluster>/member/<id>`, or a
//! DNS SAN equal to the id), and one that claims another is refused with
//! PERMISSION_DENIED before any session opens, so the real member's stream
//! is never displaced. Each later
//! Report is validated at the edge (`TryFrom`) and then by the view. A bad
//! message ends the stream with a status naming what was wrong, and leaves the
//! view as it was. Converting from the wire happens here and nowhere deeper.
//! An agent's grant requests (the presigned store requests its commands
//! need) are answered by [`Grants`], which learns here what was sent to whom
//! and what was answered.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_domain::{CommandOutcome, Hello, MemberId, Outbound, Report};
use baton_proto::v1::{
    self, AgentMessage, CoordinatorMessage, agent_link_server::AgentLink as AgentLinkRpc,
    agent_message, coordinator_message,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use baton_net::identity::{PeerIdentity, echo};
use baton_net::slots::{Full, PeerSlots};
use baton_net::throttle::Throttle;

use crate::error::LinkError;
use crate::fleet::{FleetView, SessionId};
use crate::grants::Grants;
use crate::metrics::Metrics;

/// How long a new stream may take to send its Hello and first Report, in
/// all.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How many streams from one peer address may be waiting for their Hello
/// at once (an agent opens one at a time; a host of several agents a few).
const STRANGERS_PER_PEER: usize = 16;
/// How many streams in all may be waiting for their Hello at once.
const STRANGERS: usize = 256;

type SessionTx = mpsc::Sender<Result<CoordinatorMessage, Status>>;

/// How the driver reaches agents. Implemented over gRPC streams by
/// [`AgentLinkService`], and by a recording fake in the driver's tests.
pub trait AgentLink: Send + Sync {
    /// Sends `msg` to `member`'s agent on its current session; returns that
    /// session, or None when the agent is not connected (nothing was sent).
    fn send(&self, member: &MemberId, msg: Outbound) -> Option<SessionId>;
    /// The member's current session, if its agent is connected.
    fn session(&self, member: &MemberId) -> Option<SessionId>;
    /// Woken whenever a report is accepted, so the driver re-evaluates its
    /// gates at once instead of at its next tick.
    fn reports(&self) -> Arc<tokio::sync::Notify>;
}

/// `msg` as the wire message that carries it.
pub fn to_wire(msg: Outbound) -> CoordinatorMessage {
    let body = match msg {
        Outbound::Command(c) => coordinator_message::Body::Command(c.into()),
        Outbound::Cadence { every } => coordinator_message::Body::SetCadence(v1::SetCadence {
            report_interval_ms: u32::try_from(every.as_millis()).unwrap_or(u32::MAX),
        }),
    };
    CoordinatorMessage { body: Some(body) }
}

/// Shared state of the agent-facing service.
#[derive(Debug, Clone)]
pub struct AgentLinkService {
    /// The fleet view that accepted reports go into (shared with the driver
    /// and the operator API).
    pub fleet: Arc<Mutex<FleetView>>,
    /// Each connected member's session and the sender of its outbound
    /// stream; a newer session replaces the entry.
    sessions: Arc<Mutex<HashMap<MemberId, (SessionId, SessionTx)>>>,
    /// Where command results go (the driver's inbox).
    results: mpsc::Sender<(MemberId, CommandOutcome)>,
    /// Woken on every accepted report, so the driver re-evaluates its gates
    /// at once instead of at its next tick.
    pub reports: Arc<tokio::sync::Notify>,
    /// Cancelled when the coordinator stops; ends every session.
    shutdown: CancellationToken,
    /// What agents' commands may have presigned, and the signer.
    grants: Arc<Grants>,
    /// Whether streams arrive over mutual TLS, so that a Hello must be
    /// backed by the client certificate: it may claim only the member (of
    /// this cluster) the certificate names.
    require_identity: bool,
    /// The streams that have not finished their handshake yet, capped at
    /// [`STRANGERS_PER_PEER`] per peer address and [`STRANGERS`] in all,
    /// each held for at most [`HANDSHAKE_TIMEOUT`].
    strangers: Arc<PeerSlots>,
    /// Refusals of too many strangers, logged once per peer per minute.
    crowded: Arc<Throttle<Option<IpAddr>>>,
    /// Where refusals are counted, when the coordinator exports metrics.
    metrics: Option<Metrics>,
}

impl AgentLinkService {
    /// `results` receives every command result an agent sends.
    pub fn new(
        fleet: Arc<Mutex<FleetView>>,
        results: mpsc::Sender<(MemberId, CommandOutcome)>,
        shutdown: CancellationToken,
        grants: Arc<Grants>,
    ) -> Self {
        AgentLinkService {
            fleet,
            sessions: Arc::default(),
            results,
            reports: Arc::new(tokio::sync::Notify::new()),
            shutdown,
            grants,
            require_identity: false,
            strangers: Arc::new(PeerSlots::new(STRANGERS_PER_PEER, STRANGERS)),
            crowded: Arc::new(Throttle::new(Duration::from_secs(60))),
            metrics: None,
        }
    }

    /// Binds every Hello to the client certificate when `tls` (the
    /// coordinator serves mutual TLS).
    pub fn with_identity(mut self, tls: bool) -> Self {
        self.require_identity = tls;
        self
    }

    /// Counts handshakes and refusals in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        let gauge = metrics.handshakes();
        self.strangers = Arc::new(PeerSlots::new(STRANGERS_PER_PEER, STRANGERS).on_change(
            move |n| {
                gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
            },
        ));
        self.metrics = Some(metrics);
        self
    }

    /// Counts a stream refused before its session opened.
    fn refused(&self, e: &LinkError) {
        let Some(m) = &self.metrics else { return };
        m.stream_refused(match e {
            LinkError::TooManyStrangers { .. } => "crowded",
            LinkError::Silent { .. } => "silent",
            LinkError::NotYours { .. } => "not_yours",
            LinkError::Refused(
                crate::fleet::Refusal::UnknownMember { .. }
                | crate::fleet::Refusal::WrongCluster { .. },
            ) => "unknown",
            _ => "invalid",
        });
    }

    /// Refuses a Hello the client certificate does not back (with mutual
    /// TLS): before any session opens, so the real member's is untouched.
    fn check_identity(&self, hello: &Hello, peer: Option<&[u8]>) -> Result<(), LinkError> {
        if !self.require_identity {
            return Ok(());
        }
        let claimed = echo(hello.member.as_str());
        let Some(der) = peer else {
            return Err(LinkError::NotYours {
                claimed,
                detail: "no client certificate was presented; give the agent [tls] cert and key signed by the coordinator's client_ca".into(),
            });
        };
        let cluster = self.lock().cluster().to_owned();
        PeerIdentity::from_der(der)
            .and_then(|id| id.may_be_member(&cluster, hello.member.as_str()))
            .map_err(|e| LinkError::NotYours {
                claimed,
                detail: e.to_string(),
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FleetView> {
        // A panic while holding the lock leaves plain data; keep serving.
        self.fleet.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl AgentLink for AgentLinkService {
    fn send(&self, member: &MemberId, msg: Outbound) -> Option<SessionId> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let (session, tx) = sessions.get(member)?;
        if let Outbound::Command(c) = &msg {
            self.grants.sent(member, c);
        }
        tx.try_send(Ok(to_wire(msg))).ok().map(|()| *session)
    }

    fn session(&self, member: &MemberId) -> Option<SessionId> {
        self.lock().session(member)
    }

    fn reports(&self) -> Arc<tokio::sync::Notify> {
        self.reports.clone()
    }
}

/// The refusal of a stream when the handshake slots are full.
fn crowded(peer: Option<IpAddr>, full: Full) -> LinkError {
    let (peer, waiting, cap) = match full {
        Full::Peer { taken, cap } => (
            peer.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string()),
            taken,
            cap,
        ),
        Full::All { taken, cap } => ("all peers".to_owned(), taken, cap),
    };
    LinkError::TooManyStrangers {
        peer,
        waiting,
        cap,
        deadline_ms: HANDSHAKE_TIMEOUT.as_millis() as u64,
    }
}

fn kind(body: &Option<agent_message::Body>) -> &'static str {
    match body {
        Some(agent_message::Body::Hello(_)) => "a Hello",
        Some(agent_message::Body::Report(_)) => "a Report",
        Some(agent_message::Body::Result(_)) => "a CommandResult",
        Some(agent_message::Body::GrantRequest(_)) => "a GrantRequest",
        None => "an empty message",
    }
}

async fn next_message(
    inbound: &mut Streaming<AgentMessage>,
    deadline: Instant,
) -> Result<Option<agent_message::Body>, LinkError> {
    let msg = tokio::time::timeout_at(deadline, inbound.message())
        .await
        .map_err(|_| LinkError::Silent {
            waited_ms: HANDSHAKE_TIMEOUT.as_millis() as u64,
        })?
        .map_err(|s| LinkError::Transport(s.message().to_owned()))?;
    Ok(msg.and_then(|m| m.body))
}

impl AgentLinkService {
    async fn handshake(
        &self,
        inbound: &mut Streaming<AgentMessage>,
        peer: Option<&[u8]>,
    ) -> Result<(Hello, Report), LinkError> {
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let hello = match next_message(inbound, deadline).await? {
            Some(agent_message::Body::Hello(h)) => Hello::try_from(h)?,
            other => return Err(LinkError::ExpectedHello { got: kind(&other) }),
        };
        self.check_identity(&hello, peer)?;
        self.lock().check_hello(&hello)?;
        let report = match next_message(inbound, deadline).await? {
            Some(agent_message::Body::Report(r)) => Report::try_from(r)?,
            other => {
                return Err(LinkError::ExpectedReport {
                    member: hello.member,
                    got: kind(&other),
                });
            }
        };
        Ok((hello, report))
    }

    /// Serves one session until the stream ends, a message is refused, a
    /// newer session replaces it, or the coordinator shuts down.
    async fn serve_session(
        self,
        hello: Hello,
        session: SessionId,
        mut inbound: Streaming<AgentMessage>,
        out: SessionTx,
    ) {
        let member = hello.member.clone();
        let ended = loop {
            let msg = tokio::select! {
                () = self.shutdown.cancelled() => break Ok(()),
                () = out.closed() => break Ok(()),
                m = inbound.message() => m,
            };
            let body = match msg {
                Ok(Some(m)) => m.body,
                Ok(None) => break Ok(()),
                Err(s) => break Err(LinkError::Transport(s.message().to_owned())),
            };
            match body {
                Some(agent_message::Body::Report(r)) => {
                    let result = Report::try_from(r).map_err(LinkError::from).and_then(|r| {
                        self.lock()
                            .record(&member, session, r, Instant::now())
                            .map_err(LinkError::from)
                    });
                    if let Err(e) = result {
                        break Err(e);
                    }
                    self.reports.notify_one();
                }
                Some(agent_message::Body::Result(r)) => match CommandOutcome::try_from(r) {
                    Ok(outcome) => {
                        self.grants.finished(&member, &outcome.id);
                        let _ = self.results.send((member.clone(), outcome)).await;
                    }
                    Err(e) => break Err(LinkError::BadResult(e)),
                },
                Some(agent_message::Body::GrantRequest(req)) => {
                    // Off the session loop: a listing is a store round trip.
                    let (grants, out, member) = (self.grants.clone(), out.clone(), member.clone());
                    tokio::spawn(async move {
                        let answer = grants.answer(&member, &req).await;
                        let grant = v1::Grant {
                            request_id: req.request_id,
                            answer: Some(answer),
                        };
                        let msg = CoordinatorMessage {
                            body: Some(coordinator_message::Body::Grant(grant)),
                        };
                        let _ = out.send(Ok(msg)).await;
                    });
                }
                other => {
                    break Err(LinkError::ExpectedReport {
                        member: member.clone(),
                        got: kind(&other),
                    });
                }
            }
        };
        if let Err(e) = ended {
            tracing::warn!(member = %member, error = %e, "agent stream ended with an error");
            let _ = out.send(Err(e.into())).await;
        } else {
            tracing::info!(member = %member, "agent stream closed");
        }
        self.lock().close_session(&member, session);
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.get(&member).is_some_and(|(s, _)| *s == session) {
            sessions.remove(&member);
        }
    }
}

#[tonic::async_trait]
impl AgentLinkRpc for AgentLinkService {
    type ConnectStream = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

    async fn connect(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let remote = request.remote_addr();
        let from = remote.map_or_else(|| "an unknown address".to_owned(), |a| a.to_string());
        let ip = remote.map(|a| a.ip());
        let slot = self
            .strangers
            .admit(ip)
            .map_err(|full| crowded(ip, full))
            .inspect_err(|e| {
            self.refused(e);
            if let Some(suppressed) = self.crowded.allow(&ip, Instant::now()) {
                tracing::warn!(peer = %from, error = %e, suppressed, "refused agent stream (logged once a minute per peer; suppressed counts the refusals since)");
            }
        })?;
        // The leaf of the client's chain (rustls verified it against the
        // client CA during the handshake).
        let peer = request
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| c.to_vec()));
        let mut inbound = request.into_inner();
        let (hello, first) = self
            .handshake(&mut inbound, peer.as_deref())
            .await
            .inspect_err(|e| {
                self.refused(e);
                tracing::warn!(peer = %from, error = %e, "refused agent stream");
            })?;
        drop(slot);
        let (tx, rx) = mpsc::channel(16);
        let session = self
            .lock()
            .open_session(&hello, first, Instant::now())
            .map_err(LinkError::from)?;
        let replaced = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hello.member.clone(), (session, tx.clone()));
        if let Some((_, old)) = replaced {
            let refusal = LinkError::Refused(crate::fleet::Refusal::Superseded {
                member: hello.member.clone(),
            });
            let _ = old.try_send(Err(refusal.into()));
        }
        tracing::info!(member = %hello.member, agent_version = %hello.agent_version, adapter = %hello.adapter_kind, "agent connected");
        tokio::spawn(self.clone().serve_session(hello, session, inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_handshake_cap_is_refused_naming_the_peer_or_everyone() {
        let ip = Some(IpAddr::from([127, 0, 0, 2]));
        let e = crowded(ip, Full::Peer { taken: 16, cap: 16 });
        assert!(
            e.to_string().contains("16 streams from 127.0.0.2")
                && e.to_string().contains("at most 16"),
            "{e}"
        );
        let e = crowded(
            ip,
            Full::All {
                taken: 256,
                cap: 256,
            },
        );
        assert!(e.to_string().contains("from all peers"), "{e}");
        assert_eq!(Status::from(e).code(), tonic::Code::ResourceExhausted);
    }
}
