// Set-based reads and writes for the bulk paths (population sync, batch resolution),
// written once and compiled into each backend with `include!` after transactions.rs.
//
// Each backend also provides `FOR_UPDATE`: the clause that locks the rows a select
// returns (" FOR UPDATE" on PostgreSQL; empty on SQLite, whose single writer connection
// already excludes other writers), and `BULK_PREAMBLE`: statements run first in every
// bulk transaction.
//
// Every statement here handles a whole batch: keys are bound as one `IN (...)` list and
// rows are written as one multi-row INSERT (chunked under the backends' limits on bound
// parameters), so a batch of 1,000 records costs a dozen statements, not thousands.

use std::collections::{HashMap, HashSet};

use sqlx::{QueryBuilder, Row as _};

use crate::domain::digest::{province_of, RouteDigest};
use crate::domain::{LegacyId, RecordOutcome, SyncAccount, SyncCitizen};
use crate::store::sync::{
    plan_accounts, plan_citizens, AccountKeyTuple, CitizenState, Loaded, SyncRecord, SyncStream,
    Work,
};
use crate::store::values::{Row, Val};

/// Most keys looked up in one statement.
const LOOKUP_CHUNK: usize = 1000;

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

/// Text keys as bound values.
fn text_keys<'k>(keys: impl IntoIterator<Item = &'k str>) -> Vec<Val> {
    keys.into_iter()
        .map(|k| Val::Text(Some(k.to_owned())))
        .collect()
}

/// Runs `head <rows> tail` over the rows `push` makes of `items` (a multi-row INSERT or
/// upsert), chunked where the backend limits bound parameters; answers the rows affected.
async fn insert_rows<T>(
    tx: &mut Tx,
    head: &str,
    tail: &str,
    items: &[T],
    columns: usize,
    mut push: impl FnMut(&mut Row, &T),
) -> StoreResult<u64> {
    if items.is_empty() {
        return Ok(0);
    }
    let rows: Vec<Row> = items
        .iter()
        .map(|item| {
            let mut row = Row(Vec::with_capacity(columns));
            push(&mut row, item);
            row
        })
        .collect();
    let per_statement = BINDS_PER_STATEMENT.map_or(rows.len(), |b| (b / columns).max(1));
    let mut affected = 0;
    for chunk in rows.chunks(per_statement) {
        let mut q = QueryBuilder::<DB>::new(head);
        push_relation(&mut q, chunk)?;
        q.push(tail);
        affected += q.build().execute(&mut **tx).await?.rows_affected();
    }
    Ok(affected)
}

/// Runs a select of `head <IN keys> tail` and collects the rows. Batches are bounded
/// (1,000 records), so the keys always fit in one statement.
async fn select_in<R>(
    ex: &mut <DB as sqlx::Database>::Connection,
    head: &str,
    tail: &str,
    keys: &[Val],
) -> StoreResult<Vec<R>>
where
    R: for<'row> sqlx::FromRow<'row, <DB as sqlx::Database>::Row> + Send + Unpin,
{
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = QueryBuilder::<DB>::new(head);
    push_in(&mut q, keys)?;
    q.push(tail);
    Ok(q.build_query_as::<R>().fetch_all(&mut *ex).await?)
}

fn citizen_status(s: &str) -> StoreResult<CitizenStatus> {
    CitizenStatus::parse(s).ok_or_else(|| corrupt("citizen status"))
}

/// Per citizen: status, preferences, and the accounts they point at.
type CurrentInputs = HashMap<String, (CitizenStatus, Vec<PreferenceRow>, HashMap<Uuid, Account>)>;

/// Columns of `citizens` the planner reads.
type CitizenStateRow = (
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<i64>,
);

