//! Who may vouch for what: every assertion about an account counts only from the party
//! entitled to make it (DESIGN.md section 5, "Who may vouch").
//!
//! Verifying an account is a claim about the world: "this bank account belongs to the
//! holder of this citizen id". The registry cannot check it; it can only make sure the
//! claim comes from someone in a position to know. A provincial office that could mark a
//! MoMo wallet ISSUER_CONFIRMED would skip the cooling-off period and redirect a
//! citizen's money at once (broken object- and function-level authorisation, OWASP API1
//! and API5). So:
//!
//! - ISSUER_CONFIRMED, and NAME_MATCH with the holder name the provider reports, come
//!   only from a client bound to the account's provider (`providers = [...]` in its
//!   configuration), or from the population platform relaying VNeID;
//! - IN_PERSON comes only from a verifier (`verify.in_person`, the commune police);
//! - VNEID_DECLARED comes only from population sync;
//! - rejecting an account, or reporting it closed at the provider, comes only from the
//!   provider's client or a payer.
//!
//! Anything else is refused with ASSERTION_NOT_ALLOWED before anything changes. The
//! [`Capacity`] an assertion was accepted in is recorded with it (history and events), so
//! an investigator can see who vouched, and as what.

use std::collections::BTreeSet;

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{PayoutFailureCode, Reason, Rejection, VerificationMethod};

/// The capacity in which a party vouched for (or against) an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Capacity {
    /// The account's own provider (a bank bound to its NAPAS BIN, a wallet to its code).
    Provider,
    /// A verifier that saw the citizen in person (commune police).
    Verifier,
    /// The population platform, relaying what the citizen declared on VNeID.
    PopulationSync,
    /// A payer whose credit to the account failed or who found it wrong.
    Payer,
}

impl Capacity {
    pub const ALL: [Capacity; 4] = [
        Capacity::Provider,
        Capacity::Verifier,
        Capacity::PopulationSync,
        Capacity::Payer,
    ];

    /// The stable name stored with history and sent in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Capacity::Provider => "PROVIDER",
            Capacity::Verifier => "VERIFIER",
            Capacity::PopulationSync => "POPULATION_SYNC",
            Capacity::Payer => "PAYER",
        }
    }

    pub fn parse(s: &str) -> Option<Capacity> {
        Capacity::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a client is entitled to assert, from its configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authority {
    /// The providers the client speaks for (NAPAS BINs, wallet codes).
    pub providers: BTreeSet<String>,
    /// The client verifies citizens in person (`verify.in_person`).
    pub in_person: bool,
    /// The client pays benefits (`payouts.report`).
    pub payer: bool,
}

impl Authority {
    /// True when the client speaks for `provider_code`.
    pub fn speaks_for(&self, provider_code: &str) -> bool {
        self.providers.contains(provider_code)
    }
}

/// The path an assertion arrives by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// A call to the AccountRegistry (LinkAccount, VerifyAccount, ...).
    Registry,
    /// A record on the population platform's SyncAccounts stream.
    PopulationSync,
}

fn not_allowed(what: &str, who: &str) -> Rejection {
    Rejection::field(
        Reason::AssertionNotAllowed,
        "verification.method",
        format!("{what} may be asserted only by {who}; this client is not entitled to it"),
    )
}

/// May this client verify an account of `provider_code` by `method`, on `channel`?
/// Answers the capacity the verification is recorded in.
pub fn may_verify(
    authority: &Authority,
    channel: Channel,
    method: VerificationMethod,
    provider_code: &str,
) -> Result<Capacity, Rejection> {
    use VerificationMethod::*;
    match (method, channel) {
        (IssuerConfirmed | NameMatch | VneidDeclared, Channel::PopulationSync) => {
            Ok(Capacity::PopulationSync)
        }
        (IssuerConfirmed | NameMatch, Channel::Registry) if authority.speaks_for(provider_code) => {
            Ok(Capacity::Provider)
        }
        (IssuerConfirmed | NameMatch, Channel::Registry) => Err(not_allowed(
            method.as_str(),
            "the account's own provider (a client bound to it), or population sync relaying VNeID",
        )),
        (InPerson, _) if authority.in_person => Ok(Capacity::Verifier),
        (InPerson, _) => Err(not_allowed(
            "IN_PERSON",
            "a verifier holding the scope verify.in_person (commune police)",
        )),
        (VneidDeclared, Channel::Registry) => Err(not_allowed(
            "VNEID_DECLARED",
            "the population platform, through population sync",
        )),
    }
}

/// May this client reject an account of `provider_code` (RejectAccount)?
pub fn may_reject(authority: &Authority, provider_code: &str) -> Result<Capacity, Rejection> {
    if authority.speaks_for(provider_code) {
        Ok(Capacity::Provider)
    } else if authority.payer {
        Ok(Capacity::Payer)
    } else {
        Err(Rejection::new(
            Reason::AssertionNotAllowed,
            "RejectAccount may be called only by the account's own provider or by a payer",
        ))
    }
}

