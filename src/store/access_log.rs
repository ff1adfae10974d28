//! The access log: who read which citizen's data, when, and why.
//!
//! Every read of a citizen's data appends an entry, so the log is on the hot path of the
//! busiest calls. A call that reads many citizens (a BatchResolve batch) is one row naming
//! them all (in the dialect's `LOG_CITIZENS_COLUMN`, searched through its
//! `LOG_NAMES_CITIZEN`); a read of one citizen is a row of its own. The background room's
//! writers batch the entries, and each batch is one transaction; its single reads are one
//! set-based INSERT: on PostgreSQL one statement whose text never changes (arrays
//! unnested server-side, prepared once whatever the batch size), on connections the
//! writers hold outside any pool, committed without waiting for the WAL flush (the
//! dialect's `ACCESS_LOG_OWN_CONNECTIONS` says why that is safe); on SQLite multi-row
//! INSERTs under the bind limit.

use uuid::Uuid;

use sqlx::{ConnectOptions as _, Connection as _, Database};

use super::dialect::{insert_rows, Dialect, Handle, Session, Tx};
use super::health::waiting_for;
use super::sql::Sql;
use super::sql_store::SqlStore;
use super::{AccessEntry, AccessRead, StoreResult};
use crate::domain::{CitizenId, Timestamp};

impl<D: Dialect> SqlStore<D> {
    /// Appends a batch of reads in one transaction, in their order: each call's read
    /// of many citizens as one row naming them all, reads of one citizen as rows of their
    /// own (consecutive ones in one statement).
    pub(super) async fn append_reads(&self, reads: &[AccessRead]) -> StoreResult<()> {
        if reads.is_empty() {
            return Ok(());
        }
        if !D::ACCESS_LOG_OWN_CONNECTIONS {
            return write_on_pool::<D>(&self.log, reads).await;
        }
        let mut conn = self.log_connection().await?;
        let written = if reads.iter().all(|r| r.citizens.len() == 1) {
            // Reads of one citizen each (unary reads): that statement alone, its own
            // transaction. One round trip instead of three (BEGIN, INSERT, COMMIT).
            let singles: Vec<&AccessRead> = reads.iter().collect();
            insert_singles(&mut Session::<D, _>::on(&mut conn), &singles).await
        } else {
            write_in_transaction::<D>(&mut conn, reads).await
        };
        // A connection that failed is dropped, not reused: the next batch connects anew
        // (the writers' fallback retries each read of a failed batch on its own).
        if written.is_ok() {
            self.log_held.lock().expect("log connections").push(conn);
        }
        written
    }

    /// Appends a spool's reads in one transaction on the write pool, whose sessions
    /// wait for the WAL flush at commit (unlike the log's own connections): the spool
    /// deletes its copy once this returns.
    pub(super) async fn ship_reads(&self, reads: &[AccessRead]) -> StoreResult<()> {
        if reads.is_empty() {
            return Ok(());
        }
        write_on_pool::<D>(&self.write, reads).await
    }

