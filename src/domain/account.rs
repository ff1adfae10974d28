//! Payout accounts: what they are, the states they move through, and the commands that
//! move them.
//!
//! The state machine lives in [`AccountStatus::after`]: every status change in the
//! registry goes through it, so an illegal transition is refused the same way whichever
//! RPC or backend asked for it.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

use super::assertion::{Capacity, HolderNameSource};
use super::bank_account::BankAccountNumber;
use super::citizen_id::CitizenId;
use super::error::{Reason, Rejection};
use super::mask::mask_tail;
use super::msisdn::Msisdn;
use super::name::HolderName;
use super::time::Timestamp;

/// Generates a string-backed enum with its stable wire names, in one place.
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident, $field:literal { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $($(#[$vmeta])* $variant,)* }

        impl $name {
            /// The stable name used in the database, events and reference data.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }

            /// Parses the stable name.
            pub fn parse(s: &str) -> Result<Self, Rejection> {
                match s {
                    $($text => Ok($name::$variant),)*
                    _ => Err(Rejection::unknown_enum_value($field)),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum! {
    /// What kind of payout instrument an account is.
    AccountKind, "kind" {
        BankAccount = "BANK_ACCOUNT",
        Ewallet = "EWALLET",
        MobileMoney = "MOBILE_MONEY",
    }
}

named_enum! {
    /// Where an account is in its life. Only `Verified` is ever paid.
    AccountStatus, "status" {
        PendingVerification = "PENDING_VERIFICATION",
        Verified = "VERIFIED",
        Suspended = "SUSPENDED",
        Closed = "CLOSED",
        Rejected = "REJECTED",
    }
}

named_enum! {
    /// How ownership of an account was confirmed.
    VerificationMethod, "verification.method" {
        /// The provider confirmed the owner's id; skips cooling-off.
        IssuerConfirmed = "ISSUER_CONFIRMED",
        /// The provider's holder name equals the citizen's registered name.
        NameMatch = "NAME_MATCH",
        /// Declared by the citizen on VNeID level 2.
        VneidDeclared = "VNEID_DECLARED",
        /// Confirmed at the commune police.
        InPerson = "IN_PERSON",
    }
}

named_enum! {
    /// What a history entry records.
    Change, "change" {
        Linked = "LINKED",
        Verified = "VERIFIED",
        Rejected = "REJECTED",
        Suspended = "SUSPENDED",
        Reinstated = "REINSTATED",
        Closed = "CLOSED",
    }
}

named_enum! {
    /// Why a credit failed, as the payer reported it.
    PayoutFailureCode, "failure_code" {
        AccountClosedAtProvider = "ACCOUNT_CLOSED_AT_PROVIDER",
        HolderNameMismatch = "HOLDER_NAME_MISMATCH",
        AccountFrozen = "ACCOUNT_FROZEN",
        AccountNotFoundAtProvider = "ACCOUNT_NOT_FOUND_AT_PROVIDER",
        Other = "OTHER",
    }
}

impl AccountStatus {
    /// Open accounts count towards the per-citizen limit and block a second link of the
    /// same account by the same citizen.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            AccountStatus::PendingVerification | AccountStatus::Verified | AccountStatus::Suspended
        )
    }

    /// States in which the account is held by its citizen: at most one citizen may hold a
    /// given (kind, provider, account_ref) in these states. Suspended accounts stay held,
    /// so reinstating one can never create a second owner.
    pub fn is_held(self) -> bool {
        matches!(self, AccountStatus::Verified | AccountStatus::Suspended)
    }

    /// The state machine: the status after `change`, or FAILED_PRECONDITION.
    ///
    /// PENDING_VERIFICATION -> VERIFIED | REJECTED; VERIFIED <-> SUSPENDED; any open
    /// state -> CLOSED. CLOSED and REJECTED are terminal.
    pub fn after(self, change: Change) -> Result<AccountStatus, Rejection> {
        use AccountStatus::*;
        let next = match (self, change) {
            (PendingVerification, Change::Verified) => Verified,
            (PendingVerification, Change::Rejected) => Rejected,
            (Verified, Change::Suspended) => Suspended,
            (Suspended, Change::Reinstated) => Verified,
            (PendingVerification | Verified | Suspended, Change::Closed) => Closed,
            _ => {
                return Err(Rejection::new(
                    Reason::IllegalTransition,
                    format!("an account that is {self} cannot be {change}"),
                ))
            }
        };
        Ok(next)
    }
}

/// A normalised account reference: a bank account number or an MSISDN, depending on the
/// account's kind. Debug and Display print it masked.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountRef(String);

impl AccountRef {
    /// Normalises `raw` by the rules of `kind`: bank account numbers are upper-cased and
    /// stripped of separators; wallets and mobile money are keyed by the holder's MSISDN.
    pub fn parse(kind: AccountKind, raw: &str) -> Result<AccountRef, Rejection> {
        let normalised = match kind {
            AccountKind::BankAccount => BankAccountNumber::parse(raw)?.as_str().to_owned(),
            AccountKind::Ewallet | AccountKind::MobileMoney => {
                Msisdn::parse(raw)?.as_str().to_owned()
            }
        };
        Ok(AccountRef(normalised))
    }

    /// Wraps a value read back from the registry's own storage, already normalised.
    pub fn from_stored(s: String) -> AccountRef {
        AccountRef(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The normalised reference, moved out (for a message the caller sends on). Never log
    /// this: [`AccountRef::masked`] is the form for logs.
    pub fn into_string(self) -> String {
        self.0
    }

    /// The last four characters visible, the rest starred.
    pub fn masked(&self) -> String {
        mask_tail(&self.0, 4)
    }
}

impl fmt::Debug for AccountRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Display for AccountRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Evidence that an account belongs to its citizen, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub method: VerificationMethod,
    /// The client that recorded it.
    pub verified_by: String,
    pub verified_at: Timestamp,
    pub evidence_ref: String,
    /// The capacity `verified_by` vouched in (`None` for verifications recorded before
    /// capacities were).
    #[serde(default)]
    pub capacity: Option<Capacity>,
}

/// Verification as a client submits it, before the registry stamps who and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerificationInput {
    pub method: VerificationMethod,
    pub evidence_ref: String,
}

/// One payout account, at one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: Uuid,
    pub citizen_id: CitizenId,
    pub kind: AccountKind,
    pub provider_code: String,
    pub account_ref: AccountRef,
    /// Normalised holder name as the provider reports it (or population sync relays it):
    /// the only name NAME_MATCH compares.
    pub holder_name: Option<String>,
    /// A holder name typed by anyone but the provider, normalised: kept for the record,
    /// never matched.
    #[serde(default)]
    pub declared_holder_name: Option<String>,
    pub status: AccountStatus,
    pub verification: Option<Verification>,
    pub version: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Account {
    /// The state after `change` made by `actor` at `now`, or the rule that forbids it.
    /// A verification comes with the capacity it was accepted in, a holder name with whose
    /// statement it is (see `assertion`). Does not check anything that needs the database
    /// (ownership, limits).
    pub fn changed(
        &self,
        change: Change,
        actor: &str,
        now: Timestamp,
        verification: Option<(&VerificationInput, Capacity)>,
        holder_name: Option<(&HolderName, HolderNameSource)>,
    ) -> Result<Account, Rejection> {
        let mut next = self.clone();
        next.status = self.status.after(change)?;
        next.version = self.version + 1;
        next.updated_at = now;
        match holder_name {
            Some((name, HolderNameSource::Provider)) => {
                next.holder_name = Some(name.as_str().to_owned())
            }
            Some((name, HolderNameSource::Declared)) => {
                next.declared_holder_name = Some(name.as_str().to_owned())
            }
            None => {}
        }
        if change == Change::Verified {
            let (input, capacity) = verification.ok_or_else(|| {
                Rejection::field(
                    Reason::FieldRequired,
                    "verification",
                    "verification is required to verify an account",
                )
            })?;
            next.verification = Some(Verification {
                method: input.method,
                verified_by: actor.to_owned(),
                verified_at: now,
                evidence_ref: input.evidence_ref.clone(),
                capacity: Some(capacity),
            });
        }
        Ok(next)
    }

    /// True when this account may be paid.
    pub fn is_payable(&self) -> bool {
        self.status == AccountStatus::Verified
    }
}

/// Checks the evidence for a verification against what the registry knows about the
/// citizen. `NAME_MATCH` requires the provider's holder name to equal the citizen's
/// registered name after normalisation; the other methods carry their own evidence.
pub fn check_verification(
    input: &VerificationInput,
    holder_name: Option<&str>,
    registered_name: Option<&str>,
) -> Result<(), Rejection> {
    if input.method != VerificationMethod::NameMatch {
        return Ok(());
    }
    let registered = registered_name.ok_or_else(|| {
        Rejection::new(
            Reason::CitizenNameUnknown,
            "NAME_MATCH needs the citizen's registered name, which the registry does not hold yet",
        )
    })?;
    let holder = holder_name.ok_or_else(|| {
        Rejection::field(
            Reason::FieldRequired,
            "holder_name",
            "NAME_MATCH needs the holder name reported by the provider",
        )
    })?;
    if super::name::normalize_name(holder) != super::name::normalize_name(registered) {
        return Err(Rejection::new(
            Reason::HolderNameMismatch,
            "the provider's holder name does not match the citizen's registered name",
        ));
    }
    Ok(())
}

/// A citizen's standing according to the population platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CitizenStatus {
    Active,
    Deceased,
    IdRevoked,
}

impl CitizenStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CitizenStatus::Active => "ACTIVE",
            CitizenStatus::Deceased => "DECEASED",
            CitizenStatus::IdRevoked => "ID_REVOKED",
        }
    }

    /// Parses the stored name; unknown values are treated as the most restrictive status
    /// would be by callers, so they are an error here.
    pub fn parse(s: &str) -> Option<CitizenStatus> {
        match s {
            "ACTIVE" => Some(CitizenStatus::Active),
            "DECEASED" => Some(CitizenStatus::Deceased),
            "ID_REVOKED" => Some(CitizenStatus::IdRevoked),
            _ => None,
        }
    }
}

