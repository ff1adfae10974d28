//! Rows as both backends return them, and their conversion into domain values.
//!
//! Column names and types are the same in both schemas, so one `FromRow` struct per
//! table serves both. Reading a row back is the one place stored strings become domain
//! enums again; a value that does not parse is reported as corrupt, never guessed.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{corrupt, DuplicateClaim, Event, HistoryEntry, StoreError, StoreResult};
use crate::domain::assertion::Capacity;
use crate::domain::{
    Account, AccountKind, AccountRef, AccountStatus, CitizenId, CitizenStatus, StoredPreference,
    Timestamp, Verification, VerificationMethod,
};

/// A stored citizen status.
pub(crate) fn citizen_status(s: &str) -> StoreResult<CitizenStatus> {
    CitizenStatus::parse(s).ok_or_else(|| corrupt("citizen status"))
}

/// A `providers` row's `kind, active`, as the link rules take it.
pub(crate) fn provider_terms(
    kind: &str,
    active: bool,
) -> StoreResult<crate::domain::link::ProviderTerms> {
    let kind = crate::domain::AccountKind::parse(kind).map_err(|_| corrupt("provider kind"))?;
    Ok(crate::domain::link::ProviderTerms { kind, active })
}

/// Columns of `accounts`, also the leading columns of `account_history`, and the account
/// snapshots of the resolution read model (a row holds up to two per preference; encoded
/// by position, or read from the JSON of rows written before migration 0018 under these
/// short names, where an absent optional field is `None`).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, Deserialize)]
pub(crate) struct AccountRow {
    #[serde(rename = "id")]
    pub account_id: Uuid,
    #[serde(rename = "c")]
    pub citizen_id: String,
    #[serde(rename = "k")]
    pub kind: String,
    #[serde(rename = "p")]
    pub provider_code: String,
    #[serde(rename = "r")]
    pub account_ref: String,
    #[serde(rename = "h", default)]
    pub holder_name: Option<String>,
    #[serde(rename = "s")]
    pub status: String,
    #[serde(rename = "vm", default)]
    pub verification_method: Option<String>,
    #[serde(rename = "vb", default)]
    pub verified_by: Option<String>,
    #[serde(rename = "va", default)]
    pub verified_at: Option<i64>,
    #[serde(rename = "ve", default)]
    pub evidence_ref: Option<String>,
    #[serde(rename = "v")]
    pub version: i64,
    #[serde(rename = "ca")]
    pub created_at: i64,
    #[serde(rename = "ua")]
    pub updated_at: i64,
    #[serde(rename = "dh", default)]
    pub declared_holder_name: Option<String>,
    #[serde(rename = "vc", default)]
    pub verification_capacity: Option<String>,
}

/// A stored capacity (`None` when not recorded).
pub(crate) fn capacity(stored: Option<&str>) -> StoreResult<Option<Capacity>> {
    stored
        .map(|c| Capacity::parse(c).ok_or_else(|| corrupt("capacity")))
        .transpose()
}

pub(crate) fn corrupt_account(what: &str, id: Uuid) -> StoreError {
    StoreError::Corrupt(format!("account {id}: unreadable {what}"))
}

impl TryFrom<AccountRow> for Account {
    type Error = StoreError;

    fn try_from(r: AccountRow) -> Result<Account, StoreError> {
        let id = r.account_id;
        let verification = match (r.verification_method, r.verified_by, r.verified_at) {
            (Some(method), Some(verified_by), Some(verified_at)) => Some(Verification {
                method: VerificationMethod::parse(&method)
                    .map_err(|_| corrupt_account("verification method", id))?,
                verified_by,
                verified_at: Timestamp(verified_at),
                evidence_ref: r.evidence_ref.unwrap_or_default(),
                capacity: capacity(r.verification_capacity.as_deref())?,
            }),
            _ => None,
        };
        Ok(Account {
            id,
            // Stored ids were validated on the way in; the birth-year rule depends on the
            // clock, so re-validating could only reject our own data.
            citizen_id: CitizenId::from_stored(r.citizen_id),
            kind: AccountKind::parse(&r.kind).map_err(|_| corrupt_account("kind", id))?,
            provider_code: r.provider_code,
            account_ref: AccountRef::from_stored(r.account_ref),
            holder_name: r.holder_name,
            declared_holder_name: r.declared_holder_name,
            status: AccountStatus::parse(&r.status).map_err(|_| corrupt_account("status", id))?,
            verification,
            version: u64::try_from(r.version).map_err(|_| corrupt_account("version", id))?,
            created_at: Timestamp(r.created_at),
            updated_at: Timestamp(r.updated_at),
        })
    }
}

