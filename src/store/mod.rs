//! Storage: one trait, one generic implementation, two SQL dialects.
//!
//! [`Store`] is everything the service asks of its database. It has one implementation,
//! `SqlStore<D>` (`sql_store.rs`), generic over a `Dialect` (`dialect.rs`): the trait
//! whose items are every way PostgreSQL (production, `postgres.rs`) and SQLite (the
//! embedded default, `sqlite.rs`) differ (row locks, how write transactions begin, the
//! preambles of bulk, access-log and sequencer transactions, how a set of rows or keys is
//! bound and appended, and running a statement). The rules are
//! written once, so they cannot drift apart between backends, and the compiler checks
//! that each backend provides every hook. [`connect`] picks the backend from the database
//! URL's scheme; the backend files hold only what truly differs (connection set-up, the
//! LISTEN task on PostgreSQL, their dialect).
//!
//! The shared code is split by job, one file each:
//! - `batch.rs`: the one write path's storage half: reading and locking what a batch of
//!   writes needs, and writing what the planner (`domain::planner`) decided, one
//!   statement per table;
//! - `accounts.rs`: single writes (link, change, preference, payout failure) as batches
//!   of one (`domain::commands`), the retry loop that runs them, and the reads of
//!   accounts and claims;
//! - `idempotency.rs`: taking an idempotency key and replaying the first answer;
//! - `population.rs`: the population-sync batches; `pipeline.rs`: several of them in
//!   flight at once, their order's meaning kept;
//! - `resolution.rs`: which account pays, now (in bulk) or as of a past instant;
//! - `feed.rs`: the event feed, the sequencer, pruning, named consumers, watch lists and
//!   the sync digest;
//! - `access_log.rs`: the access log;
//! - `reference.rs`: providers and programs (seeded by `migrate`);
//! - `health.rs`: what operators are told: the probe, the feed's and the pool's gauges,
//!   which failures are the database's own, and the call's deadline;
//! - `dialect.rs`: the contract, and the sessions and set-based helpers (one statement
//!   for a whole batch of rows or keys) the shared code runs SQL through;
//! - `sql.rs`: statements as plain values (`Sql`, `SqlBuilder`, their arguments, rows
//!   that decode on either backend), so that the shared code needs no sqlx bounds;
//!   `rows.rs`: stored rows and their conversion into domain values.
//!
//! All SQL lives in this module. Nothing here knows about gRPC: refusals are
//! [`Rejection`]s, everything else is an internal error.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::domain::assertion::Capacity;
use crate::domain::commands::Command;
use crate::domain::{
    Account, ChangeAccount, CitizenId, CitizenStatus, LegacyId, LinkAccount, ProgramCode,
    RecordOutcome, Rejection, ReportPayoutFailure, Resolution, SetPreference, SyncAccount,
    SyncCitizen, Timestamp,
};

/// The columns of `accounts`, in `rows::AccountRow` order. A macro so that it can be
/// spliced into SQL string literals with `concat!`.
macro_rules! account_columns {
    () => {
        "account_id, citizen_id, kind, provider_code, account_ref, holder_name, status, \
         verification_method, verified_by, verified_at, evidence_ref, version, created_at, \
         updated_at, declared_holder_name, verification_capacity"
    };
}

mod access_log;
mod accounts;
mod batch;
mod dialect;
mod feed;
mod freshness;
mod health;
mod idempotency;
mod pipeline;
mod population;
mod postgres;
pub mod reference;
mod references;
mod replicas;
mod reservations;
mod resolution;
mod resolution_model;
mod rows;
mod sql;
mod sql_store;
mod sqlite;

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request breaks a rule; nothing was changed (except a recorded duplicate claim).
    /// Sent to the client with its reason.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The database failed. Logged in full; the client sees only a request id.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// No connection could be had from the pool: the database refused or dropped the
    /// connection attempt (not accepting connections, too many clients, shutting down,
    /// unreachable) or none was free in time. Whatever its SQLSTATE, retrying later
    /// helps: answered UNAVAILABLE (DATABASE_UNAVAILABLE).
    #[error("no database connection")]
    Unreachable(#[source] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row could not be read back into a domain value: a bug or a hand-edited
    /// database. Logged in full; the client sees only a request id.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The store cannot be opened as configured (an unknown URL scheme, say).
    #[error("{0}")]
    Config(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// Whether the database refused the statement with one of these SQLSTATEs.
    pub(crate) fn has_sqlstate(&self, codes: &[&str]) -> bool {
        let StoreError::Database(e) = self else {
            return false;
        };
        e.as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|code| codes.contains(&code.as_ref()))
    }
}

