//! The 12-digit personal identification number (số định danh cá nhân, the CCCD number).
//!
//! Every record in the registry is keyed on it, so it is parsed exactly once, here, and
//! everything downstream holds a [`CitizenId`] that is known to be well formed. The number
//! is not a checksum-protected code: its structure (Decree 137/2015/ND-CP, province codes
//! of Circular 59/2021/TT-BCA) is all there is to check, and each rule that fails gets its
//! own [`Reason`] so a sync job can tell a truncated id from a mistyped province.
//!
//! ```text
//!   0 0 1   0   9 0   0 1 2 3 4 5
//!   └─┬─┘   │   └┬┘   └────┬────┘
//! province  │  year     serial
//!   code    century and sex
//! ```
//!
//! A citizen id is personal data: `Debug` and `Display` print it masked
//! (`001******345`); the raw value is available only through [`CitizenId::as_str`], for
//! storage and for callers entitled to it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::{Reason, Rejection};
use super::mask::mask_citizen_id;

/// The request field a citizen id arrives in.
const FIELD: &str = "citizen_id";

/// A citizen id is exactly this many ASCII digits.
pub const CITIZEN_ID_LEN: usize = 12;

/// The 63 province codes of Circular 59/2021/TT-BCA (Appendix I), code -> province, sorted
/// by code.
///
/// The code is the province where the birth was registered, fixed for life: the 2025
/// merger of provinces did not renumber existing ids, so these codes stay the valid ones.
pub const PROVINCES: &[(&str, &str)] = &[
    ("001", "Hà Nội"),
    ("002", "Hà Giang"),
    ("004", "Cao Bằng"),
    ("006", "Bắc Kạn"),
    ("008", "Tuyên Quang"),
    ("010", "Lào Cai"),
    ("011", "Điện Biên"),
    ("012", "Lai Châu"),
    ("014", "Sơn La"),
    ("015", "Yên Bái"),
    ("017", "Hòa Bình"),
    ("019", "Thái Nguyên"),
    ("020", "Lạng Sơn"),
    ("022", "Quảng Ninh"),
    ("024", "Bắc Giang"),
    ("025", "Phú Thọ"),
    ("026", "Vĩnh Phúc"),
    ("027", "Bắc Ninh"),
    ("030", "Hải Dương"),
    ("031", "Hải Phòng"),
    ("033", "Hưng Yên"),
    ("034", "Thái Bình"),
    ("035", "Hà Nam"),
    ("036", "Nam Định"),
    ("037", "Ninh Bình"),
    ("038", "Thanh Hóa"),
    ("040", "Nghệ An"),
    ("042", "Hà Tĩnh"),
    ("044", "Quảng Bình"),
    ("045", "Quảng Trị"),
    ("046", "Thừa Thiên Huế"),
    ("048", "Đà Nẵng"),
    ("049", "Quảng Nam"),
    ("051", "Quảng Ngãi"),
    ("052", "Bình Định"),
    ("054", "Phú Yên"),
    ("056", "Khánh Hòa"),
    ("058", "Ninh Thuận"),
    ("060", "Bình Thuận"),
    ("062", "Kon Tum"),
    ("064", "Gia Lai"),
    ("066", "Đắk Lắk"),
    ("067", "Đắk Nông"),
    ("068", "Lâm Đồng"),
    ("070", "Bình Phước"),
    ("072", "Tây Ninh"),
    ("074", "Bình Dương"),
    ("075", "Đồng Nai"),
    ("077", "Bà Rịa - Vũng Tàu"),
    ("079", "Hồ Chí Minh"),
    ("080", "Long An"),
    ("082", "Tiền Giang"),
    ("083", "Bến Tre"),
    ("084", "Trà Vinh"),
    ("086", "Vĩnh Long"),
    ("087", "Đồng Tháp"),
    ("089", "An Giang"),
    ("091", "Kiên Giang"),
    ("092", "Cần Thơ"),
    ("093", "Hậu Giang"),
    ("094", "Sóc Trăng"),
    ("095", "Bạc Liêu"),
    ("096", "Cà Mau"),
];

/// For each 3-digit code 000-999, its index in [`PROVINCES`], or `u8::MAX` where it is
/// not a province: a citizen id's first check is then one load, not a search (every id
/// of a payroll run's BatchResolve goes through it).
static PROVINCE_INDEX: [u8; 1000] = {
    let mut table = [u8::MAX; 1000];
    let mut i = 0;
    while i < PROVINCES.len() {
        match code_number(PROVINCES[i].0.as_bytes()) {
            Some(n) => table[n] = i as u8,
            None => panic!("a province code that is not three digits"),
        }
        i += 1;
    }
    table
};

