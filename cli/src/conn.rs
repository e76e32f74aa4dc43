//! The connection to the coordinator's operator API: [`OperatorConn`] makes
//! the calls, converts each answer into domain types at once (with
//! `baton_proto::convert`) and names what failed in a [`CliError`]. Every
//! call goes through one private method, `OperatorConn::call`, which finds the leader among
//! the replicas as [`crate::leader`] decides; commands never retry on
//! their own. It prints nothing: a leader change is reported as data
//! ([`OperatorConn::take_leader_change`]).

use std::collections::BTreeMap;
use std::time::Duration;

use baton_domain::{Check, FleetStatus, Rollout, StoredBackup};
use baton_net::tls::ClientTls;
use baton_proto::InvalidRollout;
use baton_proto::v1::{self, StatusRequest, operator_client::OperatorClient};
use serde::Serialize;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::leader::{
    Backoff, Coordinators, Effect, InvalidCoordinators, Route, Said, Step, Tried, Verdict, judge,
};

/// Why a CLI command failed. Each names the coordinator and what to try.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    BadCoordinators(#[from] InvalidCoordinators),
    #[error("coordinator address {addr:?} is invalid: {detail}")]
    BadAddress { addr: String, detail: String },
    #[error(
        "cannot reach the coordinator at {addr}: {detail}; is baton-coordinator running there? (set --coordinator or BATON_COORDINATOR)"
    )]
    Unreachable { addr: String, detail: String },
    /// The TLS layer refused the connection, for a reason a probe named.
    #[error("cannot talk to the coordinator at {addr}: {why}")]
    Tls { addr: String, why: String },
    #[error("coordinator at {addr} refused {call}: {detail}")]
    Refused {
        addr: String,
        call: &'static str,
        detail: String,
    },
    /// The rollout's phase does not allow the request (nothing changed).
    #[error("coordinator at {addr} refused {call}: {detail}")]
    WrongPhase {
        addr: String,
        call: &'static str,
        detail: String,
    },
    #[error(
        "coordinator at {addr} sent a status this CLI cannot read: {detail}; are the CLI and coordinator the same version?"
    )]
    BadAnswer { addr: String, detail: String },
    #[error("no such rollout on the coordinator at {addr}")]
    NoRollout { addr: String },
    /// Every replica tried either could not be reached or was not the
    /// leader, for as long as the backoff lasts.
    #[error("no coordinator leader answered {call} (after {waited_ms} ms): {tried}; {next}")]
    NoLeader {
        call: &'static str,
        tried: Tried,
        waited_ms: u128,
        next: &'static str,
    },
    /// A change was sent to the leader and the connection broke before it
    /// answered: it may or may not have been accepted, so it is not sent
    /// again.
    #[error(
        "the connection to the coordinator at {addr} broke during {call} ({detail}); it may have taken effect: check with `baton rollout` before trying again"
    )]
    Interrupted {
        addr: String,
        call: &'static str,
        detail: String,
    },
}

/// A rollout as the CLI shows it. Its JSON form (`--output json`) is
/// `{"state": <the rollout>, "waiting_for": "..."}`.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutView {
    pub state: Rollout,
    pub waiting_for: String,
    /// The coordinator's change counter as of this view (for long polls).
    #[serde(skip)]
    pub version: u64,
}

/// Why a `RolloutReply` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidReply {
    #[error("a rollout reply says found but carries no rollout")]
    MissingRollout,
    #[error(transparent)]
    Rollout(#[from] InvalidRollout),
}

impl RolloutView {
    /// The view a reply carries; None when the reply says there is no such
    /// rollout. Fields this CLI does not know are skipped by the decoder.
    pub fn from_reply(r: v1::RolloutReply) -> Result<Option<RolloutView>, InvalidReply> {
        let v1::RolloutReply {
            found,
            waiting_for,
            version,
            rollout,
        } = r;
        if !found {
            return Ok(None);
        }
        let state = Rollout::try_from(rollout.ok_or(InvalidReply::MissingRollout)?)?;
        Ok(Some(RolloutView {
            state,
            waiting_for,
            version,
        }))
    }
}

