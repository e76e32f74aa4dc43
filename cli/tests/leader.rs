//! `OperatorConn` against in-process coordinator replicas: tonic Operator
//! stubs on `127.0.0.1:0` that lead, follow (UNAVAILABLE, with or without
//! the `x-baton-leader` hint), refuse, or break the connection. Each stub
//! records the calls it received, so a test can say which replica ran what
//! and that a change never ran twice.

// Test helpers outside #[test] fns: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_cli::conn::CliError;
use baton_cli::follow::follow;
use baton_cli::leader::{Backoff, LEADER_HINT};
use baton_cli::{Coordinators, OperatorConn, Output};
use baton_domain::{MemberId, MemberProgress, Phase, ReleaseRef, Rollout, Stage, UnixMs};
use baton_proto::v1::{self, operator_server::Operator, operator_server::OperatorServer};
use tokio::sync::oneshot;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// What a stub replica does with every call.
#[derive(Clone, Debug)]
enum Role {
    Leader,
    /// UNAVAILABLE; names `hint` as the leader when there is one.
    Follower {
        hint: Option<String>,
    },
    /// The leader, refusing every call for the rollout's phase.
    Refuses,
    /// The leader, whose connection breaks once the call has arrived.
    Breaks,
    /// A dying leader: takes the call and never answers.
    Hangs,
}

#[derive(Debug)]
struct State {
    role: Role,
    /// Every call received, whatever the role answered.
    calls: Vec<&'static str>,
    /// The calls it served as the leader.
    served: Vec<&'static str>,
    /// Whether the rollout it serves has completed.
    completed: bool,
    /// After serving this many `Rollout` calls the replica makes
    /// `successor` the leader, hangs, and dies (a leader that crashed).
    dies_after: Option<(usize, Replica)>,
    /// Ends the replica's runtime: its listener, connections and calls.
    stop: Option<oneshot::Sender<()>>,
}

/// A coordinator replica: an Operator server on its own runtime and
/// thread, so that stopping it drops every connection, as a process that
/// dies would.
#[derive(Clone, Debug)]
struct Replica {
    name: &'static str,
    addr: String,
    state: Arc<Mutex<State>>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Replica {
    async fn start(name: &'static str, role: Role) -> Replica {
        if matches!(role, Role::Breaks) {
            quiet_stub_panics();
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel();
        let replica = Replica {
            name,
            addr,
            state: Arc::new(Mutex::new(State {
                role,
                calls: Vec::new(),
                served: Vec::new(),
                completed: false,
                dies_after: None,
                stop: Some(tx),
            })),
            thread: Arc::default(),
        };
        let service = OperatorServer::new(replica.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = Server::builder()
                    .add_service(service)
                    .serve_with_incoming(TcpIncoming::from(listener));
                tokio::select! {
                    _ = serve => {}
                    _ = rx => {}
                }
            });
            // Dropping the runtime drops every connection and call.
        });
        *replica.thread.lock().unwrap() = Some(thread);
        replica
    }

    fn set(&self, role: Role) {
        self.state.lock().unwrap().role = role;
    }

    fn calls(&self) -> Vec<&'static str> {
        self.state.lock().unwrap().calls.clone()
    }

    fn served(&self) -> Vec<&'static str> {
        self.state.lock().unwrap().served.clone()
    }

    /// Stops the replica and waits until it is gone.
    async fn kill(&self) {
        if let Some(tx) = self.state.lock().unwrap().stop.take() {
            let _ = tx.send(());
        }
        let thread = self.thread.lock().unwrap().take();
        if let Some(t) = thread {
            tokio::task::spawn_blocking(move || t.join().unwrap())
                .await
                .unwrap();
        }
    }

    async fn answer<T>(
        &self,
        call: &'static str,
        reply: impl FnOnce(&State) -> T,
    ) -> Result<Response<T>, Status> {
        let role = {
            let mut s = self.state.lock().unwrap();
            s.calls.push(call);
            if matches!(s.role, Role::Leader) {
                s.served.push(call);
                return Ok(Response::new(reply(&s)));
            }
            s.role.clone()
        };
        match role {
            Role::Leader => unreachable!("answered above"),
            Role::Follower { hint } => {
                let mut status = Status::unavailable(match &hint {
                    Some(h) => format!(
                        "coordinator replica {} is a follower; the leader is at {h}",
                        self.name
                    ),
                    None => format!(
                        "coordinator replica {} is a follower; no leader yet (electing)",
                        self.name
                    ),
                });
                if let Some(h) = hint {
                    status
                        .metadata_mut()
                        .insert(LEADER_HINT, h.parse().unwrap());
                }
                Err(status)
            }
            Role::Refuses => Err(Status::failed_precondition("a rollout is already running")),
            Role::Breaks => panic!("{} breaks the connection (as a test stub)", self.name),
            Role::Hangs => std::future::pending().await,
        }
    }

    fn rollout_reply(&self, s: &State) -> v1::RolloutReply {
        let phase = if s.completed {
            Phase::Completed
        } else {
            Phase::Running
        };
        v1::RolloutReply {
            found: true,
            waiting_for: format!("served by {}", self.name),
            version: s.calls.len() as u64,
            rollout: Some(v1::Rollout::from(rollout(phase))),
        }
    }

    /// After the `Rollout` call `dies_after` names: the successor leads,
    /// this replica hangs, and dies a moment later (the reply in flight
    /// still goes out).
    fn maybe_die(&self) {
        let mut s = self.state.lock().unwrap();
        let served = s.served.iter().filter(|c| **c == "Rollout").count();
        let Some((n, next)) = s.dies_after.clone() else {
            return;
        };
        if served < n {
            return;
        }
        s.dies_after = None;
        s.role = Role::Hangs;
        let stop = s.stop.take();
        drop(s);
        {
            let mut n = next.state.lock().unwrap();
            n.role = Role::Leader;
            n.completed = true;
        }
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(tx) = stop {
                let _ = tx.send(());
            }
        });
    }
}

