//! Proto <-> domain conversion, in one place.
//!
//! Every incoming message becomes a validated domain command through `TryFrom`, so a
//! handler only ever holds valid data; a failure names the request field at fault.
//! Outgoing accounts are masked here unless the caller may see full numbers.

use std::sync::Arc;

use uuid::Uuid;

use crate::domain::assertion::Capacity;
use crate::domain::{
    bounded_text, required_text, Account, AccountAction, AccountKind, AccountRef, ChangeAccount,
    CitizenId, CitizenLookup, CitizenStatus, HolderName, LinkAccount, PayoutFailureCode,
    ProgramCode, Reason, Rejection, ReportPayoutFailure, Resolution, SetPreference, SyncAccount,
    SyncCitizen, Timestamp, VerificationInput, VerificationMethod, MAX_EVIDENCE_LEN,
    MAX_REASON_LEN,
};
use crate::proto;
use crate::store::{
    AccessEntry, AccountKey, DuplicateClaim, HistoryEntry, Preference, ResolveQuery,
};

/// Parses a citizen id from request field `field`.
pub fn citizen_id(field: &str, raw: &str) -> Result<CitizenId, Rejection> {
    CitizenId::parse(raw.trim()).map_err(|r| r.at(field))
}

/// Parses an account id (UUID) from request field `field`.
pub fn account_id(field: &str, raw: &str) -> Result<Uuid, Rejection> {
    Uuid::parse_str(raw.trim()).map_err(|_| {
        Rejection::field(
            Reason::AccountIdInvalid,
            field,
            format!("{field} must be a UUID"),
        )
    })
}

/// A read's `min_position` (a consistency token) as the store takes it.
pub fn min_position(raw: u64) -> Result<i64, Rejection> {
    i64::try_from(raw).map_err(|_| crate::domain::min_position_beyond_head())
}

/// A feed position as answers carry it.
pub fn position_out(position: i64) -> u64 {
    u64::try_from(position).unwrap_or(0)
}

/// A required enum field left unspecified.
fn unspecified(field: &str) -> Rejection {
    Rejection::field(Reason::FieldRequired, field, format!("{field} is required"))
}

fn kind(field: &str, raw: i32) -> Result<AccountKind, Rejection> {
    match proto::AccountKind::try_from(raw) {
        Ok(proto::AccountKind::BankAccount) => Ok(AccountKind::BankAccount),
        Ok(proto::AccountKind::Ewallet) => Ok(AccountKind::Ewallet),
        Ok(proto::AccountKind::MobileMoney) => Ok(AccountKind::MobileMoney),
        Ok(proto::AccountKind::Unspecified) => Err(unspecified(field)),
        Err(_) => Err(Rejection::unknown_enum_value(field)),
    }
}

fn kind_out(k: AccountKind) -> proto::AccountKind {
    match k {
        AccountKind::BankAccount => proto::AccountKind::BankAccount,
        AccountKind::Ewallet => proto::AccountKind::Ewallet,
        AccountKind::MobileMoney => proto::AccountKind::MobileMoney,
    }
}

/// A verification method; `None` when unspecified (a sync record awaiting verification).
fn optional_method(field: &str, raw: i32) -> Result<Option<VerificationMethod>, Rejection> {
    match proto::VerificationMethod::try_from(raw) {
        Ok(proto::VerificationMethod::IssuerConfirmed) => {
            Ok(Some(VerificationMethod::IssuerConfirmed))
        }
        Ok(proto::VerificationMethod::NameMatch) => Ok(Some(VerificationMethod::NameMatch)),
        Ok(proto::VerificationMethod::VneidDeclared) => Ok(Some(VerificationMethod::VneidDeclared)),
        Ok(proto::VerificationMethod::InPerson) => Ok(Some(VerificationMethod::InPerson)),
        Ok(proto::VerificationMethod::Unspecified) => Ok(None),
        Err(_) => Err(Rejection::unknown_enum_value(field)),
    }
}

