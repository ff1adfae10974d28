//! The write planner: what a batch of writes does, decided in memory against the state its
//! transaction read (and locked), as rows to write.
//!
//! Every write is a batch: a population-sync batch of records, or a single command
//! (`commands.rs`) as a batch of one. [`Accounts`] is the planner's working copy of the
//! accounts a batch touches, and its steps (link, verify, change, prefer) are what every
//! write of accounts is made of, each applying the rules (`link` for links, claims and the
//! first default; `Account::changed` for the state machine; `assertion` for who may
//! vouch; `resolve::previous_for_change` for the cooling-off) once, for every path.
//!
//! A batch is walked in order, so a record sees the effect of the records before it in
//! the same batch (two revisions of one record, two claims on one account), exactly as if
//! they had been applied one by one. What it decides is a [`Work`]: rows to write, table
//! by table. A sync record the ledger (`sync_records`) already answered is not planned
//! again: the same version is answered with the outcome recorded then, refusal included,
//! and an older one is STALE.
//!
//! It is pure (no SQL): the store reads what a batch needs into a [`Loaded`], calls the
//! planner, and writes the [`Work`] with one statement per table (`store/batch.rs`).

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::cmp::Ordering;

use uuid::Uuid;

use super::link::DuplicateClaim;
use super::write::WriteContext;
use crate::domain::assertion::{may_verify, Capacity, Channel, HolderNameSource};
use crate::domain::event::{CitizenStatusChanged, PreferenceChanged};
use crate::domain::link::{
    check_link, claim_on_held, first_verified_default, new_link, owned_by_another, ProviderTerms,
    DUPLICATE_CLAIM_REASON, FIRST_VERIFIED_REASON,
};
use crate::domain::{
    account_not_found, check_verification, Account, AccountKind, AccountRef, AccountStatus, Change,
    CitizenId, CitizenStatus, HolderName, Reason, RecordOutcome, Rejection, StoredPreference,
    SyncAccount, SyncCitizen, Timestamp, VerificationInput,
};

/// The two sync streams, as named in `sync_records.stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStream {
    Citizens,
    Accounts,
}

impl SyncStream {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncStream::Citizens => "CITIZENS",
            SyncStream::Accounts => "ACCOUNTS",
        }
    }
}

/// What a batch needs to know of each record before it reads the database.
pub trait SyncRecord: Sync {
    /// The stream the record arrives on.
    const STREAM: SyncStream;
    fn record_id(&self) -> &str;
    fn citizen_id(&self) -> &CitizenId;
    /// Legacy numbers the record registers.
    fn legacy_ids(&self) -> Vec<String> {
        Vec::new()
    }
    /// The account the record declares.
    fn account_key(&self) -> Option<AccountKeyTuple> {
        None
    }
}

impl SyncRecord for SyncCitizen {
    const STREAM: SyncStream = SyncStream::Citizens;
    fn record_id(&self) -> &str {
        &self.record_id
    }
    fn citizen_id(&self) -> &CitizenId {
        &self.citizen_id
    }
    fn legacy_ids(&self) -> Vec<String> {
        self.legacy_ids
            .iter()
            .map(|l| l.as_str().to_owned())
            .collect()
    }
}

impl SyncRecord for SyncAccount {
    const STREAM: SyncStream = SyncStream::Accounts;
    fn record_id(&self) -> &str {
        &self.record_id
    }
    fn citizen_id(&self) -> &CitizenId {
        &self.citizen_id
    }
    fn account_key(&self) -> Option<AccountKeyTuple> {
        Some((
            self.kind,
            self.provider_code.clone(),
            self.account_ref.clone(),
        ))
    }
}

/// A citizen row as the planner needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CitizenState {
    pub full_name: Option<String>,
    pub date_of_birth: Option<String>,
    pub status: CitizenStatus,
    pub died_on: Option<String>,
    pub source_version: Option<i64>,
}

/// Identifies an account at its provider.
pub type AccountKeyTuple = (AccountKind, String, AccountRef);

pub fn key_of(a: &Account) -> AccountKeyTuple {
    (a.kind, a.provider_code.clone(), a.account_ref.clone())
}

/// A `sync_records` entry: what the registry last decided for a record id.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerEntry {
    /// The last version acted on.
    pub version: i64,
    /// ACCOUNTS: the account the record declares.
    pub account_id: Option<Uuid>,
    /// What that version was answered: `Applied`, or `Rejected` with its refusal. Sent
    /// again with the same version, the record gets this answer again.
    pub outcome: RecordOutcome,
}

