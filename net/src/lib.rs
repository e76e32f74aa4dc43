//! baton-net: the network plumbing every baton process shares.
//!
//! - [`tls`]: client TLS for the gRPC links (agent to coordinator, CLI to
//!   coordinator), PEM files read once.
//! - [`server_tls`]: server TLS for the coordinator's gRPC port, with client
//!   certificates required when a client CA is configured.
//! - [`http`]: the one HTTP(S) client (hyper-rustls on ring, webpki roots).
//!
//! It sits above `baton-domain` and below the agent and coordinator; it holds
//! no baton decisions, only transport.

pub mod http;
pub mod server_tls;
pub mod tls;
