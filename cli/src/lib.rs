//! The `baton` command line: talking to the operator API and rendering what
//! it says. Owns presentation only; decisions stay in the coordinator.

use std::fmt::Write as _;
use std::time::Duration;

use baton_domain::{Check, FleetStatus};
use baton_net::tls::ClientTls;
use baton_planner::rollout::{Phase, RolloutState};
use baton_proto::v1::{self, StatusRequest, operator_client::OperatorClient};
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

/// Why a CLI command failed. Each names the coordinator and what to try.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("coordinator address {addr:?} is invalid: {detail}")]
    BadAddress { addr: String, detail: String },
    #[error(
        "cannot reach the coordinator at {addr}: {detail}; is baton-coordinator running there? (set --coordinator or BATON_COORDINATOR)"
    )]
    Unreachable { addr: String, detail: String },
    #[error("coordinator at {addr} refused {call}: {detail}")]
    Refused {
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
}

/// A rollout as the CLI shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutView {
    pub state: RolloutState,
    pub waiting_for: String,
    /// The coordinator's change counter as of this view (for long polls).
    #[serde(skip)]
    pub version: u64,
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

/// A connection to the operator API.
#[derive(Debug, Clone)]
pub struct OperatorConn {
    addr: String,
    client: OperatorClient<Channel>,
}

impl OperatorConn {
    pub async fn connect(addr: &str, tls: Option<&ClientTls>) -> Result<Self, CliError> {
        let bad = |detail: String| CliError::BadAddress {
            addr: addr.to_owned(),
            detail,
        };
        let mut endpoint = Endpoint::from_shared(addr.to_owned())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5));
        if let Some(tls) = tls {
            endpoint = tls
                .apply(endpoint)
                .map_err(|e| bad(format!("TLS setup: {e}")))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| CliError::Unreachable {
                addr: addr.to_owned(),
                detail: e.to_string(),
            })?;
        Ok(OperatorConn {
            addr: addr.to_owned(),
            client: OperatorClient::new(channel),
        })
    }

    pub async fn status(&mut self) -> Result<FleetStatus, CliError> {
        let resp = self
            .client
            .status(StatusRequest {})
            .await
            .map_err(|s| CliError::Refused {
                addr: self.addr.clone(),
                call: "Status",
                detail: s.message().to_owned(),
            })?;
        FleetStatus::try_from(resp.into_inner()).map_err(|e| CliError::BadAnswer {
            addr: self.addr.clone(),
            detail: e.to_string(),
        })
    }
}

impl OperatorConn {
    fn refused(&self, call: &'static str) -> impl Fn(tonic::Status) -> CliError + '_ {
        move |s| CliError::Refused {
            addr: self.addr.clone(),
            call,
            detail: s.message().to_owned(),
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
        let v1::RolloutReply {
            found,
            state_json,
            waiting_for,
            version,
        } = r;
        if !found {
            return Ok(None);
        }
        let state = serde_json::from_str(&state_json).map_err(|e| self.bad(e.to_string()))?;
        Ok(Some(RolloutView {
            state,
            waiting_for,
            version,
        }))
    }

    pub async fn plan(&mut self, to: &str) -> Result<Plan, CliError> {
        let r = self
            .client
            .plan(v1::PlanRequest {
                to_version: to.to_owned(),
            })
            .await
            .map_err(self.refused("Plan"))?
            .into_inner();
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
        let r = self
            .client
            .rollback(v1::RollbackRequest {})
            .await
            .map_err(self.refused("Rollback"))?
            .into_inner();
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
        let r = self
            .client
            .upgrade(v1::UpgradeRequest {
                to_version: to.to_owned(),
            })
            .await
            .map_err(self.refused("Upgrade"))?
            .into_inner();
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
        let r = self
            .client
            .rollout(v1::RolloutRequest {
                rollout_id: id.unwrap_or_default().to_owned(),
                after_version: version,
                wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
            })
            .await
            .map_err(self.refused("Rollout"))?
            .into_inner();
        self.view(r)?.ok_or_else(|| CliError::NoRollout {
            addr: self.addr.clone(),
        })
    }

    pub async fn control(&mut self, verb: &str, reason: &str) -> Result<RolloutView, CliError> {
        let req = v1::ControlRequest {
            reason: reason.to_owned(),
        };
        let r = match verb {
            "pause" => self
                .client
                .pause(req)
                .await
                .map_err(self.refused("Pause"))?,
            "resume" => self
                .client
                .resume(req)
                .await
                .map_err(self.refused("Resume"))?,
            _ => self
                .client
                .abort(req)
                .await
                .map_err(self.refused("Abort"))?,
        };
        self.view(r.into_inner())?
            .ok_or_else(|| CliError::NoRollout {
                addr: self.addr.clone(),
            })
    }

    pub async fn history(&mut self) -> Result<Vec<RolloutView>, CliError> {
        let r = self
            .client
            .history(v1::HistoryRequest {})
            .await
            .map_err(self.refused("History"))?
            .into_inner();
        let mut out = Vec::new();
        for reply in r.rollouts {
            out.extend(self.view(reply)?);
        }
        Ok(out)
    }
}

/// What a finished rollout took, for the end-of-run summary.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub rollout: String,
    pub target: String,
    pub outcome: String,
    pub order: Vec<String>,
    pub handover_target: Option<String>,
    pub leader_changes: usize,
    /// Per member: from its stop to its last gate, in ms.
    pub step_ms: Vec<(String, u64)>,
    pub total_ms: u64,
}

pub fn summary(r: &RolloutState) -> Summary {
    let end = r.completed_at.unwrap_or_else(|| {
        r.members
            .values()
            .filter_map(|p| p.finished_at)
            .max()
            .unwrap_or(r.started_at)
    });
    Summary {
        rollout: r.id.clone(),
        target: r.target.version.clone(),
        outcome: match &r.phase {
            Phase::Completed => "completed".into(),
            Phase::Paused { reason } => format!("paused: {reason}"),
            Phase::Running => "running".into(),
            Phase::Aborting => "aborting".into(),
            Phase::Closed { reason } => format!("closed: {reason}"),
        },
        order: r.order.iter().map(|m| m.to_string()).collect(),
        handover_target: r.leader_changes.first().map(|(m, _)| m.to_string()),
        leader_changes: r.leader_changes.len(),
        step_ms: r
            .order
            .iter()
            .filter_map(|m| {
                let p = r.members.get(m)?;
                let d = p.finished_at?.since(p.started_at?);
                Some((
                    m.to_string(),
                    u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                ))
            })
            .collect(),
        total_ms: u64::try_from(end.since(r.started_at).as_millis()).unwrap_or(u64::MAX),
    }
}

/// One line per check, failures first.
pub fn render_checks(checks: &[Check]) -> String {
    let mut out = String::new();
    let mut sorted: Vec<&Check> = checks.iter().collect();
    sorted.sort_by_key(|c| c.ok);
    for c in sorted {
        let member = c.member.as_ref().map_or("-".to_owned(), |m| m.to_string());
        let _ = writeln!(
            out,
            "{} {:<9} {:<8} {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.check,
            member,
            c.detail
        );
    }
    out
}

/// One line per member: stage, and the rollout's phase and wait reason.
pub fn render_rollout(v: &RolloutView) -> String {
    let r = &v.state;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rollout {} -> {}  {}  {}",
        r.id,
        r.target.version,
        match &r.phase {
            Phase::Running => "running",
            Phase::Paused { .. } => "PAUSED",
            Phase::Aborting => "aborting",
            Phase::Completed => "completed",
            Phase::Closed { .. } => "closed",
        },
        v.waiting_for
    );
    for m in &r.order {
        if let Some(p) = r.members.get(m) {
            let lead = if *m == r.original_leader {
                " (leader at start)"
            } else {
                ""
            };
            let _ = writeln!(out, "  {:<8} {:<12}{}", m, p.stage.name(), lead);
        }
    }
    out
}

