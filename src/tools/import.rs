//! Bulk work from the command line: synthetic populations (`demo-data`), CSV files
//! streamed to a running registry through the sync streams (`import`), and payroll files
//! resolved through BatchResolve (`client resolve --file`).
//!
//! Everything streams: files are read one record at a time on a blocking thread and fed
//! to the gRPC stream through a bounded channel, so memory does not grow with the file.
//! `import` keeps a checkpoint next to the file (`<file>.progress`: the last data line
//! the registry acknowledged as committed); run it again after an interruption and it
//! resumes after that line. Records it sends twice change nothing: the registry answers
//! them with the outcome it recorded the first time, so the refusals of batches committed
//! before the interruption but never acknowledged still reach `<file>.rejected.csv`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::csv as csvio;
use super::demo::{self, DemoSpec};
use crate::client::{short_name, Authed, Credentials};
use crate::domain::{RecordOutcome, Timestamp};
use crate::proto;
use crate::proto::payout_resolver_service_client::PayoutResolverServiceClient;
use crate::proto::population_sync_service_client::PopulationSyncServiceClient;
use crate::store::{Pipeline, Store, SyncRecord, SyncStream, WriteContext};

/// Records read ahead of the stream.
const READ_AHEAD: usize = 1024;

/// Records per transaction when `demo-data` writes straight into the store.
const STORE_BATCH: usize = 1000;

