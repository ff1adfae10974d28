//! The contract between the shared store code and a backend: [`Dialect`].
//!
//! Everything PostgreSQL and SQLite do differently is an item of this trait, so the
//! compiler checks the contract: a backend that forgets a hook does not build, and the
//! shared code cannot reach for anything a backend does not declare. The differences are
//! of three kinds:
//! - SQL that differs: the row-locking selects and `FOR UPDATE`, how a write transaction
//!   begins, statements run first in some transactions (the bulk planner settings, the
//!   sequencer's isolation level, `pg_notify`), where the access log writes;
//! - how a set of rows or keys is spelt ([`Dialect::push_relation`], [`Dialect::push_in`]:
//!   bound arrays on PostgreSQL, so a statement's text does not depend on the batch size
//!   and is prepared once per connection; multi-row `VALUES` with anonymous `?`
//!   placeholders, chunked under the bind limit, on SQLite) and which unique constraint
//!   an error names;
//! - running a [`Sql`] on a connection. These are implemented concretely per backend, so
//!   the shared code names no sqlx bound at all (see `sql.rs` for why).
//!
//! Shared code runs statements through a [`Session`]: a transaction or a pooled
//! connection, tagged with its dialect.

use std::future::Future;
use std::marker::PhantomData;
use std::ops::DerefMut;

use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};

use super::health::waiting_for;
use super::sql::{Decoded, Placeholder, Row, Sql, SqlBuilder, Val};
use super::StoreResult;
use crate::domain::CitizenId;

