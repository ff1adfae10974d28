//! Records from the population platform (PopulationSync), validated, and the legacy
//! identifiers they bring.
//!
//! A sync record is the source's statement about one thing (a citizen, or one account a
//! citizen declared) at one version. The source's `record_id` names the statement and
//! `version` orders its revisions: the registry applies a record only if its version is
//! greater than the last one applied under that record id, so a replayed stream changes
//! nothing. These types are what the transport layer parses a record into; holding one
//! means every field rule passed, and only the rules that need the database remain.

use serde::{Deserialize, Serialize};

use super::{
    bounded_text, required_text, AccountKind, AccountRef, CitizenId, CitizenStatus, HolderName,
    Reason, Rejection, VerificationMethod,
};

/// Longest source record id.
pub const MAX_RECORD_ID_LEN: usize = 128;

/// Longest registered full name.
pub const MAX_FULL_NAME_LEN: usize = 200;

/// Most legacy ids on one citizen record.
pub const MAX_LEGACY_IDS: usize = 8;

/// A legacy 9-digit identity card number (CMND), kept as an alias of a citizen id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LegacyId(String);

impl LegacyId {
    pub fn parse(s: &str) -> Result<LegacyId, Rejection> {
        if s.len() == 9 && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(LegacyId(s.to_owned()))
        } else {
            Err(Rejection::field(
                Reason::LegacyIdInvalid,
                "legacy_ids",
                "a legacy CMND number is exactly 9 ASCII digits",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `12*****89`: enough to tell two apart in a log, not enough to look one up.
    pub fn masked(&self) -> String {
        super::mask::mask_tail(&self.0, 2)
    }
}

impl std::fmt::Debug for LegacyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

/// How a client names a citizen in a lookup: the 12-digit id, or a legacy 9-digit CMND
/// number that the population platform registered as an alias.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CitizenLookup {
    Id(CitizenId),
    Legacy(LegacyId),
}

impl CitizenLookup {
    /// A 9-character input is a legacy number; anything else must be a citizen id, and is
    /// refused with the citizen id's rules, its birth year judged against `current_year`.
    pub fn parse_with_year(s: &str, current_year: i32) -> Result<CitizenLookup, Rejection> {
        if s.len() == 9 {
            if let Ok(legacy) = LegacyId::parse(s) {
                return Ok(CitizenLookup::Legacy(legacy));
            }
        }
        CitizenId::parse_with_year(s, current_year).map(CitizenLookup::Id)
    }
}

/// Checks a record id and version, the pair that makes replay safe.
pub fn record_key(record_id: &str, version: i64) -> Result<(String, i64), Rejection> {
    let record_id = required_text("record_id", record_id, MAX_RECORD_ID_LEN)?;
    if version <= 0 {
        return Err(Rejection::field(
            Reason::SourceVersionInvalid,
            "version",
            "version must be a positive integer",
        ));
    }
    Ok((record_id, version))
}

/// Parses an ISO calendar date (`YYYY-MM-DD`).
pub fn iso_date(field: &str, s: &str) -> Result<time::Date, Rejection> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, format).map_err(|_| {
        Rejection::field(
            Reason::DateInvalid,
            field,
            format!("{field} must be a calendar date written YYYY-MM-DD"),
        )
    })
}

/// A citizen's facts as the population platform reports them, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncCitizen {
    pub record_id: String,
    pub version: i64,
    pub citizen_id: CitizenId,
    /// Normalised (upper case, no diacritics), as names are compared.
    pub full_name: Option<String>,
    pub date_of_birth: Option<String>,
    pub status: CitizenStatus,
    pub died_on: Option<String>,
    pub legacy_ids: Vec<LegacyId>,
}

impl SyncCitizen {
    /// Validates the fields of a citizen record. `today` bounds the dates.
    #[allow(clippy::too_many_arguments)]
    pub fn parse(
        record_id: &str,
        version: i64,
        citizen_id: &str,
        full_name: &str,
        date_of_birth: &str,
        status: Option<CitizenStatus>,
        date_of_death: &str,
        legacy_ids: &[String],
        today: time::Date,
    ) -> Result<SyncCitizen, Rejection> {
        let (record_id, version) = record_key(record_id, version)?;
        let citizen_id = CitizenId::parse(citizen_id)?;
        let full_name = bounded_text("full_name", full_name, MAX_FULL_NAME_LEN)?;
        let full_name = (!full_name.is_empty()).then(|| super::name::normalize_name(&full_name));
        let status = status.ok_or_else(|| {
            Rejection::field(
                Reason::CitizenStatusInvalid,
                "status",
                "status must be ACTIVE, DECEASED or ID_REVOKED",
            )
        })?;
        let born = match date_of_birth.trim() {
            "" => None,
            s => {
                let d = iso_date("date_of_birth", s)?;
                if d.year() != citizen_id.birth_year() || d > today {
                    return Err(Rejection::field(
                        Reason::DateInvalid,
                        "date_of_birth",
                        "date_of_birth must be in the birth year the citizen id encodes, \
                         and not in the future",
                    ));
                }
                Some(d)
            }
        };
        let died_on = match (status, date_of_death.trim()) {
            (CitizenStatus::Deceased, "") => {
                return Err(Rejection::field(
                    Reason::FieldRequired,
                    "date_of_death",
                    "a DECEASED record must carry the date of death",
                ))
            }
            (CitizenStatus::Deceased, s) => {
                let d = iso_date("date_of_death", s)?;
                if d > today || born.is_some_and(|b| d < b) {
                    return Err(Rejection::field(
                        Reason::DateInvalid,
                        "date_of_death",
                        "date_of_death must not be in the future nor before the birth",
                    ));
                }
                Some(d.to_string())
            }
            (_, "") => None,
            (_, _) => {
                return Err(Rejection::field(
                    Reason::DateInvalid,
                    "date_of_death",
                    "only a DECEASED record carries a date of death",
                ))
            }
        };
        if legacy_ids.len() > MAX_LEGACY_IDS {
            return Err(Rejection::field(
                Reason::LegacyIdInvalid,
                "legacy_ids",
                format!("at most {MAX_LEGACY_IDS} legacy numbers per citizen"),
            ));
        }
        let mut legacy: Vec<LegacyId> = legacy_ids
            .iter()
            .map(|s| LegacyId::parse(s.trim()))
            .collect::<Result<_, _>>()?;
        legacy.sort();
        legacy.dedup();
        Ok(SyncCitizen {
            record_id,
            version,
            citizen_id,
            full_name,
            date_of_birth: born.map(|d| d.to_string()),
            status,
            died_on,
            legacy_ids: legacy,
        })
    }
}

