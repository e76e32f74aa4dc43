//! A scripted adapter for unit tests; records how often it was polled and
//! whom it was asked to hand over to, and what it was asked to restore.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use baton_domain::MemberId;
use futures::future::BoxFuture;

use super::{Adapter, AdapterError, MemberState};

#[derive(Debug, Default)]
pub struct FakeAdapter {
    /// The state the next poll returns; None polls as unreachable.
    pub state: Mutex<Option<MemberState>>,
    /// How many times `poll` was called.
    pub polls: AtomicUsize,
    /// Every `step_down` target, in order.
    pub step_downs: Mutex<Vec<MemberId>>,
    /// While set, a poll never answers (a frozen member).
    pub hang: std::sync::atomic::AtomicBool,
    /// Every restore: the backup file's bytes, the revision, the data dir.
    pub restores: Mutex<Vec<(Vec<u8>, u64, std::path::PathBuf)>>,
    /// Plays a single-member app ([`Adapter::single_member`]).
    pub alone: std::sync::atomic::AtomicBool,
}

impl FakeAdapter {
    pub fn set(&self, s: Option<MemberState>) {
        *self.state.lock().unwrap() = s;
    }
}

impl Adapter for FakeAdapter {
    fn kind(&self) -> &'static str {
        "fake"
    }
    fn version_rule(&self) -> baton_domain::VersionRule {
        baton_domain::VersionRule::FormatOnly
    }
    fn poll(&self) -> BoxFuture<'_, Result<MemberState, AdapterError>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        let s = self.state.lock().unwrap().clone();
        let hang = self.hang.load(Ordering::SeqCst);
        Box::pin(async move {
            if hang {
                std::future::pending::<()>().await;
            }
            s.ok_or_else(|| AdapterError::Unreachable {
                addr: "fake".into(),
                detail: "scripted down".into(),
            })
        })
    }
    fn single_member(&self) -> bool {
        self.alone.load(Ordering::SeqCst)
    }
    fn step_down<'a>(&'a self, to: &'a MemberId) -> BoxFuture<'a, Result<String, AdapterError>> {
        self.step_downs.lock().unwrap().push(to.clone());
        Box::pin(async move { Ok(format!("asked to hand over to {to}")) })
    }
    fn restore<'a>(
        &'a self,
        backup: &'a std::path::Path,
        revision: u64,
        _release: &'a str,
        data_dir: &'a std::path::Path,
    ) -> BoxFuture<'a, Result<String, AdapterError>> {
        let got = std::fs::read(backup).map_err(|e| AdapterError::Restore(e.to_string()));
        Box::pin(async move {
            self.restores
                .lock()
                .unwrap()
                .push((got?, revision, data_dir.to_owned()));
            Ok(format!("restored revision {revision}"))
        })
    }
}
