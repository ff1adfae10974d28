//! The load generator: drives a running registry over real gRPC and prints figures.
//!
//! Benchmarks are not tests: they print throughput and latency percentiles for a human
//! to compare (README, "Benchmarks"). Each scenario runs for a fixed time or count, bounded,
//! against the address it is given (loopback in every documented recipe).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::proto;
use crate::proto::account_registry_service_client::AccountRegistryServiceClient;
use crate::proto::payout_resolver_service_client::PayoutResolverServiceClient;
use tonic_health::pb::health_client::HealthClient;

/// What one run measured.
pub struct Figures {
    pub calls: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
}

impl Figures {
    pub fn print(&self, scenario: &str, concurrency: usize) {
        let us = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{scenario}: concurrency {concurrency}, {} calls, {} errors in {:.1} s: {:.0} calls/s; \
             latency ms p50 {:.2} p95 {:.2} p99 {:.2}",
            self.calls,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.calls as f64 / self.elapsed.as_secs_f64(),
            us(0.50),
            us(0.95),
            us(0.99),
        );
    }
}

/// A LinkAccount of a BIDV account, confirmed by its issuer at link time (three events:
/// linked, verified, default changed).
fn verified_link(
    citizen_id: String,
    account_ref: String,
    reason: &str,
) -> proto::LinkAccountRequest {
    proto::LinkAccountRequest {
        idempotency_key: Uuid::new_v4().to_string(),
        citizen_id,
        kind: proto::AccountKind::BankAccount.into(),
        provider_code: "970418".into(),
        account_ref,
        verification: Some(proto::Verification {
            method: proto::VerificationMethod::IssuerConfirmed.into(),
            evidence_ref: "bench".into(),
            ..Default::default()
        }),
        reason: reason.into(),
        ..Default::default()
    }
}

/// Links and verifies `n` synthetic citizens' accounts through the API, returning their
/// ids (Hà Nội, born 1985, serials from `first_serial`).
pub async fn seed(
    registry: &mut AccountRegistryServiceClient<tonic::transport::Channel>,
    token: &str,
    n: usize,
    first_serial: usize,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let citizen = format!("001085{:06}", first_serial + i);
        let mut request = tonic::Request::new(verified_link(
            citizen.clone(),
            format!("21{:010}", first_serial + i),
            "benchmark seed",
        ));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        match registry.link_account(request).await {
            Ok(_) => {}
            // Already seeded by an earlier run: fine.
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {}
            Err(s) => return Err(anyhow::anyhow!("seeding failed: {s}")),
        }
        ids.push(citizen);
    }
    Ok(ids)
}

/// How long a closed-loop run lasts.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// For this long.
    Elapsed(Duration),
    /// Until calls `0..n` have each been made once.
    Each(usize),
}

/// Unary Resolve of ids from `ids`, `concurrency` calls in flight, until `until`: for a
/// time (each caller from its own place in the list), or each id once (a warm-up: the
/// resolution cache is filled by unary reads only).
pub async fn resolve(
    channel: tonic::transport::Channel,
    token: &str,
    ids: Arc<Vec<String>>,
    concurrency: usize,
    until: Until,
) -> anyhow::Result<Figures> {
    let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse()?;
    run(concurrency, until, move |i| {
        let mut client = PayoutResolverServiceClient::new(channel.clone());
        let citizen = ids[i % ids.len()].clone();
        let auth = auth.clone();
        async move {
            let mut request = tonic::Request::new(proto::ResolveRequest {
                citizen_id: citizen,
                purpose: "benchmark".into(),
                ..Default::default()
            });
            request.metadata_mut().insert("authorization", auth);
            client.resolve(request).await.map(|_| ())
        }
    })
    .await
}

