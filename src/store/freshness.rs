//! How fresh this instance's reads are: the feed position it has followed the change feed
//! through (the cursor), and the resolution cache that position keeps true.
//!
//! Every answer carries a feed position (a consistency token): the state it was read
//! from includes every event up to it. The cursor is the position through which this
//! instance has read the feed from the primary, so a read the primary answers after the
//! cursor reached P reflects at least P. The sequencer's wake-up names the citizens whose
//! events it numbered (`Round`); the follower (`SqlStore::follow`) applies each round in
//! order, dropping those citizens' cache entries before it moves the cursor past them,
//! and reads the feed itself when a round is missing or too large to name its citizens.
//!
//! Why a cached entry is never stale at the position it is answered with: an entry holds
//! inputs read from state at least `read_at` fresh; any change not in that state commits
//! later and is therefore numbered after `read_at` (the sequencer numbers after its head).
//! So only rounds past `read_at` can invalidate it. An entry is inserted under the same
//! lock as rounds are applied, and refused when a round past `read_at` has already named
//! its citizen (or when that is no longer known: `floor`); a round applied later drops
//! it. An entry found in the cache after loading the cursor `C` is thus true at `C`.
//!
//! The cache answers only while the cursor is confirmed: the follower confirms it each
//! time it has read the feed up to its head, at least every `CONFIRM_EVERY`. An instance
//! that loses its database or its notifications stops answering from the cache after
//! `CONFIRM_WITHIN` and reads the database again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;
use tokio::sync::watch;

use super::resolution_model::DecodedInputs;

/// How often the follower reads the feed itself even when every round arrived.
pub const CONFIRM_EVERY: Duration = Duration::from_millis(250);

/// How long after its last confirmation the cache still answers.
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(1);

/// How many invalidated citizens are remembered (to refuse stale inserts) before the
/// memory is cleared and `floor` raised.
const REMEMBERED: usize = 200_000;

/// Rounds waiting for the follower; more are dropped (the follower then reads the feed).
const QUEUED_ROUNDS: usize = 1024;

/// One sequencing round as its wake-up describes it: positions `from + 1 ..= to`, and
/// the citizens their events name (`None` when too many to name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    pub from: i64,
    pub to: i64,
    pub citizens: Option<Vec<String>>,
}

impl Round {
    /// The wake-up's payload: `from:to:citizen,citizen,...`, or `from:to` when the names
    /// would not fit in `limit` bytes.
    pub fn payload(&self, limit: usize) -> String {
        let head = format!("{}:{}", self.from, self.to);
        match &self.citizens {
            Some(c) if head.len() + 1 + c.iter().map(|c| c.len() + 1).sum::<usize>() <= limit => {
                format!("{head}:{}", c.join(","))
            }
            _ => head,
        }
    }

    /// A payload read back; `None` when it is not one.
    pub fn parse(payload: &str) -> Option<Round> {
        let mut parts = payload.splitn(3, ':');
        let from = parts.next()?.parse().ok()?;
        let to = parts.next()?.parse().ok()?;
        let citizens = parts.next().map(|c| {
            c.split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        });
        (from <= to).then_some(Round { from, to, citizens })
    }
}

/// What applying a round did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The cursor moved to the round's end.
    Moved,
    /// Already behind the cursor.
    Old,
    /// It does not start at the cursor, or does not name its citizens: read the feed.
    Gap,
}

/// A cached entry: the inputs and the position they were read at.
pub(super) type Entry = Arc<(DecodedInputs, i64)>;

struct Follow {
    /// Each remembered citizen's latest invalidating position.
    invalidated: HashMap<String, i64>,
    /// Inserts read before this position are refused: what invalidated them is forgotten.
    floor: i64,
    /// Whether the cursor has been set from the feed (until then nothing is cached).
    started: bool,
}

