//! The access log: who read which citizen's data, when, and why (Decree 13/2023/ND-CP).
//!
//! Reads are recorded in batches by one writer task (group commit): a handler hands its
//! entries over and waits until the batch holding them is committed, then answers. So a
//! read is never answered without its log entry, a slow log slows reads down instead of
//! losing entries (the queue is bounded), and the database sees one INSERT per batch
//! instead of one per read. If the log cannot be written, the read fails.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

use crate::store::{AccessEntry, Store};

/// Why a read could not be logged (and so must not be answered).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the access log is unavailable")]
pub struct AccessLogUnavailable;

struct Pending {
    entries: Vec<AccessEntry>,
    done: oneshot::Sender<Result<(), AccessLogUnavailable>>,
}

/// A handle to the access-log writer. Cloning shares the writer.
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<mpsc::Sender<Pending>>,
}

impl AccessLog {
    /// Starts `writers` writer tasks. At most `queue` reads wait to be written; at most
    /// `max_batch` go into one INSERT. Several writers overlap their commits, so a read
    /// waits for about one commit rather than for the batch ahead of it and then its own.
    pub fn start(
        store: Arc<dyn Store>,
        queue: usize,
        max_batch: usize,
        writers: usize,
    ) -> AccessLog {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            tokio::spawn(write_batches(store.clone(), rx.clone(), max_batch.max(1)));
        }
        AccessLog { tx: Some(tx) }
    }

    /// A log that records nothing: only for benchmarks that measure the log's cost.
    pub fn disabled() -> AccessLog {
        AccessLog { tx: None }
    }

    /// Records `entries` and returns once they are committed.
    pub async fn record(&self, entries: Vec<AccessEntry>) -> Result<(), AccessLogUnavailable> {
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        if entries.is_empty() {
            return Ok(());
        }
        let (done, committed) = oneshot::channel();
        tx.send(Pending { entries, done })
            .await
            .map_err(|_| AccessLogUnavailable)?;
        committed.await.map_err(|_| AccessLogUnavailable)?
    }
}

/// Takes the next batch: waits for one read, then whatever else is queued, up to
/// `max_batch` entries. `None` once every handle is gone.
async fn next_batch(rx: &Mutex<mpsc::Receiver<Pending>>, max_batch: usize) -> Option<Vec<Pending>> {
    let mut rx = rx.lock().await;
    let first = rx.recv().await?;
    let mut count = first.entries.len();
    let mut batch = vec![first];
    while count < max_batch {
        match rx.try_recv() {
            Ok(p) => {
                count += p.entries.len();
                batch.push(p);
            }
            Err(_) => break,
        }
    }
    Some(batch)
}

async fn write_batches(
    store: Arc<dyn Store>,
    rx: Arc<Mutex<mpsc::Receiver<Pending>>>,
    max_batch: usize,
) {
    while let Some(batch) = next_batch(&rx, max_batch).await {
        let entries: Vec<AccessEntry> = batch.iter().flat_map(|p| p.entries.clone()).collect();
        if store.append_access_log(&entries).await.is_ok() {
            for p in batch {
                let _ = p.done.send(Ok(()));
            }
            continue;
        }
        // One bad entry must not fail its neighbours' reads: write each read's entries
        // on their own, and refuse only the reads whose entries cannot be written.
        for p in batch {
            let result = store.append_access_log(&p.entries).await.map_err(|e| {
                tracing::error!(error = %e, entries = p.entries.len(), "access log write failed");
                AccessLogUnavailable
            });
            let _ = p.done.send(result);
        }
    }
}
