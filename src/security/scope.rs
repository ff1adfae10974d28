//! What a client may do: the scopes a `[[clients]]` entry grants.
//!
//! A leaf type with no dependencies, so that the configuration can name scopes without
//! depending on authentication.

use std::fmt;

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Link accounts, set defaults, close accounts.
    AccountsWrite,
    /// Verify, reject, suspend, reinstate (providers and verifiers).
    AccountsVerify,
    /// Read accounts and their history.
    AccountsRead,
    /// Resolve, with the account number masked.
    Resolve,
    /// Resolve with the full account number (payers).
    ResolveFull,
    /// Resolve yes/no only.
    ResolveExists,
    /// Population sync streams.
    SyncPopulation,
    /// Subscribe to the change feed (watch-listed citizens only).
    EventsSubscribe,
    /// Subscribe to every citizen's events.
    EventsAll,
    /// Investigators: reverse lookups, duplicate claims, access logs.
    Oversight,
    /// Payers: report failed credits (suspends the account).
    PayoutsReport,
    /// Verifiers who see citizens in person (commune police): may verify IN_PERSON.
    VerifyInPerson,
    /// Acts for one authenticated citizen per call (VNeID): that citizen's accounts and
    /// access log, nothing else.
    CitizenSelf,
}

impl Scope {
    pub const ALL: &'static [Scope] = &[
        Scope::AccountsWrite,
        Scope::AccountsVerify,
        Scope::AccountsRead,
        Scope::Resolve,
        Scope::ResolveFull,
        Scope::ResolveExists,
        Scope::SyncPopulation,
        Scope::EventsSubscribe,
        Scope::EventsAll,
        Scope::Oversight,
        Scope::PayoutsReport,
        Scope::VerifyInPerson,
        Scope::CitizenSelf,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::AccountsWrite => "accounts.write",
            Scope::AccountsVerify => "accounts.verify",
            Scope::AccountsRead => "accounts.read",
            Scope::Resolve => "resolve",
            Scope::ResolveFull => "resolve.full",
            Scope::ResolveExists => "resolve.exists",
            Scope::SyncPopulation => "sync.population",
            Scope::EventsSubscribe => "events.subscribe",
            Scope::EventsAll => "events.all",
            Scope::Oversight => "oversight",
            Scope::PayoutsReport => "payouts.report",
            Scope::VerifyInPerson => "verify.in_person",
            Scope::CitizenSelf => "citizen.self",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.iter().copied().find(|scope| scope.as_str() == s)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
