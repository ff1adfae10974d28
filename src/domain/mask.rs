//! How personal identifiers are shown when they must not be shown in full.
//!
//! Decree 13/2023/ND-CP treats citizen ids, account numbers and names as personal data:
//! they never appear unmasked in logs, traces or `Debug` output, and account numbers reach
//! a client unmasked only when it holds the full-resolution scope. Every masked form in the
//! registry is produced here, so there is exactly one definition of "masked" to review and
//! to keep consistent between the API, the logs and the audit trail.
//!
//! All functions count Unicode scalar values (`char`s), never bytes, so they cannot split
//! a character and always return a string of the same length as the one they were given
//! (except [`mask_name`], which also collapses white space).

/// The character that replaces every hidden character.
pub const MASK_CHAR: char = '*';

/// Replaces all but the last `visible` characters of `s` with `*`, keeping its length.
///
/// This is the mask for account numbers and phone numbers (last 4 visible): the tail is
/// what a citizen or a call-centre agent recognises ("the account ending 6789"), while the
/// rest is what would let someone pay into or impersonate the account. A string no longer
/// than `visible` is starred completely: showing all of a short value would not mask it.
pub fn mask_tail(s: &str, visible: usize) -> String {
    let len = s.chars().count();
    if len <= visible {
        return MASK_CHAR.to_string().repeat(len);
    }
    let hidden = len - visible;
    s.chars()
        .enumerate()
        .map(|(i, c)| if i < hidden { MASK_CHAR } else { c })
        .collect()
}

/// How many characters [`mask_citizen_id`] leaves visible at each end.
pub const CITIZEN_ID_VISIBLE_HEAD: usize = 3;
/// See [`CITIZEN_ID_VISIBLE_HEAD`].
pub const CITIZEN_ID_VISIBLE_TAIL: usize = 3;

/// Masks a citizen id as `001******345`: the first 3 and the last 3 characters visible.
///
/// The first three digits are the province code, which operators need to route and
/// reconcile per province (the sync digest is per province) and which is shared by
/// millions of people; the last three let a person confirm "yes, that is my id" without
/// the middle digits (sex, birth year and serial) being exposed. A string of 6 characters
/// or fewer is starred completely, so the mask never reveals a whole value.
pub fn mask_citizen_id(s: &str) -> String {
    let len = s.chars().count();
    if len <= CITIZEN_ID_VISIBLE_HEAD + CITIZEN_ID_VISIBLE_TAIL {
        return MASK_CHAR.to_string().repeat(len);
    }
    let tail_start = len - CITIZEN_ID_VISIBLE_TAIL;
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if i < CITIZEN_ID_VISIBLE_HEAD || i >= tail_start {
                c
            } else {
                MASK_CHAR
            }
        })
        .collect()
}

/// Masks a person's name word by word, keeping each word's first character:
/// `NGUYEN VAN DUC` becomes `N***** V** D**`.
///
/// Initials are enough to tell two records apart in a log line or an investigation queue,
/// and far less identifying than the full name. Runs of white space become one space.
pub fn mask_name(s: &str) -> String {
    s.split_whitespace()
        .map(|word| {
            let mut chars = word.chars();
            let first = chars.next().into_iter();
            first.chain(chars.map(|_| MASK_CHAR)).collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_tail_keeps_the_last_characters_and_the_length() {
        let cases = [
            ("0123456789", 4, "******6789"),
            ("ABC123456789", 4, "********6789"),
            ("12345", 4, "*2345"),
            ("1234", 4, "****"),
            ("123", 4, "***"),
            ("", 4, ""),
            ("123456", 0, "******"),
            ("123456", 1, "*****6"),
        ];
        for (input, visible, expected) in cases {
            let masked = mask_tail(input, visible);
            assert_eq!(masked, expected, "mask_tail({input:?}, {visible})");
            assert_eq!(masked.chars().count(), input.chars().count());
        }
    }

    #[test]
    fn mask_tail_counts_characters_not_bytes() {
        assert_eq!(mask_tail("Đức123", 2), "****23");
        assert_eq!(mask_tail("ĐứcĐức", 3), "***Đức");
    }

    #[test]
    fn mask_citizen_id_shows_the_province_and_the_last_three_digits() {
        let cases = [
            ("001090012345", "001******345"),
            ("079203000001", "079******001"),
            ("1234567", "123*567"),
            ("123456", "******"),
            ("12", "**"),
            ("", ""),
        ];
        for (input, expected) in cases {
            let masked = mask_citizen_id(input);
            assert_eq!(masked, expected, "mask_citizen_id({input:?})");
            assert_eq!(masked.chars().count(), input.chars().count());
        }
    }

    #[test]
    fn mask_name_keeps_only_the_initial_of_each_word() {
        let cases = [
            ("NGUYEN VAN DUC", "N***** V** D**"),
            ("LE  NGOC   ANH", "L* N*** A**"),
            ("A", "A"),
            ("O'NEIL ANH-THU", "O***** A******"),
            ("", ""),
            ("   ", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(mask_name(input), expected, "mask_name({input:?})");
        }
    }
}
