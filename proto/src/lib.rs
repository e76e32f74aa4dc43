//! baton's wire contract.
//!
//! This crate owns the generated gRPC code (the only generated code in the
//! workspace) and the edge between wire and domain: [`convert`] turns every
//! inbound message into a `baton-domain` type with `TryFrom`, destructuring
//! each message exhaustively so that a new proto field breaks the build until
//! someone handles it. Service code converts on its first line and uses domain
//! types after that. This crate must not hold behaviour beyond conversion.

pub mod convert;

/// `baton.v1`: agent link, operator API and replica peering.
pub mod v1 {
    #![allow(clippy::all, missing_debug_implementations)]
    tonic::include_proto!("baton.v1");
}

/// `samplekv.v1`: the bundled sample cluster's member and client API.
pub mod samplekv {
    #![allow(clippy::all, missing_debug_implementations)]
    tonic::include_proto!("samplekv.v1");
}

/// The gRPC metadata key in which a coordinator replica that does not lead
/// names the leader's address (a URL with its scheme), on an UNAVAILABLE
/// answer: clients retry there.
pub const LEADER_HINT: &str = "x-baton-leader";

pub use convert::{
    InvalidCommand, InvalidHello, InvalidReport, InvalidRollout, InvalidStatus, MAX_REVISION,
};
