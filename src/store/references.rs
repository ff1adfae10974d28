//! The references between the source tables, checked as a whole (part of `check`).
//!
//! The write path keeps every reference true: it writes an account only for a citizen it
//! has read and locked, a preference only for one of that citizen's own accounts, a history
//! row in the same transaction as the row it describes, and it deletes none of these rows.
//! PostgreSQL no longer checks them row by row with foreign keys (migrations 0010 and
//! 0016, which says what they cost), so `check` looks for what a foreign key would have
//! refused, and for what none could: a preference pointing at *another* citizen's
//! account, which would pay the wrong person. SQLite's tables still declare theirs, but
//! the registry's writer connection does not enforce them (`store/sqlite.rs`), so the
//! same check is what finds a broken reference there too.
//!
//! Each rule is one anti-join over a whole table, answered with the number of rows that
//! break it and the first few of their citizens.

use super::dialect::Dialect;
use super::sql::Sql;
use super::sql_store::SqlStore;
use super::{ReferenceBreak, StoreResult};

/// Citizens named per broken rule (the count says how many rows in all).
const EXAMPLES: i64 = 20;

/// Each rule: what a breaking row is, and the rows (by citizen id) that break it.
const RULES: &[(&str, &str)] = &[
    (
        "an account of no citizen",
        "SELECT a.citizen_id FROM accounts a WHERE NOT EXISTS \
         (SELECT 1 FROM citizens c WHERE c.citizen_id = a.citizen_id)",
    ),
    (
        "an account of an unknown provider",
        "SELECT a.citizen_id FROM accounts a WHERE NOT EXISTS \
         (SELECT 1 FROM providers p WHERE p.code = a.provider_code)",
    ),
    (
        "a preference of no citizen",
        "SELECT p.citizen_id FROM preferences p WHERE NOT EXISTS \
         (SELECT 1 FROM citizens c WHERE c.citizen_id = p.citizen_id)",
    ),
    (
        "a preference for an account that is not one of the citizen's",
        "SELECT p.citizen_id FROM preferences p WHERE NOT EXISTS \
         (SELECT 1 FROM accounts a WHERE a.account_id = p.account_id \
          AND a.citizen_id = p.citizen_id)",
    ),
    (
        "a preference whose previous account is not one of the citizen's",
        "SELECT p.citizen_id FROM preferences p WHERE p.previous_account_id IS NOT NULL \
         AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.account_id = p.previous_account_id \
          AND a.citizen_id = p.citizen_id)",
    ),
    (
        "a legacy id of no citizen",
        "SELECT l.citizen_id FROM citizen_aliases l WHERE NOT EXISTS \
         (SELECT 1 FROM citizens c WHERE c.citizen_id = l.citizen_id)",
    ),
    (
        "a citizen's history of no citizen",
        "SELECT h.citizen_id FROM citizen_history h WHERE NOT EXISTS \
         (SELECT 1 FROM citizens c WHERE c.citizen_id = h.citizen_id)",
    ),
    (
        "an account's history of no account of that citizen",
        "SELECT h.citizen_id FROM account_history h WHERE NOT EXISTS \
         (SELECT 1 FROM accounts a WHERE a.account_id = h.account_id \
          AND a.citizen_id = h.citizen_id)",
    ),
];

impl<D: Dialect> SqlStore<D> {
    /// Every rule some rows break, with their count and first citizens; empty when the
    /// references are whole.
    pub(super) async fn check_references(&self) -> StoreResult<Vec<ReferenceBreak>> {
        let mut breaks = Vec::new();
        let mut reader = self.long_read().await?;
        for (rule, rows) in RULES {
            // One pass: the window counts every breaking row before the limit applies.
            let found: Vec<(String, i64)> = reader
                .fetch_all(
                    Sql::new(format!(
                        "SELECT citizen_id, count(*) OVER () FROM ({rows}) broken \
                         ORDER BY citizen_id LIMIT $1"
                    ))
                    .bind(EXAMPLES),
                )
                .await?;
            if let Some((_, count)) = found.first() {
                breaks.push(ReferenceBreak {
                    rule: (*rule).to_owned(),
                    rows: u64::try_from(*count).unwrap_or_default(),
                    citizens: found.into_iter().map(|(c, _)| c).collect(),
                });
            }
        }
        reader.commit().await?;
        Ok(breaks)
    }
}
