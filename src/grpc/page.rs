//! Paging as AIP-158 says: `page_size` (0 for the default, capped at the maximum,
//! negative refused) and opaque page tokens bound to the request they continue.
//!
//! A token carries a cursor (where the next page starts: a version, an id, a position)
//! and a fingerprint of the request's identity (the method and what it lists: a citizen,
//! an account). A token presented with another request (another citizen's list, another
//! method) does not match its fingerprint and is refused with PAGE_TOKEN_INVALID, so a
//! client can neither mix lists up nor learn anything by splicing tokens. Tokens are not
//! secret and not signed: a forged cursor only moves within the caller's own list.

use sha2::{Digest, Sha256};

use crate::domain::{Reason, Rejection};

/// Bytes of the request fingerprint kept in a token.
const FINGERPRINT: usize = 8;

/// The token format's version, first in every token.
const VERSION: &str = "p1";

/// What a list request is about: the method and the values that select the list.
pub struct Binding(Vec<String>);

impl Binding {
    pub fn new(method: &str) -> Binding {
        Binding(vec![method.to_owned()])
    }

    /// Adds one value that selects the list (a citizen id, an account key, a filter).
    pub fn with(mut self, part: impl ToString) -> Binding {
        self.0.push(part.to_string());
        self
    }

    fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        for part in &self.0 {
            hash.update(part.as_bytes());
            hash.update([0x1f]);
        }
        hex::encode(&hash.finalize()[..FINGERPRINT])
    }

    /// The token for the page after `cursor`.
    pub fn token(&self, cursor: &str) -> String {
        format!("{VERSION}{}{}", self.fingerprint(), hex::encode(cursor))
    }

    /// The cursor of `raw`, which must have been issued for this request; `None` for the
    /// first page (an empty token).
    pub fn cursor(&self, raw: &str) -> Result<Option<String>, Rejection> {
        if raw.is_empty() {
            return Ok(None);
        }
        let invalid = || {
            Rejection::field(
                Reason::PageTokenInvalid,
                "page_token",
                "page_token was not issued for this request; start again from the first page",
            )
        };
        let rest = raw.strip_prefix(VERSION).ok_or_else(invalid)?;
        let fingerprint = self.fingerprint();
        let cursor = rest
            .strip_prefix(fingerprint.as_str())
            .ok_or_else(invalid)?;
        let bytes = hex::decode(cursor).map_err(|_| invalid())?;
        String::from_utf8(bytes).map(Some).map_err(|_| invalid())
    }

    /// Like [`Binding::cursor`], parsed by `parse` (a malformed cursor is refused too).
    pub fn cursor_as<T>(
        &self,
        raw: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, Rejection> {
        match self.cursor(raw)? {
            None => Ok(None),
            Some(c) => parse(&c).map(Some).ok_or_else(|| {
                Rejection::field(
                    Reason::PageTokenInvalid,
                    "page_token",
                    "page_token is malformed; start again from the first page",
                )
            }),
        }
    }
}

impl Binding {
    /// The page out of `items`, read as `size + 1` to learn whether more follow, and the
    /// token for the next page (empty on the last one).
    pub fn page<T>(
        &self,
        mut items: Vec<T>,
        size: u32,
        cursor: impl Fn(&T) -> String,
    ) -> (Vec<T>, String) {
        let more = items.len() > size as usize;
        items.truncate(size as usize);
        let next = match (more, items.last()) {
            (true, Some(last)) => self.token(&cursor(last)),
            _ => String::new(),
        };
        (items, next)
    }
}

impl Binding {
    /// A page of `items`, a whole list read at once and ordered by a stable key: the
    /// items after the one the token names (by `key`), at most `size`, and the token for
    /// the next page. For lists short enough to read whole (a citizen's accounts, one
    /// account's claimants); a token naming an item no longer listed starts over.
    pub fn page_of<T>(
        &self,
        raw_token: &str,
        mut items: Vec<T>,
        size: u32,
        key: impl Fn(&T) -> String,
    ) -> Result<(Vec<T>, String), Rejection> {
        if let Some(after) = self.cursor(raw_token)? {
            let seen = items
                .iter()
                .position(|i| key(i) == after)
                .map_or(0, |i| i + 1);
            items.drain(..seen);
        }
        items.truncate(size as usize + 1);
        Ok(self.page(items, size, key))
    }
}

/// The page size to use: the default for 0, at most `max`; a negative size is refused.
pub fn page_size(requested: i32, default: u32, max: u32) -> Result<u32, Rejection> {
    match requested {
        0 => Ok(default),
        n if n < 0 => Err(Rejection::field(
            Reason::PageSizeInvalid,
            "page_size",
            "page_size must not be negative",
        )),
        n => Ok((n as u32).min(max)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_for_its_own_request_only() {
        let mine = Binding::new("ListAccessLog").with("001085000001");
        let other = Binding::new("ListAccessLog").with("001085000002");
        let token = mine.token("42");
        assert_eq!(mine.cursor(&token).unwrap().as_deref(), Some("42"));
        let refused = other.cursor(&token).unwrap_err();
        assert_eq!(refused.reason, Reason::PageTokenInvalid);
        assert_eq!(refused.field.as_deref(), Some("page_token"));
        let other_method = Binding::new("GetAccountHistory").with("001085000001");
        assert!(other_method.cursor(&token).is_err());
        assert_eq!(mine.cursor("").unwrap(), None);
        for junk in ["42", "p1", "p1zz", &format!("{token}0")] {
            assert!(mine.cursor(junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn page_sizes_default_cap_and_refuse_negatives() {
        assert_eq!(page_size(0, 100, 1000).unwrap(), 100);
        assert_eq!(page_size(5, 100, 1000).unwrap(), 5);
        assert_eq!(page_size(5000, 100, 1000).unwrap(), 1000);
        assert_eq!(
            page_size(-1, 100, 1000).unwrap_err().reason,
            Reason::PageSizeInvalid
        );
    }
}
