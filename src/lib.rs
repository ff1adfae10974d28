//! payout-registry: where Vietnam's social-security money goes.
//!
//! The registry stores each citizen's verified payout accounts (bank accounts, e-wallets,
//! mobile money) and answers payers: for citizen X and program P, which account is paid,
//! now or at a past instant. See `README.md` for running it and `proto/` for the API.
//!
//! # Layout
//!
//! Data flows down the floors and never climbs back: a room imports only the rooms
//! below it (`tests/architecture.rs` checks that the top-level rooms form no cycle, that
//! `domain` uses neither sqlx nor tonic, and that `store` never uses tonic).
//!
//! | room | what lives there | may import |
//! |---|---|---|
//! | [`domain`] | validated types (`CitizenId::parse`, ...) and every rule, the write planner too (every write decided in memory as rows to write); no I/O | nothing |
//! | [`store`] | the `Store` trait, SQL split by job, one file per backend, the `Dialect` trait for what differs | `domain`, `telemetry` (metric names) |
//! | [`security`] | scopes (a leaf type), clients and authentication, TLS, handshake deadline, rate limits | nothing |
//! | [`config`] | `Settings`: defaults, then a TOML file, then the environment | `security` (its settings types) |
//! | [`telemetry`] | logs as JSON lines, the Prometheus metrics and their names, the outermost call layer (span, request id, gRPC series, "call finished") | `config`, `security` (the request id) |
//! | [`background`] | the feed sequencer, the pruner, the access-log writers, the readiness monitor | `store`, `domain`, `telemetry` |
//! | [`grpc`] | thin handlers, the conversions, the one `Status` builder, the deadline layer | `store`, `domain`, `security`, `background`, `telemetry` |
//! | [`app`] | the composition root: `App::build(&Settings)`, `App::serve(listener, shutdown)` | all of the above |
//! | [`client`] | the client library: connect, credentials, refusals described | `proto` |
//! | [`tools`] | demo population, CSV formats, import, load generator, JetStream relay engine; the server never imports them | `client`, `store`, `grpc` (conversions), `domain`, `config`, `telemetry` (metric names) |
//! | [`cli`] | the clap tree, one file per family of subcommands | everything |
//!
//! [`proto`] is the code generated from `proto/payoutregistry/v1/registry.proto`; the
//! `grpc` room converts between it and the domain, and clients use it directly.
//!
//! Only what the binary, the tools and the tests need is public.

pub mod app;
pub mod background;
pub mod cli;
pub mod client;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod security;
pub mod store;
pub mod telemetry;
pub mod tools;

/// Code generated from `proto/payoutregistry/v1/*.proto`.
pub mod proto {
    tonic::include_proto!("payoutregistry.v1");

    /// The encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("payoutregistry_descriptor");

    /// `google.type` (dates of birth and death), vendored under `proto/google/type`.
    pub mod google_type {
        tonic::include_proto!("google.r#type");
    }
}
