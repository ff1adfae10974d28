//! Payment reservations: one benefit, one payment, whoever pays it (*trùng lĩnh*).
//!
//! A payroll about to pay a citizen for a program and period reserves that payment. Per
//! (citizen, program, period) one payer client holds the reservation; the same payer
//! asking again gets its own back (a re-run of its payroll); another payer is answered
//! ALREADY_RESERVED and the conflict is recorded for investigators. The reference data
//! says which programs are reservable, and whether the rule is one holder per citizen
//! (the default) or one per payer (exceptions the ministry configures, where several
//! payers legitimately pay the same person, such as disaster relief from several
//! bodies). Rules only: the store takes and releases reservations.

use serde::Deserialize;
use uuid::Uuid;

use super::{CitizenId, Reason, Rejection, Timestamp};

/// Who may hold a program's reservation for a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReservationScope {
    /// One payer per citizen and period, across payers: the default.
    Citizen,
    /// Each payer its own: several payers may pay the same citizen for the period.
    Payer,
}

impl ReservationScope {
    /// The key that makes a reservation unique beside (citizen, program, period): empty
    /// when one payer holds it for everyone, the payer's client id when each payer holds
    /// its own.
    pub fn holder_key(self, client_id: &str) -> String {
        match self {
            ReservationScope::Citizen => String::new(),
            ReservationScope::Payer => client_id.to_owned(),
        }
    }
}

/// A program's period as its payroll names it (`2026-12`, `2026-Q4`, an event code):
/// 1 to 32 ASCII letters, digits, '-', '_' or '.'.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Period(String);

impl Period {
    pub fn parse(raw: &str) -> Result<Period, Rejection> {
        let ok = (1..=32).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            Ok(Period(raw.to_owned()))
        } else {
            Err(Rejection::field(
                Reason::ReservationPeriodInvalid,
                "reservation_period",
                "a period is 1 to 32 letters, digits, '-', '_' or '.' (for example 2026-12)",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One payment to reserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveItem {
    pub citizen: CitizenId,
    pub program_code: String,
    pub period: Period,
    /// See [`ReservationScope::holder_key`].
    pub holder_key: String,
}

impl ReserveItem {
    /// What makes the reservation unique.
    pub fn key(&self) -> (&str, &str, &str, &str) {
        (
            self.citizen.as_str(),
            &self.program_code,
            self.period.as_str(),
            &self.holder_key,
        )
    }
}

/// What reserving one payment came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// The caller holds it (taken now, or already its own).
    Held {
        reservation_id: Uuid,
        reserved_at: Timestamp,
    },
    /// Another payer holds it: pay nothing.
    Taken,
}

/// A request for a payment another payer had reserved, kept for investigators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateEntitlement {
    pub entitlement_id: Uuid,
    pub citizen: CitizenId,
    pub program_code: String,
    pub period: String,
    pub holder: String,
    pub claimant: String,
    pub reservation_id: Uuid,
    pub detected_at: Timestamp,
}

/// Which duplicate entitlements an investigator lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntitlementFilter {
    pub program_code: Option<String>,
    pub period: Option<String>,
    /// The 3-digit province code that starts the citizens' ids.
    pub province_code: Option<String>,
}

/// The reason recorded with a DUPLICATE_ENTITLEMENT_DETECTED event.
pub const DUPLICATE_ENTITLEMENT_REASON: &str = "payment already reserved by another payer";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_short_plain_names() {
        for ok in ["2026-12", "2026-Q4", "BAO-YAGI.2024", "x", &"9".repeat(32)] {
            assert!(Period::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "2026 12", "thang-12/2026", "tháng12", &"9".repeat(33)] {
            let refused = Period::parse(bad).unwrap_err();
            assert_eq!(refused.reason, Reason::ReservationPeriodInvalid, "{bad}");
            assert_eq!(refused.field.as_deref(), Some("reservation_period"));
        }
    }

    #[test]
    fn one_holder_per_citizen_unless_each_payer_holds_its_own() {
        assert_eq!(ReservationScope::Citizen.holder_key("vss-payroll"), "");
        assert_eq!(
            ReservationScope::Payer.holder_key("vss-payroll"),
            "vss-payroll"
        );
    }
}
