//! Population sync in the database: reading, locking and writing a batch of the population
//! platform's records, around the in-memory planner (`planner.rs`).
//!
//! A batch is one transaction: read (and on PostgreSQL lock) everything its records may
//! touch, let the planner decide every record in order, then write the plan with one
//! statement per table. Every statement handles the whole batch (keys as one set, rows as
//! one set-based INSERT chunked under the dialect's bind limit), so a batch of 1,000
//! records costs about a dozen statements, not thousands. A batch that loses a race with
//! a concurrent writer (a row it could not lock in advance, a deadlock, a serialization
//! failure) is rolled back and planned again against the winner's committed state.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::dialect::{append_rows, insert_rows, select_in, Dialect, Tx};
use super::planner::{
    AccountKeyTuple, CitizenState, CitizenWrite, LedgerEntry, LedgerWrite, Loaded, SyncRecord,
    SyncStream, Work,
};
use super::resolution_model::{refresh, set_statuses};
use super::rows::{citizen_status, provider_terms, AccountRow};
use super::sql::{text_keys, Row, Sql, Val};
use super::sql_store::SqlStore;
use super::{
    corrupt, BatchApplied, CitizenRecord, CitizenUpsert, StoreError, StoreResult, WriteContext,
};
use crate::domain::assertion::Capacity;
use crate::domain::{
    Account, Change, CitizenId, CitizenStatus, LegacyId, RecordOutcome, SyncCitizen,
};

/// How often a batch is retried after losing a race with a concurrent transaction (a
/// unique violation on a row it could not lock in advance, or a deadlock).
const BATCH_ATTEMPTS: usize = 5;

/// A batch lost a race and must be planned again against the winner's committed state.
fn lost_race(e: &StoreError) -> bool {
    let StoreError::Database(e) = e else {
        return false;
    };
    e.as_database_error().is_some_and(|d| {
        d.is_unique_violation() || matches!(d.code().as_deref(), Some("40P01" | "40001"))
    })
}

/// Columns of `sync_records` the planner reads.
type LedgerRow = (
    String,
    i64,
    Option<Uuid>,
    String,
    Option<String>,
    Option<String>,
);

/// Columns of `citizens` the planner reads.
type CitizenStateRow = (
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<i64>,
);

