//! samplekv: the bundled sample cluster that baton's demo and end-to-end
//! tests upgrade. A small but real replicated key-value store on openraft:
//! durable log and snapshots, one-time cluster bootstrap, a Kv gRPC API with
//! leader hints, linearizable reads, and a SIGTERM path that hands
//! leadership to the most caught-up follower first. Not part of baton.
//!
//! Modules: [`manifest`] (release manifest), [`format`] (data format gate),
//! [`types`] (openraft type config), [`log_store`] and [`state_machine`]
//! (storage), [`network`] and [`server`] (gRPC), [`member`] (the process),
//! [`faults`] (test switches), [`client`] and [`writer`] (client side),
//! [`restore`] (a data dir from a backup document).

pub mod client;
pub mod faults;
pub mod format;
pub(crate) mod fsutil;
pub mod log_store;
pub mod manifest;
pub mod member;
pub mod network;
pub mod restore;
pub mod server;
pub mod state_machine;
pub mod types;
pub mod writer;

pub use client::{Client, ClientError, PutAck};
pub use manifest::Manifest;
pub use writer::{VerifyReport, WriterConfig, WriterReport, run_writer, verify};
