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

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::readiness::Signals;
use crate::store::Store;

/// How long the sequencer sleeps without a signal before looking anyway.
const SAFETY_TICK: Duration = Duration::from_secs(1);

/// How often, at most, a round also brings the sync digest up to the head. The digest's
/// work (the routes of every citizen the new events name) stays off most rounds, so a
/// busy feed keeps its latency; the digest trails the head by about this much.
const DIGEST_EVERY: Duration = Duration::from_millis(200);

/// Runs the sequencer until the task is aborted, numbering at most `round` events per
/// transaction, and reports each completed round to `signals` (readiness).
pub async fn run(store: Arc<dyn Store>, round: u32, signals: Arc<Signals>) {
    let mut changes = store.changes();
    let mut last_digest: Option<Instant> = None;
    loop {
        changes.borrow_and_update();
        let mut digest_behind = false;
        loop {
            let digest = last_digest.is_none_or(|at| at.elapsed() >= DIGEST_EVERY);
            match store.sequence_events(round, digest).await {
                Ok(numbered) => {
                    signals.sequencer_round();
                    if digest && !numbered.digest_behind {
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
