//! The resolution read model (`resolution_inputs`): per citizen, in one row, what a
//! current-state Resolve needs: the citizen's status and each of its preferences with the
//! snapshot of the account it points at and of the previous account (paid during
//! cooling-off). Resolve and BatchResolve read only this table, one primary-key probe per
//! citizen; the decision (cooling-off included, as it depends on the instant) stays in
//! `domain::resolve`.
//!
//! The model is derived, never written on its own: every write transaction that changes a
//! citizen, its accounts or its preferences ends by [`refresh`]ing those citizens' rows
//! from the source tables it has just written, under the citizens' row locks it already
//! holds, so the model commits (or rolls back) with the change. Deriving the row from the
//! source tables, rather than from what each script meant to write, keeps one definition
//! of the row for the writers, the first build and `check`.
//!
//! [`SqlStore::check_resolution_model`] recomputes rows from the source tables and
//! compares, in full (every citizen, in id order, which also finds rows of no citizen) or
//! on a random sample, and can repair what differs.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::dialect::{insert_rows, row_statements, Dialect, Handle, Session, Tx, LOOKUP_CHUNK};
use super::rows::{capacity, citizen_status, corrupt_account, AccountRow};
use super::sql::{text_keys, Row, Sql, Val};
use super::sql_store::SqlStore;
use super::{corrupt, ModelCheck, ModelDifference, ModelFormat, StoreResult};
use crate::domain::{
    Account, AccountKind, AccountRef, AccountStatus, CitizenId, CitizenStatus, StoredPreference,
    Timestamp, Verification, VerificationMethod,
};

/// The `read_models` name of this model.
const MODEL_NAME: &str = "resolution_inputs";

/// One preference as the read model holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PreferenceSnapshot {
    /// The program code; empty for the default preference.
    #[serde(rename = "p")]
    program_code: String,
    /// When the preference took effect (µs).
    #[serde(rename = "s")]
    since: i64,
    /// The account it points at.
    #[serde(rename = "a")]
    account: AccountRow,
    /// The account paid before the change, during cooling-off.
    #[serde(rename = "b", default)]
    previous: Option<AccountRow>,
}

/// What the read model holds for one citizen; preferences in program-code order.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct CitizenInputs {
    status: String,
    preferences: Vec<PreferenceSnapshot>,
}

/// A citizen's current-state inputs, decoded: status, preference rows, and the accounts
/// they point at, each once (a handful: a list searched by id beats hashing it).
pub(super) type DecodedInputs = (CitizenStatus, Vec<StoredPreference>, Vec<Arc<Account>>);

impl CitizenInputs {
    /// The status, preference rows and accounts resolution reads.
    pub(super) fn decode(self) -> StoreResult<DecodedInputs> {
        let status = citizen_status(&self.status)?;
        let preferences = self.preferences.into_iter().map(|p| {
            let (account, previous) = (p.account, p.previous);
            (p.program_code, p.since, account, previous)
        });
        gather(status, preferences, |row| row.account_id, Account::try_from)
    }

    /// The citizen's live routes (the sync digest's input, `domain::digest`): each
    /// preference, by program code, whose account is VERIFIED, while the citizen is
    /// ACTIVE; none otherwise.
    pub(super) fn live_routes(&self) -> impl Iterator<Item = (&str, Uuid)> + '_ {
        let active = self.status == CitizenStatus::Active.as_str();
        self.preferences
            .iter()
            .filter(move |p| active && p.account.status == AccountStatus::Verified.as_str())
            .map(|p| (p.program_code.as_str(), p.account.account_id))
    }

    /// What differs between this (the model) and `source`, in words; empty when equal.
    fn differences(&self, source: &CitizenInputs) -> Vec<String> {
        let mut out = Vec::new();
        if self.status != source.status {
            out.push(format!(
                "status: read model {}, source {}",
                self.status, source.status
            ));
        }
        let by_program = |c: &CitizenInputs| -> BTreeMap<String, PreferenceSnapshot> {
            c.preferences
                .iter()
                .map(|p| (p.program_code.clone(), p.clone()))
                .collect()
        };
        let (model, source) = (by_program(self), by_program(source));
        let programs: BTreeSet<&String> = model.keys().chain(source.keys()).collect();
        for program in programs {
            let name = if program.is_empty() {
                "default".to_owned()
            } else {
                program.clone()
            };
            match (model.get(program), source.get(program)) {
                (Some(m), Some(s)) if m == s => {}
                (Some(m), Some(s)) => out.push(format!(
                    "{name} preference: read model {}, source {}",
                    describe(m),
                    describe(s)
                )),
                (None, Some(_)) => out.push(format!("{name} preference: missing from read model")),
                (Some(_), None) => out.push(format!("{name} preference: not in the source")),
                (None, None) => {}
            }
        }
        out
    }
}

/// Resolution's inputs from a citizen's preferences, each as (program code, since, the
/// account it points at, the previous account), whatever form the snapshots are in: the
/// preference rows, and every account they name once (a handful: a list searched by id
/// beats hashing it).
fn gather<A>(
    status: CitizenStatus,
    preferences: impl ExactSizeIterator<Item = (String, i64, A, Option<A>)>,
    id: impl Fn(&A) -> Uuid,
    mut account: impl FnMut(A) -> StoreResult<Account>,
) -> StoreResult<DecodedInputs> {
    let mut prefs = Vec::with_capacity(preferences.len());
    let mut accounts: Vec<Arc<Account>> = Vec::with_capacity(preferences.len());
    for (program_code, since, current, previous) in preferences {
        prefs.push(StoredPreference {
            program_code,
            account_id: id(&current),
            previous: previous.as_ref().map(&id),
            since: Timestamp(since),
        });
        // Each snapshot moved once, into its account (not through an array of both).
        let mut add = |snapshot: A| -> StoreResult<()> {
            let snapshot_id = id(&snapshot);
            if !accounts.iter().any(|a| a.id == snapshot_id) {
                accounts.push(Arc::new(account(snapshot)?));
            }
            Ok(())
        };
        add(current)?;
        if let Some(previous) = previous {
            add(previous)?;
        }
    }
    Ok((status, prefs, accounts))
}

/// A preference in a difference report: which accounts, which versions, since when.
fn describe(p: &PreferenceSnapshot) -> String {
    let account = |a: &AccountRow| format!("account {} v{} {}", a.account_id, a.version, a.status);
    match &p.previous {
        Some(b) => format!(
            "{} (previous {}) since {}",
            account(&p.account),
            account(b),
            p.since
        ),
        None => format!("{} since {}", account(&p.account), p.since),
    }
}

/// The columns a read of the model selects, in [`StoredRow`] order.
const MODEL_COLUMNS: &str = "citizen_id, status, preferences, inputs";

/// A stored row: citizen, status, and its preferences in one of two forms (the JSON of
/// rows written before migration 0018, or the binary encoding).
type StoredRow = (String, String, Option<String>, Option<Vec<u8>>);

/// Reads `citizens`' rows of the read model.
pub(super) async fn read_model<D: Dialect, C: Handle<D>>(
    conn: &mut Session<D, C>,
    citizens: &[&str],
) -> StoreResult<HashMap<String, CitizenInputs>> {
    let mut out = HashMap::with_capacity(citizens.len());
    for chunk in citizens.chunks(LOOKUP_CHUNK) {
        decode_rows(conn.fetch_all(model_select::<D>(chunk)?).await?, &mut out)?;
    }
    Ok(out)
}

