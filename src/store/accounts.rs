//! Single writes (link, account changes, preference, payout failure) as batches of one
//! through the planner, the loop that runs them, and the reads of accounts they leave
//! behind.
//!
//! A single write reads and locks what its command may touch, lets the planner decide
//! (`commands.rs`: the same steps, over the same rules in `domain`, as a population-sync
//! record), and writes the plan with the batch writer (`batch.rs`). Every write locks the
//! citizen before anything else of theirs (PostgreSQL's `FOR UPDATE`; SQLite's single
//! writer connection serialises instead), so two writers never wait on each other in
//! opposite orders. A write that loses a race (two claims on one account, two links
//! creating one citizen, one idempotency key sent twice at once) is rolled back and run
//! again: the retry sees the winner's committed rows and answers accordingly.

use uuid::Uuid;

use sqlx::Pool;

use super::batch::{load, load_accounts, load_holders, load_preferences, lost_race, write_work};
use super::dialect::{Dialect, Handle, Pooled, Session, Tx};
use super::idempotency::{remember, replay, StoredOutcome};
use super::resolution_model::refresh;
use super::rows::{AccountRow, DuplicateClaimRow, HistoryRow, PreferenceRow};
use super::sql::Sql;
use super::sql_store::SqlStore;
use super::{
    corrupt, AccountKey, Answer, DuplicateClaim, HistoryEntry, Preference, StoreError, StoreResult,
    WriteContext,
};
use crate::domain::commands::{plan_command, Command, Planned};
use crate::domain::planner::{key_of, Loaded};
use crate::domain::{account_not_found, Account, CitizenId, ProgramCode, Timestamp};

/// How often a write is retried after losing a race on a unique constraint. The retry
/// sees the winner's committed row and answers accordingly (a duplicate claim, or the
/// first answer under an idempotency key).
const WRITE_ATTEMPTS: usize = 3;

