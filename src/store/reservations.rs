//! Payment reservations (`domain::reservation`): taken for a whole batch in one
//! transaction, set-based (one INSERT ... ON CONFLICT DO NOTHING over the batch, one
//! select of the live holders), released by their holder, and the conflicts kept for
//! investigators with a DUPLICATE_ENTITLEMENT_DETECTED event each.
//!
//! Concurrency: the partial unique index `reservations_live` decides. Two payers
//! reserving the same payments at once on PostgreSQL: the second's INSERT waits for the
//! first's commit on each conflicting key and then skips it, and its select (a new
//! statement, READ COMMITTED) sees the first's rows. Keys are inserted in one order, so
//! two such batches wait on each other without deadlocking. SQLite writers take turns.

use std::collections::{BTreeMap, HashMap, HashSet};

use uuid::Uuid;

use super::dialect::{insert_rows, select_in, Dialect};
use super::sql::Row;
use super::sql::{text_keys, Sql, Val};
use super::sql_store::SqlStore;
use super::{corrupt, StoreResult};
use crate::domain::event::DuplicateEntitlementDetected;
use crate::domain::reservation::{
    DuplicateEntitlement, EntitlementFilter, ReserveItem, Reserved, DUPLICATE_ENTITLEMENT_REASON,
};
use crate::domain::{CitizenId, Timestamp};

/// A live reservation, as read back.
#[derive(Debug, sqlx::FromRow)]
struct LiveRow {
    reservation_id: Uuid,
    citizen_id: String,
    program_code: String,
    period: String,
    holder_key: String,
    holder: String,
    reserved_at: i64,
}

/// A row of `duplicate_entitlements`.
#[derive(Debug, sqlx::FromRow)]
struct EntitlementRow {
    entitlement_id: Uuid,
    citizen_id: String,
    program_code: String,
    period: String,
    holder: String,
    claimant: String,
    reservation_id: Uuid,
    detected_at: i64,
}

impl From<EntitlementRow> for DuplicateEntitlement {
    fn from(r: EntitlementRow) -> DuplicateEntitlement {
        DuplicateEntitlement {
            entitlement_id: r.entitlement_id,
            citizen: CitizenId::from_stored(r.citizen_id),
            program_code: r.program_code,
            period: r.period,
            holder: r.holder,
            claimant: r.claimant,
            reservation_id: r.reservation_id,
            detected_at: Timestamp(r.detected_at),
        }
    }
}

type Key = (String, String, String, String);

fn key_of(item: &ReserveItem) -> Key {
    let (c, p, t, h) = item.key();
    (c.to_owned(), p.to_owned(), t.to_owned(), h.to_owned())
}

