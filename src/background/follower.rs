//! The feed follower and the replica poller: what keeps this instance's reads beyond the
//! primary true.
//!
//! The follower brings the instance's followed feed position, and with it the resolution
//! cache, up to the feed on every wake-up (the sequencer's NOTIFY names the citizens of
//! each round; the store drops their entries) and at least every `CONFIRM_EVERY`, which
//! is what lets the cache answer at all (`store::freshness`). The poller reads each read
//! replica's visible feed position every `REPLICA_POLL`.

use std::sync::Arc;

use crate::store::{Store, CONFIRM_EVERY, REPLICA_POLL};

/// Follows the feed until the task is aborted.
pub async fn follow(store: Arc<dyn Store>) {
    let mut changes = store.changes();
    let mut failing = false;
    loop {
        changes.borrow_and_update();
        match store.follow_feed().await {
            Ok(()) => {
                if failing {
                    tracing::info!("following the change feed again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "following the change feed failed; the resolution cache stops answering until it succeeds");
                }
                failing = true;
            }
        }
        let _ = tokio::time::timeout(CONFIRM_EVERY, changes.changed()).await;
    }
}

/// Polls the read replicas until the task is aborted.
pub async fn poll_replicas(store: Arc<dyn Store>) {
    loop {
        store.poll_replicas().await;
        tokio::time::sleep(REPLICA_POLL).await;
    }
}
