//! The security room: who is calling and what they may do, how they connect, and how
//! much they may ask for.
//!
//! - [`scope`]: the scopes a client may hold (a leaf type: the configuration names them).
//! - [`auth`]: the configured clients, authentication by certificate or token, the scope
//!   table, and the tower layer that admits, identifies and traces every call.
//! - [`tls`]: mutual TLS (server configuration, who a client certificate names) and
//!   development certificates.
//! - [`handshake`]: accepted connections must finish their handshake before a deadline.
//! - [`limits`]: per-client token buckets and the in-flight limit with load shedding.
//!
//! Nothing here knows about the store or the handlers; the gRPC layer asks this room
//! for the caller and for admission.

pub mod auth;
pub mod handshake;
pub mod limits;
pub mod scope;
pub mod tls;

pub use scope::Scope;
