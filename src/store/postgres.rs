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
    Provider, ResolveQuery, Store, StoreError, StoreOptions, StoreResult, WriteContext,
};
use crate::domain::{
    Account, ChangeAccount, CitizenId, LinkAccount, ProgramCode, Rejection, Resolution,
    SetPreference, Timestamp,
};

type DB = sqlx::Postgres;
type Backend = PgStore;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

const LOCK_CITIZEN: &str =
    "SELECT full_name, status, source_version FROM citizens WHERE citizen_id = $1 FOR UPDATE";
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
}

impl PgStore {
    pub async fn connect(url: &str, options: StoreOptions) -> StoreResult<PgStore> {
        let connect = PgConnectOptions::from_str(url)?.application_name("payout-registry");
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .connect_with(connect)
            .await?;
        Ok(PgStore {
            write: pool.clone(),
            read: pool,
            options,
            programs: KnownPrograms::default(),
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

/// Locks the rows a bulk select returns (see batch.rs).
const FOR_UPDATE: &str = " FOR UPDATE";

include!("transactions.rs");
include!("batch.rs");
