//! Running the member: how the agent starts, stops and adopts the member
//! process in each run mode.
//!
//! - [`supervise`]: the agent runs the member itself from a command template
//!   (restarts it after a crash, adopts it again after the agent restarts).
//!
//! The operator's own `start`/`stop` commands (`exec` mode) and `external`
//! mode are handled by the executor today.

pub mod supervise;