/// An account a citizen declared on VNeID, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncAccount {
    pub record_id: String,
    pub version: i64,
    pub citizen_id: CitizenId,
    pub kind: AccountKind,
    pub provider_code: String,
    pub account_ref: AccountRef,
    pub holder_name: Option<HolderName>,
    /// ISSUER_CONFIRMED or NAME_MATCH when the provider confirmed; `None`: declared only.
    pub confirmation: Option<VerificationMethod>,
    /// The declaration was withdrawn: close the account.
    pub removed: bool,
}

impl SyncAccount {
    /// The evidence reference recorded when a record verifies its account.
    pub fn evidence(&self) -> String {
        format!("vneid:{}@{}", self.record_id, self.version)
    }
}

/// What became of one record. A record sent again with the version its record id last
/// had is answered with the outcome recorded then (`Applied`, or `Rejected` with the
/// same refusal), and changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    Applied,
    /// Its version was older than the last acted on for its record id (or, for a
    /// citizen, not newer than the citizen's stored source version): nothing changed.
    Stale,
    Rejected(Rejection),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> time::Date {
        time::macros::date!(2026 - 11 - 28)
    }

    fn citizen(
        status: Option<CitizenStatus>,
        born: &str,
        died: &str,
    ) -> Result<SyncCitizen, Rejection> {
        SyncCitizen::parse(
            "r1",
            5,
            "001085012345",
            "Nguyễn  Văn Đức",
            born,
            status,
            died,
            &["123456789".into(), "123456789".into()],
            today(),
        )
    }

    #[test]
    fn a_citizen_record_is_normalised() {
        let c = citizen(Some(CitizenStatus::Active), "1985-03-02", "").unwrap();
        assert_eq!(c.full_name.as_deref(), Some("NGUYEN VAN DUC"));
        assert_eq!(c.legacy_ids.len(), 1, "duplicate legacy ids collapse");
        assert_eq!(c.date_of_birth.as_deref(), Some("1985-03-02"));
    }

    #[test]
    fn dates_must_agree_with_the_status_and_the_id() {
        let reason = |r: Result<SyncCitizen, Rejection>| r.unwrap_err().reason;
        assert_eq!(
            reason(citizen(Some(CitizenStatus::Deceased), "", "")),
            Reason::FieldRequired
        );
        assert_eq!(
            reason(citizen(Some(CitizenStatus::Active), "", "2020-01-01")),
            Reason::DateInvalid
        );
        assert_eq!(
            reason(citizen(Some(CitizenStatus::Active), "1986-01-01", "")),
            Reason::DateInvalid
        );
        assert_eq!(
            reason(citizen(
                Some(CitizenStatus::Deceased),
                "1985-01-01",
                "2027-01-01"
            )),
            Reason::DateInvalid
        );
        assert_eq!(
            reason(citizen(
                Some(CitizenStatus::Deceased),
                "1985-05-01",
                "1985-04-01"
            )),
            Reason::DateInvalid
        );
        assert_eq!(reason(citizen(None, "", "")), Reason::CitizenStatusInvalid);
        assert!(citizen(Some(CitizenStatus::Deceased), "1985-01-01", "2026-11-01").is_ok());
    }

    #[test]
    fn record_ids_and_versions_are_required() {
        assert_eq!(record_key("", 1).unwrap_err().reason, Reason::FieldRequired);
        assert_eq!(
            record_key("r", 0).unwrap_err().reason,
            Reason::SourceVersionInvalid
        );
        assert_eq!(
            record_key("r", -3).unwrap_err().reason,
            Reason::SourceVersionInvalid
        );
        assert!(record_key("r\0", 1).is_err());
    }

    #[test]
    fn lookups_accept_a_legacy_number_or_a_citizen_id() {
        assert!(matches!(
            CitizenLookup::parse_with_year("123456789", 2026),
            Ok(CitizenLookup::Legacy(_))
        ));
        assert!(matches!(
            CitizenLookup::parse_with_year("001085012345", 2026),
            Ok(CitizenLookup::Id(_))
        ));
        assert_eq!(
            CitizenLookup::parse_with_year("12345678", 2026)
                .unwrap_err()
                .reason,
            Reason::CitizenIdInvalidLength
        );
        assert_eq!(
            format!("{:?}", LegacyId::parse("123456789").unwrap()),
            "*******89"
        );
    }
}