/// What `check` found comparing the resolution read model with the source tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelCheck {
    /// Citizens compared.
    pub checked: u64,
    /// Every difference, in citizen-id order per chunk.
    pub differences: Vec<ModelDifference>,
    /// Citizens whose rows were rewritten from the source tables (with `repair`).
    pub repaired: u64,
    /// Rows in a form older than the one this instance writes (the JSON of before
    /// migration 0018, or the first binary form), found by a full check (they answer as
    /// the compact form does, but are larger and slower to decode).
    pub legacy_rows: u64,
    /// Of those, rows rewritten in this instance's form (with `repair`).
    pub rewritten: u64,
    /// Whether the references between the source tables were checked (a full check
    /// does; a sample does not).
    pub references_checked: bool,
    /// Each rule of the references some rows break (`repair` cannot mend these: the
    /// source tables themselves are wrong).
    pub broken_references: Vec<ReferenceBreak>,
}

/// Rows of the source tables that break one rule of their references (an account of no
/// citizen, a preference for another citizen's account, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceBreak {
    /// The rule, in words.
    pub rule: String,
    /// How many rows break it.
    pub rows: u64,
    /// The citizens of the first of them, in id order.
    pub citizens: Vec<String>,
}

/// One difference between the read model and the source tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDifference {
    pub citizen_id: String,
    /// What differs, in words (status, a preference, a missing or extra row).
    pub what: String,
}

/// One call's read of citizens' data, for the access log: the citizens (one for a unary
/// read, a batch's for BatchResolve) and what they share. It becomes one row of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRead {
    /// In the call's order, each once; never empty.
    pub citizens: Vec<CitizenId>,
    pub client_id: String,
    pub method: String,
    pub purpose: String,
    pub accessed_at: Timestamp,
    pub request_id: Uuid,
}

/// One read of a citizen's data as the access log lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessEntry {
    pub citizen_id: CitizenId,
    pub client_id: String,
    pub method: String,
    pub purpose: String,
    pub accessed_at: Timestamp,
    pub request_id: Uuid,
}

/// A citizen's facts as the population platform reports them.
#[derive(Debug, Clone)]
pub struct CitizenRecord {
    pub citizen_id: CitizenId,
    pub full_name: Option<String>,
    pub date_of_birth: Option<String>,
    pub status: CitizenStatus,
    pub died_on: Option<String>,
    /// The source's version; a record older than the stored one changes nothing.
    pub source_version: i64,
}

/// What happened to a citizen record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CitizenUpsert {
    Created,
    Updated,
    /// Same or older source version than the stored record: ignored.
    Stale,
}

/// A citizen's choice of account for one program (`None`: the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preference {
    pub program: Option<ProgramCode>,
    pub account_id: Uuid,
    pub since: Timestamp,
}

/// One state an account was in.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub account: Account,
    pub change: String,
    pub actor: String,
    pub reason: String,
    pub valid_from: Timestamp,
    /// The capacity the actor vouched in (verification, rejection, payout failure).
    pub capacity: Option<Capacity>,
}

pub use crate::domain::link::DuplicateClaim;
pub use crate::domain::write::{Answer, Idempotency, WriteContext};

/// What a committed sync batch did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchApplied {
    /// One outcome per record, in the batch's order.
    pub outcomes: Vec<RecordOutcome>,
    /// The write position (`events.position`) of the last event the batch appended;
    /// `None` when it changed nothing. Once the sequencer has numbered it, every event of
    /// the batch is numbered and its feed position is the batch's consistency token
    /// ([`Store::numbered_through`]).
    pub last_event: Option<i64>,
}

