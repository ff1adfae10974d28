//! Resolution: which account pays a citizen for a program, now or as of a past instant.
//!
//! The store only gathers the inputs; the decision (`domain::resolve`, cooling-off
//! included) is the domain's. Current-state queries are the payers' bulk path: they read
//! only the resolution read model (`resolution_model.rs`), one row per citizen by primary
//! key, all of a batch's citizens in one statement under the dialect's bulk preamble; a
//! single Resolve reads its row without a transaction. As-of queries read the history
//! tables, one citizen at a time: they are rare (audits, disputes).

use foldhash::HashMapExt;

use uuid::Uuid;

use std::sync::Arc;

use super::dialect::{Dialect, Pooled, Tx};
use super::freshness::Entry;
use super::resolution_model::{read_resolved, DecodedInputs};
use super::rows::{HistoryRow, PreferenceRow};
use super::sql::Sql;
use super::sql_store::SqlStore;
use super::{corrupt, CacheFill, HistoryEntry, ResolveQuery, StoreResult};
use crate::domain::{
    min_position_beyond_head, resolve, Account, CitizenStatus, ProgramCode, Resolution,
    ResolutionInputs, StoredPreference, Timestamp,
};

/// The read model's rows of `citizens` (each citizen found once, in no particular order):
/// one key (unary Resolve) without a transaction, the primary key deciding the plan; many
/// in a read-only transaction, so that the key lookup's preamble (one plan per
/// connection, by the primary key) applies to it alone.
async fn read_rows<D: Dialect>(
    pool: &sqlx::Pool<D::DB>,
    citizens: &[&str],
) -> StoreResult<Vec<(String, DecodedInputs)>> {
    if citizens.len() == 1 {
        let mut conn = Pooled::<D>::acquire(pool).await?;
        return read_resolved(&mut conn, citizens).await;
    }
    let mut tx = Tx::<D>::begin(pool).await?;
    tx.run(D::KEY_LOOKUP_PREAMBLE).await?;
    let rows = read_resolved(&mut tx, citizens).await?;
    tx.commit().await?;
    Ok(rows)
}

/// How long a read that needs a fresher state than this instance has followed waits for
/// the sequencer's wake-up before it reads the feed itself.
const FRESH_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Per citizen: status, preferences, and the accounts they point at, with the position
/// they were read at (shared with the cache). Hashed with foldhash, not std's SipHash:
/// a BatchResolve hashes each of its ids here, in the cache and in the access log's set
/// of the call's citizens, and SipHash there was 4% of the registry's instructions per
/// id (callgrind, 20 k ids).
type CurrentInputs = foldhash::HashMap<String, Entry>;

impl<D: Dialect> SqlStore<D> {
    /// Resolves many queries: current-state ones from the cache or one read of all their
    /// citizens, as-of ones one by one; one resolution per query, in order, and the feed
    /// position the answers reflect (at least `min`).
    pub(super) async fn resolve_all(
        &self,
        queries: &[ResolveQuery],
        now: Timestamp,
        min: i64,
        fill: CacheFill,
    ) -> StoreResult<(Vec<Resolution>, i64)> {
        for q in queries {
            self.check_program(q.program.as_ref()).await?;
        }
        // Sorted, not only each citizen once: PostgreSQL sorts an `= ANY` array's keys
        // itself, and checks first whether they already are.
        let mut current: Vec<&str> = queries
            .iter()
            .filter(|q| q.as_of.is_none())
            .map(|q| q.citizen_id.as_str())
            .collect();
        current.sort_unstable();
        current.dedup();
        let mut position = self.fresh_enough(min).await?;
        let found = if current.is_empty() {
            CurrentInputs::default()
        } else {
            let (found, at) = self.current_inputs(&current, min, fill).await?;
            position = position.min(at);
            found
        };
        let mut out = Vec::with_capacity(queries.len());
        for q in queries {
            let (inputs, at) = match q.as_of {
                Some(at) => (self.resolve_as_of(q, at).await?, at),
                None => {
                    let key = ProgramCode::key(q.program.as_ref());
                    let inputs = match found.get(q.citizen_id.as_str()) {
                        None => ResolutionInputs::default(),
                        Some(entry) => {
                            let (status, prefs, accounts) = &entry.0;
                            inputs_from(Some(*status), prefs, key, |id| {
                                accounts.iter().find(|a| a.id == id).cloned()
                            })
                        }
                    };
                    (inputs, now)
                }
            };
            out.push(resolve(&inputs, at, self.options.cooling_off));
        }
        Ok((out, position))
    }