fn age(ms: Option<u64>) -> String {
    match ms {
        None => "never".to_owned(),
        Some(ms) if ms < 10_000 => format!("{:.1}s ago", ms as f64 / 1000.0),
        Some(ms) => format!("{}s ago", ms / 1000),
    }
}

/// One row per member: member, role, release, revision, lag, health, last seen.
pub fn render_status(s: &FleetStatus) -> String {
    let mut out = String::new();
    let leader = s.leader.as_ref().map_or("none", |l| l.as_str());
    let _ = writeln!(out, "cluster {}  leader {}", s.cluster, leader);
    let _ = writeln!(
        out,
        "{:<10} {:<10} {:<9} {:>10} {:>8} {:<10} LAST SEEN",
        "MEMBER", "ROLE", "RELEASE", "REVISION", "LAG", "HEALTH"
    );
    for row in &s.members {
        let (role, release, revision, health) = match &row.report {
            Some(r) => (
                r.state.role.to_string(),
                if r.state.release.is_empty() {
                    "-".to_owned()
                } else {
                    r.state.release.clone()
                },
                r.state.applied_revision.to_string(),
                r.state.health.to_string(),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let lag = row.lag.map_or("-".to_owned(), |l| l.to_string());
        let mut seen = age(row.last_seen_ms_ago);
        if !row.connected {
            seen.push_str(" (agent not connected)");
        } else if !row.fresh {
            seen.push_str(" (stale)");
        }
        let _ = writeln!(
            out,
            "{:<10} {:<10} {:<9} {:>10} {:>8} {:<10} {}",
            row.member, role, release, revision, lag, health, seen
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use baton_domain::{MemberId, MemberRow, Role, fixtures};

    use super::*;

    #[test]
    fn renders_one_row_per_member() {
        let n1 = MemberId::new("n1").unwrap();
        let s = FleetStatus {
            cluster: "demo".into(),
            leader: Some(n1.clone()),
            heartbeat_ms: 1000,
            members: vec![
                MemberRow {
                    member: n1.clone(),
                    ever_seen: true,
                    connected: true,
                    fresh: true,
                    last_seen_ms_ago: Some(300),
                    report: Some(fixtures::report("n1", Role::Leader, Some("n1"), 12, 12)),
                    lag: Some(0),
                },
                MemberRow {
                    member: MemberId::new("n2").unwrap(),
                    ever_seen: false,
                    connected: false,
                    fresh: false,
                    last_seen_ms_ago: None,
                    report: None,
                    lag: None,
                },
            ],
        };
        let text = render_status(&s);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[2].starts_with("n1")
                && lines[2].contains("leader")
                && lines[2].contains("0.3s ago")
        );
        assert!(lines[3].contains("never (agent not connected)"), "{text}");
    }
}