/// A backend's SQL and behaviour, where they differ.
pub trait Dialect: Send + Sync + Sized + 'static {
    /// The sqlx database.
    type DB: Database;

    /// Applies the backend's pending migrations (its own `migrations/` folder).
    fn migrate(pool: &Pool<Self::DB>) -> impl Future<Output = StoreResult<()>> + Send + '_;

    /// Appended to a select to lock the rows it returns (empty where there are no row
    /// locks).
    const FOR_UPDATE: &'static str;

    /// The write position (`events.position`) of the last event this transaction
    /// appended, run right after the INSERT into `events`: the largest of them.
    const LAST_EVENT: &'static str;

    /// How a write transaction begins.
    const BEGIN_WRITE: &'static str;

    /// Run first in every bulk transaction (sync batches, batch lookups).
    const BULK_PREAMBLE: &'static [&'static str];

    /// Run first in a transaction that reads many rows of one table by its primary key
    /// alone (BatchResolve's read of the resolution read model), instead of
    /// [`Dialect::BULK_PREAMBLE`].
    const KEY_LOOKUP_PREAMBLE: &'static [&'static str];

    /// Whether the access log writes on connections of its own, held outside any pool
    /// (see `access_log.rs`), rather than on the write pool.
    const ACCESS_LOG_OWN_CONNECTIONS: bool;

    /// Run before `ANALYZE` in its write transaction: bounds how much of each table it
    /// reads where, left alone, it would read every row while holding the only writer.
    const ANALYZE_PREAMBLE: &'static [&'static str];

    /// Where the change feed's planner statistics are not sampled as it grows: the
    /// statements that remove them instead (run in one write transaction), so that the
    /// planner keeps its defaults. Empty where the feed's tables are `ANALYZE`d.
    const FEED_STATISTICS_FORGOTTEN: &'static [&'static str];

    /// Run on a connection of its own, outside any transaction, to reclaim the rows the
    /// sequencer has deleted from its queue (`feed_pending`); empty where a deleted row
    /// leaves nothing behind.
    const VACUUM_QUEUE: &'static [&'static str];

    /// Run first in a read-only transaction whose statements must all see one snapshot
    /// (`check` compares two tables).
    const SNAPSHOT_READ: &'static [&'static str];

    /// A condition on `access_log` rows: the row is a read of many citizens and `$1` is
    /// one of them (how they are held and searched is the backend's).
    const LOG_NAMES_CITIZEN: &'static str;

    /// Merges the pending entries of the index over the citizens of reads of many into
    /// the index itself, off the read path (`None`: nothing to merge).
    const ACCESS_LOG_INDEX_CLEANUP: Option<&'static str>;

    /// Reads the resolution read model's size beside the database's buffer cache, and
    /// the model's blocks read from that cache and from outside it, as one row of four
    /// integers (`None`: the backend has no such cache of its own; SQLite reads through
    /// the operating system's).
    const MODEL_CACHE_GAUGES: Option<&'static str>;

    /// Whether a row of many citizens is also written to the full-text index
    /// `access_log_terms` (where the list cannot be indexed itself).
    const ACCESS_LOG_TERMS: bool;

    /// Run first in the sequencer's transaction.
    const SEQUENCER_ISOLATION: &'static [&'static str];

    /// Run in the sequencer's transaction when it assigned feed positions, with the
    /// round's payload (`freshness::Round`) bound: wakes the other instances.
    const FEED_ADVANCED: Option<&'static str>;

    /// Most parameters bound in one statement (`None`: no limit, rows are bound as
    /// arrays); multi-row writes are chunked under it.
    const BINDS_PER_STATEMENT: Option<usize>;

    /// Rows of `columns` values that fit in one statement under
    /// [`Dialect::BINDS_PER_STATEMENT`] (`None`: any number).
    fn rows_per_statement(columns: usize) -> Option<usize> {
        Self::BINDS_PER_STATEMENT.map(|b| (b / columns.max(1)).max(1))
    }

    /// Rows the next statement of a multi-row write takes, `remaining` rows of `columns`
    /// values still to write: all of them, or as many as fit
    /// ([`Dialect::rows_per_statement`]). A dialect that prepares each statement text
    /// anew answers fewer, so that a few texts serve every batch.
    fn statement_rows(remaining: usize, columns: usize) -> usize {
        Self::rows_per_statement(columns).map_or(remaining, |most| remaining.min(most))
    }

    /// How built statements spell their placeholders.
    const PLACEHOLDER: Placeholder;

    /// The statement that limits the rest of a transaction's statements to `ms`
    /// milliseconds each, where the backend has one.
    fn statement_timeout(ms: u64) -> Option<String>;

    /// A statement to build around a set of rows or keys, starting with `head`.
    fn builder(head: &str) -> SqlBuilder {
        SqlBuilder::new(Self::PLACEHOLDER, head)
    }

    /// Appends `rows` as a relation (after an `INSERT INTO t (...) ` or inside an `IN (`).
    fn push_relation(q: &mut SqlBuilder, rows: Vec<Row>) -> StoreResult<()>;

    /// The `access_log` column a read of many citizens names them in.
    const LOG_CITIZENS_COLUMN: &'static str;

    /// Appends `citizens` as one value of [`Dialect::LOG_CITIZENS_COLUMN`].
    fn push_citizens(q: &mut SqlBuilder, citizens: &[&CitizenId]) -> StoreResult<()>;

    /// Appends a membership test of the expression just pushed in `keys` (` IN (...)`,
    /// ` = ANY($n)`, ...); no key matches nothing.
    fn push_in(q: &mut SqlBuilder, keys: Vec<Val>) -> StoreResult<()>;

    /// Appends `FROM <table> ...`: the rows of `table` that pass `filter` (pushed by the
    /// caller, binds and all) and whose `column` equals one of `keys`, each key looked up
    /// in an index on its own. For an index whose leading columns `filter` fixes by
    /// equality and whose next column is `column`: PostgreSQL, asked `column = ANY(...)`,
    /// may scan the whole prefix and filter when its statistics say the prefix is small
    /// (a payroll period that began after the last ANALYZE), so there it is a LATERAL
    /// join over the keys; SQLite probes an `IN` list key by key.
    fn push_probes(
        q: &mut SqlBuilder,
        table: &str,
        filter: impl FnOnce(&mut SqlBuilder),
        column: &str,
        keys: Vec<Val>,
    ) -> StoreResult<()>;

    /// Runs a statement; answers the rows affected.
    fn execute<'c>(
        conn: &'c mut <Self::DB as Database>::Connection,
        sql: Sql,
    ) -> impl Future<Output = StoreResult<u64>> + Send + 'c;

    /// Appends `rows` to `target` (`table (column, ...)`) as new rows, the fastest way the
    /// backend has, and answers how many: binary COPY on PostgreSQL, multi-row INSERTs on
    /// SQLite. A row that breaks a constraint fails the whole append, as an INSERT would.
    fn append<'c>(
        conn: &'c mut <Self::DB as Database>::Connection,
        target: &'c str,
        rows: Vec<Row>,
    ) -> impl Future<Output = StoreResult<u64>> + Send + 'c;

    /// Runs a select; answers every row.
    fn fetch_all<'c, R: Decoded>(
        conn: &'c mut <Self::DB as Database>::Connection,
        sql: Sql,
    ) -> impl Future<Output = StoreResult<Vec<R>>> + Send + 'c;

    /// Runs a select; answers its first row, if any.
    fn fetch_optional<'c, R: Decoded>(
        conn: &'c mut <Self::DB as Database>::Connection,
        sql: Sql,
    ) -> impl Future<Output = StoreResult<Option<R>>> + Send + 'c;

    /// Runs a select that returns a row.
    fn fetch_one<'c, R: Decoded>(
        conn: &'c mut <Self::DB as Database>::Connection,
        sql: Sql,
    ) -> impl Future<Output = StoreResult<R>> + Send + 'c;
}

