//! PostgreSQL, the production backend.
//!
//! Several service instances may share one database, so correctness comes from the
//! database: rows are locked with `FOR UPDATE` (citizen first, then account), and the
//! partial unique index `accounts_one_holder` decides races between claims on one
//! account.

use std::str::FromStr;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    AccountKey, CitizenRecord, CitizenUpsert, DuplicateClaim, Event, HistoryEntry, Preference,
    Provider, ResolveQuery, Sequenced, Store, StoreError, StoreOptions, StoreResult, SyncDigest,
    WriteContext,
};
use crate::domain::{
    Account, ChangeAccount, CitizenId, LinkAccount, ProgramCode, Rejection, Resolution,
    SetPreference, Timestamp,
};

type DB = sqlx::Postgres;
type Backend = PgStore;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

const LOCK_CITIZEN: &str =
    "SELECT full_name, status FROM citizens WHERE citizen_id = $1 FOR UPDATE";
const LOCK_ACCOUNT: &str = concat!(
    "SELECT ",
    account_columns!(),
    " FROM accounts WHERE account_id = $1 FOR UPDATE"
);

/// Access-log batches commit asynchronously: the writer does not wait for the WAL flush
/// (PostgreSQL flushes within three `wal_writer_delay`s, 600 ms by default). A crash of
/// the service loses nothing that was answered; a crash of the database server itself
/// may lose the last fraction of a second of access-log entries, never registry state.
/// This keeps the log's cost per read near zero (README, "Benchmarks").
const ACCESS_LOG_PREAMBLE: Option<&str> = Some("SET LOCAL synchronous_commit = off");

/// Writes a batch of access-log entries with one statement whose text never changes
/// (arrays unnested server-side), so it is prepared once, whatever the batch size.
async fn insert_access_log(
    tx: &mut sqlx::Transaction<'static, DB>,
    entries: &[super::AccessEntry],
) -> StoreResult<()> {
    let column = |f: fn(&super::AccessEntry) -> String| entries.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO access_log (citizen_id, client_id, method, purpose, accessed_at, request_id) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::uuid[])",
    )
    .bind(column(|e| e.citizen_id.as_str().to_owned()))
    .bind(column(|e| e.client_id.clone()))
    .bind(column(|e| e.method.clone()))
    .bind(column(|e| e.purpose.clone()))
    .bind(entries.iter().map(|e| e.accessed_at.micros()).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.request_id).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The PostgreSQL store: one pool shared by reads and writes.