/// What one sequencing round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequenced {
    /// Events given their feed position.
    pub assigned: u64,
    /// The feed's head after the round.
    pub head: i64,
}

/// What a step of the sync digest's work left ([`Store::step_digest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestStep {
    /// The published digest describes an earlier position than the feed's head as the
    /// step saw it: more steps are due.
    pub behind: bool,
}

/// The sync digest as the sequencer last brought it up to date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncDigest {
    /// The XOR of the live routes' hashes and their count (see `domain::digest`).
    pub digest: crate::domain::digest::RouteDigest,
    /// The feed position the digest describes: the state after every event up to it.
    pub position: i64,
}

/// One change-feed event as stored.
#[derive(Debug, Clone)]
pub struct Event {
    /// Write order (a sequence value; concurrent writers commit these out of order).
    pub position: i64,
    /// Commit order: the feed's gapless position, once the sequencer has assigned it.
    pub feed_position: Option<i64>,
    pub event_id: Uuid,
    pub occurred_at: Timestamp,
    pub event_type: String,
    pub citizen_id: String,
    pub account_id: Option<Uuid>,
    pub actor: String,
    pub reason: String,
    pub payload: String,
    /// The capacity the actor vouched in (verification, rejection, payout failure).
    pub actor_capacity: Option<Capacity>,
}

/// Identifies one account at its provider, whoever claims it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountKey {
    pub kind: crate::domain::AccountKind,
    pub provider_code: String,
    pub account_ref: crate::domain::AccountRef,
}

/// A provider from the reference data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub code: String,
    pub kind: crate::domain::AccountKind,
    pub name: String,
    pub short_name: String,
    pub active: bool,
}

/// A resolution request as the store sees it.
#[derive(Debug, Clone)]
pub struct ResolveQuery {
    pub citizen_id: CitizenId,
    pub program: Option<ProgramCode>,
    /// `None`: resolve from the current state.
    pub as_of: Option<Timestamp>,
}

/// Whether a read of current state leaves what it read in the resolution cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheFill {
    /// Unary reads: the same citizens come back (a payer's retries, a case worker's
    /// screen), so what was read from the database is cached.
    Fill,
    /// Bulk reads (BatchResolve): a payroll run reads each of millions of citizens once.
    /// Cached entries still answer, but what is read is not cached: it would evict the
    /// unary readers' working set for entries no one asks for again before the next run,
    /// and inserting costs more than the read it would save (5 µs of the registry's CPU
    /// per citizen against 10 µs for the whole read, measured at 300 k citizens).
    ReadOnly,
}

/// Settings that change what the store decides, not how it connects.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long the previous account keeps being paid after a preference change.
    pub cooling_off: Duration,
    /// Connections in the pool (readers on SQLite; writers are always one).
    pub max_connections: u32,
    /// Longest a call waits for a pooled connection.
    pub acquire_timeout: Duration,
    /// Longest one statement may run (PostgreSQL's `statement_timeout`; SQLite's busy
    /// timeout). `None`: no limit (migrations and maintenance commands; SQLite then
    /// waits up to 10 s for a lock).
    pub statement_timeout: Option<Duration>,
    /// Citizens the resolution cache holds; 0: no cache.
    pub resolution_cache_entries: u64,
    /// Read replicas' URLs (PostgreSQL streaming standbys of this database).
    pub read_urls: Vec<String>,
    /// Most feed positions a replica may trail this instance's followed position and
    /// still be read.
    pub replica_max_lag: u64,
    /// The form this instance writes the resolution read model's rows in.
    pub model_format: ModelFormat,
}