/// The answer to `baton upgrade` before progress starts.
#[derive(Debug, Clone, Serialize)]
pub enum Started {
    Started { rollout_id: String },
    Refused { detail: String, checks: Vec<Check> },
}

/// A dry run, as the CLI shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub ok: bool,
    pub checks: Vec<Check>,
    pub steps: Vec<PlanLine>,
    pub handover_target: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanLine {
    pub member: Option<String>,
    pub action: String,
    pub reason: String,
}

/// The cluster's backups, as `baton backups list` shows them.
#[derive(Debug, Clone, Serialize)]
pub struct BackupList {
    /// The store they are in.
    pub location: String,
    pub keep_days: u32,
    pub backups: Vec<StoredBackup>,
}

/// What `baton backups prune` deleted (or, on a dry run, would) and kept.
#[derive(Debug, Clone, Serialize)]
pub struct Pruned {
    pub location: String,
    pub dry_run: bool,
    pub deleted: Vec<StoredBackup>,
    /// Each with why, in `pinned`.
    pub kept: Vec<StoredBackup>,
}

/// A bearer token; its Debug never shows it.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A connection to the operator API of a coordinator's replicas. Every
/// call goes through `OperatorConn::call`, which walks a
/// [`Route`]: it follows a follower's leader hint,
/// falls through to the next address, and pauses while an election runs.
#[derive(Debug, Clone)]
pub struct OperatorConn {
    coordinators: Coordinators,
    tls: Option<ClientTls>,
    backoff: Backoff,
    /// Channels to the replicas connected so far, by address.
    clients: BTreeMap<String, OperatorClient<Channel>>,
    /// The replica that served the last call: tried first by the next.
    leader: Option<String>,
    /// A replica that served a call after another one had: the leader
    /// changed. Taken by [`OperatorConn::take_leader_change`].
    changed: Option<String>,
    /// The replica the last answer came from, for the errors it names.
    addr: String,
    /// A bearer token sent on every call (never logged or printed: its
    /// Debug says only whether there is one).
    token: Option<Secret>,
}

/// `conn.call(name, effect, method, request)`: sends `request` with the
/// client's `method`, cloned for each attempt.
macro_rules! rpc {
    ($conn:expr, $call:literal, $effect:expr, $method:ident, $req:expr) => {{
        let req = $req;
        let bearer = $conn.bearer();
        $conn
            .call($call, $effect, move |mut client| {
                let mut req = tonic::Request::new(req.clone());
                if let Some(b) = &bearer {
                    req.metadata_mut().insert("authorization", b.clone());
                }
                async move { client.$method(req).await }
            })
            .await
    }};
}

impl OperatorConn {
    /// A connection to `coordinators`; nothing is dialled until a call.
    pub fn new(coordinators: Coordinators, tls: Option<ClientTls>) -> Self {
        let addr = coordinators.addrs()[0].clone();
        OperatorConn {
            coordinators,
            tls,
            backoff: Backoff::default(),
            clients: BTreeMap::new(),
            leader: None,
            changed: None,
            addr,
            token: None,
        }
    }

