//! Vietnamese mobile numbers (MSISDNs), the account reference of e-wallets and mobile money.
//!
//! The same phone number reaches the registry written many ways (`0912 345 678`,
//! `84912345678`, `+84 91.234.5678`), and rule 1 ("one account, one person") only works if
//! they all become one string. So every number is normalised to E.164, `+84` followed by
//! the 9-digit subscriber number, before it is stored or compared.
//!
//! Since the 2018 re-numbering, Vietnamese mobile numbers start with 3, 5, 7, 8 or 9 after
//! the country code. The network is deliberately *not* inferred from the prefix: numbers
//! are portable between networks, and a wallet is identified by its provider, not by the
//! carrier.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::{Reason, Rejection};
use super::mask::mask_tail;

/// The request field a wallet or mobile-money number arrives in.
const FIELD: &str = "account_ref";

/// Vietnam's E.164 country code, with the plus.
pub const COUNTRY_PREFIX: &str = "+84";

/// Digits after the country code.
pub const SUBSCRIBER_DIGITS: usize = 9;

/// How many trailing digits stay visible when a number is masked.
pub const VISIBLE_DIGITS: usize = 4;

/// The first subscriber digits of mobile number ranges (3x, 5x, 7x, 8x, 9x).
const MOBILE_LEADING_DIGITS: &[u8] = b"35789";

/// A Vietnamese mobile number in E.164 form: `+84` and 9 digits, the first of them
/// 3, 5, 7, 8 or 9.
///
/// Only [`Msisdn::parse`] makes one, so two equal numbers written differently compare
/// equal. `Debug` and `Display` mask it (`+84*****6789`); [`Msisdn::as_str`] gives the
/// full number for storage and for payers entitled to it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Msisdn(String);

impl Msisdn {
    /// Normalises a number written as `0xxxxxxxxx`, `84xxxxxxxxx` or `+84xxxxxxxxx`, with
    /// spaces, dots and dashes anywhere, to `+84xxxxxxxxx`.
    ///
    /// Anything else (another country code, a landline or short code length, a prefix
    /// that is not a mobile range, letters) is refused with [`Reason::MsisdnInvalid`].
    pub fn parse(s: &str) -> Result<Msisdn, Rejection> {
        let compact: String = s
            .chars()
            .filter(|c| !matches!(c, ' ' | '.' | '-'))
            .collect();
        if compact.is_empty() {
            return Err(invalid("phone number is empty"));
        }

        let subscriber = if let Some(rest) = compact.strip_prefix('+') {
            rest.strip_prefix("84").ok_or_else(|| {
                invalid("phone number must be a Vietnamese number (country code +84)")
            })?
        } else if compact.starts_with("84") && compact.len() == 2 + SUBSCRIBER_DIGITS {
            &compact[2..]
        } else if let Some(rest) = compact.strip_prefix('0') {
            rest
        } else {
            return Err(invalid("phone number must start with 0, 84 or +84"));
        };

        if !subscriber.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(
                "phone number may contain only digits, spaces, dots and dashes after the prefix",
            ));
        }
        if subscriber.len() != SUBSCRIBER_DIGITS {
            return Err(invalid(format!(
                "phone number must have {SUBSCRIBER_DIGITS} digits after 0 or +84 (got {})",
                subscriber.len()
            )));
        }
        if !MOBILE_LEADING_DIGITS.contains(&subscriber.as_bytes()[0]) {
            return Err(invalid(
                "phone number is not in a Vietnamese mobile range (the first digit after 0 or +84 must be 3, 5, 7, 8 or 9)",
            ));
        }
        Ok(Msisdn(format!("{COUNTRY_PREFIX}{subscriber}")))
    }

    /// The full number, `+84xxxxxxxxx`. Never log this.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number with only the country code and the last 4 digits visible:
    /// `+84*****6789`. The country code is kept because it says nothing about the person.
    pub fn masked(&self) -> String {
        let subscriber = &self.0[COUNTRY_PREFIX.len()..];
        format!("{COUNTRY_PREFIX}{}", mask_tail(subscriber, VISIBLE_DIGITS))
    }
}