/// Unary LinkAccount of citizens new to the registry, each account confirmed by its
/// issuer at link time (three events in one transaction: linked, verified, default
/// changed), `concurrency` calls in flight, for `duration`: the single-write path. Ids are
/// HCMC men born in the 1900s (`0791` + year + serial) from a random base, so runs do not
/// collide; a refusal counts as an error.
pub async fn link(
    channel: tonic::transport::Channel,
    token: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse()?;
    let base = (Uuid::new_v4().as_u128() % 90_000_000) as u64;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(base));
    run(concurrency, Until::Elapsed(duration), move |_| {
        let mut client = AccountRegistryServiceClient::new(channel.clone());
        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let auth = auth.clone();
        async move {
            let mut request = tonic::Request::new(verified_link(
                format!("0791{n:08}"),
                format!("31{n:010}"),
                "benchmark link",
            ));
            request.metadata_mut().insert("authorization", auth);
            client.link_account(request).await.map(|_| ())
        }
    })
    .await
}

/// The server's metrics, scraped from its metrics listener at `addr` (host:port) over
/// plain HTTP/1.0: the exposition text.
async fn scrape(addr: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}

/// The value of the series whose line starts with `series` (name and labels), or 0.
fn series_value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// The resolution cache's hit and miss counters, scraped from the server's metrics
/// listener at `addr` (host:port).
pub async fn cache_counters(addr: &str) -> anyhow::Result<(f64, f64)> {
    let body = scrape(addr).await?;
    Ok((
        series_value(&body, crate::telemetry::metrics::RESOLUTION_CACHE_HITS),
        series_value(&body, crate::telemetry::metrics::RESOLUTION_CACHE_MISSES),
    ))
}

/// A histogram's cumulative bucket counts (upper bound in seconds, count), scraped from
/// the server's metrics listener at `addr`.
pub async fn histogram_buckets(addr: &str, name: &str) -> anyhow::Result<Vec<(f64, f64)>> {
    let body = scrape(addr).await?;
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = body
        .lines()
        .filter_map(|l| {
            let (le, count) = l.strip_prefix(&prefix)?.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(buckets)
}

/// From two scrapes of one histogram: the observations between them, and the smallest
/// bucket bound (seconds) that holds at least `quantile` of them (`None`: no
/// observations).
pub fn bucket_quantile(
    before: &[(f64, f64)],
    after: &[(f64, f64)],
    quantile: f64,
) -> (f64, Option<f64>) {
    let earlier = |le: f64| {
        before
            .iter()
            .find(|(b, _)| *b == le)
            .map_or(0.0, |(_, c)| *c)
    };
    let deltas: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| (*le, c - earlier(*le)))
        .collect();
    let total = deltas.last().map_or(0.0, |(_, c)| *c);
    let bound = deltas
        .iter()
        .find(|(_, c)| total > 0.0 && *c >= quantile * total)
        .map(|(le, _)| *le);
    (total, bound)
}

/// grpc.health.v1 Health/Check: the transport's ceiling on this machine.
pub async fn health(
    channel: tonic::transport::Channel,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    run(concurrency, Until::Elapsed(duration), move |_| {
        let mut client = HealthClient::new(channel.clone());
        async move {
            client
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .map(|_| ())
        }
    })
    .await
}

/// Runs `call` from `concurrency` workers until `duration` has passed.
async fn run<F, Fut>(concurrency: usize, until: Until, call: F) -> anyhow::Result<Figures>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    let call = Arc::new(call);
    let total = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (call, total, errors, next) =
            (call.clone(), total.clone(), errors.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new(3).expect("histogram");
            let mut own = w * 7919;
            loop {
                let i = match until {
                    Until::Elapsed(d) if started.elapsed() < d => own,
                    Until::Each(n) => match next.fetch_add(1, Ordering::Relaxed) {
                        i if i < n => i,
                        _ => break,
                    },
                    Until::Elapsed(_) => break,
                };
                own += 1;
                let t = Instant::now();
                if call(i).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                let _ = local.record(t.elapsed().as_micros() as u64);
            }
            let _ = total.lock().await.add(&local);
        }));
    }
    for w in workers {
        w.await?;
    }
    let latency = Arc::try_unwrap(total)
        .map_err(|_| anyhow::anyhow!("workers still hold the histogram"))?
        .into_inner();
    Ok(Figures {
        calls: latency.len(),
        errors: errors.load(std::sync::atomic::Ordering::Relaxed),
        elapsed: started.elapsed(),
        latency,
    })
}

