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
//! - [`restore`]: the steps of a restore rollout (`baton restore`), which
//!   `decide` hands over to.
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
pub mod restore;
pub mod rollout;
pub mod version;
pub mod view;
pub mod watchdog;

/// Wall-clock milliseconds since the Unix epoch (defined in `baton-domain`).
pub use baton_domain::UnixMs;
pub use baton_domain::{ReleaseRef, Rollout};
pub use control::{Control, Refused, control};
pub use decide::{Step, decide};
pub use policy::Policy;
pub use rollout::{Action, CommandId, Event, MemberProgress, Phase, RolloutState, Stage};
pub use view::{LagSample, MemberView, View};
