//! The `baton` command line: talking to the operator API and rendering what
//! it says. Owns presentation only; decisions stay in the coordinator.

use std::fmt::Write as _;
use std::time::Duration;

use baton_domain::FleetStatus;
use baton_proto::tls::ClientTls;
use baton_proto::v1::{StatusRequest, operator_client::OperatorClient};
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
                r.role.to_string(),
                if r.release.is_empty() {
                    "-".to_owned()
                } else {
                    r.release.clone()
                },
                r.applied_revision.to_string(),
                r.health.to_string(),
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
    use baton_domain::{Health, MemberId, MemberRow, Report, Resources, Role};

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
                    report: Some(Report {
                        member: n1.clone(),
                        role: Role::Leader,
                        leader: Some(n1),
                        committed_revision: 12,
                        applied_revision: 12,
                        release: "v1".into(),
                        format_version: 1,
                        health: Health::Healthy,
                        health_detail: String::new(),
                        resources: Resources::default(),
                        timestamp_unix_ms: 0,
                        term: 1,
                    }),
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
