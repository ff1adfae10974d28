//! The resolution decision: given what the registry knew about a citizen at an instant,
//! which account gets paid?
//!
//! The store reads the citizen's status, the program preference and the default
//! preference as they stood at the instant (now, or a past `as_of`), and this module
//! decides. Keeping the decision pure means "now" and "as of last May" can never disagree
//! about the rules, only about the data.

use std::sync::Arc;
use std::time::Duration;

use super::account::{Account, CitizenStatus, VerificationMethod};
use super::time::Timestamp;

/// A preference (default or per-program) as it stood at the resolution instant. Accounts
/// are shared (`Arc`): a resolution hands on the account it chose, and a cached citizen's
/// accounts answer many reads, without copying them.
#[derive(Debug, Clone)]
pub struct PreferenceAt {
    /// The chosen account, in the state it was in at the instant.
    pub account: Option<Arc<Account>>,
    /// When the preference took effect.
    pub since: Timestamp,
    /// The account paid before the change, in its state at the instant; paid instead of
    /// the new one during the cooling-off period.
    pub previous: Option<Arc<Account>>,
}

/// Everything resolution needs, read at one instant.
#[derive(Debug, Clone, Default)]
pub struct ResolutionInputs {
    /// `None`: the registry has never heard of the citizen.
    pub citizen: Option<CitizenStatus>,
    /// The preference for the requested program, if it has one.
    pub program: Option<PreferenceAt>,
    /// The default preference.
    pub default: Option<PreferenceAt>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Resolved {
        account: Arc<Account>,
        /// True when the program's own preference chose the account, false for the default.
        matched_program: bool,
        /// Set when a recent change is in its cooling-off period and `account` is the
        /// previous account, paid until this instant.
        cooling_off_until: Option<Timestamp>,
    },
    NoVerifiedAccount,
    CitizenDeceased,
    CitizenIdRevoked,
    UnknownCitizen,
}

/// Decides which account to pay at instant `at`.
///
/// Rules, in order: an unknown citizen is UNKNOWN_CITIZEN; a deceased or revoked citizen
/// is never paid; the program's preference is used when its account is payable, else the
/// default's; only VERIFIED accounts are paid. During `cooling_off` after a preference
/// changed, the previous account keeps being paid unless the new account was confirmed by
/// its issuer, or the previous account is no longer payable.
pub fn resolve(inputs: &ResolutionInputs, at: Timestamp, cooling_off: Duration) -> Resolution {
    match inputs.citizen {
        None => return Resolution::UnknownCitizen,
        Some(CitizenStatus::Deceased) => return Resolution::CitizenDeceased,
        Some(CitizenStatus::IdRevoked) => return Resolution::CitizenIdRevoked,
        Some(CitizenStatus::Active) => {}
    }
    let candidates = [(true, &inputs.program), (false, &inputs.default)];
    for (matched_program, pref) in candidates {
        let Some(pref) = pref else { continue };
        let Some(account) = pref.account.as_ref().filter(|a| a.is_payable()) else {
            continue;
        };
        let until = pref.since.plus(cooling_off);
        let issuer_confirmed = account
            .verification
            .as_ref()
            .is_some_and(|v| v.method == VerificationMethod::IssuerConfirmed);
        let previous = pref.previous.as_ref().filter(|p| p.is_payable());
        if let (Some(previous), false, true) = (previous, issuer_confirmed, at < until) {
            return Resolution::Resolved {
                account: Arc::clone(previous),
                matched_program,
                cooling_off_until: Some(until),
            };
        }
        return Resolution::Resolved {
            account: Arc::clone(account),
            matched_program,
            cooling_off_until: None,
        };
    }
    Resolution::NoVerifiedAccount
}

/// A stored preference: the account that pays a program (the default when `program_code`
/// is empty), since when, and the account paid before it during the cooling-off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPreference {
    pub program_code: String,
    pub account_id: uuid::Uuid,
    pub previous: Option<uuid::Uuid>,
    pub since: Timestamp,
}

