//! The access log: who read which citizen's data, when, and why (Decree 13/2023/ND-CP).
//!
//! Reads are recorded in batches by one writer task (group commit): a handler hands its
//! entries over and waits until the batch holding them is committed, then answers. So a
//! read is never answered without its log entry, a slow log slows reads down instead of
//! losing entries (the queue is bounded), and the database sees one INSERT per batch
//! instead of one per read. If the log cannot be written, the read fails.
//!
//! With a spool directory set, the reads go to this instance's spool instead and reach
//! the database shortly after (`access_spool`: cheaper per read, with its own trade-off).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Mutex};

use super::access_spool::{Spool, SpoolSettings};
use super::readiness::Signals;
use crate::store::{AccessRead, Store};
use crate::telemetry::metrics as m;

/// Why a read could not be logged (and so must not be answered).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the access log is unavailable")]
pub struct AccessLogUnavailable;

/// A call's read waiting to be written, and where to say it was.
pub(super) struct Pending {
    pub(super) read: AccessRead,
    pub(super) done: oneshot::Sender<Result<(), AccessLogUnavailable>>,
}

/// A handle to the access-log writer. Cloning shares the writer.
#[derive(Clone)]
pub struct AccessLog {
    sink: Sink,
}

/// Where reads are recorded.
#[derive(Clone)]
enum Sink {
    /// Nowhere (benchmarks of the log's cost only).
    Disabled,
    /// The database, through the writer tasks.
    Database(mpsc::Sender<Pending>),
    /// This instance's spool, shipped to the database.
    Spool(Arc<Spool>),
}

/// What the writers share: the store, and where they report.
struct Writer {
    store: Arc<dyn Store>,
    signals: Arc<Signals>,
    /// The queue's sender, to read its depth (a weak handle: the log closes when the
    /// handlers' handles are gone).
    queue: mpsc::WeakSender<Pending>,
    capacity: usize,
}

impl AccessLog {
    /// Starts `writers` writer tasks. At most `queue` reads wait to be written; at most
    /// `max_batch` go into one INSERT. Several writers overlap their commits, so a read
    /// waits for about one commit rather than for the batch ahead of it and then its own.
    /// Each batch's outcome is reported to `signals` (readiness) and to the metrics.
    pub fn start(
        store: Arc<dyn Store>,
        signals: Arc<Signals>,
        queue: usize,
        max_batch: usize,
        writers: usize,
    ) -> AccessLog {
        let capacity = queue.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let rx = Arc::new(Mutex::new(rx));
        let writer = Arc::new(Writer {
            store,
            signals,
            queue: tx.downgrade(),
            capacity,
        });
        for _ in 0..writers.max(1) {
            tokio::spawn(write_batches(writer.clone(), rx.clone(), max_batch.max(1)));
        }
        let queue = writer.queue.clone();
        tokio::spawn(clean_index(writer.store.clone(), move || {
            queue.upgrade().is_some()
        }));
        AccessLog {
            sink: Sink::Database(tx),
        }
    }

    /// Records reads in a spool (see `access_spool`), which ships them to `store`. Also
    /// starts the task that merges the log's index. Fails when the spool cannot be
    /// opened (or another instance holds it).
    pub fn spooled(
        settings: &SpoolSettings,
        store: Arc<dyn Store>,
        signals: Arc<Signals>,
    ) -> anyhow::Result<AccessLog> {
        let spool = Spool::open(settings, store.clone(), signals.clone())?;
        let held = Arc::downgrade(&spool);
        tokio::spawn(clean_index(store, move || held.strong_count() > 0));
        Ok(AccessLog {
            sink: Sink::Spool(spool),
        })
    }

    /// A log that records nothing: only for benchmarks that measure the log's cost.
    pub fn disabled() -> AccessLog {
        AccessLog {
            sink: Sink::Disabled,
        }
    }

    /// Records a call's `read` and returns once it is committed (to the database, or to
    /// the spool).
    pub async fn record(&self, read: AccessRead) -> Result<(), AccessLogUnavailable> {
        if read.citizens.is_empty() {
            return Ok(());
        }
        match &self.sink {
            Sink::Disabled => Ok(()),
            Sink::Database(tx) => hand_over(tx, read).await,
            Sink::Spool(spool) => spool.record(read).await,
        }
    }