/// The number 0-999 that three ASCII digits spell; `None` for anything else.
const fn code_number(code: &[u8]) -> Option<usize> {
    match *code {
        [a, b, c] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
            Some((a - b'0') as usize * 100 + (b - b'0') as usize * 10 + (c - b'0') as usize)
        }
        _ => None,
    }
}

/// The province a 3-digit code stands for, or `None` if the code is not one of the 63.
pub fn province_name(code: &str) -> Option<&'static str> {
    let n = code_number(code.as_bytes())?;
    PROVINCES
        .get(usize::from(PROVINCE_INDEX[n]))
        .map(|(_, name)| *name)
}

/// The sex recorded in digit 4 of a citizen id (even: male, odd: female).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Sex {
    Male,
    Female,
}

/// A well-formed 12-digit citizen id.
///
/// Only [`CitizenId::parse`] (and deserialisation, which goes through it) can make one, so
/// holding a `CitizenId` is proof that every structural rule passed. It serialises as the
/// plain digit string, the form the store keys on; `Debug` and `Display` print the masked
/// form so that a stray `{:?}` in a log line cannot leak it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CitizenId(String);

impl CitizenId {
    /// Parses a citizen id, judging "birth year in the future" against today's UTC year.
    pub fn parse(s: &str) -> Result<CitizenId, Rejection> {
        Self::parse_with_year(s, time::OffsetDateTime::now_utc().year())
    }

    /// Parses a citizen id as if the current year were `current_year`.
    ///
    /// The clock is a parameter so that the future-birth-year rule can be tested at its
    /// boundaries, and so that the API's lookups judge it by the app's clock (read once
    /// per request, or per BatchResolve batch) rather than by a read of the OS clock each.
    pub fn parse_with_year(s: &str, current_year: i32) -> Result<CitizenId, Rejection> {
        // Twelve bytes, all digits, is twelve characters: only a value that is not needs
        // its characters counted (for the message).
        let digits = s.len() == CITIZEN_ID_LEN && s.bytes().all(|b| b.is_ascii_digit());
        let len = if digits {
            CITIZEN_ID_LEN
        } else {
            s.chars().count()
        };
        if len != CITIZEN_ID_LEN {
            return Err(Rejection::field(
                Reason::CitizenIdInvalidLength,
                FIELD,
                format!(
                    "citizen id must be exactly {CITIZEN_ID_LEN} digits (got {len} characters)"
                ),
            ));
        }
        if !digits {
            return Err(Rejection::field(
                Reason::CitizenIdNotDigits,
                FIELD,
                "citizen id must contain only the ASCII digits 0-9",
            ));
        }
        // From here on the value is 12 ASCII bytes, so byte slicing is safe.
        if province_name(&s[..3]).is_none() {
            return Err(Rejection::field(
                Reason::CitizenIdInvalidProvince,
                FIELD,
                "citizen id digits 1-3 are not one of the 63 province codes of Circular 59/2021/TT-BCA",
            ));
        }
        if birth_year_of(s) > current_year {
            return Err(Rejection::field(
                Reason::CitizenIdBirthYearInFuture,
                FIELD,
                "citizen id digits 4-6 encode a birth year after the current year",
            ));
        }
        Ok(CitizenId(s.to_owned()))
    }

    /// Rebuilds an id read back from the registry's own store, without re-validating it.
    ///
    /// Every stored id went through [`CitizenId::parse`] on the way in; re-checking it on
    /// every read would cost time and could only turn our own data into an error. Never
    /// call this on anything a client sent. Should the store hold a corrupt value anyway,
    /// the accessors below do not panic: they answer with placeholders.
    pub fn from_stored(s: String) -> CitizenId {
        CitizenId(s)
    }

    /// The raw 12 digits, for storage and for callers entitled to see them. Never log this.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The raw 12 digits, moved out (for a message the caller sends on). Never log this.
    pub fn into_string(self) -> String {
        self.0
    }

    /// The integer the 12 digits spell (`001099012345` is 1,099,012,345), a key that
    /// compares and stores as one machine word; every id is exactly 12 digits, so padding
    /// the number back to 12 digits gives the id again. `None` only for a corrupt value
    /// from [`CitizenId::from_stored`].
    pub fn number(&self) -> Option<i64> {
        if self.0.len() != CITIZEN_ID_LEN || !self.0.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        self.0.parse().ok()
    }

