//! The rules of linking an account and of claims on it, once for every write path.
//!
//! LinkAccount and VerifyAccount (one command in one transaction) and population sync (a
//! batch planned in memory) both read and lock what these rules need: the citizen's
//! status, the provider's reference row, the citizen's open accounts, who holds the
//! account key. They then ask the functions here, and write what these decide. A rule
//! changed here changes for every channel at once.

use uuid::Uuid;

use super::event::{DuplicateClaimDetected, PreferenceChanged};
use super::{
    Account, AccountKind, AccountRef, AccountStatus, CitizenId, CitizenStatus, Reason, Rejection,
    Timestamp, MAX_OPEN_ACCOUNTS,
};

/// A payout provider as the reference data lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderTerms {
    /// The kind of account it offers.
    pub kind: AccountKind,
    /// False once it stopped taking new accounts.
    pub active: bool,
}

/// The account a new link creates: pending verification, version 1. A holder name counts
/// as the provider's statement only when `name_is_providers`; anyone else's is kept as
/// declared and never matched.
pub fn new_link(
    citizen: &CitizenId,
    kind: AccountKind,
    provider_code: &str,
    account_ref: &AccountRef,
    holder_name: Option<String>,
    name_is_providers: bool,
    now: Timestamp,
) -> Account {
    let (holder_name, declared_holder_name) = match holder_name {
        Some(name) if name_is_providers => (Some(name), None),
        declared => (None, declared),
    };
    Account {
        id: Uuid::now_v7(),
        citizen_id: citizen.clone(),
        kind,
        provider_code: provider_code.to_owned(),
        account_ref: account_ref.clone(),
        holder_name,
        declared_holder_name,
        status: AccountStatus::PendingVerification,
        verification: None,
        version: 1,
        created_at: now,
        updated_at: now,
    }
}

/// Whether `link` may be created for a citizen in `citizen` status, with `provider` (the
/// reference row of `link.provider_code`, if any) and the citizen's `open` accounts.
/// Checked in this order: the citizen is active; the provider exists, offers this kind
/// and is active; the citizen does not already have this account open; the citizen has
/// fewer than [`MAX_OPEN_ACCOUNTS`] open. A claim on another citizen's account is decided
/// before these ([`claim_on_held`]).
pub fn check_link<'a>(
    citizen: CitizenStatus,
    provider: Option<ProviderTerms>,
    link: &Account,
    open: impl IntoIterator<Item = &'a Account>,
) -> Result<(), Rejection> {
    if citizen != CitizenStatus::Active {
        return Err(Rejection::field(
            Reason::CitizenNotActive,
            "citizen_id",
            "the citizen is not active (deceased or id revoked): no account can be linked",
        ));
    }
    check_provider(provider, link.kind)?;
    let mut count = 0;
    for a in open.into_iter().filter(|a| a.status.is_open()) {
        if same_key(a, link) {
            return Err(Rejection::field(
                Reason::AccountAlreadyLinked,
                "account_ref",
                "the citizen already has this account open",
            ));
        }
        count += 1;
    }
    if count >= MAX_OPEN_ACCOUNTS {
        return Err(Rejection::field(
            Reason::TooManyOpenAccounts,
            "citizen_id",
            format!("a citizen may have at most {MAX_OPEN_ACCOUNTS} open accounts"),
        ));
    }
    Ok(())
}

/// A provider named by a link must be in the reference data, offer the account's kind,
/// and still be active.
pub fn check_provider(provider: Option<ProviderTerms>, kind: AccountKind) -> Result<(), Rejection> {
    match provider {
        None => Err(Rejection::field(
            Reason::ProviderUnknown,
            "provider_code",
            "no such provider in the reference data",
        )),
        Some(p) if p.kind != kind => Err(Rejection::field(
            Reason::ProviderKindMismatch,
            "provider_code",
            format!("this provider offers {}, not {kind}", p.kind),
        )),
        Some(ProviderTerms { active: false, .. }) => Err(Rejection::field(
            Reason::ProviderInactive,
            "provider_code",
            "this provider is no longer active",
        )),
        Some(_) => Ok(()),
    }
}

/// True when two accounts name the same account at the same provider.
fn same_key(a: &Account, b: &Account) -> bool {
    a.kind == b.kind && a.provider_code == b.provider_code && a.account_ref == b.account_ref
}

/// A refused claim on an account held by another citizen.
#[derive(Debug, Clone)]
pub struct DuplicateClaim {
    pub claim_id: Uuid,
    pub kind: AccountKind,
    pub provider_code: String,
    pub account_ref: AccountRef,
    pub claimant: CitizenId,
    pub holder: CitizenId,
    pub holder_account_id: Uuid,
    pub context: String,
    pub detected_at: Timestamp,
    pub actor: String,
}