/// Reads `citizens`' rows of the read model as resolution takes them (BatchResolve's
/// path): each row decoded from the bytes the driver received, not copied into a
/// [`StoredRow`] and a [`CitizenInputs`] first (see [`ResolvedRow`]).
pub(super) async fn read_resolved<D: Dialect, C: Handle<D>>(
    conn: &mut Session<D, C>,
    citizens: &[&str],
) -> StoreResult<Vec<(String, DecodedInputs)>> {
    let mut out = Vec::with_capacity(citizens.len());
    for chunk in citizens.chunks(LOOKUP_CHUNK) {
        for ResolvedRow(citizen, inputs) in conn.fetch_all(model_select::<D>(chunk)?).await? {
            out.push((citizen, inputs?));
        }
    }
    Ok(out)
}

/// The select of `citizens`' rows of the read model.
fn model_select<D: Dialect>(citizens: &[&str]) -> StoreResult<Sql> {
    let mut q = D::builder(&format!(
        "SELECT {MODEL_COLUMNS} FROM resolution_inputs WHERE citizen_id"
    ));
    D::push_in(&mut q, text_keys(citizens.iter().copied()))?;
    Ok(q.build())
}

/// A row of the read model decoded straight into resolution's inputs: the citizen, and
/// its inputs or why they could not be read. Decoded from the row as the driver holds it
/// (the status, the text of the words and the encoded preferences borrowed, not copied),
/// and a compact row's accounts built without the [`AccountRow`] in between, whose
/// enumerations are text to be parsed again.
///
/// Why: BatchResolve decodes a row per id. On the 1 M population (2 cores), the decoding
/// through [`StoredRow`], [`CitizenInputs`] and [`AccountRow`] was a fifth of the
/// registry's CPU in a 1 M-id BatchResolve (perf: `model_row` 13.4%,
/// `CitizenInputs::decode` 6.7%), mostly allocations.
pub(super) struct ResolvedRow(String, StoreResult<DecodedInputs>);

impl ResolvedRow {
    fn of<'r, R: sqlx::Row>(row: &'r R) -> sqlx::Result<ResolvedRow>
    where
        &'r str: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        &'r [u8]: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        usize: sqlx::ColumnIndex<R>,
    {
        // Unchecked: the columns are [`MODEL_COLUMNS`], of the types the migrations give
        // them, and each value is still decoded (text checked as UTF-8). The driver's check
        // of each column's type against the Rust one, per row, was 2% of the registry's
        // instructions per id of a BatchResolve (callgrind, 20 k ids).
        let citizen: &str = row.try_get_unchecked(0)?;
        let status: &str = row.try_get_unchecked(1)?;
        let json: Option<&str> = row.try_get_unchecked(2)?;
        let inputs: Option<&[u8]> = row.try_get_unchecked(3)?;
        Ok(ResolvedRow(
            citizen.to_owned(),
            decode_inputs(citizen, status, json, inputs),
        ))
    }
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for ResolvedRow {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> sqlx::Result<Self> {
        ResolvedRow::of(row)
    }
}

impl<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> for ResolvedRow {
    fn from_row(row: &'r sqlx::sqlite::SqliteRow) -> sqlx::Result<Self> {
        ResolvedRow::of(row)
    }
}

/// A stored row's resolution inputs: a compact row decoded into accounts directly, a row
/// of an older form through [`model_row`]. The same inputs either way (a test holds the
/// two paths to it).
fn decode_inputs(
    citizen: &str,
    status: &str,
    json: Option<&str>,
    inputs: Option<&[u8]>,
) -> StoreResult<DecodedInputs> {
    let (Some([FORMAT_COMPACT, encoded @ ..]), None) = (inputs, json) else {
        return model_row(citizen, status.to_owned(), json, inputs)?.decode();
    };
    let status = citizen_status(status)?;
    let preferences = from_postcard::<Vec<CompactPreference<'_>>>(encoded)?;
    let preferences = preferences.into_iter().map(|p| {
        let since = p.account.created_at.wrapping_add(p.since_after_created);
        (p.program_code.into_owned(), since, p.account, p.previous)
    });
    gather(
        status,
        preferences,
        |a| Uuid::from_bytes(a.id),
        |a| a.account(citizen),
    )
}

/// Decodes stored rows into `out`.
fn decode_rows(rows: Vec<StoredRow>, out: &mut HashMap<String, CitizenInputs>) -> StoreResult<()> {
    for (citizen, status, json, inputs) in rows {
        let row = model_row(&citizen, status, json.as_deref(), inputs.as_deref())?;
        out.insert(citizen, row);
    }
    Ok(())
}

/// The first byte of an encoded `inputs`: what follows is the preferences in postcard
/// (serde's data model by position: no field names, the account id as its 16 bytes,
/// integers as varints), each account in full. Written only by an instance configured
/// with `resolution_model_format = 1` (a rolling update from instances that read only
/// this form); the next compact write of a citizen rewrites its row in
/// [`FORMAT_COMPACT`].
const FORMAT_POSTCARD: u8 = 1;

/// The first byte of an encoded `inputs` in the compact form: postcard of
/// [`CompactPreference`]s, each account without what the row already says or what is
/// usually the same (the citizen id is the row's, the enumerations are [`Word`] codes,
/// instants after the first are offsets from the account's creation). Another encoding
/// would take another byte.
///
/// Why: BatchResolve reads one model row per id, and at 1 M citizens the model (258 MB of
/// heap in the first form, 169 bytes of `inputs` a row on average) is twice the shared
/// buffers here, so most probes copy a page in from the OS cache. Compact, the 1 M demo
/// population's rows average 106 bytes of `inputs` and the heap is 197 MB; a 1 M-id
/// BatchResolve read 628 k of its pages from outside shared buffers against 724 k. Its
/// rate on two cores did not move beyond the machine's noise (69-74 k ids/s against
/// 68-80 k, alternated); the raw read (`bench model-any`) on copies of the table, packed,
/// ran at 130-140 k ids/s on rows 83 bytes shorter against 103-121 k.
const FORMAT_COMPACT: u8 = 2;

/// The enumerations' stored names that an account snapshot spells, by their code in the
/// compact form. Append only: a word's place is its code in stored rows.
const WORDS: [&str; 16] = [
    "BANK_ACCOUNT",
    "EWALLET",
    "MOBILE_MONEY",
    "PENDING_VERIFICATION",
    "VERIFIED",
    "SUSPENDED",
    "CLOSED",
    "REJECTED",
    "ISSUER_CONFIRMED",
    "NAME_MATCH",
    "VNEID_DECLARED",
    "IN_PERSON",
    "PROVIDER",
    "VERIFIER",
    "POPULATION_SYNC",
    "PAYER",
];

/// A stored name in the compact form: its code when it is one of [`WORDS`], else its
/// text (a name the list does not know is kept, not lost).
#[derive(Debug, Serialize, Deserialize)]
enum Word<'a> {
    Known(u8),
    Text(Cow<'a, str>),
}