impl<D: Dialect> SqlStore<D> {
    /// Runs one write: replays a stored answer for a repeated idempotency key, else plans
    /// the command, writes the plan, stores its answer under the key and commits, all in
    /// one transaction.
    pub(super) async fn execute(
        &self,
        ctx: &WriteContext,
        cmd: Command<'_>,
    ) -> StoreResult<Answer> {
        let mut last_error = None;
        for _ in 0..WRITE_ATTEMPTS {
            let mut tx = self.begin_write().await?;
            if let Some(stored) = replay(&mut tx, ctx).await? {
                return stored.into_result();
            }
            let attempt = async {
                let Planned { work, answer } = self.plan_in(&mut tx, ctx, cmd).await?;
                // A refused claim on an account another citizen holds is recorded, and
                // the refusal kept under the idempotency key; other refusals write nothing.
                let answer = match answer {
                    Err(r) if work.duplicate_claims.is_empty() => {
                        return Ok(Err(StoreError::Rejected(r)))
                    }
                    answer => answer,
                };
                let Some(last_event) = write_work(&mut tx, ctx, &work).await? else {
                    return Err(corrupt("a single write updated a citizen it did not lock"));
                };
                let (stored, result) = match answer {
                    Ok(answer) => {
                        let answer = Answer {
                            last_event,
                            ..answer
                        };
                        (StoredOutcome::Answer(answer.clone()), Ok(answer))
                    }
                    Err(r) => (
                        StoredOutcome::Refused {
                            reason: r.reason.as_str().to_owned(),
                            field: r.field.clone(),
                            message: r.message.clone(),
                        },
                        Err(StoreError::Rejected(r)),
                    ),
                };
                if let Ok(answer) = &result {
                    // The citizen's row of the resolution read model commits with the
                    // change.
                    let citizen = answer.account.citizen_id.as_str();
                    refresh(&mut tx, self.options.model_format, &[citizen]).await?;
                }
                remember(&mut tx, ctx, &stored).await?;
                Ok(Ok(result))
            }
            .await;
            let result = match attempt {
                // Refused before anything was written: nothing to commit.
                Ok(Err(refused)) => return Err(refused),
                Ok(Ok(result)) => result,
                Err(e) if lost_race(&e) => {
                    last_error = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match tx.commit().await.map_err(StoreError::Database) {
                Err(e) if lost_race(&e) => {
                    last_error = Some(e);
                    continue;
                }
                other => other?,
            }
            self.tick();
            return result;
        }
        Err(last_error.unwrap_or_else(|| corrupt("write retries exhausted")))
    }

    /// Reads and locks what `cmd` may touch, and plans it.
    async fn plan_in(
        &self,
        tx: &mut Tx<D>,
        ctx: &WriteContext,
        cmd: Command<'_>,
    ) -> StoreResult<Planned> {
        let (citizen, account, key) = match cmd {
            Command::Link(c) => (
                c.citizen_id.clone(),
                None,
                Some((c.kind, c.provider_code.clone(), c.account_ref.clone())),
            ),
            Command::Prefer(c) => {
                self.check_program(c.program.as_ref()).await?;
                (c.citizen_id.clone(), Some(c.account_id), None)
            }
            Command::Change(c) => (owner(tx, c.account_id).await?, Some(c.account_id), None),
            Command::Failure(c) => {
                self.check_program(c.program.as_ref()).await?;
                (owner(tx, c.account_id).await?, Some(c.account_id), None)
            }
        };
        let citizens = [citizen];
        let mut loaded: Loaded = load(tx, &citizens).await?;
        let named: Vec<Uuid> = account.into_iter().collect();
        load_accounts(tx, &mut loaded, &citizens, &named).await?;
        if let Command::Prefer(_) = cmd {
            load_preferences(tx, &mut loaded, &citizens[0]).await?;
        }
        // The holders of the account a link or a verification claims.
        let key = key.or_else(|| account.and_then(|id| loaded.accounts.get(&id)).map(key_of));
        load_holders(tx, &mut loaded, key.as_slice()).await?;
        Ok(plan_command(ctx, cmd, &loaded, self.options.cooling_off))
    }
}

/// The citizen an account belongs to, read unlocked (the citizen's lock comes first), or
/// the refusal for an account the registry does not know.
async fn owner<D: Dialect>(tx: &mut Tx<D>, account: Uuid) -> StoreResult<CitizenId> {
    let row: Option<(String,)> = tx
        .fetch_optional(
            Sql::new("SELECT citizen_id FROM accounts WHERE account_id = $1").bind(account),
        )
        .await?;
    let (citizen,) = row.ok_or_else(|| account_not_found(account))?;
    Ok(CitizenId::from_stored(citizen))
}

async fn load_account<D: Dialect, C: Handle<D>>(
    session: &mut Session<D, C>,
    id: Uuid,
) -> StoreResult<Option<Account>> {
    session
        .fetch_optional::<AccountRow>(
            Sql::new(concat!(
                "SELECT ",
                account_columns!(),
                " FROM accounts WHERE account_id = $1"
            ))
            .bind(id),
        )
        .await?
        .map(Account::try_from)
        .transpose()
}

/// Reads of accounts, their history and the claims refused on them.
impl<D: Dialect> SqlStore<D> {
    pub(super) async fn account(
        &self,
        pool: &Pool<D::DB>,
        id: Uuid,
    ) -> StoreResult<Option<Account>> {
        load_account(&mut Pooled::<D>::acquire(pool).await?, id).await
    }

    pub(super) async fn citizen_accounts(
        &self,
        pool: &Pool<D::DB>,
        citizen: &CitizenId,
        include_closed: bool,
    ) -> StoreResult<(Vec<Account>, Vec<Preference>)> {
        let mut conn = Pooled::<D>::acquire(pool).await?;
        let accounts = conn
            .fetch_all::<AccountRow>(
                Sql::new(concat!(
                    "SELECT ",
                    account_columns!(),
                    " FROM accounts WHERE citizen_id = $1 \
                     AND ($2 OR status IN ('PENDING_VERIFICATION', 'VERIFIED', 'SUSPENDED')) \
                     ORDER BY created_at, account_id"
                ))
                .bind(citizen.as_str())
                .bind(include_closed),
            )
            .await?
            .into_iter()
            .map(Account::try_from)
            .collect::<StoreResult<Vec<_>>>()?;
        let prefs: Vec<PreferenceRow> = conn
            .fetch_all(
                Sql::new(
                    "SELECT program_code, account_id, previous_account_id, since FROM preferences \
                     WHERE citizen_id = $1 ORDER BY program_code",
                )
                .bind(citizen.as_str()),
            )
            .await?;
        let prefs = prefs
            .into_iter()
            .map(|p| {
                Ok(Preference {
                    program: ProgramCode::parse_optional(&p.program_code).map_err(corrupt)?,
                    account_id: p.account_id,
                    since: Timestamp(p.since),
                })
            })
            .collect::<StoreResult<_>>()?;
        Ok((accounts, prefs))
    }

    pub(super) async fn history_of(
        &self,
        pool: &Pool<D::DB>,
        id: Uuid,
        after_version: u64,
        limit: u32,
    ) -> StoreResult<Vec<HistoryEntry>> {
        Pooled::<D>::acquire(pool)
            .await?
            .fetch_all::<HistoryRow>(
                Sql::new(concat!(
                    "SELECT ",
                    account_columns!(),
                    ", change, actor, reason, valid_from, capacity FROM account_history \
                     WHERE account_id = $1 AND version > $2 ORDER BY version LIMIT $3"
                ))
                .bind(id)
                .bind(after_version as i64)
                .bind(i64::from(limit)),
            )
            .await?
            .into_iter()
            .map(HistoryEntry::try_from)
            .collect()
    }

    pub(super) async fn claims_page(
        &self,
        on: Option<&AccountKey>,
        before: Option<(Timestamp, Uuid)>,
        limit: u32,
    ) -> StoreResult<Vec<DuplicateClaim>> {
        let rows: Vec<DuplicateClaimRow> = self
            .reader()
            .await?
            .fetch_all(
                Sql::new(
                    "SELECT claim_id, kind, provider_code, account_ref, claimant_citizen_id, \
                     holder_citizen_id, holder_account_id, context, detected_at, actor \
                     FROM duplicate_claims \
                     WHERE ($1 IS NULL OR (kind = $1 AND provider_code = $2 AND account_ref = $3)) \
                     AND ($4 IS NULL OR detected_at < $4 OR (detected_at = $4 AND claim_id < $5)) \
                     ORDER BY detected_at DESC, claim_id DESC LIMIT $6",
                )
                .bind(on.map(|k| k.kind.as_str()))
                .bind(on.map(|k| k.provider_code.as_str()))
                .bind(on.map(|k| k.account_ref.as_str()))
                .bind(before.map(|(t, _)| t.micros()))
                .bind(before.map(|(_, id)| id))
                .bind(i64::from(limit)),
            )
            .await?;
        rows.into_iter().map(DuplicateClaim::try_from).collect()
    }

    pub(super) async fn claims_on(&self, on: &AccountKey) -> StoreResult<Vec<Account>> {
        self.reader()
            .await?
            .fetch_all::<AccountRow>(
                // Each arm's status condition is its index's (`accounts_one_holder`,
                // `accounts_by_ref_unheld`): together they hold every account once.
                Sql::new(concat!(
                    "SELECT * FROM (SELECT ",
                    account_columns!(),
                    " FROM accounts WHERE kind = $1 AND provider_code = $2 AND account_ref = $3 \
                     AND status IN ('VERIFIED', 'SUSPENDED') \
                     UNION ALL SELECT ",
                    account_columns!(),
                    " FROM accounts WHERE kind = $1 AND provider_code = $2 AND account_ref = $3 \
                     AND status NOT IN ('VERIFIED', 'SUSPENDED')) claims \
                     ORDER BY created_at, account_id"
                ))
                .bind(on.kind.as_str())
                .bind(&on.provider_code)
                .bind(on.account_ref.as_str()),
            )
            .await?
            .into_iter()
            .map(Account::try_from)
            .collect()
    }
}
