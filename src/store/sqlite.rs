//! SQLite, the embedded default: one file under `./data/`, no server to run.
//!
//! SQLite allows one writer at a time, so writes go through a pool of exactly one
//! connection (transactions queue in the process instead of failing with SQLITE_BUSY),
//! and reads use a separate pool in WAL mode, which never blocks on the writer.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
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

type DB = sqlx::Sqlite;
type Backend = SqliteStore;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

// The single writer connection already excludes other writers; no row locks needed.
const LOCK_CITIZEN: &str = "SELECT full_name, status FROM citizens WHERE citizen_id = $1";
const LOCK_ACCOUNT: &str = concat!(
    "SELECT ",
    account_columns!(),
    " FROM accounts WHERE account_id = $1"
);

/// SQLite commits the access log like everything else.
const ACCESS_LOG_PREAMBLE: Option<&str> = None;

/// Writes a batch of access-log entries as multi-row INSERTs (chunks stay under SQLite's
/// limit of bound parameters).
async fn insert_access_log(
    tx: &mut sqlx::Transaction<'static, DB>,
    entries: &[super::AccessEntry],
) -> StoreResult<()> {
    for chunk in entries.chunks(5000) {
        let mut q = sqlx::QueryBuilder::<DB>::new(
            "INSERT INTO access_log (citizen_id, client_id, method, purpose, accessed_at, \
             request_id) ",
        );
        q.push_values(chunk, |mut row, e| {
            row.push_bind(e.citizen_id.as_str())
                .push_bind(&e.client_id)
                .push_bind(&e.method)
                .push_bind(&e.purpose)
                .push_bind(e.accessed_at.micros())
                .push_bind(e.request_id);
        });
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// The SQLite store: a one-connection writer pool and a reader pool.
pub struct SqliteStore {
    write: SqlitePool,
    read: SqlitePool,
    options: StoreOptions,
    /// Program codes, cached (see `check_program`).
    programs: KnownPrograms,
    /// Ticks on writes and sequencing (one process owns the file).
    changed: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl SqliteStore {
    pub async fn connect(url: &str, options: StoreOptions) -> StoreResult<SqliteStore> {
        let connect = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(connect.clone())
            .await?;
        let read = SqlitePoolOptions::new()
            .max_connections(options.max_connections)
            .connect_with(connect.read_only(true))
            .await?;
        Ok(SqliteStore {
            write,
            read,
            options,
            programs: KnownPrograms::default(),
            changed: std::sync::Arc::new(tokio::sync::watch::Sender::new(0u64)),
        })
    }
}

/// SQLite names the violated columns rather than the index.
fn unique_target(e: &sqlx::Error) -> Option<UniqueTarget> {
    let db = e.as_database_error()?;
    if !db.is_unique_violation() {
        return None;
    }
    UniqueTarget::from_sqlite_message(db.message())
}

/// SQLite plans every statement afresh; nothing to set.
const BULK_PREAMBLE: &[&str] = &[];

/// One process owns the file: the in-process signal is all there is.
const FEED_ADVANCED: &[&str] = &[];

/// Locks the rows a bulk select returns (see batch.rs).
const FOR_UPDATE: &str = "";

/// How write transactions begin: with the file's write lock, waiting (busy_timeout) while
/// another process (the relay) holds it. A deferred transaction that read first could
/// instead fail at its first write once that process had written in between.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// The single writer connection already gives the sequencer one consistent state.
const SEQUENCER_ISOLATION: &[&str] = &[];

/// Appends `rows` as multi-row `VALUES`.
fn push_relation<'a>(
    q: &mut sqlx::QueryBuilder<'a, DB>,
    rows: &[super::values::Row],
) -> StoreResult<()> {
    q.push("VALUES ");
    for (i, row) in rows.iter().enumerate() {
        q.push(if i == 0 { "(" } else { ", (" });
        for (j, v) in row.0.iter().enumerate() {
            if j > 0 {
                q.push(", ");
            }
            push_val(q, v);
        }
        q.push(")");
    }
    Ok(())
}

fn push_val<'a>(q: &mut sqlx::QueryBuilder<'a, DB>, v: &super::values::Val) {
    use super::values::Val;
    match v {
        Val::Text(t) => q.push_bind(t.clone()),
        Val::Int(i) => q.push_bind(*i),
        Val::Uuid(u) => q.push_bind(*u),
    };
}

/// Appends ` IN (k1, k2, ...)`.
fn push_in<'a>(q: &mut sqlx::QueryBuilder<'a, DB>, keys: &[super::values::Val]) -> StoreResult<()> {
    q.push(" IN (");
    if keys.is_empty() {
        q.push("NULL");
    }
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        push_val(q, k);
    }
    q.push(")");
    Ok(())
}

/// SQLite allows 32,766 bound parameters per statement: rows are written in chunks.
const BINDS_PER_STATEMENT: Option<usize> = Some(30_000);

include!("transactions.rs");
include!("batch.rs");
