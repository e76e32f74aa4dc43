//! The one place where coordinator errors become `tonic::Status`: the agent
//! link's [`LinkError`] and the driver's answer to an operator request,
//! [`ControlError`] (defined here so that this module imports no runtime
//! module; the driver re-exports it).

use baton_proto::{InvalidHello, InvalidReport};
use tonic::{Code, Status};

use crate::fleet::Refusal;

/// Why an agent's stream was refused or ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("agent stream must start with a Hello, got {got}")]
    ExpectedHello { got: &'static str },
    #[error("member {member}: expected a Report after Hello, got {got}")]
    ExpectedReport {
        member: baton_domain::MemberId,
        got: &'static str,
    },
    #[error(
        "agent did not send its Hello and first Report within {waited_ms} ms of connecting; the stream is closed"
    )]
    Silent { waited_ms: u64 },
    /// Too many streams from one peer (or from everyone) have not said
    /// Hello yet; refused before anything is read.
    #[error(
        "{waiting} streams from {peer} have not said Hello yet (at most {cap} may wait, each for {deadline_ms} ms); retry once they end"
    )]
    TooManyStrangers {
        peer: String,
        waiting: usize,
        cap: usize,
        deadline_ms: u64,
    },
    #[error("hello refused: {0}")]
    BadHello(#[from] InvalidHello),
    #[error("report refused: {0}")]
    BadReport(#[from] InvalidReport),
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    #[error("command result refused: {0}")]
    BadResult(baton_proto::InvalidCommand),
    #[error("agent stream failed: {0}")]
    Transport(String),
    /// A Hello the client certificate does not back: it claims a member
    /// (or cluster) the certificate does not name, or no certificate came.
    #[error("hello for member {claimed} refused: {detail}")]
    NotYours { claimed: String, detail: String },
}

impl From<LinkError> for Status {
    fn from(e: LinkError) -> Self {
        let code = match &e {
            LinkError::ExpectedHello { .. }
            | LinkError::ExpectedReport { .. }
            | LinkError::BadHello(_)
            | LinkError::BadReport(_)
            | LinkError::BadResult(_)
            | LinkError::Refused(Refusal::MemberMismatch { .. }) => Code::InvalidArgument,
            LinkError::Refused(Refusal::UnknownMember { .. }) => Code::NotFound,
            LinkError::Refused(Refusal::WrongCluster { .. }) => Code::FailedPrecondition,
            LinkError::Refused(Refusal::Superseded { .. }) => Code::Aborted,
            LinkError::Silent { .. } => Code::DeadlineExceeded,
            LinkError::TooManyStrangers { .. } => Code::ResourceExhausted,
            LinkError::Transport(_) => Code::Unavailable,
            LinkError::NotYours { .. } => Code::PermissionDenied,
        };
        Status::new(code, e.to_string())
    }
}

/// Why a control request was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    #[error("no rollout to {verb}; start one with `baton upgrade --to VERSION`")]
    NoRollout { verb: &'static str },
    #[error("rollout {id} is {phase}; {hint}")]
    WrongPhase {
        id: String,
        phase: String,
        hint: String,
    },
    #[error("preflight refused the rollout to {to}: {} check(s) failed", checks.len())]
    Preflight {
        to: String,
        checks: Vec<baton_domain::Check>,
    },
    #[error("{0}")]
    Journal(String),
    /// This replica lost the journal's leadership (or its quorum) before
    /// it could record the request: nothing was recorded, and the leader
    /// (when known) can take it.
    #[error("{detail}")]
    NotLeader {
        detail: String,
        leader: Option<String>,
    },
    /// A restore that cannot start; nothing was touched.
    #[error("restore refused: {0}")]
    Restore(String),
}

impl From<ControlError> for Status {
    fn from(e: ControlError) -> Self {
        let code = match &e {
            ControlError::NoRollout { .. } => Code::NotFound,
            ControlError::WrongPhase { .. } | ControlError::Preflight { .. } => {
                Code::FailedPrecondition
            }
            ControlError::Journal(_) => Code::Internal,
            ControlError::NotLeader { leader, .. } => {
                let mut status = Status::unavailable(e.to_string());
                if let Some(addr) = leader.as_deref().and_then(|l| l.parse().ok()) {
                    status.metadata_mut().insert(baton_proto::LEADER_HINT, addr);
                }
                return status;
            }
            ControlError::Restore(_) => Code::FailedPrecondition,
        };
        Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_leadership_is_unavailable_with_the_leader_named() {
        let s = Status::from(ControlError::NotLeader {
            detail: "this coordinator replica does not lead the journal".into(),
            leader: Some("http://127.0.0.1:7402".into()),
        });
        assert_eq!(s.code(), Code::Unavailable, "the CLI asks again elsewhere");
        assert_eq!(
            s.metadata()
                .get(baton_proto::LEADER_HINT)
                .and_then(|v| v.to_str().ok()),
            Some("http://127.0.0.1:7402")
        );
        let s = Status::from(ControlError::NotLeader {
            detail: "the journal is unavailable".into(),
            leader: None,
        });
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.metadata().get(baton_proto::LEADER_HINT).is_none());
        assert_eq!(
            Status::from(ControlError::Journal("disk".into())).code(),
            Code::Internal
        );
    }
}