/// A program code from the reference data (PENSION, SOCIAL_ALLOWANCE, ...). `None` where
/// a program is optional means the citizen's default account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProgramCode(String);

impl ProgramCode {
    /// Checks the code's shape; whether it exists is checked against reference data by
    /// the store. Empty input means "no program" and gives `None`.
    pub fn parse_optional(s: &str) -> Result<Option<ProgramCode>, Rejection> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        let well_formed = s.len() <= 40
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !well_formed {
            return Err(Rejection::field(
                Reason::ProgramUnknown,
                "program_code",
                "program_code must be an upper-case code such as PENSION",
            ));
        }
        Ok(Some(ProgramCode(s.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The storage key of a preference: the program code, or "" for the default.
    pub fn key(program: Option<&ProgramCode>) -> &str {
        program.map(ProgramCode::as_str).unwrap_or("")
    }
}

/// Link a new account to a citizen.
#[derive(Debug, Clone)]
pub struct LinkAccount {
    pub citizen_id: CitizenId,
    pub kind: AccountKind,
    pub provider_code: String,
    pub account_ref: AccountRef,
    pub holder_name: Option<HolderName>,
    /// Present when ownership is already confirmed at link time.
    pub verification: Option<VerificationInput>,
    pub reason: String,
}

/// What to do to an existing account.
#[derive(Debug, Clone)]
pub enum AccountAction {
    Verify {
        verification: VerificationInput,
        holder_name: Option<HolderName>,
    },
    Reject,
    Suspend,
    Reinstate,
    Close,
}

impl AccountAction {
    pub fn change(&self) -> Change {
        match self {
            AccountAction::Verify { .. } => Change::Verified,
            AccountAction::Reject => Change::Rejected,
            AccountAction::Suspend => Change::Suspended,
            AccountAction::Reinstate => Change::Reinstated,
            AccountAction::Close => Change::Closed,
        }
    }
}

/// Change the status of an existing account.
#[derive(Debug, Clone)]
pub struct ChangeAccount {
    pub account_id: Uuid,
    pub expected_version: Option<u64>,
    pub action: AccountAction,
    pub reason: String,
}

/// Choose the account a citizen is paid into, by default or for one program.
#[derive(Debug, Clone)]
pub struct SetPreference {
    pub citizen_id: CitizenId,
    pub account_id: Uuid,
    pub program: Option<ProgramCode>,
    pub expected_version: Option<u64>,
    pub reason: String,
}

/// A payer's report that a credit to an account failed (rule 6): recorded, and a
/// VERIFIED account is suspended so that it is no longer resolved.
#[derive(Debug, Clone)]
pub struct ReportPayoutFailure {
    pub account_id: Uuid,
    pub program: Option<ProgramCode>,
    pub failure_code: PayoutFailureCode,
    pub payer_reference: String,
    pub failed_at: Option<Timestamp>,
    pub reason: String,
}

/// The refusal for an account id the registry does not know.
pub fn account_not_found(id: Uuid) -> Rejection {
    Rejection::field(
        Reason::AccountNotFound,
        "account_id",
        format!("no account {id}"),
    )
}

/// The refusal for a read's `min_position` beyond the change feed's head.
pub fn min_position_beyond_head() -> Rejection {
    Rejection::field(
        Reason::FeedPositionInvalid,
        "min_position",
        "beyond the change feed's head: no answer can be that fresh yet",
    )
}

/// Refuses a write whose `expected_version` is stale.
pub fn check_version(expected: Option<u64>, actual: u64) -> Result<(), Rejection> {
    match expected {
        Some(e) if e != actual => Err(Rejection::field(
            Reason::VersionMismatch,
            "expected_version",
            format!("the account is at version {actual}, not {e}: re-read it and retry"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccountStatus::*;

    #[test]
    fn the_state_machine_allows_exactly_the_documented_transitions() {
        let all_status = [PendingVerification, Verified, Suspended, Closed, Rejected];
        let all_change = [
            Change::Verified,
            Change::Rejected,
            Change::Suspended,
            Change::Reinstated,
            Change::Closed,
        ];
        let allowed = [
            (PendingVerification, Change::Verified, Verified),
            (PendingVerification, Change::Rejected, Rejected),
            (PendingVerification, Change::Closed, Closed),
            (Verified, Change::Suspended, Suspended),
            (Verified, Change::Closed, Closed),
            (Suspended, Change::Reinstated, Verified),
            (Suspended, Change::Closed, Closed),
        ];
        for from in all_status {
            for change in all_change {
                let expected = allowed
                    .iter()
                    .find(|(f, c, _)| *f == from && *c == change)
                    .map(|(_, _, to)| *to);
                match (from.after(change), expected) {
                    (Ok(to), Some(want)) => assert_eq!(to, want, "{from} + {change}"),
                    (Err(e), None) => assert_eq!(e.reason, Reason::IllegalTransition),
                    (got, want) => panic!("{from} + {change}: got {got:?}, want {want:?}"),
                }
            }
        }
    }

    #[test]
    fn closed_and_rejected_are_terminal() {
        for terminal in [Closed, Rejected] {
            assert!(!terminal.is_open());
            assert!(!terminal.is_held());
        }
    }

    #[test]
    fn suspended_accounts_stay_held_by_their_citizen() {
        assert!(Suspended.is_held());
        assert!(Verified.is_held());
        assert!(!PendingVerification.is_held());
    }

    #[test]
    fn stale_expected_version_is_aborted() {
        assert!(check_version(None, 3).is_ok());
        assert!(check_version(Some(3), 3).is_ok());
        let err = check_version(Some(2), 3).unwrap_err();
        assert_eq!(err.reason, Reason::VersionMismatch);
        assert_eq!(err.field.as_deref(), Some("expected_version"));
    }

    #[test]
    fn name_match_requires_equal_normalised_names() {
        let input = VerificationInput {
            method: VerificationMethod::NameMatch,
            evidence_ref: "tx-1".into(),
        };
        assert!(
            check_verification(&input, Some("NGUYEN VAN DUC"), Some("Nguyễn  Văn Đức")).is_ok()
        );
        assert_eq!(
            check_verification(&input, Some("NGUYEN VAN DUNG"), Some("Nguyễn Văn Đức"))
                .unwrap_err()
                .reason,
            Reason::HolderNameMismatch
        );
        assert_eq!(
            check_verification(&input, Some("NGUYEN VAN DUC"), None)
                .unwrap_err()
                .reason,
            Reason::CitizenNameUnknown
        );
        assert_eq!(
            check_verification(&input, None, Some("Nguyễn Văn Đức"))
                .unwrap_err()
                .reason,
            Reason::FieldRequired
        );
    }

    #[test]
    fn other_methods_do_not_need_a_name() {
        for method in [
            VerificationMethod::IssuerConfirmed,
            VerificationMethod::VneidDeclared,
            VerificationMethod::InPerson,
        ] {
            let input = VerificationInput {
                method,
                evidence_ref: "ev".into(),
            };
            assert!(check_verification(&input, None, None).is_ok());
        }
    }

    #[test]
    fn account_refs_are_normalised_by_kind() {
        assert_eq!(
            AccountRef::parse(AccountKind::Ewallet, "0912 345 678")
                .unwrap()
                .as_str(),
            "+84912345678"
        );
        assert_eq!(
            AccountRef::parse(AccountKind::BankAccount, "0071-0001-23456")
                .unwrap()
                .as_str(),
            "0071000123456"
        );
        assert!(AccountRef::parse(AccountKind::MobileMoney, "0071000123456").is_err());
    }

    #[test]
    fn account_refs_print_masked() {
        let r = AccountRef::parse(AccountKind::BankAccount, "0071000123456").unwrap();
        assert_eq!(format!("{r:?}"), "*********3456");
        assert_eq!(format!("{r}"), "*********3456");
    }

    #[test]
    fn program_codes_must_be_upper_case_codes() {
        assert_eq!(ProgramCode::parse_optional("").unwrap(), None);
        assert_eq!(
            ProgramCode::parse_optional("PENSION")
                .unwrap()
                .unwrap()
                .as_str(),
            "PENSION"
        );
        assert!(ProgramCode::parse_optional("pension").is_err());
        assert!(ProgramCode::parse_optional("PEN SION").is_err());
    }
}
