//! The one store, [`SqlStore`], generic over its [`Dialect`], and its one `impl Store`.
//!
//! Both backends are this struct: what they share (pools, options, the program cache,
//! the change signal) lives here once, and what differs is a type parameter. The `Store`
//! impl below is only a table of contents: each method hands over to the file that owns
//! its job (`accounts.rs`, `population.rs`, `resolution.rs`, `feed.rs`,
//! `access_log.rs`, `reference.rs`), so the rules are written once and cannot drift
//! between the backends.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{ConnectOptions, Connection, Pool};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::dialect::{Dialect, Pooled, Tx};
use super::freshness::Freshness;
use super::reference::KnownPrograms;
use super::replicas::Replicas;
use super::sql::Sql;
use super::Answer;
use super::{
    corrupt, AccessEntry, AccessRead, AccountKey, BatchApplied, CacheFill, CitizenRecord,
    CitizenUpsert, DigestStep, DuplicateClaim, Event, HistoryEntry, ModelCheck, Preference,
    Provider, ReadState, ResolveQuery, Sequenced, Store, StoreError, StoreOptions, StoreResult,
    SyncDigest, WriteContext,
};
use crate::domain::commands::Command;
use crate::domain::planner::{plan_accounts, plan_citizens, SyncStream};
use crate::domain::{
    Account, CitizenId, LegacyId, Resolution, SyncAccount, SyncCitizen, Timestamp,
};
use futures::future::BoxFuture;

/// A store on a database of dialect `D`.
pub struct SqlStore<D: Dialect> {
    /// Writes (one connection on SQLite).
    pub(super) write: Pool<D::DB>,
    /// Reads (the same pool as `write` on PostgreSQL).
    pub(super) read: Pool<D::DB>,
    /// The access log's writes: on SQLite the write pool; on PostgreSQL a pool that only
    /// carries the options of the connections the writers hold (`log_held`), whose
    /// sessions commit without waiting for the WAL flush (`ACCESS_LOG_OWN_CONNECTIONS`
    /// says why that is safe).
    pub(super) log: Pool<D::DB>,
    /// Maintenance: statements expected to take seconds at scale (`ANALYZE` as a bulk
    /// load grows the tables, the merge of the access log's index, the VACUUM of the
    /// feed's queue), whose slow-statement lines are information, not warnings
    /// ([`quiet_when_slow`]) on PostgreSQL. On SQLite, the write pool as it is (its one
    /// writer; its ANALYZE reads a bounded sample).
    pub(super) maintenance: Pool<D::DB>,
    /// The access log's idle connections on PostgreSQL, held outside any pool (see
    /// `access_log.rs`).
    pub(super) log_held: std::sync::Mutex<Vec<<D::DB as sqlx::Database>::Connection>>,
    pub(super) options: StoreOptions,
    /// Program codes, cached (see `check_program`).
    pub(super) programs: KnownPrograms,
    /// Ticks on writes and sequencing, here or (through LISTEN on PostgreSQL) in other
    /// instances.
    changed: Arc<watch::Sender<u64>>,
    /// A task the backend runs beside the store (PostgreSQL's LISTEN), stopped with it.
    background: Option<JoinHandle<()>>,
    /// The feed position this instance has followed, and the resolution cache.
    pub(super) fresh: Arc<Freshness>,
    /// Read replicas (PostgreSQL; none on SQLite).
    pub(super) replicas: Replicas<D>,
    /// Held while following the feed (`follow_feed`): one follower at a time.
    pub(super) following: tokio::sync::Mutex<()>,
    /// The health probe's own connection, outside the pools (see `health.rs`).
    pub(super) probe: tokio::sync::Mutex<Option<<D::DB as sqlx::Database>::Connection>>,
    dialect: PhantomData<D>,
}

/// A store's connection pools (see the fields of [`SqlStore`]).
pub(super) struct Pools<D: Dialect> {
    pub(super) write: Pool<D::DB>,
    pub(super) read: Pool<D::DB>,
    pub(super) log: Pool<D::DB>,
    pub(super) maintenance: Pool<D::DB>,
}

/// How long a statement runs before sqlx logs it as slow (its default).
const SLOW_STATEMENT: std::time::Duration = std::time::Duration::from_secs(1);

