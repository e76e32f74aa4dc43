//! Conversions for the operator API (`operator.proto`): fleet status and
//! preflight checks between `baton.v1` wire types and domain types.
//!
//! Inbound conversions validate and name what is wrong in a typed error;
//! outbound conversions (`From` domain → wire) are total.

use baton_domain::{Check, FleetStatus, InvalidMemberId, MemberId, MemberRow, Report};

use crate::convert::agent_link::InvalidReport;
use crate::v1;

/// Why a `StatusResponse` from the coordinator could not be understood.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidStatus {
    #[error("status names a bad member id: {0}")]
    MemberId(#[from] InvalidMemberId),
    #[error("status row for member {member} has a bad report: {source}")]
    Report {
        member: MemberId,
        source: InvalidReport,
    },
}

impl TryFrom<v1::StatusResponse> for FleetStatus {
    type Error = InvalidStatus;

    fn try_from(s: v1::StatusResponse) -> Result<Self, Self::Error> {
        let v1::StatusResponse {
            cluster_id,
            members,
            leader_id,
            heartbeat_ms,
        } = s;
        let leader = match leader_id.as_str() {
            "" => None,
            id => Some(MemberId::new(id)?),
        };
        let members = members
            .into_iter()
            .map(MemberRow::try_from)
            .collect::<Result<_, _>>()?;
        Ok(FleetStatus {
            cluster: cluster_id,
            leader,
            heartbeat_ms,
            members,
        })
    }
}

impl TryFrom<v1::MemberStatus> for MemberRow {
    type Error = InvalidStatus;

    fn try_from(m: v1::MemberStatus) -> Result<Self, Self::Error> {
        let v1::MemberStatus {
            member_id,
            ever_seen,
            connected,
            fresh,
            last_seen_ms_ago,
            report,
            lag,
            lag_known,
        } = m;
        let member = MemberId::new(member_id)?;
        let report =
            report
                .map(Report::try_from)
                .transpose()
                .map_err(|source| InvalidStatus::Report {
                    member: member.clone(),
                    source,
                })?;
        Ok(MemberRow {
            member,
            ever_seen,
            connected,
            fresh,
            last_seen_ms_ago: ever_seen.then_some(last_seen_ms_ago),
            report,
            lag: lag_known.then_some(lag),
        })
    }
}

impl From<FleetStatus> for v1::StatusResponse {
    fn from(f: FleetStatus) -> Self {
        let FleetStatus {
            cluster,
            leader,
            heartbeat_ms,
            members,
        } = f;
        v1::StatusResponse {
            cluster_id: cluster,
            leader_id: leader.map(String::from).unwrap_or_default(),
            heartbeat_ms,
            members: members.into_iter().map(v1::MemberStatus::from).collect(),
        }
    }
}

impl From<MemberRow> for v1::MemberStatus {
    fn from(m: MemberRow) -> Self {
        let MemberRow {
            member,
            ever_seen,
            connected,
            fresh,
            last_seen_ms_ago,
            report,
            lag,
        } = m;
        v1::MemberStatus {
            member_id: member.into(),
            ever_seen,
            connected,
            fresh,
            last_seen_ms_ago: last_seen_ms_ago.unwrap_or(0),
            report: report.map(v1::Report::from),
            lag: lag.unwrap_or(0),
            lag_known: lag.is_some(),
        }
    }
}

/// Why a `Command` or `CommandResult` from the wire was refused.
impl TryFrom<v1::Check> for Check {
    type Error = InvalidMemberId;

    fn try_from(c: v1::Check) -> Result<Self, Self::Error> {
        let v1::Check {
            check,
            member_id,
            ok,
            detail,
        } = c;
        let member = match member_id.as_str() {
            "" => None,
            m => Some(MemberId::new(m)?),
        };
        Ok(Check {
            check,
            member,
            ok,
            detail,
        })
    }
}

impl From<Check> for v1::Check {
    fn from(c: Check) -> Self {
        let Check {
            check,
            member,
            ok,
            detail,
        } = c;
        v1::Check {
            check,
            member_id: member.map(String::from).unwrap_or_default(),
            ok,
            detail,
        }
    }
}