fn method(field: &str, raw: i32) -> Result<VerificationMethod, Rejection> {
    optional_method(field, raw)?.ok_or_else(|| unspecified(field))
}

fn method_out(m: VerificationMethod) -> proto::VerificationMethod {
    match m {
        VerificationMethod::IssuerConfirmed => proto::VerificationMethod::IssuerConfirmed,
        VerificationMethod::NameMatch => proto::VerificationMethod::NameMatch,
        VerificationMethod::VneidDeclared => proto::VerificationMethod::VneidDeclared,
        VerificationMethod::InPerson => proto::VerificationMethod::InPerson,
    }
}

fn status_out(s: crate::domain::AccountStatus) -> proto::AccountStatus {
    use crate::domain::AccountStatus as S;
    match s {
        S::PendingVerification => proto::AccountStatus::PendingVerification,
        S::Verified => proto::AccountStatus::Verified,
        S::Suspended => proto::AccountStatus::Suspended,
        S::Closed => proto::AccountStatus::Closed,
        S::Rejected => proto::AccountStatus::Rejected,
    }
}

fn verification(v: &proto::Verification) -> Result<VerificationInput, Rejection> {
    Ok(VerificationInput {
        method: method("verification.method", v.method)?,
        evidence_ref: required_text(
            "verification.evidence_ref",
            &v.evidence_ref,
            MAX_EVIDENCE_LEN,
        )?,
    })
}

fn holder_name(raw: &str) -> Result<Option<HolderName>, Rejection> {
    if raw.trim().is_empty() {
        return Ok(None);
    }
    HolderName::parse(raw).map(Some)
}

fn reason(raw: &str) -> Result<String, Rejection> {
    bounded_text("reason", raw, MAX_REASON_LEN)
}

fn required_reason(raw: &str) -> Result<String, Rejection> {
    required_text("reason", raw, MAX_REASON_LEN)
}

/// A protobuf timestamp as an instant; out-of-range values are refused.
pub fn timestamp_in(field: &str, t: &prost_types::Timestamp) -> Result<Timestamp, Rejection> {
    let invalid = || {
        Rejection::field(
            Reason::TimestampInvalid,
            field,
            format!("{field} is not a valid instant"),
        )
    };
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(invalid());
    }
    t.seconds
        .checked_mul(1_000_000)
        .and_then(|us| us.checked_add(i64::from(t.nanos / 1000)))
        .map(Timestamp)
        .ok_or_else(invalid)
}

pub fn timestamp_out(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.micros().div_euclid(1_000_000),
        nanos: (t.micros().rem_euclid(1_000_000) * 1000) as i32,
    }
}

impl TryFrom<&proto::LinkAccountRequest> for LinkAccount {
    type Error = Rejection;

    fn try_from(r: &proto::LinkAccountRequest) -> Result<LinkAccount, Rejection> {
        let kind = kind("kind", r.kind)?;
        Ok(LinkAccount {
            citizen_id: citizen_id("citizen_id", &r.citizen_id)?,
            kind,
            provider_code: required_text("provider_code", &r.provider_code, 20)?,
            account_ref: AccountRef::parse(kind, &r.account_ref)?,
            holder_name: holder_name(&r.holder_name)?,
            verification: r.verification.as_ref().map(verification).transpose()?,
            reason: reason(&r.reason)?,
        })
    }
}

/// An `expected_version` as the domain holds versions. A negative version matches no
/// account, so it is refused as any stale version is (ABORTED, VERSION_MISMATCH).
fn expected_version(v: Option<i64>) -> Option<u64> {
    v.map(|v| u64::try_from(v).unwrap_or(u64::MAX))
}

/// Builds the command shared by the five status-changing RPCs.
fn change(
    account: &str,
    version: Option<i64>,
    action: AccountAction,
    reason: String,
) -> Result<ChangeAccount, Rejection> {
    Ok(ChangeAccount {
        account_id: account_id("account_id", account)?,
        expected_version: expected_version(version),
        action,
        reason,
    })
}

impl TryFrom<&proto::VerifyAccountRequest> for ChangeAccount {
    type Error = Rejection;

