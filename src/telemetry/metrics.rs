//! Prometheus metrics: the names, the process-wide recorder, and the `/metrics` listener.
//!
//! Code anywhere in the server records with the `metrics` crate's macros under the names
//! below (one constant per series, so a dashboard and the code cannot drift apart:
//! `tests/operability.rs` scrapes `/metrics` and `.ci/validate-deploy` checks that the
//! dashboard and the alert rules use only these names). The recorder is installed once
//! per process by [`install`]; every listener renders the same registry. Gauges that
//! describe the database (the feed's head, the sequencer's backlog, ...) are read when
//! Prometheus scrapes, by the `refresh` callback given to [`serve`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt as _, Shared};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

// The standard gRPC server series (the names of go-grpc-prometheus and
// grpc-ecosystem/java-grpc-prometheus), with labels `grpc_type`, `grpc_service`,
// `grpc_method` and, on `handled`, `grpc_code`.
pub const GRPC_STARTED: &str = "grpc_server_started_total";
pub const GRPC_HANDLED: &str = "grpc_server_handled_total";
pub const GRPC_HANDLING_SECONDS: &str = "grpc_server_handling_seconds";
pub const GRPC_MSG_RECEIVED: &str = "grpc_server_msg_received_total";
pub const GRPC_MSG_SENT: &str = "grpc_server_msg_sent_total";

// The process and its dependencies.
pub const UP: &str = "payout_registry_up";
pub const READY: &str = "payout_registry_ready";
pub const DATABASE_UP: &str = "payout_registry_database_up";
/// Label `kind`: unavailable, timeout, serialization.
pub const DATABASE_ERRORS: &str = "payout_registry_database_errors_total";
/// Label `state`: in_use, idle.
pub const DB_POOL_CONNECTIONS: &str = "payout_registry_db_pool_connections";
pub const DB_POOL_WAITING: &str = "payout_registry_db_pool_waiting";
pub const DB_POOL_ACQUIRE_SECONDS: &str = "payout_registry_db_pool_acquire_seconds";

// The change feed.
pub const FEED_HEAD: &str = "payout_registry_feed_head_position";
pub const FEED_SEQUENCER_BACKLOG: &str = "payout_registry_feed_sequencer_backlog";
pub const FEED_LAG_SECONDS: &str = "payout_registry_feed_lag_seconds";
/// A unary write's wait, after its commit, for its event's feed position (its answer's
/// consistency token): commit to numbered.
pub const FEED_NUMBERING_WAIT_SECONDS: &str = "payout_registry_feed_numbering_wait_seconds";
pub const DIGEST_LAG_EVENTS: &str = "payout_registry_digest_lag_events";

// The access log.
pub const ACCESS_LOG_QUEUE_DEPTH: &str = "payout_registry_access_log_queue_depth";
pub const ACCESS_LOG_BATCH_SECONDS: &str = "payout_registry_access_log_batch_seconds";
pub const ACCESS_LOG_WRITE_FAILURES: &str = "payout_registry_access_log_write_failures_total";
pub const ACCESS_LOG_SPOOL_BYTES: &str = "payout_registry_access_log_spool_bytes";
pub const ACCESS_LOG_SHIP_FAILURES: &str = "payout_registry_access_log_ship_failures_total";

// The JetStream relay (its own process).
pub const RELAY_POSITION: &str = "payout_registry_relay_position";
pub const RELAY_LAG_EVENTS: &str = "payout_registry_relay_lag_events";
pub const RELAY_PUBLISHED: &str = "payout_registry_relay_published_total";

// Admission. Labels `client` (a configured client id) and `class`.
pub const RATE_LIMITED: &str = "payout_registry_rate_limited_total";
pub const SHED: &str = "payout_registry_shed_total";
/// Label `grpc_method`.
pub const STREAMS_ACTIVE: &str = "payout_registry_streams_active";

/// Population sync records. Labels `kind` (citizens, accounts), `outcome` (applied,
/// stale, rejected) and `reason` (the rejection's reason; empty otherwise).
pub const SYNC_RECORDS: &str = "payout_registry_sync_records_total";