    /// The same, sending `token` as a bearer token on every call.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.map(Secret);
        self
    }

    /// The `authorization` value for the calls, when there is a token.
    fn bearer(&self) -> Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
        let Secret(token) = self.token.as_ref()?;
        format!("Bearer {token}").parse().ok()
    }

    /// The same, pausing between rounds over the replicas as `backoff` says.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The replica that served the last call.
    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    /// The new leader's address, once, after a call was served by another
    /// replica than the calls before it.
    pub fn take_leader_change(&mut self) -> Option<String> {
        self.changed.take()
    }

    /// The client for `addr`, dialled if need be.
    async fn client(&mut self, addr: &str) -> Result<OperatorClient<Channel>, Dial> {
        if let Some(c) = self.clients.get(addr) {
            return Ok(c.clone());
        }
        let bad = |detail: String| {
            Dial::Setup(CliError::BadAddress {
                addr: addr.to_owned(),
                detail,
            })
        };
        let mut endpoint = Endpoint::from_shared(addr.to_owned())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            endpoint = tls
                .apply(endpoint)
                .map_err(|e| bad(format!("TLS setup: {e}")))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Dial::Unreachable(chain(&e)))?;
        let client = OperatorClient::new(channel);
        self.clients.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    /// Sends one call (`send`, with a fresh copy of its request each time)
    /// to the leader: the one place that decides where a call goes and
    /// whether it may go again (see [`crate::leader`]). A replica's answer
    /// other than UNAVAILABLE is the call's result.
    async fn call<T, F, Fut>(
        &mut self,
        call: &'static str,
        effect: Effect,
        mut send: F,
    ) -> Result<T, CliError>
    where
        F: FnMut(OperatorClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let mut route = Route::new(&self.coordinators, self.leader.as_deref(), self.backoff);
        loop {
            let addr = match route.next(started.elapsed()) {
                Step::Try(addr) => addr,
                Step::Wait(pause) => {
                    tokio::time::sleep(pause).await;
                    continue;
                }
                Step::GiveUp => return Err(self.no_leader(call, route.tried(), started.elapsed())),
            };
            let client = match self.client(&addr).await {
                Ok(c) => c,
                Err(Dial::Setup(e)) => return Err(e),
                Err(Dial::Unreachable(detail)) => {
                    if let Some(why) = self.tls_cause(&addr).await {
                        return Err(CliError::Tls { addr, why });
                    }
                    route.failed(&addr, Said::Unreachable { detail });
                    continue;
                }
            };
            let status = match send(client).await {
                Ok(resp) => {
                    self.served(&addr);
                    return Ok(resp.into_inner());
                }
                Err(status) => status,
            };
            match judge(&status, effect) {
                Verdict::Retry(said) => {
                    if matches!(said, Said::Unreachable { .. } | Said::Dropped { .. }) {
                        self.clients.remove(&addr);
                        if let Some(why) = self.tls_cause(&addr).await {
                            return Err(CliError::Tls { addr, why });
                        }
                    }
                    route.failed(&addr, said);
                }
                Verdict::Answered => {
                    self.addr = addr;
                    return Err(self.refused(call)(status));
                }
                Verdict::Interrupted => {
                    self.clients.remove(&addr);
                    return Err(CliError::Interrupted {
                        addr,
                        call,
                        detail: status.message().to_owned(),
                    });
                }
            }
        }
    }

    /// Why `addr` cannot be reached at the TLS layer, if that is why: a
    /// probing handshake names the cause (unknown CA, expired, no client
    /// certificate, name mismatch, plaintext to a TLS port).
    async fn tls_cause(&self, addr: &str) -> Option<String> {
        baton_net::tls::diagnose(addr, self.tls.as_ref(), Duration::from_secs(2)).await
    }

    fn served(&mut self, addr: &str) {
        if self.leader.as_deref() != Some(addr) {
            if self.leader.is_some() {
                self.changed = Some(addr.to_owned());
            }
            self.leader = Some(addr.to_owned());
        }
        addr.clone_into(&mut self.addr);
    }

    fn no_leader(&self, call: &'static str, tried: Tried, waited: Duration) -> CliError {
        match (self.coordinators.addrs(), &tried.0[..]) {
            // One address that could not be reached: as before replicas.
            ([only], [(addr, Said::Unreachable { detail })]) if only == addr => {
                CliError::Unreachable {
                    addr: addr.clone(),
                    detail: detail.clone(),
                }
            }
            _ => CliError::NoLeader {
                call,
                next: if tried.any_answered() {
                    "the replicas may be electing a leader: try again in a few seconds, and check that a majority of the coordinator replicas are running"
                } else {
                    "is baton-coordinator running there? (list its replicas' addresses in --coordinator or BATON_COORDINATOR)"
                },
                tried,
                waited_ms: waited.as_millis(),
            },
        }
    }

    pub async fn status(&mut self) -> Result<FleetStatus, CliError> {
        let resp = rpc!(self, "Status", Effect::Read, status, StatusRequest {})?;
        FleetStatus::try_from(resp).map_err(|e| CliError::BadAnswer {
            addr: self.addr.clone(),
            detail: e.to_string(),
        })
    }
}