fn invalid(message: impl Into<String>) -> Rejection {
    Rejection::field(Reason::MsisdnInvalid, FIELD, message)
}

impl fmt::Debug for Msisdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Msisdn").field(&self.masked()).finish()
    }
}

impl fmt::Display for Msisdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl FromStr for Msisdn {
    type Err = Rejection;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Msisdn::parse(s)
    }
}

impl TryFrom<String> for Msisdn {
    type Error = Rejection;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Msisdn::parse(&s)
    }
}

impl From<Msisdn> for String {
    fn from(m: Msisdn) -> String {
        m.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_accepted_way_of_writing_a_number_normalises_to_e164() {
        let cases = [
            ("0912345678", "+84912345678"),
            ("84912345678", "+84912345678"),
            ("+84912345678", "+84912345678"),
            ("0912 345 678", "+84912345678"),
            ("0912.345.678", "+84912345678"),
            ("0912-345-678", "+84912345678"),
            ("+84 91 234 5678", "+84912345678"),
            ("+84-912-345-678", "+84912345678"),
            ("84 912.345-678", "+84912345678"),
            (" 0912345678 ", "+84912345678"),
            ("+ 84 912345678", "+84912345678"),
            ("0312345678", "+84312345678"),
            ("0512345678", "+84512345678"),
            ("0712345678", "+84712345678"),
            ("0812345678", "+84812345678"),
            ("0987654321", "+84987654321"),
            // A subscriber number that itself starts with 84 is not mistaken for the
            // country code.
            ("0841234567", "+84841234567"),
            ("84841234567", "+84841234567"),
        ];
        for (input, expected) in cases {
            let parsed = Msisdn::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(parsed.as_str(), expected, "{input:?}");
        }
    }

    #[test]
    fn numbers_that_are_not_vietnamese_mobiles_are_rejected() {
        let cases = [
            "",
            " . - ",
            "+14155552671",
            "+4412345678",
            "+8512345678",
            "0084912345678",
            "912345678",
            "091234567",
            "09123456789",
            "+8491234567",
            "+849123456789",
            "8491234567",
            "+840912345678",
            "0212345678",
            "0112345678",
            "0412345678",
            "0612345678",
            "0012345678",
            "+84212345678",
            "+84012345678",
            "09123456a8",
            "O912345678",
            "+84 9l2 345 678",
            "0912_345_678",
            "(091) 2345678",
            "+84+912345678",
            "０９１２３４５６７８",
        ];
        for input in cases {
            let err = Msisdn::parse(input).expect_err(input);
            assert_eq!(err.reason, Reason::MsisdnInvalid, "{input:?}");
            assert_eq!(err.field.as_deref(), Some("account_ref"), "{input:?}");
        }
    }

    #[test]
    fn rejection_messages_never_contain_the_number() {
        for input in ["091234567", "+14155552671", "0212345678", "09123456a8"] {
            let err = Msisdn::parse(input).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(!text.contains(input), "{text}");
            assert!(!text.contains("1234567"), "{text}");
        }
    }

    #[test]
    fn masked_form_keeps_the_country_code_and_the_last_four_digits() {
        let parsed = Msisdn::parse("0912346789").unwrap();
        assert_eq!(parsed.masked(), "+84*****6789");
        assert_eq!(parsed.to_string(), "+84*****6789");
        assert_eq!(format!("{parsed:?}"), r#"Msisdn("+84*****6789")"#);
    }

    #[test]
    fn debug_output_does_not_contain_the_number() {
        let parsed = Msisdn::parse("+84 912 346 789").unwrap();
        let debug = format!("{:#?}", Some(&parsed));
        assert!(!debug.contains("912346789"), "{debug}");
        assert!(!debug.contains("91234"), "{debug}");
    }

    #[test]
    fn serde_round_trips_the_e164_form_and_validates_on_the_way_in() {
        let parsed: Msisdn = "0912345678".parse().unwrap();
        let json = serde_json::to_string(&parsed).unwrap();
        assert_eq!(json, r#""+84912345678""#);
        assert_eq!(serde_json::from_str::<Msisdn>(&json).unwrap(), parsed);
        assert!(serde_json::from_str::<Msisdn>(r#""+14155552671""#).is_err());
    }
}