pub struct PgStore {
    write: PgPool,
    read: PgPool,
    options: StoreOptions,
    /// Program codes, cached (see `check_program`).
    programs: KnownPrograms,
    /// Ticks on writes and sequencing, here or (through LISTEN) in other instances.
    changed: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    /// The LISTEN task feeding `changed`; stopped with the store.
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Listens for `payout_events` (events committed, by any instance) and `payout_feed`
/// (events sequenced) and ticks `changed`; reconnects after a lost connection.
async fn listen(pool: PgPool, changed: std::sync::Arc<tokio::sync::watch::Sender<u64>>) {
    loop {
        match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                if let Err(e) = listener.listen_all(["payout_events", "payout_feed"]).await {
                    tracing::warn!(error = %e, "LISTEN failed; retrying");
                } else {
                    // A tick after (re)connecting: anything missed meanwhile is read now.
                    changed.send_modify(|n| *n = n.wrapping_add(1));
                    loop {
                        match listener.recv().await {
                            Ok(_) => changed.send_modify(|n| *n = n.wrapping_add(1)),
                            Err(e) => {
                                tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect to LISTEN; retrying"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

impl PgStore {
    pub async fn connect(url: &str, options: StoreOptions) -> StoreResult<PgStore> {
        let connect = PgConnectOptions::from_str(url)?.application_name("payout-registry");
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .connect_with(connect)
            .await?;
        let changed = std::sync::Arc::new(tokio::sync::watch::Sender::new(0u64));
        let listener = tokio::spawn(listen(pool.clone(), changed.clone()));
        Ok(PgStore {
            write: pool.clone(),
            read: pool,
            options,
            programs: KnownPrograms::default(),
            changed,
            listener,
        })
    }
}

/// PostgreSQL names the violated constraint.
fn unique_target(e: &sqlx::Error) -> Option<UniqueTarget> {
    let db = e.as_database_error()?;
    if !db.is_unique_violation() {
        return None;
    }
    UniqueTarget::from_constraint(db.constraint()?)
}

/// Run first in every bulk transaction (sync batches, batch lookups). Every bulk
/// statement looks rows up by key, so it is planned for its actual keys and for index
/// access: PostgreSQL caches a generic plan for a prepared statement after five runs, and
/// one made while a table was small (a fresh database filling up, or statistics not yet
/// analysed) can scan the whole table for a 1,000-key IN list for ever after. Planning
/// costs about a millisecond per batch of 1,000.
const BULK_PREAMBLE: &[&str] = &[
    "SET LOCAL plan_cache_mode = force_custom_plan",
    "SET LOCAL enable_seqscan = off",
];

/// Run in the sequencer's transaction when it assigned feed positions: wakes the
/// subscribers of every instance (delivered at commit).
const FEED_ADVANCED: &[&str] = &["SELECT pg_notify('payout_feed', '')"];

/// Locks the rows a bulk select returns (see batch.rs).
const FOR_UPDATE: &str = " FOR UPDATE";

/// How write transactions begin: row locks order PostgreSQL's writers.
const BEGIN_WRITE: &str = "BEGIN";

/// The sequencer reads one snapshot for the events it numbers and the state the sync
/// digest is computed from, so the digest describes exactly the feed up to its position.
/// A sequencer that took its snapshot before another instance's round committed gets a
/// serialization failure on the head row and starts again.
const SEQUENCER_ISOLATION: &[&str] = &["SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"];

/// Appends `rows` as a relation: one array per column, unnested, so the statement text
/// depends only on the column types (parsed and planned once per connection).
fn push_relation<'a>(
    q: &mut sqlx::QueryBuilder<'a, DB>,
    rows: &[super::values::Row],
) -> StoreResult<()> {
    use super::values::columns;
    let cols = columns(rows).ok_or_else(|| StoreError::Corrupt("rows of mixed shapes".into()))?;
    q.push("SELECT * FROM UNNEST(");
    for (i, col) in cols.into_iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        push_array(q, col);
    }
    q.push(")");
    Ok(())
}

/// Appends ` = ANY($n)`: one array parameter, whatever the number of keys (` = $n` for
/// one key).
fn push_in<'a>(q: &mut sqlx::QueryBuilder<'a, DB>, keys: &[super::values::Val]) -> StoreResult<()> {
    use super::values::{columns, Row};
    if let [key] = keys {
        // One key (unary Resolve): plain equality, whose generic plan PostgreSQL caches;
        // `= ANY` of a one-element array would be re-planned on every call.
        q.push(" = ");
        match key {
            super::values::Val::Text(t) => q.push_bind(t.clone()),
            super::values::Val::Int(i) => q.push_bind(*i),
            super::values::Val::Uuid(u) => q.push_bind(*u),
        };
        return Ok(());
    }
    let rows: Vec<Row> = keys.iter().map(|k| Row(vec![k.clone()])).collect();
    match columns(&rows).and_then(|mut cols| cols.pop()) {
        Some(col) => {
            q.push(" = ANY(");
            push_array(q, col);
            q.push(")");
        }
        None => {
            q.push(" IN (NULL)");
        }
    }
    Ok(())
}

/// Binds one column as a typed array.
fn push_array<'a>(q: &mut sqlx::QueryBuilder<'a, DB>, col: super::values::Column) {
    use super::values::Column;
    match col {
        Column::Text(v) => q.push_bind(v).push("::text[]"),
        Column::Int(v) => q.push_bind(v).push("::int8[]"),
        Column::Uuid(v) => q.push_bind(v).push("::uuid[]"),
    };
}

/// PostgreSQL binds arrays: one statement for any number of rows.
const BINDS_PER_STATEMENT: Option<usize> = None;

include!("transactions.rs");
include!("batch.rs");