fn bar(len: Option<u64>, what: &str) -> ProgressBar {
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let template = format!(
        "{{spinner}} {what} [{{bar:40}}] {{human_pos}}/{{human_len}} ({{per_sec}}, eta {{eta}}) {{msg}}"
    );
    bar.set_style(
        ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// Counts the data lines of a file (for the progress bar), without holding it.
fn data_lines(path: &Path) -> anyhow::Result<u64> {
    let reader = BufReader::new(File::open(path)?);
    let mut n = 0u64;
    for line in reader.split(b'\n') {
        if !line?.is_empty() {
            n += 1;
        }
    }
    Ok(n.saturating_sub(1))
}

/// Writes a synthetic population as `citizens.csv` and `accounts.csv` in `dir`.
pub fn demo_csv(spec: &DemoSpec, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let citizens_path = dir.join("citizens.csv");
    let accounts_path = dir.join("accounts.csv");
    let create = |p: &Path| {
        File::create(p)
            .map(BufWriter::new)
            .with_context(|| format!("creating {}", p.display()))
    };
    let progress = bar(Some(spec.citizens), "citizens");
    let mut citizens = csvio::CitizenWriter::new(create(&citizens_path)?);
    let mut accounts = csvio::AccountWriter::new(create(&accounts_path)?);
    // In the order a load is fastest (see `demo::LoadOrder`), as `import` sends it.
    let order = demo::LoadOrder::by_citizen_id(spec);
    for (n, citizen) in order.citizens().enumerate() {
        citizens.write(&citizen)?;
        if n % 4096 == 0 {
            progress.set_position(n as u64);
        }
    }
    for a in order.accounts() {
        accounts.write(&a)?;
    }
    citizens.finish()?.flush()?;
    accounts.finish()?.flush()?;
    progress.finish();
    Ok((citizens_path, accounts_path))
}

/// Counts of records by outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub applied: u64,
    pub stale: u64,
    pub rejected: u64,
}

impl Counts {
    fn add(&mut self, outcomes: &[RecordOutcome]) {
        for o in outcomes {
            match o {
                RecordOutcome::Applied => self.applied += 1,
                RecordOutcome::Stale => self.stale += 1,
                RecordOutcome::Rejected(_) => self.rejected += 1,
            }
        }
    }
}

/// When a bulk load refreshes the planner's statistics: each time the records of a phase
/// double, from 8,000 on. The tables a phase fills start empty (or ten times smaller), and
/// with statistics of a table that small PostgreSQL plans a 1,000-key lookup as a scan of
/// every row of the stream (`sync_records`: 58 ms a batch at 200 k records against 3.7 ms
/// once analysed), so the cost per record grew with the load. Autovacuum does this in
/// production, after each 10% of change; a load of its own cannot count on it.
///
/// The ANALYZE runs beside the batches, not between them: it reads a sample, and the
/// batches go on writing meanwhile (at 1 M citizens the late ones took 0.2-0.9 s each,
/// 6.4 s in all, during which the load's pipeline had drained and a core stood idle). A
/// doubling reached while the last one still runs waits for the next batch after it ends.
#[derive(Debug)]
struct Statistics {
    stream: SyncStream,
    next: u64,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Statistics {
    fn new(stream: SyncStream) -> Self {
        Statistics {
            stream,
            next: 8_000,
            running: None,
        }
    }

    async fn grown(&mut self, store: &Arc<dyn Store>, records: u64) -> anyhow::Result<()> {
        if records < self.next {
            return Ok(());
        }
        if let Some(running) = self.running.take() {
            if !running.is_finished() {
                self.running = Some(running);
                return Ok(());
            }
            running.await??;
        }
        let (store, stream) = (store.clone(), self.stream);
        self.running = Some(tokio::spawn(async move {
            store
                .analyze(stream)
                .await
                .context("refreshing planner statistics")
        }));
        self.next = records.saturating_mul(2);
        Ok(())
    }

    /// Waits for the refresh that is still running, if any, and answers its error.
    async fn finish(self) -> anyhow::Result<()> {
        match self.running {
            Some(running) => running.await?,
            None => Ok(()),
        }
    }
}

/// Writes records (`None`: one that could not be converted, counted as rejected) through
/// `run` in batches of about [`STORE_BATCH`], `in_flight` at a time. A batch is
/// cut only between two citizens, so that one citizen's records never make two batches
/// wait for each other.
async fn store_in_batches<R, F, Fut>(
    store: &Arc<dyn Store>,
    records: impl Iterator<Item = Option<R>>,
    progress: &ProgressBar,
    in_flight: usize,
    run: F,
) -> anyhow::Result<Counts>
where
    R: SyncRecord + Send + 'static,
    F: Fn(Arc<dyn Store>, Vec<R>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<RecordOutcome>>> + Send + 'static,
{
    let mut counts = Counts::default();
    let mut statistics = Statistics::new(R::STREAM);
    let mut pipeline = Pipeline::new(in_flight);
    let mut batch: Vec<R> = Vec::with_capacity(STORE_BATCH + 16);
    for record in records {
        let Some(record) = record else {
            counts.rejected += 1;
            continue;
        };
        let full = batch.len() >= STORE_BATCH
            && batch
                .last()
                .is_some_and(|last| last.citizen_id() != record.citizen_id());
        if full {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(STORE_BATCH + 16));
            progress.inc(full.len() as u64);
            for outcomes in pipeline.submit(full, |b| run(store.clone(), b)).await? {
                counts.add(&outcomes?);
            }
            statistics.grown(store, progress.position()).await?;
        }
        batch.push(record);
    }
    if !batch.is_empty() {
        progress.inc(batch.len() as u64);
        for outcomes in pipeline.submit(batch, |b| run(store.clone(), b)).await? {
            counts.add(&outcomes?);
        }
    }
    for outcomes in pipeline.finish().await? {
        counts.add(&outcomes?);
    }
    statistics.finish().await?;
    Ok(counts)
}

/// Writes a synthetic population straight into the store, through the same batch
/// transactions the sync streams use (validation, history, events, ledger), `in_flight`
/// batches at a time (see `pipeline`; the outcome is that of one at a time).
pub async fn demo_store(
    store: Arc<dyn Store>,
    spec: &DemoSpec,
    in_flight: usize,
) -> anyhow::Result<(Counts, Counts)> {
    let today = Timestamp::now().date();
    fn ctx() -> WriteContext {
        WriteContext {
            actor: "demo-data".into(),
            idempotency: None,
            now: Timestamp::now(),
            // The population's records arrive as population sync's would: no other
            // authority.
            authority: Default::default(),
        }
    }
    // By citizen id: the citizen-keyed indexes then grow at their right edge.
    let order = demo::LoadOrder::by_citizen_id(spec);
    let progress = bar(Some(spec.citizens), "citizens");
    let citizens = order
        .citizens()
        .map(|r| crate::grpc::convert::sync_citizen(&r, today).ok());
    let citizen_counts = store_in_batches(
        &store,
        citizens,
        &progress,
        in_flight,
        move |store, batch| async move { Ok(store.sync_citizens(&ctx(), &batch).await?.outcomes) },
    )
    .await?;
    progress.finish();
    let progress = bar(None, "accounts");
    let accounts = order
        .accounts()
        .map(|r| crate::grpc::convert::sync_account(&r).ok());
    let account_counts = store_in_batches(
        &store,
        accounts,
        &progress,
        in_flight,
        move |store, batch| async move { Ok(store.sync_accounts(&ctx(), &batch).await?.outcomes) },
    )
    .await?;
    progress.finish();
    Ok((citizen_counts, account_counts))
}

/// What an import run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// The data line the run started after (0: from the beginning).
    pub resumed_after_line: u64,
    /// Records the registry committed in this run.
    pub committed: u64,
    pub applied: u64,
    pub stale: u64,
    pub rejected: u64,
    /// Lines that could not be read as records (never sent).
    pub malformed: u64,
    /// Whether the whole file was committed (else the checkpoint was kept).
    pub complete: bool,
}

/// Which sync stream a file goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Citizens,
    Accounts,
}

