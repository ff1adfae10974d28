//! The command line: run the service, migrate, make development certificates, and a
//! client for lookups and the README walkthrough.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use uuid::Uuid;

use crate::auth::{hash_token, Authenticator};
use crate::config::{ClientConfig, Settings};
use crate::grpc::convert::timestamp_in;
use crate::proto;
use crate::proto::account_registry_client::AccountRegistryClient;
use crate::proto::payout_resolver_client::PayoutResolverClient;
use crate::store::StoreOptions;

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
    Client(Box<ClientCommand>),
    /// Load generator: drive a running registry and print throughput and latency.
    Bench(BenchArgs),
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
    Relay(crate::relay::RelayArgs),
}

/// `bench`: which scenario, how hard, for how long.
#[derive(Args)]
pub struct BenchArgs {
    #[arg(value_enum)]
    pub scenario: BenchScenario,
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Bearer token of a client with the scenario's scopes (`accounts.write` and
    /// `resolve` to seed and resolve, `sync.population` for sync-accounts); defaults to
    /// the development token file.
    #[arg(long, env = "PAYOUT_REGISTRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, default_value = "data/dev-token")]
    pub token_file: PathBuf,
    /// Calls in flight at once (resolve, health, raw-any).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds to run (resolve, health, raw-any).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Citizens to seed through LinkAccount and resolve, when no --demo-citizens.
    #[arg(long, default_value_t = 1000)]
    pub citizens: usize,
    /// Resolve ids of the population `demo-data --citizens N --seed S` loaded (picked at
    /// random), instead of seeding.
    #[arg(long)]
    pub demo_citizens: Option<u64>,
    #[arg(long, default_value_t = 21)]
    pub demo_seed: u64,
    /// Resolve the ids in this file (one per line), instead of seeding.
    #[arg(long, conflicts_with = "demo_citizens")]
    pub ids_file: Option<PathBuf>,
    /// Ids on the BatchResolve stream.
    #[arg(long, default_value_t = 100_000)]
    pub ids: u64,
    /// Records on the SyncAccounts stream.
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Sample this process's RSS (the server's pid) while the scenario runs.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// raw-any, relay-catchup: the database to read directly.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// relay-catchup: the NATS server (JetStream enabled).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// raw-any: keys per `= ANY` select.
    #[arg(long, default_value_t = 1000)]
    pub keys: usize,
    /// feed-lag: writes per second.
    #[arg(long, default_value_t = 300)]
    pub rate: u64,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum BenchScenario {
    /// Unary Resolve.
    Resolve,
    /// One BatchResolve stream of --ids ids.
    BatchResolve,
    /// One SyncAccounts stream of --records new records.
    SyncAccounts,
    /// grpc.health.v1 Health/Check: the transport's ceiling.
    Health,
    /// Baseline: the resolver's lookup straight on PostgreSQL, --keys ids per `= ANY`.
    RawAny,
    /// Change feed: read every event from position 0 to the head (catch-up throughput).
    FeedCatchup,
    /// Change feed: --rate writes per second for --seconds while a subscriber measures
    /// each event's commit-to-receipt lag.
    FeedLag,
    /// The JetStream relay: publish the whole feed of --database-url into a new stream on
    /// --nats-url (deleted afterwards), events/s.
    RelayCatchup,
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
}

