//! Reading, locking and writing a planned batch: the store's half of the one write path.
//!
//! Every write is a batch: a population-sync batch of up to 1,000 records, or a single
//! command (LinkAccount, VerifyAccount, ...) as a batch of one. Its transaction reads (and
//! on PostgreSQL locks) what the batch may touch into a [`Loaded`], the planner
//! (`domain::planner`, `domain::commands`) decides every record in memory, and [`write_work`] writes
//! the plan with one statement per table: keys as one set, new rows appended (binary COPY
//! on PostgreSQL), existing ones upserted. A batch that loses a race with a concurrent
//! writer (a row it could not lock in advance, a deadlock, a serialization failure) is
//! rolled back and planned again against the winner's committed state.

use foldhash::HashSet;

use uuid::Uuid;

use super::dialect::{append_rows, insert_rows, select_in, Dialect, Tx};
use super::rows::{citizen_status, provider_terms, AccountRow, PreferenceRow};
use super::sql::{text_keys, Row, Sql, Val};
use super::{corrupt, StoreError, StoreResult, WriteContext};
use crate::domain::assertion::Capacity;
use crate::domain::planner::{
    AccountKeyTuple, CitizenState, CitizenWrite, HistoryWrite, LedgerEntry, LedgerWrite, Loaded,
    PreferenceWrite, SyncStream, Work,
};
use crate::domain::{Account, CitizenId, StoredPreference, Timestamp};