/// Something that holds a connection of `D`'s database: a transaction or a pooled
/// connection.
pub trait Handle<D: Dialect>: DerefMut<Target = <D::DB as Database>::Connection> + Send {}

impl<D: Dialect, C> Handle<D> for C where
    C: DerefMut<Target = <D::DB as Database>::Connection> + Send
{
}

/// A connection the shared code runs statements on, tagged with its dialect (so that
/// helpers taking one infer the dialect).
pub struct Session<D, C> {
    conn: C,
    dialect: PhantomData<D>,
}

/// A transaction.
pub type Tx<D> = Session<D, sqlx::Transaction<'static, <D as Dialect>::DB>>;

/// A connection taken from a pool, outside any explicit transaction.
pub type Pooled<D> = Session<D, PoolConnection<<D as Dialect>::DB>>;

impl<D: Dialect, C: Handle<D>> Session<D, C> {
    /// A session on a connection or transaction (the caller's own, or from a pool).
    pub fn on(conn: C) -> Session<D, C> {
        Session {
            conn,
            dialect: PhantomData,
        }
    }

    pub fn execute(&mut self, sql: Sql) -> impl Future<Output = StoreResult<u64>> + Send + '_ {
        D::execute(&mut *self.conn, sql)
    }

    pub fn fetch_all<R: Decoded>(
        &mut self,
        sql: Sql,
    ) -> impl Future<Output = StoreResult<Vec<R>>> + Send + '_ {
        D::fetch_all(&mut *self.conn, sql)
    }

    pub fn fetch_optional<R: Decoded>(
        &mut self,
        sql: Sql,
    ) -> impl Future<Output = StoreResult<Option<R>>> + Send + '_ {
        D::fetch_optional(&mut *self.conn, sql)
    }

    pub fn fetch_one<R: Decoded>(
        &mut self,
        sql: Sql,
    ) -> impl Future<Output = StoreResult<R>> + Send + '_ {
        D::fetch_one(&mut *self.conn, sql)
    }

    /// Appends rows to `target` (`Dialect::append`).
    pub fn append<'s>(
        &'s mut self,
        target: &'s str,
        rows: Vec<Row>,
    ) -> impl Future<Output = StoreResult<u64>> + Send + 's {
        D::append(&mut *self.conn, target, rows)
    }

    /// Runs fixed statements in order (a dialect's preamble).
    pub async fn run(&mut self, statements: &'static [&'static str]) -> StoreResult<()> {
        for statement in statements {
            self.execute(Sql::new(*statement)).await?;
        }
        Ok(())
    }
}

impl<D: Dialect> Tx<D> {
    /// Begins a write transaction (`D::BEGIN_WRITE`).
    pub async fn begin_write(pool: &Pool<D::DB>) -> StoreResult<Tx<D>> {
        Ok(Session::on(
            waiting_for(pool.begin_with(D::BEGIN_WRITE)).await?,
        ))
    }

