//! The access log: who read which citizen's data, when, and why.
//!
//! Every read of a citizen's data appends an entry, so the log is on the hot path of the
//! busiest calls. The background room's writers batch the entries, and each batch is one
//! transaction with one set-based INSERT: on PostgreSQL one statement whose text never
//! changes (arrays unnested server-side, prepared once whatever the batch size), committed
//! without waiting for the WAL flush (the dialect's `ACCESS_LOG_PREAMBLE` says why that is
//! safe); on SQLite multi-row INSERTs under the bind limit.

use uuid::Uuid;

use super::dialect::{insert_rows, Dialect};
use super::sql::Sql;
use super::sql_store::SqlStore;
use super::{AccessEntry, StoreResult};
use crate::domain::{CitizenId, Timestamp};

impl<D: Dialect> SqlStore<D> {
    /// Appends a batch of entries in one transaction.
    pub(super) async fn append_entries(&self, entries: &[AccessEntry]) -> StoreResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        tx.run(D::ACCESS_LOG_PREAMBLE).await?;
        insert_rows(
            &mut tx,
            "INSERT INTO access_log (citizen_id, client_id, method, purpose, accessed_at, \
             request_id) ",
            "",
            entries,
            6,
            |row, e| {
                row.push_bind(e.citizen_id.as_str())
                    .push_bind(e.client_id.as_str())
                    .push_bind(e.method.as_str())
                    .push_bind(e.purpose.as_str())
                    .push_bind(e.accessed_at.micros())
                    .push_bind(e.request_id);
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A citizen's entries, newest first, before `before_id` if given.
    pub(super) async fn entries_of(
        &self,
        citizen: &CitizenId,
        before_id: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<(i64, AccessEntry)>> {
        let rows: Vec<(i64, String, String, String, i64, Uuid)> = self
            .reader()
            .await?
            .fetch_all(
                Sql::new(
                    "SELECT id, client_id, method, purpose, accessed_at, request_id FROM access_log \
                     WHERE citizen_id = $1 AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
                )
                .bind(citizen.as_str())
                .bind(before_id)
                .bind(i64::from(limit)),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, client_id, method, purpose, at, request_id)| {
                (
                    id,
                    AccessEntry {
                        citizen_id: citizen.clone(),
                        client_id,
                        method,
                        purpose,
                        accessed_at: Timestamp(at),
                        request_id,
                    },
                )
            })
            .collect())
    }
}
