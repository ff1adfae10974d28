//! Readiness: may this instance be sent calls? Kept apart from liveness (the process
//! runs), so a database outage takes the instance out of its load balancer without
//! getting it restarted.
//!
//! An instance is ready when
//! - its database answers: the monitor pings it every [`PROBE_EVERY`] through
//!   `Store::ping`, on a connection of the store's own (a busy pool is not an outage),
//!   which the store connects anew after a call has met an unreachable database (a
//!   database that refuses new connections while old ones still work);
//! - its sequencer keeps up: a round completed within [`SEQUENCER_STALL`];
//! - its access log is writable: no batch has failed in the last
//!   [`ACCESS_LOG_HOLD`] without one committing since. (Without this window an instance
//!   taken out for a failed log would never be sent a read again to prove it recovered.)
//!
//! [`Signals`] is what the rest of the server reports into; [`monitor`] turns it into a
//! [`Readiness`] on a watch channel, which the app maps onto the health service, and
//! into the `payout_registry_ready` and `payout_registry_database_up` gauges.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::store::Store;
use crate::telemetry::metrics as m;

/// How often the monitor looks.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Longest a probe of the database may take before the database counts as unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(750);

/// A sequencer without a completed round for this long is stalled.
pub const SEQUENCER_STALL: Duration = Duration::from_secs(15);

/// How long a failed access-log batch keeps the instance not ready, unless a batch
/// commits sooner.
pub const ACCESS_LOG_HOLD: Duration = Duration::from_secs(5);

/// What the server's parts report about their health. Cheap to report into (atomics).
pub struct Signals {
    started: Instant,
    /// Milliseconds since `started` of the sequencer's last completed round.
    sequencer_round: AtomicU64,
    /// Milliseconds since `started` of the last access-log failure and success (+1, so
    /// 0 means never).
    access_log_failed: AtomicU64,
    access_log_written: AtomicU64,
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            started: Instant::now(),
            sequencer_round: AtomicU64::new(0),
            access_log_failed: AtomicU64::new(0),
            access_log_written: AtomicU64::new(0),
        }
    }
}

impl Signals {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// The sequencer completed a round.
    pub fn sequencer_round(&self) {
        self.sequencer_round.store(self.now_ms(), Ordering::Relaxed);
    }

    /// An access-log batch committed.
    pub fn access_log_written(&self) {
        self.access_log_written
            .store(self.now_ms(), Ordering::Relaxed);
    }

    /// An access-log batch could not be written.
    pub fn access_log_failed(&self) {
        self.access_log_failed
            .store(self.now_ms(), Ordering::Relaxed);
    }

    fn sequencer_keeps_up(&self) -> bool {
        let last = self.sequencer_round.load(Ordering::Relaxed);
        // Before its first round the sequencer has had since start-up.
        self.now_ms().saturating_sub(last) < SEQUENCER_STALL.as_millis() as u64
    }

    fn access_log_writable(&self) -> bool {
        let failed = self.access_log_failed.load(Ordering::Relaxed);
        let written = self.access_log_written.load(Ordering::Relaxed);
        failed == 0
            || written > failed
            || self.now_ms().saturating_sub(failed) >= ACCESS_LOG_HOLD.as_millis() as u64
    }
}

/// What the monitor last found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub database: bool,
    pub sequencer: bool,
    pub access_log: bool,
}

impl Readiness {
    /// Before the first probe: assume the worst.
    pub const UNKNOWN: Readiness = Readiness {
        database: false,
        sequencer: false,
        access_log: false,
    };

    pub fn ready(&self) -> bool {
        self.database && self.sequencer && self.access_log
    }

    /// What is wrong, for the log.
    pub fn problems(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.database {
            out.push("database unreachable");
        }
        if !self.sequencer {
            out.push("sequencer stalled");
        }
        if !self.access_log {
            out.push("access log unwritable");
        }
        out
    }
}

/// Watches the store and the signals until the task is aborted, publishing each change
/// of readiness on `out` (and logging it).
pub async fn monitor(store: Arc<dyn Store>, signals: Arc<Signals>, out: watch::Sender<Readiness>) {
    let mut ticker = tokio::time::interval(PROBE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let database = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, store.ping(false)).await,
            Ok(Ok(()))
        );
        let now = Readiness {
            database,
            sequencer: signals.sequencer_keeps_up(),
            access_log: signals.access_log_writable(),
        };
        metrics::gauge!(m::DATABASE_UP).set(if database { 1.0 } else { 0.0 });
        metrics::gauge!(m::READY).set(if now.ready() { 1.0 } else { 0.0 });
        let before = *out.borrow();
        if before != now {
            if now.ready() {
                tracing::info!("ready: the database answers, the sequencer keeps up, the access log is writable");
            } else {
                tracing::warn!(problems = ?now.problems(), "not ready");
            }
            out.send_replace(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_access_log_batch_holds_readiness_until_a_batch_commits() {
        let s = Signals::default();
        assert!(s.access_log_writable());
        s.access_log_failed();
        assert!(!s.access_log_writable());
        std::thread::sleep(Duration::from_millis(2));
        s.access_log_written();
        assert!(s.access_log_writable());
    }

    #[test]
    fn a_fresh_sequencer_is_given_time_and_a_completed_round_counts() {
        let s = Signals::default();
        assert!(s.sequencer_keeps_up());
        s.sequencer_round();
        assert!(s.sequencer_keeps_up());
    }
}