/// The server's resident set size, sampled every 100 ms while a scenario runs (Linux:
/// `/proc/<pid>/status`).
pub struct RssSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(u64, u64)>,
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let first = rss_kib(pid).unwrap_or(0);
            let mut max = first;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                max = max.max(rss_kib(pid).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (first, max)
        });
        RssSampler { stop, task }
    }

    /// Stops sampling and prints the RSS at the start and its peak.
    pub async fn finish(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Ok((first, max)) = self.task.await {
            println!(
                "server RSS: {:.1} MiB at start, {:.1} MiB peak",
                first as f64 / 1024.0,
                max as f64 / 1024.0
            );
        }
    }
}

/// Sends `n` BatchResolve requests for ids chosen by `id_at` on one stream and measures
/// ids/s and each id's latency (request sent to answer received).
pub async fn batch_resolve<C>(
    mut client: PayoutResolverServiceClient<C>,
    n: u64,
    program: &str,
    reservation_period: &str,
    id_at: impl Fn(u64) -> String + Send + 'static,
) -> anyhow::Result<Figures>
where
    C: tonic::client::GrpcService<tonic::body::Body> + Send,
    C::Error: Into<tonic::codegen::StdError>,
    C::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <C::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let sent: Arc<std::sync::Mutex<std::collections::VecDeque<Instant>>> = Arc::default();
    let queue = sent.clone();
    let (program, reservation_period) = (program.to_owned(), reservation_period.to_owned());
    let requests = futures::stream::iter(0..n).map(move |i| {
        queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(Instant::now());
        proto::BatchResolveRequest {
            correlation_id: i.to_string(),
            citizen_id: id_at(i),
            program_code: program.clone(),
            reservation_period: reservation_period.clone(),
            purpose: if i == 0 {
                "benchmark".into()
            } else {
                String::new()
            },
            ..Default::default()
        }
    });
    let started = Instant::now();
    let mut answers = client.batch_resolve(requests).await?.into_inner();
    let mut latency = Histogram::<u64>::new(3)?;
    let mut errors = 0u64;
    while let Some(answer) = answers.message().await? {
        let t = sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
            .unwrap_or(started);
        let _ = latency.record(t.elapsed().as_micros() as u64);
        if answer.error.is_some() {
            errors += 1;
        }
    }
    Ok(Figures {
        calls: latency.len(),
        errors,
        elapsed: started.elapsed(),
        latency,
    })
}

/// Streams `n` declared-account records (new record ids, so each is applied) on one
/// SyncAccounts stream; the latency is a record's time from sent to acknowledged.
pub async fn sync_accounts<C>(
    mut client: crate::proto::population_sync_service_client::PopulationSyncServiceClient<C>,
    n: u64,
    seed: u64,
) -> anyhow::Result<Figures>
where
    C: tonic::client::GrpcService<tonic::body::Body> + Send,
    C::Error: Into<tonic::codegen::StdError>,
    C::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <C::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let spec = unbounded(seed);
    let run = Uuid::new_v4().simple().to_string();
    let sent = SentAt::default();
    let queue = sent.clone();
    let requests = futures::stream::iter(0..)
        .flat_map(move |i| futures::stream::iter(super::demo::accounts_at(&spec, i)))
        .take(n as usize)
        .map(move |mut record| {
            record.record_id = format!("bench-{run}-{}", record.record_id);
            queue.sent();
            proto::SyncAccountsRequest {
                record: Some(record),
            }
        });
    let started = Instant::now();
    let acks = client.sync_accounts(requests).await?.into_inner();
    sent.acknowledged(
        acks.map(|a| a.map(|a| a.result.unwrap_or_default())),
        started,
    )
    .await
}

