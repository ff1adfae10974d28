//! CSV files of population-sync records: citizens and declared accounts, written and read
//! one record at a time.
//!
//! These are the files a data-sync job exchanges with the registry (and what
//! [`super::demo`] populations are saved as), so they are plain enough to open in a
//! spreadsheet: UTF-8, a header row, one record per line, enum values spelled out.
//!
//! Citizens:
//!
//! ```text
//! record_id,version,citizen_id,full_name,date_of_birth,status,date_of_death,legacy_ids
//! C0000000001,1767225600000001,001085012345,"Nguyễn Văn Đức",1985-03-02,ACTIVE,,123456789;987654321
//! ```
//!
//! `status` is `ACTIVE`, `DECEASED` or `ID_REVOKED`; `legacy_ids` are joined with `;` (empty
//! when there are none); absent dates are empty.
//!
//! Accounts:
//!
//! ```text
//! record_id,version,citizen_id,kind,provider_code,account_ref,holder_name,confirmation,removed
//! A0000000001-0,1767225600000001,001085012345,BANK_ACCOUNT,970436,0071000123456,NGUYEN VAN DUC,ISSUER_CONFIRMED,false
//! ```
//!
//! `kind` is `BANK_ACCOUNT`, `EWALLET` or `MOBILE_MONEY`; `confirmation` is empty (none
//! yet), `NAME_MATCH` or `ISSUER_CONFIRMED`; `removed` is `true` or `false` (empty reads as
//! `false`).
//!
//! This module converts formats only. It is strict about the *format* (the header must be
//! exactly the one above, an enum value it does not know is an error rather than
//! "unspecified", a version must be an integer) and leaves the *domain* rules (is the
//! citizen id valid, is the date of death after the birth) to the registry, which checks
//! every record it is sent.
//!
//! The readers stream: they hold one record at a time, whatever the size of the file. A
//! malformed line is reported as an error naming the line and the column, and reading goes
//! on with the next line, so one bad line does not hide the rest of the file.

use std::fmt;
use std::io::{Read, Write};

use anyhow::{bail, Context};

use crate::grpc::convert::{date_in, date_out};
use crate::proto;

/// The header of a citizens file, in column order.
pub const CITIZEN_COLUMNS: [&str; 8] = [
    "record_id",
    "version",
    "citizen_id",
    "full_name",
    "date_of_birth",
    "status",
    "date_of_death",
    "legacy_ids",
];

/// The header of an accounts file, in column order.
pub const ACCOUNT_COLUMNS: [&str; 9] = [
    "record_id",
    "version",
    "citizen_id",
    "kind",
    "provider_code",
    "account_ref",
    "holder_name",
    "confirmation",
    "removed",
];

/// Separates legacy ids within the `legacy_ids` column.
pub const LEGACY_ID_SEPARATOR: char = ';';

/// A line of a CSV file that could not be read.
///
/// `line` counts data lines from 1 (the header is line 0), the same numbering as the
/// records the readers yield; `file_line` is the physical line in the file where the record
/// starts (the header is file line 1), which differs when a quoted field spans lines.
#[derive(Debug, thiserror::Error)]
pub struct CsvError {
    /// Data line number, 1-based; 0 for the header.
    pub line: u64,
    /// Physical line in the file where the record starts, when known.
    pub file_line: Option<u64>,
    /// The column at fault, when one is (`None` for a wrong column count or an I/O error).
    pub column: Option<&'static str>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str("header")?;
        } else {
            write!(f, "line {}", self.line)?;
        }
        if let Some(file_line) = self.file_line {
            write!(f, " (file line {file_line})")?;
        }
        if let Some(column) = self.column {
            write!(f, ", column {column}")?;
        }
        write!(f, ": {}", self.message)
    }
}

// ---------------------------------------------------------------------------------------
// Enum spellings
// ---------------------------------------------------------------------------------------

fn status_text(status: i32) -> Option<&'static str> {
    match proto::CitizenStatus::try_from(status).ok()? {
        proto::CitizenStatus::Active => Some("ACTIVE"),
        proto::CitizenStatus::Deceased => Some("DECEASED"),
        proto::CitizenStatus::IdRevoked => Some("ID_REVOKED"),
        proto::CitizenStatus::Unspecified => None,
    }
}