/// Why a replica could not be dialled.
#[derive(Debug)]
enum Dial {
    /// The address or TLS setup is wrong: not retried.
    Setup(CliError),
    /// No connection: why.
    Unreachable(String),
}

/// An error and its causes, on one line (a transport error's own text is
/// often just "transport error").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

impl OperatorConn {
    fn refused(&self, call: &'static str) -> impl Fn(tonic::Status) -> CliError + '_ {
        move |s| match s.code() {
            tonic::Code::FailedPrecondition => CliError::WrongPhase {
                addr: self.addr.clone(),
                call,
                detail: s.message().to_owned(),
            },
            _ => CliError::Refused {
                addr: self.addr.clone(),
                call,
                detail: s.message().to_owned(),
            },
        }
    }

    fn bad(&self, detail: String) -> CliError {
        CliError::BadAnswer {
            addr: self.addr.clone(),
            detail,
        }
    }

    fn checks(&self, checks: Vec<v1::Check>) -> Result<Vec<Check>, CliError> {
        checks
            .into_iter()
            .map(|c| Check::try_from(c).map_err(|e| self.bad(e.to_string())))
            .collect()
    }

    fn view(&self, r: v1::RolloutReply) -> Result<Option<RolloutView>, CliError> {
        RolloutView::from_reply(r).map_err(|e| self.bad(e.to_string()))
    }

    pub async fn plan(&mut self, to: &str) -> Result<Plan, CliError> {
        let r = rpc!(
            self,
            "Plan",
            Effect::Read,
            plan,
            v1::PlanRequest {
                to_version: to.to_owned(),
            }
        )?;
        let v1::PlanResponse {
            ok,
            checks,
            steps,
            handover_target,
        } = r;
        Ok(Plan {
            ok,
            checks: self.checks(checks)?,
            steps: steps
                .into_iter()
                .map(
                    |v1::PlannedStep {
                         member_id,
                         action,
                         reason,
                     }| PlanLine {
                        member: (!member_id.is_empty()).then_some(member_id),
                        action,
                        reason,
                    },
                )
                .collect(),
            handover_target: (!handover_target.is_empty()).then_some(handover_target),
        })
    }

    /// Starts a rollback of the latest rollout.
    pub async fn rollback(&mut self) -> Result<Started, CliError> {
        let r = rpc!(
            self,
            "Rollback",
            Effect::Change,
            rollback,
            v1::RollbackRequest {}
        )?;
        self.started(r)
    }

    fn started(&self, r: v1::UpgradeResponse) -> Result<Started, CliError> {
        let v1::UpgradeResponse {
            started,
            rollout_id,
            checks,
            detail,
        } = r;
        Ok(if started {
            Started::Started { rollout_id }
        } else {
            Started::Refused {
                detail,
                checks: self.checks(checks)?,
            }
        })
    }

    pub async fn upgrade(&mut self, to: &str) -> Result<Started, CliError> {
        let r = rpc!(
            self,
            "Upgrade",
            Effect::Change,
            upgrade,
            v1::UpgradeRequest {
                to_version: to.to_owned(),
            }
        )?;
        self.started(r)
    }

    /// Starts a restore of `backup`, confirmed with the cluster id.
    pub async fn restore(&mut self, backup: &str, confirm: &str) -> Result<Started, CliError> {
        let r = rpc!(
            self,
            "Restore",
            Effect::Change,
            restore,
            v1::RestoreRequest {
                backup_id: backup.to_owned(),
                confirm_cluster_id: confirm.to_owned(),
            }
        )?;
        self.started(r)
    }

    pub async fn rollout(&mut self, id: Option<&str>) -> Result<RolloutView, CliError> {
        self.rollout_after(id, 0, Duration::ZERO).await
    }

    /// The rollout once it has changed since `version` (a `RolloutView`'s),
    /// or after `wait` (at most 10 s) if it has not.
    pub async fn rollout_after(
        &mut self,
        id: Option<&str>,
        version: u64,
        wait: Duration,
    ) -> Result<RolloutView, CliError> {
        let r = rpc!(
            self,
            "Rollout",
            Effect::Read,
            rollout,
            v1::RolloutRequest {
                rollout_id: id.unwrap_or_default().to_owned(),
                after_version: version,
                wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
            }
        )?;
        self.view(r)?.ok_or_else(|| CliError::NoRollout {
            addr: self.addr.clone(),
        })
    }

    pub async fn control(
        &mut self,
        verb: &str,
        reason: &str,
        retry: bool,
    ) -> Result<RolloutView, CliError> {
        let req = v1::ControlRequest {
            reason: reason.to_owned(),
            retry,
        };
        let r = match verb {
            "pause" => rpc!(self, "Pause", Effect::Change, pause, req)?,
            "resume" => rpc!(self, "Resume", Effect::Change, resume, req)?,
            _ => rpc!(self, "Abort", Effect::Change, abort, req)?,
        };
        self.view(r)?.ok_or_else(|| CliError::NoRollout {
            addr: self.addr.clone(),
        })
    }

    pub async fn history(&mut self) -> Result<Vec<RolloutView>, CliError> {
        let r = rpc!(
            self,
            "History",
            Effect::Read,
            history,
            v1::HistoryRequest {}
        )?;
        let mut out = Vec::new();
        for reply in r.rollouts {
            out.extend(self.view(reply)?);
        }
        Ok(out)
    }
}

impl OperatorConn {
    pub async fn backups(&mut self) -> Result<BackupList, CliError> {
        let v1::BackupsResponse {
            location,
            keep_days,
            backups,
        } = rpc!(
            self,
            "Backups",
            Effect::Read,
            backups,
            v1::BackupsRequest {}
        )?;
        Ok(BackupList {
            location,
            keep_days,
            backups: backups.into_iter().map(StoredBackup::from).collect(),
        })
    }