    fn try_from(r: &proto::VerifyAccountRequest) -> Result<ChangeAccount, Rejection> {
        let v = r.verification.as_ref().ok_or_else(|| {
            Rejection::field(
                Reason::FieldRequired,
                "verification",
                "verification is required",
            )
        })?;
        let action = AccountAction::Verify {
            verification: verification(v)?,
            holder_name: holder_name(&r.holder_name)?,
        };
        change(
            &r.account_id,
            r.expected_version,
            action,
            reason(&r.reason)?,
        )
    }
}

impl TryFrom<&proto::RejectAccountRequest> for ChangeAccount {
    type Error = Rejection;

    fn try_from(r: &proto::RejectAccountRequest) -> Result<ChangeAccount, Rejection> {
        change(
            &r.account_id,
            r.expected_version,
            AccountAction::Reject,
            required_reason(&r.reason)?,
        )
    }
}

impl TryFrom<&proto::SuspendAccountRequest> for ChangeAccount {
    type Error = Rejection;

    fn try_from(r: &proto::SuspendAccountRequest) -> Result<ChangeAccount, Rejection> {
        change(
            &r.account_id,
            r.expected_version,
            AccountAction::Suspend,
            required_reason(&r.reason)?,
        )
    }
}

impl TryFrom<&proto::ReinstateAccountRequest> for ChangeAccount {
    type Error = Rejection;

    fn try_from(r: &proto::ReinstateAccountRequest) -> Result<ChangeAccount, Rejection> {
        change(
            &r.account_id,
            r.expected_version,
            AccountAction::Reinstate,
            required_reason(&r.reason)?,
        )
    }
}

impl TryFrom<&proto::CloseAccountRequest> for ChangeAccount {
    type Error = Rejection;

    fn try_from(r: &proto::CloseAccountRequest) -> Result<ChangeAccount, Rejection> {
        change(
            &r.account_id,
            r.expected_version,
            AccountAction::Close,
            required_reason(&r.reason)?,
        )
    }
}

impl TryFrom<&proto::SetDefaultAccountRequest> for SetPreference {
    type Error = Rejection;

    fn try_from(r: &proto::SetDefaultAccountRequest) -> Result<SetPreference, Rejection> {
        Ok(SetPreference {
            citizen_id: citizen_id("citizen_id", &r.citizen_id)?,
            account_id: account_id("account_id", &r.account_id)?,
            program: ProgramCode::parse_optional(&r.program_code)?,
            expected_version: expected_version(r.expected_version),
            reason: reason(&r.reason)?,
        })
    }
}

impl TryFrom<&proto::ReportPayoutFailureRequest> for ReportPayoutFailure {
    type Error = Rejection;

    fn try_from(r: &proto::ReportPayoutFailureRequest) -> Result<ReportPayoutFailure, Rejection> {
        let failure_code = match proto::PayoutFailureCode::try_from(r.failure_code) {
            Ok(proto::PayoutFailureCode::Unspecified) => return Err(unspecified("failure_code")),
            Err(_) => return Err(Rejection::unknown_enum_value("failure_code")),
            Ok(code) => failure_code_in(code),
        };
        Ok(ReportPayoutFailure {
            account_id: account_id("account_id", &r.account_id)?,
            program: ProgramCode::parse_optional(&r.program_code)?,
            failure_code,
            payer_reference: required_text(
                "payer_reference",
                &r.payer_reference,
                MAX_EVIDENCE_LEN,
            )?,
            failed_at: r
                .failed_at
                .as_ref()
                .map(|t| timestamp_in("failed_at", t))
                .transpose()?,
            reason: reason(&r.reason)?,
        })
    }
}

fn failure_code_in(code: proto::PayoutFailureCode) -> PayoutFailureCode {
    use proto::PayoutFailureCode as P;
    match code {
        P::AccountClosedAtProvider => PayoutFailureCode::AccountClosedAtProvider,
        P::HolderNameMismatch => PayoutFailureCode::HolderNameMismatch,
        P::AccountFrozen => PayoutFailureCode::AccountFrozen,
        P::AccountNotFoundAtProvider => PayoutFailureCode::AccountNotFoundAtProvider,
        P::Other | P::Unspecified => PayoutFailureCode::Other,
    }
}