impl DuplicateClaim {
    /// The DUPLICATE_CLAIM_DETECTED event's payload (the holder is for investigators).
    pub fn event(&self) -> DuplicateClaimDetected {
        DuplicateClaimDetected {
            claim_id: self.claim_id,
            context: self.context.clone(),
            claimant_citizen_id: self.claimant.as_str().to_owned(),
            holder_citizen_id: self.holder.as_str().to_owned(),
            holder_account_id: self.holder_account_id,
            kind: self.kind.as_str().to_owned(),
            provider_code: self.provider_code.clone(),
            account_ref: self.account_ref.as_str().to_owned(),
        }
    }
}

/// The one-holder rule: an account key is held (VERIFIED or SUSPENDED) by at most one
/// citizen. `holder` is the citizen holding `claim`'s key and the account they hold it as,
/// if anyone does. A claim on a key another citizen holds is refused before anything is
/// created for the claimant ([`owned_by_another`]), and the claim itself is recorded:
/// this answers that record, made by `actor` at `now` while doing `context` (`LINK`,
/// `VERIFY`). A citizen's own hold is no conflict.
pub fn claim_on_held(
    claim: &Account,
    holder: Option<(&str, Uuid)>,
    context: &str,
    actor: &str,
    now: Timestamp,
) -> Option<DuplicateClaim> {
    let (holder, holder_account_id) = holder?;
    if holder == claim.citizen_id.as_str() {
        return None;
    }
    Some(DuplicateClaim {
        claim_id: Uuid::now_v7(),
        kind: claim.kind,
        provider_code: claim.provider_code.clone(),
        account_ref: claim.account_ref.clone(),
        claimant: claim.citizen_id.clone(),
        holder: CitizenId::from_stored(holder.to_owned()),
        holder_account_id,
        context: context.to_owned(),
        detected_at: now,
        actor: actor.to_owned(),
    })
}

/// The refusal of a claim on an account another citizen holds. It does not say who.
pub fn owned_by_another() -> Rejection {
    Rejection::field(
        Reason::AccountOwnedByAnotherCitizen,
        "account_ref",
        "this account is already verified for another citizen; the claim has been recorded \
         for investigation",
    )
}

/// The reason recorded with a DUPLICATE_CLAIM_DETECTED event.
pub const DUPLICATE_CLAIM_REASON: &str = "account already verified for another citizen";

/// The reason recorded when a citizen's first verified account becomes their default.
pub const FIRST_VERIFIED_REASON: &str = "first verified account";