/// `options` for maintenance connections: a statement slower than [`SLOW_STATEMENT`] is
/// logged at INFO, where sqlx's default is WARN. At 1 M citizens each merge of the access
/// log's index after a BatchResolve run, and each ANALYZE and VACUUM of a bulk load, takes
/// a second or more by design: as warnings, they taught operators to ignore the ones that
/// mean something.
pub(super) fn quiet_when_slow<O: sqlx::ConnectOptions>(options: O) -> O {
    options.log_slow_statements(log::LevelFilter::Info, SLOW_STATEMENT)
}

impl<D: Dialect> Drop for SqlStore<D> {
    fn drop(&mut self) {
        if let Some(task) = &self.background {
            task.abort();
        }
    }
}

/// The tables whose statistics a bulk load of a stream's records refreshes: those its
/// batches look rows up in and fill. The append-only tables (history, events) are only
/// written, and sampling the events' payloads took most of a whole-database ANALYZE. An
/// accounts load leaves `citizens` and `citizen_aliases` as they are, and a citizens load
/// has no accounts yet (at 1 M citizens, `ANALYZE citizens` took 2.4 s of the load's
/// 6.4 s of ANALYZE, at every step of both phases).
fn analyzed_tables(stream: SyncStream) -> &'static [&'static str] {
    match stream {
        SyncStream::Citizens => &["citizens", "citizen_aliases", "sync_records"],
        SyncStream::Accounts => &["sync_records", "accounts", "preferences"],
    }
}

impl<D: Dialect> SqlStore<D> {
    /// A read-only transaction for a maintenance command's reads of whole tables (`check`:
    /// the references between the source tables, the pick of a sample, the search for
    /// rows of an old form). On PostgreSQL it runs on the maintenance pool, whose slow
    /// statements are INFO, without the calls' statement timeout: each of those reads
    /// scans a table, which took 1.1 s at 1 M citizens and outlasts the 5 s default well
    /// before a national population. SQLite has no statement timeout to lift, and its
    /// maintenance pool is the one writer: there it is a reader's.
    pub(super) async fn long_read(&self) -> StoreResult<Tx<D>> {
        let Some(no_limit) = D::statement_timeout(0) else {
            return Tx::<D>::begin(&self.read).await;
        };
        let mut tx = Tx::<D>::begin(&self.maintenance).await?;
        tx.execute(Sql::new(no_limit)).await?;
        Ok(tx)
    }

    /// `ANALYZE`s `tables`, in one transaction on the maintenance pool.
    async fn analyze_tables(&self, tables: &[&str]) -> StoreResult<()> {
        let mut tx = Tx::<D>::begin_write(&self.maintenance).await?;
        // Sampling every table of a large database outlasts a call's statement timeout.
        if let Some(no_limit) = D::statement_timeout(0) {
            tx.execute(Sql::new(no_limit)).await?;
        }
        tx.run(D::ANALYZE_PREAMBLE).await?;
        for table in tables {
            tx.execute(Sql::new(format!("ANALYZE {table}"))).await?;
        }
        Ok(tx.commit().await?)
    }

    /// A store on connected pools; `background` is aborted when the store is dropped.
    pub(super) fn new(
        pools: Pools<D>,
        options: StoreOptions,
        changed: Arc<watch::Sender<u64>>,
        fresh: Arc<Freshness>,
        replicas: Replicas<D>,
        background: Option<JoinHandle<()>>,
    ) -> SqlStore<D> {
        let Pools {
            write,
            read,
            log,
            maintenance,
        } = pools;
        SqlStore {
            write,
            read,
            log,
            maintenance,
            log_held: std::sync::Mutex::new(Vec::new()),
            options,
            programs: KnownPrograms::default(),
            changed,
            fresh,
            replicas,
            following: tokio::sync::Mutex::new(()),
            background,
            probe: tokio::sync::Mutex::new(None),
            dialect: PhantomData,
        }
    }

    /// Begins a write transaction.
    pub(super) async fn begin_write(&self) -> StoreResult<Tx<D>> {
        let mut tx = Tx::begin_write(&self.write).await?;
        self.limit_to_deadline(&mut tx).await?;
        Ok(tx)
    }