#[derive(Clone, Copy, ValueEnum)]
pub enum KindArg {
    Bank,
    Ewallet,
    MobileMoney,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum MethodArg {
    IssuerConfirmed,
    NameMatch,
    VneidDeclared,
    InPerson,
}

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Link an account to a citizen.
    Link {
        #[command(flatten)]
        conn: Connection,
        #[arg(long)]
        citizen: String,
        #[arg(long, value_enum)]
        kind: KindArg,
        /// NAPAS BIN for banks, or a wallet code such as MOMO.
        #[arg(long)]
        provider: String,
        /// Account number or mobile number.
        #[arg(long = "ref")]
        account_ref: String,
        #[arg(long)]
        holder: Option<String>,
        /// Verify at link time with this method (needs --evidence).
        #[arg(long, value_enum, requires = "evidence")]
        verify: Option<MethodArg>,
        #[arg(long)]
        evidence: Option<String>,
        #[arg(long)]
        idempotency_key: Option<Uuid>,
    },
    /// Verify a pending account.
    Verify {
        #[command(flatten)]
        conn: Connection,
        #[arg(long)]
        account: String,
        #[arg(long, value_enum)]
        method: MethodArg,
        #[arg(long)]
        evidence: String,
        #[arg(long)]
        holder: Option<String>,
        #[arg(long)]
        idempotency_key: Option<Uuid>,
    },
    /// Choose the account a citizen is paid into (by default, or for --program).
    SetDefault {
        #[command(flatten)]
        conn: Connection,
        #[arg(long)]
        citizen: String,
        #[arg(long)]
        account: String,
        #[arg(long, default_value = "")]
        program: String,
        #[arg(long)]
        idempotency_key: Option<Uuid>,
    },
    /// Reject, suspend, reinstate or close an account.
    Change {
        #[command(flatten)]
        conn: Connection,
        #[arg(value_enum)]
        action: ChangeArg,
        #[arg(long)]
        account: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        idempotency_key: Option<Uuid>,
    },
    /// Which account pays this citizen, now or --as-of an RFC 3339 instant; or, with
    /// --file, every citizen id in a file (one per line) through BatchResolve, written as
    /// a payroll CSV to --out.
    Resolve {
        #[command(flatten)]
        conn: Connection,
        /// A 12-digit citizen id or a legacy 9-digit CMND number.
        #[arg(long, required_unless_present = "file", conflicts_with = "file")]
        citizen: Option<String>,
        /// A file of citizen ids, one per line.
        #[arg(long, requires = "out")]
        file: Option<PathBuf>,
        /// Where to write the payroll CSV.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value = "")]
        program: String,
        #[arg(long)]
        as_of: Option<String>,
        /// Only ask whether the citizen can be paid.
        #[arg(long)]
        exists_only: bool,
    },
    /// A citizen's accounts and preferences.
    List {
        #[command(flatten)]
        conn: Connection,
        #[arg(long)]
        citizen: String,
        #[arg(long)]
        include_closed: bool,
    },
    /// Print the change feed live (catch-up from --after, then every new event), one line
    /// per event, until interrupted. Needs `events.all`, or --consumer with a watch list.
    Tail {
        #[command(flatten)]
        conn: Connection,
        /// Start after this feed position (default: the current head, i.e. only new events).
        #[arg(long)]
        after: Option<u64>,
        /// A named consumer (its watch list filters the events).
        #[arg(long, default_value = "")]
        consumer: String,
        /// Only these event types (repeat).
        #[arg(long = "type")]
        types: Vec<String>,
        /// Also print each event's payload (JSON).
        #[arg(long)]
        payload: bool,
    },
    /// The sync digest of every citizen's live routes, or of one --province: compare it
    /// with one computed from a copy built from the change feed (see GetSyncDigest).
    Digest {
        #[command(flatten)]
        conn: Connection,
        /// A 3-digit province code.
        #[arg(long, default_value = "")]
        province: String,
    },
    /// Every state an account has been in.
    History {
        #[command(flatten)]
        conn: Connection,
        #[arg(long)]
        account: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ChangeArg {
    Reject,
    Suspend,
    Reinstate,
    Close,
}

/// Runs the command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => serve(cli.config.as_deref()).await,
        Command::Migrate => {
            let settings = Settings::load(cli.config.as_deref())?;
            crate::telemetry::init(settings.log_format, &settings.log_level);
            let store = open_store(&settings).await?;
            store.migrate().await?;
            println!("migrations applied and reference data loaded");
            Ok(())
        }
        Command::HashToken { token } => {
            let token = token.unwrap_or_else(new_token);
            println!(
                "token:        {token}\ntoken_sha256: {}",
                hash_token(&token)
            );
            Ok(())
        }
        Command::DevCerts { out, clients } => dev_certs(&out, &clients),
        Command::Client(c) => client(*c).await,
        Command::Bench(args) => bench(args).await,
        Command::DemoData {
            citizens,
            seed,
            out,
            into_store,
        } => demo_data(cli.config.as_deref(), citizens, seed, out, into_store).await,
        Command::Import {
            conn,
            citizens,
            accounts,
            max_records,
        } => import(conn, citizens, accounts, max_records).await,
        Command::Relay(args) => crate::relay::command(cli.config.as_deref(), args).await,
    }
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use crate::bench;
    let token = || -> anyhow::Result<String> {
        match &args.token {
            Some(t) => Ok(t.clone()),
            None => Ok(std::fs::read_to_string(&args.token_file)
                .with_context(|| {
                    format!("no --token and {} is unreadable", args.token_file.display())
                })?
                .trim()
                .to_owned()),
        }
    };
    let channel = Channel::from_shared(args.addr.clone())?.connect().await?;
    let duration = std::time::Duration::from_secs(args.seconds);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("machine: {cores} cores");
    let bearer = || -> anyhow::Result<Bearer> { Bearer::new(Some(&token()?), "benchmark") };
    // Ids to resolve: a random sample of the demo population, or freshly seeded ones.
    let ids = |channel: Channel| async move {
        if let Some(path) = &args.ids_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            return Ok(text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect());
        }
        match args.demo_citizens {
            Some(n) => {
                let spec = crate::demo::DemoSpec {
                    citizens: n,
                    seed: args.demo_seed,
                };
                let sample: Vec<String> = (0..n.min(200_000))
                    .map(|_| crate::demo::citizen_id_at(&spec, rand::random_range(0..n)))
                    .collect();
                Ok::<_, anyhow::Error>(sample)
            }
            None => {
                let mut registry = AccountRegistryClient::new(channel);
                bench::seed(&mut registry, &token()?, args.citizens, 0).await
            }
        }
    };
    let rss = args.server_pid.map(bench::RssSampler::start);
    match args.scenario {
        BenchScenario::Resolve => {
            let ids = ids(channel.clone()).await?;
            bench::resolve(
                channel,
                &token()?,
                Arc::new(ids),
                args.concurrency,
                duration,
            )
            .await?
            .print("resolve", args.concurrency);
        }
        BenchScenario::BatchResolve => {
            let spec = crate::demo::DemoSpec {
                citizens: args.demo_citizens.unwrap_or(0),
                seed: args.demo_seed,
            };
            let population = args
                .demo_citizens
                .context("batch-resolve needs --demo-citizens (the population demo-data loaded)")?;
            let client = PayoutResolverClient::with_interceptor(channel, bearer()?)
                .max_decoding_message_size(64 << 20);
            let figures = bench::batch_resolve(client, args.ids, move |i| {
                crate::demo::citizen_id_at(
                    &spec,
                    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) % population,
                )
            })
            .await?;
            figures.print("batch-resolve (per id)", 1);
        }
        BenchScenario::SyncAccounts => {
            let client =
                crate::proto::population_sync_client::PopulationSyncClient::with_interceptor(
                    channel,
                    bearer()?,
                );
            let figures = bench::sync_accounts(client, args.records, rand::random()).await?;
            figures.print("sync-accounts (per record; errors = rejected records)", 1);
        }
        BenchScenario::Health => {
            bench::health(channel, args.concurrency, duration)
                .await?
                .print("health", args.concurrency);
        }
        BenchScenario::FeedCatchup => {
            let client = crate::proto::change_feed_client::ChangeFeedClient::with_interceptor(
                channel,
                bearer()?,
            )
            .max_decoding_message_size(64 << 20);
            let figures = bench::feed_catchup(client).await?;
            println!(
                "feed-catchup: {} events in {:.1} s: {:.0} events/s",
                figures.calls,
                figures.elapsed.as_secs_f64(),
                figures.calls as f64 / figures.elapsed.as_secs_f64()
            );
        }
        BenchScenario::FeedLag => {
            let figures = bench::feed_lag(channel, &token()?, args.rate, duration).await?;
            figures.print("feed-lag (per event: commit to receipt)", 1);
        }
        BenchScenario::RelayCatchup => {
            let url = args
                .database_url
                .clone()
                .context("relay-catchup needs --database-url or DATABASE_URL")?;
            let (events, elapsed) = bench::relay_catchup(&url, &args.nats_url).await?;
            println!(
                "relay-catchup: {events} events in {:.1} s: {:.0} events/s",
                elapsed.as_secs_f64(),
                events as f64 / elapsed.as_secs_f64()
            );
        }
        BenchScenario::RawAny => {
            let url = args
                .database_url
                .clone()
                .context("raw-any needs --database-url or DATABASE_URL")?;
            let ids = ids(channel).await?;
            let figures =
                bench::raw_any(&url, Arc::new(ids), args.keys, args.concurrency, duration).await?;
            figures.print(
                &format!("raw-any ({} keys per select)", args.keys),
                args.concurrency,
            );
            println!(
                "raw-any: {:.0} ids/s",
                figures.calls as f64 * args.keys as f64 / figures.elapsed.as_secs_f64()
            );
        }
    }
    if let Some(rss) = rss {
        rss.finish().await;
    }
    Ok(())
}

