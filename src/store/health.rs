//! What the store tells its operators: whether the database answers, the feed's and the
//! pool's gauges, which failures are the database's (transient) rather than bugs, and the
//! call's deadline carried down to the database.
//!
//! - [`StoreError::fault`] sorts a failure: the database unreachable (connection refused
//!   or reset, no pooled connection within the acquire timeout, the server shutting
//!   down), a statement stopped by a timeout (a lock held elsewhere, say), or writes that
//!   kept conflicting. Those are answered UNAVAILABLE and retried by clients; anything
//!   else is a bug.
//! - [`Store::ping`](super::Store::ping) uses a connection of its own, outside the pool,
//!   so a busy pool does not look like a database outage. It connects anew when asked
//!   (`fresh`) and after any pool of the process failed to get a connection because the
//!   database was unreachable: that is what notices a database that refuses new
//!   connections while the old ones still work.
//! - [`with_deadline`] runs a call with its deadline known to the store: a write
//!   transaction whose call has less time left than the statement timeout runs with
//!   `statement_timeout` lowered to what is left (PostgreSQL), so the database stops
//!   working for a caller that has stopped waiting.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use sqlx::{ConnectOptions as _, Connection as _};

use super::dialect::{Dialect, Tx};
use super::sql::Sql;
use super::sql_store::SqlStore;
use super::{StoreError, StoreResult};
use crate::domain::Timestamp;
use crate::telemetry::metrics as m;

/// A failure of the database rather than of the request or the code: retrying helps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The database cannot be reached or is shutting down.
    Unavailable,
    /// A statement ran out of time (statement or lock timeout, SQLite's busy timeout).
    Timeout,
    /// Serialization failures or deadlocks outlasted the store's own retries.
    Contention,
}

impl Fault {
    /// The `kind` label of the database-error counter.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Unavailable => "unavailable",
            Fault::Timeout => "timeout",
            Fault::Contention => "contention",
        }
    }
}

impl StoreError {
    /// The database's own failure this is, if it is one (see the module's
    /// documentation); `None` for refusals and bugs.
    pub fn fault(&self) -> Option<Fault> {
        match self {
            StoreError::Database(e) => fault_of(e),
            StoreError::Unreachable(_) => Some(Fault::Unavailable),
            _ => None,
        }
    }
}

/// Sorts a sqlx error (see [`StoreError::fault`]).
pub fn fault_of(e: &sqlx::Error) -> Option<Fault> {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed
        // A connection cut mid-message (a terminated backend) reads as a protocol error.
        | sqlx::Error::Protocol(_) => Some(Fault::Unavailable),
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                return postgres_fault(pg.code());
            }
            // SQLite: the primary result code is the low byte of the extended one.
            let code: i64 = db.code()?.parse().ok()?;
            match code & 0xff {
                // SQLITE_BUSY, SQLITE_LOCKED: the busy timeout ran out.
                5 | 6 => Some(Fault::Timeout),
                // SQLITE_IOERR, SQLITE_CANTOPEN, SQLITE_FULL: the file cannot be used.
                10 | 13 | 14 => Some(Fault::Unavailable),
                _ => None,
            }
        }
        _ => None,
    }
}

/// PostgreSQL's SQLSTATEs that are the database's transient failures.
fn postgres_fault(code: &str) -> Option<Fault> {
    match code {
        // serialization_failure, deadlock_detected (after the store's retries)
        "40001" | "40P01" => Some(Fault::Contention),
        // query_canceled (statement_timeout), lock_not_available (lock_timeout)
        "57014" | "55P03" => Some(Fault::Timeout),
        // admin_shutdown, crash_shutdown, cannot_connect_now, database_dropped
        "57P01" | "57P02" | "57P03" | "57P04" => Some(Fault::Unavailable),
        // connection exceptions; insufficient resources (too many connections, disk
        // full, out of memory)
        c if c.starts_with("08") || c.starts_with("53") => Some(Fault::Unavailable),
        _ => None,
    }
}

/// The change feed's gauges, read in one statement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedGauges {
    /// The last feed position assigned.
    pub head: i64,
    /// Committed events without a feed position yet (counted up to a million).
    pub backlog: i64,
    /// When the oldest of them occurred.
    pub oldest_unsequenced: Option<Timestamp>,
    /// The feed position the sync digest describes (`None` until first built).
    pub digest_through: Option<i64>,
}