impl LedgerEntry {
    /// Rebuilds an entry from its row: `outcome` is APPLIED or a rejection reason, with
    /// the refusal's field and message (absent on rows written before migration 0007,
    /// whose repeated refusal says that it was decided earlier). `None`: an outcome this
    /// version does not know.
    pub fn from_row(
        version: i64,
        account_id: Option<Uuid>,
        outcome: &str,
        rejected_field: Option<String>,
        rejected_message: Option<String>,
    ) -> Option<LedgerEntry> {
        let outcome = if outcome == APPLIED {
            RecordOutcome::Applied
        } else {
            let reason = Reason::parse(outcome)?;
            let message = rejected_message.unwrap_or_else(|| {
                format!(
                    "refused earlier for {}; the recorded outcome is repeated",
                    reason.as_str()
                )
            });
            RecordOutcome::Rejected(Rejection {
                field: rejected_field,
                ..Rejection::new(reason, message)
            })
        };
        Some(LedgerEntry {
            version,
            account_id,
            outcome,
        })
    }
}

/// What the ledger already says of a record version: sent again with the version it
/// recorded, the outcome recorded then (so a client that resends committed batches it
/// never saw acknowledged still learns of their refusals); older, STALE. `None`: a newer
/// version (or a new record), to be planned.
fn answered(entry: Option<&LedgerEntry>, version: i64) -> Option<RecordOutcome> {
    let entry = entry?;
    match entry.version.cmp(&version) {
        Ordering::Equal => Some(entry.outcome.clone()),
        Ordering::Greater => Some(RecordOutcome::Stale),
        Ordering::Less => None,
    }
}

/// What the transaction read before planning.
#[derive(Debug, Default)]
pub struct Loaded {
    /// `sync_records` of this stream, by record id.
    pub ledger: HashMap<String, LedgerEntry>,
    /// The batch's citizens that exist (locked on PostgreSQL).
    pub citizens: HashMap<String, CitizenState>,
    /// Legacy numbers of the batch that are already registered -> their citizen.
    pub aliases: HashMap<String, String>,
    /// Accounts the batch may touch: the citizens' open accounts and those named by the
    /// ledger.
    pub accounts: HashMap<Uuid, Account>,
    /// Held (VERIFIED or SUSPENDED) accounts with the batch's keys -> (citizen, account).
    pub holders: HashMap<AccountKeyTuple, (String, Uuid)>,
    /// Citizens of the batch that have a default preference.
    pub has_default: HashSet<String>,
    /// The reference data's providers, by code.
    pub providers: HashMap<String, ProviderTerms>,
    /// A single command's citizen's preferences (the default's program code is empty).
    pub preferences: Vec<StoredPreference>,
}

/// A citizen row to write (insert or update).
#[derive(Debug, Clone)]
pub struct CitizenWrite {
    pub citizen_id: CitizenId,
    pub state: CitizenState,
    /// Whether the row existed when the batch read it (and locked it, on PostgreSQL):
    /// existing rows are updated, new ones appended.
    pub existed: bool,
}

/// A row of `citizen_history`.
#[derive(Debug, Clone)]
pub struct CitizenHistoryWrite {
    pub citizen_id: String,
    pub state: CitizenState,
    pub reason: &'static str,
}

/// A row of `events`.
#[derive(Debug, Clone)]
pub struct EventWrite {
    pub event_type: String,
    pub citizen_id: String,
    pub account_id: Option<Uuid>,
    pub reason: String,
    /// The payload's JSON text, as stored ([`payload_json`]).
    pub payload: String,
    /// The capacity the population platform vouched in (verifications).
    pub actor_capacity: Option<Capacity>,
}

/// An event's payload as the JSON text the outbox stores, serialized straight from its
/// type (`domain::event`), with no `serde_json::Value` tree between: building and dropping
/// one took a quarter of a bulk load's own CPU (200 k citizens: 910 / 1,002 against 666 /
/// 718 ticks). The keys keep the type's field order. None of the payload types can fail
/// to serialize (no map has non-string keys); `null` if one did.
pub fn payload_json(payload: &impl serde::Serialize) -> String {
    serde_json::to_string(payload).unwrap_or_else(|_| "null".to_owned())
}

/// A row of `sync_records`.
#[derive(Debug, Clone)]
pub struct LedgerWrite {
    pub stream: SyncStream,
    pub record_id: String,
    pub version: i64,
    pub outcome: &'static str,
    pub citizen_id: String,
    pub account_id: Option<Uuid>,
    /// A refusal's field and message, kept to answer the same version sent again.
    pub rejected_field: Option<String>,
    pub rejected_message: Option<String>,
    /// Whether the ledger had the record id when the batch read it: existing entries are
    /// updated, new ones appended.
    pub existed: bool,
}