async fn demo_data(
    config: Option<&Path>,
    citizens: u64,
    seed: u64,
    out: Option<PathBuf>,
    into_store: bool,
) -> anyhow::Result<()> {
    let spec = crate::demo::DemoSpec { citizens, seed };
    let started = std::time::Instant::now();
    if into_store {
        let settings = Settings::load(config)?;
        let store = open_store(&settings).await?;
        store.migrate().await?;
        let (c, a) = crate::bulk::demo_store(store, &spec).await?;
        println!(
            "citizens: {} applied, {} stale, {} rejected\naccounts: {} applied, {} stale, {} \
             rejected (the planted duplicate claims, and NAME_MATCH records whose holder name \
             is not the registered one)\n{:.1} s",
            c.applied,
            c.stale,
            c.rejected,
            a.applied,
            a.stale,
            a.rejected,
            started.elapsed().as_secs_f64()
        );
    } else if let Some(dir) = out {
        let (c, a) = crate::bulk::demo_csv(&spec, &dir)?;
        println!(
            "wrote {} and {} in {:.1} s",
            c.display(),
            a.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

async fn import(
    conn: Connection,
    citizens: Option<PathBuf>,
    accounts: Option<PathBuf>,
    max_records: Option<u64>,
) -> anyhow::Result<()> {
    if citizens.is_none() && accounts.is_none() {
        anyhow::bail!("nothing to import: give --citizens and/or --accounts");
    }
    let (channel, bearer) = connect_channel(&conn).await?;
    let files = [
        (crate::bulk::FileKind::Citizens, citizens),
        (crate::bulk::FileKind::Accounts, accounts),
    ];
    for (kind, path) in files {
        let Some(path) = path else { continue };
        let started = std::time::Instant::now();
        let r = crate::bulk::import_file(channel.clone(), bearer.clone(), kind, &path, max_records)
            .await
            .with_context(|| {
                format!(
                    "importing {} (run the same command again to resume)",
                    path.display()
                )
            })?;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{}: {} records committed in {secs:.1} s ({:.0}/s){}: {} applied, {} stale, {} \
             rejected, {} malformed lines{}",
            path.display(),
            r.committed,
            r.committed as f64 / secs.max(1e-9),
            if r.resumed_after_line > 0 {
                format!(", resumed after line {}", r.resumed_after_line)
            } else {
                String::new()
            },
            r.applied,
            r.stale,
            r.rejected,
            r.malformed,
            if r.complete {
                String::new()
            } else {
                format!(
                    "; not finished, run again to resume ({})",
                    crate::bulk::checkpoint_path(&path).display()
                )
            }
        );
        if r.rejected > 0 {
            println!(
                "  rejected records are listed in {}.rejected.csv",
                path.display()
            );
        }
    }
    Ok(())
}

fn dev_certs(out: &Path, clients: &[String]) -> anyhow::Result<()> {
    let ids: Vec<&str> = clients.iter().map(String::as_str).collect();
    let files = crate::tls::generate_dev_certs(out, &ids)?;
    println!(
        "development certificates in {} (keys mode 0600; for local use only):",
        out.display()
    );
    println!("  CA       {}", files.ca_cert.display());
    println!(
        "  server   {}  ({})",
        files.server_cert.display(),
        crate::tls::DEV_SERVER_NAMES.join(", ")
    );
    for c in &files.clients {
        println!(
            "  client   {}  (cert_subject = {:?})",
            c.cert.display(),
            c.client_id
        );
    }
    println!(
        "\nServe with them by adding to the configuration:\n\n[tls]\ncert_file = {:?}\n\
         key_file = {:?}\nclient_ca_file = {:?}",
        files.server_cert.display().to_string(),
        files.server_key.display().to_string(),
        files.ca_cert.display().to_string(),
    );
    Ok(())
}

fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

pub(crate) async fn open_store(
    settings: &Settings,
) -> anyhow::Result<Arc<dyn crate::store::Store>> {
    if settings.is_embedded() {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating {}", settings.data_dir.display()))?;
    }
    let options = StoreOptions {
        cooling_off: settings.cooling_off(),
        max_connections: settings.db_max_connections,
    };
    Ok(crate::store::connect(settings.database_url.expose(), options).await?)
}

async fn serve(config: Option<&Path>) -> anyhow::Result<()> {
    let mut settings = Settings::load(config)?;
    crate::telemetry::init(settings.log_format, &settings.log_level);
    let tls = match &settings.tls {
        Some(t) => Some(crate::tls::server_tls_config(t).context("loading the [tls] files")?),
        None => None,
    };
    if tls.is_none()
        && !settings.listen.ip().is_loopback()
        && !settings.allow_plaintext_non_loopback
    {
        anyhow::bail!(
            "refusing to serve plain text on {}: listen on loopback, configure [tls], or set \
             allow_plaintext_non_loopback = true behind a TLS-terminating proxy",
            settings.listen
        );
    }
    if settings.clients.is_empty() && settings.dev_client && settings.is_embedded() {
        settings.clients.push(dev_client(&settings.data_dir)?);
    }
    if settings.clients.is_empty() {
        tracing::warn!("no clients configured: every call will be refused");
    }
    let store = open_store(&settings).await?;
    store.migrate().await?;
    let mut state = crate::grpc::AppState::new(store, settings.cooling_off());
    state.limits = Arc::new(crate::limits::Limits::new(settings.rate_limits.clone()));
    if !settings.access_log_enabled {
        tracing::warn!("the access log is disabled: reads are not recorded (benchmarks only)");
        state.access = crate::access_log::AccessLog::disabled();
    }
    let _pruner = (settings.event_retention_days > 0).then(|| {
        let retention =
            std::time::Duration::from_secs(u64::from(settings.event_retention_days) * 86_400);
        crate::feed::TaskHandle::spawn(crate::feed::pruner(
            state.store.clone(),
            retention,
            std::time::Duration::from_secs(3600),
        ))
    });
    let auth = Arc::new(
        Authenticator::new(&settings.clients)
            .accept_plaintext_tokens_from_anywhere(settings.allow_plaintext_non_loopback),
    );
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        embedded = settings.is_embedded(),
        tls = tls.is_some(),
        "payout-registry listening"
    );
    let options = crate::server::ServerOptions {
        max_message_bytes: settings.max_message_bytes,
        shutdown_grace: std::time::Duration::from_secs(settings.shutdown_grace_secs),
        request_timeout: std::time::Duration::from_secs(settings.request_timeout_secs),
        tls,
    };
    crate::server::serve(
        listener,
        state,
        auth,
        options,
        crate::server::shutdown_signal(),
    )
    .await
}

/// The development client: every scope, its token in `<data_dir>/dev-token` (mode 0600),
/// printed once when created. Over mutual TLS it is the `dev` certificate that
/// `dev-certs` makes.
fn dev_client(data_dir: &Path) -> anyhow::Result<ClientConfig> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join("dev-token");
    let token = match std::fs::read_to_string(&path) {
        Ok(t) => {
            println!("development client: token in {}", path.display());
            t.trim().to_owned()
        }
        Err(_) => {
            let token = new_token();
            write_private(&path, &token)?;
            println!(
                "development client created with every scope; token (also in {}):\n{token}",
                path.display()
            );
            token
        }
    };
    Ok(ClientConfig {
        id: "dev".into(),
        token_sha256: Some(hash_token(&token)),
        cert_subject: Some("dev".into()),
        scopes: crate::auth::Scope::ALL
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect(),
    })
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    crate::tls::write_new_file(path, contents, true)
        .with_context(|| format!("creating {}", path.display()))
}