/// The cursor, the confirmation and the cache. Shared by the store, its reads and (on
/// PostgreSQL) the LISTEN task that queues rounds.
pub struct Freshness {
    /// Hashed with foldhash: a BatchResolve looks each of its ids up here.
    cache: Option<Cache<String, Entry, foldhash::fast::RandomState>>,
    follow: Mutex<Follow>,
    cursor: watch::Sender<i64>,
    /// Fast copy of the cursor for the read path.
    position: AtomicI64,
    /// Milliseconds after `epoch` of the last confirmation (0: never).
    confirmed_ms: AtomicU64,
    epoch: Instant,
    rounds: Mutex<VecDeque<Round>>,
    /// Rounds were dropped from a full queue.
    lost: std::sync::atomic::AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Freshness {
    /// `entries`: the cache's bound in citizens; 0 turns the cache off.
    pub fn new(entries: u64) -> Arc<Freshness> {
        Arc::new(Freshness {
            cache: (entries > 0).then(|| {
                Cache::builder()
                    .max_capacity(entries)
                    .build_with_hasher(foldhash::fast::RandomState::default())
            }),
            follow: Mutex::new(Follow {
                invalidated: HashMap::new(),
                floor: 0,
                started: false,
            }),
            cursor: watch::Sender::new(0),
            position: AtomicI64::new(0),
            confirmed_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            rounds: Mutex::new(VecDeque::new()),
            lost: Default::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// The position this instance has followed the feed through.
    pub fn position(&self) -> i64 {
        self.position.load(Ordering::Acquire)
    }

    /// Whether the cursor has been set from the feed.
    pub(super) fn started(&self) -> bool {
        self.follow
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .started
    }

    /// Tells when the cursor moves (its new position): the feed was numbered further.
    pub(super) fn moves(&self) -> watch::Receiver<i64> {
        self.cursor.subscribe()
    }

    /// Waits up to `within` for the cursor to reach `min`; whether it did.
    pub async fn wait_for(&self, min: i64, within: Duration) -> bool {
        if self.position() >= min {
            return true;
        }
        let mut cursor = self.cursor.subscribe();
        tokio::time::timeout(within, cursor.wait_for(|p| *p >= min))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Queues a round named by a wake-up, for the follower. When the follower falls too
    /// far behind, the queue is dropped and it reads the feed instead.
    pub fn queue(&self, round: Round) {
        let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        if rounds.len() >= QUEUED_ROUNDS {
            rounds.clear();
            self.lost.store(true, Ordering::Release);
        }
        rounds.push_back(round);
    }

    /// The queued rounds, and whether any were dropped.
    pub(super) fn take_rounds(&self) -> (Vec<Round>, bool) {
        let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        let lost = self.lost.swap(false, Ordering::AcqRel);
        (rounds.drain(..).collect(), lost)
    }

    /// Applies a round if it continues from the cursor.
    pub(super) fn apply(&self, round: &Round) -> Applied {
        let mut follow = self.follow.lock().unwrap_or_else(|e| e.into_inner());
        let cursor = self.position();
        if !follow.started {
            return Applied::Gap;
        }
        if round.to <= cursor {
            return Applied::Old;
        }
        let (true, Some(citizens)) = (round.from == cursor, &round.citizens) else {
            return Applied::Gap;
        };
        let named: Vec<(i64, &str)> = citizens.iter().map(|c| (round.to, c.as_str())).collect();
        self.invalidate(&mut follow, &named, round.to);
        Applied::Moved
    }

    /// Applies feed rows `(feed_position, citizen)` read after the cursor, through `to`.
    pub(super) fn apply_rows(&self, rows: &[(i64, String)], to: i64) {
        let mut follow = self.follow.lock().unwrap_or_else(|e| e.into_inner());
        if !follow.started {
            // The first read: nothing is cached yet, so nothing to drop.
            follow.started = true;
            follow.floor = to;
            self.set_cursor(to);
            return;
        }
        if to <= self.position() {
            return;
        }
        let named: Vec<(i64, &str)> = rows.iter().map(|(p, c)| (*p, c.as_str())).collect();
        self.invalidate(&mut follow, &named, to);
    }

    fn invalidate(&self, follow: &mut Follow, named: &[(i64, &str)], to: i64) {
        if follow.invalidated.len() + named.len() > REMEMBERED {
            follow.invalidated.clear();
            follow.floor = self.position();
        }
        for (position, citizen) in named {
            if let Some(cache) = &self.cache {
                cache.invalidate(*citizen);
            }
            follow.invalidated.insert((*citizen).to_owned(), *position);
        }
        self.set_cursor(to);
    }

    fn set_cursor(&self, to: i64) {
        self.position.store(to, Ordering::Release);
        self.cursor.send_replace(to);
    }

    /// The follower has read the feed up to its head.
    pub(super) fn confirm(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.confirmed_ms.store(ms.max(1), Ordering::Release);
    }

    /// Whether the follower should read the feed itself now.
    pub(super) fn confirm_due(&self) -> bool {
        self.since_confirmed().is_none_or(|d| d >= CONFIRM_EVERY)
    }

    fn since_confirmed(&self) -> Option<Duration> {
        match self.confirmed_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }

    /// Whether the cache may answer now.
    fn trusted(&self) -> bool {
        self.since_confirmed().is_some_and(|d| d < CONFIRM_WITHIN)
    }

    /// A cached citizen's inputs and the position they are true at, when the cache may
    /// answer a read that needs `min`.
    pub(super) fn cached(&self, citizen: &str, min: i64) -> Option<(Entry, i64)> {
        let cache = self.cache.as_ref()?;
        let cursor = self.position();
        if cursor < min || !self.trusted() {
            return None;
        }
        match cache.get(citizen) {
            Some(entry) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                let at = cursor.max(entry.1);
                Some((entry, at))
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Caches inputs read from state at least `read_at` fresh, unless a round past
    /// `read_at` has named the citizen since.
    pub(super) fn insert(&self, citizen: &str, entry: Entry) {
        let Some(cache) = &self.cache else {
            return;
        };
        let read_at = entry.1;
        let follow = self.follow.lock().unwrap_or_else(|e| e.into_inner());
        if !follow.started || read_at < follow.floor {
            return;
        }
        if follow
            .invalidated
            .get(citizen)
            .is_some_and(|p| *p > read_at)
        {
            return;
        }
        cache.insert(citizen.to_owned(), entry);
    }

    /// Hits and misses so far, and the entries held.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.cache.as_ref().map_or(0, |c| c.entry_count()),
        }
    }
}

/// The resolution cache's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CitizenStatus;

    /// Inputs read at `read_at`.
    fn entry(read_at: i64) -> Entry {
        Arc::new(((CitizenStatus::Active, Vec::new(), Vec::new()), read_at))
    }

    fn started(at: i64) -> Arc<Freshness> {
        let f = Freshness::new(100);
        f.apply_rows(&[], at);
        f.confirm();
        f
    }

    fn round(from: i64, to: i64, citizens: &[&str]) -> Round {
        Round {
            from,
            to,
            citizens: Some(citizens.iter().map(|c| c.to_string()).collect()),
        }
    }

    #[test]
    fn a_payload_names_its_citizens_or_only_its_range_when_they_do_not_fit() {
        let r = round(4, 6, &["001000000001", "001000000002"]);
        assert_eq!(Round::parse(&r.payload(8000)), Some(r.clone()));
        let short = Round::parse(&r.payload(20)).unwrap();
        assert_eq!((short.from, short.to, short.citizens), (4, 6, None));
        assert_eq!(Round::parse("garbage"), None);
        assert_eq!(Round::parse("7:3"), None);
    }

    #[test]
    fn a_round_drops_the_citizens_it_names_and_moves_the_cursor() {
        let f = started(10);
        f.insert("a", entry(10));
        f.insert("b", entry(10));
        assert_eq!(f.apply(&round(10, 12, &["a"])), Applied::Moved);
        assert_eq!(f.position(), 12);
        assert!(f.cached("a", 0).is_none());
        let (_, at) = f.cached("b", 0).unwrap();
        assert_eq!(at, 12, "an entry no round named is true at the cursor");
    }

    #[test]
    fn a_round_that_does_not_continue_from_the_cursor_is_a_gap() {
        let f = started(10);
        assert_eq!(f.apply(&round(11, 12, &["a"])), Applied::Gap);
        assert_eq!(f.apply(&round(8, 10, &["a"])), Applied::Old);
        let unnamed = Round {
            from: 10,
            to: 12,
            citizens: None,
        };
        assert_eq!(f.apply(&unnamed), Applied::Gap);
        assert_eq!(f.position(), 10);
    }

    #[test]
    fn an_entry_read_before_a_round_that_named_its_citizen_is_not_cached() {
        let f = started(10);
        // Read at 10; a round numbering a change of "a" at 11 is applied before the
        // reader inserts: what it read is stale.
        assert_eq!(f.apply(&round(10, 11, &["a"])), Applied::Moved);
        f.insert("a", entry(10));
        assert!(f.cached("a", 0).is_none());
        // Read after the change: cached.
        f.insert("a", entry(11));
        assert!(f.cached("a", 0).is_some());
    }

    #[test]
    fn the_cache_answers_only_reads_it_is_fresh_enough_for() {
        let f = started(10);
        f.insert("a", entry(10));
        assert!(f.cached("a", 10).is_some());
        assert!(
            f.cached("a", 11).is_none(),
            "the cursor is behind the read's minimum"
        );
    }

    #[test]
    fn nothing_is_cached_before_the_cursor_is_set_or_when_the_cache_is_off() {
        let f = Freshness::new(100);
        f.insert("a", entry(10));
        assert!(f.cached("a", 0).is_none());
        let off = Freshness::new(0);
        off.apply_rows(&[], 5);
        off.confirm();
        off.insert("a", entry(5));
        assert!(off.cached("a", 0).is_none());
        assert_eq!(
            off.position(),
            5,
            "the cursor is followed without a cache too"
        );
    }

    #[test]
    fn an_unconfirmed_cursor_stops_the_cache_answering() {
        let f = Freshness::new(100);
        f.apply_rows(&[], 10);
        f.insert("a", entry(10));
        assert!(f.cached("a", 0).is_none(), "never confirmed");
        f.confirm();
        assert!(f.cached("a", 0).is_some());
    }
}