impl<'a> Word<'a> {
    fn of(name: &'a str) -> Word<'a> {
        match WORDS.iter().position(|w| *w == name) {
            Some(code) => Word::Known(code as u8),
            None => Word::Text(Cow::Borrowed(name)),
        }
    }

    /// The stored name, borrowed.
    fn as_str(&self) -> StoreResult<&str> {
        match self {
            Word::Known(code) => WORDS
                .get(usize::from(*code))
                .copied()
                .ok_or_else(|| corrupt(format!("resolution_inputs inputs: word {code}"))),
            Word::Text(text) => Ok(text),
        }
    }

    fn name(self) -> StoreResult<String> {
        match self {
            Word::Text(text) => Ok(text.into_owned()),
            known => known.as_str().map(str::to_owned),
        }
    }
}

/// One preference in the compact form.
#[derive(Debug, Serialize, Deserialize)]
struct CompactPreference<'a> {
    program_code: Cow<'a, str>,
    account: CompactAccount<'a>,
    /// `since` less the account's `created_at`.
    since_after_created: i64,
    previous: Option<CompactAccount<'a>>,
}

/// An account snapshot in the compact form. Offsets wrap, so that every value (even a
/// corrupt one) reads back as it was written.
#[derive(Debug, Serialize, Deserialize)]
struct CompactAccount<'a> {
    id: uuid::Bytes,
    /// `None`: the row's citizen (the only value the write path stores).
    citizen_id: Option<Cow<'a, str>>,
    kind: Word<'a>,
    provider_code: Cow<'a, str>,
    account_ref: Cow<'a, str>,
    holder_name: Option<Cow<'a, str>>,
    status: Word<'a>,
    verification_method: Option<Word<'a>>,
    verified_by: Option<Cow<'a, str>>,
    /// `verified_at` less `created_at`.
    verified_after_created: Option<i64>,
    evidence_ref: Option<Cow<'a, str>>,
    version: i64,
    created_at: i64,
    /// `updated_at` less `created_at`.
    updated_after_created: i64,
    declared_holder_name: Option<Cow<'a, str>>,
    verification_capacity: Option<Word<'a>>,
}