// Reads beyond the primary: the resolution cache and the read replicas.
pub const RESOLUTION_CACHE_HITS: &str = "payout_registry_resolution_cache_hits_total";
pub const RESOLUTION_CACHE_MISSES: &str = "payout_registry_resolution_cache_misses_total";
pub const RESOLUTION_CACHE_ENTRIES: &str = "payout_registry_resolution_cache_entries";
/// The feed position this instance has followed (its cache is true at it).
pub const FOLLOWED_POSITION: &str = "payout_registry_followed_position";
/// Label `replica` (host:port/database).
pub const REPLICA_LAG_POSITIONS: &str = "payout_registry_replica_lag_positions";
pub const REPLICA_UP: &str = "payout_registry_replica_up";

// The resolution read model beside the database's buffer cache (PostgreSQL only): every
// BatchResolve id is a probe of the model, and a model larger than the cache is read
// from outside it (deploy/RUNBOOK.md, PayoutRegistryReadModelOutgrowsCache).
/// The model's table and index, in bytes.
pub const READ_MODEL_BYTES: &str = "payout_registry_read_model_bytes";
/// The database's buffer cache (`shared_buffers`), in bytes.
pub const DATABASE_BUFFER_CACHE_BYTES: &str = "payout_registry_database_buffer_cache_bytes";
/// Blocks of the model the database read, by where it found them. Label `found`: cache
/// (in its buffer cache), outside (the operating system's cache or the disk).
pub const READ_MODEL_BLOCKS_READ: &str = "payout_registry_read_model_blocks_read_total";

/// Every series this crate exports, for the tests and the deployment checks.
pub const ALL: &[&str] = &[
    GRPC_STARTED,
    GRPC_HANDLED,
    GRPC_HANDLING_SECONDS,
    GRPC_MSG_RECEIVED,
    GRPC_MSG_SENT,
    UP,
    READY,
    DATABASE_UP,
    DATABASE_ERRORS,
    DB_POOL_CONNECTIONS,
    DB_POOL_WAITING,
    DB_POOL_ACQUIRE_SECONDS,
    FEED_HEAD,
    FEED_SEQUENCER_BACKLOG,
    FEED_LAG_SECONDS,
    FEED_NUMBERING_WAIT_SECONDS,
    DIGEST_LAG_EVENTS,
    ACCESS_LOG_QUEUE_DEPTH,
    ACCESS_LOG_BATCH_SECONDS,
    ACCESS_LOG_WRITE_FAILURES,
    ACCESS_LOG_SPOOL_BYTES,
    ACCESS_LOG_SHIP_FAILURES,
    RELAY_POSITION,
    RELAY_LAG_EVENTS,
    RELAY_PUBLISHED,
    RATE_LIMITED,
    SHED,
    STREAMS_ACTIVE,
    SYNC_RECORDS,
    RESOLUTION_CACHE_HITS,
    RESOLUTION_CACHE_MISSES,
    RESOLUTION_CACHE_ENTRIES,
    FOLLOWED_POSITION,
    REPLICA_LAG_POSITIONS,
    REPLICA_UP,
    READ_MODEL_BYTES,
    DATABASE_BUFFER_CACHE_BYTES,
    READ_MODEL_BLOCKS_READ,
];

