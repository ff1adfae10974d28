//! The security room: who is calling and what they may do, how they connect, and how
//! much they may ask for.
//!
//! - [`scope`]: the scopes a client may hold (a leaf type: the configuration names them).
//! - [`auth`]: the configured clients, authentication by certificate or token, the scope
//!   table, and the tower layer that admits, identifies and traces every call.
//! - [`tls`]: mutual TLS (the rustls server configuration, CRLs, who a client
//!   certificate names) and development certificates and CRLs.
//! - [`handshake`]: accepted connections must finish their handshake before a deadline;
//!   over TLS the handshake itself, with the material in force.
//! - [`live`]: the TLS material and the client table in force, replaced whole by a
//!   reload (SIGHUP) without dropping connections.
//! - [`limits`]: per-client token buckets and the in-flight limit with load shedding.
//!
//! Nothing here knows about the store or the handlers; the gRPC layer asks this room
//! for the caller and for admission.

pub mod auth;
pub mod handshake;
pub mod limits;
pub mod live;
pub mod scope;
pub mod tls;

pub use scope::Scope;
