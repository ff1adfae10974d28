//! The change feed's sequencer: gives committed events their gapless feed positions.
//!
//! Writers append events in their own transactions (the outbox); their `position`s come
//! from a sequence and can commit out of order. Every server instance runs one sequencer
//! task. It wakes when events are committed (LISTEN/NOTIFY on PostgreSQL, the store's
//! in-process signal on SQLite, and a slow tick as a safety net), and numbers the
//! committed, unnumbered events consecutively after the feed's head, in one transaction
//! per round. Instances take turns on the head row, so each event gets exactly one feed
//! position and a visible position implies every lower one is visible: subscribers read
//! by feed position and can resume after the last one they saw.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::readiness::Signals;
use crate::store::Store;

/// How long the sequencer sleeps without a signal before looking anyway.
const SAFETY_TICK: Duration = Duration::from_secs(1);

/// How often, at most, a round also takes a step of the sync digest's work (the routes of
/// the citizens the new events name; `Store::sequence_events`). It stays off most rounds,
/// so a busy feed keeps its latency; the digest trails the head by about this much, and a
/// first build or a catch-up of a long busy spell goes one bounded step per interval.
const DIGEST_EVERY: Duration = Duration::from_millis(200);

/// The feed grows by at least this many positions between two refreshes of its
/// statistics.
const ANALYZE_AFTER: i64 = 10_000;

/// When the feed's planner statistics are refreshed: once the head has doubled since the
/// last refresh (and grown by [`ANALYZE_AFTER`]), and once at start on a feed of that size.
/// A feed that outgrew its statistics (a bulk load numbered after the last ANALYZE, or
/// autovacuum off) has its rounds and subscribers' pages planned as scans of a table
/// thought empty: 1.1 M events numbered after an ANALYZE of an empty feed made the
/// sequencer's statements 5x slower (`INSERT INTO feed` 9.4 ms a round against 1.5 ms,
/// its DELETE from `feed_pending` 14 ms against under 1). Autovacuum's own analyses keep
/// doing their part; doubling bounds the extra ones to a few per order of magnitude.
#[derive(Debug, Default)]
struct FeedStatistics {
    analyzed_at: i64,
}

impl FeedStatistics {
    /// Whether the feed at `head` needs fresh statistics; if so, counts them as taken.
    fn due(&mut self, head: i64) -> bool {
        let due = head - self.analyzed_at >= ANALYZE_AFTER && head >= 2 * self.analyzed_at;
        if due {
            self.analyzed_at = head;
        }
        due
    }
}

/// The sequencer numbers at least this many positions between two VACUUMs of its queue
/// of unnumbered events (`Store::vacuum_feed_queue`).
const VACUUM_QUEUE_AFTER: i64 = 50_000;

/// When the queue of unnumbered events is vacuumed: at the first round (a backlog of dead
/// rows from before a restart), then each time [`VACUUM_QUEUE_AFTER`] more positions
/// were numbered. Every numbered event leaves a dead row there, so they pile up in
/// proportion to the feed's growth; between two VACUUMs there are at most about this
/// many, which keeps the cost of planning a round's statements flat.
#[derive(Debug, Default)]
struct QueueVacuum {
    vacuumed_at: Option<i64>,
}

impl QueueVacuum {
    /// Whether the queue, with the feed at `head`, is due a VACUUM; if so, counts it as
    /// taken.
    fn due(&mut self, head: i64) -> bool {
        let due = self
            .vacuumed_at
            .is_none_or(|at| head - at >= VACUUM_QUEUE_AFTER);
        if due {
            self.vacuumed_at = Some(head);
        }
        due
    }
}

/// Runs a maintenance task of the feed's tables off the sequencer's path (a round does
/// not wait for it), one at a time per kind: `running` is that kind's flag.
fn maintain(
    running: &Arc<AtomicBool>,
    what: &'static str,
    task: impl std::future::Future<Output = crate::store::StoreResult<()>> + Send + 'static,
) {
    if running.swap(true, Ordering::AcqRel) {
        return;
    }
    let running = running.clone();
    tokio::spawn(async move {
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "{what} failed");
        }
        running.store(false, Ordering::Release);
    });
}

/// Runs the sequencer until the task is aborted, numbering at most `round` events per
/// transaction, and reports each completed round to `signals` (readiness).
pub async fn run(store: Arc<dyn Store>, round: u32, signals: Arc<Signals>) {
    let mut changes = store.changes();
    let mut last_digest: Option<Instant> = None;
    let mut statistics = FeedStatistics::default();
    let mut queue = QueueVacuum::default();
    let analyzing = Arc::new(AtomicBool::new(false));
    let vacuuming = Arc::new(AtomicBool::new(false));
    loop {
        changes.borrow_and_update();
        let mut digest_behind = false;
        loop {
            let digest = last_digest.is_none_or(|at| at.elapsed() >= DIGEST_EVERY);
            match store.sequence_events(round, digest).await {
                Ok(numbered) => {
                    signals.sequencer_round();
                    if statistics.due(numbered.head) {
                        let store = store.clone();
                        maintain(
                            &analyzing,
                            "refreshing the change feed's statistics",
                            async move { store.analyze_feed().await },
                        );
                    }
                    if queue.due(numbered.head) {
                        let store = store.clone();
                        maintain(
                            &vacuuming,
                            "vacuuming the change feed's queue",
                            async move { store.vacuum_feed_queue().await },
                        );
                    }
                    // A round that took a step of the digest's work starts the interval
                    // again: a first build or a long catch-up goes a step at a time,
                    // with the write lock free in between.
                    if digest {
                        last_digest = Some(Instant::now());
                    }
                    digest_behind = numbered.digest_behind;
                    if numbered.assigned < u64::from(round) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "sequencing events failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
        }
        // A digest left behind is brought up once its interval has passed, busy or not.
        let wait = match (digest_behind, last_digest) {
            (true, Some(at)) => DIGEST_EVERY.saturating_sub(at.elapsed()),
            (true, None) => Duration::ZERO,
            (false, _) => SAFETY_TICK,
        };
        let _ = tokio::time::timeout(wait, changes.changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_vacuumed_at_the_first_round_then_every_fifty_thousand_positions() {
        let mut queue = QueueVacuum::default();
        assert!(queue.due(1_100_000));
        assert!(!queue.due(1_100_000));
        assert!(!queue.due(1_149_999));
        assert!(queue.due(1_150_000));
        assert!(!queue.due(1_199_999));
        assert!(queue.due(1_200_003));
    }

    #[test]
    fn the_feed_is_analyzed_at_start_when_large_then_each_time_it_doubles() {
        let mut small = FeedStatistics::default();
        assert!(!small.due(0));
        assert!(!small.due(9_999));
        assert!(small.due(10_000));
        assert!(!small.due(19_999));
        assert!(small.due(20_000));
        assert!(!small.due(30_000));
        assert!(small.due(40_000));

        // A restart on a large feed refreshes once, then waits for it to double.
        let mut large = FeedStatistics::default();
        assert!(large.due(1_100_000));
        assert!(!large.due(1_110_000));
        assert!(!large.due(2_199_999));
        assert!(large.due(2_200_000));
    }
}