pub type Authed = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// Adds the bearer token (if any) and the purpose to every request.
#[derive(Clone)]
pub struct Bearer {
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    purpose: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Bearer {
    /// Sends `Bearer <token>` (if any) and the purpose with every request.
    pub fn new(token: Option<&str>, purpose: &str) -> anyhow::Result<Bearer> {
        Ok(Bearer {
            authorization: token.map(|t| format!("Bearer {t}").parse()).transpose()?,
            purpose: Some(purpose.parse()?),
        })
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(a) = &self.authorization {
            req.metadata_mut().insert("authorization", a.clone());
        }
        if let Some(p) = &self.purpose {
            req.metadata_mut().insert("x-purpose", p.clone());
        }
        Ok(req)
    }
}

async fn connect(
    conn: &Connection,
) -> anyhow::Result<(AccountRegistryClient<Authed>, PayoutResolverClient<Authed>)> {
    let (channel, bearer) = connect_channel(conn).await?;
    Ok((
        AccountRegistryClient::with_interceptor(channel.clone(), bearer.clone()),
        PayoutResolverClient::with_interceptor(channel, bearer),
    ))
}

/// A connection to the registry, and what to send with every call on it.
pub async fn connect_channel(conn: &Connection) -> anyhow::Result<(Channel, Bearer)> {
    // A client certificate identifies the caller by itself; the development token file
    // is read only without one (it may belong to another client than the certificate).
    let token = match (&conn.token, &conn.cert) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(_)) => None,
        (None, None) => Some(
            std::fs::read_to_string(&conn.token_file)
                .with_context(|| {
                    format!(
                        "no --token or --cert given and {} is unreadable (is the server running on the embedded default?)",
                        conn.token_file.display()
                    )
                })?
                .trim()
                .to_owned(),
        ),
    };
    let endpoint = match client_tls(conn)? {
        Some(tls) => {
            let addr = match conn.addr.split_once("://") {
                Some((_, rest)) => format!("https://{rest}"),
                None => format!("https://{}", conn.addr),
            };
            Channel::from_shared(addr)?.tls_config(tls)?
        }
        None if conn.addr.starts_with("https://") => {
            anyhow::bail!("an https:// address needs --ca (the CA of the server's certificate)")
        }
        None => Channel::from_shared(conn.addr.clone())?,
    };
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to {}", conn.addr))?;
    let bearer = Bearer {
        authorization: token.map(|t| format!("Bearer {t}").parse()).transpose()?,
        purpose: conn.purpose.parse().ok(),
    };
    Ok((channel, bearer))
}