impl LedgerWrite {
    fn new(
        stream: SyncStream,
        record_id: &str,
        version: i64,
        outcome: &RecordOutcome,
        citizen_id: &str,
    ) -> Self {
        let (rejected_field, rejected_message) = match outcome {
            RecordOutcome::Rejected(r) => (r.field.clone(), Some(r.message.clone())),
            RecordOutcome::Applied | RecordOutcome::Stale => (None, None),
        };
        LedgerWrite {
            stream,
            record_id: record_id.to_owned(),
            version,
            outcome: outcome_text(outcome),
            citizen_id: citizen_id.to_owned(),
            account_id: None,
            rejected_field,
            rejected_message,
            existed: false,
        }
    }
}

/// A version of an account to append to `account_history`.
#[derive(Debug, Clone)]
pub struct HistoryWrite {
    pub account: Account,
    pub change: Change,
    pub reason: String,
    /// The capacity the change was asserted in: a verification's, a rejection's, the
    /// payer's whose failed credit suspended the account.
    pub capacity: Option<Capacity>,
}

/// A preference pointed at an account: the default when `program_code` is empty.
#[derive(Debug, Clone)]
pub struct PreferenceWrite {
    pub account: Account,
    pub program_code: String,
    /// The account paid during the cooling-off (`previous_for_change`).
    pub previous: Option<Uuid>,
    pub reason: String,
    /// Whether the citizen had this preference when the batch read it: existing rows are
    /// updated, new ones appended.
    pub existed: bool,
}

/// A row of `payout_failures`.
#[derive(Debug, Clone)]
pub struct FailureWrite {
    pub failure_id: Uuid,
    pub account_id: Uuid,
    pub citizen_id: String,
    pub program_code: String,
    pub failure_code: &'static str,
    pub payer_reference: String,
    pub failed_at: Option<Timestamp>,
    pub reason: String,
    pub capacity: Capacity,
}

/// Everything a batch writes, table by table.
#[derive(Debug, Default)]
pub struct Work {
    pub outcomes: Vec<RecordOutcome>,
    /// Final state per citizen, in citizen-id order.
    pub citizens: Vec<CitizenWrite>,
    pub citizen_history: Vec<CitizenHistoryWrite>,
    pub aliases: Vec<(String, String)>,
    /// Final state per account the batch changed that existed before it, in id order.
    pub accounts: Vec<Account>,
    /// Final state per account the batch created, in id order.
    pub new_accounts: Vec<Account>,
    /// Each version an account passed through in the batch.
    pub account_history: Vec<HistoryWrite>,
    pub duplicate_claims: Vec<DuplicateClaim>,
    pub preferences: Vec<PreferenceWrite>,
    pub failures: Vec<FailureWrite>,
    pub events: Vec<EventWrite>,
    /// Final entry per record id.
    pub ledger: Vec<LedgerWrite>,
}
const SYNC_REASON: &str = "population sync";

/// `sync_records.outcome` of an applied record.
const APPLIED: &str = "APPLIED";

fn outcome_text(outcome: &RecordOutcome) -> &'static str {
    match outcome {
        RecordOutcome::Applied | RecordOutcome::Stale => APPLIED,
        RecordOutcome::Rejected(r) => r.reason.as_str(),
    }
}

/// Keeps the last ledger entry per record id, marking those the ledger already had.
fn final_ledger(
    entries: Vec<LedgerWrite>,
    read: &HashMap<String, LedgerEntry>,
) -> Vec<LedgerWrite> {
    let mut by_id: HashMap<String, LedgerWrite> = HashMap::with_capacity(entries.len());
    for e in entries {
        let existed = read.contains_key(&e.record_id);
        by_id.insert(e.record_id.clone(), LedgerWrite { existed, ..e });
    }
    let mut out: Vec<LedgerWrite> = by_id.into_values().collect();
    out.sort_by(|a, b| a.record_id.cmp(&b.record_id));
    out
}

