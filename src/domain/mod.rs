//! The registry's rules, with no I/O.
//!
//! Everything a client sends is parsed here into validated types (`CitizenId::parse`,
//! `Msisdn::parse`, ...), so the storage and transport layers only ever hold valid data.
//! The account state machine, the verification rules and the resolution decision are
//! pure functions over these types: the store feeds them what it read, inside its
//! transaction, and writes back what they decide.

pub mod account;
pub mod assertion;
pub mod bank_account;
pub mod citizen_id;
pub mod commands;
pub mod digest;
pub mod error;
pub mod event;
pub mod link;
pub mod mask;
pub mod msisdn;
pub mod name;
pub mod planner;
pub mod population;
pub mod reservation;
pub mod resolve;
pub mod time;
pub mod write;

pub use account::*;
pub use citizen_id::CitizenId;
pub use error::{Category, Reason, Rejection};
pub use name::HolderName;
pub use population::{CitizenLookup, LegacyId, RecordOutcome, SyncAccount, SyncCitizen};
pub use resolve::*;
pub use time::Timestamp;

/// At most this many accounts may be open (pending, verified or suspended) per citizen.
pub const MAX_OPEN_ACCOUNTS: usize = 10;

/// Longest free-text `reason` accepted with a change.
pub const MAX_REASON_LEN: usize = 500;

/// Longest verification evidence reference.
pub const MAX_EVIDENCE_LEN: usize = 200;

/// Checks a free-text field's length (in characters) and strips surrounding white space.
/// Control characters other than tab and line breaks are refused: NUL cannot be stored by
/// PostgreSQL at all, and the others only serve to hide text from a human reader.
pub fn bounded_text(field: &str, value: &str, max: usize) -> Result<String, Rejection> {
    let value = value.trim();
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(Rejection::field(
            Reason::TextInvalid,
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    if value.chars().count() > max {
        return Err(Rejection::field(
            Reason::TextTooLong,
            field,
            format!("{field} must be at most {max} characters"),
        )
        .with("limit", max.to_string()));
    }
    Ok(value.to_owned())
}

/// Like [`bounded_text`], and the value must not be empty.
pub fn required_text(field: &str, value: &str, max: usize) -> Result<String, Rejection> {
    let value = bounded_text(field, value, max)?;
    if value.is_empty() {
        return Err(Rejection::field(
            Reason::FieldRequired,
            field,
            format!("{field} is required"),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_text_refuses_control_characters_but_keeps_line_breaks() {
        for bad in ["\0", "before\0after", "a\u{1b}[31m", "\u{7f}"] {
            let err = bounded_text("reason", bad, 100).unwrap_err();
            assert_eq!(err.reason, Reason::TextInvalid, "{bad:?}");
            assert_eq!(err.field.as_deref(), Some("reason"));
        }
        assert_eq!(
            bounded_text("reason", " line 1\nline 2\t ", 100).unwrap(),
            "line 1\nline 2"
        );
        assert_eq!(
            bounded_text("reason", "Hồ sơ số 12", 100).unwrap(),
            "Hồ sơ số 12"
        );
    }

    #[test]
    fn free_text_is_bounded_in_characters_and_required_text_is_not_empty() {
        assert!(bounded_text("reason", &"đ".repeat(10), 10).is_ok());
        assert_eq!(
            bounded_text("reason", &"đ".repeat(11), 10)
                .unwrap_err()
                .reason,
            Reason::TextTooLong
        );
        assert_eq!(
            required_text("reason", "   ", 10).unwrap_err().reason,
            Reason::FieldRequired
        );
    }
}