/// Streams `n` citizen records of new citizens (a fresh population per seed) on one
/// SyncCitizens stream; the latency is a record's time from sent to acknowledged.
pub async fn sync_citizens<C>(
    mut client: crate::proto::population_sync_service_client::PopulationSyncServiceClient<C>,
    n: u64,
    seed: u64,
) -> anyhow::Result<Figures>
where
    C: tonic::client::GrpcService<tonic::body::Body> + Send,
    C::Error: Into<tonic::codegen::StdError>,
    C::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <C::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let spec = unbounded(seed);
    let run = Uuid::new_v4().simple().to_string();
    let sent = SentAt::default();
    let queue = sent.clone();
    let requests = futures::stream::iter(0..n).map(move |i| {
        let mut record = super::demo::citizen_at(&spec, i);
        record.record_id = format!("bench-{run}-{}", record.record_id);
        queue.sent();
        proto::SyncCitizensRequest {
            record: Some(record),
        }
    });
    let started = Instant::now();
    let acks = client.sync_citizens(requests).await?.into_inner();
    sent.acknowledged(
        acks.map(|a| a.map(|a| a.result.unwrap_or_default())),
        started,
    )
    .await
}

/// A demo population without a size limit, from `seed`.
fn unbounded(seed: u64) -> super::demo::DemoSpec {
    super::demo::DemoSpec {
        citizens: u64::MAX / 2,
        seed,
    }
}

/// When each record still unacknowledged on a sync stream was sent, oldest first.
#[derive(Clone, Default)]
struct SentAt(Arc<std::sync::Mutex<std::collections::VecDeque<Instant>>>);

impl SentAt {
    fn sent(&self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(Instant::now());
    }

    /// Reads a sync stream's batch results to its end: each committed record's latency
    /// is from its sending to the acknowledgement that counts it.
    async fn acknowledged(
        &self,
        acks: impl futures::Stream<Item = Result<proto::SyncBatchResult, tonic::Status>>,
        started: Instant,
    ) -> anyhow::Result<Figures> {
        let mut acks = std::pin::pin!(acks);
        let mut latency = Histogram::<u64>::new(3)?;
        let mut committed = 0u64;
        let mut rejected = 0u64;
        while let Some(ack) = acks.next().await {
            let ack = ack?;
            let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
            for _ in committed..ack.records_committed {
                if let Some(t) = q.pop_front() {
                    let _ = latency.record(t.elapsed().as_micros() as u64);
                }
            }
            committed = ack.records_committed;
            rejected = ack.rejected;
        }
        Ok(Figures {
            calls: latency.len(),
            errors: rejected,
            elapsed: started.elapsed(),
            latency,
        })
    }
}

/// What a baseline `= ANY` select reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The resolver's lookup: citizens, preferences and accounts twice.
    ResolveJoin,
    /// The citizens' primary key alone: PostgreSQL's ceiling for a keyed batch read.
    PrimaryKey,
    /// What BatchResolve reads: the resolution read model's rows by primary key.
    ReadModel,
}

impl Lookup {
    fn sql(self) -> &'static str {
        match self {
            Lookup::ResolveJoin => {
                "SELECT c.citizen_id, c.status, p.program_code, p.since, a.account_id, \
                 a.status, a.account_ref, b.account_id, b.status \
                 FROM citizens c LEFT JOIN preferences p ON p.citizen_id = c.citizen_id \
                 LEFT JOIN accounts a ON a.account_id = p.account_id \
                 LEFT JOIN accounts b ON b.account_id = p.previous_account_id \
                 WHERE c.citizen_id = ANY($1)"
            }
            Lookup::PrimaryKey => "SELECT citizen_id FROM citizens WHERE citizen_id = ANY($1)",
            Lookup::ReadModel => {
                "SELECT citizen_id, status, preferences, inputs FROM resolution_inputs \
                 WHERE citizen_id = ANY($1)"
            }
        }
    }
}

/// The baselines for BatchResolve: `lookup` straight over sqlx, `keys` ids per
/// `= ANY($1)` select, `concurrency` connections, for `duration`. Answers the latency of
/// each select (ids per second = selects x keys / elapsed).
pub async fn raw_any(
    database_url: &str,
    lookup: Lookup,
    ids: Arc<Vec<String>>,
    keys: usize,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    // Connected as the registry connects (`store::postgres_options`), so that both sides
    // of a ratio pay the same for the link.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(concurrency as u32)
        .connect_with(crate::store::postgres_options(database_url).await?)
        .await?;
    let figures = run(concurrency, Until::Elapsed(duration), move |i| {
        let pool = pool.clone();
        let ids = ids.clone();
        async move {
            let batch: Vec<String> = (0..keys)
                .map(|k| ids[(i * keys + k * 7919) % ids.len()].clone())
                .collect();
            sqlx::query(lookup.sql())
                .bind(batch)
                .fetch_all(&pool)
                .await
                .map(|_| ())
                .map_err(|e| tonic::Status::internal(e.to_string()))
        }
    })
    .await?;
    Ok(figures)
}