/// The form of the resolution read model's rows a writer writes (`inputs`' first byte;
/// `store/resolution_model.rs`). Every instance reads both; `First` is for a rolling
/// upgrade from instances that read only it, until they are all replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModelFormat {
    /// Each account snapshot in full (format 1).
    First,
    /// The compact form (format 2): a row about two thirds of the first form's size.
    #[default]
    Compact,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cooling_off: Duration::from_secs(72 * 3600),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(30),
            statement_timeout: None,
            resolution_cache_entries: 0,
            read_urls: Vec::new(),
            replica_max_lag: 10_000,
            model_format: ModelFormat::default(),
        }
    }
}

/// What this instance's reads are served from (`Store::read_state`).
#[derive(Debug, Clone, Default)]
pub struct ReadState {
    /// The feed position this instance has followed on the primary.
    pub position: i64,
    pub cache: CacheStats,
    /// Each replica: name, whether it is read, the feed position visible there.
    pub replicas: Vec<(String, bool, i64)>,
}

pub use crate::domain::planner::{AccountKeyTuple, SyncRecord, SyncStream};
pub use freshness::{CacheStats, CONFIRM_EVERY};
pub use health::{
    deadline_passed, fault_of, with_deadline, Fault, FeedGauges, ModelGauges, PoolGauges,
};
pub use pipeline::Pipeline;
pub use postgres::connect_options as postgres_options;
pub use replicas::REPLICA_POLL;