impl<'a> CompactAccount<'a> {
    fn of(citizen: &str, a: &'a AccountRow) -> CompactAccount<'a> {
        let text = |s: &'a Option<String>| s.as_deref().map(Cow::Borrowed);
        CompactAccount {
            id: *a.account_id.as_bytes(),
            citizen_id: (a.citizen_id != citizen).then_some(Cow::Borrowed(a.citizen_id.as_str())),
            kind: Word::of(&a.kind),
            provider_code: Cow::Borrowed(&a.provider_code),
            account_ref: Cow::Borrowed(&a.account_ref),
            holder_name: text(&a.holder_name),
            status: Word::of(&a.status),
            verification_method: a.verification_method.as_deref().map(Word::of),
            verified_by: text(&a.verified_by),
            verified_after_created: a.verified_at.map(|t| t.wrapping_sub(a.created_at)),
            evidence_ref: text(&a.evidence_ref),
            version: a.version,
            created_at: a.created_at,
            updated_after_created: a.updated_at.wrapping_sub(a.created_at),
            declared_holder_name: text(&a.declared_holder_name),
            verification_capacity: a.verification_capacity.as_deref().map(Word::of),
        }
    }

    /// The account, as `Account::try_from` would make it of [`CompactAccount::row`]'s
    /// row, without the row: no text made for the enumerations only to be parsed back.
    fn account(self, citizen: &str) -> StoreResult<Account> {
        let id = Uuid::from_bytes(self.id);
        let created = self.created_at;
        // Every word is read, used or not, so that a corrupt one fails here as it does
        // on the way through the row.
        let method = self
            .verification_method
            .as_ref()
            .map(Word::as_str)
            .transpose()?;
        let verification_capacity = self
            .verification_capacity
            .as_ref()
            .map(Word::as_str)
            .transpose()?;
        let verification = match (method, self.verified_by, self.verified_after_created) {
            (Some(method), Some(verified_by), Some(after)) => Some(Verification {
                method: VerificationMethod::parse(method)
                    .map_err(|_| corrupt_account("verification method", id))?,
                verified_by: verified_by.into_owned(),
                verified_at: Timestamp(created.wrapping_add(after)),
                evidence_ref: self.evidence_ref.map(Cow::into_owned).unwrap_or_default(),
                capacity: capacity(verification_capacity)?,
            }),
            _ => None,
        };
        Ok(Account {
            id,
            citizen_id: CitizenId::from_stored(
                self.citizen_id
                    .map_or_else(|| citizen.to_owned(), Cow::into_owned),
            ),
            kind: AccountKind::parse(self.kind.as_str()?)
                .map_err(|_| corrupt_account("kind", id))?,
            provider_code: self.provider_code.into_owned(),
            account_ref: AccountRef::from_stored(self.account_ref.into_owned()),
            holder_name: self.holder_name.map(Cow::into_owned),
            declared_holder_name: self.declared_holder_name.map(Cow::into_owned),
            status: AccountStatus::parse(self.status.as_str()?)
                .map_err(|_| corrupt_account("status", id))?,
            verification,
            version: u64::try_from(self.version).map_err(|_| corrupt_account("version", id))?,
            created_at: Timestamp(created),
            updated_at: Timestamp(created.wrapping_add(self.updated_after_created)),
        })
    }

    fn row(self, citizen: &str) -> StoreResult<AccountRow> {
        let created = self.created_at;
        let text = |s: Option<Cow<'_, str>>| s.map(Cow::into_owned);
        Ok(AccountRow {
            account_id: Uuid::from_bytes(self.id),
            citizen_id: self
                .citizen_id
                .map_or_else(|| citizen.to_owned(), Cow::into_owned),
            kind: self.kind.name()?,
            provider_code: self.provider_code.into_owned(),
            account_ref: self.account_ref.into_owned(),
            holder_name: text(self.holder_name),
            status: self.status.name()?,
            verification_method: self.verification_method.map(Word::name).transpose()?,
            verified_by: text(self.verified_by),
            verified_at: self.verified_after_created.map(|d| created.wrapping_add(d)),
            evidence_ref: text(self.evidence_ref),
            version: self.version,
            created_at: created,
            updated_at: created.wrapping_add(self.updated_after_created),
            declared_holder_name: text(self.declared_holder_name),
            verification_capacity: self.verification_capacity.map(Word::name).transpose()?,
        })
    }
}

/// Encodes `citizen`'s preferences for the `inputs` column, in `format`.
fn encode(
    format: ModelFormat,
    citizen: &str,
    preferences: &[PreferenceSnapshot],
) -> StoreResult<Vec<u8>> {
    if format == ModelFormat::First {
        return postcard::to_extend(preferences, vec![FORMAT_POSTCARD])
            .map_err(|e| corrupt(format!("encoding resolution inputs: {e}")));
    }
    let compact: Vec<CompactPreference<'_>> = preferences
        .iter()
        .map(|p| CompactPreference {
            program_code: Cow::Borrowed(&p.program_code),
            since_after_created: p.since.wrapping_sub(p.account.created_at),
            account: CompactAccount::of(citizen, &p.account),
            previous: p.previous.as_ref().map(|b| CompactAccount::of(citizen, b)),
        })
        .collect();
    postcard::to_extend(&compact, vec![FORMAT_COMPACT])
        .map_err(|e| corrupt(format!("encoding resolution inputs: {e}")))
}

/// Postcard of `T` filling all of `bytes`.
fn from_postcard<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> StoreResult<T> {
    let (value, rest) = postcard::take_from_bytes(bytes)
        .map_err(|e| corrupt(format!("resolution_inputs inputs: {e}")))?;
    if !rest.is_empty() {
        return Err(corrupt(
            "resolution_inputs inputs: bytes after the preferences",
        ));
    }
    Ok(value)
}

/// Decodes `citizen`'s stored row from whichever form it holds: the binary `inputs`
/// (compact, or the first binary form), or the JSON `preferences` of a row written
/// before migration 0018.
fn model_row(
    citizen: &str,
    status: String,
    json: Option<&str>,
    inputs: Option<&[u8]>,
) -> StoreResult<CitizenInputs> {
    let preferences = match (inputs, json) {
        (Some([FORMAT_COMPACT, encoded @ ..]), None) => {
            from_postcard::<Vec<CompactPreference<'_>>>(encoded)?
                .into_iter()
                .map(|p| {
                    let account = p.account.row(citizen)?;
                    Ok(PreferenceSnapshot {
                        program_code: p.program_code.into_owned(),
                        since: account.created_at.wrapping_add(p.since_after_created),
                        account,
                        previous: p.previous.map(|b| b.row(citizen)).transpose()?,
                    })
                })
                .collect::<StoreResult<_>>()?
        }
        (Some([FORMAT_POSTCARD, encoded @ ..]), None) => from_postcard(encoded)?,
        (Some(_), None) => return Err(corrupt("resolution_inputs inputs: an unknown format")),
        (None, Some(json)) => from_json(json)?,
        _ => {
            return Err(corrupt(
                "resolution_inputs: a row holds its preferences in exactly one form",
            ))
        }
    };
    Ok(CitizenInputs {
        status,
        preferences,
    })
}

/// The preferences of a row written before migration 0018, from its JSON.
fn from_json(json: &str) -> StoreResult<Vec<PreferenceSnapshot>> {
    serde_json::from_str(json).map_err(|e| corrupt(format!("resolution_inputs preferences: {e}")))
}

/// Rewrites `citizens`' rows of the read model from the source tables, as this
/// transaction sees them. Callers hold the citizens' row locks (every write script and
/// sync batch locks its citizens first), so no other writer changes them in between.
pub(super) async fn refresh<D: Dialect>(
    tx: &mut Tx<D>,
    format: ModelFormat,
    citizens: &[&str],
) -> StoreResult<()> {
    let rows = source_inputs(tx, citizens).await?;
    write_rows(tx, format, &rows).await
}

/// Sets `citizens`' statuses in the read model, keeping their preferences; a citizen
/// without a row (new to the registry, so without preferences) gets one with none. What
/// a citizens sync batch changes is only that (names and dates of birth are not in the
/// model), so it writes this instead of [`refresh`]ing, which re-reads the four-table
/// join (SyncCitizens: 8.9 k records/s with the re-read against 12.2 k before the model).
/// Callers hold the citizens' row locks and have written their rows.
pub(super) async fn set_statuses<D: Dialect>(
    tx: &mut Tx<D>,
    format: ModelFormat,
    citizens: &[(&str, CitizenStatus)],
) -> StoreResult<()> {
    let none = encode(format, "", &[])?;
    insert_rows(
        tx,
        "INSERT INTO resolution_inputs (citizen_id, status, inputs) ",
        " ON CONFLICT (citizen_id) DO UPDATE SET status = excluded.status",
        citizens,
        3,
        |b, (citizen, status)| {
            b.push_bind(*citizen)
                .push_bind(status.as_str())
                .push_bind(none.clone());
        },
    )
    .await?;
    Ok(())
}

/// Upserts rows into the read model.
async fn write_rows<D: Dialect>(
    tx: &mut Tx<D>,
    format: ModelFormat,
    rows: &BTreeMap<String, CitizenInputs>,
) -> StoreResult<()> {
    let encoded: Vec<(&str, &str, Vec<u8>)> = rows
        .iter()
        .map(|(citizen, inputs)| {
            Ok((
                citizen.as_str(),
                inputs.status.as_str(),
                encode(format, citizen, &inputs.preferences)?,
            ))
        })
        .collect::<StoreResult<_>>()?;
    // A row of the JSON form (before migration 0018) is rewritten in the binary one.
    insert_rows(
        tx,
        "INSERT INTO resolution_inputs (citizen_id, status, inputs) ",
        " ON CONFLICT (citizen_id) DO UPDATE SET status = excluded.status, \
         preferences = NULL, inputs = excluded.inputs",
        &encoded,
        3,
        |b, (citizen, status, inputs)| {
            b.push_bind(*citizen)
                .push_bind(*status)
                .push_bind(inputs.clone());
        },
    )
    .await?;
    Ok(())
}

/// Computes `citizens`' rows from the source tables: each citizen's status joined with
/// all its preferences and the accounts they point at. Citizens the registry does not
/// know have no row.
async fn source_inputs<D: Dialect, C: Handle<D>>(
    conn: &mut Session<D, C>,
    citizens: &[&str],
) -> StoreResult<BTreeMap<String, CitizenInputs>> {
    let mut out: BTreeMap<String, CitizenInputs> = BTreeMap::new();
    for chunk in citizens.chunks(LOOKUP_CHUNK) {
        let mut q = D::builder(concat!(
            "SELECT c.citizen_id, c.status, p.program_code, p.since, p.previous_account_id, ",
            "a.account_id, a.citizen_id, a.kind, a.provider_code, a.account_ref, a.holder_name, ",
            "a.status, a.verification_method, a.verified_by, a.verified_at, a.evidence_ref, ",
            "a.version, a.created_at, a.updated_at, a.declared_holder_name, ",
            "a.verification_capacity, ",
            "b.account_id, b.citizen_id, b.kind, b.provider_code, b.account_ref, b.holder_name, ",
            "b.status, b.verification_method, b.verified_by, b.verified_at, b.evidence_ref, ",
            "b.version, b.created_at, b.updated_at, b.declared_holder_name, ",
            "b.verification_capacity ",
            "FROM citizens c LEFT JOIN preferences p ON p.citizen_id = c.citizen_id ",
            "LEFT JOIN accounts a ON a.account_id = p.account_id ",
            "LEFT JOIN accounts b ON b.account_id = p.previous_account_id ",
            "WHERE c.citizen_id"
        ));
        D::push_in(&mut q, text_keys(chunk.iter().copied()))?;
        for row in conn.fetch_all::<InputRow>(q.build()).await? {
            let entry = out.entry(row.citizen_id).or_insert_with(|| CitizenInputs {
                status: row.citizen_status,
                preferences: Vec::new(),
            });
            let Some(program_code) = row.program_code else {
                continue;
            };
            let Some(account) = row.current.row()? else {
                return Err(corrupt("preference without its account"));
            };
            let previous = row.previous.row()?;
            if row.previous_account_id.is_some() && previous.is_none() {
                return Err(corrupt("preference without its previous account"));
            }
            entry.preferences.push(PreferenceSnapshot {
                program_code,
                since: row
                    .since
                    .ok_or_else(|| corrupt("preference without its since"))?,
                account,
                previous,
            });
        }
    }
    for inputs in out.values_mut() {
        inputs
            .preferences
            .sort_by(|a, b| a.program_code.cmp(&b.program_code));
    }
    Ok(out)
}

/// How many citizens `check` and the first build handle per transaction.
const CHECK_CHUNK: i64 = 1000;

/// The rewrite of rows of an older form (`legacy_rows`), around a relation of
/// (citizen id, new inputs, JSON read, inputs read): a row is rewritten only if it still
/// holds the JSON it was read with, or, read in a binary form, still holds those bytes.
/// A writer that refreshed the row meanwhile keeps its row.
const REWRITE_HEAD: &str = "WITH v (citizen_id, inputs, old_json, old_inputs) AS (";
const REWRITE_TAIL: &str = ") UPDATE resolution_inputs SET inputs = v.inputs, preferences = NULL \
     FROM v WHERE resolution_inputs.citizen_id = v.citizen_id \
     AND (resolution_inputs.preferences = v.old_json \
     OR (v.old_json IS NULL AND resolution_inputs.preferences IS NULL \
     AND resolution_inputs.inputs = v.old_inputs))";

impl<D: Dialect> SqlStore<D> {
    /// Builds the read model from the source tables if it has never been built (an
    /// upgraded database): in citizen-id order, each chunk under its citizens' row locks,
    /// so a writer running meanwhile is not overwritten with older state.
    pub(super) async fn build_resolution_model(&self) -> StoreResult<()> {
        let built: Option<(i64,)> = self
            .writer()
            .await?
            .fetch_optional(
                Sql::new("SELECT built_at FROM read_models WHERE name = $1").bind(MODEL_NAME),
            )
            .await?;
        if built.is_some() {
            return Ok(());
        }
        let mut after = String::new();
        loop {
            let mut tx = Tx::<D>::begin_write(&self.write).await?;
            tx.run(D::BULK_PREAMBLE).await?;
            let ids: Vec<(String,)> = tx
                .fetch_all(
                    Sql::new(format!(
                        "SELECT citizen_id FROM citizens WHERE citizen_id > $1 \
                         ORDER BY citizen_id LIMIT $2{}",
                        D::FOR_UPDATE
                    ))
                    .bind(after.as_str())
                    .bind(CHECK_CHUNK),
                )
                .await?;
            let Some((last,)) = ids.last().cloned() else {
                tx.execute(
                    Sql::new(
                        "INSERT INTO read_models (name, built_at) VALUES ($1, $2) \
                         ON CONFLICT (name) DO NOTHING",
                    )
                    .bind(MODEL_NAME)
                    .bind(Timestamp::now().micros()),
                )
                .await?;
                tx.commit().await?;
                return Ok(());
            };
            let keys: Vec<&str> = ids.iter().map(|(c,)| c.as_str()).collect();
            refresh(&mut tx, self.options.model_format, &keys).await?;
            tx.commit().await?;
            after = last;
        }
    }

