//! SQLite, the embedded default (one file under `./data/`, no server to run): its
//! connection set-up and its [`Dialect`].
//!
//! SQLite allows one writer at a time, so writes go through a pool of exactly one
//! connection (transactions queue in the process instead of failing with SQLITE_BUSY),
//! and reads use a separate pool in WAL mode, which never blocks on the writer. The
//! single writer connection is what PostgreSQL's row locks are for, so this dialect
//! locks nothing. Sets of rows and keys are spelt out as multi-row `VALUES` and `IN`
//! lists: SQLite prepares statements cheaply and has no arrays.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Arguments, Sqlite, SqlitePool};

use super::dialect::{row_statements, Dialect};
use super::freshness::Freshness;
use super::replicas::Replicas;
use super::sql::{Arg, Decoded, Placeholder, Row, Sql, SqlBuilder, Val};
use super::sql_store::{Pools, SqlStore};
use super::{StoreOptions, StoreResult};
use crate::domain::CitizenId;

/// The SQLite store: a one-connection writer pool and a reader pool.
pub type SqliteStore = SqlStore<SqliteDialect>;

/// SQLite's SQL and behaviour.
pub struct SqliteDialect;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The writer connection's page cache: 64 MiB (SQLite's `cache_size` in KiB when
/// negative). Readers keep the default, as there are up to `db_max_connections` of them.
const WRITER_CACHE: &str = "-65536";

/// Prepared statements each connection keeps: the multi-row writes' and lookups'
/// power-of-two shapes ([`SqliteDialect::statement_rows`]) of every table, beside the
/// single statements (sqlx's default, 100, is less than one batch's shapes).
const STATEMENT_CACHE: usize = 1000;

/// The largest power of two at most `n` (`n` ≥ 1).
fn power_of_two_at_most(n: usize) -> usize {
    1 << n.max(1).ilog2()
}

/// Pages of WAL after which the writer's own commit copies them back into the database
/// file: the backstop, for when the checkpointer (below) falls behind. That copy runs on
/// the writer's thread inside the commit that crosses the mark, with the database file's
/// fsync, and all writes wait for it. 100,000 pages (400 MB) is also the most a crash
/// recovery replays, and about the WAL file's size on disk after a long bulk load.
/// (SQLite's default is 1,000 pages, 4 MB: with it a sync batch's index pages, dirtied
/// all over the file, were copied back after every few batches.) Kept above what the
/// checkpointer's interval lets a stream write: SyncCitizens writes about 40,000 pages a
/// second on two cores (3.6 a record, counted in the WAL), and at 40,000 the writer's
/// commits would do the copying.
const WAL_AUTOCHECKPOINT: &str = "100000";

/// How often, at most, the checkpointer copies committed WAL frames back into the
/// database file while writes come in. A page changed by several commits within the
/// interval is copied back once: a sync batch's random index pages are changed again by
/// the next batches. Measured on the 1 M-citizen
/// file (2 cores; SyncCitizens 100 k after 40 k on the same registry, three alternated
/// pairs): every 1 s with the backstop at 100,000 pages, 10.1-11.9 k records/s and the
/// checkpointer's thread 0.8-0.9 core-s, against 8.9-10.4 k/s and 2.3-2.6 core-s every
/// 50 ms with the backstop at 40,000; each pair 13% apart. The 1 M load took 285.4 s
/// against 273.6 s (one pair): a longer WAL is searched by every page read. At 1 s with
/// a 200,000-page backstop the load took 16% longer (850 MB of WAL).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// How often the checkpointer runs without a write signalled (the access log's writes
/// signal none).
const CHECKPOINT_IDLE: Duration = Duration::from_secs(1);

