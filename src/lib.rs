//! payout-registry: where Vietnam's social-security money goes.
//!
//! The registry stores each citizen's verified payout accounts (bank accounts, e-wallets,
//! mobile money) and answers payers: for citizen X and program P, which account is paid,
//! now or at a past instant. See `README.md` for running it and `proto/` for the API.
//!
//! Three rooms that never blur: [`domain`] (validated types and rules, no I/O),
//! [`store`] (the storage trait and its PostgreSQL and SQLite backends; all SQL),
//! [`grpc`] (thin handlers: convert, call, convert back).

pub mod domain;
pub mod store;

/// Code generated from `proto/payoutregistry/v1/*.proto`.
pub mod proto {
    tonic::include_proto!("payoutregistry.v1");

    /// The encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("payoutregistry_descriptor");
}

pub mod access_log;
pub mod auth;
pub mod bench;
pub mod bulk;
pub mod cli;
pub mod config;
pub mod csvio;
pub mod demo;
pub mod feed;
pub mod grpc;
pub mod limits;
pub mod relay;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod transport;