    /// An idle connection of the access log, or a new one. Held outside any pool: a
    /// pool's liveness round trips before and after each use (sqlx pings on acquire and
    /// on release) tripled the database's work per batch of unary reads. A connection
    /// broken while idle fails its next batch, which the writers then retry.
    async fn log_connection(&self) -> StoreResult<<D::DB as Database>::Connection> {
        if let Some(conn) = self.log_held.lock().expect("log connections").pop() {
            return Ok(conn);
        }
        let options = self.log.connect_options();
        waiting_for(async {
            tokio::time::timeout(self.options.acquire_timeout, options.connect())
                .await
                .unwrap_or(Err(sqlx::Error::PoolTimedOut))
        })
        .await
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
                Sql::new(format!(
                    "SELECT id, client_id, method, purpose, accessed_at, request_id FROM access_log \
                     WHERE citizen_id = $1 AND ($2 IS NULL OR id < $2) \
                     UNION ALL \
                     SELECT id, client_id, method, purpose, accessed_at, request_id FROM access_log \
                     WHERE {} AND ($2 IS NULL OR id < $2) \
                     ORDER BY id DESC LIMIT $3",
                    D::LOG_NAMES_CITIZEN
                ))
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

/// A batch in one write transaction from `pool`.
async fn write_on_pool<D: Dialect>(
    pool: &sqlx::Pool<D::DB>,
    reads: &[AccessRead],
) -> StoreResult<()> {
    let mut tx = Tx::<D>::begin_write(pool).await?;
    insert_reads(&mut tx, reads).await?;
    tx.commit().await?;
    Ok(())
}

/// A batch naming many citizens in one call: one transaction on `conn`.
async fn write_in_transaction<D: Dialect>(
    conn: &mut <D::DB as Database>::Connection,
    reads: &[AccessRead],
) -> StoreResult<()> {
    let mut tx = Session::<D, _>::on(conn.begin().await?);
    insert_reads(&mut tx, reads).await?;
    tx.commit().await?;
    Ok(())
}

/// The batch's rows, in its order: each call's read of many citizens as one row naming
/// them all, consecutive reads of one citizen as one statement.
async fn insert_reads<D: Dialect>(
    tx: &mut Session<D, sqlx::Transaction<'_, D::DB>>,
    reads: &[AccessRead],
) -> StoreResult<()> {
    let mut singles: Vec<&AccessRead> = Vec::new();
    for read in reads {
        match read.citizens.len() {
            0 => {}
            1 => singles.push(read),
            _ => {
                insert_singles(tx, &singles).await?;
                singles.clear();
                insert_call(tx, read).await?;
            }
        }
    }
    insert_singles(tx, &singles).await
}

/// Reads of one citizen each: rows of their own, one set-based INSERT.
async fn insert_singles<D: Dialect, C: Handle<D>>(
    tx: &mut Session<D, C>,
    singles: &[&AccessRead],
) -> StoreResult<()> {
    insert_rows(
        tx,
        "INSERT INTO access_log (citizen_id, client_id, method, purpose, accessed_at, \
         request_id) ",
        "",
        singles,
        6,
        |row, e| {
            row.push_bind(e.citizens[0].as_str())
                .push_bind(e.client_id.as_str())
                .push_bind(e.method.as_str())
                .push_bind(e.purpose.as_str())
                .push_bind(e.accessed_at.micros())
                .push_bind(e.request_id);
        },
    )
    .await?;
    Ok(())
}

/// One call's read of many citizens: one row naming them all (and, where the list cannot
/// be indexed itself, a row of the full-text index naming them).
async fn insert_call<D: Dialect>(
    tx: &mut Session<D, sqlx::Transaction<'_, D::DB>>,
    e: &AccessRead,
) -> StoreResult<()> {
    let mut q = D::builder(&format!(
        "INSERT INTO access_log ({}, client_id, method, purpose, accessed_at, request_id) \
         VALUES (",
        D::LOG_CITIZENS_COLUMN
    ));
    let citizens: Vec<&CitizenId> = e.citizens.iter().collect();
    D::push_citizens(&mut q, &citizens)?;
    q.push(", ")
        .push_bind(e.client_id.as_str())
        .push(", ")
        .push_bind(e.method.as_str())
        .push(", ")
        .push_bind(e.purpose.as_str())
        .push(", ")
        .push_bind(e.accessed_at.micros())
        .push(", ")
        .push_bind(e.request_id)
        .push(") RETURNING id");
    let (id,): (i64,) = tx.fetch_one(q.build()).await?;
    if D::ACCESS_LOG_TERMS {
        let terms: Vec<&str> = citizens.iter().map(|c| c.as_str()).collect();
        tx.execute(
            Sql::new("INSERT INTO access_log_terms (rowid, citizen_ids) VALUES ($1, $2)")
                .bind(id)
                .bind(terms.join(" ")),
        )
        .await?;
    }
    Ok(())
}