/// Opens (creating when missing) the database file: a writer pool of one connection and
/// a read-only pool. One process owns the file, so the change signal is in-process only.
pub async fn connect(url: &str, options: StoreOptions) -> StoreResult<SqliteStore> {
    let connect = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .statement_cache_capacity(STATEMENT_CACHE)
        .busy_timeout(options.statement_timeout.unwrap_or(Duration::from_secs(10)));
    // The one writer keeps WRITER_CACHE of pages in its own cache: with SQLite's default
    // 2 MB, a sync batch's index descents re-read most pages from the OS (pread was 8% of
    // a SyncCitizens run's CPU, the writer's thread a third busy and waiting the rest).
    let write = SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(
            connect
                .clone()
                // The tables declare foreign keys, but the writer does not check them
                // row by row, for the reasons PostgreSQL's migration 0016 dropped its
                // own: the write path keeps every reference (`store/references.rs`), and
                // `check` finds one written behind its back. A checked key also makes
                // SQLite journal each multi-row INSERT (see `append`). Without both, a
                // 200 k-citizen load took 21.4-21.6 s against 22.9-24.5 s (alternated).
                .foreign_keys(false)
                .pragma("cache_size", WRITER_CACHE)
                // The writer's statement journals (each multi-row INSERT of a batch keeps
                // the pages it changes, to undo the statement alone) in memory: spilled
                // to a temporary file past 64 KB, they were 7% of the writer's time in a
                // SyncAccounts run, in pwrite. Its sorts stay small: batches are bounded.
                .pragma("temp_store", "MEMORY")
                .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT),
        )
        .await?;
    let changed = Arc::new(tokio::sync::watch::Sender::new(0u64));
    let checkpointer = SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect.clone())
        .await?;
    tokio::spawn(checkpoint_after_writes(checkpointer, changed.subscribe()));
    let read = SqlitePoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect.read_only(true))
        .await?;
    let fresh = Freshness::new(options.resolution_cache_entries);
    Ok(SqlStore::new(
        Pools {
            write: write.clone(),
            read,
            log: write.clone(),
            maintenance: write,
        },
        options,
        changed,
        fresh,
        Replicas::none(),
        None,
    ))
}

/// The checkpointer: on its own connection, copies the WAL's committed frames back into
/// the database file (`PRAGMA wal_checkpoint(PASSIVE)`: it waits for no one, and no one
/// waits for it) at most every [`CHECKPOINT_EVERY`] while writes come in, and every
/// [`CHECKPOINT_IDLE`] otherwise (not every writer signals its commits: the access log's
/// do not), so that the one writer does not: a SyncAccounts stream's commits spent 14% of
/// the writer's time checkpointing, fsync included. Ends with the store (its change signal
/// closes).
async fn checkpoint_after_writes(pool: SqlitePool, mut writes: tokio::sync::watch::Receiver<u64>) {
    let mut failing = false;
    loop {
        tokio::select! {
            changed = writes.changed() => if changed.is_err() { break },
            () = tokio::time::sleep(CHECKPOINT_IDLE) => {}
        }
        let done: Result<(i64, i64, i64), sqlx::Error> =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&pool)
                .await;
        match &done {
            // The writer's own checkpoint at WAL_AUTOCHECKPOINT pages still runs.
            Err(e) if !failing => {
                tracing::warn!(error = %e, "the WAL checkpoint failed; the writer will checkpoint")
            }
            Ok(_) if failing => tracing::info!("the WAL checkpoint works again"),
            _ => {}
        }
        failing = done.is_err();
        tokio::time::sleep(CHECKPOINT_EVERY).await;
    }
    pool.close().await;
}

impl Dialect for SqliteDialect {
    type DB = Sqlite;

    async fn migrate(pool: &SqlitePool) -> StoreResult<()> {
        Ok(MIGRATOR.run(pool).await?)
    }

    // The single writer connection already excludes other writers; no row locks needed.
    const FOR_UPDATE: &'static str = "";

    /// `position` is the rowid (AUTOINCREMENT: rows of one INSERT get increasing ids), and
    /// the `feed_pending` trigger's own insert does not change what this answers.
    const LAST_EVENT: &'static str = "SELECT last_insert_rowid()";

    /// With the file's write lock, waiting (busy_timeout) while another process (the
    /// relay) holds it. A deferred transaction that read first could instead fail at its
    /// first write once that process had written in between.
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";