/// The client's TLS settings, when --ca is given: the server is verified against that
/// CA, and --cert/--key (if given) are presented as the client's identity.
fn client_tls(conn: &Connection) -> anyhow::Result<Option<ClientTlsConfig>> {
    let Some(ca) = &conn.ca else {
        return Ok(None);
    };
    let read =
        |path: &Path| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let (Some(cert), Some(key)) = (&conn.cert, &conn.key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}

fn kind(k: KindArg) -> i32 {
    match k {
        KindArg::Bank => proto::AccountKind::BankAccount,
        KindArg::Ewallet => proto::AccountKind::Ewallet,
        KindArg::MobileMoney => proto::AccountKind::MobileMoney,
    }
    .into()
}

fn method(m: MethodArg) -> i32 {
    match m {
        MethodArg::IssuerConfirmed => proto::VerificationMethod::IssuerConfirmed,
        MethodArg::NameMatch => proto::VerificationMethod::NameMatch,
        MethodArg::VneidDeclared => proto::VerificationMethod::VneidDeclared,
        MethodArg::InPerson => proto::VerificationMethod::InPerson,
    }
    .into()
}

fn key(k: Option<Uuid>) -> String {
    k.unwrap_or_else(Uuid::new_v4).to_string()
}

/// One line per account: what an operator needs to read and to paste into the next
/// command.
fn print_account(a: &proto::Account) {
    let status = proto::AccountStatus::try_from(a.status)
        .map(|s| s.as_str_name())
        .unwrap_or("?");
    let kind = proto::AccountKind::try_from(a.kind)
        .map(|k| k.as_str_name())
        .unwrap_or("?");
    println!(
        "account {}  citizen {}  {} {} {}  {}  version {}",
        a.account_id, a.citizen_id, kind, a.provider_code, a.account_ref, status, a.version
    );
}

fn status_error(e: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt;
    let details = e.get_error_details();
    let reason = details
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default();
    let fields: Vec<String> = details
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    anyhow::anyhow!(
        "{:?}: {} [reason {reason}{}]",
        e.code(),
        e.message(),
        if fields.is_empty() {
            String::new()
        } else {
            format!(", field {}", fields.join(","))
        }
    )
}

async fn client(cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Link {
            conn,
            citizen,
            kind: k,
            provider,
            account_ref,
            holder,
            verify,
            evidence,
            idempotency_key,
        } => {
            let (mut registry, _) = connect(&conn).await?;
            let verification = verify.map(|m| proto::Verification {
                method: method(m),
                evidence_ref: evidence.unwrap_or_default(),
                ..Default::default()
            });
            let r = registry
                .link_account(proto::LinkAccountRequest {
                    idempotency_key: key(idempotency_key),
                    citizen_id: citizen,
                    kind: kind(k),
                    provider_code: provider,
                    account_ref,
                    holder_name: holder.unwrap_or_default(),
                    verification,
                    reason: "linked from the command line".into(),
                })
                .await
                .map_err(status_error)?;
            r.into_inner().account.iter().for_each(print_account);
        }
        ClientCommand::Verify {
            conn,
            account,
            method: m,
            evidence,
            holder,
            idempotency_key,
        } => {
            let (mut registry, _) = connect(&conn).await?;
            let r = registry
                .verify_account(proto::VerifyAccountRequest {
                    idempotency_key: key(idempotency_key),
                    account_id: account,
                    expected_version: None,
                    verification: Some(proto::Verification {
                        method: method(m),
                        evidence_ref: evidence,
                        ..Default::default()
                    }),
                    holder_name: holder.unwrap_or_default(),
                    reason: "verified from the command line".into(),
                })
                .await
                .map_err(status_error)?;
            r.into_inner().account.iter().for_each(print_account);
        }
        ClientCommand::SetDefault {
            conn,
            citizen,
            account,
            program,
            idempotency_key,
        } => {
            let (mut registry, _) = connect(&conn).await?;
            let r = registry
                .set_default_account(proto::SetDefaultAccountRequest {
                    idempotency_key: key(idempotency_key),
                    citizen_id: citizen,
                    account_id: account,
                    program_code: program,
                    expected_version: None,
                    reason: "set from the command line".into(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let program = if r.program_code.is_empty() {
                "default".to_owned()
            } else {
                r.program_code
            };
            print!("{program} account now: ");
            r.account.iter().for_each(print_account);
        }
        ClientCommand::Change {
            conn,
            action,
            account,
            reason,
            idempotency_key,
        } => {
            let (mut registry, _) = connect(&conn).await?;
            let (idempotency_key, account_id) = (key(idempotency_key), account);
            let r = match action {
                ChangeArg::Reject => registry
                    .reject_account(proto::RejectAccountRequest {
                        idempotency_key,
                        account_id,
                        expected_version: None,
                        reason,
                    })
                    .await
                    .map(|r| r.into_inner().account),
                ChangeArg::Suspend => registry
                    .suspend_account(proto::SuspendAccountRequest {
                        idempotency_key,
                        account_id,
                        expected_version: None,
                        reason,
                    })
                    .await
                    .map(|r| r.into_inner().account),
                ChangeArg::Reinstate => registry
                    .reinstate_account(proto::ReinstateAccountRequest {
                        idempotency_key,
                        account_id,
                        expected_version: None,
                        reason,
                    })
                    .await
                    .map(|r| r.into_inner().account),
                ChangeArg::Close => registry
                    .close_account(proto::CloseAccountRequest {
                        idempotency_key,
                        account_id,
                        expected_version: None,
                        reason,
                    })
                    .await
                    .map(|r| r.into_inner().account),
            };
            r.map_err(status_error)?.iter().for_each(print_account);
        }
        ClientCommand::Digest { conn, province } => {
            let (channel, bearer) = connect_channel(&conn).await?;
            let d = crate::proto::change_feed_client::ChangeFeedClient::with_interceptor(
                channel, bearer,
            )
            .get_sync_digest(proto::GetSyncDigestRequest {
                province_code: province,
            })
            .await
            .map_err(status_error)?
            .into_inner();
            let scope = if d.province_code.is_empty() {
                "all citizens".to_owned()
            } else {
                format!("province {}", d.province_code)
            };
            println!(
                "{scope}: {} live routes, digest {} ({}) at feed position {}",
                d.routes,
                hex::encode(&d.digest),
                d.algorithm,
                d.position
            );
        }
        ClientCommand::Tail {
            conn,
            after,
            consumer,
            types,
            payload,
        } => {
            let (channel, bearer) = connect_channel(&conn).await?;
            let mut feed = crate::proto::change_feed_client::ChangeFeedClient::with_interceptor(
                channel, bearer,
            );
            let after = match after {
                Some(a) => a,
                None => {
                    feed.get_position(proto::GetPositionRequest {
                        consumer: consumer.clone(),
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner()
                    .head
                }
            };
            let mut events = feed
                .subscribe(proto::SubscribeRequest {
                    after_position: after,
                    consumer,
                    event_types: types,
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            eprintln!("following the change feed after position {after} (Ctrl-C to stop)");
            while let Some(e) = events.message().await.map_err(status_error)? {
                let at = e
                    .occurred_at
                    .as_ref()
                    .and_then(|t| timestamp_in("occurred_at", t).ok())
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default();
                println!(
                    "{:>10} {at} {:<26} citizen {} account {} by {}: {}",
                    e.position,
                    e.event_type,
                    crate::domain::mask::mask_citizen_id(&e.citizen_id),
                    if e.account_id.is_empty() {
                        "-"
                    } else {
                        &e.account_id
                    },
                    e.actor,
                    e.reason
                );
                if payload {
                    println!("           {}", e.payload_json);
                }
            }
        }
        ClientCommand::Resolve {
            conn,
            citizen,
            file,
            out,
            program,
            as_of,
            exists_only,
        } => {
            let (_, mut resolver) = connect(&conn).await?;
            if let (Some(file), Some(out)) = (file, out) {
                let started = std::time::Instant::now();
                let n = crate::bulk::resolve_file(resolver, &file, &out, &program, exists_only)
                    .await
                    .map_err(|e| match e.downcast::<tonic::Status>() {
                        Ok(s) => status_error(s),
                        Err(e) => e,
                    })?;
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "{n} ids resolved in {secs:.1} s ({:.0}/s); payroll written to {}",
                    n as f64 / secs.max(1e-9),
                    out.display()
                );
                return Ok(());
            }
            let citizen = citizen.unwrap_or_default();
            let as_of = match as_of {
                Some(s) => {
                    let t = crate::domain::Timestamp::parse_rfc3339(&s).ok_or_else(|| {
                        anyhow::anyhow!("--as-of must be RFC 3339, e.g. 2026-05-01T00:00:00Z")
                    })?;
                    Some(crate::grpc::convert::timestamp_out(t))
                }
                None => None,
            };
            let scope = if exists_only {
                proto::ResolveScope::ExistsOnly
            } else {
                proto::ResolveScope::Details
            };
            let r = resolver
                .resolve(proto::ResolveRequest {
                    citizen_id: citizen,
                    program_code: program,
                    as_of,
                    scope: scope.into(),
                    purpose: conn.purpose.clone(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let outcome = proto::ResolveOutcome::try_from(r.outcome)
                .map(|o| o.as_str_name())
                .unwrap_or("?");
            println!("outcome: {outcome}");
            if let Some(a) = &r.account {
                print!("pay into: ");
                print_account(a);
            }
            if r.cooling_off {
                let until = r
                    .cooling_off_until
                    .as_ref()
                    .and_then(|t| timestamp_in("cooling_off_until", t).ok())
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default();
                println!("cooling off: a recent change takes effect at {until}");
            }
        }
        ClientCommand::List {
            conn,
            citizen,
            include_closed,
        } => {
            let (mut registry, _) = connect(&conn).await?;
            let r = registry
                .list_citizen_accounts(proto::ListCitizenAccountsRequest {
                    citizen_id: citizen,
                    include_closed,
                    purpose: conn.purpose.clone(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            r.accounts.iter().for_each(print_account);
            for p in &r.preferences {
                let program = if p.program_code.is_empty() {
                    "default"
                } else {
                    &p.program_code
                };
                println!("preference {program} -> account {}", p.account_id);
            }
        }
        ClientCommand::History { conn, account } => {
            let (mut registry, _) = connect(&conn).await?;
            let mut page_token = String::new();
            loop {
                let r = registry
                    .get_account_history(proto::GetAccountHistoryRequest {
                        account_id: account.clone(),
                        page_size: 100,
                        page_token,
                        purpose: conn.purpose.clone(),
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                for e in &r.entries {
                    let at = e
                        .valid_from
                        .as_ref()
                        .and_then(|t| timestamp_in("valid_from", t).ok())
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default();
                    print!("{at}  {:<10} by {:<12} ", e.change, e.actor);
                    e.account.iter().for_each(print_account);
                }
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
        }
    }
    Ok(())
}
