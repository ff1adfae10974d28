// The transaction scripts, written once and compiled into each backend with `include!`.
//
// Each backend module (postgres.rs, sqlite.rs) provides, before including this file:
// - `type DB` (the sqlx database) and `type Backend` (its store struct, with fields
//   `write: Pool<DB>`, `read: Pool<DB>` and `options: StoreOptions`);
// - `LOCK_CITIZEN` and `LOCK_ACCOUNT`: the row-locking selects (`FOR UPDATE` on
//   PostgreSQL; SQLite serialises writers on a single connection instead);
// - `fn unique_target(&sqlx::Error) -> Option<UniqueTarget>`: which unique constraint a
//   database error violated;
// - `MIGRATOR`: its migrations folder;
// - `ACCESS_LOG_PREAMBLE`: a statement run first in each access-log batch, if any, and
//   `insert_access_log`: the batch's set-based INSERT.
//
// The SQL here is the dialect both backends accept (`$n` parameters, ON CONFLICT,
// partial indexes). What is checked, in which order and with which locks held, is the
// registry's correctness, so it exists exactly once.

use crate::domain::ReportPayoutFailure;
use crate::domain::{
    account_not_found, check_verification, check_version, previous_for_change, resolve,
    AccountAction, AccountStatus, Change, CitizenStatus, PreferenceAt, Reason, ResolutionInputs,
    VerificationInput, MAX_OPEN_ACCOUNTS,
};
use crate::store::rows::{
    AccountRow, CitizenRow, DuplicateClaimRow, EventRow, HistoryRow, PreferenceRow,
};
use crate::store::{AccessEntry, Answer, KnownPrograms, StoredOutcome, UniqueTarget};
use std::sync::Arc;

type Tx = sqlx::Transaction<'static, DB>;

/// What a transaction script decided.
enum Outcome {
    /// Commit, and answer.
    Done(Answer),
    /// Commit what was recorded (a duplicate claim), and refuse the request.
    Refuse(Rejection),
}

/// How often a write is retried after losing a race on a unique constraint. The retry
/// sees the winner's committed row and answers accordingly (a duplicate claim, or the
/// first answer under an idempotency key).
const WRITE_ATTEMPTS: usize = 3;

