//! The change feed's retention: events older than the configured horizon are deleted,
//! never beyond what the slowest named consumer has read or what the sync digest has
//! taken in (the store enforces both). Subscribers asking for a pruned position get
//! OUT_OF_RANGE naming the earliest kept.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::Timestamp;
use crate::store::Store;

/// Prunes events older than `retention` every `every`, until the task is aborted.
pub async fn run(store: Arc<dyn Store>, retention: Duration, every: Duration) {
    loop {
        let horizon = Timestamp(
            Timestamp::now()
                .micros()
                .saturating_sub(retention.as_micros().min(i64::MAX as u128) as i64),
        );
        match store.prune_events(horizon).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "pruned change-feed events past retention"),
            Err(e) => tracing::error!(error = %e, "pruning events failed"),
        }
        tokio::time::sleep(every).await;
    }
}
