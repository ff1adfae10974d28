//! The change feed: the events every write appends (the outbox), the sequencer that gives
//! them their gapless feed positions, and everything that reads or trims the feed (pages,
//! named consumers, watch lists, pruning), plus the sync digest the sequencer keeps up to
//! date.
//!
//! Writers append events with a `position` from a sequence, so concurrent writers commit
//! them out of order; a subscriber reading by that position could skip an event that
//! commits late. The sequencer is therefore the only one to give out `feed_position`s:
//! in one transaction it takes the head row's lock (instances take turns), numbers the
//! committed unnumbered events after the head (rows of `feed_pending`, which a trigger
//! adds in each writer's transaction, become rows of `feed`: events themselves are never
//! rewritten). The sync digest's work goes in bounded steps of its own, on the digest's
//! row, so numbering never waits for it; it is published only when it has reached the head
//! with no citizen read ahead of it, so the digest always describes exactly the feed up to
//! its position (`digest_step`). The dialect adds what differs: PostgreSQL reads one
//! REPEATABLE READ snapshot (a sequencer or a digest step that loses the race on its row
//! starts again) and wakes every instance with `pg_notify`.

use std::collections::{HashMap, HashSet};

use sqlx::Pool;

use super::dialect::{insert_rows, select_in, Dialect, Pooled, Tx, LOOKUP_CHUNK};
use super::freshness::{Applied, Round};
use super::resolution_model::read_model;
use super::rows::EventRow;
use super::sql::{text_keys, Sql, Val};
use super::sql_store::SqlStore;
use super::{corrupt, DigestStep, Event, Sequenced, StoreError, StoreResult, SyncDigest};
use crate::domain::digest::{province_of, RouteDigest};
use crate::domain::{CitizenId, Timestamp};

/// The longest wake-up payload: PostgreSQL's NOTIFY takes under 8000 bytes. A round
/// naming more citizens than fit names only its range, and followers read the feed.
const NOTIFY_PAYLOAD_BYTES: usize = 7900;

/// Feed rows a follower reads at a time.
const FOLLOW_PAGE: u32 = 10_000;

/// How long a write's answer waits for its event to be numbered before it answers
/// without a position.
const WRITE_POSITION_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a sequencing round starts again after a serialization failure.
const SEQUENCER_ATTEMPTS: usize = 20;

fn serialization_failure(e: &StoreError) -> bool {
    e.has_sqlstate(&["40001"])
}

/// The citizens whose events have feed positions `from + 1 ..= to`.
async fn citizens_numbered<D: Dialect>(
    tx: &mut Tx<D>,
    from: i64,
    to: i64,
) -> StoreResult<Vec<String>> {
    let rows: Vec<(String,)> = tx
        .fetch_all(
            Sql::new(
                "SELECT DISTINCT e.citizen_id FROM feed f \
                 JOIN events e ON e.position = f.position \
                 WHERE f.feed_position > $1 AND f.feed_position <= $2",
            )
            .bind(from)
            .bind(to),
        )
        .await?;
    Ok(rows.into_iter().map(|(c,)| c).collect())
}

/// Feed positions one pruning transaction deletes at most. The transaction holds the
/// feed's head row, which the sequencer needs for every round, so a pruner catching up
/// with millions of events past retention (a national first load's, once it ages out)
/// goes in steps the sequencer's rounds fit between, each far inside the statement
/// timeout, instead of one delete that holds the feed still until it times out.
const PRUNE_CHUNK: i64 = 1_000;

fn stored_digest(hex_digest: &str, routes: i64) -> StoreResult<RouteDigest> {
    RouteDigest::from_hex(hex_digest, routes).ok_or_else(|| corrupt("stored sync digest"))
}

impl<D: Dialect> SqlStore<D> {
    /// Events after `after_position`, in write order, sequenced or not.
    pub(super) async fn events_from(
        &self,
        after_position: i64,
        limit: u32,
    ) -> StoreResult<Vec<Event>> {
        let rows: Vec<EventRow> = self
            .reader()
            .await?
            .fetch_all(
                Sql::new(
                    "SELECT e.position, e.event_id, e.occurred_at, e.event_type, e.citizen_id, \
                     e.account_id, e.actor, e.reason, e.payload, f.feed_position, \
                     e.actor_capacity FROM events e LEFT JOIN feed f ON f.position = e.position \
                     WHERE e.position > $1 ORDER BY e.position LIMIT $2",
                )
                .bind(after_position)
                .bind(i64::from(limit)),
            )
            .await?;
        Ok(rows.into_iter().map(Event::from).collect())
    }