/// The resolution read model beside the database's buffer cache (PostgreSQL's primary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelGauges {
    /// The model's table and index.
    pub bytes: i64,
    /// The buffer cache (`shared_buffers`).
    pub cache_bytes: i64,
    /// Blocks of the model found in the buffer cache, since the statistics were reset.
    pub blocks_hit: i64,
    /// Blocks of the model read from outside it.
    pub blocks_read: i64,
}

/// The connection pool's gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolGauges {
    pub in_use: u32,
    pub idle: u32,
    /// Calls waiting for a pooled connection (in this process, every pool).
    pub waiting: i64,
}

/// Calls waiting for a connection right now, across the process's pools.
static WAITING: AtomicI64 = AtomicI64::new(0);

/// A pool of this process failed to get a connection from an unreachable database since
/// the last probe: the next probe connects anew. (Process-wide: a needless fresh probe
/// of a healthy database costs one connection.)
static SUSPECT: AtomicBool = AtomicBool::new(false);

/// Counts a wait for a pooled connection while `acquire` runs (a dropped wait included)
/// and records how long it took.
pub(super) async fn waiting_for<T>(
    acquire: impl Future<Output = Result<T, sqlx::Error>>,
) -> StoreResult<T> {
    struct Waiting(Instant);
    impl Drop for Waiting {
        fn drop(&mut self) {
            WAITING.fetch_sub(1, Ordering::Relaxed);
            metrics::histogram!(m::DB_POOL_ACQUIRE_SECONDS).record(self.0.elapsed().as_secs_f64());
        }
    }
    WAITING.fetch_add(1, Ordering::Relaxed);
    let _waiting = Waiting(Instant::now());
    // A refused connection attempt is a database error with a SQLSTATE that means
    // something else inside a transaction (55000 for a database not accepting
    // connections): any failure to get a connection is the database's unavailability.
    acquire.await.map_err(|e| {
        SUSPECT.store(true, Ordering::Relaxed);
        StoreError::Unreachable(e)
    })
}

tokio::task_local! {
    /// The deadline of the call this task serves, when it has one.
    static DEADLINE: Instant;
}

/// Runs `work` with `deadline` known to the store (see the module's documentation).
pub async fn with_deadline<F: Future>(deadline: Instant, work: F) -> F::Output {
    DEADLINE.scope(deadline, work).await
}

/// Whether the current call has a deadline and it has passed: a statement stopped by the
/// timeout [`SqlStore::limit_to_deadline`] set was stopped by the call's deadline.
pub fn deadline_passed() -> bool {
    time_left().is_some_and(|left| left.is_zero())
}

/// The time left to the current call's deadline, if it has one.
fn time_left() -> Option<Duration> {
    DEADLINE
        .try_with(|d| d.saturating_duration_since(Instant::now()))
        .ok()
}

impl<D: Dialect> SqlStore<D> {
    /// Lowers the statement timeout of a write transaction to the time its call has
    /// left, when that is shorter than the configured timeout.
    pub(super) async fn limit_to_deadline(&self, tx: &mut Tx<D>) -> StoreResult<()> {
        let Some(left) = time_left() else {
            return Ok(());
        };
        let configured = self.options.statement_timeout.unwrap_or(Duration::MAX);
        if left >= configured {
            return Ok(());
        }
        // At least a millisecond: 0 would mean "no timeout" to PostgreSQL.
        let ms = left.as_millis().max(1);
        if let Some(statement) = D::statement_timeout(ms as u64) {
            tx.execute(Sql::new(statement)).await?;
        }
        Ok(())
    }

    /// Checks that the database answers, on the store's own probe connection; `fresh`
    /// connects anew first.
    pub(super) async fn probe(&self, fresh: bool) -> StoreResult<()> {
        let mut probe = self.probe.lock().await;
        if fresh || SUSPECT.swap(false, Ordering::Relaxed) {
            if let Some(old) = probe.take() {
                let _ = old.close().await;
            }
        }
        if probe.is_none() {
            *probe = Some(self.read.connect_options().connect().await?);
        }
        let conn = probe.as_mut().expect("connected above");
        if let Err(e) = conn.ping().await {
            *probe = None;
            return Err(e.into());
        }
        Ok(())
    }

