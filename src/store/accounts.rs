//! The single-record write scripts (link, change, preference, payout failure), the loop
//! that runs them, and the reads of accounts they leave behind.
//!
//! What is read, checked and written for each command, in which order and with which
//! locks held, is the registry's correctness, so it exists once for both backends. Every
//! script locks the citizen before the account (PostgreSQL's `FOR UPDATE`; SQLite's single
//! writer connection serialises instead), so two writers never wait on each other in
//! opposite orders. A write that loses a race on a unique constraint (two claims on one
//! account, one idempotency key sent twice at once) is rolled back and run again: the
//! retry sees the winner's committed row and answers accordingly.
//!
//! The rules these scripts apply are in `domain` (`domain::link` for links, claims and the
//! first default; `Account::changed` for the state machine; `domain::assertion` for who
//! may vouch), shared with the population-sync planner (`planner.rs`), which applies them
//! to a batch in memory. Only the reading, locking and writing differ between the two.

use std::sync::Arc;

use uuid::Uuid;

use sqlx::Pool;

use super::dialect::{Dialect, Handle, Pooled, Session, Tx};
use super::idempotency::{remember, replay, StoredOutcome};
use super::resolution_model::refresh;
use super::rows::{
    citizen_status, provider_terms, AccountRow, CitizenRow, DuplicateClaimRow, HistoryRow,
    PreferenceRow,
};
use super::sql::Sql;
use super::sql_store::SqlStore;
use super::{
    corrupt, AccountKey, Answer, DuplicateClaim, HistoryEntry, Preference, StoreError, StoreResult,
    WriteContext,
};
use crate::domain::assertion::{
    holder_name_source, may_reject, may_report_failure, may_verify, Capacity, Channel,
    HolderNameSource,
};
use crate::domain::event::PreferenceChanged;
use crate::domain::link::{
    check_link, claim_on_held, first_verified_default, new_link, owned_by_another, ProviderTerms,
    DUPLICATE_CLAIM_REASON, FIRST_VERIFIED_REASON,
};
use crate::domain::{
    account_not_found, check_verification, check_version, previous_for_change, Account,
    AccountAction, AccountStatus, Change, ChangeAccount, CitizenId, CitizenStatus, LinkAccount,
    PreferenceAt, ProgramCode, Reason, Rejection, ReportPayoutFailure, SetPreference, Timestamp,
    VerificationInput,
};

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
pub(super) enum Command<'a> {
    Link(&'a LinkAccount),
    Change(&'a ChangeAccount),
    Prefer(&'a SetPreference),
    Failure(&'a ReportPayoutFailure),
}

impl<D: Dialect> SqlStore<D> {
    /// Runs one write: replays a stored answer for a repeated idempotency key, else runs
    /// the script, stores its answer under the key and commits, all in one transaction.
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
                Err(StoreError::Database(e)) if D::unique_target(&e).is_some() => {
                    // Lost a race (two claims on one account, or one idempotency key sent
                    // twice at once): roll back and run again against the winner's state.
                    last_error = Some(StoreError::Database(e));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Ok(answer) = &result {
                // The citizen's row of the resolution read model commits with the change.
                refresh(&mut tx, &[answer.account.citizen_id.as_str()]).await?;
            }
            match remember(&mut tx, ctx, &stored).await {
                Err(StoreError::Database(e)) if D::unique_target(&e).is_some() => {
                    last_error = Some(StoreError::Database(e));
                    continue;
                }
                other => other?,
            }
            match tx.commit().await {
                Err(e) if D::unique_target(&e).is_some() => {
                    last_error = Some(StoreError::Database(e));
                    continue;
                }
                other => other?,
            }
            self.tick();
            return result;
        }
        Err(last_error.unwrap_or_else(|| corrupt("write retries exhausted")))
    }

    async fn link_in(
        &self,
        tx: &mut Tx<D>,
        ctx: &WriteContext,
        cmd: &LinkAccount,
    ) -> StoreResult<Outcome> {
        // Who may vouch is decided before anything is written, a duplicate claim included.
        let capacity = match &cmd.verification {
            Some(v) => Some(may_verify(
                &ctx.authority,
                Channel::Registry,
                v.method,
                &cmd.provider_code,
            )?),
            None => None,
        };
        // A holder name counts only as the provider's statement; anyone else's is declared.
        let name = cmd.holder_name.as_ref().map(|h| h.as_str().to_owned());
        let provider_said =
            holder_name_source(&ctx.authority, Channel::Registry, &cmd.provider_code)
                == HolderNameSource::Provider;
        let account = new_link(
            &cmd.citizen_id,
            cmd.kind,
            &cmd.provider_code,
            &cmd.account_ref,
            name,
            provider_said,
            ctx.now,
        );
        // A claim on an account another citizen holds is refused before anything is
        // created for the claimant; only the claim itself is recorded.
        if let Some(refused) = claim_conflict(tx, ctx, &account, "LINK").await? {
            return Ok(Outcome::Refuse(refused));
        }
        let citizen = ensure_citizen(tx, ctx, &cmd.citizen_id).await?;
        let status = citizen_status(&citizen.status)?;
        let provider = provider(tx, &cmd.provider_code).await?;
        let open: Vec<Account> = tx
            .fetch_all::<AccountRow>(
                Sql::new(concat!(
                    "SELECT ",
                    account_columns!(),
                    " FROM accounts WHERE citizen_id = $1 \
                     AND status IN ('PENDING_VERIFICATION', 'VERIFIED', 'SUSPENDED')"
                ))
                .bind(cmd.citizen_id.as_str()),
            )
            .await?
            .into_iter()
            .map(Account::try_from)
            .collect::<StoreResult<_>>()?;
        check_link(status, provider, &account, &open)?;
        if let Some(v) = &cmd.verification {
            check_verification(
                v,
                account.holder_name.as_deref(),
                citizen.full_name.as_deref(),
            )?;
        }
        tx.execute(
            Sql::new(
                "INSERT INTO accounts (account_id, citizen_id, kind, provider_code, account_ref, \
                 holder_name, status, version, created_at, updated_at, declared_holder_name) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
            .bind(&account.declared_holder_name),
        )
        .await?;
        record_account_change(tx, ctx, &account, Change::Linked, None, &cmd.reason).await?;
        match &cmd.verification {
            None => Ok(Outcome::Done(Answer::of(account))),
            Some(v) => {
                let action = AccountAction::Verify {
                    verification: v.clone(),
                    holder_name: cmd.holder_name.clone(),
                };
                self.apply(tx, ctx, &citizen, &account, &action, capacity, &cmd.reason)
                    .await
            }
        }
    }

    async fn change_in(
        &self,
        tx: &mut Tx<D>,
        ctx: &WriteContext,
        cmd: &ChangeAccount,
    ) -> StoreResult<Outcome> {
        let citizen_id = citizen_of(tx, cmd.account_id)
            .await?
            .ok_or_else(|| account_not_found(cmd.account_id))?;
        // Citizen first, then account: every write takes its locks in this order.
        let citizen = lock_citizen(tx, &citizen_id)
            .await?
            .ok_or_else(|| corrupt("account without citizen"))?;
        let account = lock_account(tx, cmd.account_id)
            .await?
            .ok_or_else(|| account_not_found(cmd.account_id))?;
        // Who may vouch, before the state machine: a client not entitled to an assertion
        // learns nothing about the account's state.
        let capacity = match &cmd.action {
            AccountAction::Verify { verification, .. } => Some(may_verify(
                &ctx.authority,
                Channel::Registry,
                verification.method,
                &account.provider_code,
            )?),
            AccountAction::Reject => Some(may_reject(&ctx.authority, &account.provider_code)?),
            _ => None,
        };
        check_version(cmd.expected_version, account.version)?;
        self.apply(
            tx,
            ctx,
            &citizen,
            &account,
            &cmd.action,
            capacity,
            &cmd.reason,
        )
        .await
    }

    /// Applies `action` to a locked account: the state machine, verification evidence,
    /// the one-holder rule, history, events, and the first verified account becoming the
    /// default. `capacity` is what the caller was entitled to vouch as (checked by the
    /// caller against the account's provider); a verification must come with one.
    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &self,
        tx: &mut Tx<D>,
        ctx: &WriteContext,
        citizen: &CitizenRow,
        account: &Account,
        action: &AccountAction,
        capacity: Option<Capacity>,
        reason: &str,
    ) -> StoreResult<Outcome> {
        let (verification, holder_name): (Option<&VerificationInput>, _) = match action {
            AccountAction::Verify {
                verification,
                holder_name,
            } => (Some(verification), holder_name.as_ref()),
            _ => (None, None),
        };
        let vouched = match (verification, capacity) {
            (Some(v), Some(c)) => Some((v, c)),
            (Some(_), None) => return Err(corrupt("a verification without its capacity")),
            (None, _) => None,
        };
        let source = holder_name_source(&ctx.authority, Channel::Registry, &account.provider_code);
        let change = action.change();
        // State machine first: an illegal transition is refused before anything else.
        let next = account.changed(
            change,
            &ctx.actor,
            ctx.now,
            vouched,
            holder_name.map(|h| (h, source)),
        )?;
        if let Some(v) = verification {
            // NAME_MATCH compares the holder name the provider reported on this very call,
            // never one stored earlier (typed, perhaps, before names were told apart).
            let reported = holder_name
                .filter(|_| source == HolderNameSource::Provider)
                .map(|h| h.as_str());
            check_verification(v, reported, citizen.full_name.as_deref())?;
            if let Some(refused) = claim_conflict(tx, ctx, account, "VERIFY").await? {
                return Ok(Outcome::Refuse(refused));
            }
        }
        let (method, by, at, evidence, vouched_as) = match &next.verification {
            Some(v) => (
                Some(v.method.as_str()),
                Some(v.verified_by.as_str()),
                Some(v.verified_at.micros()),
                Some(v.evidence_ref.as_str()),
                v.capacity.map(Capacity::as_str),
            ),
            None => (None, None, None, None, None),
        };
        tx.execute(
            Sql::new(
                "UPDATE accounts SET status = $1, holder_name = $2, verification_method = $3, \
                 verified_by = $4, verified_at = $5, evidence_ref = $6, version = $7, \
                 updated_at = $8, declared_holder_name = $11, verification_capacity = $12 \
                 WHERE account_id = $9 AND version = $10",
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
            .bind(&next.declared_holder_name)
            .bind(vouched_as),
        )
        .await?;
        record_account_change(tx, ctx, &next, change, capacity, reason).await?;
        if change == Change::Verified {
            let has_default: Option<(Uuid,)> = tx
                .fetch_optional(
                    Sql::new(
                        "SELECT account_id FROM preferences WHERE citizen_id = $1 \
                         AND program_code = ''",
                    )
                    .bind(next.citizen_id.as_str()),
                )
                .await?;
            if first_verified_default(&next, has_default.is_some()).is_some() {
                write_preference(tx, ctx, &next, None, None, FIRST_VERIFIED_REASON).await?;
            }
        }
        Ok(Outcome::Done(Answer::of(next)))
    }

    async fn prefer_in(
        &self,
        tx: &mut Tx<D>,
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
        let rows: Vec<PreferenceRow> = tx
            .fetch_all(
                Sql::new(
                    "SELECT program_code, account_id, previous_account_id, since FROM preferences \
                     WHERE citizen_id = $1 AND program_code IN ($2, '')",
                )
                .bind(cmd.citizen_id.as_str())
                .bind(key),
            )
            .await?;
        let own = rows.iter().find(|r| r.program_code == key);
        if own.is_some_and(|c| c.account_id == account.id) {
            return Ok(Outcome::Done(Answer::of(account)));
        }
        let current_at = match own.or_else(|| rows.iter().find(|r| r.program_code.is_empty())) {
            Some(row) => Some(PreferenceAt {
                account: load_account(tx, row.account_id).await?.map(Arc::new),
                since: Timestamp(row.since),
                previous: match row.previous_account_id {
                    Some(id) => load_account(tx, id).await?.map(Arc::new),
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
        tx: &mut Tx<D>,
        ctx: &WriteContext,
        cmd: &ReportPayoutFailure,
    ) -> StoreResult<Outcome> {
        self.check_program(cmd.program.as_ref()).await?;
        let citizen_id = citizen_of(tx, cmd.account_id)
            .await?
            .ok_or_else(|| account_not_found(cmd.account_id))?;
        let citizen = lock_citizen(tx, &citizen_id)
            .await?
            .ok_or_else(|| corrupt("account without citizen"))?;
        let account = lock_account(tx, cmd.account_id)
            .await?
            .ok_or_else(|| account_not_found(cmd.account_id))?;
        let capacity =
            may_report_failure(&ctx.authority, &account.provider_code, cmd.failure_code)?;
        let failure_id = Uuid::now_v7();
        let program = ProgramCode::key(cmd.program.as_ref());
        tx.execute(
            Sql::new(
                "INSERT INTO payout_failures (failure_id, account_id, citizen_id, program_code, \
                 failure_code, payer_reference, failed_at, reported_at, actor, reason, capacity) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
            .bind(capacity.as_str()),
        )
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
            NewEvent {
                event_type: "PAYOUT_FAILURE_REPORTED",
                citizen_id: account.citizen_id.as_str(),
                account_id: Some(account.id),
                reason: &cmd.reason,
                payload: &payload,
                actor_capacity: Some(capacity),
            },
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
                    Some(capacity),
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
}

/// The citizen an account belongs to (not locked: the citizen's lock comes first).
async fn citizen_of<D: Dialect>(tx: &mut Tx<D>, account: Uuid) -> StoreResult<Option<String>> {
    let row: Option<(String,)> = tx
        .fetch_optional(
            Sql::new("SELECT citizen_id FROM accounts WHERE account_id = $1").bind(account),
        )
        .await?;
    Ok(row.map(|(c,)| c))
}

/// The citizen row, locked; created ACTIVE (with its first history entry) when the
/// registry has not seen the citizen before.
async fn ensure_citizen<D: Dialect>(
    tx: &mut Tx<D>,
    ctx: &WriteContext,
    id: &CitizenId,
) -> StoreResult<CitizenRow> {
    let inserted = tx
        .execute(
            Sql::new(
                "INSERT INTO citizens (citizen_id, province_code, status, created_at, updated_at) \
                 VALUES ($1, $2, 'ACTIVE', $3, $3) ON CONFLICT (citizen_id) DO NOTHING",
            )
            .bind(id.as_str())
            .bind(id.province_code())
            .bind(ctx.now.micros()),
        )
        .await?;
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

async fn lock_citizen<D: Dialect>(tx: &mut Tx<D>, id: &str) -> StoreResult<Option<CitizenRow>> {
    tx.fetch_optional(Sql::new(D::LOCK_CITIZEN).bind(id)).await
}

async fn lock_account<D: Dialect>(tx: &mut Tx<D>, id: Uuid) -> StoreResult<Option<Account>> {
    tx.fetch_optional::<AccountRow>(Sql::new(D::LOCK_ACCOUNT).bind(id))
        .await?
        .map(Account::try_from)
        .transpose()
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

/// The reference row of a provider, if the reference data lists it.
async fn provider<D: Dialect>(tx: &mut Tx<D>, code: &str) -> StoreResult<Option<ProviderTerms>> {
    let row: Option<(String, bool)> = tx
        .fetch_optional(Sql::new("SELECT kind, active FROM providers WHERE code = $1").bind(code))
        .await?;
    row.map(|(kind, active)| provider_terms(&kind, active))
        .transpose()
}

/// If another citizen holds this account, records the claim (and its event) and returns
/// the refusal to send. The refusal does not say who holds the account.
async fn claim_conflict<D: Dialect>(
    tx: &mut Tx<D>,
    ctx: &WriteContext,
    claim: &Account,
    context: &str,
) -> StoreResult<Option<Rejection>> {
    let holder: Option<(String, Uuid)> = tx
        .fetch_optional(
            Sql::new(
                "SELECT citizen_id, account_id FROM accounts WHERE kind = $1 \
                 AND provider_code = $2 AND account_ref = $3 \
                 AND status IN ('VERIFIED', 'SUSPENDED') AND citizen_id <> $4",
            )
            .bind(claim.kind.as_str())
            .bind(&claim.provider_code)
            .bind(claim.account_ref.as_str())
            .bind(claim.citizen_id.as_str()),
        )
        .await?;
    let holder = holder.as_ref().map(|(c, a)| (c.as_str(), *a));
    let Some(claim) = claim_on_held(claim, holder, context, &ctx.actor, ctx.now) else {
        return Ok(None);
    };
    tx.execute(
        Sql::new(
            "INSERT INTO duplicate_claims (claim_id, kind, provider_code, account_ref, \
             claimant_citizen_id, holder_citizen_id, holder_account_id, context, detected_at, \
             actor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
        .bind(&claim.actor),
    )
    .await?;
    insert_event(
        tx,
        ctx,
        NewEvent {
            event_type: "DUPLICATE_CLAIM_DETECTED",
            citizen_id: claim.claimant.as_str(),
            account_id: None,
            reason: DUPLICATE_CLAIM_REASON,
            payload: &serde_json::to_value(claim.event()).map_err(corrupt)?,
            actor_capacity: None,
        },
    )
    .await?;
    Ok(Some(owned_by_another()))
}

/// Appends the account's new version to its history and announces it.
async fn record_account_change<D: Dialect>(
    tx: &mut Tx<D>,
    ctx: &WriteContext,
    account: &Account,
    change: Change,
    capacity: Option<Capacity>,
    reason: &str,
) -> StoreResult<()> {
    tx.execute(
        Sql::new(concat!(
            "INSERT INTO account_history (",
            account_columns!(),
            ", change, actor, reason, valid_from, capacity) SELECT ",
            account_columns!(),
            ", $2, $3, $4, $5, $6 FROM accounts WHERE account_id = $1"
        ))
        .bind(account.id)
        .bind(change.as_str())
        .bind(&ctx.actor)
        .bind(reason)
        .bind(ctx.now.micros())
        .bind(capacity.map(Capacity::as_str)),
    )
    .await?;
    let event_type = format!("ACCOUNT_{}", change.as_str());
    let payload = serde_json::to_value(account).map_err(corrupt)?;
    insert_event(
        tx,
        ctx,
        NewEvent {
            event_type: &event_type,
            citizen_id: account.citizen_id.as_str(),
            account_id: Some(account.id),
            reason,
            payload: &payload,
            actor_capacity: capacity,
        },
    )
    .await
}

/// Points a citizen's default (or program) preference at `account`, with history and
/// event.
async fn write_preference<D: Dialect>(
    tx: &mut Tx<D>,
    ctx: &WriteContext,
    account: &Account,
    program: Option<&ProgramCode>,
    previous: Option<Uuid>,
    reason: &str,
) -> StoreResult<()> {
    let key = ProgramCode::key(program);
    tx.execute(
        Sql::new(
            "INSERT INTO preferences (citizen_id, program_code, account_id, previous_account_id, \
             since) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (citizen_id, program_code) DO UPDATE \
             SET account_id = excluded.account_id, \
             previous_account_id = excluded.previous_account_id, since = excluded.since",
        )
        .bind(account.citizen_id.as_str())
        .bind(key)
        .bind(account.id)
        .bind(previous)
        .bind(ctx.now.micros()),
    )
    .await?;
    tx.execute(
        Sql::new(
            "INSERT INTO preference_history (citizen_id, program_code, account_id, \
             previous_account_id, valid_from, actor, reason) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(account.citizen_id.as_str())
        .bind(key)
        .bind(account.id)
        .bind(previous)
        .bind(ctx.now.micros())
        .bind(&ctx.actor)
        .bind(reason),
    )
    .await?;
    let payload = serde_json::to_value(PreferenceChanged {
        program_code: key.to_owned(),
        previous_account_id: previous,
        account: account.clone(),
    })
    .map_err(corrupt)?;
    insert_event(
        tx,
        ctx,
        NewEvent {
            event_type: "DEFAULT_CHANGED",
            citizen_id: account.citizen_id.as_str(),
            account_id: Some(account.id),
            reason,
            payload: &payload,
            actor_capacity: None,
        },
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn insert_citizen_history<D: Dialect>(
    tx: &mut Tx<D>,
    ctx: &WriteContext,
    citizen_id: &str,
    full_name: Option<&str>,
    status: CitizenStatus,
    died_on: Option<&str>,
    source_version: Option<i64>,
    reason: &str,
) -> StoreResult<()> {
    tx.execute(
        Sql::new(
            "INSERT INTO citizen_history (citizen_id, full_name, status, died_on, \
             source_version, valid_from, actor, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(citizen_id)
        .bind(full_name)
        .bind(status.as_str())
        .bind(died_on)
        .bind(source_version)
        .bind(ctx.now.micros())
        .bind(&ctx.actor)
        .bind(reason),
    )
    .await?;
    Ok(())
}

/// Appends to the outbox, inside the change's transaction.
/// An event to append: what happened, to whom, why, and who vouched for it as what.
struct NewEvent<'a> {
    event_type: &'a str,
    citizen_id: &'a str,
    account_id: Option<Uuid>,
    reason: &'a str,
    payload: &'a serde_json::Value,
    actor_capacity: Option<Capacity>,
}

async fn insert_event<D: Dialect>(
    tx: &mut Tx<D>,
    ctx: &WriteContext,
    event: NewEvent<'_>,
) -> StoreResult<()> {
    let NewEvent {
        event_type,
        citizen_id,
        account_id,
        reason,
        payload,
        actor_capacity,
    } = event;
    tx.execute(
        Sql::new(
            "INSERT INTO events (event_id, occurred_at, event_type, citizen_id, account_id, \
             actor, reason, payload, actor_capacity) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(Uuid::now_v7())
        .bind(ctx.now.micros())
        .bind(event_type)
        .bind(citizen_id)
        .bind(account_id)
        .bind(&ctx.actor)
        .bind(reason)
        .bind(payload.to_string())
        .bind(actor_capacity.map(Capacity::as_str)),
    )
    .await?;
    Ok(())
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
                Sql::new(concat!(
                    "SELECT ",
                    account_columns!(),
                    " FROM accounts WHERE kind = $1 AND provider_code = $2 AND account_ref = $3 \
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