pub fn failure_code_out(code: PayoutFailureCode) -> proto::PayoutFailureCode {
    use proto::PayoutFailureCode as P;
    match code {
        PayoutFailureCode::AccountClosedAtProvider => P::AccountClosedAtProvider,
        PayoutFailureCode::HolderNameMismatch => P::HolderNameMismatch,
        PayoutFailureCode::AccountFrozen => P::AccountFrozen,
        PayoutFailureCode::AccountNotFoundAtProvider => P::AccountNotFoundAtProvider,
        PayoutFailureCode::Other => P::Other,
    }
}

/// An account at its provider, from request field `field` (required).
pub fn account_key_in(
    field: &str,
    key: Option<&proto::AccountKey>,
) -> Result<AccountKey, Rejection> {
    let key = key.ok_or_else(|| unspecified(field))?;
    let kind = kind(&format!("{field}.kind"), key.kind)?;
    Ok(AccountKey {
        kind,
        provider_code: required_text(&format!("{field}.provider_code"), &key.provider_code, 20)?,
        account_ref: AccountRef::parse(kind, &key.account_ref)
            .map_err(|r| r.at(format!("{field}.account_ref")))?,
    })
}

/// An account key as sent to a client; the account number masked unless `full`.
pub fn account_key_out(
    kind: AccountKind,
    provider_code: &str,
    account_ref: &AccountRef,
    full: bool,
) -> proto::AccountKey {
    proto::AccountKey {
        kind: kind_out(kind).into(),
        provider_code: provider_code.to_owned(),
        account_ref: if full {
            account_ref.as_str().to_owned()
        } else {
            account_ref.masked()
        },
    }
}

/// A refused claim as sent to an investigator; the account number masked unless `full`.
pub fn duplicate_claim_out(c: &DuplicateClaim, full: bool) -> proto::DuplicateClaim {
    proto::DuplicateClaim {
        claim_id: c.claim_id.to_string(),
        claimant_citizen_id: c.claimant.as_str().to_owned(),
        holder_citizen_id: c.holder.as_str().to_owned(),
        holder_account_id: c.holder_account_id.to_string(),
        context: c.context.clone(),
        detected_at: Some(timestamp_out(c.detected_at)),
        actor: c.actor.clone(),
        account: Some(account_key_out(
            c.kind,
            &c.provider_code,
            &c.account_ref,
            full,
        )),
    }
}

/// One citizen's claim on an account, for FindAccountHolders.
pub fn holder_out(a: &Account) -> proto::AccountHolder {
    proto::AccountHolder {
        citizen_id: a.citizen_id.as_str().to_owned(),
        account_id: a.id.to_string(),
        status: status_out(a.status).into(),
        linked_at: Some(timestamp_out(a.created_at)),
        verified_at: a
            .verification
            .as_ref()
            .map(|v| timestamp_out(v.verified_at)),
        updated_at: Some(timestamp_out(a.updated_at)),
    }
}

pub fn access_entry_out(e: &AccessEntry) -> proto::AccessLogEntry {
    proto::AccessLogEntry {
        client_id: e.client_id.clone(),
        method: e.method.clone(),
        purpose: e.purpose.clone(),
        accessed_at: Some(timestamp_out(e.accessed_at)),
        request_id: e.request_id.to_string(),
    }
}

/// A resolution request and whether the caller asked for the yes/no form only. The
/// citizen may be named by a legacy number, resolved to its citizen id by the handler.
pub struct ResolveRequest {
    pub lookup: CitizenLookup,
    pub program: Option<ProgramCode>,
    pub as_of: Option<Timestamp>,
    pub exists_only: bool,
    /// The period whose payment to reserve (checked against the program by the resolver).
    pub reservation: Option<crate::domain::reservation::Period>,
}