/// The baseline for `sync_accounts`: the same `n` records (same `seed`) as CSV, by one
/// COPY into a bare table (dropped afterwards); answers the rows and the COPY's time.
pub async fn copy_accounts(
    database_url: &str,
    n: u64,
    seed: u64,
) -> anyhow::Result<(u64, Duration)> {
    let spec = unbounded(seed);
    let mut csv = Vec::with_capacity(n as usize * 96);
    {
        let mut w = ::csv::Writer::from_writer(&mut csv);
        for r in (0..)
            .flat_map(|i| super::demo::accounts_at(&spec, i))
            .take(n as usize)
        {
            w.write_record([
                r.record_id.as_str(),
                &r.version.to_string(),
                &r.citizen_id,
                r.kind().as_str_name(),
                &r.provider_code,
                &r.account_ref,
                &r.holder_name,
                r.verification_method().as_str_name(),
                if r.removed { "true" } else { "false" },
            ])?;
        }
        w.flush()?;
    }
    copy_csv(
        database_url,
        "record_id text, version bigint, citizen_id text, kind text, provider_code text, \
         account_ref text, holder_name text, verification_method text, removed boolean",
        &csv,
    )
    .await
}

/// The baseline for `sync_citizens`: the same `n` records (same `seed`) as CSV, by one
/// COPY into a bare table (dropped afterwards); answers the rows and the COPY's time.
pub async fn copy_citizens(
    database_url: &str,
    n: u64,
    seed: u64,
) -> anyhow::Result<(u64, Duration)> {
    let spec = unbounded(seed);
    let date = |d: &Option<proto::google_type::Date>| {
        d.as_ref()
            .map(|d| format!("{:04}-{:02}-{:02}", d.year, d.month, d.day))
            .unwrap_or_default()
    };
    let mut csv = Vec::with_capacity(n as usize * 96);
    {
        let mut w = ::csv::Writer::from_writer(&mut csv);
        for r in (0..n).map(|i| super::demo::citizen_at(&spec, i)) {
            w.write_record([
                r.record_id.as_str(),
                &r.version.to_string(),
                &r.citizen_id,
                &r.full_name,
                &date(&r.date_of_birth),
                r.status().as_str_name(),
                &date(&r.date_of_death),
                &r.legacy_ids.join(" "),
            ])?;
        }
        w.flush()?;
    }
    copy_csv(
        database_url,
        "record_id text, version bigint, citizen_id text, full_name text, date_of_birth text, \
         status text, date_of_death text, legacy_ids text",
        &csv,
    )
    .await
}

/// COPYs `csv` into a new table of `columns` on `database_url`, timed, and drops it.
async fn copy_csv(
    database_url: &str,
    columns: &str,
    csv: &[u8],
) -> anyhow::Result<(u64, Duration)> {
    use sqlx::Connection as _;
    let table = format!("bench_copy_{}", Uuid::new_v4().simple());
    let mut conn =
        sqlx::PgConnection::connect_with(&crate::store::postgres_options(database_url).await?)
            .await?;
    sqlx::query(&format!("CREATE TABLE {table} ({columns})"))
        .execute(&mut conn)
        .await?;
    let copied = async {
        let started = Instant::now();
        let mut copy = conn
            .copy_in_raw(&format!("COPY {table} FROM STDIN (FORMAT csv)"))
            .await?;
        for chunk in csv.chunks(1 << 20) {
            copy.send(chunk).await?;
        }
        let rows = copy.finish().await?;
        anyhow::Ok((rows, started.elapsed()))
    }
    .await;
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&mut conn)
        .await?;
    copied
}