/// Plans a batch of citizen records.
pub fn plan_citizens(_ctx: &WriteContext, batch: &[SyncCitizen], loaded: &Loaded) -> Work {
    let mut work = Work::default();
    let mut ledger = loaded.ledger.clone();
    let mut citizens: HashMap<String, (CitizenState, bool)> = loaded
        .citizens
        .iter()
        .map(|(id, s)| (id.clone(), (s.clone(), true)))
        .collect();
    let mut touched: Vec<CitizenId> = Vec::new();
    let mut aliases = loaded.aliases.clone();
    let mut ledger_writes = Vec::new();
    for rec in batch {
        let id = rec.citizen_id.as_str();
        if let Some(answer) = answered(ledger.get(&rec.record_id), rec.version) {
            work.outcomes.push(answer);
            continue;
        }
        // Not newer than the citizen's stored facts (from another record id): nothing to do.
        let current = citizens.get(id);
        if current.is_some_and(|(s, _)| s.source_version.is_some_and(|v| v >= rec.version)) {
            work.outcomes.push(RecordOutcome::Stale);
            continue;
        }
        let outcome = match aliases_conflict(rec, &aliases) {
            Some(refused) => RecordOutcome::Rejected(refused),
            None => {
                let previous = current.map(|(s, _)| s.status);
                let existed = current.is_some_and(|(_, existed)| *existed);
                let state = CitizenState {
                    full_name: rec.full_name.clone(),
                    date_of_birth: rec.date_of_birth.clone(),
                    status: rec.status,
                    died_on: rec.died_on.clone(),
                    source_version: Some(rec.version),
                };
                for legacy in &rec.legacy_ids {
                    if !aliases.contains_key(legacy.as_str()) {
                        aliases.insert(legacy.as_str().to_owned(), id.to_owned());
                        work.aliases
                            .push((legacy.as_str().to_owned(), id.to_owned()));
                    }
                }
                work.citizen_history.push(CitizenHistoryWrite {
                    citizen_id: id.to_owned(),
                    state: state.clone(),
                    reason: SYNC_REASON,
                });
                if previous.unwrap_or(CitizenStatus::Active) != rec.status {
                    work.events.push(EventWrite {
                        event_type: "CITIZEN_STATUS_CHANGED".into(),
                        citizen_id: id.to_owned(),
                        account_id: None,
                        reason: SYNC_REASON.into(),
                        payload: payload_json(&CitizenStatusChanged {
                            citizen_id: id.to_owned(),
                            previous_status: previous.map(|s| s.as_str().to_owned()),
                            status: rec.status.as_str().to_owned(),
                            died_on: rec.died_on.clone(),
                            source_version: rec.version,
                            record_id: rec.record_id.clone(),
                        }),
                        actor_capacity: None,
                    });
                }
                citizens.insert(id.to_owned(), (state, existed));
                touched.push(rec.citizen_id.clone());
                RecordOutcome::Applied
            }
        };
        ledger.insert(
            rec.record_id.clone(),
            LedgerEntry {
                version: rec.version,
                account_id: None,
                outcome: outcome.clone(),
            },
        );
        ledger_writes.push(LedgerWrite::new(
            SyncCitizen::STREAM,
            &rec.record_id,
            rec.version,
            &outcome,
            id,
        ));
        work.outcomes.push(outcome);
    }
    touched.sort();
    touched.dedup();
    work.citizens = touched
        .into_iter()
        .filter_map(|cid| {
            let (state, existed) = citizens.get(cid.as_str())?.clone();
            Some(CitizenWrite {
                citizen_id: cid,
                state,
                existed,
            })
        })
        .collect();
    work.ledger = final_ledger(ledger_writes, &loaded.ledger);
    work
}

fn aliases_conflict(rec: &SyncCitizen, aliases: &HashMap<String, String>) -> Option<Rejection> {
    rec.legacy_ids.iter().find_map(|legacy| {
        aliases
            .get(legacy.as_str())
            .filter(|owner| owner.as_str() != rec.citizen_id.as_str())
            .map(|_| {
                Rejection::field(
                    Reason::LegacyIdTaken,
                    "legacy_ids",
                    "a legacy number on this record is registered to another citizen",
                )
            })
    })
}

/// A verification to apply: the evidence, the capacity the writer was found entitled to
/// vouch in (`may_verify`, decided by the caller before anything is written), and the
/// holder name sent with it, with whose statement that name is.
pub struct Vouch<'v> {
    pub input: VerificationInput,
    pub capacity: Capacity,
    pub holder_name: Option<(&'v HolderName, HolderNameSource)>,
}

/// The planner's working copy of the accounts a batch touches, and the steps every write
/// of accounts is made of (link, verify, change, prefer), each applying the rules of
/// `domain` to that copy and recording what to write in a [`Work`]. The population-sync
/// records and the single commands (`commands.rs`) are sequences of these steps.
pub struct Accounts<'a> {
    pub ctx: &'a WriteContext,
    loaded: &'a Loaded,
    /// Current state of every account read or created, and whether it is new.
    accounts: HashMap<Uuid, (Account, bool)>,
    /// The accounts of each citizen (ids into `accounts`), so a record looks at its own
    /// citizen's accounts only.
    by_citizen: HashMap<String, Vec<Uuid>>,
    changed: HashSet<Uuid>,
    holders: HashMap<AccountKeyTuple, (String, Uuid)>,
    has_default: HashSet<String>,
    /// Citizens this batch creates (first seen by a link), and the reason it records.
    first_seen: HashSet<String>,
    first_seen_reason: &'static str,
}