impl ResolveRequest {
    /// Parses a request received at `now`: an `as_of` later than now (beyond the
    /// allowed clock skew) is refused, since the registry answers only about the past and
    /// the present (a future instant would be answered as if nothing were to change).
    pub fn parse(
        citizen: &str,
        program_code: &str,
        as_of: Option<&prost_types::Timestamp>,
        scope: i32,
        reservation_period: &str,
        now: Timestamp,
    ) -> Result<ResolveRequest, Rejection> {
        let exists_only = match proto::ResolveScope::try_from(scope) {
            Ok(proto::ResolveScope::ExistsOnly) => true,
            Ok(proto::ResolveScope::Details | proto::ResolveScope::Unspecified) => false,
            Err(_) => return Err(Rejection::unknown_enum_value("scope")),
        };
        let as_of = as_of.map(|t| timestamp_in("as_of", t)).transpose()?;
        if as_of.is_some_and(|t| t > now.plus(MAX_CLOCK_SKEW)) {
            return Err(Rejection::field(
                Reason::AsOfInFuture,
                "as_of",
                "as_of is in the future: resolution answers only about the past and the present",
            ));
        }
        let reservation = match reservation_period {
            "" => None,
            raw => Some(crate::domain::reservation::Period::parse(raw)?),
        };
        if reservation.is_some() && (as_of.is_some() || exists_only) {
            return Err(Rejection::field(
                Reason::ReservationNotAllowed,
                "reservation_period",
                "a payment is reserved only by a payroll paying now: not with as_of, not with \
                 the yes/no scope",
            ));
        }
        Ok(ResolveRequest {
            lookup: citizen_lookup("citizen_id", citizen, now.date().year())?,
            program: ProgramCode::parse_optional(program_code)?,
            as_of,
            exists_only,
            reservation,
        })
    }

    /// The store's query, once the citizen id is known.
    pub fn query(&self, citizen_id: CitizenId) -> ResolveQuery {
        ResolveQuery {
            citizen_id,
            program: self.program.clone(),
            as_of: self.as_of,
        }
    }
}

/// How far a client's clock may run ahead of the registry's for `as_of`.
pub const MAX_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(5);

/// Parses a citizen named for a lookup: a citizen id or a legacy 9-digit CMND number, a
/// citizen id's birth year judged against `current_year` (the app clock's, read once by
/// the caller).
pub fn citizen_lookup(
    field: &str,
    raw: &str,
    current_year: i32,
) -> Result<CitizenLookup, Rejection> {
    CitizenLookup::parse_with_year(raw.trim(), current_year).map_err(|r| r.at(field))
}

/// A citizen record from the population platform, validated against `today`.
pub fn sync_citizen(r: &proto::CitizenRecord, today: time::Date) -> Result<SyncCitizen, Rejection> {
    let status = match proto::CitizenStatus::try_from(r.status) {
        Ok(proto::CitizenStatus::Active) => Some(CitizenStatus::Active),
        Ok(proto::CitizenStatus::Deceased) => Some(CitizenStatus::Deceased),
        Ok(proto::CitizenStatus::IdRevoked) => Some(CitizenStatus::IdRevoked),
        Ok(proto::CitizenStatus::Unspecified) => None,
        Err(_) => return Err(Rejection::unknown_enum_value("status")),
    };
    SyncCitizen::parse(
        &r.record_id,
        r.version,
        r.citizen_id.trim(),
        &r.full_name,
        &date_in(r.date_of_birth.as_ref()),
        status,
        &date_in(r.date_of_death.as_ref()),
        &r.legacy_ids,
        today,
    )
}

/// A declared account from the population platform, validated.
pub fn sync_account(r: &proto::AccountRecord) -> Result<SyncAccount, Rejection> {
    let (record_id, version) = crate::domain::population::record_key(&r.record_id, r.version)?;
    let kind = kind("kind", r.kind)?;
    let confirmation = optional_method("verification_method", r.verification_method)?;
    Ok(SyncAccount {
        record_id,
        version,
        citizen_id: citizen_id("citizen_id", &r.citizen_id)?,
        kind,
        provider_code: required_text("provider_code", &r.provider_code, 20)?,
        account_ref: AccountRef::parse(kind, &r.account_ref)?,
        holder_name: holder_name(&r.holder_name)?,
        confirmation,
        removed: r.removed,
    })
}