impl Backend {
    /// Plans and writes a sync batch in one transaction, retrying when it loses a race.
    async fn sync_batch<R: SyncRecord>(
        &self,
        ctx: &WriteContext,
        stream: SyncStream,
        batch: &[R],
        plan: impl Fn(&WriteContext, &[R], &Loaded) -> Work,
    ) -> StoreResult<Vec<RecordOutcome>> {
        if batch.is_empty() {
            return Ok(Vec::new());
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
            let mut tx = self.write.begin_with(BEGIN_WRITE).await?;
            for statement in BULK_PREAMBLE {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
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
            match write_work(&mut tx, ctx, stream, &work).await {
                Ok(true) => {}
                Ok(false) => {
                    last = Some(corrupt("sync batch lost a race on every attempt"));
                    continue;
                }
                Err(e) if lost_race(&e) => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            }
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
                    self.changed.send_modify(|n| *n = n.wrapping_add(1));
                    return Ok(work.outcomes);
                }
            }
        }
        Err(last.unwrap_or_else(|| corrupt("sync retries exhausted")))
    }

    /// Current-state inputs for many citizens in one query: each citizen's status joined
    /// with all its preferences and the accounts they point at.
    async fn current_inputs(&self, citizens: &[&str]) -> StoreResult<CurrentInputs> {
        let mut out = CurrentInputs::new();
        if citizens.len() == 1 {
            // One key (unary Resolve): the primary key decides the plan; no transaction.
            let mut conn = self.read.acquire().await?;
            read_inputs(&mut conn, citizens, &mut out).await?;
        } else {
            // Many keys: a read-only transaction, so the bulk preamble applies to it alone.
            let mut tx = self.read.begin().await?;
            for statement in BULK_PREAMBLE {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            read_inputs(&mut tx, citizens, &mut out).await?;
            tx.commit().await?;
        }
        Ok(out)
    }
}

/// Reads the current-state inputs of `citizens` into `out`.
async fn read_inputs(
    conn: &mut <DB as sqlx::Database>::Connection,
    citizens: &[&str],
    out: &mut CurrentInputs,
) -> StoreResult<()> {
    {
        for chunk in citizens.chunks(LOOKUP_CHUNK) {
            let mut q = QueryBuilder::<DB>::new(concat!(
                "SELECT c.citizen_id, c.status, p.program_code, p.since, p.previous_account_id, ",
                "a.account_id, a.citizen_id, a.kind, a.provider_code, a.account_ref, a.holder_name, ",
                "a.status, a.verification_method, a.verified_by, a.verified_at, a.evidence_ref, ",
                "a.version, a.created_at, a.updated_at, ",
                "b.account_id, b.citizen_id, b.kind, b.provider_code, b.account_ref, b.holder_name, ",
                "b.status, b.verification_method, b.verified_by, b.verified_at, b.evidence_ref, ",
                "b.version, b.created_at, b.updated_at ",
                "FROM citizens c LEFT JOIN preferences p ON p.citizen_id = c.citizen_id ",
                "LEFT JOIN accounts a ON a.account_id = p.account_id ",
                "LEFT JOIN accounts b ON b.account_id = p.previous_account_id ",
                "WHERE c.citizen_id"
            ));
            push_in(&mut q, &text_keys(chunk.iter().copied()))?;
            for row in q.build().fetch_all(&mut *conn).await? {
                let id: String = row.try_get(0)?;
                let status: String = row.try_get(1)?;
                let entry = match out.entry(id) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert((citizen_status(&status)?, Vec::new(), HashMap::new()))
                    }
                };
                let program: Option<String> = row.try_get(2)?;
                let Some(program_code) = program else {
                    continue;
                };
                let current = account_at(&row, 5)?;
                let previous = account_at(&row, 19)?;
                let Some(current) = current else {
                    return Err(corrupt("preference without its account"));
                };
                entry.1.push(PreferenceRow {
                    program_code,
                    account_id: current.id,
                    previous_account_id: row.try_get(4)?,
                    since: row.try_get(3)?,
                });
                for a in [Some(current), previous].into_iter().flatten() {
                    entry.2.insert(a.id, a);
                }
            }
        }
        Ok(())
    }
}