    /// The form to show where the id must not appear in full: `001******345`.
    pub fn masked(&self) -> String {
        mask_citizen_id(&self.0)
    }

    /// The 3-digit province code of birth registration (digits 1-3); the sync digest and
    /// reports are partitioned by it.
    pub fn province_code(&self) -> &str {
        self.0.get(..3).unwrap_or_default()
    }

    /// The name of the province of birth registration.
    pub fn province_name(&self) -> &'static str {
        // parse() admitted only listed codes, so the lookup cannot fail.
        province_name(self.province_code()).unwrap_or_default()
    }

    /// The year of birth: the century from digit 4 plus digits 5-6.
    pub fn birth_year(&self) -> i32 {
        birth_year_of(&self.0)
    }

    /// The sex recorded in digit 4.
    pub fn sex(&self) -> Sex {
        if digit(&self.0, 3) % 2 == 0 {
            Sex::Male
        } else {
            Sex::Female
        }
    }
}

/// The decimal value of the ASCII digit at byte `i`; 0 where there is none (only possible
/// for a corrupt value from [`CitizenId::from_stored`]).
fn digit(s: &str, i: usize) -> i32 {
    match s.as_bytes().get(i) {
        Some(b) if b.is_ascii_digit() => i32::from(b - b'0'),
        _ => 0,
    }
}

/// Digit 4 gives the century in pairs (0/1: 1900s, 2/3: 2000s, ... 8/9: 2300s) and
/// digits 5-6 the year within it.
fn birth_year_of(s: &str) -> i32 {
    let century_base = 1900 + (digit(s, 3) / 2) * 100;
    century_base + digit(s, 4) * 10 + digit(s, 5)
}

impl fmt::Debug for CitizenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CitizenId").field(&self.masked()).finish()
    }
}

impl fmt::Display for CitizenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl FromStr for CitizenId {
    type Err = Rejection;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CitizenId::parse(s)
    }
}

impl TryFrom<String> for CitizenId {
    type Error = Rejection;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        CitizenId::parse(&s)
    }
}