/// Longest change-feed consumer name.
const MAX_CONSUMER_LEN: usize = 100;

/// A change-feed consumer name (may be empty where optional).
pub fn consumer_name(raw: &str) -> Result<String, Rejection> {
    bounded_text("consumer", raw, MAX_CONSUMER_LEN)
}

/// A feed position from request field `field`.
pub fn feed_position_in(field: &str, p: u64) -> Result<i64, Rejection> {
    i64::try_from(p).map_err(|_| {
        Rejection::field(
            Reason::FeedPositionInvalid,
            field,
            format!("{field} is beyond any feed position"),
        )
    })
}

/// A refused record (or BatchResolve request) as sent in a stream.
pub fn record_error(record_id: &str, r: &Rejection) -> proto::RecordError {
    proto::RecordError {
        record_id: record_id.to_owned(),
        reason: r.reason.as_str().to_owned(),
        field: r.field.clone().unwrap_or_default(),
        message: r.message.clone(),
    }
}

/// An account as sent to a client: the account number masked unless `full`.
/// An optional 3-digit province code (empty: none).
pub fn province_code(field: &str, raw: &str) -> Result<Option<String>, Rejection> {
    let code = raw.trim();
    if code.is_empty() {
        return Ok(None);
    }
    if crate::domain::citizen_id::province_name(code).is_none() {
        return Err(Rejection::field(
            Reason::ProvinceCodeInvalid,
            field,
            format!("{field} is not one of the 63 province codes of Circular 59/2021/TT-BCA"),
        ));
    }
    Ok(Some(code.to_owned()))
}

pub fn citizen_status_out(s: CitizenStatus) -> proto::CitizenStatus {
    match s {
        CitizenStatus::Active => proto::CitizenStatus::Active,
        CitizenStatus::Deceased => proto::CitizenStatus::Deceased,
        CitizenStatus::IdRevoked => proto::CitizenStatus::IdRevoked,
    }
}

pub fn account_out(a: &Account, full: bool) -> proto::Account {
    account_into(a.clone(), full)
}

/// [`account_out`] of an account the caller is done with: its text moves into the
/// message instead of being copied (BatchResolve answers a thousand a batch).
pub fn account_into(a: Account, full: bool) -> proto::Account {
    proto::Account {
        account_id: a.id.to_string(),
        citizen_id: a.citizen_id.into_string(),
        kind: kind_out(a.kind).into(),
        provider_code: a.provider_code,
        account_ref: if full {
            a.account_ref.into_string()
        } else {
            a.account_ref.masked()
        },
        account_ref_masked: !full,
        holder_name: a.holder_name.unwrap_or_default(),
        declared_holder_name: a.declared_holder_name.unwrap_or_default(),
        status: status_out(a.status).into(),
        verification: a.verification.map(|v| proto::Verification {
            method: method_out(v.method).into(),
            verified_by: v.verified_by,
            verified_at: Some(timestamp_out(v.verified_at)),
            evidence_ref: v.evidence_ref,
            capacity: capacity_out(v.capacity).into(),
        }),
        version: i64::try_from(a.version).unwrap_or(i64::MAX),
        created_at: Some(timestamp_out(a.created_at)),
        updated_at: Some(timestamp_out(a.updated_at)),
    }
}

/// The capacity a party vouched in (unspecified when not recorded).
pub fn capacity_out(c: Option<Capacity>) -> proto::Capacity {
    match c {
        None => proto::Capacity::Unspecified,
        Some(Capacity::Provider) => proto::Capacity::Provider,
        Some(Capacity::Verifier) => proto::Capacity::Verifier,
        Some(Capacity::PopulationSync) => proto::Capacity::PopulationSync,
        Some(Capacity::Payer) => proto::Capacity::Payer,
    }
}

