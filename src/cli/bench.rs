//! `bench`: the load generator (`crate::tools::loadgen`) against a running registry,
//! with the baselines that the benchmark ratios are measured against.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use tonic::transport::Channel;

use crate::client::Credentials;
use crate::proto::account_registry_service_client::AccountRegistryServiceClient;
use crate::proto::payout_resolver_service_client::PayoutResolverServiceClient;

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
    /// Records on the sync stream (sync-accounts, sync-citizens) or copied (copy-*).
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// resolve: first resolve every id once by unary Resolve at concurrency 32 (not
    /// measured), so that the run measures a warm resolution cache.
    #[arg(long)]
    pub warm: bool,
    /// resolve: the server's metrics listener (host:port); the run then prints the
    /// resolution cache's hits, misses and hit ratio over the measured calls. feed-lag:
    /// the run also prints the server's commit-to-numbered wait of unary writes.
    #[arg(long)]
    pub metrics_addr: Option<String>,
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
    /// batch-resolve: the program resolved for.
    #[arg(long, default_value = "")]
    pub program: String,
    /// batch-resolve: after a plain pass, a second pass over the same ids reserving the
    /// payments of --program for this period (use a fresh one, or the pass measures
    /// re-runs that find their own reservations), and the ratio of the two rates.
    #[arg(long, default_value = "", requires = "program")]
    pub reserve_period: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchScenario {
    /// Unary Resolve.
    Resolve,
    /// One BatchResolve stream of --ids ids.
    BatchResolve,
    /// Unary LinkAccount of new citizens, verified at link time (the single-write path).
    Link,
    /// One SyncAccounts stream of --records new records.
    SyncAccounts,
    /// One SyncCitizens stream of --records records of new citizens.
    SyncCitizens,
    /// grpc.health.v1 Health/Check: the transport's ceiling.
    Health,
    /// Baseline: the resolver's lookup straight on PostgreSQL, --keys ids per `= ANY`.
    RawAny,
    /// Baseline: the citizens' primary key alone on PostgreSQL, --keys ids per `= ANY`.
    PkAny,
    /// Baseline: BatchResolve's read straight on PostgreSQL (the resolution read model's
    /// rows), --keys ids per `= ANY`.
    ModelAny,
    /// Baseline for sync-accounts: the same --records rows (same --demo-seed) by one COPY
    /// into a bare table on --database-url (dropped afterwards).
    CopyAccounts,
    /// Baseline for sync-citizens: the same --records rows (same --demo-seed) by one COPY
    /// into a bare table on --database-url (dropped afterwards).
    CopyCitizens,
    /// Change feed: read every event from position 0 to the head (catch-up throughput).
    FeedCatchup,
    /// Change feed: --rate writes per second for --seconds while a subscriber measures
    /// each event's lag, from the write's answer and from its send.
    FeedLag,
    /// The JetStream relay: publish the whole feed of --database-url into a new stream on
    /// --nats-url (deleted afterwards), events/s.
    RelayCatchup,
}

