//! baton's planner: what to do next, as a pure function of what is known.
//!
//! A tour:
//! - [`policy`]: the operator's knobs (`tolerable_lag`, timeouts, `max_unavailable`).
//! - [`view`]: the planner's input snapshot of the fleet, built by the coordinator.
//! - [`rollout`]: the event-sourced [`RolloutState`]; `apply(event)` is the only
//!   thing that changes it, and its events are the journal.
//! - [`preflight`]: the checks that must all hold before anything is touched.
//! - [`version`]: version rules as data (which release may follow which).
//! - [`control`]: the operator's pause, resume and abort as transitions; when
//!   a rollout or a rollback may start; rollout ids.
//! - [`decide`]: `decide(&view, &rollout, &policy, now) -> Vec<Step>`.
//! - [`alerts`]: the sink-neutral [`alerts::Alert`] the on-call receives.
//! - [`watchdog`]: which alerts fire (stalls, agents down, paused rollouts);
//!   the one decider of pages.
//!
//! This crate does no IO, never reads the clock and has no tokio, tonic or
//! aws dependency: time comes in as [`UnixMs`], the fleet as a [`View`].

pub mod alerts;
pub mod control;
pub mod decide;
pub mod policy;
pub mod preflight;
pub mod rollout;
pub mod version;
pub mod view;
pub mod watchdog;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use control::{Control, Refused, control};
pub use decide::{Step, decide};
pub use policy::Policy;
pub use rollout::{Action, CommandId, Event, MemberProgress, Phase, RolloutState, Stage};
pub use view::{LagSample, MemberView, View};

/// Wall-clock milliseconds since the Unix epoch, supplied by the caller.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct UnixMs(pub u64);

impl UnixMs {
    pub fn plus(self, d: Duration) -> UnixMs {
        UnixMs(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    pub fn since(self, earlier: UnixMs) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for UnixMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

pub use baton_domain::ReleaseRef;