/// May this client report a failed credit of `code` on an account of `provider_code`?
/// Any payer may report any failure; the account's provider may report only that the
/// account is closed at the provider.
pub fn may_report_failure(
    authority: &Authority,
    provider_code: &str,
    code: PayoutFailureCode,
) -> Result<Capacity, Rejection> {
    if authority.payer {
        Ok(Capacity::Payer)
    } else if authority.speaks_for(provider_code)
        && code == PayoutFailureCode::AccountClosedAtProvider
    {
        Ok(Capacity::Provider)
    } else {
        Err(Rejection::field(
            Reason::AssertionNotAllowed,
            "failure_code",
            format!(
                "{code} may be reported only by a payer{}",
                if code == PayoutFailureCode::AccountClosedAtProvider {
                    " or by the account's own provider"
                } else {
                    ""
                }
            ),
        ))
    }
}

/// The holder name a link or verification records, and whether it is the provider's
/// statement. A name typed by anyone but the provider (or the population platform
/// relaying the provider's name) is only *declared*: it is kept, but it never satisfies
/// NAME_MATCH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderNameSource {
    /// Reported by the account's provider (or relayed by population sync).
    Provider,
    /// Typed by another party.
    Declared,
}

/// Whose statement a holder name sent on `channel` by this client is.
pub fn holder_name_source(
    authority: &Authority,
    channel: Channel,
    provider_code: &str,
) -> HolderNameSource {
    if channel == Channel::PopulationSync || authority.speaks_for(provider_code) {
        HolderNameSource::Provider
    } else {
        HolderNameSource::Declared
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use VerificationMethod::*;

    const BANK: &str = "970436";
    const OTHER_BANK: &str = "970415";

    fn office() -> Authority {
        Authority::default()
    }

    fn bank() -> Authority {
        Authority {
            providers: [BANK.to_owned()].into(),
            ..Authority::default()
        }
    }

    fn police() -> Authority {
        Authority {
            in_person: true,
            ..Authority::default()
        }
    }

    fn payer() -> Authority {
        Authority {
            payer: true,
            ..Authority::default()
        }
    }

    #[test]
    fn only_the_accounts_own_provider_confirms_it_or_matches_its_name_through_the_registry() {
        for method in [IssuerConfirmed, NameMatch] {
            assert_eq!(
                may_verify(&bank(), Channel::Registry, method, BANK),
                Ok(Capacity::Provider)
            );
            for who in [office(), police(), payer()] {
                let refused = may_verify(&who, Channel::Registry, method, BANK).unwrap_err();
                assert_eq!(refused.reason, Reason::AssertionNotAllowed);
                assert!(refused.message.contains(method.as_str()), "{refused}");
            }
            // Bound to another bank is not bound to this one.
            assert!(may_verify(&bank(), Channel::Registry, method, OTHER_BANK).is_err());
        }
    }

    #[test]
    fn in_person_needs_a_verifier_whoever_else_the_client_speaks_for() {
        assert_eq!(
            may_verify(&police(), Channel::Registry, InPerson, BANK),
            Ok(Capacity::Verifier)
        );
        for who in [office(), bank(), payer()] {
            assert_eq!(
                may_verify(&who, Channel::Registry, InPerson, BANK)
                    .unwrap_err()
                    .reason,
                Reason::AssertionNotAllowed
            );
        }
        assert!(may_verify(&office(), Channel::PopulationSync, InPerson, BANK).is_err());
    }

    #[test]
    fn vneid_declarations_come_only_through_population_sync() {
        for who in [office(), bank(), police(), payer()] {
            assert!(may_verify(&who, Channel::Registry, VneidDeclared, BANK).is_err());
        }
        for method in [VneidDeclared, IssuerConfirmed, NameMatch] {
            assert_eq!(
                may_verify(&office(), Channel::PopulationSync, method, BANK),
                Ok(Capacity::PopulationSync)
            );
        }
    }

    #[test]
    fn rejection_comes_from_the_provider_or_a_payer() {
        assert_eq!(may_reject(&bank(), BANK), Ok(Capacity::Provider));
        assert_eq!(may_reject(&payer(), BANK), Ok(Capacity::Payer));
        assert!(may_reject(&bank(), OTHER_BANK).is_err());
        assert!(may_reject(&office(), BANK).is_err());
        assert!(may_reject(&police(), BANK).is_err());
    }

    #[test]
    fn a_provider_reports_only_that_its_account_is_closed_and_a_payer_reports_anything() {
        use PayoutFailureCode::*;
        for code in [AccountClosedAtProvider, HolderNameMismatch, Other] {
            assert_eq!(
                may_report_failure(&payer(), BANK, code),
                Ok(Capacity::Payer)
            );
        }
        assert_eq!(
            may_report_failure(&bank(), BANK, AccountClosedAtProvider),
            Ok(Capacity::Provider)
        );
        assert!(may_report_failure(&bank(), BANK, HolderNameMismatch).is_err());
        assert!(may_report_failure(&bank(), OTHER_BANK, AccountClosedAtProvider).is_err());
        assert!(may_report_failure(&office(), BANK, AccountClosedAtProvider).is_err());
    }

    #[test]
    fn a_holder_name_is_the_providers_statement_only_from_the_provider_or_population_sync() {
        assert_eq!(
            holder_name_source(&bank(), Channel::Registry, BANK),
            HolderNameSource::Provider
        );
        assert_eq!(
            holder_name_source(&office(), Channel::PopulationSync, BANK),
            HolderNameSource::Provider
        );
        for who in [office(), police(), payer()] {
            assert_eq!(
                holder_name_source(&who, Channel::Registry, BANK),
                HolderNameSource::Declared
            );
        }
        assert_eq!(
            holder_name_source(&bank(), Channel::Registry, OTHER_BANK),
            HolderNameSource::Declared
        );
    }
}