impl StoredPreference {
    /// The preference for `program` among a citizen's (the default for "").
    pub fn of<'a>(prefs: &'a [StoredPreference], program: &str) -> Option<&'a StoredPreference> {
        prefs.iter().find(|p| p.program_code == program)
    }

    /// The preference as resolution and a change of account read it, its accounts' state
    /// found by `account`.
    pub fn at(&self, account: &impl Fn(uuid::Uuid) -> Option<Arc<Account>>) -> PreferenceAt {
        PreferenceAt {
            account: account(self.account_id),
            since: self.since,
            previous: self.previous.and_then(account),
        }
    }
}

/// Which account a new preference should remember as "previous" (paid during
/// cooling-off). If the current preference is itself still cooling off, the account paid
/// before it stays the previous one: changing the account twice in a row must not shorten
/// the protection.
pub fn previous_for_change(
    current: Option<&PreferenceAt>,
    new_account: uuid::Uuid,
    now: Timestamp,
    cooling_off: Duration,
) -> Option<uuid::Uuid> {
    let current = current?;
    let current_id = current.account.as_ref().map(|a| a.id)?;
    let still_cooling = now < current.since.plus(cooling_off)
        && current.previous.is_some()
        && !current
            .account
            .as_ref()
            .and_then(|a| a.verification.as_ref())
            .is_some_and(|v| v.method == VerificationMethod::IssuerConfirmed);
    let previous = if still_cooling {
        current.previous.as_ref().map(|p| p.id)
    } else {
        Some(current_id)
    };
    previous.filter(|p| *p != new_account)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::account::{
        AccountKind, AccountRef, AccountStatus, Verification, VerificationMethod,
    };
    use crate::domain::citizen_id::CitizenId;
    use uuid::Uuid;

    const HOUR: Duration = Duration::from_secs(3600);
    const COOLING: Duration = Duration::from_secs(72 * 3600);

    fn account(status: AccountStatus, method: VerificationMethod) -> Account {
        Account {
            id: Uuid::new_v4(),
            citizen_id: CitizenId::parse_with_year("001099012345", 2026).unwrap(),
            kind: AccountKind::BankAccount,
            provider_code: "970436".into(),
            account_ref: AccountRef::parse(AccountKind::BankAccount, "0071000123456").unwrap(),
            holder_name: None,
            declared_holder_name: None,
            status,
            verification: Some(Verification {
                method,
                verified_by: "test".into(),
                verified_at: Timestamp(0),
                evidence_ref: "ev".into(),
                capacity: None,
            }),
            version: 2,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        }
    }

    fn verified() -> Account {
        account(AccountStatus::Verified, VerificationMethod::VneidDeclared)
    }

    fn pref(account: Account) -> PreferenceAt {
        PreferenceAt {
            account: Some(Arc::new(account)),
            since: Timestamp(0),
            previous: None,
        }
    }

    fn active(program: Option<PreferenceAt>, default: Option<PreferenceAt>) -> ResolutionInputs {
        ResolutionInputs {
            citizen: Some(CitizenStatus::Active),
            program,
            default,
        }
    }

    fn resolved_id(r: &Resolution) -> Option<Uuid> {
        match r {
            Resolution::Resolved { account, .. } => Some(account.id),
            _ => None,
        }
    }

    #[test]
    fn an_unknown_citizen_is_reported_as_such() {
        let r = resolve(&ResolutionInputs::default(), Timestamp(0), COOLING);
        assert_eq!(r, Resolution::UnknownCitizen);
    }

    #[test]
    fn a_deceased_citizen_is_never_paid_even_with_a_verified_default() {
        let mut inputs = active(None, Some(pref(verified())));
        inputs.citizen = Some(CitizenStatus::Deceased);
        assert_eq!(
            resolve(&inputs, Timestamp(0), COOLING),
            Resolution::CitizenDeceased
        );
        inputs.citizen = Some(CitizenStatus::IdRevoked);
        assert_eq!(
            resolve(&inputs, Timestamp(0), COOLING),
            Resolution::CitizenIdRevoked
        );
    }

    #[test]
    fn only_verified_accounts_are_resolved() {
        for status in [
            AccountStatus::PendingVerification,
            AccountStatus::Suspended,
            AccountStatus::Closed,
            AccountStatus::Rejected,
        ] {
            let inputs = active(
                None,
                Some(pref(account(status, VerificationMethod::InPerson))),
            );
            assert_eq!(
                resolve(&inputs, Timestamp(0), COOLING),
                Resolution::NoVerifiedAccount,
                "{status}"
            );
        }
    }

    #[test]
    fn a_program_preference_wins_over_the_default() {
        let program = verified();
        let inputs = active(Some(pref(program.clone())), Some(pref(verified())));
        let r = resolve(&inputs, Timestamp(0), COOLING);
        assert_eq!(resolved_id(&r), Some(program.id));
        assert!(matches!(
            r,
            Resolution::Resolved {
                matched_program: true,
                ..
            }
        ));
    }

    #[test]
    fn a_program_without_a_payable_preference_falls_back_to_the_default() {
        let default = verified();
        let suspended = account(AccountStatus::Suspended, VerificationMethod::InPerson);
        for program in [None, Some(pref(suspended))] {
            let inputs = active(program, Some(pref(default.clone())));
            let r = resolve(&inputs, Timestamp(0), COOLING);
            assert_eq!(resolved_id(&r), Some(default.id));
            assert!(matches!(
                r,
                Resolution::Resolved {
                    matched_program: false,
                    ..
                }
            ));
        }
    }

    #[test]
    fn during_cooling_off_the_previous_account_is_paid() {
        let old = verified();
        let new = verified();
        let p = PreferenceAt {
            account: Some(Arc::new(new.clone())),
            since: Timestamp(0),
            previous: Some(Arc::new(old.clone())),
        };
        let inputs = active(None, Some(p));
        let r = resolve(&inputs, Timestamp(0).plus(HOUR), COOLING);
        assert_eq!(resolved_id(&r), Some(old.id));
        assert!(matches!(
            r,
            Resolution::Resolved { cooling_off_until: Some(t), .. } if t == Timestamp(0).plus(COOLING)
        ));
        let after = resolve(&inputs, Timestamp(0).plus(COOLING), COOLING);
        assert_eq!(resolved_id(&after), Some(new.id));
    }

    #[test]
    fn an_issuer_confirmed_account_skips_cooling_off() {
        let new = account(AccountStatus::Verified, VerificationMethod::IssuerConfirmed);
        let p = PreferenceAt {
            account: Some(Arc::new(new.clone())),
            since: Timestamp(0),
            previous: Some(Arc::new(verified())),
        };
        let r = resolve(&active(None, Some(p)), Timestamp(1), COOLING);
        assert_eq!(resolved_id(&r), Some(new.id));
    }

    #[test]
    fn cooling_off_pays_the_new_account_when_the_previous_is_no_longer_payable() {
        let new = verified();
        let p = PreferenceAt {
            account: Some(Arc::new(new.clone())),
            since: Timestamp(0),
            previous: Some(Arc::new(account(
                AccountStatus::Closed,
                VerificationMethod::InPerson,
            ))),
        };
        let r = resolve(&active(None, Some(p)), Timestamp(1), COOLING);
        assert_eq!(resolved_id(&r), Some(new.id));
    }

    #[test]
    fn changing_twice_during_cooling_off_keeps_the_original_previous_account() {
        let original = verified();
        let first_change = verified();
        let current = PreferenceAt {
            account: Some(Arc::new(first_change.clone())),
            since: Timestamp(0),
            previous: Some(Arc::new(original.clone())),
        };
        let third = Uuid::new_v4();
        assert_eq!(
            previous_for_change(Some(&current), third, Timestamp(0).plus(HOUR), COOLING),
            Some(original.id)
        );
        assert_eq!(
            previous_for_change(Some(&current), third, Timestamp(0).plus(COOLING), COOLING),
            Some(first_change.id)
        );
        assert_eq!(
            previous_for_change(None, third, Timestamp(0), COOLING),
            None
        );
    }
}
