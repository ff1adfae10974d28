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
    /// What the writers added to the index's pending list.
    unmerged: Arc<Unmerged>,
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
        let unmerged = Arc::new(Unmerged::default());
        let writer = Arc::new(Writer {
            store,
            signals,
            queue: tx.downgrade(),
            capacity,
            unmerged: unmerged.clone(),
        });
        for _ in 0..writers.max(1) {
            tokio::spawn(write_batches(writer.clone(), rx.clone(), max_batch.max(1)));
        }
        let queue = writer.queue.clone();
        tokio::spawn(clean_index(writer.store.clone(), unmerged, move || {
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
        let unmerged = Arc::new(Unmerged::default());
        let spool = Spool::open(settings, store.clone(), signals.clone(), unmerged.clone())?;
        let held = Arc::downgrade(&spool);
        tokio::spawn(clean_index(store, unmerged, move || {
            held.strong_count() > 0
        }));
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

/// How often the cleaner asks whether the index's pending entries are due a merge.
const CLEAN_INDEX_CHECK: Duration = Duration::from_millis(500);

/// Entries in the pending list that make a merge due. PostgreSQL merges a pending list
/// key by key, each key's entry rewritten in its leaf page, so a merge costs less per
/// entry the more it takes at once: on the 1 M population (two cores), 65 k entries
/// cost 4.2-5.5 us each and 1 M entries 2.35 us each. A search for a citizen reads the
/// whole pending list, 0.26 us per entry: at this size about 65 ms, against 1.4 ms once
/// merged. Migration 0022 sets the index's own limit above it (PostgreSQL then merges in
/// the writer: a backstop for several instances' lists together).
const MERGE_AT_ENTRIES: u64 = 250_000;

/// How long entries wait in the pending list at most: a burst of reads smaller than
/// [`MERGE_AT_ENTRIES`] is merged this long after its first entry was written.
const MERGE_AFTER: Duration = Duration::from_secs(5);

/// Whether the pending list is due a merge: it holds `entries` (written by this
/// instance), the oldest written `age` ago.
fn merge_due(entries: u64, age: Duration) -> bool {
    entries >= MERGE_AT_ENTRIES || (entries > 0 && age >= MERGE_AFTER)
}

/// What this instance's log writers (or its spool's shipper) have added to the index's
/// pending list since the last merge, and since when.
#[derive(Default)]
pub(super) struct Unmerged(std::sync::Mutex<(u64, Option<Instant>)>);

impl Unmerged {
    /// Counts the entries of `reads`, written to the log (one per citizen of each read).
    pub(super) fn wrote_reads(&self, reads: &[AccessRead]) {
        self.wrote(reads.iter().map(|r| r.citizens.len() as u64).sum());
    }

    /// Counts `entries` written to the log.
    fn wrote(&self, entries: u64) {
        if entries == 0 {
            return;
        }
        let mut u = self.0.lock().unwrap_or_else(|e| e.into_inner());
        u.0 += entries;
        u.1.get_or_insert_with(Instant::now);
    }

    /// Takes the count if a merge is due at `now` (the entries written from then on
    /// start the next count).
    fn take_if_due(&self, now: Instant) -> Option<u64> {
        let mut u = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let age =
            u.1.map(|t| now.saturating_duration_since(t))
                .unwrap_or_default();
        if !merge_due(u.0, age) {
            return None;
        }
        let taken = u.0;
        *u = (0, None);
        Some(taken)
    }
}

/// Merges the index's pending entries into the index when [`merge_due`] says so, off the
/// read path, so that the log's writers only append (migration 0015 on PostgreSQL).
/// First merges what earlier runs left pending, which this instance did not count. Ends
/// with the log (once `alive` says no handle is left), or at once on a backend with
/// nothing to merge.
async fn clean_index(
    store: Arc<dyn Store>,
    unmerged: Arc<Unmerged>,
    alive: impl Fn() -> bool + Send + 'static,
) {
    // The first round merges whatever is pending, none of it counted here.
    let mut due = Some(0);
    loop {
        if let Some(entries) = due {
            match store.clean_access_log_index().await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "merging the access log's index failed");
                    // Still pending: counted again for the next attempt.
                    unmerged.wrote(entries);
                }
            }
        }
        tokio::time::sleep(CLEAN_INDEX_CHECK).await;
        if !alive() {
            return;
        }
        due = unmerged.take_if_due(Instant::now());
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
            writer.unmerged.wrote_reads(&reads);
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
            if result.is_ok() {
                any_written = true;
                writer.unmerged.wrote_reads(std::slice::from_ref(read));
            }
            let _ = done.send(result);
        }
        if any_written {
            writer.signals.access_log_written();
        } else {
            writer.signals.access_log_failed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_is_due_at_the_size_or_the_age_and_never_for_nothing() {
        assert!(!merge_due(0, Duration::from_secs(3600)));
        assert!(!merge_due(
            MERGE_AT_ENTRIES - 1,
            MERGE_AFTER - Duration::from_millis(1)
        ));
        assert!(merge_due(MERGE_AT_ENTRIES, Duration::ZERO));
        assert!(merge_due(1, MERGE_AFTER));
    }

    #[test]
    fn unmerged_entries_are_taken_once_when_due_and_counted_afresh_after() {
        let u = Unmerged::default();
        let now = Instant::now();
        assert_eq!(u.take_if_due(now + MERGE_AFTER), None, "nothing written");
        u.wrote(1000);
        assert_eq!(u.take_if_due(now), None, "young and small");
        u.wrote(MERGE_AT_ENTRIES - 1000);
        assert_eq!(u.take_if_due(Instant::now()), Some(MERGE_AT_ENTRIES));
        assert_eq!(u.take_if_due(Instant::now() + MERGE_AFTER), None, "taken");
        // A small write is merged once it has waited MERGE_AFTER, not before.
        u.wrote(3);
        let written = Instant::now();
        assert_eq!(u.take_if_due(written), None);
        assert_eq!(u.take_if_due(written + MERGE_AFTER), Some(3));
        u.wrote(0);
        assert_eq!(
            u.take_if_due(written + 2 * MERGE_AFTER),
            None,
            "an empty read counts nothing"
        );
    }
}