/// Latency buckets (seconds) for calls: from a cached resolution to a long stream.
const CALL_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// Latency buckets (seconds) for database work (an access-log batch, a pool acquire).
const DB_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Buckets (seconds) for the feed's numbering wait: finer around the 100 ms that the
/// feed's lag is held to.
const NUMBERING_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same handle) and
/// describes the series.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(GRPC_HANDLING_SECONDS.into()), CALL_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(ACCESS_LOG_BATCH_SECONDS.into()),
                        DB_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(DB_POOL_ACQUIRE_SECONDS.into()),
                        DB_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(FEED_NUMBERING_WAIT_SECONDS.into()),
                        NUMBERING_BUCKETS,
                    )
                })
                .expect("the bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
            }
            describe();
            metrics::gauge!(UP).set(1.0);
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(GRPC_STARTED, "RPCs started on the server");
    describe_counter!(
        GRPC_HANDLED,
        "RPCs completed on the server, by status code (streams when their trailers are sent)"
    );
    describe_histogram!(
        GRPC_HANDLING_SECONDS,
        Unit::Seconds,
        "time from an RPC's start to its status, streams included"
    );
    describe_counter!(GRPC_MSG_RECEIVED, "messages received, per method");
    describe_counter!(GRPC_MSG_SENT, "messages sent, per method");
    describe_gauge!(UP, "1 while the process runs");
    describe_gauge!(
        READY,
        "1 when the instance is ready to serve (database reachable, sequencer keeping up, access log writable)"
    );
    describe_gauge!(DATABASE_UP, "1 when the last database probe succeeded");
    describe_counter!(
        DATABASE_ERRORS,
        "transient database failures answered UNAVAILABLE, by kind"
    );
    describe_gauge!(DB_POOL_CONNECTIONS, "pooled database connections by state");
    describe_gauge!(DB_POOL_WAITING, "calls waiting for a pooled connection");
    describe_histogram!(
        DB_POOL_ACQUIRE_SECONDS,
        Unit::Seconds,
        "time to get a pooled connection"
    );
    describe_gauge!(FEED_HEAD, "the change feed's highest numbered position");
    describe_counter!(
        RESOLUTION_CACHE_HITS,
        "current-state resolutions answered from this instance's cache"
    );
    describe_counter!(
        RESOLUTION_CACHE_MISSES,
        "current-state resolutions the cache could not answer (read from the database)"
    );
    describe_gauge!(RESOLUTION_CACHE_ENTRIES, "citizens in the resolution cache");
    describe_gauge!(
        FOLLOWED_POSITION,
        "the feed position this instance has followed; its cache is true at it"
    );
    describe_gauge!(
        REPLICA_LAG_POSITIONS,
        "feed positions a read replica trails this instance's followed position"
    );
    describe_gauge!(REPLICA_UP, "1 while a read replica answers its polls");
    describe_gauge!(
        READ_MODEL_BYTES,
        Unit::Bytes,
        "the resolution read model's table and index on the primary (PostgreSQL)"
    );
    describe_gauge!(
        DATABASE_BUFFER_CACHE_BYTES,
        Unit::Bytes,
        "the primary's buffer cache, shared_buffers (PostgreSQL)"
    );
    describe_counter!(
        READ_MODEL_BLOCKS_READ,
        "blocks of the resolution read model the primary read, found in its buffer cache or outside it"
    );
    describe_gauge!(
        FEED_SEQUENCER_BACKLOG,
        "events committed but not yet given a feed position"
    );
    describe_gauge!(
        FEED_LAG_SECONDS,
        Unit::Seconds,
        "age of the committed event next in line for a feed position (the lowest unnumbered)"
    );
    describe_histogram!(
        FEED_NUMBERING_WAIT_SECONDS,
        Unit::Seconds,
        "a unary write's wait, after its commit, for its event's feed position"
    );
    describe_gauge!(
        DIGEST_LAG_EVENTS,
        "feed positions the sync digest has not yet folded in"
    );
    describe_gauge!(
        ACCESS_LOG_QUEUE_DEPTH,
        "reads waiting for their access-log entry"
    );
    describe_histogram!(
        ACCESS_LOG_BATCH_SECONDS,
        Unit::Seconds,
        "time to commit one access-log batch"
    );
    describe_counter!(
        ACCESS_LOG_WRITE_FAILURES,
        "access-log writes that failed (the reads they held were refused)"
    );
    describe_gauge!(
        ACCESS_LOG_SPOOL_BYTES,
        "bytes of access-log entries in this instance's spool not yet in the database"
    );
    describe_counter!(
        ACCESS_LOG_SHIP_FAILURES,
        "rounds that could not ship the access-log spool to the database (retried)"
    );
    describe_gauge!(
        RELAY_POSITION,
        "the last feed position published to JetStream"
    );
    describe_gauge!(
        RELAY_LAG_EVENTS,
        "feed positions not yet published to JetStream"
    );
    describe_counter!(RELAY_PUBLISHED, "events published to JetStream");
    describe_counter!(RATE_LIMITED, "calls refused by a client's rate limit");
    describe_counter!(SHED, "calls refused because the server was at its limit");
    describe_gauge!(STREAMS_ACTIVE, "streams open, per method");
    describe_counter!(SYNC_RECORDS, "population sync records by outcome");
}

/// What the listener runs before each scrape to bring the database gauges up to date.
pub type Refresh = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Longest a scrape waits for `refresh`: a stalled database must not stall Prometheus.
const REFRESH_TIMEOUT: Duration = Duration::from_millis(800);

/// Runs the scrapes' `refresh`, one at a time, each in a task of its own. A scrape that
/// stops waiting (after [`REFRESH_TIMEOUT`]) renders the gauges as last read and leaves
/// the refresh running: dropping it would abandon its statement mid-flight, still running
/// in the database until the statement timeout stopped it, while every later scrape
/// started another. A scrape that comes while a refresh runs waits for that one; one that
/// comes after it ended starts the next.
struct Refresher {
    refresh: Refresh,
    running: std::sync::Mutex<Option<Running>>,
}