/// Publishes the whole change feed of `store` into a new JetStream stream through
/// the relay, then deletes the stream and the relay's consumer position; answers the
/// events published and the time taken.
pub async fn relay_catchup(
    store: std::sync::Arc<dyn crate::store::Store>,
    nats_url: &str,
) -> anyhow::Result<(u64, Duration)> {
    use super::relay::{Relay, CLIENT_ID};
    let tag = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let settings = crate::config::RelaySettings {
        nats_url: crate::config::Secret::new(nats_url),
        stream: format!("BENCH_{tag}"),
        subject_prefix: format!("bench.{tag}"),
        consumer: format!("bench-{tag}"),
        ..Default::default()
    };
    let (stream, consumer) = (settings.stream.clone(), settings.consumer.clone());
    let mut relay = Relay::connect(store.clone(), settings).await?;
    let started = Instant::now();
    let result = async {
        relay.reconcile().await?;
        let mut events = 0;
        loop {
            match relay.catch_up_once().await? {
                0 => return anyhow::Ok(events),
                n => events += n,
            }
        }
    }
    .await;
    let elapsed = started.elapsed();
    // Leave nothing behind: the stream, and the position that would hold back retention.
    let client = async_nats::connect(nats_url).await?;
    async_nats::jetstream::new(client)
        .delete_stream(&stream)
        .await
        .map_err(|e| anyhow::anyhow!("deleting the bench stream {stream}: {e}"))?;
    store.delete_consumer(CLIENT_ID, &consumer).await?;
    Ok((result?, elapsed))
}

/// Reads the change feed from position 0 to the head as it was when the run started;
/// answers the events read and the time taken (the latency histogram holds nothing).
pub async fn feed_catchup<C>(
    mut client: crate::proto::change_feed_service_client::ChangeFeedServiceClient<C>,
) -> anyhow::Result<Figures>
where
    C: tonic::client::GrpcService<tonic::body::Body> + Send,
    C::Error: Into<tonic::codegen::StdError>,
    C::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <C::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let head = client
        .get_position(proto::GetPositionRequest::default())
        .await?
        .into_inner()
        .head;
    let started = Instant::now();
    let mut events = client
        .subscribe(proto::SubscribeRequest::default())
        .await?
        .into_inner();
    let mut n = 0u64;
    let mut latency = Histogram::<u64>::new(3)?;
    while n < head {
        match events.message().await? {
            Some(_) => n += 1,
            None => break,
        }
    }
    let _ = latency.record(started.elapsed().as_micros() as u64);
    Ok(Figures {
        calls: n,
        errors: 0,
        elapsed: started.elapsed(),
        latency,
    })
}

