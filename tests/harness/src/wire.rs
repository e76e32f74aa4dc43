//! Agent-link messages as a test agent sends them: a Hello and a Report
//! for a member of the harness's cluster `e2e`, for protocol tests that
//! play the agents against a real coordinator.

use baton_proto::v1::{self, AgentMessage, agent_message};

/// A Hello for `member` of cluster `e2e`.
pub fn hello(member: &str) -> AgentMessage {
    AgentMessage {
        body: Some(agent_message::Body::Hello(v1::Hello {
            member_id: member.into(),
            cluster_id: "e2e".into(),
            agent_version: "test".into(),
            adapter_kind: "test".into(),
            version_rule: None,
            stage_checks: Vec::new(),
        })),
    }
}

/// A healthy Report from `member` on v1: leader n1, committed revision
/// 50, term 4, with `role` (a wire value) and `applied`.
pub fn report(member: &str, role: i32, applied: u64) -> AgentMessage {
    AgentMessage {
        body: Some(agent_message::Body::Report(v1::Report {
            member_id: member.into(),
            role,
            leader_id: "n1".into(),
            committed_revision: 50,
            applied_revision: applied,
            release_version: "v1".into(),
            format_version: 1,
            health: v1::Health::Healthy as i32,
            health_detail: String::new(),
            resources: None,
            timestamp_unix_ms: 1,
            term: 4,
            cluster_version: String::new(),
            process: None,
        })),
    }
}