    /// Compares the read model with the source tables: every citizen (and every model row)
    /// when `sample` is `None`, else that many citizens picked at random. With `repair`,
    /// rewrites each differing row from the source tables (and deletes rows of no
    /// citizen), each under its citizen's lock.
    pub(super) async fn check_resolution_model(
        &self,
        sample: Option<u64>,
        repair: bool,
    ) -> StoreResult<ModelCheck> {
        let mut report = ModelCheck::default();
        match sample {
            Some(n) => {
                // A sort of every citizen's id: a long read.
                let mut tx = self.long_read().await?;
                let picked: Vec<(String,)> = tx
                    .fetch_all(
                        Sql::new("SELECT citizen_id FROM citizens ORDER BY random() LIMIT $1")
                            .bind(i64::try_from(n).unwrap_or(i64::MAX)),
                    )
                    .await?;
                tx.commit().await?;
                let mut picked: Vec<String> = picked.into_iter().map(|(c,)| c).collect();
                picked.sort_unstable();
                for chunk in picked.chunks(LOOKUP_CHUNK) {
                    let keys: Vec<&str> = chunk.iter().map(String::as_str).collect();
                    let mut tx = self.snapshot().await?;
                    let source = source_inputs(&mut tx, &keys).await?;
                    let model = read_model(&mut tx, &keys).await?;
                    tx.commit().await?;
                    compare(&keys, &source, model, &mut report);
                }
            }
            None => {
                let mut after = String::new();
                loop {
                    let mut tx = self.snapshot().await?;
                    let ids: Vec<(String,)> = tx
                        .fetch_all(
                            Sql::new(
                                "SELECT citizen_id FROM citizens WHERE citizen_id > $1 \
                                 ORDER BY citizen_id LIMIT $2",
                            )
                            .bind(after.as_str())
                            .bind(CHECK_CHUNK),
                        )
                        .await?;
                    let keys: Vec<&str> = ids.iter().map(|(c,)| c.as_str()).collect();
                    let source = source_inputs(&mut tx, &keys).await?;
                    // The model's rows in the same key range, so that a row of no
                    // citizen is found too; the last chunk's range is open-ended.
                    let last = keys.last().copied();
                    let mut sql = format!(
                        "SELECT {MODEL_COLUMNS} FROM resolution_inputs WHERE citizen_id > $1"
                    );
                    if last.is_some() {
                        sql.push_str(" AND citizen_id <= $2");
                    }
                    let mut q = Sql::new(sql).bind(after.as_str());
                    if let Some(last) = last {
                        q = q.bind(last);
                    }
                    let mut model = HashMap::new();
                    decode_rows(tx.fetch_all(q).await?, &mut model)?;
                    tx.commit().await?;
                    compare(&keys, &source, model, &mut report);
                    match last {
                        Some(last) => after = last.to_owned(),
                        None => break,
                    }
                }
            }
        }
        if sample.is_none() {
            report.broken_references = self.check_references().await?;
            report.references_checked = true;
        }
        if repair && !report.differences.is_empty() {
            report.repaired = self.repair_resolution_model(&report.differences).await?;
        }
        if sample.is_none() {
            (report.legacy_rows, report.rewritten) = self.legacy_rows(repair).await?;
        }
        Ok(report)
    }