    /// Begins a plain transaction (for reads).
    pub async fn begin(pool: &Pool<D::DB>) -> StoreResult<Tx<D>> {
        Ok(Session::on(waiting_for(pool.begin()).await?))
    }
}

impl<D: Dialect> Session<D, sqlx::Transaction<'_, D::DB>> {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.conn.commit().await
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.conn.rollback().await
    }
}

impl<D: Dialect> Pooled<D> {
    pub async fn acquire(pool: &Pool<D::DB>) -> StoreResult<Pooled<D>> {
        Ok(Session::on(waiting_for(pool.acquire()).await?))
    }
}

/// Most keys looked up in one statement.
pub const LOOKUP_CHUNK: usize = 1000;

/// Runs `head <rows> tail` over the rows `push` makes of `items` (a multi-row INSERT or
/// upsert), chunked where the dialect limits bound parameters; answers the rows affected.
pub async fn insert_rows<D: Dialect, C: Handle<D>, T>(
    tx: &mut Session<D, C>,
    head: &str,
    tail: &str,
    items: &[T],
    columns: usize,
    mut push: impl FnMut(&mut Row, &T),
) -> StoreResult<u64> {
    if items.is_empty() {
        return Ok(0);
    }
    let mut affected = 0;
    for q in row_statements::<D>(head, tail, rows_of(items, columns, &mut push))? {
        affected += tx.execute(q).await?;
    }
    Ok(affected)
}

/// The statements `head <rows> tail` that write `rows`, as many rows each as the dialect
/// takes ([`Dialect::statement_rows`]).
pub fn row_statements<D: Dialect>(head: &str, tail: &str, rows: Vec<Row>) -> StoreResult<Vec<Sql>> {
    let columns = rows.first().map_or(1, |r| r.0.len());
    let mut statements = Vec::new();
    let sizes = statement_sizes::<D>(rows.len(), columns, usize::MAX);
    let mut rows = rows.into_iter();
    for take in sizes {
        let mut q = D::builder(head);
        D::push_relation(&mut q, rows.by_ref().take(take).collect())?;
        q.push(tail);
        statements.push(q.build());
    }
    Ok(statements)
}

/// How many rows each statement writing `n` rows of `columns` bound values takes, in
/// order: the dialect's sizes ([`Dialect::statement_rows`]), at most `most` each.
pub fn statement_sizes<D: Dialect>(
    mut n: usize,
    columns: usize,
    most: usize,
) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if n == 0 {
            return None;
        }
        let take = D::statement_rows(n, columns).clamp(1, most.max(1));
        n -= take;
        Some(take)
    })
}

/// Appends one row per item to `target` (`table (column, ...)`), `push` binding an
/// item's `columns` values in column order: plain inserts of rows nothing conflicts with
/// (history, events, rows a batch creates), the backend's fastest way
/// ([`Dialect::append`]).
pub async fn append_rows<D: Dialect, C: Handle<D>, T>(
    tx: &mut Session<D, C>,
    target: &str,
    items: &[T],
    columns: usize,
    mut push: impl FnMut(&mut Row, &T),
) -> StoreResult<u64> {
    if items.is_empty() {
        return Ok(0);
    }
    let rows = rows_of(items, columns, &mut push);
    tx.append(target, rows).await
}

/// One row per item, bound by `push`.
fn rows_of<T>(items: &[T], columns: usize, push: &mut impl FnMut(&mut Row, &T)) -> Vec<Row> {
    items
        .iter()
        .map(|item| {
            let mut row = Row(Vec::with_capacity(columns));
            push(&mut row, item);
            row
        })
        .collect()
}

/// Runs a select of `head <IN keys> tail` and collects the rows. Batches are bounded
/// (1,000 records), so the keys always fit in one statement.
pub async fn select_in<D: Dialect, C: Handle<D>, R: Decoded>(
    session: &mut Session<D, C>,
    head: &str,
    tail: &str,
    keys: Vec<Val>,
) -> StoreResult<Vec<R>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = D::builder(head);
    D::push_in(&mut q, keys)?;
    q.push(tail);
    session.fetch_all(q.build()).await
}