/// Everything the service asks of its database.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies pending migrations and seeds the reference data from `reference/*.csv`.
    async fn migrate(&self) -> StoreResult<()>;

    /// Runs one single write (a batch of one through the write planner) and answers it,
    /// with the write position of its last event (the API's consistency token).
    async fn write(&self, ctx: &WriteContext, cmd: Command<'_>) -> StoreResult<Answer>;

    /// Links a new account (LinkAccount).
    async fn link_account(&self, ctx: &WriteContext, cmd: &LinkAccount) -> StoreResult<Account> {
        Ok(self.write(ctx, Command::Link(cmd)).await?.account)
    }

    /// Verifies, rejects, suspends, reinstates or closes an account.
    async fn change_account(
        &self,
        ctx: &WriteContext,
        cmd: &ChangeAccount,
    ) -> StoreResult<Account> {
        Ok(self.write(ctx, Command::Change(cmd)).await?.account)
    }

    /// Sets the default or a program preference (SetDefaultAccount).
    async fn set_preference(
        &self,
        ctx: &WriteContext,
        cmd: &SetPreference,
    ) -> StoreResult<Account> {
        Ok(self.write(ctx, Command::Prefer(cmd)).await?.account)
    }

    /// Records a citizen's facts from the population platform; last source version wins.
    async fn upsert_citizen(
        &self,
        ctx: &WriteContext,
        rec: &CitizenRecord,
    ) -> StoreResult<CitizenUpsert>;

    /// Applies a batch of citizen records from the population platform in one
    /// transaction: one outcome per record, in order. A rejected record changes nothing;
    /// its neighbours are applied.
    async fn sync_citizens(
        &self,
        ctx: &WriteContext,
        batch: &[SyncCitizen],
    ) -> StoreResult<BatchApplied>;

    /// Applies a batch of declared-account records in one transaction, as
    /// [`Store::sync_citizens`].
    async fn sync_accounts(
        &self,
        ctx: &WriteContext,
        batch: &[SyncAccount],
    ) -> StoreResult<BatchApplied>;

    /// The citizens that registered legacy numbers belong to (unknown numbers are absent).
    async fn citizens_by_legacy_id(
        &self,
        ids: &[LegacyId],
    ) -> StoreResult<std::collections::HashMap<LegacyId, CitizenId>>;

    /// Resolves many queries at once (current-state queries from the cache or in one
    /// round trip); one resolution per query, in order, and the feed position the answers
    /// reflect, at least `min` (a consistency token; a `min` beyond the feed's head is
    /// refused, FEED_POSITION_INVALID).
    async fn resolve_many(
        &self,
        queries: &[ResolveQuery],
        now: Timestamp,
        min: i64,
        fill: CacheFill,
    ) -> StoreResult<(Vec<Resolution>, i64)>;

    /// An account, from state at least `min` fresh, and the position read at.
    async fn get_account_at(&self, id: Uuid, min: i64) -> StoreResult<(Option<Account>, i64)>;

    async fn get_account(&self, id: Uuid) -> StoreResult<Option<Account>> {
        Ok(self.get_account_at(id, 0).await?.0)
    }

    /// A citizen's accounts (oldest first) and preferences, from state at least `min`
    /// fresh, and the position read at.
    async fn list_citizen_accounts_at(
        &self,
        citizen: &CitizenId,
        include_closed: bool,
        min: i64,
    ) -> StoreResult<((Vec<Account>, Vec<Preference>), i64)>;

    /// A citizen's accounts (oldest first) and preferences.
    async fn list_citizen_accounts(
        &self,
        citizen: &CitizenId,
        include_closed: bool,
    ) -> StoreResult<(Vec<Account>, Vec<Preference>)> {
        Ok(self
            .list_citizen_accounts_at(citizen, include_closed, 0)
            .await?
            .0)
    }

    /// Versions after `after_version`, oldest first, at most `limit`, from state at least
    /// `min` fresh, and the position read at.
    async fn account_history_at(
        &self,
        id: Uuid,
        after_version: u64,
        limit: u32,
        min: i64,
    ) -> StoreResult<(Vec<HistoryEntry>, i64)>;

    /// Versions after `after_version`, oldest first, at most `limit`.
    async fn account_history(
        &self,
        id: Uuid,
        after_version: u64,
        limit: u32,
    ) -> StoreResult<Vec<HistoryEntry>> {
        Ok(self
            .account_history_at(id, after_version, limit, 0)
            .await?
            .0)
    }

    /// Brings this instance's followed feed position, and so its resolution cache, up to
    /// the feed (the background follower calls it on every wake-up).
    async fn follow_feed(&self) -> StoreResult<()>;

    /// Reads each read replica's visible feed position (the background poller).
    async fn poll_replicas(&self);

    /// A single write's consistency token, once the sequencer has numbered what it
    /// needs: the feed position of the write's last event (`Answer::last_event`); for a
    /// write without one (it changed nothing, or its stored answer predates the field), or
    /// whose event was pruned since, the feed head once every event committed before the
    /// call is numbered. `None` when that takes more than a second.
    async fn written_position(&self, last_event: Option<i64>) -> StoreResult<Option<i64>>;

    /// The largest feed position given to `events` (write positions, as a sync batch
    /// answers them in [`BatchApplied::last_event`]) once the sequencer has numbered every
    /// one of them; `None` when some are not numbered within a second.
    async fn numbered_through(&self, events: &[i64]) -> StoreResult<Option<i64>>;

    /// What this instance's reads are served from: the followed position, the cache's
    /// counters, each replica's state.
    fn read_state(&self) -> ReadState;

    /// Compares the resolution read model with the source tables, for every citizen or a
    /// random `sample` of them; with `repair`, rewrites what differs. A full check also
    /// checks the references between the source tables.
    async fn check_resolution_model(
        &self,
        sample: Option<u64>,
        repair: bool,
    ) -> StoreResult<ModelCheck>;

    /// Which account pays, now or as of a past instant. `now` is the current instant
    /// (injected, so that cooling-off can be tested without sleeping).
    async fn resolve(&self, q: &ResolveQuery, now: Timestamp) -> StoreResult<Resolution>;

    /// Records a payer's failed credit and suspends a VERIFIED account
    /// (ReportPayoutFailure). Answers the account and the failure's id.
    async fn report_payout_failure(
        &self,
        ctx: &WriteContext,
        cmd: &ReportPayoutFailure,
    ) -> StoreResult<(Account, Uuid)> {
        let answer = self.write(ctx, Command::Failure(cmd)).await?;
        let failure_id = recorded_failure(&answer)?;
        Ok((answer.account, failure_id))
    }

    /// Refused claims on accounts, newest first: all of them, or those on one account;
    /// `before` is the `(detected_at, claim_id)` of the last claim of the previous page.
    async fn duplicate_claims(
        &self,
        on: Option<&AccountKey>,
        before: Option<(Timestamp, Uuid)>,
        limit: u32,
    ) -> StoreResult<Vec<DuplicateClaim>>;

    /// Takes (or finds its own) reservation of each payment for `holder`, the whole batch
    /// in one transaction; a payment another payer holds is answered
    /// [`Reserved::Taken`](crate::domain::reservation::Reserved) and recorded, once per
    /// claimant, as a duplicate entitlement with its event. Answers in `items` order.
    async fn reserve(
        &self,
        holder: &str,
        items: &[crate::domain::reservation::ReserveItem],
        now: Timestamp,
    ) -> StoreResult<Vec<crate::domain::reservation::Reserved>>;

    /// Releases `holder`'s live reservations of `program_code` and `period` (only those
    /// of `citizens`, unless empty); answers how many.
    async fn release_reservations(
        &self,
        holder: &str,
        program_code: &str,
        period: &str,
        citizens: &[CitizenId],
        reason: &str,
        now: Timestamp,
    ) -> StoreResult<u64>;

    /// Duplicate entitlements, newest first, after the `(detected_at, id)` cursor.
    async fn duplicate_entitlements(
        &self,
        filter: &crate::domain::reservation::EntitlementFilter,
        before: Option<(Timestamp, Uuid)>,
        limit: u32,
    ) -> StoreResult<Vec<crate::domain::reservation::DuplicateEntitlement>>;

    /// Every account row, in any status, for this (kind, provider, account_ref): the
    /// citizens who ever claimed it, oldest first.
    async fn account_claims(&self, on: &AccountKey) -> StoreResult<Vec<Account>>;

    /// Appends reads to the access log, in one transaction.
    async fn append_access_log(&self, reads: &[AccessRead]) -> StoreResult<()>;

    /// Appends reads shipped from an instance's spool, in one transaction whose commit
    /// waits for the database's own durability (the spool deletes its copy after).
    async fn ship_access_log(&self, reads: &[AccessRead]) -> StoreResult<()>;

    /// Merges what the access log's index holds pending into the index (see
    /// `Dialect::ACCESS_LOG_INDEX_CLEANUP`). `false`: this backend has nothing to merge,
    /// ever.
    async fn clean_access_log_index(&self) -> StoreResult<bool>;

    /// A citizen's access log, newest first; `before_id` pages on.
    async fn access_log(
        &self,
        citizen: &CitizenId,
        before_id: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<(i64, AccessEntry)>>;

    /// Events after `after_position`, in write (`position`) order, sequenced or not.
    async fn events_after(&self, after_position: i64, limit: u32) -> StoreResult<Vec<Event>>;

    /// Gives the committed events that have no feed position yet the next consecutive
    /// ones after the feed's head (at most `limit`), in one transaction; several server
    /// instances may call this at once (they take turns on the head row).
    async fn sequence_events(&self, limit: u32) -> StoreResult<Sequenced>;

    /// Takes a bounded step (at most `limit` feed positions, and `limit` citizens of a
    /// first build) of the sync digest's work, in a transaction of its own (instances
    /// take turns on the digest's row; numbering does not wait for it), and publishes the
    /// digest when the work has reached the feed's head exactly.
    async fn step_digest(&self, limit: u32) -> StoreResult<DigestStep>;

    /// Sequenced events after feed position `after`, in feed order.
    async fn feed_after(&self, after: i64, limit: u32) -> StoreResult<Vec<Event>>;

    /// The last feed position assigned (0 when none).
    async fn feed_head(&self) -> StoreResult<i64>;

    /// The last feed position pruned (0 when none): the feed starts after it.
    async fn feed_pruned_through(&self) -> StoreResult<i64>;

    /// Deletes sequenced events that occurred before `before`, but none after the
    /// slowest named consumer's position; answers how many were deleted.
    async fn prune_events(&self, before: Timestamp) -> StoreResult<u64>;

    /// Records a named consumer's position.
    async fn commit_consumer(
        &self,
        client_id: &str,
        name: &str,
        position: i64,
        now: Timestamp,
    ) -> StoreResult<()>;

    /// Forgets a named consumer (one decommissioned, whose position would otherwise hold
    /// back retention for ever); answers whether it existed.
    async fn delete_consumer(&self, client_id: &str, name: &str) -> StoreResult<bool>;

    /// A named consumer's position, if it ever committed one.
    async fn consumer_position(&self, client_id: &str, name: &str) -> StoreResult<Option<i64>>;

    /// Adds and removes citizens on a consumer's watch list; answers (added, removed).
    async fn edit_watch_list(
        &self,
        client_id: &str,
        consumer: &str,
        add: &[CitizenId],
        remove: &[CitizenId],
    ) -> StoreResult<(u64, u64)>;

    /// How many citizens are on a consumer's watch list.
    async fn watch_list_size(&self, client_id: &str, consumer: &str) -> StoreResult<u64>;

    /// Like [`Store::feed_after`], only events of citizens on the consumer's watch list.
    async fn feed_after_watched(
        &self,
        after: i64,
        client_id: &str,
        consumer: &str,
        limit: u32,
    ) -> StoreResult<Vec<Event>>;

    /// The sync digest of one province (its 3-digit code) or of every citizen, with the
    /// feed position it describes; `None` until the sequencer has built it.
    async fn sync_digest(&self, province: Option<&str>) -> StoreResult<Option<SyncDigest>>;

    /// Ticks whenever events may have been written or sequenced: by this process, or (on
    /// PostgreSQL, through LISTEN/NOTIFY) by any instance sharing the database.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;

    async fn providers(&self) -> StoreResult<Vec<Provider>>;

    /// Checks that the database answers, on a connection outside the pool; `fresh`
    /// connects anew (see `health.rs`).
    async fn ping(&self, fresh: bool) -> StoreResult<()>;

    /// Refreshes the query planner's statistics of the tables a bulk load of `stream`'s
    /// records fills and looks rows up in (`ANALYZE`). A bulk load calls it as its tables
    /// grow: plans made on the statistics of a table a tenth of its size scan where they
    /// should probe (see `tools::import::demo_store`).
    async fn analyze(&self, stream: SyncStream) -> StoreResult<()>;

    /// Refreshes the planner's statistics of the change feed's tables (`events`, `feed`,
    /// `feed_pending`): the sequencer calls it as the feed grows (see
    /// `background::sequencer`). On SQLite it removes them instead
    /// (`Dialect::FEED_STATISTICS_FORGOTTEN`).
    async fn analyze_feed(&self) -> StoreResult<()>;

    /// Reclaims the rows the sequencer deleted from its queue of unnumbered events (see
    /// `Dialect::VACUUM_QUEUE`); the sequencer calls it as the feed grows.
    async fn vacuum_feed_queue(&self) -> StoreResult<()>;

    /// The change feed's head, the sequencer's backlog and the digest's position.
    async fn feed_gauges(&self) -> StoreResult<FeedGauges>;

    /// The resolution read model's size beside the database's buffer cache, and its
    /// blocks read from that cache and from outside it (`None`: SQLite, which reads
    /// through the operating system's cache).
    async fn model_gauges(&self) -> StoreResult<Option<ModelGauges>>;

    /// Connections in use and idle, and calls waiting for one.
    fn pool_gauges(&self) -> PoolGauges;
}

/// Opens the store named by `url`: `postgres://...` or `sqlite://...` (a file; created
/// when missing).
pub async fn connect(url: &str, options: StoreOptions) -> StoreResult<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::connect(url, options).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::connect(url, options).await?))
    } else {
        Err(StoreError::Config(
            "database URL must start with postgres://, postgresql:// or sqlite:".into(),
        ))
    }
}

/// The id of the failure a ReportPayoutFailure's answer recorded.
pub fn recorded_failure(answer: &Answer) -> StoreResult<Uuid> {
    answer
        .failure_id
        .ok_or_else(|| corrupt("payout failure answer without its id"))
}

/// A stored value that cannot be read back (or a bug): reported, never guessed.
fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}