/// The checkpoint file of an import.
pub fn checkpoint_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".progress");
    PathBuf::from(name)
}

fn read_checkpoint(path: &Path) -> anyhow::Result<u64> {
    match std::fs::read_to_string(path) {
        Ok(s) => s
            .lines()
            .find_map(|l| l.strip_prefix("line="))
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| {
                format!(
                    "{} is not a checkpoint; delete it to start over",
                    path.display()
                )
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_checkpoint(path: &Path, line: u64, record_id: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("progress.tmp");
    std::fs::write(&tmp, format!("line={line}\nrecord_id={record_id}\n"))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Streams one CSV file to the registry, resuming after its checkpoint. `max_records`
/// stops after that many records have been sent (to import a file in parts).
pub async fn import_file(
    channel: Channel,
    bearer: Credentials,
    kind: FileKind,
    path: &Path,
    max_records: Option<u64>,
) -> anyhow::Result<ImportReport> {
    let checkpoint = checkpoint_path(path);
    let resume_after = read_checkpoint(&checkpoint)?;
    let total = data_lines(path).with_context(|| format!("reading {}", path.display()))?;
    let rejected_path = {
        let mut name = path.as_os_str().to_owned();
        name.push(".rejected.csv");
        PathBuf::from(name)
    };
    let progress = bar(Some(total), "records");
    progress.set_position(resume_after.min(total));
    // Sent, not yet acknowledged: (data line, record id). Bounded by flow control.
    let in_flight: Arc<Mutex<VecDeque<(u64, String)>>> = Arc::default();
    let malformed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut population = PopulationSyncServiceClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(64 << 20);

    // Reads the file on a blocking thread, feeding the stream.
    let spawn_reader = |tx: mpsc::Sender<(u64, String, Request)>| {
        let malformed = malformed.clone();
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut sent = 0u64;
            let mut send = |line: u64, id: String, request: Request| -> bool {
                if line <= resume_after {
                    return true;
                }
                if max_records.is_some_and(|m| sent >= m) {
                    return false;
                }
                sent += 1;
                tx.blocking_send((line, id, request)).is_ok()
            };
            let report_malformed = |e: csvio::CsvError| {
                malformed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                eprintln!("{}: {e}", path.display());
            };
            match kind {
                FileKind::Citizens => {
                    for item in csvio::read_citizens(BufReader::new(file)) {
                        match item {
                            Ok((line, r)) => {
                                let id = r.record_id.clone();
                                if !send(line, id, Request::Citizen(r)) {
                                    break;
                                }
                            }
                            Err(e) => report_malformed(e),
                        }
                    }
                }
                FileKind::Accounts => {
                    for item in csvio::read_accounts(BufReader::new(file)) {
                        match item {
                            Ok((line, r)) => {
                                let id = r.record_id.clone();
                                if !send(line, id, Request::Account(r)) {
                                    break;
                                }
                            }
                            Err(e) => report_malformed(e),
                        }
                    }
                }
            }
        })
    };
    let (read_tx, mut read_rx) = mpsc::channel::<(u64, String, Request)>(READ_AHEAD);
    let reader = spawn_reader(read_tx);
    // Records go on the stream only once their line is remembered as in flight.
    let (citizen_tx, citizen_rx) = mpsc::channel::<proto::SyncCitizensRequest>(READ_AHEAD);
    let (account_tx, account_rx) = mpsc::channel::<proto::SyncAccountsRequest>(READ_AHEAD);
    let feeder = {
        let in_flight = in_flight.clone();
        tokio::spawn(async move {
            while let Some((line, id, request)) = read_rx.recv().await {
                in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back((line, id));
                let sent = match request {
                    Request::Citizen(r) => citizen_tx
                        .send(proto::SyncCitizensRequest { record: Some(r) })
                        .await
                        .is_ok(),
                    Request::Account(r) => account_tx
                        .send(proto::SyncAccountsRequest { record: Some(r) })
                        .await
                        .is_ok(),
                };
                if !sent {
                    break;
                }
            }
        })
    };
    // Both streams answer each committed batch with its result.
    type Results =
        futures::stream::BoxStream<'static, Result<proto::SyncBatchResult, tonic::Status>>;
    let mut acks: Results = match kind {
        FileKind::Citizens => {
            drop(account_rx);
            let answers = population
                .sync_citizens(ReceiverStream::new(citizen_rx))
                .await?
                .into_inner();
            Box::pin(answers.map(|r| r.map(|r| r.result.unwrap_or_default())))
        }
        FileKind::Accounts => {
            drop(citizen_rx);
            let answers = population
                .sync_accounts(ReceiverStream::new(account_rx))
                .await?
                .into_inner();
            Box::pin(answers.map(|r| r.map(|r| r.result.unwrap_or_default())))
        }
    };
    // A resumed run adds to the refusals listed before the interruption; a new run starts
    // the list again, since the registry answers every record of it, replays included.
    let mut rejected_out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resume_after > 0)
        .truncate(resume_after == 0)
        .open(&rejected_path)
        .with_context(|| format!("opening {}", rejected_path.display()))?;
    let mut report = ImportReport {
        resumed_after_line: resume_after,
        ..ImportReport::default()
    };
    let mut committed_before = 0u64;
    let mut last_line = resume_after;
    let outcome: anyhow::Result<()> = async {
        while let Some(ack) = acks.next().await.transpose()? {
            let newly = ack.records_committed - committed_before;
            committed_before = ack.records_committed;
            {
                let mut q = in_flight.lock().unwrap_or_else(|p| p.into_inner());
                for _ in 0..newly {
                    if let Some((line, _)) = q.pop_front() {
                        last_line = line;
                    }
                }
            }
            for e in &ack.errors {
                writeln!(
                    rejected_out,
                    "{},{},{},\"{}\"",
                    e.record_id,
                    e.reason,
                    e.field,
                    e.message.replace('"', "'")
                )?;
            }
            write_checkpoint(&checkpoint, last_line, &ack.last_record_id)?;
            report.committed = ack.records_committed;
            report.applied = ack.applied;
            report.stale = ack.stale;
            report.rejected = ack.rejected;
            progress.set_position(last_line.min(total));
        }
        Ok(())
    }
    .await;
    feeder.abort();
    let _ = reader.await;
    progress.finish();
    if let Err(e) = outcome {
        return Err(interrupted(e, path, &report, last_line));
    }
    report.malformed = malformed.load(std::sync::atomic::Ordering::Relaxed);
    report.complete = in_flight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .is_empty()
        && max_records.is_none_or(|m| report.committed < m);
    if report.complete {
        // Everything is in: a new run starts over (and is answered the recorded outcomes).
        let _ = std::fs::remove_file(&checkpoint);
    }
    Ok(report)
}

/// An import cut short, said so that the operator knows what is in and what to do: what
/// the registry acknowledged is committed and checkpointed, and running the same command
/// again resumes after it. A registry that is shutting down or whose database is away
/// answers UNAVAILABLE; any status is described with its reason.
fn interrupted(
    e: anyhow::Error,
    path: &Path,
    report: &ImportReport,
    last_line: u64,
) -> anyhow::Error {
    let cause = match e.downcast::<tonic::Status>() {
        Ok(status) => {
            let retry = status.code() == tonic::Code::Unavailable;
            let described = crate::client::describe(status);
            if retry {
                anyhow::anyhow!("the registry is unavailable for now ({described})")
            } else {
                described
            }
        }
        Err(e) => e,
    };
    anyhow::anyhow!(
        "{cause}\nimport of {} interrupted: {} records committed and checkpointed (through \
         data line {last_line}, in {}); run the same command again to resume after them",
        path.display(),
        report.committed,
        checkpoint_path(path).display(),
    )
}

/// One record read from a file.
enum Request {
    Citizen(proto::CitizenRecord),
    Account(proto::AccountRecord),
}

/// Resolves every citizen id in `input` (one per line; blank lines and `#` comments
/// skipped) through BatchResolve and writes a payroll CSV to `output`, in input order.
pub async fn resolve_file(
    mut resolver: PayoutResolverServiceClient<Authed>,
    input: &Path,
    output: &Path,
    program: &str,
    exists_only: bool,
    reservation_period: &str,
) -> anyhow::Result<u64> {
    let total = data_lines(input)? + 1;
    let reservation_period = reservation_period.to_owned();
    let progress = bar(Some(total), "ids");
    let file = File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let (tx, rx) = mpsc::channel::<proto::BatchResolveRequest>(READ_AHEAD);
    let program = program.to_owned();
    let scope = if exists_only {
        proto::ResolveScope::ExistsOnly
    } else {
        proto::ResolveScope::Details
    };
    let in_flight: Arc<Mutex<VecDeque<String>>> = Arc::default();
    let queue = in_flight.clone();
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let line = line?;
            let id = line.split(',').next().unwrap_or("").trim().to_owned();
            if id.is_empty() || id.starts_with('#') || id == "citizen_id" {
                continue;
            }
            queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back(id.clone());
            let request = proto::BatchResolveRequest {
                correlation_id: (n + 1).to_string(),
                citizen_id: id,
                program_code: program.clone(),
                scope: scope.into(),
                reservation_period: reservation_period.clone(),
                ..Default::default()
            };
            if tx.blocking_send(request).is_err() {
                break;
            }
        }
        Ok(())
    });
    let mut answers = resolver
        .batch_resolve(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut out = csv::Writer::from_writer(BufWriter::new(
        File::create(output).with_context(|| format!("creating {}", output.display()))?,
    ));
    out.write_record([
        "citizen_id",
        "outcome",
        "kind",
        "provider_code",
        "account_ref",
        "cooling_off",
        "error",
        "reservation_id",
    ])?;
    let mut written = 0u64;
    while let Some(answer) = answers.message().await? {
        let id = in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
            .unwrap_or_default();
        let row = match (&answer.result, &answer.error) {
            (Some(r), _) => {
                let outcome = proto::ResolveOutcome::try_from(r.outcome)
                    .map(|o| short_name(o.as_str_name(), "RESOLVE_OUTCOME_"))
                    .unwrap_or("?");
                let (kind, provider, account) = match &r.account {
                    Some(a) => (
                        proto::AccountKind::try_from(a.kind)
                            .map(|k| short_name(k.as_str_name(), "ACCOUNT_KIND_"))
                            .unwrap_or("?"),
                        a.provider_code.as_str(),
                        a.account_ref.as_str(),
                    ),
                    None => ("", "", ""),
                };
                [
                    id.as_str(),
                    outcome,
                    kind,
                    provider,
                    account,
                    if r.cooling_off { "true" } else { "false" },
                    "",
                    r.reservation
                        .as_ref()
                        .map(|h| h.reservation_id.as_str())
                        .unwrap_or(""),
                ]
                .map(str::to_owned)
            }
            (None, Some(e)) => [
                id.clone(),
                "ERROR".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                e.reason.clone(),
                String::new(),
            ],
            (None, None) => anyhow::bail!("an answer without result or error"),
        };
        out.write_record(&row)?;
        written += 1;
        if written.is_multiple_of(1024) {
            progress.set_position(written);
        }
    }
    reader.await??;
    out.flush()?;
    progress.finish();
    Ok(written)
}
