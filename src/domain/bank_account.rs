//! Bank account numbers, the account reference of `BANK_ACCOUNT` payout accounts.
//!
//! Vietnamese banks print account numbers in groups (`0071 0001 23456`, `1903-5555-1234`)
//! and some use letters (virtual accounts, branch prefixes), and different banks use
//! different lengths. There is no national checksum to verify, so the registry checks
//! only what all NAPAS member banks share: 6 to 19 characters of digits and A-Z once the
//! grouping is removed. Normalising here means the same account written two ways is one
//! account for rule 1 ("one account, one person").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::{Reason, Rejection};
use super::mask::mask_tail;

/// The request field a bank account number arrives in.
const FIELD: &str = "account_ref";

/// Shortest account number accepted, after normalisation.
pub const MIN_LEN: usize = 6;

/// Longest account number accepted, after normalisation (the NAPAS field limit).
pub const MAX_LEN: usize = 19;

/// How many trailing characters stay visible when an account number is masked.
pub const VISIBLE_CHARS: usize = 4;

/// A normalised bank account number: 6-19 characters of `0-9` and `A-Z`.
///
/// Only [`BankAccountNumber::parse`] makes one. `Debug` and `Display` mask it
/// (`********6789`); [`BankAccountNumber::as_str`] gives the full number for storage and
/// for payers entitled to it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BankAccountNumber(String);

impl BankAccountNumber {
    /// Removes spaces and dashes, upper-cases, then requires 6-19 characters of
    /// `[0-9A-Z]`; anything else is refused with [`Reason::BankAccountInvalid`].
    pub fn parse(s: &str) -> Result<BankAccountNumber, Rejection> {
        let compact: String = s
            .chars()
            .filter(|c| !matches!(c, ' ' | '-'))
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if compact.is_empty() {
            return Err(invalid("bank account number is empty"));
        }
        if !compact
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
        {
            return Err(invalid(
                "bank account number may contain only digits 0-9 and letters A-Z (spaces and dashes are ignored)",
            ));
        }
        let len = compact.len();
        if !(MIN_LEN..=MAX_LEN).contains(&len) {
            return Err(invalid(format!(
                "bank account number must be {MIN_LEN} to {MAX_LEN} characters after removing spaces and dashes (got {len})"
            )));
        }
        Ok(BankAccountNumber(compact))
    }

    /// The full normalised number. Never log this.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number with only its last 4 characters visible, same length: `********6789`.
    pub fn masked(&self) -> String {
        mask_tail(&self.0, VISIBLE_CHARS)
    }
}

fn invalid(message: impl Into<String>) -> Rejection {
    Rejection::field(Reason::BankAccountInvalid, FIELD, message)
}

impl fmt::Debug for BankAccountNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BankAccountNumber")
            .field(&self.masked())
            .finish()
    }
}

impl fmt::Display for BankAccountNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl FromStr for BankAccountNumber {
    type Err = Rejection;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BankAccountNumber::parse(s)
    }
}

impl TryFrom<String> for BankAccountNumber {
    type Error = Rejection;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        BankAccountNumber::parse(&s)
    }
}

impl From<BankAccountNumber> for String {
    fn from(n: BankAccountNumber) -> String {
        n.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_numbers_are_normalised_by_removing_grouping_and_upper_casing() {
        let cases = [
            ("123456", "123456"),
            ("0071000123456", "0071000123456"),
            ("0071 0001 23456", "0071000123456"),
            ("1903-5555-1234", "190355551234"),
            (" 1903 - 5555 - 1234 ", "190355551234"),
            ("vcb123456789", "VCB123456789"),
            ("Ab12Cd34", "AB12CD34"),
            ("1234567890123456789", "1234567890123456789"),
            ("ABCDEF", "ABCDEF"),
        ];
        for (input, expected) in cases {
            let parsed =
                BankAccountNumber::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(parsed.as_str(), expected, "{input:?}");
        }
    }

    #[test]
    fn malformed_account_numbers_are_rejected() {
        let cases = [
            "",
            "  - - ",
            "12345",
            "12 3-45",
            "12345678901234567890",
            "1234.5678",
            "1234_5678",
            "1234/5678",
            "12345678\t",
            "12345678\n",
            "ĐÔNG123456",
            "１２３４５６７",
            "+84912345678",
        ];
        for input in cases {
            let err = BankAccountNumber::parse(input).expect_err(input);
            assert_eq!(err.reason, Reason::BankAccountInvalid, "{input:?}");
            assert_eq!(err.field.as_deref(), Some("account_ref"), "{input:?}");
        }
    }

    #[test]
    fn the_length_message_counts_characters_after_normalisation() {
        let err = BankAccountNumber::parse("12-345").unwrap_err();
        assert_eq!(
            err.message,
            "bank account number must be 6 to 19 characters after removing spaces and dashes (got 5)"
        );
    }

    #[test]
    fn rejection_messages_never_contain_the_number() {
        for input in ["98765", "9876543210987654321012", "98765.4321"] {
            let err = BankAccountNumber::parse(input).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(!text.contains("9876"), "{text}");
        }
    }

    #[test]
    fn masked_form_keeps_the_length_and_the_last_four_characters() {
        let cases = [
            ("0071000126789", "*********6789"),
            ("123456", "**3456"),
            ("vcb-12ab", "***12AB"),
        ];
        for (input, expected) in cases {
            let parsed = BankAccountNumber::parse(input).unwrap();
            assert_eq!(parsed.masked(), expected, "{input:?}");
            assert_eq!(parsed.to_string(), expected, "{input:?}");
        }
    }

    #[test]
    fn debug_output_does_not_contain_the_number() {
        let parsed = BankAccountNumber::parse("0071000126789").unwrap();
        let debug = format!("{parsed:?}");
        assert_eq!(debug, r#"BankAccountNumber("*********6789")"#);
        assert!(!debug.contains("007100012"));
    }

    #[test]
    fn serde_round_trips_the_normalised_number_and_validates_on_the_way_in() {
        let parsed: BankAccountNumber = "0071 0001 23456".parse().unwrap();
        let json = serde_json::to_string(&parsed).unwrap();
        assert_eq!(json, r#""0071000123456""#);
        assert_eq!(
            serde_json::from_str::<BankAccountNumber>(&json).unwrap(),
            parsed
        );
        assert!(serde_json::from_str::<BankAccountNumber>(r#""123""#).is_err());
    }
}