/// A stored change as the API names it.
pub fn change_out(change: &str) -> proto::AccountChange {
    use proto::AccountChange as C;
    match crate::domain::Change::parse(change) {
        Ok(crate::domain::Change::Linked) => C::Linked,
        Ok(crate::domain::Change::Verified) => C::Verified,
        Ok(crate::domain::Change::Rejected) => C::Rejected,
        Ok(crate::domain::Change::Suspended) => C::Suspended,
        Ok(crate::domain::Change::Reinstated) => C::Reinstated,
        Ok(crate::domain::Change::Closed) => C::Closed,
        Err(_) => C::Unspecified,
    }
}

pub fn history_out(h: &HistoryEntry, full: bool) -> proto::AccountHistoryEntry {
    proto::AccountHistoryEntry {
        account: Some(account_out(&h.account, full)),
        change: change_out(&h.change).into(),
        actor: h.actor.clone(),
        reason: h.reason.clone(),
        valid_from: Some(timestamp_out(h.valid_from)),
        capacity: capacity_out(h.capacity).into(),
    }
}

pub fn preference_out(p: &Preference) -> proto::PayoutPreference {
    proto::PayoutPreference {
        program_code: ProgramCode::key(p.program.as_ref()).to_owned(),
        account_id: p.account_id.to_string(),
        since: Some(timestamp_out(p.since)),
    }
}

/// A resolution as sent to a client. The yes/no form carries no account.
pub fn resolution_out(
    r: Resolution,
    program: Option<&ProgramCode>,
    at: Timestamp,
    exists_only: bool,
    full: bool,
) -> proto::ResolveResponse {
    use proto::ResolveOutcome as O;
    let mut out = proto::ResolveResponse {
        as_of: Some(timestamp_out(at)),
        ..Default::default()
    };
    let outcome = match r {
        Resolution::Resolved {
            account,
            matched_program,
            cooling_off_until,
        } => {
            if !exists_only {
                // The last holder of the account (a batch's answers outlive the rows
                // read for them) gives its text to the message; else it is copied.
                let account = Arc::unwrap_or_clone(account);
                out.account = Some(account_into(account, full));
                if matched_program {
                    out.matched_program_code = ProgramCode::key(program).to_owned();
                }
                out.cooling_off = cooling_off_until.is_some();
                out.cooling_off_until = cooling_off_until.map(timestamp_out);
            }
            O::Resolved
        }
        Resolution::NoVerifiedAccount => O::NoVerifiedAccount,
        Resolution::CitizenDeceased => O::CitizenDeceased,
        Resolution::CitizenIdRevoked => O::CitizenIdRevoked,
        Resolution::UnknownCitizen => O::UnknownCitizen,
    };
    out.outcome = outcome.into();
    out
}

/// A `google.type.Date` as the ISO date the domain parses (`YYYY-MM-DD`); empty when
/// absent. A partial date (a zero month or day) does not parse, and is refused there.
pub fn date_in(d: Option<&proto::google_type::Date>) -> String {
    match d {
        None => String::new(),
        Some(d) => format!("{:04}-{:02}-{:02}", d.year, d.month, d.day),
    }
}

/// An ISO date (`YYYY-MM-DD`) as a `google.type.Date`; `None` when it does not parse.
pub fn date_out(iso: &str) -> Option<proto::google_type::Date> {
    let mut parts = iso.splitn(3, '-').map(|p| p.parse::<i32>().ok());
    Some(proto::google_type::Date {
        year: parts.next()??,
        month: parts.next()??,
        day: parts.next()??,
    })
}

/// The filter of ListDuplicateEntitlements: empty fields filter nothing.
pub fn entitlement_filter(
    req: &proto::ListDuplicateEntitlementsRequest,
) -> Result<crate::domain::reservation::EntitlementFilter, Rejection> {
    let program_code =
        ProgramCode::parse_optional(&req.program_code)?.map(|p| p.as_str().to_owned());
    let period = match req.period.as_str() {
        "" => None,
        raw => Some(period_in("period", raw)?.as_str().to_owned()),
    };
    let province_code = province_code("province_code", &req.province_code)?;
    Ok(crate::domain::reservation::EntitlementFilter {
        program_code,
        period,
        province_code,
    })
}

