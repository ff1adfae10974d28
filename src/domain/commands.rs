//! Planning a single write (LinkAccount, VerifyAccount and the other account changes,
//! SetPreference, ReportPayoutFailure) as a batch of one.
//!
//! Each command is a sequence of the planner's steps ([`Accounts`]: link, verify, change,
//! prefer) over the state its transaction read and locked, the same steps the
//! population-sync records are made of; what it decides is a [`Work`], written by the same
//! statements as a sync batch (`store/batch.rs`). It is pure (no SQL): `store/accounts.rs`
//! reads what a command needs into a [`Loaded`], calls [`plan_command`] and writes the
//! result.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::planner::{payload_json, Accounts, EventWrite, FailureWrite, Loaded, Vouch, Work};
use super::write::{Answer, WriteContext};
use crate::domain::assertion::{
    holder_name_source, may_reject, may_report_failure, may_verify, Channel, HolderNameSource,
};
use crate::domain::event::PayoutFailureReported;
use crate::domain::link::new_link;
use crate::domain::{
    check_version, previous_for_change, AccountAction, AccountStatus, ChangeAccount, LinkAccount,
    ProgramCode, Reason, Rejection, ReportPayoutFailure, SetPreference, StoredPreference,
};

/// The command a write applies.
#[derive(Clone, Copy)]
pub enum Command<'a> {
    Link(&'a LinkAccount),
    Change(&'a ChangeAccount),
    Prefer(&'a SetPreference),
    Failure(&'a ReportPayoutFailure),
}

/// What a command decided: the rows to write, and its answer. A refusal leaves the work
/// empty but for a refused claim on an account another citizen holds, which is recorded
/// (and committed) with the refusal.
pub struct Planned {
    pub work: Work,
    pub answer: Result<Answer, Rejection>,
}

/// Why a citizen first seen by LinkAccount was created.
const FIRST_LINKED_REASON: &str = "first seen when an account was linked";

/// Plans one command against what its transaction read. `cooling_off` is how long a
/// changed preference keeps paying the account it replaced.
pub fn plan_command(
    ctx: &WriteContext,
    cmd: Command<'_>,
    loaded: &Loaded,
    cooling_off: Duration,
) -> Planned {
    let mut work = Work::default();
    let mut state = Accounts::new(ctx, loaded, FIRST_LINKED_REASON);
    let answer = match cmd {
        Command::Link(c) => link(&mut state, &mut work, c),
        Command::Change(c) => change(&mut state, &mut work, c),
        Command::Prefer(c) => prefer(&mut state, &mut work, loaded, c, cooling_off),
        Command::Failure(c) => failure(&mut state, &mut work, c),
    };
    state.finish(&mut work);
    Planned { work, answer }
}

fn link(state: &mut Accounts<'_>, work: &mut Work, cmd: &LinkAccount) -> Result<Answer, Rejection> {
    let ctx = state.ctx;
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
    let source = holder_name_source(&ctx.authority, Channel::Registry, &cmd.provider_code);
    let account = new_link(
        &cmd.citizen_id,
        cmd.kind,
        &cmd.provider_code,
        &cmd.account_ref,
        cmd.holder_name.as_ref().map(|h| h.as_str().to_owned()),
        source == HolderNameSource::Provider,
        ctx.now,
    );
    let vouch = cmd
        .verification
        .as_ref()
        .zip(capacity)
        .map(|(v, capacity)| Vouch {
            input: v.clone(),
            capacity,
            holder_name: cmd.holder_name.as_ref().map(|h| (h, source)),
        });
    state
        .link(work, account, vouch.as_ref(), &cmd.reason)
        .map(Answer::of)
}

fn change(
    state: &mut Accounts<'_>,
    work: &mut Work,
    cmd: &ChangeAccount,
) -> Result<Answer, Rejection> {
    let ctx = state.ctx;
    let account = state.existing(cmd.account_id)?;
    // Who may vouch, before the state machine: a client not entitled to an assertion
    // learns nothing about the account's state.
    match &cmd.action {
        AccountAction::Verify {
            verification,
            holder_name,
        } => {
            let capacity = may_verify(
                &ctx.authority,
                Channel::Registry,
                verification.method,
                &account.provider_code,
            )?;
            check_version(cmd.expected_version, account.version)?;
            let source =
                holder_name_source(&ctx.authority, Channel::Registry, &account.provider_code);
            let vouch = Vouch {
                input: verification.clone(),
                capacity,
                holder_name: holder_name.as_ref().map(|h| (h, source)),
            };
            let next = state.verify(work, &account, &vouch)?;
            state.finish_verification(work, next.clone(), &cmd.reason);
            Ok(Answer::of(next))
        }
        action => {
            let capacity = match action {
                AccountAction::Reject => Some(may_reject(&ctx.authority, &account.provider_code)?),
                _ => None,
            };
            check_version(cmd.expected_version, account.version)?;
            state
                .change(work, &account, action.change(), capacity, &cmd.reason)
                .map(Answer::of)
        }
    }
}

fn prefer(
    state: &mut Accounts<'_>,
    work: &mut Work,
    loaded: &Loaded,
    cmd: &SetPreference,
    cooling_off: Duration,
) -> Result<Answer, Rejection> {
    let not_owned = || {
        Rejection::field(
            Reason::AccountNotOwnedByCitizen,
            "account_id",
            "the citizen has no such account",
        )
    };
    if !loaded.citizens.contains_key(cmd.citizen_id.as_str()) {
        return Err(not_owned());
    }
    let account = state
        .get(cmd.account_id)
        .filter(|a| a.citizen_id == cmd.citizen_id)
        .cloned()
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
        ));
    }
    let key = ProgramCode::key(cmd.program.as_ref());
    let stored = |program: &str| StoredPreference::of(&loaded.preferences, program);
    // What pays this program now: its own preference, else the default. A program's
    // first preference is a change of account like any other and cools off against the
    // default it replaces.
    let own = stored(key);
    if own.is_some_and(|p| p.account_id == account.id) {
        return Ok(Answer::of(account));
    }
    let snapshot = |id: Uuid| state.get(id).cloned().map(Arc::new);
    let current = own.or_else(|| stored("")).map(|p| p.at(&snapshot));
    let previous = previous_for_change(current.as_ref(), account.id, state.ctx.now, cooling_off);
    state.prefer(work, &account, key, previous, &cmd.reason, own.is_some());
    Ok(Answer::of(account))
}