impl<'a> Accounts<'a> {
    /// A working copy of what `loaded` holds. A link for a citizen `loaded` lacks creates
    /// the citizen (ACTIVE, no registered name), recording `first_seen_reason`.
    pub fn new(
        ctx: &'a WriteContext,
        loaded: &'a Loaded,
        first_seen_reason: &'static str,
    ) -> Accounts<'a> {
        let mut by_citizen: HashMap<String, Vec<Uuid>> =
            HashMap::with_capacity(loaded.accounts.len());
        for a in loaded.accounts.values() {
            by_citizen
                .entry(a.citizen_id.as_str().to_owned())
                .or_default()
                .push(a.id);
        }
        Accounts {
            ctx,
            loaded,
            accounts: loaded
                .accounts
                .iter()
                .map(|(id, a)| (*id, (a.clone(), false)))
                .collect(),
            by_citizen,
            changed: HashSet::new(),
            holders: loaded.holders.clone(),
            has_default: loaded.has_default.clone(),
            first_seen: HashSet::new(),
            first_seen_reason,
        }
    }

    /// An account's state as the batch has left it so far.
    pub fn get(&self, id: Uuid) -> Option<&Account> {
        self.accounts.get(&id).map(|(a, _)| a)
    }

    /// The account a command names, or the refusal for an id the registry does not know.
    pub fn existing(&self, id: Uuid) -> Result<Account, Rejection> {
        self.get(id).cloned().ok_or_else(|| account_not_found(id))
    }

    fn open_of<'s>(&'s self, citizen: &'s str) -> impl Iterator<Item = &'s Account> + 's {
        self.by_citizen
            .get(citizen)
            .into_iter()
            .flatten()
            .filter_map(|id| self.accounts.get(id).map(|(a, _)| a))
            .filter(|a| a.status.is_open())
    }

    /// Stores a new version of an account, with its history row and event.
    fn record(
        &mut self,
        work: &mut Work,
        account: Account,
        change: Change,
        is_new: bool,
        reason: &str,
        capacity: Option<Capacity>,
    ) {
        if account.status.is_held() {
            self.holders.insert(
                key_of(&account),
                (account.citizen_id.as_str().to_owned(), account.id),
            );
        } else if self
            .holders
            .get(&key_of(&account))
            .is_some_and(|(_, id)| *id == account.id)
        {
            self.holders.remove(&key_of(&account));
        }
        work.account_history.push(HistoryWrite {
            account: account.clone(),
            change,
            reason: reason.to_owned(),
            capacity,
        });
        work.events.push(EventWrite {
            event_type: format!("ACCOUNT_{}", change.as_str()),
            citizen_id: account.citizen_id.as_str().to_owned(),
            account_id: Some(account.id),
            reason: reason.to_owned(),
            payload: payload_json(&account),
            actor_capacity: capacity,
        });
        self.changed.insert(account.id);
        if !self.accounts.contains_key(&account.id) {
            self.by_citizen
                .entry(account.citizen_id.as_str().to_owned())
                .or_default()
                .push(account.id);
        }
        let was_new = self
            .accounts
            .get(&account.id)
            .map(|(_, n)| *n)
            .unwrap_or(is_new);
        self.accounts.insert(account.id, (account, was_new));
    }

    /// Refuses a claim on an account held by another citizen, recording it.
    fn claim_conflict(
        &mut self,
        work: &mut Work,
        claim: &Account,
        context: &str,
    ) -> Option<Rejection> {
        let holder = self.holders.get(&key_of(claim));
        let claim = claim_on_held(
            claim,
            holder.map(|(citizen, account)| (citizen.as_str(), *account)),
            context,
            &self.ctx.actor,
            self.ctx.now,
        )?;
        work.events.push(EventWrite {
            event_type: "DUPLICATE_CLAIM_DETECTED".into(),
            citizen_id: claim.claimant.as_str().to_owned(),
            account_id: None,
            reason: DUPLICATE_CLAIM_REASON.into(),
            payload: payload_json(&claim.event()),
            actor_capacity: None,
        });
        work.duplicate_claims.push(claim);
        Some(owned_by_another())
    }

    /// Links a new account (`new_link`), verifying it at once when `vouch` is given: a
    /// claim on an account another citizen holds is refused (and recorded) before
    /// anything else, then the citizen's status, the provider and the open-account limit
    /// (`check_link`). Answers the account as the link leaves it.
    pub fn link(
        &mut self,
        work: &mut Work,
        account: Account,
        vouch: Option<&Vouch<'_>>,
        reason: &str,
    ) -> Result<Account, Rejection> {
        if let Some(refused) = self.claim_conflict(work, &account, "LINK") {
            return Err(refused);
        }
        let citizen_id = account.citizen_id.as_str();
        // A citizen the registry has not seen is created ACTIVE by this link.
        check_link(
            self.loaded
                .citizens
                .get(citizen_id)
                .map_or(CitizenStatus::Active, |c| c.status),
            self.loaded.providers.get(&account.provider_code).copied(),
            &account,
            self.open_of(citizen_id),
        )?;
        let verified = match vouch {
            Some(v) => Some(self.verify(work, &account, v)?),
            None => None,
        };
        self.first_seen(work, &account.citizen_id);
        self.record(work, account.clone(), Change::Linked, true, reason, None);
        match verified {
            Some(next) => {
                self.finish_verification(work, next.clone(), reason);
                Ok(next)
            }
            None => Ok(account),
        }
    }

    /// Records a citizen first seen by a link, unless the registry or this batch has it.
    fn first_seen(&mut self, work: &mut Work, citizen: &CitizenId) {
        let id = citizen.as_str();
        if self.loaded.citizens.contains_key(id) || !self.first_seen.insert(id.to_owned()) {
            return;
        }
        let state = CitizenState {
            full_name: None,
            date_of_birth: None,
            status: CitizenStatus::Active,
            died_on: None,
            source_version: None,
        };
        work.citizen_history.push(CitizenHistoryWrite {
            citizen_id: id.to_owned(),
            state: state.clone(),
            reason: self.first_seen_reason,
        });
        work.citizens.push(CitizenWrite {
            citizen_id: citizen.clone(),
            state,
            existed: false,
        });
    }

    /// The account as `vouch` verifies it, or the rule that refuses: the state machine,
    /// the evidence (`check_verification`; NAME_MATCH compares the holder name the
    /// provider reported with this verification, never one stored earlier) and the
    /// one-holder rule. Records nothing but a refused claim; [`Accounts::finish_verification`]
    /// records the result.
    pub fn verify(
        &mut self,
        work: &mut Work,
        account: &Account,
        vouch: &Vouch<'_>,
    ) -> Result<Account, Rejection> {
        let next = account.changed(
            Change::Verified,
            &self.ctx.actor,
            self.ctx.now,
            Some((&vouch.input, vouch.capacity)),
            vouch.holder_name,
        )?;
        let reported = vouch
            .holder_name
            .filter(|(_, source)| *source == HolderNameSource::Provider)
            .map(|(h, _)| h.as_str());
        let registered = self
            .loaded
            .citizens
            .get(account.citizen_id.as_str())
            .and_then(|c| c.full_name.as_deref());
        check_verification(&vouch.input, reported, registered)?;
        if let Some(refused) = self.claim_conflict(work, account, "VERIFY") {
            return Err(refused);
        }
        Ok(next)
    }

    /// Records a verification, and makes the account the default if the citizen has none.
    pub fn finish_verification(&mut self, work: &mut Work, next: Account, reason: &str) {
        let capacity = next.verification.as_ref().and_then(|v| v.capacity);
        self.record(
            work,
            next.clone(),
            Change::Verified,
            false,
            reason,
            capacity,
        );
        let has_default = self.has_default.contains(next.citizen_id.as_str());
        if first_verified_default(&next, has_default).is_some() {
            self.prefer(work, &next, "", None, FIRST_VERIFIED_REASON, false);
        }
    }

    /// Applies a change other than a verification (reject, suspend, reinstate, close)
    /// to `account` and records it, asserted in `capacity` where one was required.
    pub fn change(
        &mut self,
        work: &mut Work,
        account: &Account,
        change: Change,
        capacity: Option<Capacity>,
        reason: &str,
    ) -> Result<Account, Rejection> {
        let next = account.changed(change, &self.ctx.actor, self.ctx.now, None, None)?;
        self.record(work, next.clone(), change, false, reason, capacity);
        Ok(next)
    }

    /// Points the citizen's preference for `program_code` (the default when empty) at
    /// `account`, remembering `previous` for the cooling-off, and announces it.
    pub fn prefer(
        &mut self,
        work: &mut Work,
        account: &Account,
        program_code: &str,
        previous: Option<Uuid>,
        reason: &str,
        existed: bool,
    ) {
        let citizen = account.citizen_id.as_str();
        if program_code.is_empty() {
            self.has_default.insert(citizen.to_owned());
        }
        let payload = PreferenceChanged {
            program_code: program_code.to_owned(),
            previous_account_id: previous,
            account: account.clone(),
        };
        work.events.push(EventWrite {
            event_type: "DEFAULT_CHANGED".into(),
            citizen_id: citizen.to_owned(),
            account_id: Some(account.id),
            reason: reason.to_owned(),
            payload: payload_json(&payload),
            actor_capacity: None,
        });
        work.preferences.push(PreferenceWrite {
            account: account.clone(),
            program_code: program_code.to_owned(),
            previous,
            reason: reason.to_owned(),
            existed,
        });
    }

    /// Moves the final state of every account the batch changed into `work`, existing
    /// accounts and new ones apart, each in id order; and the citizens in id order.
    pub fn finish(self, work: &mut Work) {
        let mut changed: Vec<Uuid> = self.changed.iter().copied().collect();
        changed.sort();
        for id in changed {
            if let Some((a, is_new)) = self.accounts.get(&id) {
                if *is_new {
                    work.new_accounts.push(a.clone());
                } else {
                    work.accounts.push(a.clone());
                }
            }
        }
        work.citizens
            .sort_by(|a, b| a.citizen_id.as_str().cmp(b.citizen_id.as_str()));
    }
}