/// Reads the 14 account columns starting at `start`, if the joined account is present.
fn account_at(row: &<DB as sqlx::Database>::Row, start: usize) -> StoreResult<Option<Account>> {
    let id: Option<Uuid> = row.try_get(start)?;
    let Some(account_id) = id else {
        return Ok(None);
    };
    let r = AccountRow {
        account_id,
        citizen_id: row.try_get(start + 1)?,
        kind: row.try_get(start + 2)?,
        provider_code: row.try_get(start + 3)?,
        account_ref: row.try_get(start + 4)?,
        holder_name: row.try_get(start + 5)?,
        status: row.try_get(start + 6)?,
        verification_method: row.try_get(start + 7)?,
        verified_by: row.try_get(start + 8)?,
        verified_at: row.try_get(start + 9)?,
        evidence_ref: row.try_get(start + 10)?,
        version: row.try_get(start + 11)?,
        created_at: row.try_get(start + 12)?,
        updated_at: row.try_get(start + 13)?,
    };
    Account::try_from(r).map(Some)
}

/// Creates the citizens an account batch names that the registry has never seen (ACTIVE,
/// no registered name), as LinkAccount does, with their first history row.
async fn ensure_citizens(
    tx: &mut Tx,
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
    let mut q = QueryBuilder::<DB>::new(
        "INSERT INTO citizens (citizen_id, province_code, status, created_at, updated_at) ",
    );
    push_relation(&mut q, &rows)?;
    q.push(" ON CONFLICT (citizen_id) DO NOTHING RETURNING citizen_id");
    let created: Vec<String> = q.build_query_scalar().fetch_all(&mut **tx).await?;
    let reason = "first seen when an account was declared";
    insert_rows(
        tx,
        "INSERT INTO citizen_history (citizen_id, status, valid_from, actor, reason) ",
        "",
        &created,
        5,
        |b, c| {
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
async fn load(
    tx: &mut Tx,
    stream: SyncStream,
    record_ids: &[&str],
    citizens: &[CitizenId],
    legacy: &[String],
    batch_len: usize,
) -> StoreResult<Loaded> {
    let mut loaded = Loaded::default();
    let citizen_keys: Vec<&str> = citizens.iter().map(CitizenId::as_str).collect();
    // Citizens first: every writer locks a citizen before anything else of theirs.
    let rows: Vec<CitizenStateRow> = select_in(
        tx.as_mut(),
        "SELECT citizen_id, full_name, date_of_birth, status, died_on, source_version \
         FROM citizens WHERE citizen_id",
        &format!(" ORDER BY citizen_id{FOR_UPDATE}"),
        &text_keys(citizen_keys.iter().copied()),
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
    let mut q = QueryBuilder::<DB>::new(
        "SELECT record_id, version, account_id FROM sync_records WHERE stream = ",
    );
    q.push_bind(stream.as_str());
    q.push(" AND record_id");
    push_in(&mut q, &text_keys(record_ids.iter().copied()))?;
    let rows: Vec<(String, i64, Option<Uuid>)> = q.build_query_as().fetch_all(&mut **tx).await?;
    loaded.ledger.reserve(batch_len);
    for (id, version, account) in rows {
        loaded.ledger.insert(id, (version, account));
    }
    if !legacy.is_empty() {
        let rows: Vec<(String, String)> = select_in(
            tx.as_mut(),
            "SELECT legacy_id, citizen_id FROM citizen_aliases WHERE legacy_id",
            "",
            &text_keys(legacy.iter().map(String::as_str)),
        )
        .await?;
        loaded.aliases.extend(rows);
    }
    Ok(loaded)
}

/// Adds what an account batch needs: the accounts it may touch, the holders of its
/// accounts, which citizens have a default, and the providers.
async fn load_accounts(
    tx: &mut Tx,
    mut loaded: Loaded,
    citizens: &[CitizenId],
) -> StoreResult<Loaded> {
    let citizen_keys: Vec<&str> = citizens.iter().map(CitizenId::as_str).collect();
    let open: Vec<AccountRow> = select_in(
        tx.as_mut(),
        concat!(
            "SELECT ",
            account_columns!(),
            " FROM accounts WHERE citizen_id"
        ),
        " AND status IN ('PENDING_VERIFICATION', 'VERIFIED', 'SUSPENDED')",
        &text_keys(citizen_keys.iter().copied()),
    )
    .await?;
    let declared: Vec<Uuid> = loaded.ledger.values().filter_map(|(_, id)| *id).collect();
    let mut rows = open;
    if !declared.is_empty() {
        rows.extend(
            select_in::<AccountRow>(
                tx.as_mut(),
                concat!(
                    "SELECT ",
                    account_columns!(),
                    " FROM accounts WHERE account_id"
                ),
                "",
                &declared
                    .iter()
                    .map(|id| Val::Uuid(Some(*id)))
                    .collect::<Vec<_>>(),
            )
            .await?,
        );
    }
    for row in rows {
        let a = Account::try_from(row)?;
        loaded.accounts.insert(a.id, a);
    }
    let defaults: Vec<String> = select_in::<(String,)>(
        tx.as_mut(),
        "SELECT citizen_id FROM preferences WHERE program_code = '' AND citizen_id",
        "",
        &text_keys(citizen_keys.iter().copied()),
    )
    .await?
    .into_iter()
    .map(|(c,)| c)
    .collect();
    loaded.has_default = defaults.into_iter().collect::<HashSet<_>>();
    let providers: Vec<(String, String, bool)> =
        sqlx::query_as("SELECT code, kind, active FROM providers")
            .fetch_all(&mut **tx)
            .await?;
    for (code, kind, active) in providers {
        let kind =
            crate::domain::AccountKind::parse(&kind).map_err(|_| corrupt("provider kind"))?;
        loaded.providers.insert(code, (kind, active));
    }
    Ok(loaded)
}

/// Reads the holders of the batch's account keys (VERIFIED or SUSPENDED, any citizen).
async fn load_holders(
    tx: &mut Tx,
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
    {
        let mut q = QueryBuilder::<DB>::new(
            "SELECT citizen_id, account_id, kind, provider_code, account_ref FROM accounts \
             WHERE status IN ('VERIFIED', 'SUSPENDED') AND (kind, provider_code, account_ref) IN (",
        );
        push_relation(&mut q, &key_rows)?;
        q.push(")");
        let rows: Vec<(String, Uuid, String, String, String)> =
            q.build_query_as().fetch_all(&mut **tx).await?;
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
    }
    Ok(())
}

/// Writes a planned batch, one statement per table. Answers false when a concurrent
/// transaction got in first (a citizen row the batch could not lock in advance).
async fn write_work(
    tx: &mut Tx,
    ctx: &WriteContext,
    stream: SyncStream,
    work: &Work,
) -> StoreResult<bool> {
    let now = ctx.now.micros();
    let actor = ctx.actor.as_str();
    if !work.citizens.is_empty() {
        let written = insert_rows(
            tx,
            "INSERT INTO citizens (citizen_id, province_code, full_name, date_of_birth, status, \
             died_on, source_version, created_at, updated_at) ",
            " ON CONFLICT (citizen_id) DO UPDATE SET full_name = excluded.full_name, \
             date_of_birth = excluded.date_of_birth, status = excluded.status, \
             died_on = excluded.died_on, source_version = excluded.source_version, \
             updated_at = excluded.updated_at \
             WHERE citizens.source_version IS NULL OR citizens.source_version < excluded.source_version",
            &work.citizens,
            9,
            |b, c| {
                b.push_bind(c.citizen_id.as_str())
                    .push_bind(c.citizen_id.province_code())
                    .push_bind(c.state.full_name.as_deref())
                    .push_bind(c.state.date_of_birth.as_deref())
                    .push_bind(c.state.status.as_str())
                    .push_bind(c.state.died_on.as_deref())
                    .push_bind(c.state.source_version)
                    .push_bind(now)
                    .push_bind(now);
            },
        )
        .await?;
        if written != work.citizens.len() as u64 {
            return Ok(false);
        }
    }
    insert_rows(
        tx,
        "INSERT INTO citizen_history (citizen_id, full_name, date_of_birth, status, died_on, \
         source_version, valid_from, actor, reason) ",
        "",
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
    insert_rows(
        tx,
        "INSERT INTO citizen_aliases (legacy_id, citizen_id, created_at) ",
        "",
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
         updated_at = excluded.updated_at",
        &work.accounts,
        14,
        push_account,
    )
    .await?;
    insert_rows(
        tx,
        concat!(
            "INSERT INTO account_history (",
            account_columns!(),
            ", change, actor, reason, valid_from) "
        ),
        "",
        &work.account_history,
        18,
        |b, (account, change, reason)| {
            push_account(b, account);
            b.push_bind(change.as_str())
                .push_bind(actor)
                .push_bind(reason.as_str())
                .push_bind(now);
        },
    )
    .await?;
    insert_rows(
        tx,
        "INSERT INTO duplicate_claims (claim_id, kind, provider_code, account_ref, \
         claimant_citizen_id, holder_citizen_id, holder_account_id, context, detected_at, actor) ",
        "",
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
    insert_rows(
        tx,
        "INSERT INTO preferences (citizen_id, program_code, account_id, previous_account_id, since) ",
        "",
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
    insert_rows(
        tx,
        "INSERT INTO preference_history (citizen_id, program_code, account_id, \
         previous_account_id, valid_from, actor, reason) ",
        "",
        &work.defaults,
        7,
        |b, d| {
            b.push_bind(d.account.citizen_id.as_str())
                .push_bind("")
                .push_bind(d.account.id)
                .push_bind(None::<Uuid>)
                .push_bind(now)
                .push_bind(actor)
                .push_bind("first verified account");
        },
    )
    .await?;
    insert_rows(
        tx,
        "INSERT INTO events (event_id, occurred_at, event_type, citizen_id, account_id, actor, \
         reason, payload) ",
        "",
        &work.events,
        8,
        |b, e| {
            b.push_bind(Uuid::now_v7())
                .push_bind(now)
                .push_bind(e.event_type.as_str())
                .push_bind(e.citizen_id.as_str())
                .push_bind(e.account_id)
                .push_bind(actor)
                .push_bind(e.reason.as_str())
                .push_bind(e.payload.to_string());
        },
    )
    .await?;
    insert_rows(
        tx,
        "INSERT INTO sync_records (stream, record_id, version, outcome, citizen_id, account_id, \
         synced_at, actor) ",
        " ON CONFLICT (stream, record_id) DO UPDATE SET version = excluded.version, \
         outcome = excluded.outcome, citizen_id = excluded.citizen_id, \
         account_id = excluded.account_id, synced_at = excluded.synced_at, actor = excluded.actor",
        &work.ledger,
        8,
        |b, l| {
            b.push_bind(stream.as_str())
                .push_bind(l.record_id.as_str())
                .push_bind(l.version)
                .push_bind(l.outcome)
                .push_bind(l.citizen_id.as_str())
                .push_bind(l.account_id)
                .push_bind(now)
                .push_bind(actor);
        },
    )
    .await?;
    Ok(true)
}

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
        .push_bind(a.updated_at.micros());
}

impl Backend {
    async fn sync_citizens_impl(
        &self,
        ctx: &WriteContext,
        batch: &[SyncCitizen],
    ) -> StoreResult<Vec<RecordOutcome>> {
        self.sync_batch(ctx, SyncStream::Citizens, batch, plan_citizens)
            .await
    }

    async fn sync_accounts_impl(
        &self,
        ctx: &WriteContext,
        batch: &[SyncAccount],
    ) -> StoreResult<Vec<RecordOutcome>> {
        self.sync_batch(ctx, SyncStream::Accounts, batch, plan_accounts)
            .await
    }

    async fn citizens_by_legacy_id_impl(
        &self,
        ids: &[LegacyId],
    ) -> StoreResult<HashMap<LegacyId, CitizenId>> {
        let keys: Vec<&str> = ids.iter().map(LegacyId::as_str).collect();
        let mut conn = self.read.acquire().await?;
        let rows: Vec<(String, String)> = select_in(
            &mut conn,
            "SELECT legacy_id, citizen_id FROM citizen_aliases WHERE legacy_id",
            "",
            &text_keys(keys.iter().copied()),
        )
        .await?;
        let mut out = HashMap::new();
        for (legacy, citizen) in rows {
            let legacy = LegacyId::parse(&legacy).map_err(|_| corrupt("legacy id"))?;
            out.insert(legacy, CitizenId::from_stored(citizen));
        }
        Ok(out)
    }

    async fn resolve_many_impl(
        &self,
        queries: &[ResolveQuery],
        now: Timestamp,
    ) -> StoreResult<Vec<Resolution>> {
        for q in queries {
            self.check_program(q.program.as_ref()).await?;
        }
        let mut current: Vec<&str> = queries
            .iter()
            .filter(|q| q.as_of.is_none())
            .map(|q| q.citizen_id.as_str())
            .collect();
        current.sort_unstable();
        current.dedup();
        let found = if current.is_empty() {
            HashMap::new()
        } else {
            self.current_inputs(&current).await?
        };
        let mut out = Vec::with_capacity(queries.len());
        for q in queries {
            let (inputs, at) = match q.as_of {
                Some(at) => (self.resolve_as_of(q, at).await?, at),
                None => {
                    let key = ProgramCode::key(q.program.as_ref());
                    let inputs = match found.get(q.citizen_id.as_str()) {
                        None => ResolutionInputs::default(),
                        Some((status, prefs, accounts)) => {
                            inputs_from(Some(*status), prefs, key, |id| accounts.get(&id).cloned())
                        }
                    };
                    (inputs, now)
                }
            };
            out.push(resolve(&inputs, at, self.options.cooling_off));
        }
        Ok(out)
    }
}

impl Backend {
    async fn sequence_events_impl(&self, limit: u32, digest: bool) -> StoreResult<Sequenced> {
        let mut attempt = 0;
        loop {
            match self.sequence_round(limit, digest).await {
                Err(e) if serialization_failure(&e) && attempt < SEQUENCER_ATTEMPTS => {
                    // Another instance's round (or the pruner) committed after this one's
                    // snapshot: start again from the new head.
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    /// One sequencing round: numbers the unsequenced events, then (with `digest`) brings
    /// the sync digest up to the new head when no committed event is left unnumbered.
    async fn sequence_round(&self, limit: u32, digest: bool) -> StoreResult<Sequenced> {
        let mut tx = self.write.begin_with(BEGIN_WRITE).await?;
        for statement in SEQUENCER_ISOLATION {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        // Instances take turns here: the head row is locked until this commits, and the
        // next sequencer's statements see what this one assigned.
        let (head, digest_through): (i64, Option<i64>) = sqlx::query_as(&format!(
            "SELECT last_position, digest_through FROM feed_head WHERE id = 1{FOR_UPDATE}"
        ))
        .fetch_one(&mut *tx)
        .await?;
        let assigned = sqlx::query(
            "UPDATE events SET feed_position = $1 + s.rn FROM (SELECT position, \
             row_number() OVER (ORDER BY position) AS rn FROM events \
             WHERE feed_position IS NULL ORDER BY position LIMIT $2) AS s \
             WHERE events.position = s.position",
        )
        .bind(head)
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let new_head = head + assigned as i64;
        // The digest may only describe a state whose every change is in the feed up to
        // its position: when this round left events unnumbered, a later round updates it.
        let digest_due = digest && assigned < u64::from(limit) && digest_through != Some(new_head);
        let round = Sequenced {
            assigned,
            digest_behind: !digest_due && digest_through != Some(new_head),
        };
        if assigned == 0 && !digest_due {
            tx.rollback().await?;
            return Ok(round);
        }
        if assigned > 0 {
            sqlx::query("UPDATE feed_head SET last_position = $1 WHERE id = 1")
                .bind(new_head)
                .execute(&mut *tx)
                .await?;
        }
        if digest_due {
            let citizens: Vec<String> = match digest_through {
                // The first build: every citizen with a preference.
                None => {
                    sqlx::query_scalar("SELECT DISTINCT citizen_id FROM preferences")
                        .fetch_all(&mut *tx)
                        .await?
                }
                Some(through) => {
                    sqlx::query_scalar(
                        "SELECT DISTINCT citizen_id FROM events WHERE feed_position > $1 \
                         AND feed_position <= $2",
                    )
                    .bind(through)
                    .bind(new_head)
                    .fetch_all(&mut *tx)
                    .await?
                }
            };
            let started = std::time::Instant::now();
            refresh_digest(&mut tx, &citizens).await?;
            if digest_through.is_none() {
                tracing::info!(
                    citizens = citizens.len(),
                    position = new_head,
                    millis = started.elapsed().as_millis() as u64,
                    "built the sync digest"
                );
            }
            sqlx::query("UPDATE feed_head SET digest_through = $1 WHERE id = 1")
                .bind(new_head)
                .execute(&mut *tx)
                .await?;
        }
        if assigned > 0 {
            for statement in FEED_ADVANCED {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        // Subscribers wake for new positions; waiters on the digest (GetSyncDigest after
        // a write, the pruner's horizon) for its progress.
        if assigned > 0 || digest_due {
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(round)
    }

    async fn sync_digest_impl(&self, province: Option<&str>) -> StoreResult<Option<SyncDigest>> {
        // One statement: the digest rows and the position they describe, from one snapshot.
        let rows: Vec<(Option<i64>, Option<String>, Option<i64>)> = sqlx::query_as(
            "SELECT h.digest_through, d.digest, d.routes FROM feed_head h \
             LEFT JOIN digest_provinces d ON ($1 IS NULL OR d.province = $1) WHERE h.id = 1",
        )
        .bind(province)
        .fetch_all(&self.read)
        .await?;
        let Some(Some(position)) = rows.first().map(|r| r.0) else {
            return Ok(None);
        };
        let mut total = RouteDigest::default();
        for (_, digest, routes) in rows {
            if let (Some(digest), Some(routes)) = (digest, routes) {
                total.add(&stored_digest(&digest, routes)?);
            }
        }
        Ok(Some(SyncDigest {
            digest: total,
            position,
        }))
    }
}

/// How often a sequencing round starts again after a serialization failure.
const SEQUENCER_ATTEMPTS: usize = 20;

fn serialization_failure(e: &StoreError) -> bool {
    let StoreError::Database(e) = e else {
        return false;
    };
    e.as_database_error()
        .is_some_and(|d| d.code().as_deref() == Some("40001"))
}

fn stored_digest(hex_digest: &str, routes: i64) -> StoreResult<RouteDigest> {
    RouteDigest::from_hex(hex_digest, routes).ok_or_else(|| corrupt("stored sync digest"))
}

/// Recomputes the live routes of `citizens` from the current state and moves their
/// provinces' digests by the difference (see migration 0005 and `domain::digest`).
async fn refresh_digest(tx: &mut Tx, citizens: &[String]) -> StoreResult<()> {
    // Per province: (the change, the stored digest).
    let mut provinces: HashMap<String, (RouteDigest, RouteDigest)> = HashMap::new();
    for chunk in citizens.chunks(LOOKUP_CHUNK) {
        let keys = text_keys(chunk.iter().map(String::as_str));
        let live: Vec<(String, String, Uuid)> = select_in(
            tx,
            "SELECT p.citizen_id, p.program_code, p.account_id FROM preferences p \
             JOIN citizens c ON c.citizen_id = p.citizen_id \
             JOIN accounts a ON a.account_id = p.account_id \
             WHERE c.status = 'ACTIVE' AND a.status = 'VERIFIED' AND p.citizen_id",
            "",
            &keys,
        )
        .await?;
        let old: Vec<(String, String, i64)> = select_in(
            tx,
            "SELECT citizen_id, digest, routes FROM digest_citizens WHERE citizen_id",
            "",
            &keys,
        )
        .await?;
        let mut new: HashMap<String, RouteDigest> = HashMap::new();
        for (citizen, program, account) in live {
            let route = RouteDigest::route(&citizen, &program, account);
            new.entry(citizen).or_default().add(&route);
        }
        for (citizen, digest, routes) in old {
            let old = stored_digest(&digest, routes)?;
            let change = &mut provinces
                .entry(province_of(&citizen).to_owned())
                .or_default()
                .0;
            change.remove(&old);
        }
        for (citizen, digest) in &new {
            let change = &mut provinces
                .entry(province_of(citizen).to_owned())
                .or_default()
                .0;
            change.add(digest);
        }
        let mut q = QueryBuilder::<DB>::new("DELETE FROM digest_citizens WHERE citizen_id");
        push_in(&mut q, &keys)?;
        q.build().execute(&mut **tx).await?;
        let rows: Vec<(&str, RouteDigest)> = new.iter().map(|(c, d)| (c.as_str(), *d)).collect();
        write_digests(tx, "digest_citizens (citizen_id", "", &rows).await?;
    }
    if provinces.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = provinces.keys().map(String::as_str).collect();
    let current: Vec<(String, String, i64)> = select_in(
        tx,
        "SELECT province, digest, routes FROM digest_provinces WHERE province",
        "",
        &text_keys(names.iter().copied()),
    )
    .await?;
    for (province, digest, routes) in current {
        if let Some(entry) = provinces.get_mut(&province) {
            entry.1 = stored_digest(&digest, routes)?;
        }
    }
    let rows: Vec<(&str, RouteDigest)> = provinces
        .iter()
        .map(|(province, (change, digest))| {
            let mut digest = *digest;
            digest.add(change);
            (province.as_str(), digest)
        })
        .collect();
    write_digests(
        tx,
        "digest_provinces (province",
        " ON CONFLICT (province) DO UPDATE SET digest = excluded.digest, routes = excluded.routes",
        &rows,
    )
    .await
}

/// Writes (key, digest) rows into `<table> (<key column>`, digest, routes), then `tail`.
async fn write_digests(
    tx: &mut Tx,
    table_and_key: &str,
    tail: &str,
    rows: &[(&str, RouteDigest)],
) -> StoreResult<()> {
    insert_rows(
        tx,
        &format!("INSERT INTO {table_and_key}, digest, routes) "),
        tail,
        rows,
        3,
        |row, (key, d)| {
            row.push_bind(*key)
                .push_bind(d.to_hex())
                .push_bind(d.routes);
        },
    )
    .await?;
    Ok(())
}

impl Backend {
    async fn edit_watch_list_impl(
        &self,
        client_id: &str,
        consumer: &str,
        add: &[CitizenId],
        remove: &[CitizenId],
    ) -> StoreResult<(u64, u64)> {
        let mut tx = self.write.begin_with(BEGIN_WRITE).await?;
        let added = insert_rows(
            &mut tx,
            "INSERT INTO watch_lists (client_id, consumer, citizen_id) ",
            " ON CONFLICT DO NOTHING",
            add,
            3,
            |b, c| {
                b.push_bind(client_id)
                    .push_bind(consumer)
                    .push_bind(c.as_str());
            },
        )
        .await?;
        let mut removed = 0;
        if !remove.is_empty() {
            let mut q = QueryBuilder::<DB>::new("DELETE FROM watch_lists WHERE client_id = ");
            q.push_bind(client_id.to_owned())
                .push(" AND consumer = ")
                .push_bind(consumer.to_owned())
                .push(" AND citizen_id");
            push_in(&mut q, &text_keys(remove.iter().map(CitizenId::as_str)))?;
            removed = q.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok((added, removed))
    }
}