    /// Runs `round` until it does not fail on serialization: another instance's round
    /// (or the pruner) committed after its snapshot, so it starts again from there.
    async fn retried<T, F, Fut>(&self, round: F) -> StoreResult<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = StoreResult<T>>,
    {
        let mut attempt = 0;
        loop {
            match round().await {
                Err(e) if serialization_failure(&e) && attempt < SEQUENCER_ATTEMPTS => {
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    /// Runs a sequencing round, again after a serialization failure.
    pub(super) async fn sequence(&self, limit: u32) -> StoreResult<Sequenced> {
        self.retried(|| self.sequence_round(limit)).await
    }

    /// One sequencing round: numbers the unsequenced events after the head, and names
    /// their citizens to every instance.
    async fn sequence_round(&self, limit: u32) -> StoreResult<Sequenced> {
        let mut tx = self.begin_write().await?;
        tx.run(D::SEQUENCER_ISOLATION).await?;
        // Instances take turns here: the head row is locked until this commits, and the
        // next sequencer's statements see what this one assigned.
        let (head,): (i64,) = tx
            .fetch_one(Sql::new(format!(
                "SELECT last_position FROM feed_head WHERE id = 1{}",
                D::FOR_UPDATE
            )))
            .await?;
        let assigned = tx
            .execute(
                Sql::new(
                    "INSERT INTO feed (feed_position, position) \
                     SELECT $1 + row_number() OVER (ORDER BY position), position \
                     FROM (SELECT position FROM feed_pending ORDER BY position LIMIT $2) AS s",
                )
                .bind(head)
                .bind(i64::from(limit)),
            )
            .await?;
        let new_head = head + assigned as i64;
        if assigned == 0 {
            tx.rollback().await?;
            return Ok(Sequenced {
                assigned,
                head: new_head,
            });
        }
        // The citizens this round numbered events of, from the queue rows it takes out
        // (each names its event's citizen), for the wake-up.
        let rows: Vec<(String,)> = tx
            .fetch_all(
                Sql::new(
                    "DELETE FROM feed_pending WHERE position IN \
                     (SELECT position FROM feed WHERE feed_position > $1 \
                     AND feed_position <= $2) RETURNING citizen_id",
                )
                .bind(head)
                .bind(new_head),
            )
            .await?;
        let mut numbered: Vec<String> = rows.into_iter().map(|(c,)| c).collect();
        numbered.sort_unstable();
        numbered.dedup();
        tx.execute(Sql::new("UPDATE feed_head SET last_position = $1 WHERE id = 1").bind(new_head))
            .await?;
        // The round names its citizens, so that every instance drops their cached
        // resolutions without reading the feed (`freshness.rs`).
        let round = Round {
            from: head,
            to: new_head,
            citizens: Some(numbered),
        };
        if let Some(notify) = D::FEED_ADVANCED {
            tx.execute(Sql::new(notify).bind(round.payload(NOTIFY_PAYLOAD_BYTES)))
                .await?;
        }
        tx.commit().await?;
        self.fresh.queue(round);
        // Subscribers wake for new positions.
        self.tick();
        Ok(Sequenced {
            assigned,
            head: new_head,
        })
    }

    /// Takes a step of the sync digest's work, again after a serialization failure.
    pub(super) async fn take_digest_step(&self, limit: u32) -> StoreResult<DigestStep> {
        self.retried(|| self.digest_round(limit)).await
    }

    /// One step of the sync digest's work ([`digest_step`]), in a transaction of its own:
    /// instances take turns on the digest's row, and numbering goes on meanwhile.
    async fn digest_round(&self, limit: u32) -> StoreResult<DigestStep> {
        let mut tx = self.begin_write().await?;
        tx.run(D::SEQUENCER_ISOLATION).await?;
        let (published, through, cursor): (Option<i64>, Option<i64>, Option<String>) = tx
            .fetch_one(Sql::new(format!(
                "SELECT digest_through, digest_work_through, digest_build_cursor \
                 FROM digest_head WHERE id = 1{}",
                D::FOR_UPDATE
            )))
            .await?;
        // The same snapshot's head, and the committed events it has not numbered yet
        // (a round's worth at most: more is a backlog the sequencer is still taking in).
        let (head,): (i64,) = tx
            .fetch_one(Sql::new("SELECT last_position FROM feed_head WHERE id = 1"))
            .await?;
        // Published at the head: no step left any citizen deferred, and nothing to read.
        let waiting: Vec<(String,)> = if published == Some(head) {
            Vec::new()
        } else {
            tx.fetch_all(
                Sql::new("SELECT citizen_id FROM feed_pending LIMIT $1").bind(i64::from(limit) + 1),
            )
            .await?
        };
        if published == Some(head) || waiting.len() > limit as usize {
            tx.rollback().await?;
            return Ok(DigestStep {
                behind: published != Some(head),
            });
        }
        let work = DigestWork {
            head,
            waiting: waiting.into_iter().map(|(c,)| c).collect(),
            positions: i64::from(limit),
            citizens: DIGEST_SCAN.min(i64::from(limit)),
            published,
            through,
            cursor,
        };
        let published = digest_step(&mut tx, work).await?.or(published);
        tx.commit().await?;
        // Waiters on the digest (GetSyncDigest after a write, the pruner's horizon) wake
        // for its progress.
        self.tick();
        Ok(DigestStep {
            behind: published != Some(head),
        })
    }

    /// Brings this instance's cursor (and so its cache) up to the feed: applies the
    /// rounds the wake-ups named, and reads the feed itself when `read`, after a gap, a
    /// round too large to name its citizens, or `CONFIRM_EVERY` without a read. One at a
    /// time.
    pub(super) async fn follow_feed(&self, read: bool) -> StoreResult<()> {
        let _one = self.following.lock().await;
        let (rounds, lost) = self.fresh.take_rounds();
        let mut gap = lost || read;
        for round in &rounds {
            gap |= self.fresh.apply(round) == Applied::Gap;
        }
        if !gap && !self.fresh.confirm_due() {
            return Ok(());
        }
        let mut cursor = self.fresh.position();
        if !self.fresh.started() {
            // Starting: the cache is empty, so only the head matters.
            let head = self.head_position().await?;
            self.fresh.apply_rows(&[], head);
            self.fresh.confirm();
            return Ok(());
        }
        loop {
            let rows: Vec<(i64, String)> = self
                .reader()
                .await?
                .fetch_all(
                    Sql::new(
                        "SELECT f.feed_position, e.citizen_id FROM feed f \
                         JOIN events e ON e.position = f.position \
                         WHERE f.feed_position > $1 ORDER BY f.feed_position LIMIT $2",
                    )
                    .bind(cursor)
                    .bind(i64::from(FOLLOW_PAGE)),
                )
                .await?;
            let Some(&(last, _)) = rows.last() else {
                break;
            };
            self.fresh.apply_rows(&rows, last);
            cursor = last;
            if rows.len() < FOLLOW_PAGE as usize {
                break;
            }
        }
        self.fresh.confirm();
        Ok(())
    }

    /// A single write's consistency token (see `Store::written_position`); `None` when
    /// what it waits on is not numbered within `WRITE_POSITION_WAIT`.
    pub(super) async fn written_position(
        &self,
        last_event: Option<i64>,
    ) -> StoreResult<Option<i64>> {
        // Without an event of its own, the write showed state that earlier commits left,
        // whose events are at most the largest position committed now: it waits until
        // none up to that one is left unnumbered. With one, it waits for its own event:
        // a lookup by key, where the range's scan of the queue (several hundred pages of
        // dead rows between two VACUUMs under a bulk load) by every waiting write at every
        // round made the first bulk stream after a start lag by seconds.
        let (through, look) = match last_event {
            Some(event) => (
                event,
                "SELECT (SELECT feed_position FROM feed WHERE position = $1), \
                 EXISTS (SELECT 1 FROM feed_pending WHERE position = $2), \
                 (SELECT last_position FROM feed_head WHERE id = 1)",
            ),
            None => {
                let (max,): (Option<i64>,) = self
                    .reader()
                    .await?
                    .fetch_one(Sql::new("SELECT MAX(position) FROM events"))
                    .await?;
                (
                    max.unwrap_or(0),
                    "SELECT (SELECT feed_position FROM feed WHERE position = $1), \
                     EXISTS (SELECT 1 FROM feed_pending WHERE position <= $2), \
                     (SELECT last_position FROM feed_head WHERE id = 1)",
                )
            }
        };
        self.when_numbered(|| async {
            // One snapshot: the event's feed position if numbered, whether it (or anything
            // up to `through`) still waits for a number, and the head. An event neither
            // numbered nor waiting was numbered and pruned since.
            let (numbered, waiting, head): (Option<i64>, bool, i64) = self
                .reader()
                .await?
                .fetch_one(Sql::new(look).bind(last_event).bind(through))
                .await?;
            Ok(match (numbered, waiting) {
                (Some(at), _) => Some(at),
                (None, true) => None,
                (None, false) => Some(head),
            })
        })
        .await
    }

    /// The largest feed position of `events` (write positions) once all are numbered.
    pub(super) async fn numbered_through(&self, events: &[i64]) -> StoreResult<Option<i64>> {
        let wanted = events.len() as i64;
        if wanted == 0 {
            return Ok(Some(self.fresh.position()));
        }
        self.when_numbered(|| async {
            // A stream waits on the few batches acknowledged since its last numbered one.
            let keys = events.iter().map(|p| Val::Int(Some(*p))).collect();
            let counted: Vec<(i64, Option<i64>)> = select_in(
                &mut self.reader().await?,
                "SELECT count(*), max(feed_position) FROM feed WHERE position",
                "",
                keys,
            )
            .await?;
            Ok(match counted.first() {
                Some((numbered, through)) if *numbered == wanted => *through,
                _ => None,
            })
        })
        .await
    }

    /// Runs `look` until it answers a position, again each time this instance follows
    /// the feed further (its cursor moves: events were numbered, here or by another
    /// instance), for at most [`WRITE_POSITION_WAIT`]; `None` when the wait ends first.
    /// Waiting on every commit instead made a write's answer look about 12 times under a
    /// bulk load (58,668 looks for 5,000 writes).
    async fn when_numbered<F, Fut>(&self, look: F) -> StoreResult<Option<i64>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = StoreResult<Option<i64>>>,
    {
        let deadline = tokio::time::Instant::now() + WRITE_POSITION_WAIT;
        let mut changes = self.fresh.moves();
        loop {
            changes.borrow_and_update();
            if let Some(at) = look().await? {
                return Ok(Some(at));
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return Ok(None);
            }
        }
    }

    /// The sync digest of one province or of every citizen, with its position.
    pub(super) async fn digest_of(
        &self,
        province: Option<&str>,
    ) -> StoreResult<Option<SyncDigest>> {
        // One statement: the digest rows and the position they describe, from one snapshot.
        let rows: Vec<(Option<i64>, Option<String>, Option<i64>)> = self
            .reader()
            .await?
            .fetch_all(
                Sql::new(
                    "SELECT h.digest_through, d.digest, d.routes FROM digest_head h \
                     LEFT JOIN digest_provinces d ON ($1 IS NULL OR d.province = $1) \
                     WHERE h.id = 1",
                )
                .bind(province),
            )
            .await?;
        let Some(Some(position)) = rows.first().map(|r| r.0) else {
            return Ok(None);
        };
        let mut total = RouteDigest::default();
        for (_, digest, routes) in rows {
            if let (Some(digest), Some(routes)) = (digest, routes) {
                total.add(&stored_digest(&digest, routes)?);
            }
        }
        Ok(Some(SyncDigest {
            digest: total,
            position,
        }))
    }

    /// Sequenced events after feed position `after`, in feed order.
    pub(super) async fn feed_page(
        &self,
        pool: &Pool<D::DB>,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<Event>> {
        let rows: Vec<EventRow> = Pooled::<D>::acquire(pool)
            .await?
            .fetch_all(
                Sql::new(
                    "SELECT e.position, e.event_id, e.occurred_at, e.event_type, e.citizen_id, \
                     e.account_id, e.actor, e.reason, e.payload, f.feed_position, \
                     e.actor_capacity FROM feed f JOIN events e ON e.position = f.position \
                     WHERE f.feed_position > $1 ORDER BY f.feed_position LIMIT $2",
                )
                .bind(after)
                .bind(i64::from(limit)),
            )
            .await?;
        Ok(rows.into_iter().map(Event::from).collect())
    }

    /// Like [`SqlStore::feed_page`], only the events of citizens on a watch list.
    pub(super) async fn watched_page(
        &self,
        pool: &Pool<D::DB>,
        after: i64,
        client_id: &str,
        consumer: &str,
        limit: u32,
    ) -> StoreResult<Vec<Event>> {
        let rows: Vec<EventRow> = Pooled::<D>::acquire(pool)
            .await?
            .fetch_all(
                Sql::new(
                    "SELECT e.position, e.event_id, e.occurred_at, e.event_type, e.citizen_id, \
                     e.account_id, e.actor, e.reason, e.payload, f.feed_position, \
                     e.actor_capacity FROM feed f JOIN events e ON e.position = f.position \
                     WHERE f.feed_position > $1 AND EXISTS (SELECT 1 FROM watch_lists w \
                     WHERE w.client_id = $2 AND w.consumer = $3 AND w.citizen_id = e.citizen_id) \
                     ORDER BY f.feed_position LIMIT $4",
                )
                .bind(after)
                .bind(client_id)
                .bind(consumer)
                .bind(i64::from(limit)),
            )
            .await?;
        Ok(rows.into_iter().map(Event::from).collect())
    }

    /// The last feed position assigned (0 when none).
    pub(super) async fn head_position(&self) -> StoreResult<i64> {
        let (head,): (i64,) = self
            .reader()
            .await?
            .fetch_one(Sql::new("SELECT last_position FROM feed_head WHERE id = 1"))
            .await?;
        Ok(head)
    }

    /// The last feed position pruned (0 when none).
    pub(super) async fn pruned_position(&self) -> StoreResult<i64> {
        let (pruned,): (i64,) = self
            .reader()
            .await?
            .fetch_one(Sql::new(
                "SELECT pruned_through FROM feed_head WHERE id = 1",
            ))
            .await?;
        Ok(pruned)
    }

    /// Deletes sequenced events older than `before`, within what every named consumer
    /// and the sync digest have read, [`PRUNE_CHUNK`] feed positions per transaction.
    pub(super) async fn prune(&self, before: Timestamp) -> StoreResult<u64> {
        let mut deleted = 0;
        loop {
            let (chunk, more) = self.prune_chunk(before).await?;
            deleted += chunk;
            if !more {
                return Ok(deleted);
            }
        }
    }

    /// Prunes the next [`PRUNE_CHUNK`] feed positions at most; answers how many events
    /// it deleted and whether more may be due.
    async fn prune_chunk(&self, before: Timestamp) -> StoreResult<(u64, bool)> {
        let mut tx = self.begin_write().await?;
        // Same lock as the sequencer: the head and the pruning mark move one at a time.
        let (head, pruned): (i64, i64) = tx
            .fetch_one(Sql::new(format!(
                "SELECT last_position, pruned_through FROM feed_head WHERE id = 1{}",
                D::FOR_UPDATE
            )))
            .await?;
        // The digest's position only moves on, and its steps read no event at or before
        // it: one read now may only prune less than it could.
        let (digest_through,): (Option<i64>,) = tx
            .fetch_one(Sql::new(
                "SELECT digest_through FROM digest_head WHERE id = 1",
            ))
            .await?;
        let (slowest,): (Option<i64>,) = tx
            .fetch_one(Sql::new("SELECT MIN(position) FROM feed_consumers"))
            .await?;
        // The newest event old enough to go, within what the slowest consumer has read.
        // Nor past the sync digest, which reads the citizens of the events it has not yet
        // taken in.
        let limit = slowest
            .unwrap_or(head)
            .min(head)
            .min(digest_through.unwrap_or(pruned));
        let window = limit.min(pruned.saturating_add(PRUNE_CHUNK));
        let (through,): (Option<i64>,) = tx
            .fetch_one(
                Sql::new(
                    "SELECT MAX(f.feed_position) FROM feed f \
                     JOIN events e ON e.position = f.position \
                     WHERE f.feed_position > $1 AND f.feed_position <= $2 AND e.occurred_at < $3",
                )
                .bind(pruned)
                .bind(window)
                .bind(before.micros()),
            )
            .await?;
        let Some(through) = through else {
            tx.rollback().await?;
            return Ok((0, false));
        };
        let deleted = tx
            .execute(
                Sql::new(
                    "DELETE FROM events WHERE position IN (SELECT position FROM feed \
                     WHERE feed_position > $1 AND feed_position <= $2)",
                )
                .bind(pruned)
                .bind(through),
            )
            .await?;
        tx.execute(
            Sql::new("DELETE FROM feed WHERE feed_position > $1 AND feed_position <= $2")
                .bind(pruned)
                .bind(through),
        )
        .await?;
        tx.execute(Sql::new("UPDATE feed_head SET pruned_through = $1 WHERE id = 1").bind(through))
            .await?;
        tx.commit().await?;
        // A window whose last event was old enough to go may be followed by more.
        Ok((deleted, through == window && window < limit))
    }

    /// Records a named consumer's position.
    pub(super) async fn record_position(
        &self,
        client_id: &str,
        name: &str,
        position: i64,
        now: Timestamp,
    ) -> StoreResult<()> {
        self.writer()
            .await?
            .execute(
                Sql::new(
                    "INSERT INTO feed_consumers (client_id, name, position, updated_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (client_id, name) DO UPDATE \
                     SET position = excluded.position, updated_at = excluded.updated_at",
                )
                .bind(client_id)
                .bind(name)
                .bind(position)
                .bind(now.micros()),
            )
            .await?;
        Ok(())
    }

    /// Forgets a named consumer; answers whether it existed.
    pub(super) async fn forget_consumer(&self, client_id: &str, name: &str) -> StoreResult<bool> {
        let deleted = self
            .writer()
            .await?
            .execute(
                Sql::new("DELETE FROM feed_consumers WHERE client_id = $1 AND name = $2")
                    .bind(client_id)
                    .bind(name),
            )
            .await?;
        Ok(deleted > 0)
    }

    /// A named consumer's position, if it ever committed one.
    pub(super) async fn position_of(
        &self,
        client_id: &str,
        name: &str,
    ) -> StoreResult<Option<i64>> {
        let row: Option<(i64,)> = self
            .reader()
            .await?
            .fetch_optional(
                Sql::new("SELECT position FROM feed_consumers WHERE client_id = $1 AND name = $2")
                    .bind(client_id)
                    .bind(name),
            )
            .await?;
        Ok(row.map(|(p,)| p))
    }

    /// Adds and removes citizens on a consumer's watch list, in one transaction; answers
    /// (added, removed).
    pub(super) async fn edit_watch(
        &self,
        client_id: &str,
        consumer: &str,
        add: &[CitizenId],
        remove: &[CitizenId],
    ) -> StoreResult<(u64, u64)> {
        let mut tx = self.begin_write().await?;
        let added = insert_rows(
            &mut tx,
            "INSERT INTO watch_lists (client_id, consumer, citizen_id) ",
            " ON CONFLICT DO NOTHING",
            add,
            3,
            |b, c| {
                b.push_bind(client_id)
                    .push_bind(consumer)
                    .push_bind(c.as_str());
            },
        )
        .await?;
        let mut removed = 0;
        if !remove.is_empty() {
            let mut q = D::builder("DELETE FROM watch_lists WHERE client_id = ");
            q.push_bind(client_id)
                .push(" AND consumer = ")
                .push_bind(consumer)
                .push(" AND citizen_id");
            D::push_in(&mut q, text_keys(remove.iter().map(CitizenId::as_str)))?;
            removed = tx.execute(q.build()).await?;
        }
        tx.commit().await?;
        Ok((added, removed))
    }

    /// How many citizens are on a consumer's watch list.
    pub(super) async fn watch_size(&self, client_id: &str, consumer: &str) -> StoreResult<u64> {
        let (n,): (i64,) = self
            .reader()
            .await?
            .fetch_one(
                Sql::new("SELECT COUNT(*) FROM watch_lists WHERE client_id = $1 AND consumer = $2")
                    .bind(client_id)
                    .bind(consumer),
            )
            .await?;
        Ok(n.max(0) as u64)
    }
}

/// Citizens a step of the sync digest's first build scans, at most (fewer when the
/// sequencer's round is smaller). On SQLite at 1 M citizens such a step held the only
/// write connection for at most 37 ms (the whole build in one transaction: 5.9 s).
const DIGEST_SCAN: i64 = 2_000;

/// Where the sync digest's work stands at a step, in the step's snapshot.
struct DigestWork {
    /// The feed's head.
    head: i64,
    /// The citizens of the committed events the head does not include yet (all of them).
    waiting: HashSet<String>,
    /// Feed positions taken in, and citizens a first build scans, in this step at most.
    positions: i64,
    citizens: i64,
    /// `digest_through`: the position of the published digest (`None`: never built).
    published: Option<i64>,
    /// `digest_work_through`: numbered changes up to it are in the work (`None`: the
    /// first build has not begun).
    through: Option<i64>,
    /// `digest_build_cursor`: the first build's scan has taken in every citizen up to it.
    cursor: Option<String>,
}

/// One bounded step of the sync digest's work (migrations 0014 and 0024). The work is the
/// digest being brought up to date: `digest_citizens` and each province's `work_digest`. A
/// step takes in the events numbered after `through`, at most one sequencer round of
/// positions, refreshing their citizens; during the first build it also scans the next
/// [`DIGEST_SCAN`] citizens with a preference after the scan's cursor, and takes in only
/// the events of citizens the scan has passed (the others it will read as they are when it
/// reaches them).
///
/// A refresh reads the state in the step's snapshot, which numbering (in transactions of
/// its own) may not have caught up with: a citizen with a committed event still waiting
/// for its feed position would be read ahead of the head. Such a citizen is deferred
/// instead (`digest_deferred`) and refreshed by the first step that sees none of its events
/// waiting. Every other citizen's state in the snapshot is its state at the head, since all
/// its committed events are numbered by then. A citizen taken in and changed afterwards is
/// refreshed again when the change's event is taken in. When the work has taken in every
/// event up to the head, the scan is over and no citizen is deferred, the work is the state
/// at the head, exactly: it is published, and that position returned. Until then
/// GetSyncDigest answers the digest published before, and no step holds the write lock
/// for more than its bounded work (the first build of 819 k citizens in one transaction
/// held SQLite's only writer for seconds).
async fn digest_step<D: Dialect>(tx: &mut Tx<D>, work: DigestWork) -> StoreResult<Option<i64>> {
    let started = std::time::Instant::now();
    let (from, scanned_through) = match work.through {
        Some(through) => (through, work.cursor),
        // The first build begins at the head: its scan reads a state that every event up
        // to it is in, but for the citizens it defers.
        None => {
            tracing::info!(position = work.head, "building the sync digest");
            (work.head, Some(String::new()))
        }
    };
    let to = work.head.min(from + work.positions);
    let mut citizens: Vec<String> = if from < to {
        citizens_numbered(tx, from, to).await?
    } else {
        Vec::new()
    };
    let mut cursor = None;
    if let Some(after) = scanned_through {
        citizens.retain(|c| *c <= after);
        let scanned: Vec<(String,)> = tx
            .fetch_all(
                Sql::new(
                    "SELECT DISTINCT citizen_id FROM preferences WHERE citizen_id > $1 \
                     ORDER BY citizen_id LIMIT $2",
                )
                .bind(after)
                .bind(work.citizens),
            )
            .await?;
        if scanned.len() as i64 == work.citizens {
            cursor = scanned.last().map(|(c,)| c.clone());
        }
        citizens.extend(scanned.into_iter().map(|(c,)| c));
    }
    let deferred: Vec<(String,)> = tx
        .fetch_all(Sql::new("SELECT citizen_id FROM digest_deferred"))
        .await?;
    let had_deferred = !deferred.is_empty();
    citizens.extend(deferred.into_iter().map(|(c,)| c));
    citizens.sort_unstable();
    citizens.dedup();
    let (deferring, ready): (Vec<String>, Vec<String>) =
        citizens.into_iter().partition(|c| work.waiting.contains(c));
    refresh_digest(tx, &ready).await?;
    if had_deferred {
        tx.execute(Sql::new("DELETE FROM digest_deferred")).await?;
    }
    insert_rows(
        tx,
        "INSERT INTO digest_deferred (citizen_id) ",
        "",
        &deferring,
        1,
        |row, citizen| {
            row.push_bind(citizen.as_str());
        },
    )
    .await?;
    let publish = to == work.head && cursor.is_none() && deferring.is_empty();
    if publish {
        tx.execute(Sql::new(
            "UPDATE digest_provinces SET digest = work_digest, routes = work_routes",
        ))
        .await?;
    }
    tx.execute(
        Sql::new(format!(
            "UPDATE digest_head SET digest_work_through = $1, digest_build_cursor = $2{} \
             WHERE id = 1",
            if publish { ", digest_through = $1" } else { "" }
        ))
        .bind(to)
        .bind(&cursor),
    )
    .await?;
    tracing::debug!(
        positions = to - from,
        citizens = ready.len(),
        deferred = deferring.len(),
        millis = started.elapsed().as_millis() as u64,
        published = publish,
        "sync digest step"
    );
    if !publish {
        return Ok(None);
    }
    if work.published.is_none() {
        tracing::info!(position = to, "built the sync digest");
    }
    Ok(Some(to))
}

/// Recomputes the live routes of `citizens` from the current state and moves their
/// provinces' work digests by the difference (see migrations 0005 and 0014, and
/// `domain::digest`).
async fn refresh_digest<D: Dialect>(tx: &mut Tx<D>, citizens: &[String]) -> StoreResult<()> {
    // Per province: (the change, the stored digest).
    let mut provinces: HashMap<String, (RouteDigest, RouteDigest)> = HashMap::new();
    for chunk in citizens.chunks(LOOKUP_CHUNK) {
        // The live routes, from the resolution read model: one primary-key row per
        // citizen, written in the same transaction as every change it reflects, so this
        // snapshot's rows are the snapshot's state (a join of preferences, citizens and
        // accounts planned a scan of all preferences at 200 k citizens: 23 ms a round).
        let ids: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let inputs = read_model(tx, &ids).await?;
        let old: Vec<(String, String, i64)> = select_in(
            tx,
            "SELECT citizen_id, digest, routes FROM digest_citizens WHERE citizen_id",
            "",
            text_keys(ids.iter().copied()),
        )
        .await?;
        let mut new: HashMap<&str, RouteDigest> = HashMap::new();
        for (citizen, inputs) in &inputs {
            for (program, account) in inputs.live_routes() {
                let route = RouteDigest::route(citizen, program, account);
                new.entry(citizen.as_str()).or_default().add(&route);
            }
        }
        // Only the citizens whose routes changed are rewritten: most events (a pending
        // link, a second verified account) leave a citizen's routes as they were.
        let mut gone: Vec<&str> = Vec::new();
        for (citizen, digest, routes) in &old {
            let old = stored_digest(digest, *routes)?;
            if new.get(citizen.as_str()) == Some(&old) {
                new.remove(citizen.as_str());
                continue;
            }
            gone.push(citizen);
            let change = &mut provinces
                .entry(province_of(citizen).to_owned())
                .or_default()
                .0;
            change.remove(&old);
        }
        for (citizen, digest) in &new {
            let change = &mut provinces
                .entry(province_of(citizen).to_owned())
                .or_default()
                .0;
            change.add(digest);
        }
        if !gone.is_empty() {
            let mut q = D::builder("DELETE FROM digest_citizens WHERE citizen_id");
            D::push_in(&mut q, text_keys(gone.iter().copied()))?;
            tx.execute(q.build()).await?;
        }
        let rows: Vec<(&&str, &RouteDigest)> = new.iter().collect();
        insert_rows(
            tx,
            "INSERT INTO digest_citizens (citizen_id, digest, routes) ",
            "",
            &rows,
            3,
            |row, (citizen, d)| {
                row.push_bind(**citizen)
                    .push_bind(d.to_hex())
                    .push_bind(d.routes);
            },
        )
        .await?;
    }
    if provinces.is_empty() {
        return Ok(());
    }
    let current: Vec<(String, String, i64)> = select_in(
        tx,
        "SELECT province, COALESCE(work_digest, digest), COALESCE(work_routes, routes) \
         FROM digest_provinces WHERE province",
        "",
        text_keys(provinces.keys().map(String::as_str)),
    )
    .await?;
    for (province, digest, routes) in current {
        if let Some(entry) = provinces.get_mut(&province) {
            entry.1 = stored_digest(&digest, routes)?;
        }
    }
    // A province new to the work had no route when the digest was last published.
    let published = RouteDigest::default().to_hex();
    insert_rows(
        tx,
        "INSERT INTO digest_provinces (province, digest, routes, work_digest, work_routes) ",
        " ON CONFLICT (province) DO UPDATE \
         SET work_digest = excluded.work_digest, work_routes = excluded.work_routes",
        &provinces.iter().collect::<Vec<_>>(),
        5,
        |row, (province, (change, digest))| {
            let mut work = *digest;
            work.add(change);
            row.push_bind(province.as_str())
                .push_bind(published.as_str())
                .push_bind(0i64)
                .push_bind(work.to_hex())
                .push_bind(work.routes);
        },
    )
    .await?;
    Ok(())
}