/// A reservation period named by `field`.
fn period_in(field: &str, raw: &str) -> Result<crate::domain::reservation::Period, Rejection> {
    crate::domain::reservation::Period::parse(raw).map_err(|e| Rejection {
        field: Some(field.into()),
        ..e
    })
}

/// Most citizens one ReleaseReservations call names.
pub const MAX_RELEASE_CITIZENS: usize = 10_000;

/// ReleaseReservations' request: the program, the period, the citizens (none: all) and
/// the reason. Whether the program exists is the handler's to check.
pub fn release_in(
    r: &proto::ReleaseReservationsRequest,
) -> Result<
    (
        ProgramCode,
        crate::domain::reservation::Period,
        Vec<CitizenId>,
        String,
    ),
    Rejection,
> {
    let program = ProgramCode::parse_optional(&r.program_code)?.ok_or_else(|| {
        Rejection::field(
            Reason::FieldRequired,
            "program_code",
            "name the program whose reservations to release",
        )
    })?;
    let period = period_in("period", &r.period)?;
    if r.citizen_ids.len() > MAX_RELEASE_CITIZENS {
        return Err(Rejection::field(
            Reason::TextTooLong,
            "citizen_ids",
            format!("at most {MAX_RELEASE_CITIZENS} citizens per call"),
        ));
    }
    let citizens = r
        .citizen_ids
        .iter()
        .map(|c| citizen_id("citizen_ids", c))
        .collect::<Result<Vec<_>, _>>()?;
    let reason = required_reason(&r.reason)?;
    Ok((program, period, citizens, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_through_protobuf() {
        for us in [0i64, 1, 999_999, 1_000_000, -1, 1_777_000_000_123_456] {
            let t = Timestamp(us);
            assert_eq!(timestamp_in("as_of", &timestamp_out(t)).unwrap(), t);
        }
    }

    #[test]
    fn out_of_range_timestamps_are_refused() {
        let bad = prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(
            timestamp_in("as_of", &bad).unwrap_err().reason,
            Reason::TimestampInvalid
        );
        let huge = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert!(timestamp_in("as_of", &huge).is_err());
    }

    #[test]
    fn a_link_request_with_a_bad_citizen_id_names_the_field() {
        let r = proto::LinkAccountRequest {
            citizen_id: "099000000001".into(),
            kind: proto::AccountKind::BankAccount.into(),
            provider_code: "970436".into(),
            account_ref: "0071000123456".into(),
            ..Default::default()
        };
        let err = LinkAccount::try_from(&r).unwrap_err();
        assert_eq!(err.reason, Reason::CitizenIdInvalidProvince);
        assert_eq!(err.field.as_deref(), Some("citizen_id"));
    }

    #[test]
    fn an_unspecified_kind_is_required_and_an_unknown_one_is_an_unknown_enum_value() {
        let r = proto::LinkAccountRequest {
            citizen_id: "001099012345".into(),
            ..Default::default()
        };
        let refused = LinkAccount::try_from(&r).unwrap_err();
        assert_eq!(refused.reason, Reason::FieldRequired);
        assert_eq!(refused.field.as_deref(), Some("kind"));
        let r = proto::LinkAccountRequest { kind: 99, ..r };
        let refused = LinkAccount::try_from(&r).unwrap_err();
        assert_eq!(refused.reason, Reason::EnumValueUnknown);
        assert_eq!(refused.field.as_deref(), Some("kind"));
    }

    #[test]
    fn dates_round_trip_through_google_type_date() {
        let d = date_out("1985-02-28").unwrap();
        assert_eq!((d.year, d.month, d.day), (1985, 2, 28));
        assert_eq!(date_in(Some(&d)), "1985-02-28");
        assert_eq!(date_in(None), "");
    }
}
