//! Resolution: which account pays a citizen for a program, now or as of a past instant.
//!
//! The store only gathers the inputs; the decision (`domain::resolve`, cooling-off
//! included) is the domain's. Current-state queries are the payers' bulk path, so all of
//! a batch's citizens are read in one statement (their status joined with every
//! preference and the accounts it points at, under the dialect's bulk preamble); a single
//! Resolve reads by primary key without a transaction. As-of queries read the history
//! tables, one citizen at a time: they are rare (audits, disputes).

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use uuid::Uuid;

use super::dialect::{Dialect, Handle, Pooled, Session, Tx, LOOKUP_CHUNK};
use super::rows::{citizen_status, AccountRow, HistoryRow, PreferenceRow};
use super::sql::{text_keys, Sql};
use super::sql_store::SqlStore;
use super::{corrupt, HistoryEntry, ResolveQuery, StoreResult};
use crate::domain::{
    resolve, Account, CitizenStatus, PreferenceAt, ProgramCode, Resolution, ResolutionInputs,
    Timestamp,
};

/// Per citizen: status, preferences, and the accounts they point at.
type CurrentInputs = HashMap<String, (CitizenStatus, Vec<PreferenceRow>, HashMap<Uuid, Account>)>;

impl<D: Dialect> SqlStore<D> {
    /// Resolves many queries: current-state ones from one read of all their citizens,
    /// as-of ones one by one; one resolution per query, in order.
    pub(super) async fn resolve_all(
        &self,
        queries: &[ResolveQuery],
        now: Timestamp,
    ) -> StoreResult<Vec<Resolution>> {
        for q in queries {
            self.check_program(q.program.as_ref()).await?;
        }
        let mut current: Vec<&str> = queries
            .iter()
            .filter(|q| q.as_of.is_none())
            .map(|q| q.citizen_id.as_str())
            .collect();
        current.sort_unstable();
        current.dedup();
        let found = if current.is_empty() {
            HashMap::new()
        } else {
            self.current_inputs(&current).await?
        };
        let mut out = Vec::with_capacity(queries.len());
        for q in queries {
            let (inputs, at) = match q.as_of {
                Some(at) => (self.resolve_as_of(q, at).await?, at),
                None => {
                    let key = ProgramCode::key(q.program.as_ref());
                    let inputs = match found.get(q.citizen_id.as_str()) {
                        None => ResolutionInputs::default(),
                        Some((status, prefs, accounts)) => {
                            inputs_from(Some(*status), prefs, key, |id| accounts.get(&id).cloned())
                        }
                    };
                    (inputs, now)
                }
            };
            out.push(resolve(&inputs, at, self.options.cooling_off));
        }
        Ok(out)
    }

    /// Current-state inputs for many citizens in one query: each citizen's status joined
    /// with all its preferences and the accounts they point at.
    async fn current_inputs(&self, citizens: &[&str]) -> StoreResult<CurrentInputs> {
        let mut out = CurrentInputs::new();
        if citizens.len() == 1 {
            // One key (unary Resolve): the primary key decides the plan; no transaction.
            let mut conn = Pooled::<D>::acquire(&self.read).await?;
            read_inputs(&mut conn, citizens, &mut out).await?;
        } else {
            // Many keys: a read-only transaction, so the bulk preamble applies to it alone.
            let mut tx = Tx::<D>::begin(&self.read).await?;
            tx.run(D::BULK_PREAMBLE).await?;
            read_inputs(&mut tx, citizens, &mut out).await?;
            tx.commit().await?;
        }
        Ok(out)
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
            prefs.extend(row);
            if program.is_empty() {
                break;
            }
        }
        let ids: Vec<Uuid> = prefs
            .iter()
            .flat_map(|p| [Some(p.account_id), p.previous_account_id])
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
                accounts.push(HistoryEntry::try_from(row)?.account);
            }
        }
        Ok(inputs_from(Some(citizen), &prefs, key, |id| {
            accounts.iter().find(|a| a.id == id).cloned()
        }))
    }
}

/// Builds resolution inputs from preference rows (program key and default) and a way to
/// find each account's state.
fn inputs_from(
    citizen: Option<CitizenStatus>,
    prefs: &[PreferenceRow],
    key: &str,
    account: impl Fn(Uuid) -> Option<Account>,
) -> ResolutionInputs {
    let at = |program: &str| {
        prefs
            .iter()
            .find(|p| p.program_code == program)
            .map(|p| PreferenceAt {
                account: account(p.account_id),
                since: Timestamp(p.since),
                previous: p.previous_account_id.and_then(&account),
            })
    };
    ResolutionInputs {
        citizen,
        program: if key.is_empty() { None } else { at(key) },
        default: at(""),
    }
}

/// One row of the current-inputs join: a citizen, one of its preferences (if any), the
/// account it points at and the previous one.
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
    /// The account, if the join found one.
    fn account(self) -> StoreResult<Option<Account>> {
        let Some(account_id) = self.account_id else {
            return Ok(None);
        };
        let missing = |column: &str| corrupt(format!("account {account_id}: NULL {column}"));
        let r = AccountRow {
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
        };
        Account::try_from(r).map(Some)
    }
}

/// Reads the current-state inputs of `citizens` into `out`.
async fn read_inputs<D: Dialect, C: Handle<D>>(
    conn: &mut Session<D, C>,
    citizens: &[&str],
    out: &mut CurrentInputs,
) -> StoreResult<()> {
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
        for mut row in conn.fetch_all::<InputRow>(q.build()).await? {
            let entry = match out.entry(std::mem::take(&mut row.citizen_id)) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert((
                    citizen_status(&row.citizen_status)?,
                    Vec::new(),
                    HashMap::new(),
                )),
            };
            let Some(program_code) = row.program_code.take() else {
                continue;
            };
            let Some(current) = row.current.account()? else {
                return Err(corrupt("preference without its account"));
            };
            let previous = row.previous.account()?;
            entry.1.push(PreferenceRow {
                program_code,
                account_id: current.id,
                previous_account_id: row.previous_account_id,
                since: row
                    .since
                    .ok_or_else(|| corrupt("preference without its since"))?,
            });
            for a in [Some(current), previous].into_iter().flatten() {
                entry.2.insert(a.id, a);
            }
        }
    }
    Ok(())
}