/// Why a citizen first seen by a population-sync record was created.
const FIRST_DECLARED_REASON: &str = "first seen when an account was declared";

/// Plans a batch of account records. Citizens the registry has never heard of are created
/// (ACTIVE, no registered name) by the first record that links an account to them, as
/// LinkAccount does.
pub fn plan_accounts(ctx: &WriteContext, batch: &[SyncAccount], loaded: &Loaded) -> Work {
    let mut work = Work::default();
    let mut ledger = loaded.ledger.clone();
    let mut ledger_writes = Vec::new();
    let mut state = Accounts::new(ctx, loaded, FIRST_DECLARED_REASON);
    for rec in batch {
        let seen = ledger.get(&rec.record_id);
        if let Some(answer) = answered(seen, rec.version) {
            work.outcomes.push(answer);
            continue;
        }
        let declared = seen.and_then(|e| e.account_id);
        // A refusal is decided before anything is recorded for the record, so it leaves
        // the work untouched except for a recorded duplicate claim.
        let (outcome, account_id) = match apply_account(&mut state, &mut work, rec, declared) {
            Ok(id) => (RecordOutcome::Applied, id),
            Err(refused) => (RecordOutcome::Rejected(refused), declared),
        };
        ledger.insert(
            rec.record_id.clone(),
            LedgerEntry {
                version: rec.version,
                account_id,
                outcome: outcome.clone(),
            },
        );
        ledger_writes.push(LedgerWrite {
            account_id,
            ..LedgerWrite::new(
                SyncAccount::STREAM,
                &rec.record_id,
                rec.version,
                &outcome,
                rec.citizen_id.as_str(),
            )
        });
        work.outcomes.push(outcome);
    }
    state.finish(&mut work);
    work.ledger = final_ledger(ledger_writes, &loaded.ledger);
    work
}

