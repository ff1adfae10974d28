//! The registry's rules, with no I/O.
//!
//! Everything a client sends is parsed here into validated types (`CitizenId::parse`,
//! `Msisdn::parse`, ...), so the storage and transport layers only ever hold valid data.
//! The account state machine, the verification rules and the resolution decision are
//! pure functions over these types: the store feeds them what it read, inside its
//! transaction, and writes back what they decide.

pub mod account;
pub mod bank_account;
pub mod citizen_id;
pub mod error;
pub mod mask;
pub mod msisdn;
pub mod name;
pub mod resolve;
pub mod time;

pub use account::*;
pub use citizen_id::CitizenId;
pub use error::{Category, Reason, Rejection};
pub use name::HolderName;
pub use resolve::*;
pub use time::Timestamp;

/// At most this many accounts may be open (pending, verified or suspended) per citizen.
pub const MAX_OPEN_ACCOUNTS: usize = 10;

/// Longest free-text `reason` accepted with a change.
pub const MAX_REASON_LEN: usize = 500;

/// Longest verification evidence reference.
pub const MAX_EVIDENCE_LEN: usize = 200;

/// Checks a free-text field's length (in characters) and strips surrounding white space.
pub fn bounded_text(field: &str, value: &str, max: usize) -> Result<String, Rejection> {
    let value = value.trim();
    if value.chars().count() > max {
        return Err(Rejection::field(
            Reason::TextTooLong,
            field,
            format!("{field} must be at most {max} characters"),
        ));
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
