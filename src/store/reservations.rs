//! Payment reservations (`domain::reservation`): taken for a whole batch in one
//! transaction, set-based (per payment of the batch, usually one: one INSERT ... ON
//! CONFLICT DO NOTHING over its citizens, and a select of the holders of those that did
//! not go in), released by their holder, and the conflicts kept for investigators with a
//! DUPLICATE_ENTITLEMENT_DETECTED event each.
//!
//! Concurrency: the partial unique index `reservations_live` decides. Two payers
//! reserving the same payments at once on PostgreSQL: the second's INSERT waits for the
//! first's commit on each conflicting key and then skips it, and its select (a new
//! statement, READ COMMITTED) sees the first's rows. Keys are inserted in one order, so
//! two such batches wait on each other without deadlocking. SQLite writers take turns.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use uuid::Uuid;

use super::dialect::{insert_rows, statement_sizes, Dialect, Tx};
use super::sql::Row;
use super::sql::{text_keys, Sql, Val};
use super::sql_store::SqlStore;
use super::{corrupt, StoreResult};
use crate::domain::event::DuplicateEntitlementDetected;
use crate::domain::planner::payload_json;
use crate::domain::reservation::{
    DuplicateEntitlement, EntitlementFilter, ReserveItem, Reserved, DUPLICATE_ENTITLEMENT_REASON,
};
use crate::domain::{CitizenId, Timestamp};

/// A live reservation that was there before this batch (the caller's or another
/// payer's), as read back.
#[derive(Debug, sqlx::FromRow)]
struct LiveRow {
    reservation_id: Uuid,
    citizen_id: String,
    holder: String,
    reserved_at: i64,
}

/// Who holds a payment this batch asked for. `holder` is `None` for the caller.
#[derive(Debug)]
struct Holding {
    reservation_id: Uuid,
    holder: Option<String>,
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

/// A payment of this batch that another payer holds.
struct Duplicate<'a> {
    payment: Payment<'a>,
    citizen: &'a str,
    reservation_id: Uuid,
    /// The other payer.
    holder: &'a str,
}

