//! The access log: who read which citizen's data, when, and why (Decree 13/2023/ND-CP).
//!
//! Reads are recorded in batches by one writer task (group commit): a handler hands its
//! entries over and waits until the batch holding them is committed, then answers. So a
//! read is never answered without its log entry, a slow log slows reads down instead of
//! losing entries (the queue is bounded), and the database sees one INSERT per batch
//! instead of one per read. If the log cannot be written, the read fails.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

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
    /// Starts the writer. At most `queue` reads wait to be written; at most `max_batch`
    /// go into one INSERT.
    pub fn start(store: Arc<dyn Store>, queue: usize, max_batch: usize) -> AccessLog {
        let (tx, rx) = mpsc::channel(queue.max(1));
        tokio::spawn(write_batches(store, rx, max_batch.max(1)));
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

async fn write_batches(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Pending>, max_batch: usize) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let mut count = batch[0].entries.len();
        while count < max_batch {
            match rx.try_recv() {
                Ok(p) => {
                    count += p.entries.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
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