/// Applies one account record; answers the account it declares (if any).
fn apply_account(
    state: &mut Accounts<'_>,
    work: &mut Work,
    rec: &SyncAccount,
    declared: Option<Uuid>,
) -> Result<Option<Uuid>, Rejection> {
    let citizen_id = rec.citizen_id.as_str();
    // The account this record is about: the one it declared before, else an open account
    // of the citizen with the same key (linked by another channel).
    let target = match declared.and_then(|id| state.get(id)).cloned() {
        Some(a)
            if a.citizen_id.as_str() != citizen_id
                || a.kind != rec.kind
                || a.provider_code != rec.provider_code
                || a.account_ref != rec.account_ref =>
        {
            return Err(Rejection::field(
                Reason::SyncRecordMoved,
                "record_id",
                "this record id declared another account; withdraw it (removed) and declare \
                 the new account under a new record id",
            ))
        }
        Some(a) if a.status.is_open() => Some(a),
        _ => state
            .open_of(citizen_id)
            .find(|a| {
                a.kind == rec.kind
                    && a.provider_code == rec.provider_code
                    && a.account_ref == rec.account_ref
            })
            .cloned(),
    };
    if rec.removed {
        let Some(account) = target else {
            return Ok(declared);
        };
        let next = state.change(work, &account, Change::Closed, None, SYNC_REASON)?;
        return Ok(Some(next.id));
    }
    // The population platform vouches (relaying VNeID), and the holder name it relays is
    // the provider's statement. Who may vouch is decided before anything is recorded.
    let vouch = match rec.confirmation {
        Some(method)
            if target
                .as_ref()
                .is_none_or(|a| a.status == AccountStatus::PendingVerification) =>
        {
            Some(Vouch {
                input: VerificationInput {
                    method,
                    evidence_ref: rec.evidence(),
                },
                capacity: may_verify(
                    &state.ctx.authority,
                    Channel::PopulationSync,
                    method,
                    &rec.provider_code,
                )?,
                holder_name: rec
                    .holder_name
                    .as_ref()
                    .map(|h| (h, HolderNameSource::Provider)),
            })
        }
        _ => None,
    };
    match target {
        // A new link: the rules of LinkAccount.
        None => {
            let account = new_link(
                &rec.citizen_id,
                rec.kind,
                &rec.provider_code,
                &rec.account_ref,
                rec.holder_name.as_ref().map(|h| h.as_str().to_owned()),
                true,
                state.ctx.now,
            );
            Ok(Some(
                state.link(work, account, vouch.as_ref(), SYNC_REASON)?.id,
            ))
        }
        // Declared again with a confirmation while pending: verified. Without one, or
        // already verified: nothing to change.
        Some(account) => {
            if let Some(vouch) = &vouch {
                let next = state.verify(work, &account, vouch)?;
                state.finish_verification(work, next, SYNC_REASON);
            }
            Ok(Some(account.id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(field: Option<&str>, message: &str) -> RecordOutcome {
        RecordOutcome::Rejected(Rejection {
            field: field.map(str::to_owned),
            ..Rejection::new(Reason::LegacyIdTaken, message)
        })
    }

    #[test]
    fn a_ledger_row_gives_back_the_outcome_it_recorded() {
        let applied = LedgerEntry::from_row(3, None, "APPLIED", None, None).unwrap();
        assert_eq!(applied.outcome, RecordOutcome::Applied);
        let refused = LedgerEntry::from_row(
            3,
            None,
            "LEGACY_ID_TAKEN",
            Some("legacy_ids".into()),
            Some("taken".into()),
        )
        .unwrap();
        assert_eq!(refused.outcome, refusal(Some("legacy_ids"), "taken"));
    }

    #[test]
    fn a_refusal_recorded_before_its_message_was_kept_says_it_was_decided_earlier() {
        let old = LedgerEntry::from_row(3, None, "LEGACY_ID_TAKEN", None, None).unwrap();
        assert_eq!(
            old.outcome,
            refusal(
                None,
                "refused earlier for LEGACY_ID_TAKEN; the recorded outcome is repeated"
            )
        );
        assert!(LedgerEntry::from_row(3, None, "NO_SUCH_REASON", None, None).is_none());
    }

    #[test]
    fn the_same_version_is_answered_as_recorded_an_older_one_is_stale_a_newer_one_planned() {
        let entry = LedgerEntry {
            version: 5,
            account_id: None,
            outcome: refusal(Some("legacy_ids"), "taken"),
        };
        assert_eq!(answered(Some(&entry), 5), Some(entry.outcome.clone()));
        assert_eq!(answered(Some(&entry), 4), Some(RecordOutcome::Stale));
        assert_eq!(answered(Some(&entry), 6), None);
        assert_eq!(answered(None, 1), None);
    }

    #[test]
    fn a_death_is_stored_as_the_citizen_status_event_the_feed_reads_back() {
        let id = CitizenId::parse("001085000001").unwrap();
        let mut loaded = Loaded::default();
        loaded.citizens.insert(
            id.as_str().to_owned(),
            CitizenState {
                full_name: Some("NGUYEN VAN AN".into()),
                date_of_birth: None,
                status: CitizenStatus::Active,
                died_on: None,
                source_version: Some(1),
            },
        );
        let death = SyncCitizen {
            record_id: "r-9".into(),
            version: 2,
            citizen_id: id.clone(),
            full_name: Some("NGUYEN VAN AN".into()),
            date_of_birth: None,
            status: CitizenStatus::Deceased,
            died_on: Some("2026-11-30".into()),
            legacy_ids: Vec::new(),
        };
        let ctx = WriteContext {
            actor: "population".into(),
            idempotency: None,
            now: Timestamp(1_700_000_000_000_000),
            authority: Default::default(),
        };
        let work = plan_citizens(&ctx, &[death], &loaded);
        assert_eq!(work.outcomes, [RecordOutcome::Applied]);
        let [event] = &work.events[..] else {
            panic!("one event, not {:?}", work.events.len())
        };
        assert_eq!(event.event_type, "CITIZEN_STATUS_CHANGED");
        let stored: CitizenStatusChanged = serde_json::from_str(&event.payload).unwrap();
        assert_eq!(
            stored,
            CitizenStatusChanged {
                citizen_id: "001085000001".into(),
                previous_status: Some("ACTIVE".into()),
                status: "DECEASED".into(),
                died_on: Some("2026-11-30".into()),
                source_version: 2,
                record_id: "r-9".into(),
            }
        );
    }
}