fn rollout(phase: Phase) -> Rollout {
    let n1 = MemberId::new("n1").unwrap();
    Rollout {
        id: "r1-v2".into(),
        target: ReleaseRef {
            name: "kv".into(),
            version: "v2".into(),
            format_version: 1,
            sha256: "ab".repeat(32),
        },
        previous: "v1".into(),
        order: vec![n1.clone()],
        original_leader: n1.clone(),
        phase,
        members: BTreeMap::from([(
            n1,
            MemberProgress {
                stage: Stage::Pending,
                inflight: None,
                started_at: None,
                finished_at: None,
            },
        )]),
        commands: BTreeMap::new(),
        handover: None,
        leader_changes: Vec::new(),
        started_at: UnixMs(1),
        completed_at: None,
        backup: Default::default(),
        audit: Vec::new(),
    }
}

#[tonic::async_trait]
impl Operator for Replica {
    async fn status(
        &self,
        _: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        self.answer("Status", |_| v1::StatusResponse {
            cluster_id: self.name.into(),
            ..Default::default()
        })
        .await
    }
    async fn plan(
        &self,
        _: Request<v1::PlanRequest>,
    ) -> Result<Response<v1::PlanResponse>, Status> {
        self.answer("Plan", |_| v1::PlanResponse::default()).await
    }
    async fn upgrade(
        &self,
        _: Request<v1::UpgradeRequest>,
    ) -> Result<Response<v1::UpgradeResponse>, Status> {
        self.answer("Upgrade", |_| v1::UpgradeResponse {
            started: true,
            rollout_id: format!("r-{}", self.name),
            ..Default::default()
        })
        .await
    }
    async fn rollback(
        &self,
        _: Request<v1::RollbackRequest>,
    ) -> Result<Response<v1::UpgradeResponse>, Status> {
        self.answer("Rollback", |_| v1::UpgradeResponse::default())
            .await
    }
    async fn pause(
        &self,
        _: Request<v1::ControlRequest>,
    ) -> Result<Response<v1::RolloutReply>, Status> {
        self.answer("Pause", |s| self.rollout_reply(s)).await
    }
    async fn resume(
        &self,
        _: Request<v1::ControlRequest>,
    ) -> Result<Response<v1::RolloutReply>, Status> {
        self.answer("Resume", |s| self.rollout_reply(s)).await
    }
    async fn abort(
        &self,
        _: Request<v1::ControlRequest>,
    ) -> Result<Response<v1::RolloutReply>, Status> {
        self.answer("Abort", |s| self.rollout_reply(s)).await
    }
    async fn rollout(
        &self,
        _: Request<v1::RolloutRequest>,
    ) -> Result<Response<v1::RolloutReply>, Status> {
        let reply = self.answer("Rollout", |s| self.rollout_reply(s)).await;
        if reply.is_ok() {
            self.maybe_die();
        }
        reply
    }
    async fn history(
        &self,
        _: Request<v1::HistoryRequest>,
    ) -> Result<Response<v1::HistoryResponse>, Status> {
        self.answer("History", |_| v1::HistoryResponse::default())
            .await
    }
    async fn backups(
        &self,
        _: Request<v1::BackupsRequest>,
    ) -> Result<Response<v1::BackupsResponse>, Status> {
        self.answer("Backups", |_| v1::BackupsResponse::default())
            .await
    }
    async fn verify_backup(
        &self,
        _: Request<v1::VerifyBackupRequest>,
    ) -> Result<Response<v1::VerifyBackupResponse>, Status> {
        self.answer("VerifyBackup", |_| v1::VerifyBackupResponse::default())
            .await
    }
    async fn prune_backups(
        &self,
        _: Request<v1::PruneBackupsRequest>,
    ) -> Result<Response<v1::PruneBackupsResponse>, Status> {
        self.answer("PruneBackups", |_| v1::PruneBackupsResponse::default())
            .await
    }
    async fn restore(
        &self,
        _: Request<v1::RestoreRequest>,
    ) -> Result<Response<v1::UpgradeResponse>, Status> {
        self.answer("Restore", |_| v1::UpgradeResponse::default())
            .await
    }
}