/// A refresh's task: a future every waiting scrape shares, and the task's handle, which
/// knows whether it has ended (the shared future only learns that when a scrape polls
/// it), by returning or by panicking.
struct Running {
    handle: tokio::task::AbortHandle,
    task: Shared<BoxFuture<'static, ()>>,
}

impl Refresher {
    fn new(refresh: Refresh) -> Refresher {
        Refresher {
            refresh,
            running: std::sync::Mutex::new(None),
        }
    }

    /// The refresh running now, or a new one if none is.
    fn current(&self) -> Shared<BoxFuture<'static, ()>> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = running.as_ref().filter(|r| !r.handle.is_finished()) {
            return r.task.clone();
        }
        let task = tokio::spawn((self.refresh)());
        let handle = task.abort_handle();
        let task = async move {
            let _ = task.await;
        }
        .boxed()
        .shared();
        *running = Some(Running {
            handle,
            task: task.clone(),
        });
        task
    }

    /// Waits for the current refresh, at most `within`.
    async fn refreshed(&self, within: Duration) {
        let _ = tokio::time::timeout(within, self.current()).await;
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    refresh: Refresh,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = install();
    let refresher = Arc::new(Refresher::new(refresh));
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "metrics listening (GET /metrics)");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            let refresher = refresher.clone();
            async move {
                refresher.refreshed(REFRESH_TIMEOUT).await;
                handle.run_upkeep();
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// How many refreshes started and how many finished.
    #[derive(Default)]
    struct Counts {
        started: AtomicUsize,
        finished: AtomicUsize,
    }

    impl Counts {
        fn now(&self) -> (usize, usize) {
            (
                self.started.load(Ordering::SeqCst),
                self.finished.load(Ordering::SeqCst),
            )
        }
    }

    /// A refresh that counts its starts and its ends, taking `takes` in between.
    fn counted(takes: Duration) -> (Refresh, Arc<Counts>) {
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        let refresh: Refresh = Arc::new(move || {
            let c = c.clone();
            Box::pin(async move {
                c.started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(takes).await;
                c.finished.fetch_add(1, Ordering::SeqCst);
            })
        });
        (refresh, counts)
    }

    #[tokio::test]
    async fn a_scrape_that_stops_waiting_leaves_the_refresh_to_finish() {
        let (refresh, counts) = counted(Duration::from_millis(300));
        let refresher = Refresher::new(refresh);
        let at = std::time::Instant::now();
        refresher.refreshed(Duration::from_millis(50)).await;
        assert!(
            at.elapsed() < Duration::from_millis(250),
            "{:?}",
            at.elapsed()
        );
        assert_eq!(counts.now().1, 0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(counts.now(), (1, 1), "the abandoned refresh ran to its end");
        // No scrape saw it end: the next one reads the gauges anew all the same.
        refresher.refreshed(Duration::from_secs(5)).await;
        assert_eq!(counts.now(), (2, 2));
    }

    #[tokio::test]
    async fn scrapes_during_a_refresh_wait_for_it_and_the_next_scrape_starts_another() {
        let (refresh, counts) = counted(Duration::from_millis(200));
        let refresher = Refresher::new(refresh);
        // Three scrapes while the first refresh runs: two give up, one waits it out.
        refresher.refreshed(Duration::from_millis(20)).await;
        refresher.refreshed(Duration::from_millis(20)).await;
        refresher.refreshed(Duration::from_secs(5)).await;
        assert_eq!(counts.now(), (1, 1), "one refresh at a time");
        refresher.refreshed(Duration::from_secs(5)).await;
        assert_eq!(
            counts.now(),
            (2, 2),
            "a scrape after the refresh ended reads the gauges anew"
        );
    }

    #[tokio::test]
    async fn a_refresh_that_panicked_does_not_stop_the_next_scrape_from_refreshing() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let refresh: Refresh = Arc::new(move || {
            let first = c.fetch_add(1, Ordering::SeqCst) == 0;
            Box::pin(async move {
                if first {
                    panic!("the gauges' read failed");
                }
            })
        });
        let refresher = Refresher::new(refresh);
        refresher.refreshed(Duration::from_secs(5)).await;
        refresher.refreshed(Duration::from_secs(5)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the second scrape refreshed"
        );
    }
}