    /// SQLite plans every statement afresh; nothing to set.
    const BULK_PREAMBLE: &'static [&'static str] = &[];
    const KEY_LOOKUP_PREAMBLE: &'static [&'static str] = &[];

    /// SQLite has one writer connection: the access log commits on it like everything
    /// else.
    const ACCESS_LOG_OWN_CONNECTIONS: bool = false;

    /// A SQLite read transaction (WAL) reads one snapshot from its first statement on.
    const SNAPSHOT_READ: &'static [&'static str] = &[];

    /// SQLite's ANALYZE reads every row of every index, holding the one writer
    /// connection meanwhile. About 1,000 rows per index give the planner the same
    /// choices (SQLite's own advice for `PRAGMA optimize`). The limit bounds the sampling
    /// only: the entries are still counted, one pass over each index, so an ANALYZE of a
    /// large table still takes seconds from a cold cache. Only the bulk load's tables are
    /// analyzed, by a load that is the only writer; the feed's tables are not
    /// ([`SqliteDialect::FEED_STATISTICS_FORGOTTEN`]).
    const ANALYZE_PREAMBLE: &'static [&'static str] = &["PRAGMA analysis_limit = 1000"];

    /// The feed's tables get no statistics on SQLite. Its ANALYZE counts every entry of
    /// each index exactly whatever `analysis_limit` says (3.46 codes an exact `OP_Count`
    /// unless the STAT4 optimization is switched off, which only a test control can do),
    /// and it holds the one writer meanwhile: at 3.5 M events (a 1 M-citizen database)
    /// the sequencer's refresh at start took 3-5.5 s from a cold cache, past
    /// `db_acquire_timeout_ms`, and a SyncCitizens stream sent as the registry started
    /// ended UNAVAILABLE. Without statistics SQLite plans every feed statement by its key
    /// (the rowid, or the unique index), as it does with fresh statistics; with the
    /// statistics of a feed analyzed when small it scanned `events` and `feed_pending`
    /// to delete from them. So the refresh deletes them (`ANALYZE sqlite_schema` creates
    /// `sqlite_stat1` where it is missing, and reloads what is left): milliseconds.
    const FEED_STATISTICS_FORGOTTEN: &'static [&'static str] = &[
        "ANALYZE sqlite_schema",
        "DELETE FROM sqlite_stat1 WHERE tbl IN ('events', 'feed', 'feed_pending')",
        "ANALYZE sqlite_schema",
    ];

    /// A deleted row's space goes back to its b-tree page at once: nothing to reclaim.
    const VACUUM_QUEUE: &'static [&'static str] = &[];

    /// Through the FTS5 index `access_log_terms` (migration 0015), the id as a phrase.
    const LOG_NAMES_CITIZEN: &'static str = "id IN (SELECT rowid FROM access_log_terms \
         WHERE access_log_terms MATCH '\"' || $1 || '\"')";

    const ACCESS_LOG_TERMS: bool = true;

    const LOG_CITIZENS_COLUMN: &'static str = "citizen_ids";

    /// FTS5 merges its segments as it writes them.
    const ACCESS_LOG_INDEX_CLEANUP: Option<&'static str> = None;
    const MODEL_CACHE_GAUGES: Option<&'static str> = None;

    /// The single writer connection already gives the sequencer one consistent state.
    const SEQUENCER_ISOLATION: &'static [&'static str] = &[];

    /// One process owns the file: the in-process signal is all there is.
    const FEED_ADVANCED: Option<&'static str> = None;

    /// SQLite has no statement timeout; its busy timeout bounds lock waits.
    fn statement_timeout(_ms: u64) -> Option<String> {
        None
    }

    /// SQLite allows 32,766 bound parameters per statement: rows are written in chunks.
    const BINDS_PER_STATEMENT: Option<usize> = Some(30_000);

    /// `?`: SQLite finds a named or numbered parameter (`$n`, `?n`) by a linear scan of
    /// the statement's parameters, when it parses the statement and again each time sqlx
    /// asks for a parameter's name to bind it, so a multi-row INSERT of a whole batch
    /// (tens of thousands of parameters) would cost quadratic time. Anonymous ones are
    /// bound by position.
    const PLACEHOLDER: Placeholder = Placeholder::Anonymous;

    /// A power of two: SQLite parses and plans each statement text it has not cached,
    /// and a multi-row INSERT of a batch's rows had a text of its own for every row
    /// count. So a batch's rows go in statements of 512, 256, ... rows (1,000 rows: six
    /// statements), a handful of texts per table that stay prepared in the writer's
    /// statement cache ([`STATEMENT_CACHE`]).
    fn statement_rows(remaining: usize, columns: usize) -> usize {
        let most = Self::rows_per_statement(columns).unwrap_or(remaining);
        power_of_two_at_most(remaining.min(most))
    }

    /// Multi-row `VALUES`.
    fn push_relation(q: &mut SqlBuilder, rows: Vec<Row>) -> StoreResult<()> {
        q.push("VALUES ");
        for (i, row) in rows.into_iter().enumerate() {
            q.push(if i == 0 { "(" } else { ", (" });
            for (j, v) in row.0.into_iter().enumerate() {
                if j > 0 {
                    q.push(", ");
                }
                q.push_bind(v);
            }
            q.push(")");
        }
        Ok(())
    }

    fn push_probes(
        q: &mut SqlBuilder,
        table: &str,
        filter: impl FnOnce(&mut SqlBuilder),
        column: &str,
        keys: Vec<Val>,
    ) -> StoreResult<()> {
        q.push(&format!(" FROM {table} WHERE "));
        filter(q);
        q.push(&format!(" AND {column}"));
        Self::push_in(q, keys)
    }

    /// A JSON array of the ids (the column is text; `access_log_terms` is what is
    /// searched).
    fn push_citizens(q: &mut SqlBuilder, citizens: &[&CitizenId]) -> StoreResult<()> {
        let ids: Vec<&str> = citizens.iter().map(|c| c.as_str()).collect();
        let json = serde_json::to_string(&ids)
            .map_err(|e| super::StoreError::Corrupt(format!("encoding a list: {e}")))?;
        q.push_bind(Val::Text(Some(json)));
        Ok(())
    }

    /// ` IN (k1, k2, ...)`, the keys padded with NULLs (which match nothing) to a power
    /// of two, so that lookups of any number of keys share a few statement texts, as
    /// [`SqliteDialect::statement_rows`] does for writes.
    fn push_in(q: &mut SqlBuilder, keys: Vec<Val>) -> StoreResult<()> {
        q.push(" IN (");
        let padded = keys.len().max(1).next_power_of_two();
        let nulls = std::iter::repeat_with(|| Val::Text(None)).take(padded - keys.len());
        for (i, k) in keys.into_iter().chain(nulls).enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.push_bind(k);
        }
        q.push(")");
        Ok(())
    }

    async fn execute(conn: &mut SqliteConnection, sql: Sql) -> StoreResult<u64> {
        let (text, args) = sql.into_parts();
        let args = arguments(args)?;
        Ok(sqlx::query_with(&text, args)
            .execute(conn)
            .await?
            .rows_affected())
    }

    /// Multi-row INSERTs under the bind limit, in power-of-two statements
    /// ([`SqliteDialect::statement_rows`]), `OR FAIL`: a constraint error then stops the
    /// statement without undoing the rows it already wrote, so SQLite keeps no statement
    /// journal for it (a copy of every page the statement changes that the transaction
    /// had changed before: 9% of a SyncCitizens run's samples, against 3.6% for the
    /// upserts' journals after). Nothing is lost by it: every append is part of a write
    /// transaction that is rolled back whole on any error.
    async fn append(conn: &mut SqliteConnection, target: &str, rows: Vec<Row>) -> StoreResult<u64> {
        let mut appended = 0;
        for q in row_statements::<Self>(&format!("INSERT OR FAIL INTO {target} "), "", rows)? {
            appended += Self::execute(conn, q).await?;
        }
        Ok(appended)
    }

    async fn fetch_all<R: Decoded>(conn: &mut SqliteConnection, sql: Sql) -> StoreResult<Vec<R>> {
        let (text, args) = sql.into_parts();
        let args = arguments(args)?;
        Ok(sqlx::query_as_with::<_, R, _>(&text, args)
            .fetch_all(conn)
            .await?)
    }

    async fn fetch_optional<R: Decoded>(
        conn: &mut SqliteConnection,
        sql: Sql,
    ) -> StoreResult<Option<R>> {
        let (text, args) = sql.into_parts();
        let args = arguments(args)?;
        Ok(sqlx::query_as_with::<_, R, _>(&text, args)
            .fetch_optional(conn)
            .await?)
    }

    async fn fetch_one<R: Decoded>(conn: &mut SqliteConnection, sql: Sql) -> StoreResult<R> {
        let (text, args) = sql.into_parts();
        let args = arguments(args)?;
        Ok(sqlx::query_as_with::<_, R, _>(&text, args)
            .fetch_one(conn)
            .await?)
    }
}