    /// Re-reads backup `id` from the store; Ok names the store and the
    /// backup that verified.
    pub async fn verify_backup(&mut self, id: &str) -> Result<(String, StoredBackup), CliError> {
        let v1::VerifyBackupResponse { location, backup } = rpc!(
            self,
            "VerifyBackup",
            Effect::Read,
            verify_backup,
            v1::VerifyBackupRequest { id: id.to_owned() }
        )?;
        let backup = backup.ok_or_else(|| self.bad("a verify reply without its backup".into()))?;
        Ok((location, StoredBackup::from(backup)))
    }

    pub async fn prune_backups(&mut self, keep: u32, dry_run: bool) -> Result<Pruned, CliError> {
        let effect = if dry_run {
            Effect::Read
        } else {
            Effect::Change
        };
        let v1::PruneBackupsResponse {
            location,
            dry_run,
            deleted,
            kept,
        } = rpc!(
            self,
            "PruneBackups",
            effect,
            prune_backups,
            v1::PruneBackupsRequest { keep, dry_run }
        )?;
        Ok(Pruned {
            location,
            dry_run,
            deleted: deleted.into_iter().map(StoredBackup::from).collect(),
            kept: kept.into_iter().map(StoredBackup::from).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use baton_domain::{
        Action, CommandId, CommandRecord, MemberId, MemberProgress, Phase, ReleaseRef, Stage,
        UnixMs,
    };
    use prost::Message;

    use super::*;

    fn rollout() -> Rollout {
        let (n1, n2) = (MemberId::new("n1").unwrap(), MemberId::new("n2").unwrap());
        let progress = |stage| MemberProgress {
            stage,
            inflight: None,
            started_at: None,
            finished_at: None,
        };
        Rollout {
            id: "r1-v2".into(),
            target: ReleaseRef {
                name: "samplekv".into(),
                version: "v2".into(),
                format_version: 2,
                sha256: "cd".repeat(32),
            },
            previous: "v1".into(),
            order: vec![n2.clone(), n1.clone()],
            original_leader: n1.clone(),
            phase: Phase::Paused {
                reason: "member n2: start failed".into(),
            },
            members: BTreeMap::from([
                (n1, progress(Stage::Pending)),
                (
                    n2.clone(),
                    progress(Stage::Reverted {
                        reason: "start failed".into(),
                    }),
                ),
            ]),
            commands: BTreeMap::from([(
                CommandId("r1-v2-1".into()),
                CommandRecord {
                    member: n2,
                    action: Action::Start,
                    issued_at: UnixMs(5),
                    result: Some(Err("exited 1".into())),
                },
            )]),
            handover: None,
            leader_changes: Vec::new(),
            started_at: UnixMs(1),
            completed_at: None,
            backup: Default::default(),
            audit: Vec::new(),
        }
    }

    /// Fields a newer coordinator might add, with numbers this build does not know.
    #[derive(Clone, PartialEq, prost::Message)]
    struct FromTheFuture {
        #[prost(string, tag = "1000")]
        note: String,
        #[prost(uint64, tag = "1001")]
        count: u64,
    }

    /// A `RolloutReply` whose `rollout` (field 5) is given as raw bytes, so
    /// that it can carry fields `v1::Rollout` does not declare.
    #[derive(Clone, PartialEq, prost::Message)]
    struct ReplyWithRawRollout {
        #[prost(bool, tag = "1")]
        found: bool,
        #[prost(string, tag = "3")]
        waiting_for: String,
        #[prost(uint64, tag = "4")]
        version: u64,
        #[prost(bytes = "vec", tag = "5")]
        rollout: Vec<u8>,
        #[prost(string, tag = "1000")]
        note: String,
    }

    #[test]
    fn a_reply_with_fields_this_cli_does_not_know_still_decodes() {
        let future = FromTheFuture {
            note: "a field from a newer coordinator".into(),
            count: 7,
        };
        // Concatenated messages merge: a Rollout plus two unknown fields.
        let mut rollout_bytes = v1::Rollout::from(rollout()).encode_to_vec();
        rollout_bytes.extend(future.encode_to_vec());
        assert_eq!(
            FromTheFuture::decode(&rollout_bytes[..]).unwrap(),
            future,
            "the bytes really carry the unknown fields"
        );
        let bytes = ReplyWithRawRollout {
            found: true,
            waiting_for: "n2 to be healthy on v2".into(),
            version: 42,
            rollout: rollout_bytes,
            note: "another unknown field".into(),
        }
        .encode_to_vec();

        let reply = v1::RolloutReply::decode(&bytes[..]).expect("unknown fields are skipped");
        let view = RolloutView::from_reply(reply).unwrap().expect("found");
        assert_eq!(view.state, rollout());
        assert_eq!(view.waiting_for, "n2 to be healthy on v2");
        assert_eq!(view.version, 42);
    }

    #[test]
    fn a_reply_without_its_rollout_is_named() {
        let reply = |found, rollout| v1::RolloutReply {
            found,
            waiting_for: String::new(),
            version: 1,
            rollout,
        };
        assert!(matches!(
            RolloutView::from_reply(reply(false, None)),
            Ok(None)
        ));
        assert_eq!(
            RolloutView::from_reply(reply(true, None)).unwrap_err(),
            InvalidReply::MissingRollout
        );
        let mut bad = v1::Rollout::from(rollout());
        bad.phase = None;
        assert_eq!(
            RolloutView::from_reply(reply(true, Some(bad))).unwrap_err(),
            InvalidReply::Rollout(InvalidRollout::MissingPhase {
                rollout: "r1-v2".into()
            })
        );
    }

    /// `--output json` of `baton rollout`: the rollout under `state`, then
    /// `waiting_for`; the change counter is not shown.
    #[test]
    fn the_view_json_keeps_its_shape() {
        let view = RolloutView {
            state: rollout(),
            waiting_for: "operator".into(),
            version: 9,
        };
        let json = serde_json::to_value(&view).unwrap();
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["state", "waiting_for"]);
        assert_eq!(json["state"], serde_json::to_value(rollout()).unwrap());
        assert_eq!(json["state"]["phase"]["reason"], "member n2: start failed");
        assert_eq!(json["state"]["members"]["n2"]["stage"]["stage"], "reverted");
        assert_eq!(json["state"]["order"][0], "n2");
    }
}
