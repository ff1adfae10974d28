//! Person names, normalised the way Vietnamese banks print account holder names.
//!
//! The `NAME_MATCH` verification compares the holder name a provider reports with the
//! name the police sync registered for the citizen. The two never arrive in the same form:
//! the population platform has `Nguyễn Văn Đức` (maybe NFC, maybe NFD, depending on the
//! keyboard and the system that stored it), the bank's core has `NGUYEN VAN DUC`. Both
//! are reduced to the bank form by [`normalize_name`] before they are stored or compared,
//! so a comparison is plain string equality and can be done in SQL too.
//!
//! [`HolderName`] is a validated, normalised name as reported by a provider.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use unicode_normalization::char::{decompose_canonical, is_combining_mark};

use super::error::{Reason, Rejection};
use super::mask::mask_name;

/// The request field a holder name arrives in.
const FIELD: &str = "holder_name";

/// Longest holder name accepted, in characters after normalisation.
pub const MAX_LEN: usize = 100;

/// Longest raw input looked at, in bytes, so that a hostile request cannot make the
/// normaliser chew megabytes. Generous: a 100-letter Vietnamese name in NFD with two marks
/// per letter is about 500 bytes.
const MAX_RAW_BYTES: usize = 1024;

/// Reduces a name to the form banks print: Unicode NFD, combining marks (tones and
/// diacritics) removed, `Đ`/`đ` to `D`, upper case, runs of white space collapsed to one
/// space, trimmed. `"Nguyễn  Văn Đức"` becomes `"NGUYEN VAN DUC"`.
///
/// `Đ` has no Unicode decomposition, which is why it is mapped explicitly; so is `Ð`
/// (U+00D0, the Icelandic eth), which looks identical and is what legacy Vietnamese
/// encodings and some keyboards produce in its place. Characters outside Vietnamese are
/// left as they are (upper-cased); whether they are acceptable is [`HolderName`]'s call.
pub fn normalize_name(s: &str) -> String {
    // ASCII has nothing to decompose or map: upper-cased, it is already folded. Every
    // stored name is ASCII, and NAME_MATCH compares one with each record's holder name.
    if s.is_ascii() {
        return single_spaced(&s.to_ascii_uppercase());
    }
    // Each character decomposed on its own, its marks dropped: the same letters as
    // decomposing the whole text (NFD), whose only other step, reordering the marks that
    // follow a letter, reorders nothing that is kept (every character with a combining
    // class is a mark; tested below). The streaming NFD buffers and sorts each letter's
    // marks: 4,400 instructions per name of a SyncCitizens record (callgrind, 20 k records).
    let mut folded = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() {
            folded.push(c.to_ascii_uppercase());
            continue;
        }
        decompose_canonical(c, |d| {
            if !is_combining_mark(d) {
                folded.extend(d.to_uppercase().map(|u| match u {
                    'Đ' | 'Ð' => 'D',
                    other => other,
                }));
            }
        });
    }
    single_spaced(&folded)
}

/// The words of `s`, one space between each.
fn single_spaced(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// An account holder's name as a provider reports it, normalised by [`normalize_name`].
///
/// After normalisation it is 1-100 characters of `A-Z`, space, `'`, `-` and `.`, with at
/// least one letter: the character set banks print on cards and statements. Digits and
/// control characters are refused, since they mean the provider sent the wrong field.
///
/// Names are personal data too, so `Debug` and `Display` show initials only
/// (`N***** V** D**`); [`HolderName::as_str`] gives the full normalised name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HolderName(String);

impl HolderName {
    /// Normalises and validates a holder name; failures are [`Reason::HolderNameInvalid`].
    pub fn parse(s: &str) -> Result<HolderName, Rejection> {
        if s.len() > MAX_RAW_BYTES {
            return Err(invalid(format!(
                "holder name must be at most {MAX_LEN} characters"
            )));
        }
        if s.chars().any(char::is_control) {
            return Err(invalid(
                "holder name must not contain control characters (tabs, line breaks, ...)",
            ));
        }
        let normalized = normalize_name(s);
        if normalized.is_empty() {
            return Err(invalid("holder name is empty"));
        }
        if normalized.chars().any(|c| c.is_numeric()) {
            return Err(invalid("holder name must not contain digits"));
        }
        if !normalized
            .chars()
            .all(|c| c.is_ascii_uppercase() || matches!(c, ' ' | '\'' | '-' | '.'))
        {
            return Err(invalid(
                "holder name may contain only letters (Vietnamese or A-Z), spaces, apostrophes, hyphens and full stops",
            ));
        }
        if !normalized.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(invalid("holder name must contain at least one letter"));
        }
        let len = normalized.len();
        if len > MAX_LEN {
            return Err(invalid(format!(
                "holder name must be at most {MAX_LEN} characters after normalisation (got {len})"
            )));
        }
        Ok(HolderName(normalized))
    }

    /// The full normalised name, e.g. `NGUYEN VAN DUC`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Initials only, e.g. `N***** V** D**`: enough to tell records apart in a log.
    pub fn masked(&self) -> String {
        mask_name(&self.0)
    }
}