fn parse_status(s: &str) -> Option<proto::CitizenStatus> {
    match s {
        "ACTIVE" => Some(proto::CitizenStatus::Active),
        "DECEASED" => Some(proto::CitizenStatus::Deceased),
        "ID_REVOKED" => Some(proto::CitizenStatus::IdRevoked),
        _ => None,
    }
}

fn kind_text(kind: i32) -> Option<&'static str> {
    match proto::AccountKind::try_from(kind).ok()? {
        proto::AccountKind::BankAccount => Some("BANK_ACCOUNT"),
        proto::AccountKind::Ewallet => Some("EWALLET"),
        proto::AccountKind::MobileMoney => Some("MOBILE_MONEY"),
        proto::AccountKind::Unspecified => None,
    }
}

fn parse_kind(s: &str) -> Option<proto::AccountKind> {
    match s {
        "BANK_ACCOUNT" => Some(proto::AccountKind::BankAccount),
        "EWALLET" => Some(proto::AccountKind::Ewallet),
        "MOBILE_MONEY" => Some(proto::AccountKind::MobileMoney),
        _ => None,
    }
}

fn confirmation_text(confirmation: i32) -> Option<&'static str> {
    match proto::VerificationMethod::try_from(confirmation).ok()? {
        proto::VerificationMethod::Unspecified => Some(""),
        proto::VerificationMethod::NameMatch => Some("NAME_MATCH"),
        proto::VerificationMethod::IssuerConfirmed => Some("ISSUER_CONFIRMED"),
        proto::VerificationMethod::VneidDeclared => Some("VNEID_DECLARED"),
        // Population sync cannot relay an in-person verification.
        proto::VerificationMethod::InPerson => None,
    }
}

fn parse_confirmation(s: &str) -> Option<proto::VerificationMethod> {
    match s {
        "" => Some(proto::VerificationMethod::Unspecified),
        "NAME_MATCH" => Some(proto::VerificationMethod::NameMatch),
        "ISSUER_CONFIRMED" => Some(proto::VerificationMethod::IssuerConfirmed),
        "VNEID_DECLARED" => Some(proto::VerificationMethod::VneidDeclared),
        _ => None,
    }
}