    /// Finds the model's rows in a form older than the one this instance writes (the JSON
    /// of before migration 0018; and the first binary form when this instance writes
    /// the compact one), in citizen-id order, and with `rewrite` rewrites each in this
    /// instance's form: the same preferences, re-encoded. Answers how many were found and
    /// how many rewritten.
    ///
    /// Online: a rewrite takes no citizen's lock, because it changes no content. It
    /// updates a row only if it still holds what it was read with, so a writer that
    /// refreshed the row meanwhile (from the source tables) keeps its row, and a row
    /// rewritten here is one that no writer touched since it was read.
    async fn legacy_rows(&self, rewrite: bool) -> StoreResult<(u64, u64)> {
        let format = self.options.model_format;
        // Byte strings compare bytewise on both backends: below [2] is the first binary
        // form (an empty value, corrupt, too: it fails to decode below).
        let older_binary: Vec<u8> = match format {
            ModelFormat::Compact => vec![FORMAT_COMPACT],
            ModelFormat::First => Vec::new(),
        };
        let (mut found, mut rewritten) = (0u64, 0u64);
        let mut after = String::new();
        loop {
            // Where no row of an older form is left, one statement scans the whole table.
            let mut tx = self.long_read().await?;
            let rows: Vec<(String, Option<String>, Option<Vec<u8>>)> = tx
                .fetch_all(
                    Sql::new(
                        "SELECT citizen_id, preferences, inputs FROM resolution_inputs \
                         WHERE citizen_id > $1 AND (preferences IS NOT NULL OR inputs < $2) \
                         ORDER BY citizen_id LIMIT $3",
                    )
                    .bind(after.as_str())
                    .bind(Val::Bytes(Some(older_binary.clone())))
                    .bind(CHECK_CHUNK),
                )
                .await?;
            tx.commit().await?;
            let Some((last, _, _)) = rows.last() else {
                return Ok((found, rewritten));
            };
            after = last.clone();
            found += rows.len() as u64;
            if !rewrite {
                continue;
            }
            let mut rewrites = Vec::with_capacity(rows.len());
            for (citizen, json, inputs) in rows {
                // The status is not rewritten; any will do to decode.
                let row = model_row(&citizen, String::new(), json.as_deref(), inputs.as_deref())?;
                let encoded = encode(format, &citizen, &row.preferences)?;
                rewrites.push(Row(vec![
                    Val::Text(Some(citizen)),
                    Val::Bytes(Some(encoded)),
                    Val::Text(json),
                    Val::Bytes(inputs),
                ]));
            }
            // Set-based: one statement per chunk (per bound-parameter limit on SQLite),
            // each row guarded by the value it was read with, JSON or bytes.
            let mut tx = Tx::<D>::begin_write(&self.write).await?;
            for update in row_statements::<D>(REWRITE_HEAD, REWRITE_TAIL, rewrites)? {
                rewritten += tx.execute(update).await?;
            }
            tx.commit().await?;
        }
    }

    /// A read-only transaction whose statements all see one snapshot, for comparing
    /// the model with its source tables.
    async fn snapshot(&self) -> StoreResult<Tx<D>> {
        let mut tx = Tx::<D>::begin(&self.read).await?;
        tx.run(D::SNAPSHOT_READ).await?;
        tx.run(D::BULK_PREAMBLE).await?;
        Ok(tx)
    }

    /// Rewrites the named citizens' rows from the source tables, under their locks;
    /// deletes the rows of citizens that do not exist. Answers how many citizens.
    async fn repair_resolution_model(&self, differences: &[ModelDifference]) -> StoreResult<u64> {
        let citizens: BTreeSet<&str> = differences.iter().map(|d| d.citizen_id.as_str()).collect();
        let citizens: Vec<&str> = citizens.into_iter().collect();
        for chunk in citizens.chunks(LOOKUP_CHUNK) {
            let mut tx = Tx::<D>::begin_write(&self.write).await?;
            let mut q = D::builder("SELECT citizen_id FROM citizens WHERE citizen_id");
            D::push_in(&mut q, text_keys(chunk.iter().copied()))?;
            q.push(D::FOR_UPDATE);
            let _locked: Vec<(String,)> = tx.fetch_all(q.build()).await?;
            let mut q = D::builder(
                "DELETE FROM resolution_inputs WHERE NOT EXISTS (SELECT 1 FROM citizens c \
                 WHERE c.citizen_id = resolution_inputs.citizen_id) AND citizen_id",
            );
            D::push_in(&mut q, text_keys(chunk.iter().copied()))?;
            tx.execute(q.build()).await?;
            refresh(&mut tx, self.options.model_format, chunk).await?;
            tx.commit().await?;
        }
        Ok(citizens.len() as u64)
    }
}

/// Adds to `report` how the model's rows differ from the source's for `keys` (and any
/// model row of `model` no key names).
fn compare(
    keys: &[&str],
    source: &BTreeMap<String, CitizenInputs>,
    mut model: HashMap<String, CitizenInputs>,
    report: &mut ModelCheck,
) {
    let mut note = |citizen: &str, what: String| {
        report.differences.push(ModelDifference {
            citizen_id: citizen.to_owned(),
            what,
        })
    };
    for key in keys {
        let from_model = model.remove(*key);
        match (from_model, source.get(*key)) {
            (Some(m), Some(s)) => {
                for what in m.differences(s) {
                    note(key, what);
                }
            }
            (None, Some(_)) => note(key, "missing from the read model".to_owned()),
            (Some(_), None) => note(key, "in the read model but not a citizen".to_owned()),
            (None, None) => {}
        }
    }
    let mut extra: Vec<String> = model.into_keys().collect();
    extra.sort_unstable();
    for citizen in extra {
        note(&citizen, "in the read model but not a citizen".to_owned());
    }
    report.checked += keys.len() as u64;
}

/// One row of the source join: a citizen, one of its preferences (if any), the account
/// it points at and the previous one.
struct InputRow {
    citizen_id: String,
    citizen_status: String,
    program_code: Option<String>,
    since: Option<i64>,
    previous_account_id: Option<Uuid>,
    current: JoinedAccount,
    previous: JoinedAccount,
}

/// Read by position, as the join returns the two accounts' columns under the same names.
/// (Generic over the row type, so that one impl decodes on both backends; the bounds are
/// the handful of column types read here.)
impl<'r, R> sqlx::FromRow<'r, R> for InputRow
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Uuid: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<InputRow, sqlx::Error> {
        // The 16 account columns starting at `start`.
        let account = |start: usize| -> Result<JoinedAccount, sqlx::Error> {
            Ok(JoinedAccount {
                account_id: row.try_get(start)?,
                citizen_id: row.try_get(start + 1)?,
                kind: row.try_get(start + 2)?,
                provider_code: row.try_get(start + 3)?,
                account_ref: row.try_get(start + 4)?,
                holder_name: row.try_get(start + 5)?,
                status: row.try_get(start + 6)?,
                verification_method: row.try_get(start + 7)?,
                verified_by: row.try_get(start + 8)?,
                verified_at: row.try_get(start + 9)?,
                evidence_ref: row.try_get(start + 10)?,
                version: row.try_get(start + 11)?,
                created_at: row.try_get(start + 12)?,
                updated_at: row.try_get(start + 13)?,
                declared_holder_name: row.try_get(start + 14)?,
                verification_capacity: row.try_get(start + 15)?,
            })
        };
        Ok(InputRow {
            citizen_id: row.try_get(0)?,
            citizen_status: row.try_get(1)?,
            program_code: row.try_get(2)?,
            since: row.try_get(3)?,
            previous_account_id: row.try_get(4)?,
            current: account(5)?,
            previous: account(21)?,
        })
    }
}

/// An account's columns as a LEFT JOIN returns them: all NULL when there is none.
struct JoinedAccount {
    account_id: Option<Uuid>,
    citizen_id: Option<String>,
    kind: Option<String>,
    provider_code: Option<String>,
    account_ref: Option<String>,
    holder_name: Option<String>,
    status: Option<String>,
    verification_method: Option<String>,
    verified_by: Option<String>,
    verified_at: Option<i64>,
    evidence_ref: Option<String>,
    version: Option<i64>,
    created_at: Option<i64>,
    updated_at: Option<i64>,
    declared_holder_name: Option<String>,
    verification_capacity: Option<String>,
}