    /// A connection of the read pool.
    pub(super) async fn reader(&self) -> StoreResult<Pooled<D>> {
        Pooled::acquire(&self.read).await
    }

    /// Runs the read `op` on a replica fresh enough for `min` (see `replicas.rs`), else on
    /// the primary once this instance has followed the feed to `min`; answers what it
    /// read and the feed position that reflects. A replica's failure is read again from
    /// the primary.
    pub(super) async fn read_fresh<'s, 'f, T>(
        &'s self,
        min: i64,
        op: impl Fn(&'s Pool<D::DB>) -> BoxFuture<'f, StoreResult<T>>,
    ) -> StoreResult<(T, i64)>
    where
        's: 'f,
    {
        if let Some(answered) = self.on_replica(min, &op).await {
            return answered;
        }
        let at = self.fresh_enough(min).await?;
        Ok((op(&self.read).await?, at))
    }

    /// Runs `op` on a replica showing at least `min` (see `replicas.rs`), with the
    /// position it showed; `None` when no replica is fit or the one tried failed (it is
    /// marked down), for the caller to read the primary.
    async fn on_replica<'s, 'f, T>(
        &'s self,
        min: i64,
        op: &impl Fn(&'s Pool<D::DB>) -> BoxFuture<'f, StoreResult<T>>,
    ) -> Option<StoreResult<(T, i64)>>
    where
        's: 'f,
    {
        let (i, at) = self.replicas.pick(min, self.fresh.position())?;
        match op(self.replicas.pool(i)).await {
            Ok(v) => Some(Ok((v, at))),
            Err(StoreError::Rejected(r)) => Some(Err(r.into())),
            Err(e) => {
                self.replicas.down(i, &e);
                None
            }
        }
    }

    /// A connection of the write pool, for a single statement.
    pub(super) async fn writer(&self) -> StoreResult<Pooled<D>> {
        Pooled::acquire(&self.write).await
    }

    /// Tells subscribers that events may have been written or sequenced.
    pub(super) fn tick(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[async_trait]
impl<D: Dialect> Store for SqlStore<D> {
    async fn migrate(&self) -> StoreResult<()> {
        self.migrate_and_seed().await
    }

    async fn write(&self, ctx: &WriteContext, cmd: Command<'_>) -> StoreResult<Answer> {
        self.execute(ctx, cmd).await
    }

    async fn upsert_citizen(
        &self,
        ctx: &WriteContext,
        rec: &CitizenRecord,
    ) -> StoreResult<CitizenUpsert> {
        self.upsert_citizen_record(ctx, rec).await
    }

    async fn sync_citizens(
        &self,
        ctx: &WriteContext,
        batch: &[SyncCitizen],
    ) -> StoreResult<BatchApplied> {
        self.sync_batch(ctx, batch, plan_citizens).await
    }

    async fn sync_accounts(
        &self,
        ctx: &WriteContext,
        batch: &[SyncAccount],
    ) -> StoreResult<BatchApplied> {
        self.sync_batch(ctx, batch, plan_accounts).await
    }

    async fn citizens_by_legacy_id(
        &self,
        ids: &[LegacyId],
    ) -> StoreResult<HashMap<LegacyId, CitizenId>> {
        self.legacy_owners(ids).await
    }

    async fn resolve_many(
        &self,
        queries: &[ResolveQuery],
        now: Timestamp,
        min: i64,
        fill: CacheFill,
    ) -> StoreResult<(Vec<Resolution>, i64)> {
        self.resolve_all(queries, now, min, fill).await
    }

    async fn get_account_at(&self, id: Uuid, min: i64) -> StoreResult<(Option<Account>, i64)> {
        self.read_fresh(min, |pool| Box::pin(self.account(pool, id)))
            .await
    }

    async fn list_citizen_accounts_at(
        &self,
        citizen: &CitizenId,
        include_closed: bool,
        min: i64,
    ) -> StoreResult<((Vec<Account>, Vec<Preference>), i64)> {
        self.read_fresh(min, |pool| {
            Box::pin(self.citizen_accounts(pool, citizen, include_closed))
        })
        .await
    }

    async fn account_history_at(
        &self,
        id: Uuid,
        after_version: u64,
        limit: u32,
        min: i64,
    ) -> StoreResult<(Vec<HistoryEntry>, i64)> {
        self.read_fresh(min, |pool| {
            Box::pin(self.history_of(pool, id, after_version, limit))
        })
        .await
    }

    async fn follow_feed(&self) -> StoreResult<()> {
        self.follow_feed(false).await
    }

    async fn poll_replicas(&self) {
        self.replicas.poll(self.fresh.position()).await
    }

    async fn written_position(&self, last_event: Option<i64>) -> StoreResult<Option<i64>> {
        self.written_position(last_event).await
    }

    async fn numbered_through(&self, events: &[i64]) -> StoreResult<Option<i64>> {
        self.numbered_through(events).await
    }

    fn read_state(&self) -> ReadState {
        ReadState {
            position: self.fresh.position(),
            cache: self.fresh.stats(),
            replicas: self.replicas.states(),
        }
    }

    async fn check_resolution_model(
        &self,
        sample: Option<u64>,
        repair: bool,
    ) -> StoreResult<ModelCheck> {
        self.check_resolution_model(sample, repair).await
    }

    async fn resolve(&self, q: &ResolveQuery, now: Timestamp) -> StoreResult<Resolution> {
        let (mut answers, _) = self
            .resolve_all(std::slice::from_ref(q), now, 0, CacheFill::Fill)
            .await?;
        answers.pop().ok_or_else(|| corrupt("no resolution"))
    }

    async fn duplicate_claims(
        &self,
        on: Option<&AccountKey>,
        before: Option<(Timestamp, Uuid)>,
        limit: u32,
    ) -> StoreResult<Vec<DuplicateClaim>> {
        self.claims_page(on, before, limit).await
    }

    async fn reserve(
        &self,
        holder: &str,
        items: &[crate::domain::reservation::ReserveItem],
        now: Timestamp,
    ) -> StoreResult<Vec<crate::domain::reservation::Reserved>> {
        self.take_reservations(holder, items, now).await
    }

    async fn release_reservations(
        &self,
        holder: &str,
        program_code: &str,
        period: &str,
        citizens: &[CitizenId],
        reason: &str,
        now: Timestamp,
    ) -> StoreResult<u64> {
        self.release_held(holder, program_code, period, citizens, reason, now)
            .await
    }

    async fn duplicate_entitlements(
        &self,
        filter: &crate::domain::reservation::EntitlementFilter,
        before: Option<(Timestamp, Uuid)>,
        limit: u32,
    ) -> StoreResult<Vec<crate::domain::reservation::DuplicateEntitlement>> {
        self.entitlements_page(filter, before, limit).await
    }

    async fn account_claims(&self, on: &AccountKey) -> StoreResult<Vec<Account>> {
        self.claims_on(on).await
    }

    async fn append_access_log(&self, reads: &[AccessRead]) -> StoreResult<()> {
        self.append_reads(reads).await
    }

    async fn ship_access_log(&self, reads: &[AccessRead]) -> StoreResult<()> {
        self.ship_reads(reads).await
    }

    async fn access_log(
        &self,
        citizen: &CitizenId,
        before_id: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<(i64, AccessEntry)>> {
        self.entries_of(citizen, before_id, limit).await
    }

    async fn events_after(&self, after_position: i64, limit: u32) -> StoreResult<Vec<Event>> {
        self.events_from(after_position, limit).await
    }

    async fn sequence_events(&self, limit: u32) -> StoreResult<Sequenced> {
        self.sequence(limit).await
    }

    async fn step_digest(&self, limit: u32) -> StoreResult<DigestStep> {
        self.take_digest_step(limit).await
    }

    async fn feed_after(&self, after: i64, limit: u32) -> StoreResult<Vec<Event>> {
        // Catch-up pages come from a replica that has more than `after` to give; the live
        // tail (nothing newer there) from the primary.
        let page = |pool| Box::pin(self.feed_page(pool, after, limit)) as BoxFuture<'_, _>;
        match self.on_replica(after + 1, &page).await {
            Some(answered) => Ok(answered?.0),
            None => page(&self.read).await,
        }
    }

    async fn feed_head(&self) -> StoreResult<i64> {
        self.head_position().await
    }

    async fn feed_pruned_through(&self) -> StoreResult<i64> {
        self.pruned_position().await
    }

    async fn prune_events(&self, before: Timestamp) -> StoreResult<u64> {
        self.prune(before).await
    }

    async fn commit_consumer(
        &self,
        client_id: &str,
        name: &str,
        position: i64,
        now: Timestamp,
    ) -> StoreResult<()> {
        self.record_position(client_id, name, position, now).await
    }

    async fn delete_consumer(&self, client_id: &str, name: &str) -> StoreResult<bool> {
        self.forget_consumer(client_id, name).await
    }

    async fn consumer_position(&self, client_id: &str, name: &str) -> StoreResult<Option<i64>> {
        self.position_of(client_id, name).await
    }

    async fn edit_watch_list(
        &self,
        client_id: &str,
        consumer: &str,
        add: &[CitizenId],
        remove: &[CitizenId],
    ) -> StoreResult<(u64, u64)> {
        self.edit_watch(client_id, consumer, add, remove).await
    }

    async fn watch_list_size(&self, client_id: &str, consumer: &str) -> StoreResult<u64> {
        self.watch_size(client_id, consumer).await
    }

    async fn feed_after_watched(
        &self,
        after: i64,
        client_id: &str,
        consumer: &str,
        limit: u32,
    ) -> StoreResult<Vec<Event>> {
        // As `feed_after`: catch-up from a replica, the live tail from the primary.
        let page = |pool| {
            Box::pin(self.watched_page(pool, after, client_id, consumer, limit)) as BoxFuture<'_, _>
        };
        match self.on_replica(after + 1, &page).await {
            Some(answered) => Ok(answered?.0),
            None => page(&self.read).await,
        }
    }

    async fn sync_digest(&self, province: Option<&str>) -> StoreResult<Option<SyncDigest>> {
        self.digest_of(province).await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    async fn ping(&self, fresh: bool) -> StoreResult<()> {
        self.probe(fresh).await
    }

    async fn analyze(&self, stream: SyncStream) -> StoreResult<()> {
        self.analyze_tables(analyzed_tables(stream)).await
    }

    async fn analyze_feed(&self) -> StoreResult<()> {
        if D::FEED_STATISTICS_FORGOTTEN.is_empty() {
            return self
                .analyze_tables(&["events", "feed", "feed_pending"])
                .await;
        }
        let mut tx = Tx::<D>::begin_write(&self.maintenance).await?;
        tx.run(D::FEED_STATISTICS_FORGOTTEN).await?;
        Ok(tx.commit().await?)
    }

    async fn clean_access_log_index(&self) -> StoreResult<bool> {
        let Some(statement) = D::ACCESS_LOG_INDEX_CLEANUP else {
            return Ok(false);
        };
        let mut conn = Pooled::<D>::acquire(&self.maintenance).await?;
        match conn.execute(Sql::new(statement)).await {
            Ok(_) => Ok(true),
            // Only the index's owner (or a superuser) may merge it: a role that did not
            // run the migrations leaves it to autovacuum, and to the writer whose row
            // overflows the pending list.
            Err(e) if e.has_sqlstate(&["42501"]) => {
                tracing::warn!(
                    error = %e,
                    "this role may not merge the access log's index; autovacuum will"
                );
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    async fn vacuum_feed_queue(&self) -> StoreResult<()> {
        if D::VACUUM_QUEUE.is_empty() {
            return Ok(());
        }
        // A connection of its own: VACUUM runs outside any transaction, and the pooled
        // connections keep their statement timeout.
        let mut conn = self.maintenance.connect_options().connect().await?;
        for statement in D::VACUUM_QUEUE {
            D::execute(&mut conn, Sql::new(*statement)).await?;
        }
        Ok(conn.close().await?)
    }

    async fn feed_gauges(&self) -> StoreResult<super::FeedGauges> {
        self.gauges_of_feed().await
    }

    async fn model_gauges(&self) -> StoreResult<Option<super::ModelGauges>> {
        self.gauges_of_model().await
    }

    fn pool_gauges(&self) -> super::PoolGauges {
        self.gauges_of_pool()
    }

    async fn providers(&self) -> StoreResult<Vec<Provider>> {
        self.stored_providers().await
    }
}