/// Writes `rate` changes per second (LinkAccount of new citizens, each verified at link
/// time: three events in one transaction) for `duration` while a subscriber reads the
/// live feed. The latency is from the moment the write's answer reached the writer to
/// the moment its last event reached the subscriber, zero when the event came first. The
/// answer waits for its event to be numbered (its consistency token), so this trails the
/// commit; the figures from the write's send and from the event's `occurred_at` (the
/// server's start of the write), printed beside it, bound commit-to-receipt from above.
pub async fn feed_lag(
    channel: tonic::transport::Channel,
    token: &str,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let bearer = crate::client::Credentials::new(Some(token), "benchmark")?;
    let mut feed =
        crate::proto::change_feed_service_client::ChangeFeedServiceClient::with_interceptor(
            channel.clone(),
            bearer.clone(),
        );
    let head = feed
        .get_position(proto::GetPositionRequest::default())
        .await?
        .into_inner()
        .head;
    let mut events = feed
        .subscribe(proto::SubscribeRequest {
            after_position: head,
            ..Default::default()
        })
        .await?
        .into_inner();
    let spec = super::demo::DemoSpec {
        citizens: u64::MAX / 2,
        seed: rand::random(),
    };
    // Per write: when it was sent and when its answer arrived.
    let committed: Arc<std::sync::Mutex<std::collections::HashMap<String, (Instant, Instant)>>> =
        Arc::default();
    let answered = committed.clone();
    // Account numbers unique to this run: earlier runs verified theirs.
    let run: u32 = rand::random_range(0..10_000);
    let writer = tokio::spawn(async move {
        let registry = AccountRegistryServiceClient::with_interceptor(channel, bearer);
        let started = Instant::now();
        let mut i = 0u64;
        let mut tasks = tokio::task::JoinSet::new();
        while started.elapsed() < duration {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
            let mut registry = registry.clone();
            let citizen = super::demo::citizen_id_at(&spec, i);
            let answered = answered.clone();
            tasks.spawn(async move {
                let key = citizen.clone();
                let sent = Instant::now();
                let done = registry
                    .link_account(verified_link(
                        citizen,
                        format!("3{run:04}{i:08}"),
                        "feed lag benchmark",
                    ))
                    .await;
                if done.is_ok() {
                    answered
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key, (sent, Instant::now()));
                }
            });
            i += 1;
        }
        while tasks.join_next().await.is_some() {}
        i
    });
    let mut latency = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    let deadline = started + duration + Duration::from_secs(5);
    // Receipts of each write's last event (DEFAULT_CHANGED), to match with its answer,
    // with the time since the event's `occurred_at` (the instant the server began the
    // write, on this machine's clock): the write's time in the server plus the feed's
    // lag, without the client's side of the call.
    let mut received: Vec<(String, Instant, Option<Duration>)> = Vec::new();
    loop {
        let next = tokio::time::timeout_at(deadline.into(), events.message()).await;
        let Ok(Ok(Some(e))) = next else { break };
        let Some(e) = e.event else { continue };
        if e.event_type() == proto::EventType::DefaultChanged {
            let since_occurred = e
                .occurred_at
                .and_then(|t| std::time::SystemTime::try_from(t).ok())
                .and_then(|t| t.elapsed().ok());
            received.push((e.citizen_id, Instant::now(), since_occurred));
        }
    }
    let writes = writer.await?;
    let committed = committed.lock().unwrap_or_else(|p| p.into_inner());
    // From the write's send: an upper bound of commit-to-receipt (it includes the write's
    // own time), where the answer, which waits for its event to be numbered, may come
    // after the subscriber already has it.
    let mut from_send = Histogram::<u64>::new(3)?;
    let mut from_occurred = Histogram::<u64>::new(3)?;
    // Only this run's writes: other writers' events (a bulk load running beside it) are
    // on the feed too.
    for (citizen, at, since_occurred) in &received {
        if let Some((sent, done)) = committed.get(citizen) {
            let _ = latency.record(at.saturating_duration_since(*done).as_micros() as u64);
            let _ = from_send.record(at.saturating_duration_since(*sent).as_micros() as u64);
            if let Some(lag) = since_occurred {
                let _ = from_occurred.record(lag.as_micros() as u64);
            }
        }
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "feed-lag: {writes} writes at {rate}/s requested, {} answered, {} last events received \
         (any writer's); \
         from the write's send to receipt: ms p50 {:.2} p95 {:.2} p99 {:.2}; from the event's \
         occurred_at to receipt: ms p50 {:.2} p95 {:.2} p99 {:.2}",
        committed.len(),
        received.len(),
        ms(&from_send, 0.50),
        ms(&from_send, 0.95),
        ms(&from_send, 0.99),
        ms(&from_occurred, 0.50),
        ms(&from_occurred, 0.95),
        ms(&from_occurred, 0.99)
    );
    Ok(Figures {
        calls: latency.len(),
        errors: 0,
        elapsed: started.elapsed(),
        latency,
    })
}

#[cfg(test)]
mod tests {
    use super::bucket_quantile;

    #[test]
    fn the_bound_is_the_first_bucket_holding_the_quantile_of_the_new_observations() {
        let before = [(0.01, 10.0), (0.1, 10.0), (f64::INFINITY, 10.0)];
        let after = [(0.01, 60.0), (0.1, 109.0), (f64::INFINITY, 110.0)];
        // 100 new: 50 within 10 ms, 99 within 100 ms, one beyond.
        assert_eq!(bucket_quantile(&before, &after, 0.5), (100.0, Some(0.01)));
        assert_eq!(bucket_quantile(&before, &after, 0.99), (100.0, Some(0.1)));
        assert_eq!(
            bucket_quantile(&before, &after, 0.999),
            (100.0, Some(f64::INFINITY))
        );
        assert_eq!(bucket_quantile(&after, &after, 0.99), (0.0, None));
    }
}
