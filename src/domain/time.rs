//! Instants as whole microseconds since the Unix epoch (UTC).
//!
//! Both backends store instants as 64-bit integers: exact, totally ordered, and compared
//! the same way by PostgreSQL and SQLite, which matters for "as of" queries over history.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// An instant, in microseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Timestamp {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(since_epoch.as_micros() as i64)
    }

    pub fn micros(self) -> i64 {
        self.0
    }

    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(d.as_micros().min(i64::MAX as u128) as i64),
        )
    }

    /// The UTC calendar date of this instant (the epoch's for an out-of-range value).
    pub fn date(self) -> ::time::Date {
        ::time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1000)
            .map(|t| t.date())
            .unwrap_or(::time::Date::MIN)
    }

    /// RFC 3339 form, for humans and CLI output.
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1000;
        ::time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .and_then(|t| {
                t.format(&::time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| format!("@{}us", self.0))
    }

    /// Parses RFC 3339 (`2026-05-01T00:00:00Z`).
    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        let t = ::time::OffsetDateTime::parse(s, &::time::format_description::well_known::Rfc3339)
            .ok()?;
        Some(Timestamp((t.unix_timestamp_nanos() / 1000) as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_to_the_microsecond() {
        let t = Timestamp::parse_rfc3339("2026-05-01T08:30:00.123456Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-05-01T08:30:00.123456Z");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t));
    }

    #[test]
    fn plus_adds_whole_microseconds() {
        assert_eq!(
            Timestamp(10).plus(Duration::from_millis(1)),
            Timestamp(1010)
        );
    }
}