/// A batch lost a race and must be planned again against the winner's committed state.
pub(super) fn lost_race(e: &StoreError) -> bool {
    let unique = matches!(e, StoreError::Database(d)
        if d.as_database_error().is_some_and(|d| d.is_unique_violation()));
    unique || e.has_sqlstate(&["40P01", "40001"])
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

/// Reads (and on PostgreSQL locks) what every batch needs first: its citizens, in id
/// order (the citizen's lock comes before anything else of theirs, for every writer).
pub(super) async fn load<D: Dialect>(
    tx: &mut Tx<D>,
    citizens: &[CitizenId],
) -> StoreResult<Loaded> {
    let mut loaded = Loaded::default();
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
    Ok(loaded)
}

/// Adds what a sync batch needs of its records: their ledger entries (of `stream`), and
/// the owners of the legacy numbers they register.
pub(super) async fn load_ledger<D: Dialect>(
    tx: &mut Tx<D>,
    loaded: &mut Loaded,
    stream: SyncStream,
    record_ids: &[&str],
    legacy: &[String],
) -> StoreResult<()> {
    let mut q = D::builder(
        "SELECT record_id, version, account_id, outcome, rejected_field, rejected_message \
         FROM sync_records WHERE stream = ",
    );
    q.push_bind(stream.as_str());
    q.push(" AND record_id");
    D::push_in(&mut q, text_keys(record_ids.iter().copied()))?;
    let rows: Vec<LedgerRow> = tx.fetch_all(q.build()).await?;
    loaded.ledger.reserve(record_ids.len());
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
    Ok(())
}

/// Adds what a batch of account writes needs: the accounts it may touch (the citizens'
/// open accounts, those its ledger entries declared, and `named` ones), which citizens
/// have a default, and the providers.
pub(super) async fn load_accounts<D: Dialect>(
    tx: &mut Tx<D>,
    loaded: &mut Loaded,
    citizens: &[CitizenId],
    named: &[Uuid],
) -> StoreResult<()> {
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
    let mut declared: Vec<Uuid> = loaded
        .ledger
        .values()
        .filter_map(|e| e.account_id)
        .chain(named.iter().copied())
        .collect();
    declared.sort_unstable();
    declared.dedup();
    let declared: Vec<Val> = declared.into_iter().map(|id| Val::Uuid(Some(id))).collect();
    rows.extend(accounts_by_id(tx, declared).await?);
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
    Ok(())
}

/// The accounts with these ids (`Val::Uuid`s).
async fn accounts_by_id<D: Dialect>(tx: &mut Tx<D>, ids: Vec<Val>) -> StoreResult<Vec<AccountRow>> {
    select_in(
        tx,
        concat!(
            "SELECT ",
            account_columns!(),
            " FROM accounts WHERE account_id"
        ),
        "",
        ids,
    )
    .await
}

/// Adds a single command's citizen's preferences, and the accounts they name.
pub(super) async fn load_preferences<D: Dialect>(
    tx: &mut Tx<D>,
    loaded: &mut Loaded,
    citizen: &CitizenId,
) -> StoreResult<()> {
    let rows: Vec<PreferenceRow> = tx
        .fetch_all(
            Sql::new(
                "SELECT program_code, account_id, previous_account_id, since FROM preferences \
                 WHERE citizen_id = $1",
            )
            .bind(citizen.as_str()),
        )
        .await?;
    let prefs: Vec<StoredPreference> = rows.into_iter().map(StoredPreference::from).collect();
    let named: Vec<Val> = prefs
        .iter()
        .flat_map(|p| [Some(p.account_id), p.previous])
        .flatten()
        .filter(|id| !loaded.accounts.contains_key(id))
        .map(|id| Val::Uuid(Some(id)))
        .collect();
    for row in accounts_by_id(tx, named).await? {
        let a = Account::try_from(row)?;
        loaded.accounts.insert(a.id, a);
    }
    loaded.preferences = prefs;
    Ok(())
}

/// Reads the holders of the batch's account keys (VERIFIED or SUSPENDED, any citizen).
pub(super) async fn load_holders<D: Dialect>(
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

/// The columns of a preference, appended (new) or upserted.
const PREFERENCE_ROWS: &str =
    "preferences (citizen_id, program_code, account_id, previous_account_id, since)";

/// The columns of a ledger entry (`sync_records`), appended (new record ids) or upserted.
const LEDGER_ROWS: &str = "sync_records (stream, record_id, version, outcome, citizen_id, \
                           account_id, synced_at, actor, rejected_field, rejected_message)";

/// Writes a planned batch, one statement per table, and answers the write position of
/// its last event (if it appended any). Answers `None` when a concurrent transaction got
/// in first (a citizen row the batch could not lock in advance).
pub(super) async fn write_work<D: Dialect>(
    tx: &mut Tx<D>,
    ctx: &WriteContext,
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
        |b, h: &HistoryWrite| {
            push_account(b, &h.account);
            b.push_bind(h.change.as_str())
                .push_bind(actor)
                .push_bind(h.reason.as_str())
                .push_bind(now)
                .push_bind(h.capacity.map(Capacity::as_str));
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
    let (existing, created): (Vec<&PreferenceWrite>, Vec<&PreferenceWrite>) =
        work.preferences.iter().partition(|p| p.existed);
    let push_preference = |b: &mut Row, p: &&PreferenceWrite| {
        b.push_bind(p.account.citizen_id.as_str())
            .push_bind(p.program_code.as_str())
            .push_bind(p.account.id)
            .push_bind(p.previous)
            .push_bind(now);
    };
    append_rows(tx, PREFERENCE_ROWS, &created, 5, push_preference).await?;
    insert_rows(
        tx,
        &format!("INSERT INTO {PREFERENCE_ROWS} "),
        " ON CONFLICT (citizen_id, program_code) DO UPDATE SET \
         account_id = excluded.account_id, previous_account_id = excluded.previous_account_id, \
         since = excluded.since",
        &existing,
        5,
        push_preference,
    )
    .await?;
    append_rows(
        tx,
        "preference_history (citizen_id, program_code, account_id, \
         previous_account_id, valid_from, actor, reason)",
        &work.preferences,
        7,
        |b, p| {
            b.push_bind(p.account.citizen_id.as_str())
                .push_bind(p.program_code.as_str())
                .push_bind(p.account.id)
                .push_bind(p.previous)
                .push_bind(now)
                .push_bind(actor)
                .push_bind(p.reason.as_str());
        },
    )
    .await?;
    append_rows(
        tx,
        "payout_failures (failure_id, account_id, citizen_id, program_code, failure_code, \
         payer_reference, failed_at, reported_at, actor, reason, capacity)",
        &work.failures,
        11,
        |b, f| {
            b.push_bind(f.failure_id)
                .push_bind(f.account_id)
                .push_bind(f.citizen_id.as_str())
                .push_bind(f.program_code.as_str())
                .push_bind(f.failure_code)
                .push_bind(f.payer_reference.as_str())
                .push_bind(f.failed_at.map(Timestamp::micros))
                .push_bind(now)
                .push_bind(actor)
                .push_bind(f.reason.as_str())
                .push_bind(f.capacity.as_str());
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
                .push_bind(e.payload.as_str())
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
        b.push_bind(l.stream.as_str())
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