/// Runs a load-generator scenario and prints its figures.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    use crate::tools::loadgen as bench;
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
    let bearer =
        || -> anyhow::Result<Credentials> { Credentials::new(Some(&token()?), "benchmark") };
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
                let spec = crate::tools::demo::DemoSpec {
                    citizens: n,
                    seed: args.demo_seed,
                };
                let sample: Vec<String> = (0..n.min(200_000))
                    .map(|_| crate::tools::demo::citizen_id_at(&spec, rand::random_range(0..n)))
                    .collect();
                Ok::<_, anyhow::Error>(sample)
            }
            None => {
                let mut registry = AccountRegistryServiceClient::new(channel);
                bench::seed(&mut registry, &token()?, args.citizens, 0).await
            }
        }
    };
    let rss = args.server_pid.map(bench::RssSampler::start);
    match args.scenario {
        BenchScenario::Resolve => {
            let ids = Arc::new(ids(channel.clone()).await?);
            if args.warm {
                // Unary reads, each id once: BatchResolve reads the cache but does not
                // fill it.
                bench::resolve(
                    channel.clone(),
                    &token()?,
                    ids.clone(),
                    32,
                    bench::Until::Each(ids.len()),
                )
                .await?
                .print("warm-up resolve (each id once)", 32);
            }
            let before = match &args.metrics_addr {
                Some(addr) => Some(bench::cache_counters(addr).await?),
                None => None,
            };
            bench::resolve(
                channel,
                &token()?,
                ids,
                args.concurrency,
                bench::Until::Elapsed(duration),
            )
            .await?
            .print("resolve", args.concurrency);
            if let (Some(addr), Some(before)) = (&args.metrics_addr, before) {
                let after = bench::cache_counters(addr).await?;
                let (hits, misses) = (after.0 - before.0, after.1 - before.1);
                println!(
                    "resolution cache: {hits} hits, {misses} misses: hit ratio {:.3}",
                    hits / (hits + misses).max(1.0)
                );
            }
        }
        BenchScenario::BatchResolve => {
            let spec = crate::tools::demo::DemoSpec {
                citizens: args.demo_citizens.unwrap_or(0),
                seed: args.demo_seed,
            };
            let population = args
                .demo_citizens
                .context("batch-resolve needs --demo-citizens (the population demo-data loaded)")?;
            let client = PayoutResolverServiceClient::with_interceptor(channel, bearer()?)
                .max_decoding_message_size(64 << 20);
            let id_at = move |i: u64| {
                crate::tools::demo::citizen_id_at(
                    &spec,
                    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) % population,
                )
            };
            let plain =
                bench::batch_resolve(client.clone(), args.ids, &args.program, "", id_at).await?;
            plain.print("batch-resolve (per id)", 1);
            if !args.reserve_period.is_empty() {
                let reserved = bench::batch_resolve(
                    client,
                    args.ids,
                    &args.program,
                    &args.reserve_period,
                    id_at,
                )
                .await?;
                reserved.print(
                    &format!("batch-resolve reserving {} (per id)", args.reserve_period),
                    1,
                );
                let rate = |f: &bench::Figures| f.calls as f64 / f.elapsed.as_secs_f64();
                println!(
                    "batch-resolve with reservations / without: {:.2}",
                    rate(&reserved) / rate(&plain)
                );
            }
        }
        BenchScenario::SyncAccounts | BenchScenario::SyncCitizens => {
            let client =
                crate::proto::population_sync_service_client::PopulationSyncServiceClient::with_interceptor(
                    channel,
                    bearer()?,
                );
            // A fresh population each run: records already synced would be answered from
            // the ledger (or stale) instead of applied.
            let seed = rand::random();
            let (name, figures) = if args.scenario == BenchScenario::SyncAccounts {
                (
                    "sync-accounts",
                    bench::sync_accounts(client, args.records, seed).await?,
                )
            } else {
                (
                    "sync-citizens",
                    bench::sync_citizens(client, args.records, seed).await?,
                )
            };
            figures.print(
                &format!("{name} (per record; errors = rejected records)"),
                1,
            );
        }
        BenchScenario::Link => {
            bench::link(channel, &token()?, args.concurrency, duration)
                .await?
                .print("link (verified at link time)", args.concurrency);
        }
        BenchScenario::Health => {
            bench::health(channel, args.concurrency, duration)
                .await?
                .print("health", args.concurrency);
        }
        BenchScenario::FeedCatchup => {
            let client = crate::proto::change_feed_service_client::ChangeFeedServiceClient::with_interceptor(
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
            use crate::telemetry::metrics::FEED_NUMBERING_WAIT_SECONDS as WAIT;
            let before = match &args.metrics_addr {
                Some(addr) => Some(bench::histogram_buckets(addr, WAIT).await?),
                None => None,
            };
            let figures = bench::feed_lag(channel, &token()?, args.rate, duration).await?;
            figures.print("feed-lag (per event: the write's answer to receipt)", 1);
            if let (Some(addr), Some(before)) = (&args.metrics_addr, before) {
                // Every unary write in the server over the run, not only this run's.
                let after = bench::histogram_buckets(addr, WAIT).await?;
                let (writes, p50) = bench::bucket_quantile(&before, &after, 0.5);
                let (_, p99) = bench::bucket_quantile(&before, &after, 0.99);
                let ms = |b: Option<f64>| b.map_or("-".into(), |s| format!("{:.0}", s * 1e3));
                println!(
                    "commit to numbered (server, {writes} unary writes, histogram bucket bounds): \
                     p50 <= {} ms, p99 <= {} ms",
                    ms(p50),
                    ms(p99)
                );
            }
        }
        BenchScenario::RelayCatchup => {
            let url = args
                .database_url
                .clone()
                .context("relay-catchup needs --database-url or DATABASE_URL")?;
            let settings = crate::config::Settings {
                database_url: crate::config::Secret::new(url),
                ..crate::config::Settings::default()
            };
            let host = crate::app::FeedHost::build(&settings).await?;
            let (events, elapsed) =
                bench::relay_catchup(host.store.clone(), &args.nats_url).await?;
            println!(
                "relay-catchup: {events} events in {:.1} s: {:.0} events/s",
                elapsed.as_secs_f64(),
                events as f64 / elapsed.as_secs_f64()
            );
        }
        BenchScenario::RawAny | BenchScenario::PkAny | BenchScenario::ModelAny => {
            let (name, lookup) = match args.scenario {
                BenchScenario::PkAny => ("pk-any", bench::Lookup::PrimaryKey),
                BenchScenario::ModelAny => ("model-any", bench::Lookup::ReadModel),
                _ => ("raw-any", bench::Lookup::ResolveJoin),
            };
            let url = args
                .database_url
                .clone()
                .with_context(|| format!("{name} needs --database-url or DATABASE_URL"))?;
            let ids = ids(channel).await?;
            let figures = bench::raw_any(
                &url,
                lookup,
                Arc::new(ids),
                args.keys,
                args.concurrency,
                duration,
            )
            .await?;
            figures.print(
                &format!("{name} ({} keys per select)", args.keys),
                args.concurrency,
            );
            println!(
                "{name}: {:.0} ids/s",
                figures.calls as f64 * args.keys as f64 / figures.elapsed.as_secs_f64()
            );
        }
        BenchScenario::CopyAccounts | BenchScenario::CopyCitizens => {
            let accounts = args.scenario == BenchScenario::CopyAccounts;
            let name = if accounts {
                "copy-accounts"
            } else {
                "copy-citizens"
            };
            let url = args
                .database_url
                .clone()
                .with_context(|| format!("{name} needs --database-url or DATABASE_URL"))?;
            let (rows, elapsed) = if accounts {
                bench::copy_accounts(&url, args.records, args.demo_seed).await?
            } else {
                bench::copy_citizens(&url, args.records, args.demo_seed).await?
            };
            println!(
                "{name}: {rows} rows in {:.2} s: {:.0} rows/s",
                elapsed.as_secs_f64(),
                rows as f64 / elapsed.as_secs_f64()
            );
        }
    }
    if let Some(rss) = rss {
        rss.finish().await;
    }
    Ok(())
}