fn parse_removed(s: &str) -> Option<bool> {
    match s {
        "" | "false" => Some(false),
        "true" => Some(true),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Writers
// ---------------------------------------------------------------------------------------

/// Writes [`proto::CitizenRecord`]s as a citizens CSV file.
///
/// The header is written with the first record, or by [`CitizenWriter::finish`] if there is
/// none, so an empty population still makes a well-formed file. Output is buffered: call
/// `finish` to flush it and get the underlying writer back.
pub struct CitizenWriter<W: Write> {
    inner: csv::Writer<W>,
    header_written: bool,
}

impl<W: Write> CitizenWriter<W> {
    pub fn new(w: W) -> Self {
        CitizenWriter {
            inner: csv::Writer::from_writer(w),
            header_written: false,
        }
    }

    /// Writes one record. Refuses (without writing anything) a status that has no spelling
    /// in the file format (unspecified or unknown) and a legacy id that is empty or contains
    /// the `;` separator, since either would not read back as the same record.
    pub fn write(&mut self, record: &proto::CitizenRecord) -> anyhow::Result<()> {
        let status = status_text(record.status).with_context(|| {
            format!(
                "citizen record {:?}: status {} cannot be written (expected ACTIVE, DECEASED or ID_REVOKED)",
                record.record_id, record.status
            )
        })?;
        if let Some(bad) = record
            .legacy_ids
            .iter()
            .find(|id| id.is_empty() || id.contains(LEGACY_ID_SEPARATOR))
        {
            bail!(
                "citizen record {:?}: legacy id {:?} cannot be written (empty or contains '{}')",
                record.record_id,
                bad,
                LEGACY_ID_SEPARATOR
            );
        }
        let legacy_ids = record.legacy_ids.join(&LEGACY_ID_SEPARATOR.to_string());
        let version = record.version.to_string();
        let born = date_in(record.date_of_birth.as_ref());
        let died = date_in(record.date_of_death.as_ref());
        self.ensure_header()?;
        self.inner.write_record([
            record.record_id.as_str(),
            version.as_str(),
            record.citizen_id.as_str(),
            record.full_name.as_str(),
            born.as_str(),
            status,
            died.as_str(),
            legacy_ids.as_str(),
        ])?;
        Ok(())
    }

    /// Writes the header if no record was written, flushes, and returns the writer.
    pub fn finish(mut self) -> anyhow::Result<W> {
        self.ensure_header()?;
        self.inner.flush()?;
        Ok(self.inner.into_inner().map_err(|e| e.into_error())?)
    }

    fn ensure_header(&mut self) -> anyhow::Result<()> {
        if !self.header_written {
            self.inner.write_record(CITIZEN_COLUMNS)?;
            self.header_written = true;
        }
        Ok(())
    }
}

/// Writes [`proto::AccountRecord`]s as an accounts CSV file. Same conventions as
/// [`CitizenWriter`].
pub struct AccountWriter<W: Write> {
    inner: csv::Writer<W>,
    header_written: bool,
}

impl<W: Write> AccountWriter<W> {
    pub fn new(w: W) -> Self {
        AccountWriter {
            inner: csv::Writer::from_writer(w),
            header_written: false,
        }
    }

    /// Writes one record. Refuses (without writing anything) a kind or a confirmation that
    /// has no spelling in the file format.
    pub fn write(&mut self, record: &proto::AccountRecord) -> anyhow::Result<()> {
        let kind = kind_text(record.kind).with_context(|| {
            format!(
                "account record {:?}: kind {} cannot be written (expected BANK_ACCOUNT, EWALLET or MOBILE_MONEY)",
                record.record_id, record.kind
            )
        })?;
        let confirmation = confirmation_text(record.verification_method).with_context(|| {
            format!(
                "account record {:?}: confirmation {} cannot be written",
                record.record_id, record.verification_method
            )
        })?;
        let version = record.version.to_string();
        self.ensure_header()?;
        self.inner.write_record([
            record.record_id.as_str(),
            version.as_str(),
            record.citizen_id.as_str(),
            kind,
            record.provider_code.as_str(),
            record.account_ref.as_str(),
            record.holder_name.as_str(),
            confirmation,
            if record.removed { "true" } else { "false" },
        ])?;
        Ok(())
    }

    /// Writes the header if no record was written, flushes, and returns the writer.
    pub fn finish(mut self) -> anyhow::Result<W> {
        self.ensure_header()?;
        self.inner.flush()?;
        Ok(self.inner.into_inner().map_err(|e| e.into_error())?)
    }

    fn ensure_header(&mut self) -> anyhow::Result<()> {
        if !self.header_written {
            self.inner.write_record(ACCOUNT_COLUMNS)?;
            self.header_written = true;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Readers
// ---------------------------------------------------------------------------------------

/// Reads a citizens CSV file lazily: one `(data line number, record)` per line, or the error
/// of a line that could not be read. The first item is an error if the header is not
/// exactly [`CITIZEN_COLUMNS`]; nothing is read after a bad header or an I/O error.
pub fn read_citizens<R: Read>(
    r: R,
) -> impl Iterator<Item = Result<(u64, proto::CitizenRecord), CsvError>> {
    Records::new(r, &CITIZEN_COLUMNS, parse_citizen)
}

/// Reads an accounts CSV file lazily; see [`read_citizens`]. The header must be exactly
/// [`ACCOUNT_COLUMNS`].
pub fn read_accounts<R: Read>(
    r: R,
) -> impl Iterator<Item = Result<(u64, proto::AccountRecord), CsvError>> {
    Records::new(r, &ACCOUNT_COLUMNS, parse_account)
}

/// One data line being parsed: its fields and where it is, for error messages.
struct Line<'a> {
    record: &'a csv::StringRecord,
    columns: &'static [&'static str],
    line: u64,
    file_line: Option<u64>,
}

impl<'a> Line<'a> {
    /// The field of column `index`. The reader has checked the column count, so the field
    /// exists; an empty string stands in should it not.
    fn get(&self, index: usize) -> &'a str {
        self.record.get(index).unwrap_or_default()
    }

    fn error(&self, index: usize, message: String) -> CsvError {
        CsvError {
            line: self.line,
            file_line: self.file_line,
            column: self.columns.get(index).copied(),
            message,
        }
    }

    fn version(&self, index: usize) -> Result<i64, CsvError> {
        let s = self.get(index);
        s.parse::<i64>()
            .map_err(|_| self.error(index, format!("{s:?} is not an integer")))
    }

    /// An ISO date (`YYYY-MM-DD`), or none when empty. Whether it is a real calendar date
    /// is the registry's to say (DATE_INVALID); here it must only have that shape.
    fn date(&self, index: usize) -> Result<Option<proto::google_type::Date>, CsvError> {
        let s = self.get(index);
        if s.is_empty() {
            return Ok(None);
        }
        date_out(s)
            .map(Some)
            .ok_or_else(|| self.error(index, format!("{s:?} is not a date (YYYY-MM-DD)")))
    }
}

fn parse_citizen(line: &Line<'_>) -> Result<proto::CitizenRecord, CsvError> {
    let version = line.version(1)?;
    let status = parse_status(line.get(5)).ok_or_else(|| {
        line.error(
            5,
            format!(
                "unknown status {:?} (expected ACTIVE, DECEASED or ID_REVOKED)",
                line.get(5)
            ),
        )
    })?;
    let legacy_ids = match line.get(7) {
        "" => Vec::new(),
        s => {
            let ids: Vec<String> = s.split(LEGACY_ID_SEPARATOR).map(str::to_owned).collect();
            if ids.iter().any(String::is_empty) {
                return Err(line.error(
                    7,
                    format!("empty legacy id in {s:?} (ids are separated by a single '{LEGACY_ID_SEPARATOR}')"),
                ));
            }
            ids
        }
    };
    Ok(proto::CitizenRecord {
        record_id: line.get(0).to_owned(),
        version,
        citizen_id: line.get(2).to_owned(),
        full_name: line.get(3).to_owned(),
        date_of_birth: line.date(4)?,
        status: status.into(),
        date_of_death: line.date(6)?,
        legacy_ids,
    })
}

fn parse_account(line: &Line<'_>) -> Result<proto::AccountRecord, CsvError> {
    let version = line.version(1)?;
    let kind = parse_kind(line.get(3)).ok_or_else(|| {
        line.error(
            3,
            format!(
                "unknown kind {:?} (expected BANK_ACCOUNT, EWALLET or MOBILE_MONEY)",
                line.get(3)
            ),
        )
    })?;
    let confirmation = parse_confirmation(line.get(7)).ok_or_else(|| {
        line.error(
            7,
            format!(
                "unknown confirmation {:?} (expected empty, NAME_MATCH or ISSUER_CONFIRMED)",
                line.get(7)
            ),
        )
    })?;
    let removed = parse_removed(line.get(8))
        .ok_or_else(|| line.error(8, format!("{:?} is not true or false", line.get(8))))?;
    Ok(proto::AccountRecord {
        record_id: line.get(0).to_owned(),
        version,
        citizen_id: line.get(2).to_owned(),
        kind: kind.into(),
        provider_code: line.get(4).to_owned(),
        account_ref: line.get(5).to_owned(),
        holder_name: line.get(6).to_owned(),
        verification_method: confirmation.into(),
        removed,
    })
}

/// The streaming reader behind [`read_citizens`] and [`read_accounts`]: one
/// `StringRecord` buffer, reused for every line.
struct Records<R: Read, T> {
    reader: csv::Reader<R>,
    record: csv::StringRecord,
    columns: &'static [&'static str],
    parse: fn(&Line<'_>) -> Result<T, CsvError>,
    /// Data lines read so far (the header is not counted).
    line: u64,
    header_checked: bool,
    done: bool,
}

impl<R: Read, T> Records<R, T> {
    fn new(
        r: R,
        columns: &'static [&'static str],
        parse: fn(&Line<'_>) -> Result<T, CsvError>,
    ) -> Self {
        // The header is read as an ordinary record so that it is checked here, and so that
        // a data line with the wrong column count is reported by this module rather than
        // compared against whatever the first line happened to hold.
        let reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(r);
        Records {
            reader,
            record: csv::StringRecord::new(),
            columns,
            parse,
            line: 0,
            header_checked: false,
            done: false,
        }
    }

    /// Reads the next record into the buffer: `Ok(false)` at the end of the input.
    fn read(&mut self) -> Result<bool, CsvError> {
        match self.reader.read_record(&mut self.record) {
            Ok(more) => Ok(more),
            Err(e) => {
                let file_line = e.position().map(csv::Position::line);
                let message = match e.kind() {
                    csv::ErrorKind::Utf8 { .. } => "the line is not valid UTF-8".to_owned(),
                    _ => e.to_string(),
                };
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    // The input is gone; reading on would only repeat the error.
                    self.done = true;
                }
                Err(CsvError {
                    line: if self.header_checked { self.line } else { 0 },
                    file_line,
                    column: None,
                    message,
                })
            }
        }
    }

    fn check_header(&mut self) -> Result<(), CsvError> {
        self.header_checked = true;
        let header_error = |message: String| CsvError {
            line: 0,
            file_line: Some(1),
            column: None,
            message,
        };
        match self.read() {
            Ok(true) => {}
            Ok(false) => {
                self.done = true;
                return Err(header_error(format!(
                    "the file is empty; expected the header {}",
                    self.columns.join(",")
                )));
            }
            Err(e) => {
                self.done = true;
                return Err(e);
            }
        }
        // Spreadsheet programs often start a UTF-8 file with a byte order mark.
        let found: Vec<&str> = self
            .record
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if i == 0 {
                    f.trim_start_matches('\u{feff}')
                } else {
                    f
                }
            })
            .collect();
        if found != self.columns {
            self.done = true;
            return Err(header_error(format!(
                "expected the header {}, found {}",
                self.columns.join(","),
                found.join(",")
            )));
        }
        Ok(())
    }
}