    /// The change feed's gauges. Each part is an index lookup or a bounded count, so a
    /// scrape costs little even with millions of events waiting (a bulk load's catch-up):
    /// the oldest unnumbered event is taken to be the one next in line, the lowest
    /// position waiting. (Taking the minimum `occurred_at` over every waiting event
    /// joined them all to `events`: seconds with the 1 M load's events waiting, past the
    /// statement timeout.)
    pub(super) async fn gauges_of_feed(&self) -> StoreResult<FeedGauges> {
        let (head, digest_through, backlog, oldest): (i64, Option<i64>, i64, Option<i64>) = self
            .reader()
            .await?
            .fetch_one(Sql::new(
                "SELECT h.last_position, d.digest_through, \
                 (SELECT COUNT(*) FROM (SELECT 1 FROM feed_pending LIMIT 1000000) b), \
                 (SELECT e.occurred_at FROM events e \
                  WHERE e.position = (SELECT MIN(position) FROM feed_pending)) \
                 FROM feed_head h, digest_head d WHERE h.id = 1 AND d.id = 1",
            ))
            .await?;
        Ok(FeedGauges {
            head,
            backlog,
            oldest_unsequenced: oldest.map(Timestamp),
            digest_through,
        })
    }

    /// The read model's gauges (`None` on a backend without a buffer cache of its own).
    pub(super) async fn gauges_of_model(&self) -> StoreResult<Option<ModelGauges>> {
        let Some(sql) = D::MODEL_CACHE_GAUGES else {
            return Ok(None);
        };
        let (bytes, cache_bytes, blocks_hit, blocks_read): (i64, i64, i64, i64) =
            self.reader().await?.fetch_one(Sql::new(sql)).await?;
        Ok(Some(ModelGauges {
            bytes,
            cache_bytes,
            blocks_hit,
            blocks_read,
        }))
    }

    /// The pools' gauges (reads and writes together).
    pub(super) fn gauges_of_pool(&self) -> PoolGauges {
        let mut pools = vec![&self.read];
        if !same_pool(&self.read, &self.write) {
            pools.push(&self.write);
        }
        let mut gauges = PoolGauges {
            waiting: WAITING.load(Ordering::Relaxed).max(0),
            ..PoolGauges::default()
        };
        for pool in pools {
            let idle = pool.num_idle() as u32;
            gauges.idle += idle;
            gauges.in_use += pool.size().saturating_sub(idle);
        }
        gauges
    }
}

/// True when two pool handles share one pool (PostgreSQL's reads and writes).
fn same_pool<DB: sqlx::Database>(a: &sqlx::Pool<DB>, b: &sqlx::Pool<DB>) -> bool {
    // Pools compare by their options' identity: the same `Arc` behind both handles.
    std::ptr::eq(
        std::sync::Arc::as_ptr(&a.connect_options()),
        std::sync::Arc::as_ptr(&b.connect_options()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_codes_are_sorted_into_faults() {
        assert_eq!(postgres_fault("08006"), Some(Fault::Unavailable));
        assert_eq!(postgres_fault("57P01"), Some(Fault::Unavailable));
        assert_eq!(postgres_fault("53300"), Some(Fault::Unavailable));
        assert_eq!(postgres_fault("57014"), Some(Fault::Timeout));
        assert_eq!(postgres_fault("40001"), Some(Fault::Contention));
        // A unique violation or a syntax error is not the database's fault.
        assert_eq!(postgres_fault("23505"), None);
        assert_eq!(postgres_fault("42601"), None);
    }

    #[test]
    fn pool_and_connection_failures_are_unavailable_and_decoding_ones_are_bugs() {
        assert_eq!(
            fault_of(&sqlx::Error::PoolTimedOut),
            Some(Fault::Unavailable)
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            fault_of(&sqlx::Error::Io(refused)),
            Some(Fault::Unavailable)
        );
        assert_eq!(fault_of(&sqlx::Error::RowNotFound), None);
        assert_eq!(fault_of(&sqlx::Error::ColumnNotFound("x".into())), None);
    }
}