/// The default a verification sets: a citizen with no default is paid into their first
/// verified account from then on (no cooling-off: nothing was paid before). `None` when
/// the citizen already has a default, which a verification never moves.
pub fn first_verified_default(verified: &Account, has_default: bool) -> Option<PreferenceChanged> {
    if has_default || verified.status != AccountStatus::Verified {
        return None;
    }
    Some(PreferenceChanged {
        program_code: String::new(),
        previous_account_id: None,
        account: verified.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Change, VerificationInput, VerificationMethod};

    const NOW: Timestamp = Timestamp(1_700_000_000_000_000);

    fn citizen(n: u32) -> CitizenId {
        CitizenId::parse(&format!("0010850{n:05}")).unwrap()
    }

    fn wallet(owner: &CitizenId, number: &str) -> Account {
        new_link(
            owner,
            AccountKind::Ewallet,
            "MOMO",
            &AccountRef::parse(AccountKind::Ewallet, number).unwrap(),
            None,
            false,
            NOW,
        )
    }

    const MOMO: Option<ProviderTerms> = Some(ProviderTerms {
        kind: AccountKind::Ewallet,
        active: true,
    });

    #[test]
    fn a_new_link_is_pending_and_keeps_a_name_only_as_its_source_stated_it() {
        let owner = citizen(1);
        let number = AccountRef::parse(AccountKind::Ewallet, "0912345678").unwrap();
        let by_provider = new_link(
            &owner,
            AccountKind::Ewallet,
            "MOMO",
            &number,
            Some("NGUYEN VAN A".into()),
            true,
            NOW,
        );
        assert_eq!(by_provider.status, AccountStatus::PendingVerification);
        assert_eq!(by_provider.version, 1);
        assert_eq!(by_provider.holder_name.as_deref(), Some("NGUYEN VAN A"));
        assert_eq!(by_provider.declared_holder_name, None);
        let typed = new_link(
            &owner,
            AccountKind::Ewallet,
            "MOMO",
            &number,
            Some("NGUYEN VAN A".into()),
            false,
            NOW,
        );
        assert_eq!(typed.holder_name, None);
        assert_eq!(typed.declared_holder_name.as_deref(), Some("NGUYEN VAN A"));
    }

    #[test]
    fn only_an_active_citizen_gets_a_link_and_that_is_checked_before_the_provider() {
        let link = wallet(&citizen(1), "0912345678");
        for status in [CitizenStatus::Deceased, CitizenStatus::IdRevoked] {
            let refused = check_link(status, None, &link, []).unwrap_err();
            assert_eq!(refused.reason, Reason::CitizenNotActive);
        }
        assert!(check_link(CitizenStatus::Active, MOMO, &link, []).is_ok());
    }

    #[test]
    fn the_provider_must_exist_offer_the_kind_and_be_active() {
        let kind = AccountKind::Ewallet;
        assert_eq!(
            check_provider(None, kind).unwrap_err().reason,
            Reason::ProviderUnknown
        );
        let bank = ProviderTerms {
            kind: AccountKind::BankAccount,
            active: true,
        };
        let mismatch = check_provider(Some(bank), kind).unwrap_err();
        assert_eq!(mismatch.reason, Reason::ProviderKindMismatch);
        assert_eq!(mismatch.field.as_deref(), Some("provider_code"));
        let closed = ProviderTerms {
            kind,
            active: false,
        };
        assert_eq!(
            check_provider(Some(closed), kind).unwrap_err().reason,
            Reason::ProviderInactive
        );
        assert!(check_provider(MOMO, kind).is_ok());
    }

    #[test]
    fn an_account_already_open_is_refused_and_the_open_limit_counts_only_open_ones() {
        let owner = citizen(1);
        let link = wallet(&owner, "0912345678");
        let same = wallet(&owner, "0912345678");
        let refused = check_link(CitizenStatus::Active, MOMO, &link, [&same]).unwrap_err();
        assert_eq!(refused.reason, Reason::AccountAlreadyLinked);

        let others: Vec<Account> = (0..MAX_OPEN_ACCOUNTS)
            .map(|i| wallet(&owner, &format!("09000000{i:02}")))
            .collect();
        let full = check_link(CitizenStatus::Active, MOMO, &link, &others).unwrap_err();
        assert_eq!(full.reason, Reason::TooManyOpenAccounts);

        // A closed account frees its place.
        let mut closed = others.clone();
        closed[0] = closed[0]
            .changed(Change::Closed, "office", NOW, None, None)
            .unwrap();
        assert!(check_link(CitizenStatus::Active, MOMO, &link, &closed).is_ok());
        // A closed account with the same key is no obstacle either: it may be linked anew.
        let old = same
            .changed(Change::Closed, "office", NOW, None, None)
            .unwrap();
        assert!(check_link(CitizenStatus::Active, MOMO, &link, [&old]).is_ok());
    }

    #[test]
    fn a_claim_on_another_citizens_account_is_recorded_and_ones_own_is_not_a_conflict() {
        let claimant = citizen(1);
        let holder = citizen(2);
        let claim = wallet(&claimant, "0912345678");
        let held_as = Uuid::now_v7();
        assert!(claim_on_held(&claim, None, "LINK", "office", NOW).is_none());
        assert!(claim_on_held(
            &claim,
            Some((claimant.as_str(), held_as)),
            "LINK",
            "office",
            NOW
        )
        .is_none());
        let recorded = claim_on_held(
            &claim,
            Some((holder.as_str(), held_as)),
            "VERIFY",
            "office",
            NOW,
        )
        .unwrap();
        assert_eq!(recorded.claimant, claimant);
        assert_eq!(recorded.holder, holder);
        assert_eq!(recorded.holder_account_id, held_as);
        assert_eq!(recorded.context, "VERIFY");
        assert_eq!(recorded.detected_at, NOW);
        let event = recorded.event();
        assert_eq!(event.holder_citizen_id, holder.as_str());
        assert_eq!(event.kind, "EWALLET");
        // The refusal sent to the claimant names no one.
        let refusal = owned_by_another();
        assert_eq!(refusal.reason, Reason::AccountOwnedByAnotherCitizen);
        assert!(!refusal.message.contains(holder.as_str()));
    }

    #[test]
    fn the_first_verified_account_becomes_the_default_and_a_later_one_does_not_move_it() {
        let pending = wallet(&citizen(1), "0912345678");
        let input = VerificationInput {
            method: VerificationMethod::IssuerConfirmed,
            evidence_ref: "momo-123".into(),
        };
        let verified = pending
            .changed(
                Change::Verified,
                "momo",
                NOW,
                Some((&input, crate::domain::assertion::Capacity::Provider)),
                None,
            )
            .unwrap();
        let set = first_verified_default(&verified, false).unwrap();
        assert_eq!(set.program_code, "");
        assert_eq!(set.previous_account_id, None);
        assert_eq!(set.account.id, verified.id);
        assert!(first_verified_default(&verified, true).is_none());
        assert!(first_verified_default(&pending, false).is_none());
    }
}
