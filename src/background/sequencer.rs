//! The change feed's sequencer: gives committed events their gapless feed positions.
//!
//! Writers append events in their own transactions (the outbox); their `position`s come
//! from a sequence and can commit out of order. Every server instance runs one sequencer
//! task. It wakes when this instance's writers commit events (the store's in-process
//! signal; on PostgreSQL also another instance's round, through LISTEN), and on a slow
//! tick as a safety net (events another instance or a tool wrote are numbered by that
//! instance's sequencer, or within the tick), and numbers the committed, unnumbered
//! events consecutively after the feed's head, in one transaction per round. Instances
//! take turns on the head row, so each event gets exactly one feed position and a
//! visible position implies every lower one is visible: subscribers read
//! by feed position and can resume after the last one they saw. The same task keeps the
//! sync digest up to date, in transactions of its own beside the rounds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::readiness::Signals;
use crate::store::Store;

/// How long the sequencer sleeps without a signal before looking anyway.
const SAFETY_TICK: Duration = Duration::from_secs(1);

/// How often, at most, the digest task takes a step of the sync digest's work (the routes
/// of the citizens the new events name; `Store::step_digest`). Each step is a transaction
/// of its own, apart from numbering; the digest trails the head by about this much, and a
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
/// transaction, and reports each completed round to `signals` (readiness). Beside it, in
/// the same task, the sync digest's steps ([`keep_digest`]).
pub async fn run(store: Arc<dyn Store>, round: u32, signals: Arc<Signals>) {
    tokio::join!(
        number(store.clone(), round, signals),
        keep_digest(store, round)
    );
}

/// Numbers committed events, round after round while a round is full, then waits for a
/// change.
async fn number(store: Arc<dyn Store>, round: u32, signals: Arc<Signals>) {
    let mut changes = store.changes();
    let mut statistics = FeedStatistics::default();
    let mut queue = QueueVacuum::default();
    let analyzing = Arc::new(AtomicBool::new(false));
    let vacuuming = Arc::new(AtomicBool::new(false));
    loop {
        changes.borrow_and_update();
        loop {
            match store.sequence_events(round).await {
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
        let _ = tokio::time::timeout(SAFETY_TICK, changes.changed()).await;
    }
}

/// Brings the sync digest up to the feed's head, a step (of at most `round` positions)
/// per [`DIGEST_EVERY`] at most, after each change while it is behind. Numbering never
/// waits for a step: under a bulk load one took up to 190 ms, which, inside the
/// numbering round, every event committed meanwhile waited out.
async fn keep_digest(store: Arc<dyn Store>, round: u32) {
    let mut changes = store.changes();
    loop {
        changes.borrow_and_update();
        let started = Instant::now();
        let behind = match store.step_digest(round).await {
            Ok(step) => step.behind,
            Err(e) => {
                tracing::error!(error = %e, "a step of the sync digest failed; retrying");
                true
            }
        };
        tokio::time::sleep(DIGEST_EVERY.saturating_sub(started.elapsed())).await;
        if !behind {
            let _ = tokio::time::timeout(SAFETY_TICK, changes.changed()).await;
        }
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