impl From<CitizenId> for String {
    fn from(id: CitizenId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YEAR: i32 = 2026;

    /// A valid-looking id from its parts, with a fixed serial.
    fn id(province: &str, century_sex: u8, yy: u8) -> String {
        format!("{province}{century_sex}{yy:02}012345")
    }

    fn reason_of(s: &str, year: i32) -> Reason {
        CitizenId::parse_with_year(s, year)
            .expect_err("should have been rejected")
            .reason
    }

    #[test]
    fn there_are_exactly_63_province_codes_sorted_and_unique() {
        assert_eq!(PROVINCES.len(), 63);
        for pair in PROVINCES.windows(2) {
            assert!(
                pair[0].0 < pair[1].0,
                "{} is not before {}",
                pair[0].0,
                pair[1].0
            );
        }
        for (code, name) in PROVINCES {
            assert_eq!(code.len(), 3);
            assert!(code.bytes().all(|b| b.is_ascii_digit()));
            assert!(!name.is_empty());
        }
    }

    #[test]
    fn the_number_of_an_id_is_the_integer_its_digits_spell_and_pads_back_to_the_id() {
        let ids = ["001099012345", "096199000001", "079000000000"];
        for raw in ids {
            let parsed = CitizenId::parse_with_year(raw, YEAR).expect(raw);
            let n = parsed.number().expect("a parsed id has a number");
            assert_eq!(format!("{n:012}"), raw);
        }
        assert_eq!(
            CitizenId::parse_with_year("001099012345", YEAR)
                .unwrap()
                .number(),
            Some(1_099_012_345)
        );
        // Distinct ids, distinct numbers: the leading zeros carry no information.
        let numbers: std::collections::BTreeSet<i64> = ids
            .iter()
            .map(|raw| CitizenId::from_stored((*raw).to_owned()).number().unwrap())
            .collect();
        assert_eq!(numbers.len(), ids.len());
        // A corrupt stored value has none.
        for corrupt in [
            "",
            "00109901234",
            "0010990123456",
            "00109901234x",
            "+01099012345",
        ] {
            assert_eq!(
                CitizenId::from_stored(corrupt.to_owned()).number(),
                None,
                "{corrupt}"
            );
        }
    }

    #[test]
    fn every_listed_province_code_is_accepted() {
        for (code, name) in PROVINCES {
            let parsed = CitizenId::parse_with_year(&id(code, 0, 90), YEAR)
                .unwrap_or_else(|e| panic!("{code} ({name}) rejected: {e}"));
            assert_eq!(parsed.province_code(), *code);
            assert_eq!(parsed.province_name(), *name);
        }
    }

    #[test]
    fn every_unlisted_province_code_is_rejected_with_the_province_reason() {
        let mut rejected = 0;
        for n in 0..=999 {
            let code = format!("{n:03}");
            if province_name(&code).is_some() {
                continue;
            }
            assert_eq!(
                reason_of(&id(&code, 0, 90), YEAR),
                Reason::CitizenIdInvalidProvince,
                "code {code}"
            );
            rejected += 1;
        }
        assert_eq!(rejected, 1000 - 63);
    }

    #[test]
    fn province_name_answers_every_code_as_the_list_does() {
        for n in 0..1000 {
            let code = format!("{n:03}");
            let listed = PROVINCES
                .iter()
                .find(|(c, _)| *c == code)
                .map(|(_, name)| *name);
            assert_eq!(province_name(&code), listed, "{code}");
        }
        assert_eq!(province_name("0a1"), None);
        assert_eq!(province_name("0011"), None);
    }

    #[test]
    fn province_name_knows_the_first_and_last_codes_and_nothing_else() {
        let cases = [
            ("001", Some("Hà Nội")),
            ("079", Some("Hồ Chí Minh")),
            ("096", Some("Cà Mau")),
            ("000", None),
            ("003", None),
            ("097", None),
            ("100", None),
            ("01", None),
            ("", None),
        ];
        for (code, expected) in cases {
            assert_eq!(province_name(code), expected, "{code:?}");
        }
    }

    #[test]
    fn malformed_ids_are_rejected_with_the_rule_that_failed() {
        let cases = [
            ("", Reason::CitizenIdInvalidLength),
            ("00109001234", Reason::CitizenIdInvalidLength),
            ("0010900123456", Reason::CitizenIdInvalidLength),
            (" 001090012345", Reason::CitizenIdInvalidLength),
            ("001090012345 ", Reason::CitizenIdInvalidLength),
            ("123456789", Reason::CitizenIdInvalidLength),
            ("00109001234a", Reason::CitizenIdNotDigits),
            ("001 90012345", Reason::CitizenIdNotDigits),
            ("-01090012345", Reason::CitizenIdNotDigits),
            ("+01090012345", Reason::CitizenIdNotDigits),
            // Fullwidth digits: 12 characters, none of them ASCII.
            ("００１０９００１２３４５", Reason::CitizenIdNotDigits),
            ("00109001234٥", Reason::CitizenIdNotDigits),
            ("000090012345", Reason::CitizenIdInvalidProvince),
            ("003090012345", Reason::CitizenIdInvalidProvince),
            ("097090012345", Reason::CitizenIdInvalidProvince),
            ("999090012345", Reason::CitizenIdInvalidProvince),
            ("001227012345", Reason::CitizenIdBirthYearInFuture),
            ("001400012345", Reason::CitizenIdBirthYearInFuture),
            ("001999912345", Reason::CitizenIdBirthYearInFuture),
        ];
        for (input, expected) in cases {
            let err = CitizenId::parse_with_year(input, YEAR).expect_err(input);
            assert_eq!(err.reason, expected, "{input:?}");
            assert_eq!(err.field.as_deref(), Some("citizen_id"), "{input:?}");
        }
    }

    #[test]
    fn the_length_message_says_how_many_characters_were_given() {
        let err = CitizenId::parse_with_year("00109001234", YEAR).unwrap_err();
        assert_eq!(
            err.message,
            "citizen id must be exactly 12 digits (got 11 characters)"
        );
    }

    #[test]
    fn rejection_messages_never_contain_the_input() {
        let inputs = [
            "00109001234",
            "00109001234a",
            "097090012345",
            "001227012345",
        ];
        for input in inputs {
            let err = CitizenId::parse_with_year(input, YEAR).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(!text.contains(input), "{text}");
            assert!(!text.contains(&input[..6]), "{text}");
        }
    }

    #[test]
    fn century_digit_and_year_give_the_birth_year_and_sex() {
        let cases = [
            (0, 0, 1900, Sex::Male),
            (1, 99, 1999, Sex::Female),
            (0, 90, 1990, Sex::Male),
            (2, 0, 2000, Sex::Male),
            (3, 15, 2015, Sex::Female),
            (2, 26, 2026, Sex::Male),
            (3, 26, 2026, Sex::Female),
        ];
        for (century_sex, yy, year, sex) in cases {
            let parsed = CitizenId::parse_with_year(&id("001", century_sex, yy), YEAR)
                .unwrap_or_else(|e| panic!("{century_sex}/{yy}: {e}"));
            assert_eq!(parsed.birth_year(), year, "{century_sex}/{yy}");
            assert_eq!(parsed.sex(), sex, "{century_sex}/{yy}");
        }
    }

    #[test]
    fn a_birth_year_equal_to_the_current_year_is_accepted_and_the_next_one_is_not() {
        let cases = [
            (2, 26, 2026, true),
            (2, 27, 2026, false),
            (3, 27, 2026, false),
            (2, 27, 2027, true),
            (2, 99, 2099, true),
            (4, 0, 2099, false),
            (4, 0, 2100, true),
            (5, 1, 2100, false),
            (6, 0, 2200, true),
            (8, 0, 2300, true),
            (9, 0, 2299, false),
        ];
        for (century_sex, yy, current_year, accepted) in cases {
            let result = CitizenId::parse_with_year(&id("079", century_sex, yy), current_year);
            match (accepted, result) {
                (true, Ok(parsed)) => assert!(parsed.birth_year() <= current_year),
                (false, Err(e)) => assert_eq!(e.reason, Reason::CitizenIdBirthYearInFuture),
                (accepted, result) => panic!(
                    "{century_sex}/{yy} in {current_year}: expected accepted={accepted}, got {result:?}"
                ),
            }
        }
    }

    #[test]
    fn the_high_centuries_decode_to_their_years_and_sexes() {
        let cases = [
            (4, 2100, Sex::Male),
            (5, 2100, Sex::Female),
            (6, 2200, Sex::Male),
            (7, 2200, Sex::Female),
            (8, 2300, Sex::Male),
            (9, 2300, Sex::Female),
        ];
        for (century_sex, year, sex) in cases {
            let parsed = CitizenId::parse_with_year(&id("001", century_sex, 0), 2399).unwrap();
            assert_eq!((parsed.birth_year(), parsed.sex()), (year, sex));
        }
    }

    #[test]
    fn parse_uses_the_real_clock_and_accepts_someone_born_in_1990() {
        let parsed = CitizenId::parse("001090012345").unwrap();
        assert_eq!(parsed.birth_year(), 1990);
        assert!(CitizenId::parse("001999012345").is_err());
        assert_eq!(
            "079203000001".parse::<CitizenId>().unwrap().birth_year(),
            2003
        );
    }

    #[test]
    fn an_id_from_the_store_is_taken_as_is_and_a_corrupt_one_does_not_panic() {
        let stored = CitizenId::from_stored("079203000001".to_owned());
        assert_eq!(
            stored,
            CitizenId::parse_with_year("079203000001", YEAR).unwrap()
        );
        let corrupt = CitizenId::from_stored("12".to_owned());
        assert_eq!(corrupt.province_code(), "");
        assert_eq!(corrupt.province_name(), "");
        assert_eq!(corrupt.birth_year(), 1900);
        assert_eq!(corrupt.sex(), Sex::Male);
        assert_eq!(corrupt.masked(), "**");
    }

    #[test]
    fn the_masked_form_shows_the_province_and_the_last_three_digits() {
        let parsed = CitizenId::parse_with_year("001090012345", YEAR).unwrap();
        assert_eq!(parsed.masked(), "001******345");
        assert_eq!(parsed.to_string(), "001******345");
        assert_eq!(parsed.as_str(), "001090012345");
    }

    #[test]
    fn debug_output_does_not_contain_the_raw_id() {
        let parsed = CitizenId::parse_with_year("001090012345", YEAR).unwrap();
        let debug = format!("{parsed:?}");
        assert_eq!(debug, r#"CitizenId("001******345")"#);
        assert!(!debug.contains("001090012345"));
        let pretty = format!("{:#?}", Some(&parsed));
        assert!(!pretty.contains("090012"), "{pretty}");
    }

    #[test]
    fn serde_round_trips_the_raw_digits_and_validates_on_the_way_in() {
        let parsed = CitizenId::parse_with_year("079203000001", YEAR).unwrap();
        let json = serde_json::to_string(&parsed).unwrap();
        assert_eq!(json, r#""079203000001""#);
        let back: CitizenId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, parsed);
        assert!(serde_json::from_str::<CitizenId>(r#""000203000001""#).is_err());
        assert!(serde_json::from_str::<CitizenId>(r#""12345""#).is_err());
    }
}