impl<R: Read, T> Iterator for Records<R, T> {
    type Item = Result<(u64, T), CsvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if !self.header_checked {
            if let Err(e) = self.check_header() {
                return Some(Err(e));
            }
        }
        self.line += 1;
        match self.read() {
            Ok(true) => {}
            Ok(false) => {
                self.done = true;
                return None;
            }
            Err(e) => return Some(Err(e)),
        }
        let line = Line {
            record: &self.record,
            columns: self.columns,
            line: self.line,
            file_line: self.record.position().map(csv::Position::line),
        };
        if self.record.len() != self.columns.len() {
            return Some(Err(CsvError {
                line: line.line,
                file_line: line.file_line,
                column: None,
                message: format!(
                    "expected {} columns, found {}",
                    self.columns.len(),
                    self.record.len()
                ),
            }));
        }
        Some((self.parse)(&line).map(|record| (line.line, record)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn citizen(i: u64, full_name: &str, legacy_ids: &[&str]) -> proto::CitizenRecord {
        proto::CitizenRecord {
            record_id: format!("C{i:010}"),
            version: 1_767_225_600_000_000 + i as i64,
            citizen_id: format!("0010850{i:05}"),
            full_name: full_name.to_owned(),
            date_of_birth: date_out("1985-03-02"),
            status: proto::CitizenStatus::Active.into(),
            date_of_death: None,
            legacy_ids: legacy_ids.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn account(
        i: u64,
        kind: proto::AccountKind,
        confirmation: proto::VerificationMethod,
    ) -> proto::AccountRecord {
        proto::AccountRecord {
            record_id: format!("A{i:010}-0"),
            version: 1_767_225_600_000_000 + i as i64,
            citizen_id: format!("0010850{i:05}"),
            kind: kind.into(),
            provider_code: "970436".to_owned(),
            account_ref: "0071000123456".to_owned(),
            holder_name: "NGUYEN VAN DUC".to_owned(),
            verification_method: confirmation.into(),
            removed: false,
        }
    }

    fn citizens_csv(records: &[proto::CitizenRecord]) -> String {
        let mut w = CitizenWriter::new(Vec::new());
        for r in records {
            w.write(r).expect("write");
        }
        String::from_utf8(w.finish().expect("finish")).expect("utf-8")
    }

    fn accounts_csv(records: &[proto::AccountRecord]) -> String {
        let mut w = AccountWriter::new(Vec::new());
        for r in records {
            w.write(r).expect("write");
        }
        String::from_utf8(w.finish().expect("finish")).expect("utf-8")
    }

    fn errors_of<T>(items: Vec<Result<(u64, T), CsvError>>) -> Vec<CsvError> {
        items.into_iter().filter_map(Result::err).collect()
    }

    #[test]
    fn citizens_round_trip_with_diacritics_commas_quotes_and_legacy_ids() {
        let mut deceased = citizen(3, "Hồ Thị \"Bé\" Ba", &[]);
        deceased.status = proto::CitizenStatus::Deceased.into();
        deceased.date_of_death = date_out("2025-12-24");
        let mut revoked = citizen(4, "Đặng Văn Ơn", &["111111111"]);
        revoked.status = proto::CitizenStatus::IdRevoked.into();
        revoked.date_of_birth = None;
        let records = vec![
            citizen(1, "Nguyễn Thị Ngọc Ánh", &[]),
            citizen(2, "Trần, Văn Đức", &["123456789", "987654321"]),
            deceased,
            revoked,
            citizen(
                5,
                "Lê Quỳnh\nHương",
                &["000000001", "000000002", "000000003"],
            ),
        ];
        let text = citizens_csv(&records);
        assert!(text.starts_with(
            "record_id,version,citizen_id,full_name,date_of_birth,status,date_of_death,legacy_ids\n"
        ));
        assert!(text.contains("\"Trần, Văn Đức\""), "{text}");
        assert!(text.contains("123456789;987654321"), "{text}");
        assert!(text.contains(",DECEASED,2025-12-24,"), "{text}");

        let read: Vec<(u64, proto::CitizenRecord)> = read_citizens(text.as_bytes())
            .collect::<Result<_, _>>()
            .expect("read back");
        let numbers: Vec<u64> = read.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [1, 2, 3, 4, 5]);
        let read: Vec<proto::CitizenRecord> = read.into_iter().map(|(_, r)| r).collect();
        assert_eq!(read, records);
    }

    #[test]
    fn accounts_round_trip_every_kind_and_confirmation() {
        let mut removed = account(
            4,
            proto::AccountKind::MobileMoney,
            proto::VerificationMethod::Unspecified,
        );
        removed.removed = true;
        removed.provider_code = "VIETTELMONEY".to_owned();
        removed.account_ref = "0912345678".to_owned();
        let mut quoted = account(
            5,
            proto::AccountKind::Ewallet,
            proto::VerificationMethod::NameMatch,
        );
        quoted.holder_name = "NGUYEN \"TOM\", VAN".to_owned();
        quoted.provider_code = "MOMO".to_owned();
        let records = vec![
            account(
                1,
                proto::AccountKind::BankAccount,
                proto::VerificationMethod::IssuerConfirmed,
            ),
            account(
                2,
                proto::AccountKind::Ewallet,
                proto::VerificationMethod::NameMatch,
            ),
            account(
                3,
                proto::AccountKind::BankAccount,
                proto::VerificationMethod::Unspecified,
            ),
            removed,
            quoted,
        ];
        let text = accounts_csv(&records);
        assert!(text.starts_with(
            "record_id,version,citizen_id,kind,provider_code,account_ref,holder_name,confirmation,removed\n"
        ));
        assert!(
            text.contains(",BANK_ACCOUNT,970436,0071000123456,NGUYEN VAN DUC,,false\n"),
            "{text}"
        );
        assert!(text.contains(",ISSUER_CONFIRMED,false\n"), "{text}");
        assert!(
            text.contains(",MOBILE_MONEY,VIETTELMONEY,0912345678,NGUYEN VAN DUC,,true\n"),
            "{text}"
        );

        let read: Vec<proto::AccountRecord> = read_accounts(text.as_bytes())
            .map(|item| item.map(|(_, r)| r))
            .collect::<Result<_, _>>()
            .expect("read back");
        assert_eq!(read, records);
    }

    #[test]
    fn an_empty_population_is_a_header_only_file() {
        let text = citizens_csv(&[]);
        assert_eq!(text, format!("{}\n", CITIZEN_COLUMNS.join(",")));
        assert_eq!(read_citizens(text.as_bytes()).count(), 0);
        let text = accounts_csv(&[]);
        assert_eq!(text, format!("{}\n", ACCOUNT_COLUMNS.join(",")));
        assert_eq!(read_accounts(text.as_bytes()).count(), 0);
    }

    #[test]
    fn a_missing_or_wrong_header_is_one_error_and_nothing_more() {
        let items: Vec<_> = read_citizens(&b""[..]).collect();
        assert_eq!(items.len(), 1);
        let err = items
            .into_iter()
            .next()
            .and_then(Result::err)
            .expect("error");
        assert_eq!(err.line, 0);
        assert!(err.to_string().starts_with("header"), "{err}");

        // An accounts file given to the citizens reader.
        let text = accounts_csv(&[account(
            1,
            proto::AccountKind::BankAccount,
            proto::VerificationMethod::Unspecified,
        )]);
        let items: Vec<_> = read_citizens(text.as_bytes()).collect();
        assert_eq!(items.len(), 1);
        let err = items
            .into_iter()
            .next()
            .and_then(Result::err)
            .expect("error");
        assert_eq!((err.line, err.file_line), (0, Some(1)));
        assert!(
            err.message
                .contains("expected the header record_id,version,citizen_id,full_name"),
            "{err}"
        );
    }

    #[test]
    fn a_byte_order_mark_before_the_header_is_accepted() {
        let text = format!(
            "\u{feff}{}",
            citizens_csv(&[citizen(1, "Phạm Văn Đồng", &[])])
        );
        let read: Vec<_> = read_citizens(text.as_bytes())
            .collect::<Result<_, _>>()
            .expect("read");
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].1.full_name, "Phạm Văn Đồng");
    }

    #[test]
    fn malformed_lines_report_their_line_and_column_and_reading_goes_on() {
        let header = CITIZEN_COLUMNS.join(",");
        let text = format!(
            "{header}\n\
             C1,1,001085012345,Nguyễn Văn A,1985-01-01,ACTIVE,,\n\
             C2,1,001085012346,Nguyễn Văn B,1985-01-01,ALIVE,,\n\
             C3,12x,001085012347,Nguyễn Văn C,1985-01-01,ACTIVE,,\n\
             C4,1,001085012348,Nguyễn Văn D,1985-01-01,ACTIVE,\n\
             C5,1,001085012349,Nguyễn Văn E,1985-01-01,,,\n\
             C6,1,001085012350,Nguyễn Văn F,1985-01-01,ACTIVE,,1;;2\n\
             C7,1,001085012351,Nguyễn Văn G,1985-01-01,CITIZEN_STATUS_UNSPECIFIED,,\n\
             C8,1,001085012352,Nguyễn Văn H,1985-01-01,DECEASED,2026-01-01,\n"
        );
        let items: Vec<_> = read_citizens(text.as_bytes()).collect();
        assert_eq!(items.len(), 8);
        let ok: Vec<(u64, String)> = items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .map(|(n, r)| (*n, r.record_id.clone()))
            .collect();
        assert_eq!(ok, [(1, "C1".to_owned()), (8, "C8".to_owned())]);

        let errors = errors_of(items);
        let summary: Vec<(u64, Option<u64>, Option<&str>)> = errors
            .iter()
            .map(|e| (e.line, e.file_line, e.column))
            .collect();
        assert_eq!(
            summary,
            [
                (2, Some(3), Some("status")),
                (3, Some(4), Some("version")),
                (4, Some(5), None),
                (5, Some(6), Some("status")),
                (6, Some(7), Some("legacy_ids")),
                (7, Some(8), Some("status")),
            ]
        );
        assert_eq!(
            errors[0].to_string(),
            "line 2 (file line 3), column status: unknown status \"ALIVE\" (expected ACTIVE, DECEASED or ID_REVOKED)"
        );
        assert_eq!(
            errors[1].to_string(),
            "line 3 (file line 4), column version: \"12x\" is not an integer"
        );
        assert_eq!(
            errors[2].to_string(),
            "line 4 (file line 5): expected 8 columns, found 7"
        );
    }

    #[test]
    fn malformed_account_lines_name_the_column() {
        let header = ACCOUNT_COLUMNS.join(",");
        let text = format!(
            "{header}\n\
             A1,1,001085012345,BANK,970436,0071000123456,NGUYEN VAN A,,false\n\
             A2,1,001085012345,EWALLET,MOMO,0912345678,NGUYEN VAN A,CONFIRMED,false\n\
             A3,1,001085012345,EWALLET,MOMO,0912345678,NGUYEN VAN A,,yes\n\
             A4,9223372036854775808,001085012345,EWALLET,MOMO,0912345678,NGUYEN VAN A,,\n\
             A5,1,001085012345,EWALLET,MOMO,0912345678,NGUYEN VAN A,NAME_MATCH,\n"
        );
        let items: Vec<_> = read_accounts(text.as_bytes()).collect();
        assert_eq!(items.len(), 5);
        let last = items[4].as_ref().expect("A5 is well formed");
        assert_eq!(last.0, 5);
        assert!(!last.1.removed);
        assert_eq!(
            last.1.verification_method,
            i32::from(proto::VerificationMethod::NameMatch)
        );
        let columns: Vec<(u64, Option<&str>)> = errors_of(items)
            .iter()
            .map(|e| (e.line, e.column))
            .collect();
        assert_eq!(
            columns,
            [
                (1, Some("kind")),
                (2, Some("confirmation")),
                (3, Some("removed")),
                (4, Some("version")),
            ]
        );
    }

    #[test]
    fn invalid_utf8_is_an_error_for_that_line_only() {
        let mut bytes = format!("{}\n", CITIZEN_COLUMNS.join(",")).into_bytes();
        bytes.extend_from_slice(b"C1,1,001085012345,Nguy\xffn,1985-01-01,ACTIVE,,\n");
        bytes.extend_from_slice("C2,1,001085012346,Nguyễn,1985-01-01,ACTIVE,,\n".as_bytes());
        let items: Vec<_> = read_citizens(&bytes[..]).collect();
        assert_eq!(items.len(), 2);
        let err = items[0].as_ref().expect_err("bad UTF-8");
        assert_eq!(err.line, 1);
        assert!(err.message.contains("UTF-8"), "{err}");
        assert_eq!(items[1].as_ref().map(|(n, _)| *n).ok(), Some(2));
    }

    #[test]
    fn a_quoted_field_spanning_lines_keeps_data_and_file_line_numbers_apart() {
        let text = citizens_csv(&[
            citizen(1, "Lê\nVăn\nTám", &[]),
            citizen(2, "Lê Văn Chín", &[]),
        ]);
        let broken = text.replace(",ACTIVE,,\n", ",ACTIVE,\n");
        let items: Vec<_> = read_citizens(broken.as_bytes()).collect();
        let lines: Vec<(u64, Option<u64>)> = errors_of(items)
            .iter()
            .map(|e| (e.line, e.file_line))
            .collect();
        assert_eq!(lines, [(1, Some(2)), (2, Some(5))]);
    }

    #[test]
    fn writers_refuse_values_the_format_cannot_spell() {
        let mut w = CitizenWriter::new(Vec::new());
        let mut unspecified = citizen(1, "Ngô Văn A", &[]);
        unspecified.status = 0;
        assert!(w.write(&unspecified).is_err());
        let mut unknown = citizen(1, "Ngô Văn A", &[]);
        unknown.status = 42;
        assert!(w.write(&unknown).is_err());
        assert!(w.write(&citizen(1, "Ngô Văn A", &["12345;6789"])).is_err());
        assert!(w.write(&citizen(1, "Ngô Văn A", &[""])).is_err());
        let text = String::from_utf8(w.finish().expect("finish")).expect("utf-8");
        assert_eq!(text.lines().count(), 1, "nothing but the header: {text}");

        let mut w = AccountWriter::new(Vec::new());
        let mut no_kind = account(
            1,
            proto::AccountKind::BankAccount,
            proto::VerificationMethod::Unspecified,
        );
        no_kind.kind = 0;
        assert!(w.write(&no_kind).is_err());
        let mut bad_confirmation = account(
            1,
            proto::AccountKind::BankAccount,
            proto::VerificationMethod::Unspecified,
        );
        bad_confirmation.verification_method = 7;
        assert!(w.write(&bad_confirmation).is_err());
    }

    /// A citizens file of `total` lines, produced as it is read: nothing but the current
    /// line is ever in memory.
    struct GeneratedCitizens {
        next: u64,
        total: u64,
        buf: Vec<u8>,
        pos: usize,
    }

    impl Read for GeneratedCitizens {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.pos == self.buf.len() {
                self.buf.clear();
                self.pos = 0;
                if self.next == 0 {
                    self.buf
                        .extend_from_slice(CITIZEN_COLUMNS.join(",").as_bytes());
                    self.buf.push(b'\n');
                } else if self.next <= self.total {
                    let i = self.next;
                    let status = if i.is_multiple_of(50) {
                        "DECEASED,2026-01-02"
                    } else {
                        "ACTIVE,"
                    };
                    let line = format!(
                        "C{i:010},{},0790{:08},\"Trần Thị Ngọc, {i}\",1990-05-06,{status},{:09}\n",
                        1_767_225_600_000_000 + i,
                        i,
                        i
                    );
                    self.buf.extend_from_slice(line.as_bytes());
                } else {
                    return Ok(0);
                }
                self.next += 1;
            }
            let n = out.len().min(self.buf.len() - self.pos);
            out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn a_100k_line_file_is_read_lazily() {
        const TOTAL: u64 = 100_000;
        let source = GeneratedCitizens {
            next: 0,
            total: TOTAL,
            buf: Vec::new(),
            pos: 0,
        };
        let mut count = 0u64;
        let mut deceased = 0u64;
        for item in read_citizens(source) {
            let (line, record) = item.expect("every generated line is well formed");
            count += 1;
            assert_eq!(line, count);
            if record.status == i32::from(proto::CitizenStatus::Deceased) {
                deceased += 1;
            }
        }
        assert_eq!(count, TOTAL);
        assert_eq!(deceased, TOTAL / 50);
    }
}
