//! The command line: one clap tree, one file per family of subcommands.
//!
//! - [`server`]: `serve`, `migrate`, `hash-token`, `dev-certs` (running and setting up
//!   the service);
//! - [`client`]: `client ...`, calls to a running registry, printed for an operator;
//! - [`data`]: `demo-data` and `import` (populations in bulk);
//! - [`bench`]: `bench`, the load generator;
//! - [`relay`]: `relay`, the change feed to NATS JetStream.
//!
//! The server is wired in `crate::app`; the bulk tools live in `crate::tools`. This room
//! only parses arguments, calls them, and prints.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::client::Endpoint;

mod bench;
mod client;
mod data;
mod relay;
mod server;

#[derive(Parser)]
#[command(
    name = "payout-registry",
    version,
    about = "Registry of verified social-security payout accounts"
)]
pub struct Cli {
    /// TOML configuration file (else PAYOUT_REGISTRY_CONFIG, else defaults).
    #[arg(long, global = true, env = "PAYOUT_REGISTRY_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the gRPC service (migrations are applied first).
    Serve,
    /// Apply database migrations and load the reference data, then exit.
    Migrate,
    /// Print the SHA-256 of a bearer token, for a client's `token_sha256`. Without a
    /// token, generates a new random one and prints both.
    HashToken { token: Option<String> },
    /// Make a development CA, a server certificate (localhost, 127.0.0.1, ::1) and client
    /// certificates (Common Name = client id) for mutual TLS. Never overwrites.
    DevCerts {
        /// Directory to write `ca.pem`, `server.pem`, `<client>.pem` and their keys to.
        #[arg(long, default_value = "data/certs")]
        out: PathBuf,
        /// A client id to issue a certificate for (repeat for several).
        #[arg(long = "client", default_values = ["dev", "vss-payroll"])]
        clients: Vec<String>,
    },
    /// Call a running registry.
    #[command(subcommand)]
    Client(Box<client::ClientCommand>),
    /// Load generator: drive a running registry and print throughput and latency.
    Bench(bench::BenchArgs),
    /// Make a realistic synthetic population: valid citizen ids across all 63 provinces,
    /// Vietnamese names, banks, wallets and mobile money, some deceased, some duplicate
    /// claims, some legacy CMND numbers. Written as CSV files (--out) or straight into the
    /// configured database (--into-store).
    DemoData {
        /// How many citizens (about 1.5 accounts each).
        #[arg(long, default_value_t = 10_000)]
        citizens: u64,
        /// Same seed, same population.
        #[arg(long, default_value_t = 21)]
        seed: u64,
        /// Directory for citizens.csv and accounts.csv.
        #[arg(
            long,
            conflicts_with = "into_store",
            required_unless_present = "into_store"
        )]
        out: Option<PathBuf>,
        /// Write into the configured database (DATABASE_URL or the embedded default).
        #[arg(long)]
        into_store: bool,
        /// With --into-store: batch transactions at once. A load has no unary writes to
        /// make room for, so it keeps more in flight than a sync stream's
        /// `sync_batches_in_flight` (200 k citizens on PostgreSQL, 2 cores: 22.3 s at 2,
        /// 20.1 s at 4, 19.9 s at 6). SQLite has one writer: more changes nothing there.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=16))]
        in_flight: u8,
    },
    /// Stream citizens and/or accounts CSV files to a running registry (PopulationSync),
    /// with a progress bar; resumes after an interruption from `<file>.progress`.
    /// Rejected records are listed in `<file>.rejected.csv`.
    Import {
        #[command(flatten)]
        conn: Connection,
        /// Citizens file (imported first).
        #[arg(long)]
        citizens: Option<PathBuf>,
        /// Declared-accounts file.
        #[arg(long)]
        accounts: Option<PathBuf>,
        /// Stop after sending this many records of each file (import in parts).
        #[arg(long)]
        max_records: Option<u64>,
    },
    /// Publish the change feed to NATS JetStream, each event exactly once and in order,
    /// until SIGTERM or Ctrl-C (see the `[relay]` settings).
    Relay(relay::RelayArgs),
    /// Compare the resolution read model with the tables it is derived from (citizens,
    /// preferences, accounts) and list every difference; a full check also checks the
    /// references between those tables. Exit 1 if there is a difference that was not
    /// repaired, or a broken reference.
    Check {
        /// Check this many citizens picked at random instead of all of them (a full
        /// check also finds rows of citizens that do not exist, and broken references).
        #[arg(long)]
        sample: Option<u64>,
        /// Rewrite each differing row from the source tables, under its citizen's lock;
        /// a full check also rewrites rows in an older form (the JSON of before
        /// migration 0018, or the first binary form) in the compact form (same content,
        /// online).
        #[arg(long)]
        repair: bool,
    },
    /// Ask a registry's health service whether it is SERVING; exit 0 if so, 1 if not
    /// (for container and load-balancer probes).
    Health(server::HealthArgs),
}

#[derive(Args, Clone)]
pub struct Connection {
    /// The registry's address (`https://` is used whenever --ca is given).
    #[arg(
        long,
        default_value = "http://127.0.0.1:50051",
        env = "PAYOUT_REGISTRY_ADDR"
    )]
    pub addr: String,
    /// PEM CA certificate that issued the server's certificate: connect over TLS.
    #[arg(long, env = "PAYOUT_REGISTRY_CA")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (its Common Name identifies the client).
    #[arg(long, env = "PAYOUT_REGISTRY_CERT", requires_all = ["key", "ca"])]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, env = "PAYOUT_REGISTRY_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Bearer token (else PAYOUT_REGISTRY_TOKEN, else the development token file unless
    /// --cert is given).
    #[arg(long, env = "PAYOUT_REGISTRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the token, used when neither a token nor --cert is given.
    #[arg(long, default_value = "data/dev-token")]
    pub token_file: PathBuf,
    /// Why you are reading this citizen's data (recorded by the registry).
    #[arg(long, default_value = "operator lookup")]
    pub purpose: String,
    /// Deadline of each call, in seconds (streams such as an import run without one).
    #[arg(long, default_value_t = 10)]
    pub timeout_secs: u64,
}

impl Connection {
    /// Where to connect and with which credentials, for the client library.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            addr: self.addr.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            token: self.token.clone(),
            token_file: self.token_file.clone(),
            purpose: self.purpose.clone(),
            deadline: Some(std::time::Duration::from_secs(self.timeout_secs.max(1))),
        }
    }
}

/// Runs the command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config.as_deref();
    match cli.command {
        Command::Serve => server::serve(config).await,
        Command::Migrate => server::migrate(config).await,
        Command::HashToken { token } => {
            server::hash_token(token);
            Ok(())
        }
        Command::DevCerts { out, clients } => server::dev_certs(&out, &clients),
        Command::Client(c) => client::run(*c).await,
        Command::Bench(args) => bench::run(args).await,
        Command::DemoData {
            citizens,
            seed,
            out,
            into_store,
            in_flight,
        } => data::demo_data(config, citizens, seed, out, into_store, in_flight.into()).await,
        Command::Import {
            conn,
            citizens,
            accounts,
            max_records,
        } => data::import(conn, citizens, accounts, max_records).await,
        Command::Relay(args) => relay::run(config, args).await,
        Command::Health(args) => server::health(args).await,
        Command::Check { sample, repair } => server::check(config, sample, repair).await,
    }
}
