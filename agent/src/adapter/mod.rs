//! Target adapters: how the agent reads one member of one kind of cluster.
//!
//! This module owns the [`Target`] trait and the [`MemberState`] an adapter
//! returns. An adapter only reads (and, in later issues, asks for a handover);
//! it never starts or stops processes, which is the supervisor's job.

pub mod etcd;
pub mod samplekv;

use baton_domain::{Health, MemberId, Role, VersionRule};
use futures::future::BoxFuture;

pub use etcd::EtcdTarget;
pub use samplekv::SamplekvTarget;

/// What a member says about itself, as read by its adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberState {
    pub role: Role,
    pub leader: Option<MemberId>,
    pub committed_revision: u64,
    pub applied_revision: u64,
    pub release: String,
    pub format_version: u32,
    pub term: u64,
    pub health: Health,
    pub health_detail: String,
    /// The cluster-wide version, for targets that have one (etcd).
    pub cluster_version: String,
}

impl MemberState {
    /// The state to report when the member cannot be read at all.
    pub fn unreachable(detail: String) -> Self {
        MemberState {
            role: Role::Unknown,
            leader: None,
            committed_revision: 0,
            applied_revision: 0,
            release: String::new(),
            format_version: 0,
            term: 0,
            health: Health::Down,
            health_detail: detail,
            cluster_version: String::new(),
        }
    }
}

/// Why an adapter could not read its member.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("member at {addr} is unreachable: {detail}")]
    Unreachable { addr: String, detail: String },
    #[error("member at {addr} refused: {detail}")]
    Refused { addr: String, detail: String },
    #[error("member at {addr} gave an answer the {kind} adapter cannot use: {detail}")]
    BadAnswer {
        addr: String,
        kind: &'static str,
        detail: String,
    },
}

/// One kind of cluster member, seen from its agent.
pub trait Target: Send + Sync + std::fmt::Debug {
    /// The adapter's name, sent in the Hello (e.g. `samplekv`).
    fn kind(&self) -> &'static str;
    /// Which releases its members may move between, sent in the Hello for
    /// the coordinator's preflight to evaluate.
    fn version_rule(&self) -> VersionRule;
    /// Reads the member's current state.
    fn poll(&self) -> BoxFuture<'_, Result<MemberState, TargetError>>;
    /// Asks the member (the leader) to hand leadership to `to`. Returns once
    /// the request is accepted; the coordinator confirms the new leader from
    /// reports.
    fn step_down<'a>(&'a self, to: &'a MemberId) -> BoxFuture<'a, Result<String, TargetError>>;
}

#[cfg(test)]
pub mod fake {
    //! A scripted target for unit tests; records how often it was polled.
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Debug, Default)]
    pub struct FakeTarget {
        pub state: Mutex<Option<MemberState>>,
        pub polls: AtomicUsize,
        pub step_downs: Mutex<Vec<MemberId>>,
    }

    impl FakeTarget {
        pub fn set(&self, s: Option<MemberState>) {
            *self.state.lock().unwrap() = s;
        }
    }

    impl Target for FakeTarget {
        fn kind(&self) -> &'static str {
            "fake"
        }
        fn version_rule(&self) -> VersionRule {
            VersionRule::FormatOnly
        }
        fn poll(&self) -> BoxFuture<'_, Result<MemberState, TargetError>> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            let s = self.state.lock().unwrap().clone();
            Box::pin(async move {
                s.ok_or_else(|| TargetError::Unreachable {
                    addr: "fake".into(),
                    detail: "scripted down".into(),
                })
            })
        }
        fn step_down<'a>(&'a self, to: &'a MemberId) -> BoxFuture<'a, Result<String, TargetError>> {
            self.step_downs.lock().unwrap().push(to.clone());
            Box::pin(async move { Ok(format!("asked to hand over to {to}")) })
        }
    }
}