/// Keeps a `Role::Breaks` stub's deliberate panic out of the test output;
/// every other panic is reported as usual.
fn quiet_stub_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let deliberate = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|m| m.ends_with("(as a test stub)"));
            if !deliberate {
                report(info);
            }
        }));
    });
}

/// An address where nothing listens.
async fn dead_addr() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

const FAST: Backoff = Backoff {
    first: Duration::from_millis(20),
    max_step: Duration::from_millis(100),
    budget: Duration::from_millis(600),
};

fn conn(addrs: &[&str]) -> OperatorConn {
    OperatorConn::new(Coordinators::parse(&addrs.join(",")).unwrap(), None).with_backoff(FAST)
}

#[tokio::test]
async fn a_followers_hint_is_followed_to_a_leader_not_in_the_list() {
    let leader = Replica::start("c2", Role::Leader).await;
    let follower = Replica::start(
        "c1",
        Role::Follower {
            hint: Some(leader.addr.clone()),
        },
    )
    .await;
    let mut c = conn(&[&follower.addr]);
    assert_eq!(c.status().await.unwrap().cluster, "c2");
    assert_eq!(c.leader(), Some(leader.addr.as_str()));
    c.upgrade("v2").await.unwrap();
    assert_eq!(
        follower.calls(),
        ["Status"],
        "the next call goes to the leader"
    );
    assert_eq!(
        leader.calls(),
        ["Status", "Upgrade"],
        "the upgrade ran once"
    );
    assert_eq!(
        c.take_leader_change(),
        None,
        "finding the leader is not a leader change"
    );
}

#[tokio::test]
async fn an_unreachable_first_address_falls_through_to_the_next() {
    let dead = dead_addr().await;
    let leader = Replica::start("c2", Role::Leader).await;
    let mut c = conn(&[&dead, &leader.addr]);
    let started = c.upgrade("v2").await.unwrap();
    assert!(
        matches!(started, baton_cli::Started::Started { ref rollout_id } if rollout_id == "r-c2"),
        "{started:?}"
    );
    assert_eq!(leader.calls(), ["Upgrade"]);
}

#[tokio::test]
async fn without_a_leader_the_call_ends_in_an_error_naming_every_address() {
    let no_hint = || Role::Follower { hint: None };
    let (f1, f2) = (
        Replica::start("c1", no_hint()).await,
        Replica::start("c3", no_hint()).await,
    );
    let dead = dead_addr().await;
    let mut c = conn(&[&f1.addr, &dead, &f2.addr]);
    let t0 = tokio::time::Instant::now();
    let err = c.upgrade("v2").await.unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(err, CliError::NoLeader { .. }), "{err:?}");
    assert!(
        took >= FAST.budget && took < FAST.budget + Duration::from_secs(2),
        "{took:?}"
    );
    let text = err.to_string();
    for want in [
        "no coordinator leader answered Upgrade",
        &format!(
            "{} unavailable (no leader named): coordinator replica c1",
            f1.addr
        ),
        &format!("{dead} unreachable"),
        &f2.addr,
        "electing a leader: try again in a few seconds",
    ] {
        assert!(text.contains(want), "{want:?} in {text}");
    }
    assert!(f1.calls().len() >= 3, "rounds repeat: {:?}", f1.calls());
}