/// A payment's reservation key apart from the citizen: (program, period, holder_key).
/// A batch almost always has one.
type Payment<'a> = (&'a str, &'a str, &'a str);

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
        let mut payments: BTreeMap<Payment, BTreeSet<&str>> = BTreeMap::new();
        for item in items {
            let (citizen, program, period, holder_key) = item.key();
            payments
                .entry((program, period, holder_key))
                .or_default()
                .insert(citizen);
        }
        let at = now.micros();
        let mut tx = self.begin_write().await?;
        let mut held: HashMap<(Payment, &str), Holding> = HashMap::with_capacity(items.len());
        for (&payment, citizens) in &payments {
            take_payment(&mut tx, holder, payment, citizens, at, &mut held).await?;
        }
        // Another payer's: recorded once per (its reservation, this claimant), in key
        // order like the reservations.
        let mut taken: Vec<Duplicate> = held
            .iter()
            .filter_map(|(&(payment, citizen), h)| {
                h.holder.as_deref().map(|other| Duplicate {
                    payment,
                    citizen,
                    reservation_id: h.reservation_id,
                    holder: other,
                })
            })
            .collect();
        taken.sort_unstable_by_key(|d| (d.payment, d.citizen));
        let recorded: HashSet<Uuid> = if taken.is_empty() {
            HashSet::new()
        } else {
            let mut q =
                D::builder("SELECT reservation_id FROM duplicate_entitlements WHERE claimant = ");
            q.push_bind(holder).push(" AND reservation_id");
            D::push_in(
                &mut q,
                taken
                    .iter()
                    .map(|d| Val::Uuid(Some(d.reservation_id)))
                    .collect(),
            )?;
            let rows: Vec<(Uuid,)> = tx.fetch_all(q.build()).await?;
            rows.into_iter().map(|(id,)| id).collect()
        };
        let new: Vec<(Uuid, &Duplicate)> = taken
            .iter()
            .filter(|d| !recorded.contains(&d.reservation_id))
            .map(|d| (Uuid::now_v7(), d))
            .collect();
        insert_rows(
            &mut tx,
            "INSERT INTO duplicate_entitlements (entitlement_id, citizen_id, program_code, \
             period, holder, claimant, reservation_id, detected_at) ",
            " ON CONFLICT (reservation_id, claimant) DO NOTHING",
            &new,
            8,
            |b, (id, d)| {
                let (program, period, _) = d.payment;
                b.push_bind(*id)
                    .push_bind(d.citizen)
                    .push_bind(program)
                    .push_bind(period)
                    .push_bind(d.holder)
                    .push_bind(holder)
                    .push_bind(d.reservation_id)
                    .push_bind(at);
            },
        )
        .await?;
        let mut payloads = Vec::with_capacity(new.len());
        for (id, d) in &new {
            let (program, period, _) = d.payment;
            let payload = payload_json(&DuplicateEntitlementDetected {
                entitlement_id: *id,
                program_code: program.to_owned(),
                period: period.to_owned(),
                holder: d.holder.to_owned(),
                claimant: holder.to_owned(),
            });
            payloads.push((d.citizen, payload));
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
                let (citizen, program, period, holder_key) = item.key();
                let h = held
                    .get(&((program, period, holder_key), citizen))
                    .ok_or_else(|| {
                        corrupt("a reservation neither taken nor held by another payer")
                    })?;
                Ok(match h.holder {
                    None => Reserved::Held {
                        reservation_id: h.reservation_id,
                        reserved_at: Timestamp(h.reserved_at),
                    },
                    Some(_) => Reserved::Taken,
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

/// Takes one payment (program, period, holder_key) for `citizens`, in their order:
/// one INSERT ... ON CONFLICT DO NOTHING per statement's worth, the payment's columns
/// bound once, RETURNING saying which rows went in (the caller's, as made here); only
/// the others (held already, by the caller or another payer) are read back. A
/// reservation released by its holder between this insert (which skipped it) and the
/// read-back is neither taken nor held: those are inserted again (rare), up to three
/// rounds.
async fn take_payment<'a, D: Dialect>(
    tx: &mut Tx<D>,
    holder: &str,
    payment: Payment<'a>,
    citizens: &BTreeSet<&'a str>,
    at: i64,
    held: &mut HashMap<(Payment<'a>, &'a str), Holding>,
) -> StoreResult<()> {
    let (program, period, holder_key) = payment;
    let mut missing: Vec<&str> = citizens.iter().copied().collect();
    for _ in 0..3 {
        if missing.is_empty() {
            break;
        }
        let fresh: Vec<(Uuid, &str)> = missing.iter().map(|c| (Uuid::now_v7(), *c)).collect();
        let mut went_in: HashSet<Uuid> = HashSet::with_capacity(fresh.len());
        // Under the bind limit with the five values bound once, and in the dialect's
        // statement sizes (SQLite: powers of two, so a few texts stay prepared).
        let most = D::BINDS_PER_STATEMENT.map_or(fresh.len(), |b| (b.saturating_sub(5) / 2).max(1));
        let mut rest = &fresh[..];
        for size in statement_sizes::<D>(fresh.len(), 2, most) {
            let (chunk, after) = rest.split_at(size);
            rest = after;
            let rows: Vec<Row> = chunk
                .iter()
                .map(|(id, citizen)| {
                    let mut b = Row(Vec::with_capacity(2));
                    b.push_bind(*id).push_bind(*citizen);
                    b
                })
                .collect();
            let mut q = D::builder(
                "INSERT INTO reservations (reservation_id, citizen_id, program_code, period, \
                 holder_key, holder, reserved_at) SELECT r.*, ",
            );
            q.push_bind(program)
                .push(", ")
                .push_bind(period)
                .push(", ")
                .push_bind(holder_key)
                .push(", ")
                .push_bind(holder)
                .push(", ")
                .push_bind(at)
                .push(" FROM (");
            D::push_relation(&mut q, rows)?;
            // `WHERE true`: SQLite reads an upsert's ON after a bare FROM as a join's.
            q.push(
                ") AS r WHERE true \
                 ON CONFLICT (program_code, period, holder_key, citizen_id) \
                 WHERE released_at IS NULL DO NOTHING RETURNING reservation_id",
            );
            let ids: Vec<(Uuid,)> = tx.fetch_all(q.build()).await?;
            went_in.extend(ids.into_iter().map(|(id,)| id));
        }
        for (id, citizen) in &fresh {
            if went_in.contains(id) {
                let own = Holding {
                    reservation_id: *id,
                    holder: None,
                    reserved_at: at,
                };
                held.insert((payment, *citizen), own);
            }
        }
        missing.retain(|c| !held.contains_key(&(payment, *c)));
        if missing.is_empty() {
            break;
        }
        let mut q = D::builder("SELECT reservation_id, citizen_id, holder, reserved_at");
        D::push_probes(
            &mut q,
            "reservations",
            |q| {
                q.push("released_at IS NULL AND program_code = ")
                    .push_bind(program)
                    .push(" AND period = ")
                    .push_bind(period)
                    .push(" AND holder_key = ")
                    .push_bind(holder_key);
            },
            "citizen_id",
            text_keys(missing.iter().copied()),
        )?;
        let rows: Vec<LiveRow> = tx.fetch_all(q.build()).await?;
        for r in rows {
            if let Some(citizen) = citizens.get(r.citizen_id.as_str()) {
                let holding = Holding {
                    reservation_id: r.reservation_id,
                    holder: (r.holder != holder).then_some(r.holder),
                    reserved_at: r.reserved_at,
                };
                held.insert((payment, *citizen), holding);
            }
        }
        missing.retain(|c| !held.contains_key(&(payment, *c)));
    }
    Ok(())
}