impl JoinedAccount {
    /// The account's row, if the join found one.
    fn row(self) -> StoreResult<Option<AccountRow>> {
        let Some(account_id) = self.account_id else {
            return Ok(None);
        };
        let missing = |column: &str| corrupt(format!("account {account_id}: NULL {column}"));
        Ok(Some(AccountRow {
            account_id,
            citizen_id: self.citizen_id.ok_or_else(|| missing("citizen_id"))?,
            kind: self.kind.ok_or_else(|| missing("kind"))?,
            provider_code: self.provider_code.ok_or_else(|| missing("provider_code"))?,
            account_ref: self.account_ref.ok_or_else(|| missing("account_ref"))?,
            holder_name: self.holder_name,
            status: self.status.ok_or_else(|| missing("status"))?,
            verification_method: self.verification_method,
            verified_by: self.verified_by,
            verified_at: self.verified_at,
            evidence_ref: self.evidence_ref,
            version: self.version.ok_or_else(|| missing("version"))?,
            created_at: self.created_at.ok_or_else(|| missing("created_at"))?,
            updated_at: self.updated_at.ok_or_else(|| missing("updated_at"))?,
            declared_holder_name: self.declared_holder_name,
            verification_capacity: self.verification_capacity,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(id: u128, version: i64, status: &str) -> AccountRow {
        AccountRow {
            account_id: Uuid::from_u128(id),
            citizen_id: "001090000001".into(),
            kind: "BANK_ACCOUNT".into(),
            provider_code: "VCB".into(),
            account_ref: "0123456789".into(),
            holder_name: Some("NGUYEN VAN A".into()),
            status: status.into(),
            verification_method: Some("ISSUER_CONFIRMED".into()),
            verified_by: Some("VCB".into()),
            verified_at: Some(5),
            evidence_ref: None,
            version,
            created_at: 1,
            updated_at: 5,
            declared_holder_name: None,
            verification_capacity: Some("PROVIDER".into()),
        }
    }

    fn inputs(status: &str, prefs: Vec<PreferenceSnapshot>) -> CitizenInputs {
        CitizenInputs {
            status: status.into(),
            preferences: prefs,
        }
    }

    fn pref(program: &str, a: AccountRow, b: Option<AccountRow>) -> PreferenceSnapshot {
        PreferenceSnapshot {
            program_code: program.into(),
            since: 7,
            account: a,
            previous: b,
        }
    }

    const CITIZEN: &str = "001090000001";

    fn two_preferences() -> CitizenInputs {
        inputs(
            "ACTIVE",
            vec![
                pref("", account(1, 2, "VERIFIED"), None),
                pref(
                    "PENSION",
                    account(2, 1, "VERIFIED"),
                    Some(account(1, 2, "VERIFIED")),
                ),
            ],
        )
    }

    #[test]
    fn a_stored_row_reads_back_as_what_was_written() {
        let row = two_preferences();
        let encoded = encode(ModelFormat::Compact, CITIZEN, &row.preferences).unwrap();
        assert_eq!(encoded[0], FORMAT_COMPACT);
        let back = model_row(CITIZEN, "ACTIVE".into(), None, Some(&encoded)).unwrap();
        assert_eq!(back, row);
        let (status, prefs, accounts) = back.decode().unwrap();
        assert_eq!(status, CitizenStatus::Active);
        assert_eq!(prefs[1].previous, Some(Uuid::from_u128(1)));
        assert_eq!(accounts.len(), 2);
        // No preferences at all (a citizen the population sync just added).
        let none = encode(ModelFormat::Compact, CITIZEN, &[]).unwrap();
        assert_eq!(
            model_row(CITIZEN, "ACTIVE".into(), None, Some(&none)).unwrap(),
            inputs("ACTIVE", vec![])
        );
    }

    /// Resolution reads a row straight from its bytes (`decode_inputs`); whatever the row
    /// holds, it reads the same inputs as the general path (`model_row`, then
    /// `CitizenInputs::decode`), or fails as it does.
    #[test]
    fn resolution_reads_every_row_as_the_general_path_does() {
        let general = |status: &str, json: Option<&str>, inputs: Option<&[u8]>| {
            model_row(CITIZEN, status.into(), json, inputs).and_then(CitizenInputs::decode)
        };
        let mut other = account(3, 9, "SUSPENDED");
        other.citizen_id = "079190000002".into();
        other.kind = "MOBILE_MONEY".into();
        other.verification_method = Some("VNEID_DECLARED".into());
        other.verification_capacity = None;
        other.evidence_ref = Some("vneid:1".into());
        other.holder_name = Some("ĐẶNG THỊ Ữ".into());
        other.declared_holder_name = Some("DANG THI U".into());
        other.created_at = i64::MAX;
        other.updated_at = i64::MIN;
        other.verified_at = Some(-1);
        let mut unverified = account(4, 1, "PENDING_VERIFICATION");
        unverified.verified_by = None;
        let mut p = pref("TRO_CAP", other.clone(), Some(account(5, 3, "CLOSED")));
        p.since = i64::MIN;
        let mut rows = vec![
            ("ACTIVE", two_preferences().preferences),
            ("DECEASED", vec![p, pref("", other, Some(unverified))]),
            ("ACTIVE", vec![]),
            // What the domain cannot read fails on both paths, with the same error.
            ("NOT_A_STATUS", vec![]),
            (
                "ACTIVE",
                vec![pref("", account(6, 1, "SOME_NEW_STATUS"), None)],
            ),
            ("ACTIVE", vec![pref("", account(7, -1, "VERIFIED"), None)]),
        ];
        let mut odd_method = account(8, 2, "VERIFIED");
        odd_method.verification_method = Some("A_METHOD_NOT_YET_LISTED".into());
        rows.push(("ACTIVE", vec![pref("", odd_method, None)]));
        let mut odd_capacity = account(9, 2, "VERIFIED");
        odd_capacity.verification_capacity = Some("NOT_A_CAPACITY".into());
        rows.push(("ACTIVE", vec![pref("", odd_capacity, None)]));
        let mut read = 0;
        // Words the compact form does not know, in fields the account does not use (no
        // verification without its verifier).
        let mut encoded_rows: Vec<(&str, Vec<u8>)> = Vec::new();
        for unused in [0, 1] {
            let mut a = account(10, 2, "PENDING_VERIFICATION");
            a.verified_by = None;
            let mut compact = CompactAccount::of(CITIZEN, &a);
            if unused == 0 {
                compact.verification_method = Some(Word::Known(200));
            } else {
                compact.verification_capacity = Some(Word::Known(200));
            }
            let p = CompactPreference {
                program_code: Cow::Borrowed(""),
                account: compact,
                since_after_created: 0,
                previous: None,
            };
            encoded_rows.push((
                "ACTIVE",
                postcard::to_extend(&vec![p], vec![FORMAT_COMPACT]).unwrap(),
            ));
        }
        for (status, encoded) in &encoded_rows {
            let direct = decode_inputs(CITIZEN, status, None, Some(encoded));
            assert!(direct.is_err(), "{direct:?}");
            let expected = general(status, None, Some(encoded));
            assert_eq!(format!("{direct:?}"), format!("{expected:?}"));
        }
        for (status, preferences) in &rows {
            for format in [ModelFormat::Compact, ModelFormat::First] {
                let encoded = encode(format, CITIZEN, preferences).unwrap();
                let direct = decode_inputs(CITIZEN, status, None, Some(&encoded));
                let expected = general(status, None, Some(&encoded));
                assert_eq!(format!("{direct:?}"), format!("{expected:?}"), "{status}");
                read += usize::from(direct.is_ok());
            }
        }
        assert_eq!(read, 6, "three of the rows read, in both forms");
        // Bytes that are not a compact row, a JSON row, and a row in both forms.
        let good = encode(ModelFormat::Compact, CITIZEN, &rows[0].1).unwrap();
        let json = serde_json::to_string(&rows[0].1).unwrap();
        for (json, inputs) in [
            (None, Some(&good[..good.len() - 3])),
            (Some(json.as_str()), None),
            (Some(json.as_str()), Some(&good[..])),
        ] {
            let direct = decode_inputs(CITIZEN, "ACTIVE", json, inputs);
            assert_eq!(
                format!("{direct:?}"),
                format!("{:?}", general("ACTIVE", json, inputs))
            );
        }
    }

    /// The compact form leaves out what the row says already and spells the enumerations
    /// as codes: about two thirds of the first binary form's size, which is still read.
    #[test]
    fn a_row_of_the_first_binary_form_reads_as_its_compact_form_does() {
        let row = two_preferences();
        let first = encode(ModelFormat::First, CITIZEN, &row.preferences).unwrap();
        assert_eq!(first[0], FORMAT_POSTCARD);
        let compact = encode(ModelFormat::Compact, CITIZEN, &row.preferences).unwrap();
        assert_eq!(
            model_row(CITIZEN, "ACTIVE".into(), None, Some(&first)).unwrap(),
            row
        );
        assert!(
            compact.len() * 3 < first.len() * 2,
            "{} bytes against {} of the first form",
            compact.len(),
            first.len()
        );
    }

    /// Whatever a source row holds reads back unchanged, so that `check` compares what
    /// the tables hold and never reports (or hides) a difference of the encoding's making.
    #[test]
    fn unusual_values_read_back_unchanged() {
        let mut odd = account(3, i64::MAX, "SOME_NEW_STATUS");
        odd.citizen_id = "079190000002".into();
        odd.kind = "MOBILE_MONEY".into();
        odd.verification_method = Some("A_METHOD_NOT_YET_LISTED".into());
        odd.verification_capacity = None;
        odd.verified_by = None;
        odd.created_at = i64::MAX;
        odd.updated_at = i64::MIN;
        odd.verified_at = Some(-1);
        odd.holder_name = Some("ĐẶNG THỊ Ữ".into());
        odd.evidence_ref = Some(String::new());
        odd.declared_holder_name = Some("DANG THI U".into());
        let mut p = pref("TRO_CAP", odd.clone(), Some(account(4, 0, "CLOSED")));
        p.since = i64::MIN;
        let row = inputs("DECEASED", vec![p, pref("", odd, None)]);
        let encoded = encode(ModelFormat::Compact, CITIZEN, &row.preferences).unwrap();
        assert_eq!(
            model_row(CITIZEN, "DECEASED".into(), None, Some(&encoded)).unwrap(),
            row
        );
    }

    /// Every word of the compact form is a stored name of an enumeration (a misspelt one
    /// would never match, and its field would be spelt out in every row).
    #[test]
    fn every_word_is_an_enumeration_s_stored_name() {
        use crate::domain::{AccountKind, VerificationMethod};
        for word in WORDS {
            assert!(
                AccountKind::parse(word).is_ok()
                    || AccountStatus::parse(word).is_ok()
                    || VerificationMethod::parse(word).is_ok()
                    || crate::domain::assertion::Capacity::parse(word).is_some(),
                "{word}"
            );
        }
        let mut sorted = WORDS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), WORDS.len());
    }

    /// A row written before migration 0018, in JSON under the short field names (an
    /// absent optional field is `None`), reads as the same inputs as its binary form,
    /// which is about half its size.
    #[test]
    fn a_row_in_the_json_form_reads_as_its_binary_form_does() {
        let json = r#"[{"p":"","s":7,"a":{"id":"00000000-0000-0000-0000-000000000001",
            "c":"001090000001","k":"BANK_ACCOUNT","p":"VCB","r":"0123456789",
            "h":"NGUYEN VAN A","s":"VERIFIED","vm":"ISSUER_CONFIRMED","vb":"VCB","va":5,
            "v":2,"ca":1,"ua":5,"vc":"PROVIDER"}}]"#;
        let from_json = model_row(CITIZEN, "ACTIVE".into(), Some(json), None).unwrap();
        let row = inputs("ACTIVE", vec![pref("", account(1, 2, "VERIFIED"), None)]);
        assert_eq!(from_json, row);
        let encoded = encode(ModelFormat::Compact, CITIZEN, &row.preferences).unwrap();
        let compact: String = json.split_whitespace().collect();
        assert!(
            encoded.len() * 2 < compact.len() + 20,
            "{} bytes against {} of JSON",
            encoded.len(),
            compact.len()
        );
        assert_eq!(
            model_row(CITIZEN, "ACTIVE".into(), None, Some(&encoded)).unwrap(),
            from_json
        );
    }

    #[test]
    fn differences_name_the_status_and_each_preference_that_differs() {
        let source = inputs(
            "DECEASED",
            vec![
                pref("", account(1, 3, "VERIFIED"), None),
                pref("PENSION", account(2, 1, "VERIFIED"), None),
            ],
        );
        let model = inputs("ACTIVE", vec![pref("", account(1, 2, "VERIFIED"), None)]);
        let found = model.differences(&source);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("status: read model ACTIVE, source DECEASED"));
        assert!(found[1].starts_with("default preference") && found[1].contains("v2"));
        assert_eq!(found[2], "PENSION preference: missing from read model");
        assert!(source.differences(&source).is_empty());
    }

    #[test]
    fn a_model_row_in_neither_form_or_both_is_reported_corrupt() {
        let good = encode(
            ModelFormat::Compact,
            CITIZEN,
            &[pref("", account(1, 2, "VERIFIED"), None)],
        )
        .unwrap();
        let mut trailing = good.clone();
        trailing.push(0);
        let mut unknown = good.clone();
        unknown[0] = 3;
        // The account's kind, a word code, after the format, count, program code,
        // account id and the citizen's None.
        let mut unknown_word = good.clone();
        assert_eq!(&unknown_word[20..22], &[0, 0], "kind: Known(BANK_ACCOUNT)");
        unknown_word[21] = WORDS.len() as u8;
        let cut = &good[..good.len() - 3];
        for (json, inputs) in [
            (Some("not json"), None),
            (None, Some(&unknown[..])),
            (None, Some(&unknown_word[..])),
            (None, Some(&trailing[..])),
            (None, Some(cut)),
            (None, Some(&[][..])),
            (Some("[]"), Some(&good[..])),
            (None, None),
        ] {
            assert!(
                model_row(CITIZEN, "ACTIVE".into(), json, inputs).is_err(),
                "{json:?} {inputs:?}"
            );
        }
    }
}
