//! The change feed's events as the outbox stores them: their types, and the payload each
//! type carries.
//!
//! A writer appends an event in the same transaction as its change; the stored payload
//! is the JSON serialisation of one of the structs here (an internal format, never sent
//! as such). Readers parse it back into the struct of the event's type and present it as
//! the API's typed message, masking on typed fields. Keeping the shapes here, beside the
//! rules, means the writers and the readers cannot drift apart.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Account, Timestamp};

/// What happened, for each event on the feed (stored by its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    AccountLinked,
    AccountVerified,
    AccountRejected,
    DefaultChanged,
    AccountSuspended,
    AccountReinstated,
    AccountClosed,
    CitizenStatusChanged,
    DuplicateClaimDetected,
    PayoutFailureReported,
    DuplicateEntitlementDetected,
}

impl EventType {
    pub const ALL: [EventType; 11] = [
        EventType::AccountLinked,
        EventType::AccountVerified,
        EventType::AccountRejected,
        EventType::DefaultChanged,
        EventType::AccountSuspended,
        EventType::AccountReinstated,
        EventType::AccountClosed,
        EventType::CitizenStatusChanged,
        EventType::DuplicateClaimDetected,
        EventType::PayoutFailureReported,
        EventType::DuplicateEntitlementDetected,
    ];

    /// The stored name (the API's value without its `EVENT_TYPE_` prefix).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::AccountLinked => "ACCOUNT_LINKED",
            EventType::AccountVerified => "ACCOUNT_VERIFIED",
            EventType::AccountRejected => "ACCOUNT_REJECTED",
            EventType::DefaultChanged => "DEFAULT_CHANGED",
            EventType::AccountSuspended => "ACCOUNT_SUSPENDED",
            EventType::AccountReinstated => "ACCOUNT_REINSTATED",
            EventType::AccountClosed => "ACCOUNT_CLOSED",
            EventType::CitizenStatusChanged => "CITIZEN_STATUS_CHANGED",
            EventType::DuplicateClaimDetected => "DUPLICATE_CLAIM_DETECTED",
            EventType::PayoutFailureReported => "PAYOUT_FAILURE_REPORTED",
            EventType::DuplicateEntitlementDetected => "DUPLICATE_ENTITLEMENT_DETECTED",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// True for the events whose payload is the account itself (`ACCOUNT_*`).
    pub fn is_account_change(self) -> bool {
        matches!(
            self,
            EventType::AccountLinked
                | EventType::AccountVerified
                | EventType::AccountRejected
                | EventType::AccountSuspended
                | EventType::AccountReinstated
                | EventType::AccountClosed
        )
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// DEFAULT_CHANGED: a default (`program_code` "") or program preference now points at
/// `account`; `previous_account_id` is still paid during a cooling-off period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferenceChanged {
    pub program_code: String,
    pub previous_account_id: Option<Uuid>,
    pub account: Account,
}

/// CITIZEN_STATUS_CHANGED, from the population platform. Statuses are stored by name
/// (`ACTIVE`, `DECEASED`, `ID_REVOKED`), the date of death as an ISO date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CitizenStatusChanged {
    pub citizen_id: String,
    pub previous_status: Option<String>,
    pub status: String,
    pub died_on: Option<String>,
    pub source_version: i64,
    pub record_id: String,
}

/// DUPLICATE_CLAIM_DETECTED: a refused claim. The holder fields are stored for
/// investigators; the claimant's side never sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuplicateClaimDetected {
    pub claim_id: Uuid,
    pub context: String,
    pub claimant_citizen_id: String,
    pub holder_citizen_id: String,
    pub holder_account_id: Uuid,
    /// The account kind's stored name (`BANK_ACCOUNT`, ...).
    pub kind: String,
    pub provider_code: String,
    pub account_ref: String,
}

/// DUPLICATE_ENTITLEMENT_DETECTED: a payer asked for a payment another had reserved. The
/// clients' ids are for investigators only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuplicateEntitlementDetected {
    pub entitlement_id: Uuid,
    pub program_code: String,
    pub period: String,
    pub holder: String,
    pub claimant: String,
}

/// PAYOUT_FAILURE_REPORTED: a payer's failed credit, with the account as it stood then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutFailureReported {
    pub failure_id: Uuid,
    /// The failure code's stored name (`ACCOUNT_CLOSED_AT_PROVIDER`, ...).
    pub failure_code: String,
    pub program_code: String,
    pub payer_reference: String,
    pub failed_at: Option<Timestamp>,
    pub account: Account,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_parses_back_from_its_stored_name() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("ACCOUNT_EXPLODED"), None);
        let account_events = EventType::ALL.iter().filter(|t| t.is_account_change());
        assert_eq!(account_events.count(), 6);
    }

    #[test]
    fn the_stored_citizen_status_payload_reads_back() {
        let stored = serde_json::json!({
            "citizen_id": "001085000001",
            "previous_status": null,
            "status": "DECEASED",
            "died_on": "2026-11-30",
            "source_version": 7,
            "record_id": "r1",
        });
        let p: CitizenStatusChanged = serde_json::from_value(stored).unwrap();
        assert_eq!(p.status, "DECEASED");
        assert_eq!(p.died_on.as_deref(), Some("2026-11-30"));
    }
}
