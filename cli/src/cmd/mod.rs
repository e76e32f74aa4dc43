//! One file per command group. Each takes a connection (or, for releases,
//! the store) and the output format, prints a table or JSON, and returns an
//! [`crate::Exit`] when the exit code must say more than "failed".
//! - [`status`]: `baton status [--watch]`.
//! - [`plan`]: `baton plan --to`.
//! - [`rollout`]: `upgrade`, `rollback`, `watch`, `rollout`, `pause`,
//!   `resume`, `abort`, `history`.
//! - [`release`]: `baton release publish`.
//! - [`backups`]: `baton backups list | verify | prune`.
//! - [`certs`]: `baton certs dev` (no coordinator needed).

pub mod backups;
pub mod certs;
pub mod plan;
pub mod release;
pub mod rollout;
pub mod status;