impl<D: Dialect> SqlStore<D> {
    pub(super) async fn take_reservations(
        &self,
        holder: &str,
        items: &[ReserveItem],
        now: Timestamp,
    ) -> StoreResult<Vec<Reserved>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // Each payment once, in key order (see the module's documentation).
        let wanted: BTreeMap<Key, &ReserveItem> = items.iter().map(|i| (key_of(i), i)).collect();
        let at = now.micros();
        let mut tx = self.begin_write().await?;
        let mut live: HashMap<Key, LiveRow> = HashMap::with_capacity(wanted.len());
        let mut missing: Vec<&ReserveItem> = wanted.values().copied().collect();
        // A reservation another payer releases between this insert (which skipped it)
        // and this select is neither taken nor held: insert those again (rare).
        for _ in 0..3 {
            if missing.is_empty() {
                break;
            }
            let fresh: Vec<(Uuid, &ReserveItem)> =
                missing.iter().map(|i| (Uuid::now_v7(), *i)).collect();
            // RETURNING says which rows went in: those are this payer's, as made here;
            // only the others (already held, by it or by another payer) are read back.
            let mut went_in: HashSet<Uuid> = HashSet::with_capacity(fresh.len());
            let per_statement = D::BINDS_PER_STATEMENT.map_or(fresh.len(), |b| (b / 7).max(1));
            for chunk in fresh.chunks(per_statement) {
                let rows: Vec<Row> = chunk
                    .iter()
                    .map(|(id, item)| {
                        let mut b = Row(Vec::with_capacity(7));
                        b.push_bind(*id)
                            .push_bind(item.citizen.as_str())
                            .push_bind(item.program_code.as_str())
                            .push_bind(item.period.as_str())
                            .push_bind(item.holder_key.as_str())
                            .push_bind(holder)
                            .push_bind(at);
                        b
                    })
                    .collect();
                let mut q = D::builder(
                    "INSERT INTO reservations (reservation_id, citizen_id, program_code, period, \
                     holder_key, holder, reserved_at) ",
                );
                D::push_relation(&mut q, rows)?;
                q.push(
                    " ON CONFLICT (citizen_id, program_code, period, holder_key) \
                     WHERE released_at IS NULL DO NOTHING RETURNING reservation_id",
                );
                let ids: Vec<(Uuid,)> = tx.fetch_all(q.build()).await?;
                went_in.extend(ids.into_iter().map(|(id,)| id));
            }
            for (id, item) in &fresh {
                if went_in.contains(id) {
                    let (citizen, program, period, holder_key) = item.key();
                    let row = LiveRow {
                        reservation_id: *id,
                        citizen_id: citizen.to_owned(),
                        program_code: program.to_owned(),
                        period: period.to_owned(),
                        holder_key: holder_key.to_owned(),
                        holder: holder.to_owned(),
                        reserved_at: at,
                    };
                    live.insert(key_of(item), row);
                }
            }
            missing.retain(|i| !live.contains_key(&key_of(i)));
            if missing.is_empty() {
                break;
            }
            let mut citizens: Vec<&str> = missing.iter().map(|i| i.citizen.as_str()).collect();
            citizens.dedup();
            let rows: Vec<LiveRow> = select_in(
                &mut tx,
                "SELECT reservation_id, citizen_id, program_code, period, holder_key, holder, \
                 reserved_at FROM reservations WHERE released_at IS NULL AND citizen_id",
                "",
                text_keys(citizens),
            )
            .await?;
            for r in rows {
                let key = (
                    r.citizen_id.clone(),
                    r.program_code.clone(),
                    r.period.clone(),
                    r.holder_key.clone(),
                );
                if wanted.contains_key(&key) {
                    live.insert(key, r);
                }
            }
            missing.retain(|i| !live.contains_key(&key_of(i)));
        }
        // Another payer's: recorded once per (its reservation, this claimant).
        let taken: Vec<&LiveRow> = wanted
            .keys()
            .filter_map(|k| live.get(k))
            .filter(|r| r.holder != holder)
            .collect();
        let recorded: Vec<Uuid> = if taken.is_empty() {
            Vec::new()
        } else {
            let mut q =
                D::builder("SELECT reservation_id FROM duplicate_entitlements WHERE claimant = ");
            q.push_bind(holder).push(" AND reservation_id");
            D::push_in(
                &mut q,
                taken
                    .iter()
                    .map(|r| Val::Uuid(Some(r.reservation_id)))
                    .collect(),
            )?;
            let rows: Vec<(Uuid,)> = tx.fetch_all(q.build()).await?;
            rows.into_iter().map(|(id,)| id).collect()
        };
        let new: Vec<(Uuid, &LiveRow)> = taken
            .into_iter()
            .filter(|r| !recorded.contains(&r.reservation_id))
            .map(|r| (Uuid::now_v7(), r))
            .collect();
        insert_rows(
            &mut tx,
            "INSERT INTO duplicate_entitlements (entitlement_id, citizen_id, program_code, \
             period, holder, claimant, reservation_id, detected_at) ",
            " ON CONFLICT (reservation_id, claimant) DO NOTHING",
            &new,
            8,
            |b, (id, r)| {
                b.push_bind(*id)
                    .push_bind(r.citizen_id.as_str())
                    .push_bind(r.program_code.as_str())
                    .push_bind(r.period.as_str())
                    .push_bind(r.holder.as_str())
                    .push_bind(holder)
                    .push_bind(r.reservation_id)
                    .push_bind(at);
            },
        )
        .await?;
        let mut payloads = Vec::with_capacity(new.len());
        for (id, r) in &new {
            let payload = serde_json::to_string(&DuplicateEntitlementDetected {
                entitlement_id: *id,
                program_code: r.program_code.clone(),
                period: r.period.clone(),
                holder: r.holder.clone(),
                claimant: holder.to_owned(),
            })
            .map_err(corrupt)?;
            payloads.push((r.citizen_id.as_str(), payload));
        }
        insert_rows(
            &mut tx,
            "INSERT INTO events (event_id, occurred_at, event_type, citizen_id, account_id, \
             actor, reason, payload, actor_capacity) ",
            "",
            &payloads,
            9,
            |b, (citizen, payload)| {
                b.push_bind(Uuid::now_v7())
                    .push_bind(at)
                    .push_bind("DUPLICATE_ENTITLEMENT_DETECTED")
                    .push_bind(*citizen)
                    .push_bind(None::<Uuid>)
                    .push_bind(holder)
                    .push_bind(DUPLICATE_ENTITLEMENT_REASON)
                    .push_bind(payload.as_str())
                    .push_bind(None::<&str>);
            },
        )
        .await?;
        tx.commit().await?;
        if !payloads.is_empty() {
            self.tick();
        }
        items
            .iter()
            .map(|item| {
                let row = live.get(&key_of(item)).ok_or_else(|| {
                    corrupt("a reservation neither taken nor held by another payer")
                })?;
                Ok(if row.holder == holder {
                    Reserved::Held {
                        reservation_id: row.reservation_id,
                        reserved_at: Timestamp(row.reserved_at),
                    }
                } else {
                    Reserved::Taken
                })
            })
            .collect()
    }

    pub(super) async fn release_held(
        &self,
        holder: &str,
        program_code: &str,
        period: &str,
        citizens: &[CitizenId],
        reason: &str,
        now: Timestamp,
    ) -> StoreResult<u64> {
        let mut tx = self.begin_write().await?;
        let mut q = D::builder("UPDATE reservations SET released_at = ");
        q.push_bind(now.micros())
            .push(", release_reason = ")
            .push_bind(reason)
            .push(" WHERE released_at IS NULL AND holder = ")
            .push_bind(holder)
            .push(" AND program_code = ")
            .push_bind(program_code)
            .push(" AND period = ")
            .push_bind(period);
        if !citizens.is_empty() {
            q.push(" AND citizen_id");
            D::push_in(&mut q, text_keys(citizens.iter().map(CitizenId::as_str)))?;
        }
        let released = tx.execute(q.build()).await?;
        tx.commit().await?;
        Ok(released)
    }

    pub(super) async fn entitlements_page(
        &self,
        filter: &EntitlementFilter,
        before: Option<(Timestamp, Uuid)>,
        limit: u32,
    ) -> StoreResult<Vec<DuplicateEntitlement>> {
        let province = filter.province_code.as_ref().map(|p| format!("{p}%"));
        let rows: Vec<EntitlementRow> = self
            .reader()
            .await?
            .fetch_all(
                Sql::new(
                    "SELECT entitlement_id, citizen_id, program_code, period, holder, claimant, \
                     reservation_id, detected_at FROM duplicate_entitlements \
                     WHERE ($1 IS NULL OR program_code = $1) AND ($2 IS NULL OR period = $2) \
                     AND ($3 IS NULL OR citizen_id LIKE $3) \
                     AND ($4 IS NULL OR detected_at < $4 \
                          OR (detected_at = $4 AND entitlement_id < $5)) \
                     ORDER BY detected_at DESC, entitlement_id DESC LIMIT $6",
                )
                .bind(filter.program_code.as_deref())
                .bind(filter.period.as_deref())
                .bind(province.as_deref())
                .bind(before.map(|(t, _)| t.micros()))
                .bind(before.map(|(_, id)| id))
                .bind(i64::from(limit)),
            )
            .await?;
        Ok(rows.into_iter().map(DuplicateEntitlement::from).collect())
    }
}