impl<D: Dialect> SqlStore<D> {
    /// Plans and writes a sync batch in one transaction, retrying when it loses a race.
    pub(super) async fn sync_batch<R: SyncRecord>(
        &self,
        ctx: &WriteContext,
        stream: SyncStream,
        batch: &[R],
        plan: impl Fn(&WriteContext, &[R], &Loaded) -> Work,
    ) -> StoreResult<BatchApplied> {
        if batch.is_empty() {
            return Ok(BatchApplied::default());
        }
        let mut citizens: Vec<CitizenId> = batch.iter().map(|r| r.citizen_id().clone()).collect();
        citizens.sort();
        citizens.dedup();
        let record_ids: Vec<&str> = batch.iter().map(R::record_id).collect();
        let legacy: Vec<String> = batch.iter().flat_map(R::legacy_ids).collect();
        let mut account_keys: Vec<AccountKeyTuple> =
            batch.iter().filter_map(R::account_key).collect();
        account_keys.sort_by(|a, b| {
            (a.0.as_str(), &a.1, a.2.as_str()).cmp(&(b.0.as_str(), &b.1, b.2.as_str()))
        });
        account_keys.dedup();
        let mut last = None;
        for _ in 0..BATCH_ATTEMPTS {
            let mut tx = self.begin_write().await?;
            tx.run(D::BULK_PREAMBLE).await?;
            let attempt = async {
                if stream == SyncStream::Accounts {
                    ensure_citizens(&mut tx, ctx, &citizens).await?;
                }
                let loaded = load(
                    &mut tx,
                    stream,
                    &record_ids,
                    &citizens,
                    &legacy,
                    batch.len(),
                )
                .await?;
                let mut loaded = if stream == SyncStream::Accounts {
                    load_accounts(&mut tx, loaded, &citizens).await?
                } else {
                    loaded
                };
                if !account_keys.is_empty() {
                    load_holders(&mut tx, &mut loaded, &account_keys).await?;
                }
                Ok::<_, StoreError>(plan(ctx, batch, &loaded))
            }
            .await;
            let work = match attempt {
                Ok(x) => x,
                Err(e) if lost_race(&e) => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let written = match write_work(&mut tx, ctx, stream, &work).await {
                // The changed citizens' rows of the resolution read model commit with
                // the batch.
                Ok(Some(last_event)) => update_model(&mut tx, stream, &citizens, &work)
                    .await
                    .map(|()| Some(last_event)),
                other => other,
            };
            let last_event = match written {
                Ok(Some(last_event)) => last_event,
                Ok(None) => {
                    last = Some(corrupt("sync batch lost a race on every attempt"));
                    continue;
                }
                Err(e) if lost_race(&e) => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match tx.commit().await {
                Err(e) => {
                    let e = StoreError::Database(e);
                    if lost_race(&e) {
                        last = Some(e);
                        continue;
                    }
                    return Err(e);
                }
                Ok(()) => {
                    self.tick();
                    return Ok(BatchApplied {
                        outcomes: work.outcomes,
                        last_event,
                    });
                }
            }
        }
        Err(last.unwrap_or_else(|| corrupt("sync retries exhausted")))
    }

    /// One citizen record through the population-sync path (its rules, history and
    /// event), under a record id of the citizen's own.
    pub(super) async fn upsert_citizen_record(
        &self,
        ctx: &WriteContext,
        rec: &CitizenRecord,
    ) -> StoreResult<CitizenUpsert> {
        let existed: Option<(i32,)> = self
            .reader()
            .await?
            .fetch_optional(
                Sql::new("SELECT 1 FROM citizens WHERE citizen_id = $1")
                    .bind(rec.citizen_id.as_str()),
            )
            .await?;
        let record = SyncCitizen {
            record_id: format!("citizen:{}", rec.citizen_id.as_str()),
            version: rec.source_version,
            citizen_id: rec.citizen_id.clone(),
            full_name: rec
                .full_name
                .as_deref()
                .map(crate::domain::name::normalize_name),
            date_of_birth: rec.date_of_birth.clone(),
            status: rec.status,
            died_on: rec.died_on.clone(),
            legacy_ids: Vec::new(),
        };
        // The same version again is answered as before by the sync streams; this command
        // keeps its own answer for it: ignored (nothing planned to write).
        let plan = |ctx: &WriteContext, batch: &[SyncCitizen], loaded: &Loaded| {
            let mut work = super::planner::plan_citizens(ctx, batch, loaded);
            if work.ledger.is_empty() && work.outcomes == [RecordOutcome::Applied] {
                work.outcomes = vec![RecordOutcome::Stale];
            }
            work
        };
        let outcome = self
            .sync_batch(ctx, SyncStream::Citizens, &[record], plan)
            .await?
            .outcomes
            .pop();
        match outcome {
            Some(RecordOutcome::Applied) if existed.is_some() => Ok(CitizenUpsert::Updated),
            Some(RecordOutcome::Applied) => Ok(CitizenUpsert::Created),
            Some(RecordOutcome::Stale) => Ok(CitizenUpsert::Stale),
            Some(RecordOutcome::Rejected(r)) => Err(r.into()),
            None => Err(corrupt("no outcome for the citizen record")),
        }
    }

    /// The citizens that registered legacy numbers belong to (unknown numbers are absent).
    pub(super) async fn legacy_owners(
        &self,
        ids: &[LegacyId],
    ) -> StoreResult<HashMap<LegacyId, CitizenId>> {
        let mut conn = self.reader().await?;
        let rows: Vec<(String, String)> = select_in(
            &mut conn,
            "SELECT legacy_id, citizen_id FROM citizen_aliases WHERE legacy_id",
            "",
            text_keys(ids.iter().map(LegacyId::as_str)),
        )
        .await?;
        let mut out = HashMap::new();
        for (legacy, citizen) in rows {
            let legacy = LegacyId::parse(&legacy).map_err(|_| corrupt("legacy id"))?;
            out.insert(legacy, CitizenId::from_stored(citizen));
        }
        Ok(out)
    }
}

/// Brings the resolution read model up to a written batch. The citizen rows a batch
/// wrote change only their statuses in the model (names and dates of birth are not in
/// it), set without re-reading; the citizens whose accounts or preferences it may have
/// changed are refreshed from the tables: every citizen of an accounts batch (declaring
/// an account first creates an unknown citizen) and the holders of the accounts and
/// defaults it wrote (a citizens batch writes none).
async fn update_model<D: Dialect>(
    tx: &mut Tx<D>,
    stream: SyncStream,
    batch: &[CitizenId],
    work: &Work,
) -> StoreResult<()> {
    let statuses: Vec<(&str, CitizenStatus)> = work
        .citizens
        .iter()
        .map(|c| (c.citizen_id.as_str(), c.state.status))
        .collect();
    set_statuses(tx, &statuses).await?;
    let mut reread: Vec<&str> = match stream {
        SyncStream::Accounts => batch.iter().map(CitizenId::as_str).collect(),
        SyncStream::Citizens => Vec::new(),
    };
    reread.extend(
        work.accounts
            .iter()
            .chain(&work.new_accounts)
            .map(|a| a.citizen_id.as_str()),
    );
    reread.extend(work.defaults.iter().map(|d| d.account.citizen_id.as_str()));
    reread.sort_unstable();
    reread.dedup();
    refresh(tx, &reread).await
}

/// Creates the citizens an account batch names that the registry has never seen (ACTIVE,
/// no registered name), as LinkAccount does, with their first history row.
async fn ensure_citizens<D: Dialect>(
    tx: &mut Tx<D>,
    ctx: &WriteContext,
    citizens: &[CitizenId],
) -> StoreResult<()> {
    let now = ctx.now.micros();
    let rows: Vec<Row> = citizens
        .iter()
        .map(|c| {
            let mut row = Row::default();
            row.push_bind(c.as_str())
                .push_bind(c.province_code())
                .push_bind("ACTIVE")
                .push_bind(now)
                .push_bind(now);
            row
        })
        .collect();
    // A batch has at most 1,000 citizens: one statement on either backend.
    let mut q = D::builder(
        "INSERT INTO citizens (citizen_id, province_code, status, created_at, updated_at) ",
    );
    D::push_relation(&mut q, rows)?;
    q.push(" ON CONFLICT (citizen_id) DO NOTHING RETURNING citizen_id");
    let created: Vec<(String,)> = tx.fetch_all(q.build()).await?;
    let reason = "first seen when an account was declared";
    append_rows(
        tx,
        "citizen_history (citizen_id, status, valid_from, actor, reason)",
        &created,
        5,
        |b, (c,)| {
            b.push_bind(c.as_str())
                .push_bind("ACTIVE")
                .push_bind(now)
                .push_bind(ctx.actor.as_str())
                .push_bind(reason);
        },
    )
    .await?;
    Ok(())
}

/// Reads (and on PostgreSQL locks) what every sync batch needs: the ledger entries of its
/// records, its citizens, and the owners of its legacy numbers.
async fn load<D: Dialect>(
    tx: &mut Tx<D>,
    stream: SyncStream,
    record_ids: &[&str],
    citizens: &[CitizenId],
    legacy: &[String],
    batch_len: usize,
) -> StoreResult<Loaded> {
    let mut loaded = Loaded::default();
    // Citizens first: every writer locks a citizen before anything else of theirs.
    let rows: Vec<CitizenStateRow> = select_in(
        tx,
        "SELECT citizen_id, full_name, date_of_birth, status, died_on, source_version \
         FROM citizens WHERE citizen_id",
        &format!(" ORDER BY citizen_id{}", D::FOR_UPDATE),
        text_keys(citizens.iter().map(CitizenId::as_str)),
    )
    .await?;
    for (id, full_name, date_of_birth, status, died_on, source_version) in rows {
        loaded.citizens.insert(
            id,
            CitizenState {
                full_name,
                date_of_birth,
                status: citizen_status(&status)?,
                died_on,
                source_version,
            },
        );
    }
    let mut q = D::builder(
        "SELECT record_id, version, account_id, outcome, rejected_field, rejected_message \
         FROM sync_records WHERE stream = ",
    );
    q.push_bind(stream.as_str());
    q.push(" AND record_id");
    D::push_in(&mut q, text_keys(record_ids.iter().copied()))?;
    let rows: Vec<LedgerRow> = tx.fetch_all(q.build()).await?;
    loaded.ledger.reserve(batch_len);
    for (id, version, account, outcome, field, message) in rows {
        let entry = LedgerEntry::from_row(version, account, &outcome, field, message)
            .ok_or_else(|| corrupt("sync_records.outcome"))?;
        loaded.ledger.insert(id, entry);
    }
    if !legacy.is_empty() {
        let rows: Vec<(String, String)> = select_in(
            tx,
            "SELECT legacy_id, citizen_id FROM citizen_aliases WHERE legacy_id",
            "",
            text_keys(legacy.iter().map(String::as_str)),
        )
        .await?;
        loaded.aliases.extend(rows);
    }
    Ok(loaded)
}

/// Adds what an account batch needs: the accounts it may touch, the holders of its
/// accounts, which citizens have a default, and the providers.
async fn load_accounts<D: Dialect>(
    tx: &mut Tx<D>,
    mut loaded: Loaded,
    citizens: &[CitizenId],
) -> StoreResult<Loaded> {
    let citizen_keys = || text_keys(citizens.iter().map(CitizenId::as_str));
    let mut rows: Vec<AccountRow> = select_in(
        tx,
        concat!(
            "SELECT ",
            account_columns!(),
            " FROM accounts WHERE citizen_id"
        ),
        " AND status IN ('PENDING_VERIFICATION', 'VERIFIED', 'SUSPENDED')",
        citizen_keys(),
    )
    .await?;
    let declared: Vec<Val> = loaded
        .ledger
        .values()
        .filter_map(|e| e.account_id.map(|id| Val::Uuid(Some(id))))
        .collect();
    if !declared.is_empty() {
        rows.extend(
            select_in::<D, _, AccountRow>(
                tx,
                concat!(
                    "SELECT ",
                    account_columns!(),
                    " FROM accounts WHERE account_id"
                ),
                "",
                declared,
            )
            .await?,
        );
    }
    for row in rows {
        let a = Account::try_from(row)?;
        loaded.accounts.insert(a.id, a);
    }
    let defaults: Vec<(String,)> = select_in(
        tx,
        "SELECT citizen_id FROM preferences WHERE program_code = '' AND citizen_id",
        "",
        citizen_keys(),
    )
    .await?;
    loaded.has_default = defaults.into_iter().map(|(c,)| c).collect::<HashSet<_>>();
    let providers: Vec<(String, String, bool)> = tx
        .fetch_all(Sql::new("SELECT code, kind, active FROM providers"))
        .await?;
    for (code, kind, active) in providers {
        loaded
            .providers
            .insert(code, provider_terms(&kind, active)?);
    }
    Ok(loaded)
}

/// Reads the holders of the batch's account keys (VERIFIED or SUSPENDED, any citizen).
async fn load_holders<D: Dialect>(
    tx: &mut Tx<D>,
    loaded: &mut Loaded,
    keys: &[AccountKeyTuple],
) -> StoreResult<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let key_rows: Vec<Row> = keys
        .iter()
        .map(|(kind, provider, account_ref)| {
            let mut row = Row::default();
            row.push_bind(kind.as_str())
                .push_bind(provider.as_str())
                .push_bind(account_ref.as_str());
            row
        })
        .collect();
    let mut q = D::builder(
        "SELECT citizen_id, account_id, kind, provider_code, account_ref FROM accounts \
         WHERE status IN ('VERIFIED', 'SUSPENDED') AND (kind, provider_code, account_ref) IN (",
    );
    D::push_relation(&mut q, key_rows)?;
    q.push(")");
    let rows: Vec<(String, Uuid, String, String, String)> = tx.fetch_all(q.build()).await?;
    for (citizen, account, kind, provider, account_ref) in rows {
        let kind = crate::domain::AccountKind::parse(&kind).map_err(|_| corrupt("kind"))?;
        loaded.holders.insert(
            (
                kind,
                provider,
                crate::domain::AccountRef::from_stored(account_ref),
            ),
            (citizen, account),
        );
    }
    Ok(())
}

/// The columns a batch writes to `citizens`, appended (new citizens) or upserted.
const CITIZEN_ROWS: &str = "citizens (citizen_id, province_code, full_name, date_of_birth, \
                            status, died_on, source_version, created_at, updated_at)";

/// The columns of a ledger entry (`sync_records`), appended (new record ids) or upserted.
const LEDGER_ROWS: &str = "sync_records (stream, record_id, version, outcome, citizen_id, \
                           account_id, synced_at, actor, rejected_field, rejected_message)";

/// Writes a planned batch, one statement per table, and answers the write position of
/// its last event (if it appended any). Answers `None` when a concurrent transaction got
/// in first (a citizen row the batch could not lock in advance).
async fn write_work<D: Dialect>(
    tx: &mut Tx<D>,
    ctx: &WriteContext,
    stream: SyncStream,
    work: &Work,
) -> StoreResult<Option<Option<i64>>> {
    let now = ctx.now.micros();
    let actor = ctx.actor.as_str();
    // Rows that existed when the batch read them are updated (locked then, on
    // PostgreSQL); new ones are appended, and a concurrent writer that created one first
    // fails the append with a unique violation: the batch is planned again.
    let (existing, created): (Vec<&CitizenWrite>, Vec<&CitizenWrite>) =
        work.citizens.iter().partition(|c| c.existed);
    let push_citizen = |b: &mut Row, c: &&CitizenWrite| {
        b.push_bind(c.citizen_id.as_str())
            .push_bind(c.citizen_id.province_code())
            .push_bind(c.state.full_name.as_deref())
            .push_bind(c.state.date_of_birth.as_deref())
            .push_bind(c.state.status.as_str())
            .push_bind(c.state.died_on.as_deref())
            .push_bind(c.state.source_version)
            .push_bind(now)
            .push_bind(now);
    };
    append_rows(tx, CITIZEN_ROWS, &created, 9, push_citizen).await?;
    if !existing.is_empty() {
        let written = insert_rows(
            tx,
            &format!("INSERT INTO {CITIZEN_ROWS} "),
            " ON CONFLICT (citizen_id) DO UPDATE SET full_name = excluded.full_name, \
             date_of_birth = excluded.date_of_birth, status = excluded.status, \
             died_on = excluded.died_on, source_version = excluded.source_version, \
             updated_at = excluded.updated_at \
             WHERE citizens.source_version IS NULL OR citizens.source_version < excluded.source_version",
            &existing,
            9,
            push_citizen,
        )
        .await?;
        if written != existing.len() as u64 {
            return Ok(None);
        }
    }
    append_rows(
        tx,
        "citizen_history (citizen_id, full_name, date_of_birth, status, died_on, \
         source_version, valid_from, actor, reason)",
        &work.citizen_history,
        9,
        |b, h| {
            b.push_bind(h.citizen_id.as_str())
                .push_bind(h.state.full_name.as_deref())
                .push_bind(h.state.date_of_birth.as_deref())
                .push_bind(h.state.status.as_str())
                .push_bind(h.state.died_on.as_deref())
                .push_bind(h.state.source_version)
                .push_bind(now)
                .push_bind(actor)
                .push_bind(h.reason);
        },
    )
    .await?;
    append_rows(
        tx,
        "citizen_aliases (legacy_id, citizen_id, created_at)",
        &work.aliases,
        3,
        |b, (legacy, citizen)| {
            b.push_bind(legacy.as_str())
                .push_bind(citizen.as_str())
                .push_bind(now);
        },
    )
    .await?;
    insert_rows(
        tx,
        concat!("INSERT INTO accounts (", account_columns!(), ") "),
        " ON CONFLICT (account_id) DO UPDATE SET holder_name = excluded.holder_name, \
         status = excluded.status, verification_method = excluded.verification_method, \
         verified_by = excluded.verified_by, verified_at = excluded.verified_at, \
         evidence_ref = excluded.evidence_ref, version = excluded.version, \
         updated_at = excluded.updated_at, \
         declared_holder_name = excluded.declared_holder_name, \
         verification_capacity = excluded.verification_capacity",
        &work.accounts,
        ACCOUNT_COLUMNS,
        push_account,
    )
    .await?;
    append_rows(
        tx,
        concat!("accounts (", account_columns!(), ")"),
        &work.new_accounts,
        ACCOUNT_COLUMNS,
        push_account,
    )
    .await?;
    append_rows(
        tx,
        concat!(
            "account_history (",
            account_columns!(),
            ", change, actor, reason, valid_from, capacity)"
        ),
        &work.account_history,
        ACCOUNT_COLUMNS + 5,
        |b, (account, change, reason)| {
            push_account(b, account);
            let capacity = match change {
                Change::Verified => account.verification.as_ref().and_then(|v| v.capacity),
                _ => None,
            };
            b.push_bind(change.as_str())
                .push_bind(actor)
                .push_bind(reason.as_str())
                .push_bind(now)
                .push_bind(capacity.map(Capacity::as_str));
        },
    )
    .await?;
    append_rows(
        tx,
        "duplicate_claims (claim_id, kind, provider_code, account_ref, claimant_citizen_id, \
         holder_citizen_id, holder_account_id, context, detected_at, actor)",
        &work.duplicate_claims,
        10,
        |b, d| {
            b.push_bind(d.claim_id)
                .push_bind(d.kind.as_str())
                .push_bind(d.provider_code.as_str())
                .push_bind(d.account_ref.as_str())
                .push_bind(d.claimant.as_str())
                .push_bind(d.holder.as_str())
                .push_bind(d.holder_account_id)
                .push_bind(d.context.as_str())
                .push_bind(d.detected_at.micros())
                .push_bind(d.actor.as_str());
        },
    )
    .await?;
    append_rows(
        tx,
        "preferences (citizen_id, program_code, account_id, previous_account_id, since)",
        &work.defaults,
        5,
        |b, d| {
            b.push_bind(d.account.citizen_id.as_str())
                .push_bind("")
                .push_bind(d.account.id)
                .push_bind(None::<Uuid>)
                .push_bind(now);
        },
    )
    .await?;
    append_rows(
        tx,
        "preference_history (citizen_id, program_code, account_id, \
         previous_account_id, valid_from, actor, reason)",
        &work.defaults,
        7,
        |b, d| {
            b.push_bind(d.account.citizen_id.as_str())
                .push_bind("")
                .push_bind(d.account.id)
                .push_bind(None::<Uuid>)
                .push_bind(now)
                .push_bind(actor)
                .push_bind(crate::domain::link::FIRST_VERIFIED_REASON);
        },
    )
    .await?;
    append_rows(
        tx,
        "events (event_id, occurred_at, event_type, citizen_id, account_id, actor, \
         reason, payload, actor_capacity)",
        &work.events,
        9,
        |b, e| {
            b.push_bind(Uuid::now_v7())
                .push_bind(now)
                .push_bind(e.event_type.as_str())
                .push_bind(e.citizen_id.as_str())
                .push_bind(e.account_id)
                .push_bind(actor)
                .push_bind(e.reason.as_str())
                .push_bind(e.payload.to_string())
                .push_bind(e.actor_capacity.map(Capacity::as_str));
        },
    )
    .await?;
    let last_event = if work.events.is_empty() {
        None
    } else {
        let (last,): (i64,) = tx.fetch_one(Sql::new(D::LAST_EVENT)).await?;
        Some(last)
    };
    let (existing, created): (Vec<&LedgerWrite>, Vec<&LedgerWrite>) =
        work.ledger.iter().partition(|l| l.existed);
    let push_ledger = |b: &mut Row, l: &&LedgerWrite| {
        b.push_bind(stream.as_str())
            .push_bind(l.record_id.as_str())
            .push_bind(l.version)
            .push_bind(l.outcome)
            .push_bind(l.citizen_id.as_str())
            .push_bind(l.account_id)
            .push_bind(now)
            .push_bind(actor)
            .push_bind(l.rejected_field.as_deref())
            .push_bind(l.rejected_message.as_deref());
    };
    append_rows(tx, LEDGER_ROWS, &created, 10, push_ledger).await?;
    insert_rows(
        tx,
        &format!("INSERT INTO {LEDGER_ROWS} "),
        " ON CONFLICT (stream, record_id) DO UPDATE SET version = excluded.version, \
         outcome = excluded.outcome, citizen_id = excluded.citizen_id, \
         account_id = excluded.account_id, synced_at = excluded.synced_at, \
         actor = excluded.actor, rejected_field = excluded.rejected_field, \
         rejected_message = excluded.rejected_message",
        &existing,
        10,
        push_ledger,
    )
    .await?;
    Ok(Some(last_event))
}

/// The columns `push_account` binds (`account_columns!`).
const ACCOUNT_COLUMNS: usize = 16;

fn push_account(b: &mut Row, a: &Account) {
    let v = a.verification.as_ref();
    b.push_bind(a.id)
        .push_bind(a.citizen_id.as_str())
        .push_bind(a.kind.as_str())
        .push_bind(a.provider_code.as_str())
        .push_bind(a.account_ref.as_str())
        .push_bind(a.holder_name.as_deref())
        .push_bind(a.status.as_str())
        .push_bind(v.map(|v| v.method.as_str()))
        .push_bind(v.map(|v| v.verified_by.as_str()))
        .push_bind(v.map(|v| v.verified_at.micros()))
        .push_bind(v.map(|v| v.evidence_ref.as_str()))
        .push_bind(a.version as i64)
        .push_bind(a.created_at.micros())
        .push_bind(a.updated_at.micros())
        .push_bind(a.declared_holder_name.as_deref())
        .push_bind(v.and_then(|v| v.capacity).map(Capacity::as_str));
}