/// The command a write applies.
#[derive(Clone, Copy)]
enum Command<'a> {
    Link(&'a LinkAccount),
    Change(&'a ChangeAccount),
    Prefer(&'a SetPreference),
    Failure(&'a ReportPayoutFailure),
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl Backend {
    /// Runs one write: replays a stored answer for a repeated idempotency key, else runs
    /// the script, stores its answer under the key and commits, all in one transaction.
    async fn execute(&self, ctx: &WriteContext, cmd: Command<'_>) -> StoreResult<Answer> {
        let mut last_error = None;
        for _ in 0..WRITE_ATTEMPTS {
            let mut tx = self.write.begin_with(BEGIN_WRITE).await?;
            if let Some(stored) = replay(&mut tx, ctx).await? {
                return stored_result(stored);
            }
            let outcome = match cmd {
                Command::Link(c) => self.link_in(&mut tx, ctx, c).await,
                Command::Change(c) => self.change_in(&mut tx, ctx, c).await,
                Command::Prefer(c) => self.prefer_in(&mut tx, ctx, c).await,
                Command::Failure(c) => self.failure_in(&mut tx, ctx, c).await,
            };
            let (stored, result) = match outcome {
                Ok(Outcome::Done(answer)) => (StoredOutcome::Answer(answer.clone()), Ok(answer)),
                Ok(Outcome::Refuse(r)) => (
                    StoredOutcome::Refused {
                        reason: r.reason.as_str().to_owned(),
                        field: r.field.clone(),
                        message: r.message.clone(),
                    },
                    Err(StoreError::Rejected(r)),
                ),
                Err(StoreError::Database(e)) if unique_target(&e).is_some() => {
                    // Lost a race (two claims on one account, or one idempotency key sent
                    // twice at once): roll back and run again against the winner's state.
                    last_error = Some(StoreError::Database(e));
                    continue;
                }
                Err(e) => return Err(e),
            };
            match remember(&mut tx, ctx, &stored).await {
                Err(StoreError::Database(e)) if unique_target(&e).is_some() => {
                    last_error = Some(StoreError::Database(e));
                    continue;
                }
                other => other?,
            }
            match tx.commit().await {
                Err(e) if unique_target(&e).is_some() => {
                    last_error = Some(StoreError::Database(e));
                    continue;
                }
                other => other?,
            }
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
            return result;
        }
        Err(last_error.unwrap_or_else(|| corrupt("write retries exhausted")))
    }

    async fn link_in(
        &self,
        tx: &mut Tx,
        ctx: &WriteContext,
        cmd: &LinkAccount,
    ) -> StoreResult<Outcome> {
        let account = Account {
            id: Uuid::now_v7(),
            citizen_id: cmd.citizen_id.clone(),
            kind: cmd.kind,
            provider_code: cmd.provider_code.clone(),
            account_ref: cmd.account_ref.clone(),
            holder_name: cmd.holder_name.as_ref().map(|h| h.as_str().to_owned()),
            status: AccountStatus::PendingVerification,
            verification: None,
            version: 1,
            created_at: ctx.now,
            updated_at: ctx.now,
        };
        // A claim on an account another citizen holds is refused before anything is
        // created for the claimant; only the claim itself is recorded.
        if let Some(refused) = claim_conflict(tx, ctx, &account, "LINK").await? {
            return Ok(Outcome::Refuse(refused));
        }
        let citizen = ensure_citizen(tx, ctx, &cmd.citizen_id).await?;
        if citizen.status != CitizenStatus::Active.as_str() {
            return Err(Rejection::field(
                Reason::CitizenNotActive,
                "citizen_id",
                "the citizen is not active (deceased or id revoked): no account can be linked",
            )
            .into());
        }
        check_provider(tx, &cmd.provider_code, cmd.kind).await?;
        let open: Vec<Account> = sqlx::query_as::<_, AccountRow>(concat!(
            "SELECT ",
            account_columns!(),
            " FROM accounts WHERE citizen_id = $1 \
             AND status IN ('PENDING_VERIFICATION', 'VERIFIED', 'SUSPENDED')"
        ))
        .bind(cmd.citizen_id.as_str())
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .map(Account::try_from)
        .collect::<StoreResult<_>>()?;
        if open.iter().any(|a| {
            a.kind == cmd.kind
                && a.provider_code == cmd.provider_code
                && a.account_ref == cmd.account_ref
        }) {
            return Err(Rejection::field(
                Reason::AccountAlreadyLinked,
                "account_ref",
                "the citizen already has this account open",
            )
            .into());
        }
        if open.len() >= MAX_OPEN_ACCOUNTS {
            return Err(Rejection::field(
                Reason::TooManyOpenAccounts,
                "citizen_id",
                format!("a citizen may have at most {MAX_OPEN_ACCOUNTS} open accounts"),
            )
            .into());
        }
        if let Some(v) = &cmd.verification {
            check_verification(
                v,
                account.holder_name.as_deref(),
                citizen.full_name.as_deref(),
            )?;
        }
        sqlx::query(
            "INSERT INTO accounts (account_id, citizen_id, kind, provider_code, account_ref, \
             holder_name, status, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(account.id)
        .bind(account.citizen_id.as_str())
        .bind(account.kind.as_str())
        .bind(&account.provider_code)
        .bind(account.account_ref.as_str())
        .bind(&account.holder_name)
        .bind(account.status.as_str())
        .bind(account.version as i64)
        .bind(account.created_at.micros())
        .bind(account.updated_at.micros())
        .execute(&mut **tx)
        .await?;
        record_account_change(tx, ctx, &account, Change::Linked, &cmd.reason).await?;
        match &cmd.verification {
            None => Ok(Outcome::Done(Answer::of(account))),
            Some(v) => {
                let action = AccountAction::Verify {
                    verification: v.clone(),
                    holder_name: None,
                };
                self.apply(tx, ctx, &citizen, &account, &action, &cmd.reason)
                    .await
            }
        }
    }

    async fn change_in(
        &self,
        tx: &mut Tx,
        ctx: &WriteContext,
        cmd: &ChangeAccount,
    ) -> StoreResult<Outcome> {
        let citizen_id: Option<String> =
            sqlx::query_scalar("SELECT citizen_id FROM accounts WHERE account_id = $1")
                .bind(cmd.account_id)
                .fetch_optional(&mut **tx)
                .await?;
        let citizen_id = citizen_id.ok_or_else(|| account_not_found(cmd.account_id))?;
        // Citizen first, then account: every write takes its locks in this order.
        let citizen = lock_citizen(tx, &citizen_id)
            .await?
            .ok_or_else(|| corrupt("account without citizen"))?;
        let account = lock_account(tx, cmd.account_id)
            .await?
            .ok_or_else(|| account_not_found(cmd.account_id))?;
        check_version(cmd.expected_version, account.version)?;
        self.apply(tx, ctx, &citizen, &account, &cmd.action, &cmd.reason)
            .await
    }

    /// Applies `action` to a locked account: the state machine, verification evidence,
    /// the one-holder rule, history, events, and the first verified account becoming the
    /// default.
    async fn apply(
        &self,
        tx: &mut Tx,
        ctx: &WriteContext,
        citizen: &CitizenRow,
        account: &Account,
        action: &AccountAction,
        reason: &str,
    ) -> StoreResult<Outcome> {
        let (verification, holder_name): (Option<&VerificationInput>, _) = match action {
            AccountAction::Verify {
                verification,
                holder_name,
            } => (Some(verification), holder_name.as_ref()),
            _ => (None, None),
        };
        let change = action.change();
        // State machine first: an illegal transition is refused before anything else.
        let next = account.changed(change, &ctx.actor, ctx.now, verification, holder_name)?;
        if let Some(v) = verification {
            check_verification(v, next.holder_name.as_deref(), citizen.full_name.as_deref())?;
            if let Some(refused) = claim_conflict(tx, ctx, account, "VERIFY").await? {
                return Ok(Outcome::Refuse(refused));
            }
        }
        let (method, by, at, evidence) = match &next.verification {
            Some(v) => (
                Some(v.method.as_str()),
                Some(v.verified_by.as_str()),
                Some(v.verified_at.micros()),
                Some(v.evidence_ref.as_str()),
            ),
            None => (None, None, None, None),
        };
        sqlx::query(
            "UPDATE accounts SET status = $1, holder_name = $2, verification_method = $3, \
             verified_by = $4, verified_at = $5, evidence_ref = $6, version = $7, \
             updated_at = $8 WHERE account_id = $9 AND version = $10",
        )
        .bind(next.status.as_str())
        .bind(&next.holder_name)
        .bind(method)
        .bind(by)
        .bind(at)
        .bind(evidence)
        .bind(next.version as i64)
        .bind(next.updated_at.micros())
        .bind(next.id)
        .bind(account.version as i64)
        .execute(&mut **tx)
        .await?;
        record_account_change(tx, ctx, &next, change, reason).await?;
        if change == Change::Verified {
            let has_default: Option<Uuid> = sqlx::query_scalar(
                "SELECT account_id FROM preferences WHERE citizen_id = $1 AND program_code = ''",
            )
            .bind(next.citizen_id.as_str())
            .fetch_optional(&mut **tx)
            .await?;
            if has_default.is_none() {
                write_preference(tx, ctx, &next, None, None, "first verified account").await?;
            }
        }
        Ok(Outcome::Done(Answer::of(next)))
    }

    async fn prefer_in(
        &self,
        tx: &mut Tx,
        ctx: &WriteContext,
        cmd: &SetPreference,
    ) -> StoreResult<Outcome> {
        let not_owned = || {
            Rejection::field(
                Reason::AccountNotOwnedByCitizen,
                "account_id",
                "the citizen has no such account",
            )
        };
        self.check_program(cmd.program.as_ref()).await?;
        lock_citizen(tx, cmd.citizen_id.as_str())
            .await?
            .ok_or_else(not_owned)?;
        let account = lock_account(tx, cmd.account_id)
            .await?
            .filter(|a| a.citizen_id == cmd.citizen_id)
            .ok_or_else(not_owned)?;
        check_version(cmd.expected_version, account.version)?;
        if account.status != AccountStatus::Verified {
            return Err(Rejection::field(
                Reason::AccountNotVerified,
                "account_id",
                format!(
                    "only a VERIFIED account can be paid into; this one is {}",
                    account.status
                ),
            )
            .into());
        }
        let key = ProgramCode::key(cmd.program.as_ref());
        // What pays this program now: its own preference, else the default. A program's
        // first preference is a change of account like any other and cools off against
        // the default it replaces.
        let rows: Vec<PreferenceRow> = sqlx::query_as(
            "SELECT program_code, account_id, previous_account_id, since FROM preferences \
             WHERE citizen_id = $1 AND program_code IN ($2, '')",
        )
        .bind(cmd.citizen_id.as_str())
        .bind(key)
        .fetch_all(&mut **tx)
        .await?;
        let own = rows.iter().find(|r| r.program_code == key);
        if own.is_some_and(|c| c.account_id == account.id) {
            return Ok(Outcome::Done(Answer::of(account)));
        }
        let current_at = match own.or_else(|| rows.iter().find(|r| r.program_code.is_empty())) {
            Some(row) => Some(PreferenceAt {
                account: load_account(&mut **tx, row.account_id).await?,
                since: Timestamp(row.since),
                previous: match row.previous_account_id {
                    Some(id) => load_account(&mut **tx, id).await?,
                    None => None,
                },
            }),
            None => None,
        };
        let previous = previous_for_change(
            current_at.as_ref(),
            account.id,
            ctx.now,
            self.options.cooling_off,
        );
        write_preference(
            tx,
            ctx,
            &account,
            cmd.program.as_ref(),
            previous,
            &cmd.reason,
        )
        .await?;
        Ok(Outcome::Done(Answer::of(account)))
    }

    async fn failure_in(
        &self,
        tx: &mut Tx,
        ctx: &WriteContext,
        cmd: &ReportPayoutFailure,
    ) -> StoreResult<Outcome> {
        self.check_program(cmd.program.as_ref()).await?;
        let citizen_id: Option<String> =
            sqlx::query_scalar("SELECT citizen_id FROM accounts WHERE account_id = $1")
                .bind(cmd.account_id)
                .fetch_optional(&mut **tx)
                .await?;
        let citizen_id = citizen_id.ok_or_else(|| account_not_found(cmd.account_id))?;
        let citizen = lock_citizen(tx, &citizen_id)
            .await?
            .ok_or_else(|| corrupt("account without citizen"))?;
        let account = lock_account(tx, cmd.account_id)
            .await?
            .ok_or_else(|| account_not_found(cmd.account_id))?;
        let failure_id = Uuid::now_v7();
        let program = ProgramCode::key(cmd.program.as_ref());
        sqlx::query(
            "INSERT INTO payout_failures (failure_id, account_id, citizen_id, program_code, \
             failure_code, payer_reference, failed_at, reported_at, actor, reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(failure_id)
        .bind(account.id)
        .bind(account.citizen_id.as_str())
        .bind(program)
        .bind(cmd.failure_code.as_str())
        .bind(&cmd.payer_reference)
        .bind(cmd.failed_at.map(Timestamp::micros))
        .bind(ctx.now.micros())
        .bind(&ctx.actor)
        .bind(&cmd.reason)
        .execute(&mut **tx)
        .await?;
        let payload = serde_json::json!({
            "failure_id": failure_id,
            "failure_code": cmd.failure_code.as_str(),
            "program_code": program,
            "payer_reference": cmd.payer_reference,
            "failed_at": cmd.failed_at,
            "account": account,
        });
        insert_event(
            tx,
            ctx,
            "PAYOUT_FAILURE_REPORTED",
            account.citizen_id.as_str(),
            Some(account.id),
            &cmd.reason,
            &payload,
        )
        .await?;
        // Rule 6: a failed credit stops payment into the account until someone
        // reinstates it. An account that is already not payable stays as it is.
        let account = if account.status == AccountStatus::Verified {
            let reason = format!("payout failure {}: {}", cmd.failure_code, cmd.reason);
            match self
                .apply(
                    tx,
                    ctx,
                    &citizen,
                    &account,
                    &AccountAction::Suspend,
                    &reason,
                )
                .await?
            {
                Outcome::Done(answer) => answer.account,
                Outcome::Refuse(r) => return Ok(Outcome::Refuse(r)),
            }
        } else {
            account
        };
        Ok(Outcome::Done(Answer {
            account,
            failure_id: Some(failure_id),
        }))
    }

    async fn resolve_as_of(
        &self,
        q: &ResolveQuery,
        at: Timestamp,
    ) -> StoreResult<ResolutionInputs> {
        let mut conn = self.read.acquire().await?;
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM citizen_history WHERE citizen_id = $1 AND valid_from <= $2 \
             ORDER BY valid_from DESC, id DESC LIMIT 1",
        )
        .bind(q.citizen_id.as_str())
        .bind(at.micros())
        .fetch_optional(&mut *conn)
        .await?;
        let Some(status) = status else {
            return Ok(ResolutionInputs::default());
        };
        let citizen = CitizenStatus::parse(&status).ok_or_else(|| corrupt("citizen status"))?;
        let key = ProgramCode::key(q.program.as_ref());
        let mut prefs = Vec::new();
        for program in [key, ""] {
            let row: Option<PreferenceRow> = sqlx::query_as(
                "SELECT program_code, account_id, previous_account_id, valid_from AS since \
                 FROM preference_history WHERE citizen_id = $1 AND program_code = $2 \
                 AND valid_from <= $3 ORDER BY valid_from DESC, id DESC LIMIT 1",
            )
            .bind(q.citizen_id.as_str())
            .bind(program)
            .bind(at.micros())
            .fetch_optional(&mut *conn)
            .await?;
            prefs.extend(row);
            if program.is_empty() {
                break;
            }
        }
        let ids: Vec<Uuid> = prefs
            .iter()
            .flat_map(|p| [Some(p.account_id), p.previous_account_id])
            .flatten()
            .collect();
        let mut accounts = Vec::new();
        for id in ids {
            let row: Option<HistoryRow> = sqlx::query_as(concat!(
                "SELECT ",
                account_columns!(),
                ", change, actor, reason, valid_from FROM account_history \
                 WHERE account_id = $1 AND valid_from <= $2 ORDER BY version DESC LIMIT 1"
            ))
            .bind(id)
            .bind(at.micros())
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(row) = row {
                accounts.push(HistoryEntry::try_from(row)?.account);
            }
        }
        Ok(inputs_from(Some(citizen), &prefs, key, |id| {
            accounts.iter().find(|a| a.id == id).cloned()
        }))
    }

    /// Refuses a program code that is not in the reference data. The codes are read once
    /// and kept: they change only when `migrate` loads new reference data.
    async fn check_program(&self, program: Option<&ProgramCode>) -> StoreResult<()> {
        let Some(program) = program else {
            return Ok(());
        };
        let cached = self
            .programs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let known = match cached {
            Some(known) => known,
            None => {
                let codes: Vec<String> = sqlx::query_scalar("SELECT code FROM programs")
                    .fetch_all(&self.read)
                    .await?;
                let known = std::sync::Arc::new(codes.into_iter().collect());
                *self.programs.write().unwrap_or_else(|p| p.into_inner()) =
                    Some(Arc::clone(&known));
                known
            }
        };
        if known.contains(program.as_str()) {
            return Ok(());
        }
        Err(Rejection::field(
            Reason::ProgramUnknown,
            "program_code",
            "no such program in the reference data",
        )
        .into())
    }
}

/// Builds resolution inputs from preference rows (program key and default) and a way to
/// find each account's state.
fn inputs_from(
    citizen: Option<CitizenStatus>,
    prefs: &[PreferenceRow],
    key: &str,
    account: impl Fn(Uuid) -> Option<Account>,
) -> ResolutionInputs {
    let at = |program: &str| {
        prefs
            .iter()
            .find(|p| p.program_code == program)
            .map(|p| PreferenceAt {
                account: account(p.account_id),
                since: Timestamp(p.since),
                previous: p.previous_account_id.and_then(&account),
            })
    };
    ResolutionInputs {
        citizen,
        program: if key.is_empty() { None } else { at(key) },
        default: at(""),
    }
}

fn stored_result(stored: StoredOutcome) -> StoreResult<Answer> {
    match stored {
        StoredOutcome::Answer(a) => Ok(a),
        StoredOutcome::Refused {
            reason,
            field,
            message,
        } => {
            let reason = Reason::parse(&reason).ok_or_else(|| corrupt("stored refusal reason"))?;
            Err(StoreError::Rejected(Rejection {
                reason,
                field,
                message,
            }))
        }
    }
}

/// Takes this client's idempotency key for the transaction, or returns the first answer
/// given under it. The key's row is inserted first thing, so a concurrent request with
/// the same key waits on it and then replays this one's answer instead of running the
/// write a second time. The same key with a different request is refused.
async fn replay(tx: &mut Tx, ctx: &WriteContext) -> StoreResult<Option<StoredOutcome>> {
    let Some(idem) = &ctx.idempotency else {
        return Ok(None);
    };
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (client_id, key, request_hash, response, created_at) \
         VALUES ($1, $2, $3, '', $4) ON CONFLICT (client_id, key) DO NOTHING",
    )
    .bind(&ctx.actor)
    .bind(idem.key)
    .bind(&idem.request_hash)
    .bind(ctx.now.micros())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if claimed == 1 {
        return Ok(None);
    }
    let (hash, json): (Vec<u8>, String) = sqlx::query_as(
        "SELECT request_hash, response FROM idempotency_keys WHERE client_id = $1 AND key = $2",
    )
    .bind(&ctx.actor)
    .bind(idem.key)
    .fetch_one(&mut **tx)
    .await?;
    if hash != idem.request_hash {
        return Err(Rejection::field(
            Reason::IdempotencyKeyReused,
            "idempotency_key",
            "this idempotency key was already used with a different request",
        )
        .into());
    }
    Ok(Some(serde_json::from_str(&json).map_err(corrupt)?))
}

/// Records the answer under the key taken by [`replay`].
async fn remember(tx: &mut Tx, ctx: &WriteContext, outcome: &StoredOutcome) -> StoreResult<()> {
    let Some(idem) = &ctx.idempotency else {
        return Ok(());
    };
    let json = serde_json::to_string(outcome).map_err(corrupt)?;
    sqlx::query("UPDATE idempotency_keys SET response = $3 WHERE client_id = $1 AND key = $2")
        .bind(&ctx.actor)
        .bind(idem.key)
        .bind(json)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The citizen row, locked; created ACTIVE (with its first history entry) when the
/// registry has not seen the citizen before.
async fn ensure_citizen(
    tx: &mut Tx,
    ctx: &WriteContext,
    id: &CitizenId,
) -> StoreResult<CitizenRow> {
    let inserted = sqlx::query(
        "INSERT INTO citizens (citizen_id, province_code, status, created_at, updated_at) \
         VALUES ($1, $2, 'ACTIVE', $3, $3) ON CONFLICT (citizen_id) DO NOTHING",
    )
    .bind(id.as_str())
    .bind(id.province_code())
    .bind(ctx.now.micros())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        insert_citizen_history(
            tx,
            ctx,
            id.as_str(),
            None,
            CitizenStatus::Active,
            None,
            None,
            "first seen when an account was linked",
        )
        .await?;
    }
    lock_citizen(tx, id.as_str())
        .await?
        .ok_or_else(|| corrupt("citizen vanished inside its transaction"))
}

async fn lock_citizen(tx: &mut Tx, id: &str) -> StoreResult<Option<CitizenRow>> {
    Ok(sqlx::query_as(LOCK_CITIZEN)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?)
}

async fn lock_account(tx: &mut Tx, id: Uuid) -> StoreResult<Option<Account>> {
    sqlx::query_as::<_, AccountRow>(LOCK_ACCOUNT)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .map(Account::try_from)
        .transpose()
}

async fn load_account<'e, E>(ex: E, id: Uuid) -> StoreResult<Option<Account>>
where
    E: sqlx::Executor<'e, Database = DB>,
{
    sqlx::query_as::<_, AccountRow>(concat!(
        "SELECT ",
        account_columns!(),
        " FROM accounts WHERE account_id = $1"
    ))
    .bind(id)
    .fetch_optional(ex)
    .await?
    .map(Account::try_from)
    .transpose()
}

async fn check_provider(
    tx: &mut Tx,
    code: &str,
    kind: crate::domain::AccountKind,
) -> StoreResult<()> {
    let row: Option<(String, bool)> =
        sqlx::query_as("SELECT kind, active FROM providers WHERE code = $1")
            .bind(code)
            .fetch_optional(&mut **tx)
            .await?;
    let Some((provider_kind, active)) = row else {
        return Err(Rejection::field(
            Reason::ProviderUnknown,
            "provider_code",
            "no such provider in the reference data",
        )
        .into());
    };
    if provider_kind != kind.as_str() {
        return Err(Rejection::field(
            Reason::ProviderKindMismatch,
            "provider_code",
            format!("this provider offers {provider_kind}, not {kind}"),
        )
        .into());
    }
    if !active {
        return Err(Rejection::field(
            Reason::ProviderInactive,
            "provider_code",
            "this provider is no longer active",
        )
        .into());
    }
    Ok(())
}

/// If another citizen holds this account, records the claim (and its event) and returns
/// the refusal to send. The refusal does not say who holds the account.
async fn claim_conflict(
    tx: &mut Tx,
    ctx: &WriteContext,
    claim: &Account,
    context: &str,
) -> StoreResult<Option<Rejection>> {
    let holder: Option<(String, Uuid)> = sqlx::query_as(
        "SELECT citizen_id, account_id FROM accounts WHERE kind = $1 AND provider_code = $2 \
         AND account_ref = $3 AND status IN ('VERIFIED', 'SUSPENDED') AND citizen_id <> $4",
    )
    .bind(claim.kind.as_str())
    .bind(&claim.provider_code)
    .bind(claim.account_ref.as_str())
    .bind(claim.citizen_id.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let Some((holder, holder_account)) = holder else {
        return Ok(None);
    };
    let claim = DuplicateClaim::detected(
        claim,
        CitizenId::from_stored(holder),
        holder_account,
        context,
        ctx,
    );
    sqlx::query(
        "INSERT INTO duplicate_claims (claim_id, kind, provider_code, account_ref, \
         claimant_citizen_id, holder_citizen_id, holder_account_id, context, detected_at, actor) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(claim.claim_id)
    .bind(claim.kind.as_str())
    .bind(&claim.provider_code)
    .bind(claim.account_ref.as_str())
    .bind(claim.claimant.as_str())
    .bind(claim.holder.as_str())
    .bind(claim.holder_account_id)
    .bind(&claim.context)
    .bind(claim.detected_at.micros())
    .bind(&claim.actor)
    .execute(&mut **tx)
    .await?;
    insert_event(
        tx,
        ctx,
        "DUPLICATE_CLAIM_DETECTED",
        claim.claimant.as_str(),
        None,
        crate::store::sync::DUPLICATE_CLAIM_REASON,
        &crate::store::sync::duplicate_claim_payload(&claim),
    )
    .await?;
    Ok(Some(crate::store::sync::owned_by_another()))
}

/// Appends the account's new version to its history and announces it.
async fn record_account_change(
    tx: &mut Tx,
    ctx: &WriteContext,
    account: &Account,
    change: Change,
    reason: &str,
) -> StoreResult<()> {
    sqlx::query(concat!(
        "INSERT INTO account_history (",
        account_columns!(),
        ", change, actor, reason, valid_from) SELECT ",
        account_columns!(),
        ", $2, $3, $4, $5 FROM accounts WHERE account_id = $1"
    ))
    .bind(account.id)
    .bind(change.as_str())
    .bind(&ctx.actor)
    .bind(reason)
    .bind(ctx.now.micros())
    .execute(&mut **tx)
    .await?;
    let event_type = format!("ACCOUNT_{}", change.as_str());
    let payload = serde_json::to_value(account).map_err(corrupt)?;
    insert_event(
        tx,
        ctx,
        &event_type,
        account.citizen_id.as_str(),
        Some(account.id),
        reason,
        &payload,
    )
    .await
}

/// Points a citizen's default (or program) preference at `account`, with history and
/// event.
async fn write_preference(
    tx: &mut Tx,
    ctx: &WriteContext,
    account: &Account,
    program: Option<&ProgramCode>,
    previous: Option<Uuid>,
    reason: &str,
) -> StoreResult<()> {
    let key = ProgramCode::key(program);
    sqlx::query(
        "INSERT INTO preferences (citizen_id, program_code, account_id, previous_account_id, since) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (citizen_id, program_code) DO UPDATE SET \
         account_id = excluded.account_id, previous_account_id = excluded.previous_account_id, \
         since = excluded.since",
    )
    .bind(account.citizen_id.as_str())
    .bind(key)
    .bind(account.id)
    .bind(previous)
    .bind(ctx.now.micros())
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO preference_history (citizen_id, program_code, account_id, \
         previous_account_id, valid_from, actor, reason) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(account.citizen_id.as_str())
    .bind(key)
    .bind(account.id)
    .bind(previous)
    .bind(ctx.now.micros())
    .bind(&ctx.actor)
    .bind(reason)
    .execute(&mut **tx)
    .await?;
    let payload = serde_json::json!({
        "program_code": key,
        "previous_account_id": previous,
        "account": account,
    });
    insert_event(
        tx,
        ctx,
        "DEFAULT_CHANGED",
        account.citizen_id.as_str(),
        Some(account.id),
        reason,
        &payload,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn insert_citizen_history(
    tx: &mut Tx,
    ctx: &WriteContext,
    citizen_id: &str,
    full_name: Option<&str>,
    status: CitizenStatus,
    died_on: Option<&str>,
    source_version: Option<i64>,
    reason: &str,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO citizen_history (citizen_id, full_name, status, died_on, source_version, \
         valid_from, actor, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(citizen_id)
    .bind(full_name)
    .bind(status.as_str())
    .bind(died_on)
    .bind(source_version)
    .bind(ctx.now.micros())
    .bind(&ctx.actor)
    .bind(reason)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Appends to the outbox, inside the change's transaction.
async fn insert_event(
    tx: &mut Tx,
    ctx: &WriteContext,
    event_type: &str,
    citizen_id: &str,
    account_id: Option<Uuid>,
    reason: &str,
    payload: &serde_json::Value,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO events (event_id, occurred_at, event_type, citizen_id, account_id, actor, \
         reason, payload) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(Uuid::now_v7())
    .bind(ctx.now.micros())
    .bind(event_type)
    .bind(citizen_id)
    .bind(account_id)
    .bind(&ctx.actor)
    .bind(reason)
    .bind(payload.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[async_trait]
impl Store for Backend {
    async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.write).await?;
        let mut tx = self.write.begin_with(BEGIN_WRITE).await?;
        for p in crate::store::reference::providers().map_err(corrupt)? {
            sqlx::query(
                "INSERT INTO providers (code, kind, name, short_name, active) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (code) DO UPDATE SET \
                 kind = excluded.kind, name = excluded.name, short_name = excluded.short_name, \
                 active = excluded.active",
            )
            .bind(&p.code)
            .bind(p.kind.as_str())
            .bind(&p.name)
            .bind(&p.short_name)
            .bind(p.active)
            .execute(&mut *tx)
            .await?;
        }
        for p in crate::store::reference::programs().map_err(corrupt)? {
            sqlx::query(
                "INSERT INTO programs (code, name, description) VALUES ($1, $2, $3) \
                 ON CONFLICT (code) DO UPDATE SET name = excluded.name, \
                 description = excluded.description",
            )
            .bind(&p.code)
            .bind(&p.name)
            .bind(&p.description)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        *self.programs.write().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    async fn link_account(&self, ctx: &WriteContext, cmd: &LinkAccount) -> StoreResult<Account> {
        Ok(self.execute(ctx, Command::Link(cmd)).await?.account)
    }

    async fn change_account(
        &self,
        ctx: &WriteContext,
        cmd: &ChangeAccount,
    ) -> StoreResult<Account> {
        Ok(self.execute(ctx, Command::Change(cmd)).await?.account)
    }

    async fn set_preference(
        &self,
        ctx: &WriteContext,
        cmd: &SetPreference,
    ) -> StoreResult<Account> {
        Ok(self.execute(ctx, Command::Prefer(cmd)).await?.account)
    }

    async fn upsert_citizen(
        &self,
        ctx: &WriteContext,
        rec: &CitizenRecord,
    ) -> StoreResult<CitizenUpsert> {
        // One record through the population-sync path (its rules, history and event),
        // under a record id of the citizen's own.
        let existed: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM citizens WHERE citizen_id = $1")
                .bind(rec.citizen_id.as_str())
                .fetch_optional(&self.read)
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
        match self.sync_citizens_impl(ctx, &[record]).await?.pop() {
            Some(RecordOutcome::Applied) if existed.is_some() => Ok(CitizenUpsert::Updated),
            Some(RecordOutcome::Applied) => Ok(CitizenUpsert::Created),
            Some(RecordOutcome::Stale) => Ok(CitizenUpsert::Stale),
            Some(RecordOutcome::Rejected(r)) => Err(r.into()),
            None => Err(corrupt("no outcome for the citizen record")),
        }
    }

    async fn get_account(&self, id: Uuid) -> StoreResult<Option<Account>> {
        load_account(&self.read, id).await
    }

    async fn list_citizen_accounts(
        &self,
        citizen: &CitizenId,
        include_closed: bool,
    ) -> StoreResult<(Vec<Account>, Vec<Preference>)> {
        let accounts = sqlx::query_as::<_, AccountRow>(concat!(
            "SELECT ",
            account_columns!(),
            " FROM accounts WHERE citizen_id = $1 \
             AND ($2 OR status IN ('PENDING_VERIFICATION', 'VERIFIED', 'SUSPENDED')) \
             ORDER BY created_at, account_id"
        ))
        .bind(citizen.as_str())
        .bind(include_closed)
        .fetch_all(&self.read)
        .await?
        .into_iter()
        .map(Account::try_from)
        .collect::<StoreResult<Vec<_>>>()?;
        let prefs: Vec<PreferenceRow> = sqlx::query_as(
            "SELECT program_code, account_id, previous_account_id, since FROM preferences \
             WHERE citizen_id = $1 ORDER BY program_code",
        )
        .bind(citizen.as_str())
        .fetch_all(&self.read)
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

    async fn account_history(
        &self,
        id: Uuid,
        after_version: u64,
        limit: u32,
    ) -> StoreResult<Vec<HistoryEntry>> {
        sqlx::query_as::<_, HistoryRow>(concat!(
            "SELECT ",
            account_columns!(),
            ", change, actor, reason, valid_from FROM account_history \
             WHERE account_id = $1 AND version > $2 ORDER BY version LIMIT $3"
        ))
        .bind(id)
        .bind(after_version as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?
        .into_iter()
        .map(HistoryEntry::try_from)
        .collect()
    }

    async fn resolve(&self, q: &ResolveQuery, now: Timestamp) -> StoreResult<Resolution> {
        let mut answers = self.resolve_many_impl(std::slice::from_ref(q), now).await?;
        answers.pop().ok_or_else(|| corrupt("no resolution"))
    }

    async fn resolve_many(
        &self,
        queries: &[ResolveQuery],
        now: Timestamp,
    ) -> StoreResult<Vec<Resolution>> {
        self.resolve_many_impl(queries, now).await
    }

    async fn sync_citizens(
        &self,
        ctx: &WriteContext,
        batch: &[SyncCitizen],
    ) -> StoreResult<Vec<RecordOutcome>> {
        self.sync_citizens_impl(ctx, batch).await
    }

    async fn sync_accounts(
        &self,
        ctx: &WriteContext,
        batch: &[SyncAccount],
    ) -> StoreResult<Vec<RecordOutcome>> {
        self.sync_accounts_impl(ctx, batch).await
    }

    async fn citizens_by_legacy_id(
        &self,
        ids: &[LegacyId],
    ) -> StoreResult<HashMap<LegacyId, CitizenId>> {
        self.citizens_by_legacy_id_impl(ids).await
    }

    async fn report_payout_failure(
        &self,
        ctx: &WriteContext,
        cmd: &ReportPayoutFailure,
    ) -> StoreResult<(Account, Uuid)> {
        let answer = self.execute(ctx, Command::Failure(cmd)).await?;
        let failure_id = answer
            .failure_id
            .ok_or_else(|| corrupt("payout failure answer without its id"))?;
        Ok((answer.account, failure_id))
    }

    async fn duplicate_claims(
        &self,
        on: Option<&AccountKey>,
        before: Option<(Timestamp, Uuid)>,
        limit: u32,
    ) -> StoreResult<Vec<DuplicateClaim>> {
        let rows: Vec<DuplicateClaimRow> = sqlx::query_as(
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
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.into_iter().map(DuplicateClaim::try_from).collect()
    }

    async fn account_claims(&self, on: &AccountKey) -> StoreResult<Vec<Account>> {
        sqlx::query_as::<_, AccountRow>(concat!(
            "SELECT ",
            account_columns!(),
            " FROM accounts WHERE kind = $1 AND provider_code = $2 AND account_ref = $3 \
             ORDER BY created_at, account_id"
        ))
        .bind(on.kind.as_str())
        .bind(&on.provider_code)
        .bind(on.account_ref.as_str())
        .fetch_all(&self.read)
        .await?
        .into_iter()
        .map(Account::try_from)
        .collect()
    }

    async fn append_access_log(&self, entries: &[AccessEntry]) -> StoreResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut tx = self.write.begin_with(BEGIN_WRITE).await?;
        if let Some(preamble) = ACCESS_LOG_PREAMBLE {
            sqlx::query(preamble).execute(&mut *tx).await?;
        }
        insert_access_log(&mut tx, entries).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn access_log(
        &self,
        citizen: &CitizenId,
        before_id: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<(i64, AccessEntry)>> {
        let rows: Vec<(i64, String, String, String, i64, Uuid)> = sqlx::query_as(
            "SELECT id, client_id, method, purpose, accessed_at, request_id FROM access_log \
             WHERE citizen_id = $1 AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(citizen.as_str())
        .bind(before_id)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, client_id, method, purpose, at, request_id)| {
                (
                    id,
                    AccessEntry {
                        citizen_id: citizen.clone(),
                        client_id,
                        method,
                        purpose,
                        accessed_at: Timestamp(at),
                        request_id,
                    },
                )
            })
            .collect())
    }

    async fn events_after(&self, after_position: i64, limit: u32) -> StoreResult<Vec<Event>> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT position, event_id, occurred_at, event_type, citizen_id, account_id, actor, \
             reason, payload, feed_position FROM events WHERE position > $1 ORDER BY position \
             LIMIT $2",
        )
        .bind(after_position)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(Event::from).collect())
    }

    async fn sequence_events(&self, limit: u32, digest: bool) -> StoreResult<Sequenced> {
        self.sequence_events_impl(limit, digest).await
    }

    async fn sync_digest(&self, province: Option<&str>) -> StoreResult<Option<SyncDigest>> {
        self.sync_digest_impl(province).await
    }

    async fn feed_after(&self, after: i64, limit: u32) -> StoreResult<Vec<Event>> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT position, event_id, occurred_at, event_type, citizen_id, account_id, actor, \
             reason, payload, feed_position FROM events WHERE feed_position > $1 \
             ORDER BY feed_position LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(Event::from).collect())
    }

    async fn feed_head(&self) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT last_position FROM feed_head WHERE id = 1")
                .fetch_one(&self.read)
                .await?,
        )
    }

    async fn feed_pruned_through(&self) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT pruned_through FROM feed_head WHERE id = 1")
                .fetch_one(&self.read)
                .await?,
        )
    }

    async fn prune_events(&self, before: Timestamp) -> StoreResult<u64> {
        let mut tx = self.write.begin_with(BEGIN_WRITE).await?;
        // Same lock as the sequencer: the head and the pruning mark move one at a time.
        let (head, pruned, digest_through): (i64, i64, Option<i64>) = sqlx::query_as(&format!(
            "SELECT last_position, pruned_through, digest_through FROM feed_head \
             WHERE id = 1{FOR_UPDATE}"
        ))
        .fetch_one(&mut *tx)
        .await?;
        let slowest: Option<i64> = sqlx::query_scalar("SELECT MIN(position) FROM feed_consumers")
            .fetch_one(&mut *tx)
            .await?;
        // The newest event old enough to go, within what the slowest consumer has read.
        // Nor past the sync digest, which reads the citizens of the events it has not yet
        // taken in.
        let limit = slowest
            .unwrap_or(head)
            .min(head)
            .min(digest_through.unwrap_or(pruned));
        let through: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(feed_position) FROM events WHERE feed_position > $1 \
             AND feed_position <= $2 AND occurred_at < $3",
        )
        .bind(pruned)
        .bind(limit)
        .bind(before.micros())
        .fetch_one(&mut *tx)
        .await?;
        let Some(through) = through else {
            tx.rollback().await?;
            return Ok(0);
        };
        let deleted =
            sqlx::query("DELETE FROM events WHERE feed_position > $1 AND feed_position <= $2")
                .bind(pruned)
                .bind(through)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        sqlx::query("UPDATE feed_head SET pruned_through = $1 WHERE id = 1")
            .bind(through)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(deleted)
    }

    async fn commit_consumer(
        &self,
        client_id: &str,
        name: &str,
        position: i64,
        now: Timestamp,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO feed_consumers (client_id, name, position, updated_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (client_id, name) DO UPDATE \
             SET position = excluded.position, updated_at = excluded.updated_at",
        )
        .bind(client_id)
        .bind(name)
        .bind(position)
        .bind(now.micros())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn delete_consumer(&self, client_id: &str, name: &str) -> StoreResult<bool> {
        let deleted = sqlx::query("DELETE FROM feed_consumers WHERE client_id = $1 AND name = $2")
            .bind(client_id)
            .bind(name)
            .execute(&self.write)
            .await?
            .rows_affected();
        Ok(deleted > 0)
    }

    async fn consumer_position(&self, client_id: &str, name: &str) -> StoreResult<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT position FROM feed_consumers WHERE client_id = $1 AND name = $2",
        )
        .bind(client_id)
        .bind(name)
        .fetch_optional(&self.read)
        .await?)
    }

    async fn edit_watch_list(
        &self,
        client_id: &str,
        consumer: &str,
        add: &[CitizenId],
        remove: &[CitizenId],
    ) -> StoreResult<(u64, u64)> {
        self.edit_watch_list_impl(client_id, consumer, add, remove)
            .await
    }

    async fn watch_list_size(&self, client_id: &str, consumer: &str) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM watch_lists WHERE client_id = $1 AND consumer = $2",
        )
        .bind(client_id)
        .bind(consumer)
        .fetch_one(&self.read)
        .await?;
        Ok(n.max(0) as u64)
    }

    async fn feed_after_watched(
        &self,
        after: i64,
        client_id: &str,
        consumer: &str,
        limit: u32,
    ) -> StoreResult<Vec<Event>> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT e.position, e.event_id, e.occurred_at, e.event_type, e.citizen_id, \
             e.account_id, e.actor, e.reason, e.payload, e.feed_position FROM events e \
             WHERE e.feed_position > $1 AND EXISTS (SELECT 1 FROM watch_lists w \
             WHERE w.client_id = $2 AND w.consumer = $3 AND w.citizen_id = e.citizen_id) \
             ORDER BY e.feed_position LIMIT $4",
        )
        .bind(after)
        .bind(client_id)
        .bind(consumer)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(Event::from).collect())
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    async fn providers(&self) -> StoreResult<Vec<Provider>> {
        let rows: Vec<(String, String, String, String, bool)> = sqlx::query_as(
            "SELECT code, kind, name, short_name, active FROM providers ORDER BY code",
        )
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|(code, kind, name, short_name, active)| {
                Ok(Provider {
                    kind: crate::domain::AccountKind::parse(&kind).map_err(corrupt)?,
                    code,
                    name,
                    short_name,
                    active,
                })
            })
            .collect()
    }
}
