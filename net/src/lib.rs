//! baton-net: the network plumbing every baton process shares.
//!
//! - [`tls`]: client TLS for the gRPC links (agent to coordinator, CLI to
//!   coordinator, the etcd adapter to etcd) and the HTTP client, PEM files
//!   read and checked once; a probing handshake that says why TLS failed.
//! - [`server_tls`]: server TLS for the coordinator's gRPC port (client
//!   certificates required), reloaded on SIGHUP or a file change, and the
//!   accept loop that logs why each refused handshake failed.
//! - [`why`]: a failed TLS handshake's cause in words, for either side.
//! - [`identity`]: who a TLS peer is, from its certificate's SANs
//!   (`spiffe://<cluster>/member/<id>` and the like, or a DNS name), and
//!   the cutting of echoed wire values to a bounded length.
//! - [`addr`]: which addresses may be spoken to in plaintext (loopback
//!   only).
//! - [`slots`]: places for connections or streams, capped per peer and in
//!   all.
//! - [`throttle`]: once per key per period, for logs a peer could flood.
//! - [`serve`]: the bounded HTTP server for plain-HTTP ports (probes,
//!   metrics): header deadline, connection lifetime, per-peer caps.
//! - [`http`]: the one HTTP(S) client (hyper-rustls on ring; webpki roots,
//!   or a private CA and a client certificate).
//!
//! It sits above `baton-domain` and below the agent and coordinator; it holds
//! no baton decisions, only transport.

pub mod addr;
pub mod http;
pub mod identity;
pub mod serve;
pub mod server_tls;
pub mod slots;
pub mod throttle;
pub mod tls;
pub mod why;