/// A row of `account_history`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct HistoryRow {
    #[sqlx(flatten)]
    pub account: AccountRow,
    pub change: String,
    pub actor: String,
    pub reason: String,
    pub valid_from: i64,
    pub capacity: Option<String>,
}

impl TryFrom<HistoryRow> for HistoryEntry {
    type Error = StoreError;

    fn try_from(r: HistoryRow) -> Result<HistoryEntry, StoreError> {
        Ok(HistoryEntry {
            capacity: capacity(r.capacity.as_deref())?,
            account: r.account.try_into()?,
            change: r.change,
            actor: r.actor,
            reason: r.reason,
            valid_from: Timestamp(r.valid_from),
        })
    }
}

/// A row of `preferences` or `preference_history`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct PreferenceRow {
    pub program_code: String,
    pub account_id: Uuid,
    pub previous_account_id: Option<Uuid>,
    pub since: i64,
}

impl From<PreferenceRow> for StoredPreference {
    fn from(r: PreferenceRow) -> StoredPreference {
        StoredPreference {
            program_code: r.program_code,
            account_id: r.account_id,
            previous: r.previous_account_id,
            since: Timestamp(r.since),
        }
    }
}

/// A row of `events`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EventRow {
    pub position: i64,
    pub event_id: Uuid,
    pub occurred_at: i64,
    pub event_type: String,
    pub citizen_id: String,
    pub account_id: Option<Uuid>,
    pub actor: String,
    pub reason: String,
    pub payload: String,
    pub feed_position: Option<i64>,
    pub actor_capacity: Option<String>,
}

impl From<EventRow> for Event {
    fn from(r: EventRow) -> Event {
        Event {
            // Written only from `Capacity::as_str`; an unreadable one is dropped rather
            // than failing a whole page of the feed.
            actor_capacity: r.actor_capacity.as_deref().and_then(Capacity::parse),
            position: r.position,
            event_id: r.event_id,
            occurred_at: Timestamp(r.occurred_at),
            event_type: r.event_type,
            citizen_id: r.citizen_id,
            account_id: r.account_id,
            actor: r.actor,
            reason: r.reason,
            payload: r.payload,
            feed_position: r.feed_position,
        }
    }
}

/// A row of `duplicate_claims`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DuplicateClaimRow {
    pub claim_id: Uuid,
    pub kind: String,
    pub provider_code: String,
    pub account_ref: String,
    pub claimant_citizen_id: String,
    pub holder_citizen_id: String,
    pub holder_account_id: Uuid,
    pub context: String,
    pub detected_at: i64,
    pub actor: String,
}

impl TryFrom<DuplicateClaimRow> for DuplicateClaim {
    type Error = StoreError;

    fn try_from(r: DuplicateClaimRow) -> Result<DuplicateClaim, StoreError> {
        Ok(DuplicateClaim {
            claim_id: r.claim_id,
            kind: AccountKind::parse(&r.kind).map_err(|_| {
                StoreError::Corrupt(format!("claim {}: unreadable kind", r.claim_id))
            })?,
            provider_code: r.provider_code,
            account_ref: AccountRef::from_stored(r.account_ref),
            claimant: CitizenId::from_stored(r.claimant_citizen_id),
            holder: CitizenId::from_stored(r.holder_citizen_id),
            holder_account_id: r.holder_account_id,
            context: r.context,
            detected_at: Timestamp(r.detected_at),
            actor: r.actor,
        })
    }
}
