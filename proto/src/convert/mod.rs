//! `TryFrom` conversions between `baton.v1` wire types and domain types, one
//! file per service:
//! - [`agent_link`]: Hello, Report, Command, CommandResult.
//! - [`operator`]: the operator API's status, checks and rollouts.
//!
//! Inbound conversions validate and name what is wrong in a typed error; they
//! never panic and never default a bad value silently. Outbound conversions
//! (`From` domain → wire) are total.

pub mod agent_link;
pub mod operator;

pub use agent_link::{InvalidCommand, InvalidHello, InvalidReport, MAX_REVISION};
pub use operator::{InvalidRollout, InvalidStatus};