    /// Current-state inputs for many citizens: from the cache where it is fresh enough
    /// for `min`, the rest from the resolution read model (one primary-key probe per
    /// citizen), cached if `fill` says so. Also the position they are all true at.
    async fn current_inputs(
        &self,
        citizens: &[&str],
        min: i64,
        fill: CacheFill,
    ) -> StoreResult<(CurrentInputs, i64)> {
        let mut out = CurrentInputs::with_capacity(citizens.len());
        let mut missing = Vec::new();
        let mut position = i64::MAX;
        for citizen in citizens {
            match self.fresh.cached(citizen, min) {
                Some((entry, at)) => {
                    position = position.min(at);
                    out.insert((*citizen).to_owned(), entry);
                }
                None => missing.push(*citizen),
            }
        }
        if missing.is_empty() {
            return Ok((out, position));
        }
        // From a replica fresh enough, or from the primary, which has every change the
        // cursor has followed: either way at least `read_at` fresh.
        let missing = &missing;
        let (rows, read_at) = self
            .read_fresh(min, |pool| Box::pin(read_rows::<D>(pool, missing)))
            .await?;
        for (citizen, inputs) in rows {
            let entry = Arc::new((inputs, read_at));
            if fill == CacheFill::Fill {
                self.fresh.insert(&citizen, entry.clone());
            }
            out.insert(citizen, entry);
        }
        Ok((out, position.min(read_at)))
    }

    /// The cursor once it has reached `min`: waits briefly for the wake-up, then reads
    /// the feed; refuses a `min` beyond the feed's head.
    pub(super) async fn fresh_enough(&self, min: i64) -> StoreResult<i64> {
        if min <= 0 || self.fresh.wait_for(min, FRESH_WAIT).await {
            return Ok(self.fresh.position());
        }
        self.follow_feed(true).await?;
        let position = self.fresh.position();
        if position < min {
            return Err(min_position_beyond_head().into());
        }
        Ok(position)
    }

    /// The inputs as they were at `at`, from the history tables.
    async fn resolve_as_of(
        &self,
        q: &ResolveQuery,
        at: Timestamp,
    ) -> StoreResult<ResolutionInputs> {
        let mut conn = self.reader().await?;
        let status: Option<(String,)> = conn
            .fetch_optional(
                Sql::new(
                    "SELECT status FROM citizen_history WHERE citizen_id = $1 AND valid_from <= $2 \
                     ORDER BY valid_from DESC, id DESC LIMIT 1",
                )
                .bind(q.citizen_id.as_str())
                .bind(at.micros()),
            )
            .await?;
        let Some((status,)) = status else {
            return Ok(ResolutionInputs::default());
        };
        let citizen = CitizenStatus::parse(&status).ok_or_else(|| corrupt("citizen status"))?;
        let key = ProgramCode::key(q.program.as_ref());
        let mut prefs = Vec::new();
        for program in [key, ""] {
            let row: Option<PreferenceRow> = conn
                .fetch_optional(
                    Sql::new(
                        "SELECT program_code, account_id, previous_account_id, valid_from AS since \
                         FROM preference_history WHERE citizen_id = $1 AND program_code = $2 \
                         AND valid_from <= $3 ORDER BY valid_from DESC, id DESC LIMIT 1",
                    )
                    .bind(q.citizen_id.as_str())
                    .bind(program)
                    .bind(at.micros()),
                )
                .await?;
            prefs.extend(row.map(StoredPreference::from));
            if program.is_empty() {
                break;
            }
        }
        let ids: Vec<Uuid> = prefs
            .iter()
            .flat_map(|p| [Some(p.account_id), p.previous])
            .flatten()
            .collect();
        let mut accounts = Vec::new();
        for id in ids {
            let row: Option<HistoryRow> = conn
                .fetch_optional(
                    Sql::new(concat!(
                        "SELECT ",
                        account_columns!(),
                        ", change, actor, reason, valid_from, capacity FROM account_history \
                         WHERE account_id = $1 AND valid_from <= $2 ORDER BY version DESC LIMIT 1"
                    ))
                    .bind(id)
                    .bind(at.micros()),
                )
                .await?;
            if let Some(row) = row {
                accounts.push(Arc::new(HistoryEntry::try_from(row)?.account));
            }
        }
        Ok(inputs_from(Some(citizen), &prefs, key, |id| {
            accounts.iter().find(|a| a.id == id).cloned()
        }))
    }
}

/// Builds resolution inputs from a citizen's preferences (program key and default) and a
/// way to find each account's state.
fn inputs_from(
    citizen: Option<CitizenStatus>,
    prefs: &[StoredPreference],
    key: &str,
    account: impl Fn(Uuid) -> Option<Arc<Account>>,
) -> ResolutionInputs {
    let at = |program: &str| StoredPreference::of(prefs, program).map(|p| p.at(&account));
    ResolutionInputs {
        citizen,
        program: if key.is_empty() { None } else { at(key) },
        default: at(""),
    }
}