#[tokio::test]
async fn one_unreachable_address_fails_at_once_as_before() {
    let dead = dead_addr().await;
    let mut c = conn(&[&dead]);
    let t0 = tokio::time::Instant::now();
    let err = c.status().await.unwrap_err();
    assert!(t0.elapsed() < FAST.budget, "no backoff when nobody answers");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("cannot reach the coordinator at {dead}")),
        "{text}"
    );
}

#[tokio::test]
async fn an_answer_other_than_unavailable_is_not_retried() {
    let refuser = Replica::start("c1", Role::Refuses).await;
    let leader = Replica::start("c2", Role::Leader).await;
    let mut c = conn(&[&refuser.addr, &leader.addr]);
    let err = c.upgrade("v2").await.unwrap_err();
    assert!(
        matches!(&err, CliError::WrongPhase { addr, call: "Upgrade", .. } if *addr == refuser.addr),
        "{err:?}"
    );
    assert_eq!(refuser.calls(), ["Upgrade"]);
    assert!(leader.calls().is_empty(), "{:?}", leader.calls());
}

#[tokio::test]
async fn a_change_whose_connection_broke_is_not_sent_again_but_a_read_is() {
    let breaker = Replica::start("c1", Role::Breaks).await;
    let leader = Replica::start("c2", Role::Leader).await;
    let mut c = conn(&[&breaker.addr, &leader.addr]);
    let err = c.upgrade("v2").await.unwrap_err();
    assert!(
        matches!(
            &err,
            CliError::Interrupted {
                call: "Upgrade",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("it may have taken effect"),
        "{err}"
    );
    assert!(leader.calls().is_empty(), "{:?}", leader.calls());

    assert_eq!(c.status().await.unwrap().cluster, "c2");
    assert_eq!(breaker.calls(), ["Upgrade", "Status"]);
}

#[tokio::test]
async fn a_hint_with_another_scheme_is_refused() {
    let leader = Replica::start("c2", Role::Leader).await;
    let https = leader.addr.replace("http://", "https://");
    let follower = Replica::start(
        "c1",
        Role::Follower {
            hint: Some(https.clone()),
        },
    )
    .await;
    let mut c = conn(&[&follower.addr]);
    let err = c.status().await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "named the leader {https:?}, not followed because its scheme is https, but the configured addresses use http"
        )),
        "{text}"
    );
    assert!(leader.calls().is_empty(), "{:?}", leader.calls());
}

#[tokio::test]
async fn a_watch_carries_on_with_the_new_leader_when_the_leader_dies() {
    let c2 = Replica::start("c2", Role::Follower { hint: None }).await;
    let c1 = Replica::start("c1", Role::Leader).await;
    c2.set(Role::Follower {
        hint: Some(c1.addr.clone()),
    });
    c1.state.lock().unwrap().dies_after = Some((2, c2.clone()));
    let mut c = conn(&[&c1.addr, &c2.addr]);
    tokio::time::timeout(
        Duration::from_secs(10),
        follow(&mut c, "r1-v2", Output::Json),
    )
    .await
    .expect("the watch ends")
    .expect("the rollout completed on the new leader");
    assert_eq!(c.leader(), Some(c2.addr.as_str()));
    assert_eq!(c1.served(), ["Rollout", "Rollout"]);
    assert!(c2.served().contains(&"Rollout"), "{:?}", c2.calls());
}

#[tokio::test]
async fn a_call_after_the_leader_died_goes_to_the_new_leader() {
    let c1 = Replica::start("c1", Role::Leader).await;
    let c2 = Replica::start(
        "c2",
        Role::Follower {
            hint: Some(c1.addr.clone()),
        },
    )
    .await;
    let mut c = conn(&[&c1.addr, &c2.addr]);
    assert_eq!(c.status().await.unwrap().cluster, "c1");
    c1.kill().await;
    c2.set(Role::Leader);
    let v = c.rollout(None).await.unwrap();
    assert_eq!(v.waiting_for, "served by c2");
    assert_eq!(c.take_leader_change(), Some(c2.addr.clone()));
    assert_eq!(c.take_leader_change(), None, "said once");
    assert_eq!(c1.calls(), ["Status"]);
}
