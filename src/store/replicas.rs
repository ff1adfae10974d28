//! Read replicas: PostgreSQL streaming standbys that answer reads, so that the primary
//! keeps its capacity for writes, the access log and the feed's live tail.
//!
//! A replica is a consistent prefix of the primary: what it shows is the primary as it was
//! some WAL ago. How far behind it is, in the only unit a reader cares about, is the feed
//! position visible there (`feed_head.last_position`), which `poll` reads every
//! `REPLICA_POLL`. A read goes to a replica only when that replica
//! - answered its last poll, within `REPLICA_FRESH`,
//! - shows at least the read's `min_position` (a consistency token), and
//! - is at most `max_lag` positions behind what this instance has followed on the primary;
//!
//! otherwise to the primary. A read a replica fails (stopped, restarting, a query
//! cancelled by recovery) is marked down and read again from the primary: a replica
//! never turns a read into an error.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::Pool;

use super::dialect::{Dialect, Pooled};
use super::sql::Sql;
use super::StoreResult;
use crate::telemetry::metrics as m;

/// How often each replica's visible feed position is read.
pub const REPLICA_POLL: Duration = Duration::from_millis(100);

/// A replica whose last successful poll is older than this is not read.
const REPLICA_FRESH: Duration = Duration::from_secs(1);

/// One replica.
pub(super) struct Replica<D: Dialect> {
    /// Host, port and database, for logs and metrics (never credentials).
    pub(super) name: String,
    pub(super) pool: Pool<D::DB>,
    /// The feed position visible there at the last poll.
    head: AtomicI64,
    /// Milliseconds after the set's epoch of the last successful poll (0: never).
    polled_ms: AtomicU64,
    up: AtomicBool,
}

/// The replicas of one store (none on SQLite, or when none is configured).
pub(super) struct Replicas<D: Dialect> {
    list: Vec<Replica<D>>,
    next: AtomicUsize,
    epoch: Instant,
    /// Most positions a replica may trail the primary's followed position and be read.
    max_lag: i64,
}

impl<D: Dialect> Replicas<D> {
    pub(super) fn new(pools: Vec<(String, Pool<D::DB>)>, max_lag: u64) -> Replicas<D> {
        Replicas {
            list: pools
                .into_iter()
                .map(|(name, pool)| Replica {
                    name,
                    pool,
                    head: AtomicI64::new(-1),
                    polled_ms: AtomicU64::new(0),
                    up: AtomicBool::new(false),
                })
                .collect(),
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            max_lag: i64::try_from(max_lag).unwrap_or(i64::MAX),
        }
    }

    pub(super) fn none() -> Replicas<D> {
        Replicas::new(Vec::new(), 0)
    }

    /// A replica to read from, and the position its answer reflects: one at least `min`
    /// fresh and at most `max_lag` behind `followed`, taken in turn.
    pub(super) fn pick(&self, min: i64, followed: i64) -> Option<(usize, i64)> {
        if self.list.is_empty() {
            return None;
        }
        let now = self.epoch.elapsed();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..self.list.len())
            .map(|i| (start + i) % self.list.len())
            .find_map(|i| {
                let r = &self.list[i];
                let polled = r.polled_ms.load(Ordering::Acquire);
                let fresh =
                    polled > 0 && now.saturating_sub(Duration::from_millis(polled)) < REPLICA_FRESH;
                let head = r.head.load(Ordering::Acquire);
                (r.up.load(Ordering::Acquire)
                    && fresh
                    && head >= min
                    && head >= followed.saturating_sub(self.max_lag))
                .then_some((i, head))
            })
    }

    pub(super) fn pool(&self, i: usize) -> &Pool<D::DB> {
        &self.list[i].pool
    }

    /// A read on replica `i` failed: not read again until a poll answers.
    pub(super) fn down(&self, i: usize, error: &dyn std::fmt::Display) {
        mark_down(&self.list[i], error);
    }

    /// Reads every replica's visible feed position; `followed` is the primary's, for the
    /// lag gauge.
    pub(super) async fn poll(&self, followed: i64) {
        for r in &self.list {
            let head = async {
                let (head,): (i64,) = Pooled::<D>::acquire(&r.pool)
                    .await?
                    .fetch_one(Sql::new("SELECT last_position FROM feed_head WHERE id = 1"))
                    .await?;
                StoreResult::Ok(head)
            };
            match tokio::time::timeout(REPLICA_FRESH, head).await {
                Ok(Ok(head)) => {
                    r.head.store(head, Ordering::Release);
                    let ms = self.epoch.elapsed().as_millis() as u64;
                    r.polled_ms.store(ms.max(1), Ordering::Release);
                    if !r.up.swap(true, Ordering::AcqRel) {
                        tracing::info!(replica = %r.name, position = head, "read replica answering");
                    }
                    metrics::gauge!(m::REPLICA_LAG_POSITIONS, "replica" => r.name.clone())
                        .set(followed.saturating_sub(head).max(0) as f64);
                    metrics::gauge!(m::REPLICA_UP, "replica" => r.name.clone()).set(1.0);
                }
                Ok(Err(e)) => mark_down(r, &e),
                Err(_) => mark_down(r, &"no answer within a second"),
            }
        }
    }

    /// Each replica: its name, whether it is read, and the position visible there.
    pub(super) fn states(&self) -> Vec<(String, bool, i64)> {
        self.list
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    r.up.load(Ordering::Acquire),
                    r.head.load(Ordering::Acquire),
                )
            })
            .collect()
    }
}

/// Takes a replica out of reading (a failed read or poll) until a poll answers.
fn mark_down<D: Dialect>(r: &Replica<D>, error: &dyn std::fmt::Display) {
    if r.up.swap(false, Ordering::AcqRel) {
        tracing::warn!(replica = %r.name, error = %error, "read replica failing; reading the primary");
    }
    metrics::gauge!(m::REPLICA_UP, "replica" => r.name.clone()).set(0.0);
}