fn failure(
    state: &mut Accounts<'_>,
    work: &mut Work,
    cmd: &ReportPayoutFailure,
) -> Result<Answer, Rejection> {
    let ctx = state.ctx;
    let account = state.existing(cmd.account_id)?;
    let capacity = may_report_failure(&ctx.authority, &account.provider_code, cmd.failure_code)?;
    let failure_id = Uuid::now_v7();
    let program = ProgramCode::key(cmd.program.as_ref());
    work.failures.push(FailureWrite {
        failure_id,
        account_id: account.id,
        citizen_id: account.citizen_id.as_str().to_owned(),
        program_code: program.to_owned(),
        failure_code: cmd.failure_code.as_str(),
        payer_reference: cmd.payer_reference.clone(),
        failed_at: cmd.failed_at,
        reason: cmd.reason.clone(),
        capacity,
    });
    work.events.push(EventWrite {
        event_type: "PAYOUT_FAILURE_REPORTED".into(),
        citizen_id: account.citizen_id.as_str().to_owned(),
        account_id: Some(account.id),
        reason: cmd.reason.clone(),
        payload: payload_json(&PayoutFailureReported {
            failure_id,
            failure_code: cmd.failure_code.as_str().to_owned(),
            program_code: program.to_owned(),
            payer_reference: cmd.payer_reference.clone(),
            failed_at: cmd.failed_at,
            account: account.clone(),
        }),
        actor_capacity: Some(capacity),
    });
    // Rule 6: a failed credit stops payment into the account until someone reinstates
    // it. An account that is already not payable stays as it is.
    let account = if account.status == AccountStatus::Verified {
        let reason = format!("payout failure {}: {}", cmd.failure_code, cmd.reason);
        state.change(
            work,
            &account,
            AccountAction::Suspend.change(),
            Some(capacity),
            &reason,
        )?
    } else {
        account
    };
    Ok(Answer {
        failure_id: Some(failure_id),
        ..Answer::of(account)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::domain::assertion::{Authority, Capacity};
    use crate::domain::link::ProviderTerms;
    use crate::domain::planner::{plan_accounts, CitizenState};
    use crate::domain::StoredPreference;
    use crate::domain::{
        Account, AccountKind, AccountRef, Change, CitizenId, CitizenStatus, HolderName,
        PayoutFailureCode, SyncAccount, Timestamp, VerificationInput, VerificationMethod,
    };

    const NOW: Timestamp = Timestamp(1_700_000_000_000_000);
    const HOUR: Duration = Duration::from_secs(3600);

    fn citizen(n: u32) -> CitizenId {
        CitizenId::parse(&format!("0010850{n:05}")).unwrap()
    }

    fn wallet() -> AccountRef {
        AccountRef::parse(AccountKind::Ewallet, "0912345678").unwrap()
    }

    /// A client bound to the wallet provider MOMO, and a payer.
    fn momo() -> WriteContext {
        WriteContext {
            actor: "momo".into(),
            idempotency: None,
            now: NOW,
            authority: Authority {
                providers: BTreeSet::from(["MOMO".to_owned()]),
                in_person: false,
                payer: true,
            },
        }
    }

    /// A social-protection office: no provider binding, not a verifier.
    fn office() -> WriteContext {
        WriteContext {
            actor: "office".into(),
            authority: Authority::default(),
            ..momo()
        }
    }

    fn loaded() -> Loaded {
        let mut loaded = Loaded::default();
        loaded.providers.insert(
            "MOMO".into(),
            ProviderTerms {
                kind: AccountKind::Ewallet,
                active: true,
            },
        );
        loaded
    }

    fn registered(loaded: &mut Loaded, id: &CitizenId, name: &str) {
        loaded.citizens.insert(
            id.as_str().to_owned(),
            CitizenState {
                full_name: Some(name.into()),
                date_of_birth: None,
                status: CitizenStatus::Active,
                died_on: None,
                source_version: Some(1),
            },
        );
    }

    fn link(owner: &CitizenId, verification: Option<VerificationMethod>) -> LinkAccount {
        LinkAccount {
            citizen_id: owner.clone(),
            kind: AccountKind::Ewallet,
            provider_code: "MOMO".into(),
            account_ref: wallet(),
            holder_name: Some(HolderName::parse("NGUYEN VAN A").unwrap()),
            verification: verification.map(|method| VerificationInput {
                method,
                evidence_ref: "momo:confirm:1".into(),
            }),
            reason: "citizen asked".into(),
        }
    }

    fn plan(ctx: &WriteContext, cmd: Command<'_>, loaded: &Loaded) -> Planned {
        plan_command(ctx, cmd, loaded, HOUR)
    }

    /// A verified wallet of `owner`, as the store would have read it.
    fn verified(ctx: &WriteContext, owner: &CitizenId, loaded: &mut Loaded) -> Account {
        registered(loaded, owner, "NGUYEN VAN A");
        let planned = plan(
            ctx,
            Command::Link(&link(owner, Some(VerificationMethod::IssuerConfirmed))),
            loaded,
        );
        let account = planned.answer.unwrap().account;
        loaded.accounts.insert(account.id, account.clone());
        account
    }

    fn events(work: &Work) -> Vec<&str> {
        work.events.iter().map(|e| e.event_type.as_str()).collect()
    }

    #[test]
    fn a_provider_confirmed_link_for_an_unknown_citizen_creates_them_verifies_and_sets_the_default()
    {
        let owner = citizen(1);
        let cmd = link(&owner, Some(VerificationMethod::IssuerConfirmed));
        let Planned { work, answer } = plan(&momo(), Command::Link(&cmd), &loaded());
        let account = answer.unwrap().account;
        assert_eq!(account.status, AccountStatus::Verified);
        assert_eq!(
            account.verification.as_ref().unwrap().capacity,
            Some(Capacity::Provider)
        );
        // The citizen is created ACTIVE, with the reason LinkAccount records.
        assert_eq!(work.citizens.len(), 1);
        assert!(!work.citizens[0].existed);
        assert_eq!(work.citizen_history[0].reason, FIRST_LINKED_REASON);
        // One new row in its final state; both versions in its history.
        assert_eq!(work.new_accounts.len(), 1);
        assert!(work.accounts.is_empty());
        assert_eq!(work.new_accounts[0].status, AccountStatus::Verified);
        let changes: Vec<Change> = work.account_history.iter().map(|h| h.change).collect();
        assert_eq!(changes, [Change::Linked, Change::Verified]);
        assert_eq!(work.account_history[1].capacity, Some(Capacity::Provider));
        assert_eq!(work.preferences.len(), 1);
        assert_eq!(work.preferences[0].program_code, "");
        assert_eq!(
            events(&work),
            ["ACCOUNT_LINKED", "ACCOUNT_VERIFIED", "DEFAULT_CHANGED"]
        );
    }

    #[test]
    fn an_office_may_not_assert_the_issuers_confirmation_and_nothing_is_planned() {
        let owner = citizen(1);
        let cmd = link(&owner, Some(VerificationMethod::IssuerConfirmed));
        let Planned { work, answer } = plan(&office(), Command::Link(&cmd), &loaded());
        assert_eq!(answer.unwrap_err().reason, Reason::AssertionNotAllowed);
        assert!(work.citizens.is_empty() && work.events.is_empty());
        assert!(work.new_accounts.is_empty());
    }

    #[test]
    fn a_claim_on_a_wallet_another_citizen_holds_records_only_the_claim() {
        let mut loaded = loaded();
        let holder = verified(&momo(), &citizen(1), &mut loaded);
        loaded.holders.insert(
            (AccountKind::Ewallet, "MOMO".into(), wallet()),
            (holder.citizen_id.as_str().to_owned(), holder.id),
        );
        let claimant = citizen(2);
        let Planned { work, answer } =
            plan(&momo(), Command::Link(&link(&claimant, None)), &loaded);
        assert_eq!(
            answer.unwrap_err().reason,
            Reason::AccountOwnedByAnotherCitizen
        );
        assert_eq!(work.duplicate_claims.len(), 1);
        assert_eq!(events(&work), ["DUPLICATE_CLAIM_DETECTED"]);
        // Nothing is created for the claimant.
        assert!(work.citizens.is_empty() && work.new_accounts.is_empty());
    }

    #[test]
    fn a_sync_record_and_link_account_plan_the_same_rows_for_the_same_account() {
        let owner = citizen(1);
        let record = SyncAccount {
            record_id: "r1".into(),
            version: 1,
            citizen_id: owner.clone(),
            kind: AccountKind::Ewallet,
            provider_code: "MOMO".into(),
            account_ref: wallet(),
            holder_name: Some(HolderName::parse("NGUYEN VAN A").unwrap()),
            confirmation: Some(VerificationMethod::IssuerConfirmed),
            removed: false,
        };
        let mut by_sync = loaded();
        registered(&mut by_sync, &owner, "NGUYEN VAN A");
        let synced = plan_accounts(&momo(), &[record], &by_sync);
        let linked = plan(
            &momo(),
            Command::Link(&link(&owner, Some(VerificationMethod::IssuerConfirmed))),
            &by_sync,
        )
        .work;
        let shape = |w: &Work| {
            (
                w.citizens.len(),
                w.new_accounts
                    .iter()
                    .map(|a| (a.status, a.holder_name.clone()))
                    .collect::<Vec<_>>(),
                w.account_history
                    .iter()
                    .map(|h| h.change)
                    .collect::<Vec<_>>(),
                w.preferences.len(),
                events(w).into_iter().map(str::to_owned).collect::<Vec<_>>(),
            )
        };
        assert_eq!(shape(&synced), shape(&linked));
        // They differ in who vouched, and the sync also writes its ledger.
        assert_eq!(
            synced.account_history[1].capacity,
            Some(Capacity::PopulationSync)
        );
        assert_eq!(synced.ledger.len(), 1);
        assert!(linked.ledger.is_empty());
    }

    #[test]
    fn a_second_change_of_account_within_the_cooling_off_keeps_the_first_account_as_previous() {
        let owner = citizen(1);
        let mut loaded = loaded();
        let first = verified(&momo(), &owner, &mut loaded);
        // The second was verified by name match, not by its issuer: its change cools off.
        let mut second = first.clone();
        second.id = Uuid::now_v7();
        second.verification.as_mut().unwrap().method = VerificationMethod::NameMatch;
        loaded.accounts.insert(second.id, second.clone());
        let mut third = first.clone();
        third.id = Uuid::now_v7();
        loaded.accounts.insert(third.id, third.clone());
        // The default moved from the first account to the second ten minutes ago.
        loaded.preferences = vec![StoredPreference {
            program_code: String::new(),
            account_id: second.id,
            previous: Some(first.id),
            since: Timestamp(NOW.0 - 600_000_000),
        }];
        let cmd = SetPreference {
            citizen_id: owner.clone(),
            account_id: third.id,
            program: None,
            expected_version: None,
            reason: "moved again".into(),
        };
        let Planned { work, answer } = plan(&office(), Command::Prefer(&cmd), &loaded);
        assert_eq!(answer.unwrap().account.id, third.id);
        let written = &work.preferences[0];
        assert!(written.existed);
        assert_eq!(written.previous, Some(first.id));
        assert_eq!(events(&work), ["DEFAULT_CHANGED"]);
    }

    #[test]
    fn a_preference_for_an_account_that_is_not_verified_is_refused() {
        let owner = citizen(1);
        let mut loaded = loaded();
        registered(&mut loaded, &owner, "NGUYEN VAN A");
        let pending = plan(&office(), Command::Link(&link(&owner, None)), &loaded)
            .answer
            .unwrap()
            .account;
        loaded.accounts.insert(pending.id, pending.clone());
        let cmd = SetPreference {
            citizen_id: owner,
            account_id: pending.id,
            program: None,
            expected_version: None,
            reason: "r".into(),
        };
        let Planned { work, answer } = plan(&office(), Command::Prefer(&cmd), &loaded);
        assert_eq!(answer.unwrap_err().reason, Reason::AccountNotVerified);
        assert!(work.preferences.is_empty());
    }

    #[test]
    fn a_payers_failure_report_suspends_a_verified_account_in_the_payers_capacity() {
        let owner = citizen(1);
        let mut loaded = loaded();
        let account = verified(&momo(), &owner, &mut loaded);
        let cmd = ReportPayoutFailure {
            account_id: account.id,
            program: None,
            failure_code: PayoutFailureCode::AccountFrozen,
            payer_reference: "run-7".into(),
            failed_at: None,
            reason: "bank returned the credit".into(),
        };
        let Planned { work, answer } = plan(&momo(), Command::Failure(&cmd), &loaded);
        let answer = answer.unwrap();
        assert_eq!(answer.account.status, AccountStatus::Suspended);
        assert_eq!(work.failures.len(), 1);
        assert_eq!(Some(work.failures[0].failure_id), answer.failure_id);
        assert_eq!(
            events(&work),
            ["PAYOUT_FAILURE_REPORTED", "ACCOUNT_SUSPENDED"]
        );
        assert_eq!(work.accounts.len(), 1);
        assert_eq!(work.account_history[0].capacity, Some(Capacity::Payer));
        // The stored payloads read back as their events' types (what the feed's readers
        // parse): the failure with the account as it stood, then the suspended account.
        let failure: PayoutFailureReported = serde_json::from_str(&work.events[0].payload).unwrap();
        assert_eq!(failure.failure_id, work.failures[0].failure_id);
        assert_eq!(failure.failure_code, "ACCOUNT_FROZEN");
        assert_eq!(failure.payer_reference, "run-7");
        assert_eq!(failure.account.status, AccountStatus::Verified);
        let suspended: Account = serde_json::from_str(&work.events[1].payload).unwrap();
        assert_eq!(suspended, answer.account);
    }
}