    /// Makes every read recorded so far visible in the database: with a spool, ships
    /// it; otherwise there is nothing to do (a recorded read is committed).
    pub async fn flush(&self) -> Result<(), AccessLogUnavailable> {
        match &self.sink {
            Sink::Spool(spool) => spool.flush().await,
            Sink::Disabled | Sink::Database(_) => Ok(()),
        }
    }
}

/// Hands a call's reads to a writer through `tx` and waits for the writer's word.
pub(super) async fn hand_over(
    tx: &mpsc::Sender<Pending>,
    read: AccessRead,
) -> Result<(), AccessLogUnavailable> {
    let (done, committed) = oneshot::channel();
    tx.send(Pending { read, done })
        .await
        .map_err(|_| AccessLogUnavailable)?;
    committed.await.map_err(|_| AccessLogUnavailable)?
}

/// Takes the next batch: waits for one read, lets ready tasks run, then takes whatever
/// else is queued, up to `max_batch` entries. `None` once every handle is gone.
async fn next_batch(rx: &Mutex<mpsc::Receiver<Pending>>, max_batch: usize) -> Option<Vec<Pending>> {
    let mut rx = rx.lock().await;
    let first = rx.recv().await?;
    // Let the tasks that are ready to run (handlers about to hand over their reads) run
    // first: the batch takes their entries too. This costs no wall time when nothing
    // else is ready, and under load it made batches of unary reads larger (4.4 to 7.6
    // entries on average at concurrency 8 and 32, on two cores), so fewer INSERTs
    // carry the same reads.
    tokio::task::yield_now().await;
    let mut count = first.read.citizens.len();
    let mut batch = vec![first];
    while count < max_batch {
        match rx.try_recv() {
            Ok(p) => {
                count += p.read.citizens.len();
                batch.push(p);
            }
            Err(_) => break,
        }
    }
    Some(batch)
}

/// How often the access log's index has its pending entries merged (PostgreSQL).
const CLEAN_INDEX_EVERY: Duration = Duration::from_millis(500);

/// Merges the index's pending entries into the index every [`CLEAN_INDEX_EVERY`], so that
/// the log's writers only append (migration 0015 on PostgreSQL). Ends with the log (once
/// `alive` says no handle is left), or at once on a backend with nothing to merge.
async fn clean_index(store: Arc<dyn Store>, alive: impl Fn() -> bool + Send + 'static) {
    loop {
        tokio::time::sleep(CLEAN_INDEX_EVERY).await;
        if !alive() {
            return;
        }
        match store.clean_access_log_index().await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => tracing::warn!(error = %e, "merging the access log's index failed"),
        }
    }
}

async fn write_batches(
    writer: Arc<Writer>,
    rx: Arc<Mutex<mpsc::Receiver<Pending>>>,
    max_batch: usize,
) {
    while let Some(batch) = next_batch(&rx, max_batch).await {
        if let Some(queue) = writer.queue.upgrade() {
            let depth = writer.capacity.saturating_sub(queue.capacity());
            metrics::gauge!(m::ACCESS_LOG_QUEUE_DEPTH).set(depth as f64);
        }
        let (reads, done): (Vec<AccessRead>, Vec<_>) =
            batch.into_iter().map(|p| (p.read, p.done)).unzip();
        let started = Instant::now();
        let written = writer.store.append_access_log(&reads).await;
        metrics::histogram!(m::ACCESS_LOG_BATCH_SECONDS).record(started.elapsed().as_secs_f64());
        if written.is_ok() {
            writer.signals.access_log_written();
            for done in done {
                let _ = done.send(Ok(()));
            }
            continue;
        }
        // One bad entry must not fail its neighbours' reads: write each read's entries
        // on their own, and refuse only the reads whose entries cannot be written.
        let mut any_written = false;
        for (read, done) in reads.iter().zip(done) {
            let result = writer.store.append_access_log(std::slice::from_ref(read)).await.map_err(|e| {
                tracing::error!(error = %e, entries = read.citizens.len(), "access log write failed");
                metrics::counter!(m::ACCESS_LOG_WRITE_FAILURES).increment(1);
                AccessLogUnavailable
            });
            any_written |= result.is_ok();
            let _ = done.send(result);
        }
        if any_written {
            writer.signals.access_log_written();
        } else {
            writer.signals.access_log_failed();
        }
    }
}
