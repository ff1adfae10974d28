//! Unary writes before bulk batches.
//!
//! A sync stream keeps up to `sync_batches_in_flight` batch transactions of up to
//! `sync_batch_records` (1,000 by default) records running at once. Every commit waits for
//! the WAL flush, and a unary write's commit (and the sequencer's round that numbers its
//! event) waits behind the bulk batches' WAL. So while unary writes are arriving, a sync
//! stream runs one batch at a time, of 250 records (`population::YIELDING_BATCH`), and it
//! goes back to its configured shape once none has been admitted for a window
//! (`sync_yield_window_ms`). A load that runs alone keeps its full rate; a load beside
//! payers' writes gives up part of it to their feed lag.
//!
//! Measured on two cores (the registry, PostgreSQL and both load generators on them),
//! a 120 k-record SyncAccounts stream beside 50 LinkAccounts/s, alternated: p99 from a
//! write's send to the receipt of its event 559-820 ms without yielding and 200-282 ms
//! yielding (p95 403-489 ms against 152-220 ms), for 5-21% fewer records/s.
//!
//! A unary write is any unary call of the write class (`RpcClass::Write`): the account
//! commands, reservations, and a durable consumer's CommitPosition (a payer following the
//! feed is what the yield is for).
//!
//! The signal is per instance: a stream yields to the unary writes of the instance it
//! runs on. Behind a load balancer that spreads unary calls across instances, each
//! instance that runs a stream sees its share of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When this instance last admitted a unary write, and how long a sync stream yields
/// after it.
#[derive(Debug)]
pub struct UnaryWrites {
    origin: Instant,
    /// Milliseconds from `origin` to the last admitted unary write, plus one (0: none yet).
    last: AtomicU64,
    window: Duration,
}

impl UnaryWrites {
    /// Streams yield for `window` after each unary write (zero: they never yield).
    pub fn new(window: Duration) -> UnaryWrites {
        UnaryWrites {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            window,
        }
    }

    /// A unary write was admitted now.
    pub fn admitted(&self) {
        self.admitted_at(Instant::now());
    }

    fn admitted_at(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.origin).as_millis() as u64 + 1;
        self.last.fetch_max(ms, Ordering::Relaxed);
    }

    /// Whether sync streams yield now: a unary write was admitted within the window.
    pub fn yielding(&self) -> bool {
        self.yielding_at(Instant::now())
    }

    fn yielding_at(&self, now: Instant) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        if last == 0 || self.window.is_zero() {
            return false;
        }
        let since_origin = now.saturating_duration_since(self.origin);
        since_origin.saturating_sub(Duration::from_millis(last - 1)) < self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_yield_for_the_window_after_a_unary_write() {
        let w = UnaryWrites::new(Duration::from_millis(1000));
        let t0 = w.origin + Duration::from_secs(5);
        assert!(!w.yielding_at(t0));
        w.admitted_at(t0);
        assert!(w.yielding_at(t0));
        assert!(w.yielding_at(t0 + Duration::from_millis(999)));
        assert!(!w.yielding_at(t0 + Duration::from_millis(1000)));
        assert!(!w.yielding_at(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn each_unary_write_extends_the_window_and_an_older_one_does_not_shorten_it() {
        let w = UnaryWrites::new(Duration::from_millis(1000));
        let t0 = w.origin + Duration::from_secs(5);
        w.admitted_at(t0);
        w.admitted_at(t0 + Duration::from_millis(800));
        // A write admitted earlier, recorded late (another thread), keeps the later one.
        w.admitted_at(t0 + Duration::from_millis(100));
        assert!(w.yielding_at(t0 + Duration::from_millis(1500)));
        assert!(!w.yielding_at(t0 + Duration::from_millis(1800)));
    }

    #[test]
    fn a_zero_window_never_yields() {
        let w = UnaryWrites::new(Duration::ZERO);
        w.admitted();
        assert!(!w.yielding());
    }

    #[test]
    fn a_write_in_the_first_millisecond_counts() {
        let w = UnaryWrites::new(Duration::from_millis(1000));
        w.admitted_at(w.origin);
        assert!(w.yielding_at(w.origin));
    }
}