fn invalid(message: impl Into<String>) -> Rejection {
    Rejection::field(Reason::HolderNameInvalid, FIELD, message)
}

impl fmt::Debug for HolderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HolderName").field(&self.masked()).finish()
    }
}

impl fmt::Display for HolderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl FromStr for HolderName {
    type Err = Rejection;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HolderName::parse(s)
    }
}

impl TryFrom<String> for HolderName {
    type Error = Rejection;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        HolderName::parse(&s)
    }
}

impl From<HolderName> for String {
    fn from(n: HolderName) -> String {
        n.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicode_normalization::UnicodeNormalization;

    const NAMES: &[(&str, &str)] = &[
        ("Nguyễn Văn Đức", "NGUYEN VAN DUC"),
        ("Nguyễn  Văn Đức", "NGUYEN VAN DUC"),
        ("Trần Thị Thu Hà", "TRAN THI THU HA"),
        ("Lê  Ngọc   Ánh", "LE NGOC ANH"),
        ("Phạm Quốc Việt", "PHAM QUOC VIET"),
        ("Đặng Thùy Dương", "DANG THUY DUONG"),
        ("Hồ Xuân Hương", "HO XUAN HUONG"),
        ("Bùi Thị Ngọc Hân", "BUI THI NGOC HAN"),
        ("nguyễn văn đức", "NGUYEN VAN DUC"),
        ("NGUYỄN VĂN ĐỨC", "NGUYEN VAN DUC"),
        ("NGUYEN VAN DUC", "NGUYEN VAN DUC"),
        ("  Trương   Ưng  Ơn  ", "TRUONG UNG ON"),
        ("Ðỗ Mười", "DO MUOI"),
        ("Võ\u{a0}Thị\u{2003}Sáu", "VO THI SAU"),
    ];

    #[test]
    fn vietnamese_names_normalise_to_the_bank_form() {
        for (input, expected) in NAMES {
            assert_eq!(normalize_name(input), *expected, "{input:?}");
        }
    }

    #[test]
    fn ascii_names_take_the_short_way_to_the_same_form() {
        // What the decomposing path gives, for inputs the ASCII path now takes.
        for s in [
            "Nguyen Van An",
            "  nguyen\tvan \n an  ",
            "NGUYEN VAN AN",
            "o'brien-smith jr.",
            "a\u{b}b\u{c}c\rd",
            "",
            "   ",
            "x",
        ] {
            assert_eq!(normalize_name(s), by_whole_text_nfd(s), "{s:?}");
        }
        assert_eq!(normalize_name("  nguyen\tvan  an "), "NGUYEN VAN AN");
    }

    /// The normalisation as first written: the whole text decomposed (NFD, marks
    /// reordered), marks dropped, upper-cased, `Đ` mapped.
    fn by_whole_text_nfd(s: &str) -> String {
        let folded: String = s
            .nfd()
            .filter(|c| !is_combining_mark(*c))
            .flat_map(char::to_uppercase)
            .map(|c| match c {
                'Đ' | 'Ð' => 'D',
                other => other,
            })
            .collect();
        single_spaced(&folded)
    }

    #[test]
    fn decomposing_character_by_character_drops_only_what_reordering_would_move() {
        // NFD's reordering moves only characters of a non-zero combining class; if each
        // is a mark, the filter drops them all and the order they had cannot show.
        use unicode_normalization::char::canonical_combining_class;
        let unmarked: Vec<char> = (0..=char::MAX as u32)
            .filter_map(char::from_u32)
            .filter(|&c| canonical_combining_class(c) != 0 && !is_combining_mark(c))
            .collect();
        assert!(unmarked.is_empty(), "{unmarked:?}");
        // And every character alone, and beside a letter and marks out of order, folds
        // as the whole-text NFD folds it.
        for c in (0..=char::MAX as u32).filter_map(char::from_u32) {
            for s in [c.to_string(), format!("a{c}\u{301}\u{323}b")] {
                assert_eq!(normalize_name(&s), by_whole_text_nfd(&s), "{s:?}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_folds_as_the_whole_text_nfd_folds_it(s in "\\PC{0,40}") {
            proptest::prop_assert_eq!(normalize_name(&s), by_whole_text_nfd(&s));
        }
    }

    #[test]
    fn nfc_and_nfd_spellings_of_a_name_normalise_the_same() {
        for (input, expected) in NAMES {
            let nfc: String = input.nfc().collect();
            let nfd: String = input.nfd().collect();
            assert_eq!(normalize_name(&nfc), *expected, "NFC {input:?}");
            assert_eq!(normalize_name(&nfd), *expected, "NFD {input:?}");
        }
        let nfc: String = "Nguyễn Văn Đức".nfc().collect();
        let nfd: String = "Nguyễn Văn Đức".nfd().collect();
        assert_ne!(nfc, nfd, "the test needs two different encodings");
        assert_eq!(normalize_name(&nfc), normalize_name(&nfd));
    }

    #[test]
    fn holder_names_are_stored_normalised() {
        for (input, expected) in NAMES {
            let parsed = HolderName::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(parsed.as_str(), *expected, "{input:?}");
        }
    }

    #[test]
    fn differently_written_names_of_one_person_are_equal_holder_names() {
        let a = HolderName::parse("Nguyễn  Văn Đức").unwrap();
        let b = HolderName::parse("NGUYEN VAN DUC").unwrap();
        let c = HolderName::parse(&"nguyễn văn đức".nfd().collect::<String>()).unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
    }

    #[test]
    fn punctuation_that_banks_print_is_accepted() {
        let cases = [
            ("O'Brien Nguyễn", "O'BRIEN NGUYEN"),
            ("Trần-Lê Anh", "TRAN-LE ANH"),
            ("Nguyễn V. Đức", "NGUYEN V. DUC"),
            ("A", "A"),
        ];
        for (input, expected) in cases {
            assert_eq!(HolderName::parse(input).unwrap().as_str(), expected);
        }
    }

    #[test]
    fn malformed_holder_names_are_rejected() {
        let too_long = "A".repeat(MAX_LEN + 1);
        let far_too_long = "Ă".repeat(MAX_RAW_BYTES);
        let cases: &[&str] = &[
            "",
            "   ",
            "\u{a0}",
            "Nguyễn Văn 2",
            "Nguyen Van Duc 1990",
            "١٢٣",
            "Nguyễn\tVăn Đức",
            "Nguyễn Văn Đức\n",
            "Nguyễn\u{0}Văn",
            "Nguyễn\u{1b}[31m",
            "Nguyễn@Văn",
            "Nguyễn, Văn",
            "Nguyễn_Văn",
            "阮文德",
            "Иван",
            "Nguyễn\u{200b}Văn",
            "Søren",
            "...",
            "- '",
            &too_long,
            &far_too_long,
        ];
        for input in cases {
            let err = HolderName::parse(input).expect_err(input);
            assert_eq!(err.reason, Reason::HolderNameInvalid, "{input:?}");
            assert_eq!(err.field.as_deref(), Some("holder_name"), "{input:?}");
        }
    }

    #[test]
    fn a_name_of_exactly_one_hundred_characters_is_accepted() {
        let name = format!("{} {}", "Đ".repeat(49), "Ă".repeat(50));
        let parsed = HolderName::parse(&name).unwrap();
        assert_eq!(parsed.as_str().len(), MAX_LEN);
    }

    #[test]
    fn the_length_limit_counts_the_normalised_name_not_the_input() {
        // 90 letters of NFD Vietnamese (270 chars), with space runs that collapse away.
        let word = "ệ".nfd().collect::<String>().repeat(10);
        let name = vec![word; 9].join("     ");
        assert!(name.chars().count() > MAX_LEN);
        assert_eq!(HolderName::parse(&name).unwrap().as_str().len(), 98);
    }

    #[test]
    fn rejection_messages_never_contain_the_name() {
        for input in ["Nguyễn Văn 2", "Nguyễn@Văn", "Nguyễn\tVăn"] {
            let err = HolderName::parse(input).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(!text.to_uppercase().contains("NGUY"), "{text}");
        }
    }

    #[test]
    fn debug_and_display_show_initials_only() {
        let parsed = HolderName::parse("Nguyễn Văn Đức").unwrap();
        assert_eq!(parsed.masked(), "N***** V** D**");
        assert_eq!(parsed.to_string(), "N***** V** D**");
        assert_eq!(format!("{parsed:?}"), r#"HolderName("N***** V** D**")"#);
    }

    #[test]
    fn serde_round_trips_the_normalised_name_and_validates_on_the_way_in() {
        let parsed = HolderName::parse("Hồ Xuân Hương").unwrap();
        let json = serde_json::to_string(&parsed).unwrap();
        assert_eq!(json, r#""HO XUAN HUONG""#);
        assert_eq!(serde_json::from_str::<HolderName>(&json).unwrap(), parsed);
        assert!(serde_json::from_str::<HolderName>(r#""R2D2""#).is_err());
    }
}