/// Encodes a statement's arguments. SQLite has no arrays: an array argument is a bug in
/// the shared code (this dialect's `push_relation` and `push_in` never make one).
fn arguments<'q>(args: Vec<Arg>) -> Result<SqliteArguments<'q>, sqlx::Error> {
    let mut out = SqliteArguments::default();
    for arg in args {
        match arg {
            Arg::Text(v) => out.add(v),
            Arg::Int(v) => out.add(v),
            Arg::Uuid(v) => out.add(v),
            Arg::Bool(v) => out.add(v),
            Arg::Bytes(v) => out.add(v),
            Arg::Array(_) => Err("SQLite cannot bind an array".into()),
        }
        .map_err(sqlx::Error::Encode)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of a write, split the way the SQLite writer splits them.
    fn split(n: usize, columns: usize) -> Vec<usize> {
        super::super::dialect::statement_sizes::<SqliteDialect>(n, columns, usize::MAX).collect()
    }

    /// Every row is written once, in statements of a few shapes, each under the bound
    /// parameter limit.
    #[test]
    fn a_batch_goes_in_power_of_two_statements_under_the_bind_limit() {
        assert_eq!(split(1000, 10), [512, 256, 128, 64, 32, 8]);
        assert_eq!(split(1, 10), [1]);
        // 40 columns: at most 750 rows fit under 30,000 parameters.
        assert_eq!(split(1000, 40), [512, 256, 128, 64, 32, 8]);
        // 100 columns: 300 fit, so statements of 256.
        assert_eq!(split(1000, 100), [256, 256, 256, 128, 64, 32, 8]);
        let mut shapes = std::collections::BTreeSet::new();
        for n in 1..=1000 {
            let sizes = split(n, 12);
            assert_eq!(sizes.iter().sum::<usize>(), n);
            assert!(sizes
                .iter()
                .all(|s| s.is_power_of_two() && s * 12 <= 30_000));
            shapes.extend(sizes);
        }
        // Every batch size from 1 to 1,000 shares ten statement texts per table.
        assert_eq!(shapes.len(), 10);
    }

    /// The text of a lookup of `n` keys.
    fn lookup(n: usize) -> String {
        let mut q = SqliteDialect::builder("SELECT 1 FROM citizens WHERE citizen_id");
        let keys = (0..n).map(|i| Val::Text(Some(i.to_string()))).collect();
        SqliteDialect::push_in(&mut q, keys).unwrap();
        q.build().into_parts().0.into_owned()
    }

    /// Lookups of 513 to 1,024 keys are one statement text, with 1,024 placeholders; none
    /// is empty (no keys: one NULL, which matches nothing).
    #[test]
    fn lookups_share_a_text_per_power_of_two() {
        assert_eq!(lookup(513), lookup(1000));
        assert_eq!(lookup(1000), lookup(1024));
        assert_eq!(lookup(1000).matches('?').count(), 1024);
        assert_ne!(lookup(512), lookup(513));
        assert_eq!(lookup(0), lookup(1));
        assert_eq!(lookup(0).matches('?').count(), 1);
    }
}
