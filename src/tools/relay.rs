//! The JetStream relay: publishes the change feed to NATS JetStream, every event exactly
//! once and in feed order, for consumers that prefer a broker to the gRPC `ChangeFeed`.
//!
//! Each event goes to `<subject_prefix>.<event type in lower case>` as a protobuf
//! `FeedEvent` (the form `ChangeFeed/Subscribe` sends, account numbers masked unless
//! configured otherwise), with the headers `Nats-Msg-Id` (the event id),
//! `Payout-Feed-Position` and `Content-Type`.
//!
//! Why the stream holds each position exactly once, even after `kill -9`:
//! - **No gap, no reordering.** Every publish carries `Nats-Expected-Last-Sequence`: the
//!   stream sequence the previous event was stored at. JetStream stores a message only
//!   if the stream still ends there, so when one publish of a pipelined window fails
//!   (a lost ack, a timeout, a broker restart), every later one in that window is refused
//!   too: the stream always holds a contiguous prefix of the feed. Two relays started by
//!   mistake on one stream fence each other the same way.
//! - **No duplicate.** The relay's durable position (a named feed consumer, client
//!   [`CLIENT_ID`]) is committed after the acks, so it may lag what the stream holds (a
//!   crash between ack and commit). Before publishing, the relay therefore reads the
//!   stream's tail backwards (the `Payout-Feed-Position` header) down to its durable
//!   position and resumes after the last position stored, whatever the broker's
//!   duplicate window (2 minutes by default) still remembers. `Nats-Msg-Id` lets the
//!   broker drop in-window duplicates as a second line.
//! - After any failure the relay stops, backs off, and starts again with that same
//!   reconciliation.
//!
//! The durable position also protects the events: retention never prunes past the
//! slowest named consumer, so an event stays in the database until it is in the stream.
//!
//! **A stream that lost its past is refused.** A stream that holds none of this relay's
//! messages (deleted and recreated empty, or another application's), or whose relay
//! messages end before the durable position (purged), behind a non-zero durable position,
//! would receive only the events after that position, and its readers would never learn
//! what they missed. The relay stops with an error naming the stream instead
//! ([`StreamRefused`]); with `refill` (`relay --refill`, a deliberate act) it publishes
//! the feed again from the stream's last relayed position (from the start for an empty
//! stream), as far as retention has kept it. A stream holding another feed, or a run that
//! is not contiguous, is refused with or without `refill`.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use futures::FutureExt as _;
use prost::Message as _;

use crate::config::RelaySettings;
use crate::domain::Timestamp;
use crate::store::{Event, Store};
use crate::telemetry::metrics as m;

/// Why the relay will not publish to its stream: a state an operator must look at (see
/// the module's documentation). The relay stops instead of retrying.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StreamRefused(String);

fn refuse<T>(message: String) -> anyhow::Result<T> {
    Err(StreamRefused(message).into())
}

/// The last position a relay of this process committed, for the lag gauge.
static POSITION: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// The last feed position a relay of this process committed (0 before any).
pub fn position_gauge() -> f64 {
    POSITION.load(std::sync::atomic::Ordering::Relaxed) as f64
}

/// The client id the relay's durable feed position is recorded under.
pub const CLIENT_ID: &str = "system:relay";

/// The header naming an event's feed position.
pub const POSITION_HEADER: &str = "Payout-Feed-Position";

/// The payload's media type.
pub const CONTENT_TYPE: &str = "application/x-protobuf; proto=payoutregistry.v1.FeedEvent";

/// How long a caught-up relay waits without a change signal before looking anyway.
const SAFETY_TICK: Duration = Duration::from_secs(1);

/// How often the relay logs its progress and rate.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// The first and the longest pause after a failure.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What a relay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Events published and acknowledged.
    pub published: u64,
    /// Events found already in the stream at a (re)start, and so not published again.
    pub skipped: u64,
    /// Times the relay started over after a failure.
    pub restarts: u64,
    /// The last feed position in the stream (and committed as the durable position).
    pub position: i64,
}

/// Relays until `shutdown` resolves: catches up, then follows the feed live, starting
/// over (after a pause) from the stream's tail whenever publishing fails. On shutdown
/// the window in flight is acknowledged and the position committed before returning.
pub async fn run(
    store: Arc<dyn Store>,
    settings: RelaySettings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<RelayStats> {
    let mut relay = Relay::connect(store.clone(), settings).await?;
    tokio::pin!(shutdown);
    let mut changes = store.changes();
    let mut backoff = BACKOFF_MIN;
    let mut reconciled = false;
    let mut progress = Progress::new();
    loop {
        // Mark the signal seen before reading: a change after this read wakes us.
        changes.borrow_and_update();
        let started = Instant::now();
        let step = if reconciled {
            relay.catch_up_once().await.map(Some)
        } else {
            relay.reconcile().await.map(|()| None)
        };
        match step {
            Ok(published) => {
                backoff = BACKOFF_MIN;
                reconciled = true;
                progress
                    .report(&relay, started, published.unwrap_or_default())
                    .await;
                if published == Some(0) {
                    // Caught up: wait for a change (or the safety tick).
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::timeout(SAFETY_TICK, changes.changed()) => {}
                    }
                } else if (&mut shutdown).now_or_never().is_some() {
                    break;
                }
            }
            Err(e) if e.downcast_ref::<StreamRefused>().is_some() => return Err(e),
            Err(e) => {
                relay.stats.restarts += 1;
                reconciled = false;
                tracing::warn!(
                    error = format!("{e:#}"),
                    position = relay.position(),
                    retry_in_ms = backoff.as_millis() as u64,
                    "relaying failed; starting again from the stream's tail after a pause"
                );
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    Ok(relay.stats)
}

/// Logs the rate every [`PROGRESS_EVERY`] while publishing, and a backlog's rate once
/// the relay has caught up with it.
struct Progress {
    since: Instant,
    published: u64,
    /// When the current run of non-empty pages began, and what it published.
    backlog: Option<(Instant, u64)>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            since: Instant::now(),
            published: 0,
            backlog: None,
        }
    }

    /// Counts a page that began at `started` and published `published` events.
    async fn report(&mut self, relay: &Relay, started: Instant, published: u64) {
        if published == 0 {
            if let Some((began, total)) = self.backlog.take() {
                tracing::info!(
                    published = total,
                    seconds = began.elapsed().as_secs_f64(),
                    events_per_sec = rate(total, began.elapsed()),
                    position = relay.position(),
                    "caught up with the feed"
                );
            }
        } else {
            self.backlog.get_or_insert((started, 0)).1 += published;
        }
        self.published += published;
        let elapsed = self.since.elapsed();
        if elapsed < PROGRESS_EVERY {
            return;
        }
        if self.published > 0 {
            let head = relay.store.feed_head().await.unwrap_or_default();
            tracing::info!(
                published = self.published,
                events_per_sec = rate(self.published, elapsed),
                position = relay.position(),
                behind = (head - relay.position()).max(0),
                "relay progress"
            );
        }
        self.since = Instant::now();
        self.published = 0;
    }
}

fn rate(events: u64, elapsed: Duration) -> u64 {
    (events as f64 / elapsed.as_secs_f64().max(1e-9)).round() as u64
}

/// A relay's connection to the stream and its place in the feed.
pub struct Relay {
    store: Arc<dyn Store>,
    js: jetstream::Context,
    settings: RelaySettings,
    /// The last feed position known to be in the stream.
    after: i64,
    /// The stream's last sequence: the expected last sequence of the next publish.
    last_sequence: u64,
    /// The durable position as committed.
    committed: Option<i64>,
    stats: RelayStats,
}

impl Relay {
    /// Connects to NATS and makes sure the stream exists. Call [`Relay::reconcile`]
    /// before publishing.
    pub async fn connect(store: Arc<dyn Store>, settings: RelaySettings) -> anyhow::Result<Relay> {
        settings.validate().map_err(anyhow::Error::msg)?;
        let client = async_nats::ConnectOptions::new()
            .name("payout-registry relay")
            .connection_timeout(Duration::from_secs(5))
            .connect(settings.nats_url.expose())
            .await
            .context("cannot connect to NATS (the [relay] nats_url)")?;
        let js = jetstream::new(client);
        ensure_stream(&js, &settings).await?;
        Ok(Relay {
            store,
            js,
            settings,
            after: 0,
            last_sequence: 0,
            committed: None,
            stats: RelayStats::default(),
        })
    }

    /// The last feed position known to be in the stream.
    pub fn position(&self) -> i64 {
        self.after
    }

    /// What the relay did so far.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// Finds where to resume: reads the durable position, then the stream's tail
    /// backwards down to it, and resumes after the last feed position the stream holds
    /// (committing it as the durable position). Refuses a stream whose tail is not a
    /// contiguous run of this feed's events.
    pub async fn reconcile(&mut self) -> anyhow::Result<()> {
        let stream = ensure_stream(&self.js, &self.settings).await?;
        let state = stream
            .get_info()
            .await
            .context("reading the stream's state")?
            .state;
        let durable = self
            .store
            .consumer_position(CLIENT_ID, &self.settings.consumer)
            .await
            .context("reading the relay's durable position (is the database migrated?)")?;
        let floor = durable.unwrap_or(0);
        // The newest relay message's (position, event id), and the position below the
        // last one read (each must follow the next: the stream holds a contiguous run).
        let mut tail: Option<(i64, String)> = None;
        let mut next_below: Option<i64> = None;
        let mut found = 0u64;
        let mut seq = state.last_sequence;
        while seq >= state.first_sequence.max(1) {
            let read = stream.get_raw_message(seq).await;
            seq -= 1;
            let message = match read {
                Ok(m) => m,
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => continue,
                Err(e) => return Err(e).context("reading the stream's tail"),
            };
            let Some(position) =
                header(&message.headers, POSITION_HEADER).and_then(|v| v.parse::<i64>().ok())
            else {
                continue; // not the relay's message
            };
            if next_below.is_some_and(|p| p != position) {
                return refuse(format!(
                    "stream {} is not a contiguous run of the feed at stream sequence {}: \
                     feed position {position} where {} was expected; refusing to publish",
                    self.settings.stream,
                    seq + 1,
                    next_below.unwrap_or_default()
                ));
            }
            next_below = Some(position - 1);
            if tail.is_none() {
                let id = header(&message.headers, "Nats-Msg-Id").unwrap_or_default();
                tail = Some((position, id.to_owned()));
            }
            if position <= floor {
                break;
            }
            found += 1;
            // The durable position is committed after every page, so a crash leaves at
            // most one page in the stream beyond it. More means another relay (another
            // consumer name) filled this stream: its tail, already checked to be this
            // feed's, is where to resume, without reading the whole stream back.
            if found > u64::from(self.settings.page_size) {
                tracing::warn!(
                    durable = floor,
                    stream_ends_at = tail.as_ref().map(|t| t.0).unwrap_or_default(),
                    "the stream is more than a page ahead of this relay's durable position; \
                     resuming after the stream's tail"
                );
                break;
            }
        }
        let stream_ends_at = match &tail {
            Some((position, event_id)) => {
                self.check_same_feed(*position, event_id).await?;
                *position
            }
            None => 0,
        };
        let resume = if stream_ends_at >= floor {
            stream_ends_at
        } else if self.settings.refill {
            let pruned = self.store.feed_pruned_through().await?;
            tracing::warn!(
                stream = %self.settings.stream,
                stream_ends_at,
                durable = floor,
                "refilling the stream from the feed after position {stream_ends_at}"
            );
            if pruned > stream_ends_at {
                tracing::error!(
                    from = stream_ends_at + 1,
                    to = pruned,
                    "events were pruned from the feed before the refill; the stream will lack \
                     them (rebuild its readers from a snapshot)"
                );
            }
            stream_ends_at
        } else {
            let what = match (&tail, state.messages) {
                (None, 0) => "is empty (deleted and recreated?)".to_owned(),
                (None, n) => format!("holds {n} messages, none of them this relay's"),
                (Some(_), _) => format!("ends at feed position {stream_ends_at} (purged?)"),
            };
            return refuse(format!(
                "stream {} {what}, but this relay has published through feed position {floor}: \
                 publishing on would leave positions {}..{floor} missing from it. Run the relay \
                 with --refill to publish them again from the feed, or point it at another \
                 stream",
                self.settings.stream,
                stream_ends_at + 1,
            ));
        };
        tracing::info!(
            stream = %self.settings.stream,
            subjects = %stream_subjects(&self.settings),
            resume_after = resume,
            "relaying the change feed"
        );
        if found > 0 {
            tracing::info!(
                durable = floor,
                already_in_stream = found,
                resume_after = resume,
                "events past the durable position are already in the stream; not publishing \
                 them again"
            );
        }
        self.stats.skipped += found;
        self.after = resume;
        self.last_sequence = state.last_sequence;
        self.committed = durable;
        // Registers the consumer on a first start, so that retention keeps what is unsent.
        self.commit().await?;
        Ok(())
    }

    /// Publishes the next page of the feed (pipelined, at most `max_in_flight` awaiting
    /// acknowledgement), waits for every acknowledgement and commits the durable
    /// position. Answers how many events were published (0: caught up). On an error the
    /// acknowledged prefix is still committed; call [`Relay::reconcile`] before the next
    /// page.
    pub async fn catch_up_once(&mut self) -> anyhow::Result<u64> {
        let page = self
            .store
            .feed_after(self.after, self.settings.page_size)
            .await
            .context("reading the change feed")?;
        let Some(first) = page.first().and_then(|e| e.feed_position) else {
            return Ok(0);
        };
        if first > self.after + 1 {
            tracing::error!(
                from = self.after + 1,
                to = first - 1,
                "events were pruned before the relay published them; they are missing from \
                 the stream"
            );
        }
        let published_before = self.stats.published;
        let result = self.publish(page).await;
        let committed = self.commit().await;
        result?;
        committed?;
        Ok(self.stats.published - published_before)
    }

    /// Publishes `page` in order and awaits the acks, advancing `after` over each
    /// acknowledged event; stops at the first failure.
    async fn publish(&mut self, page: Vec<Event>) -> anyhow::Result<()> {
        let mut in_flight: VecDeque<(i64, PublishAckFuture)> = VecDeque::new();
        let mut expected = self.last_sequence;
        for event in page {
            let Some(position) = event.feed_position else {
                continue;
            };
            let subject = subject(&self.settings.subject_prefix, &event.event_type);
            let mut message = jetstream::message::PublishMessage::build()
                .message_id(event.event_id.to_string())
                .header(POSITION_HEADER, position.to_string())
                .header("Content-Type", CONTENT_TYPE);
            if expected > 0 {
                // (0 means "no check" to the broker: the first message of a new stream.)
                message = message.expected_last_sequence(expected);
            }
            let payload = crate::grpc::event_out(event, self.settings.full_account_numbers, false)
                .encode_to_vec();
            let ack = self
                .js
                .send_publish(subject, message.payload(payload.into()))
                .await
                .with_context(|| format!("publishing feed position {position}"))?;
            in_flight.push_back((position, ack));
            expected += 1;
            if in_flight.len() >= self.settings.max_in_flight {
                self.await_ack(&mut in_flight).await?;
            }
        }
        while !in_flight.is_empty() {
            self.await_ack(&mut in_flight).await?;
        }
        Ok(())
    }

    /// Awaits the oldest acknowledgement in flight.
    async fn await_ack(
        &mut self,
        in_flight: &mut VecDeque<(i64, PublishAckFuture)>,
    ) -> anyhow::Result<()> {
        let Some((position, ack)) = in_flight.pop_front() else {
            return Ok(());
        };
        let ack = ack
            .await
            .with_context(|| format!("JetStream did not store feed position {position}"))?;
        if ack.duplicate {
            // Already stored (the broker's duplicate window caught it): it is in the
            // stream, but the stream did not grow, so the rest of the window will be
            // refused and the relay reconciles.
            tracing::warn!(position, "the broker dropped a duplicate");
            self.stats.skipped += 1;
        } else {
            self.last_sequence = ack.sequence;
            self.stats.published += 1;
            metrics::counter!(m::RELAY_PUBLISHED).increment(1);
        }
        self.after = position;
        self.stats.position = position;
        Ok(())
    }

    /// Commits `after` as the durable position, if it moved.
    async fn commit(&mut self) -> anyhow::Result<()> {
        if self.committed == Some(self.after) {
            return Ok(());
        }
        self.store
            .commit_consumer(
                CLIENT_ID,
                &self.settings.consumer,
                self.after,
                Timestamp::now(),
            )
            .await
            .context("committing the relay's durable position")?;
        self.committed = Some(self.after);
        self.stats.position = self.after;
        metrics::gauge!(m::RELAY_POSITION).set(self.after as f64);
        POSITION.store(self.after, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Refuses a stream whose last message is not this database's event at that feed
    /// position (a stream fed from another database, or a database restored from an
    /// older backup): publishing on would mix two feeds.
    async fn check_same_feed(&self, position: i64, event_id: &str) -> anyhow::Result<()> {
        let event = self
            .store
            .feed_after(position - 1, 1)
            .await
            .context("reading the change feed")?;
        match event.first() {
            Some(e) if e.feed_position == Some(position) && e.event_id.to_string() != event_id => {
                refuse(format!(
                    "stream {} holds another feed: its last message (feed position {position}) \
                     is not this database's event at that position; use another stream",
                    self.settings.stream
                ))
            }
            None if self.store.feed_head().await? < position => refuse(format!(
                "stream {} already holds feed position {position}, beyond this database's \
                 feed; use another stream",
                self.settings.stream
            )),
            _ => Ok(()),
        }
    }
}

/// The stream's subjects: everything under the prefix.
fn stream_subjects(settings: &RelaySettings) -> String {
    format!("{}.>", settings.subject_prefix)
}

/// Opens the stream, creating it (file storage) when missing; refuses one that does not
/// capture the prefix's subjects.
async fn ensure_stream(
    js: &jetstream::Context,
    settings: &RelaySettings,
) -> anyhow::Result<stream::Stream> {
    let subjects = stream_subjects(settings);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: settings.stream.clone(),
            subjects: vec![subjects.clone()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .with_context(|| {
            format!(
                "opening or creating JetStream stream {} (is JetStream enabled: nats-server -js?)",
                settings.stream
            )
        })?;
    if !stream.cached_info().config.subjects.contains(&subjects) {
        bail!(
            "stream {} exists but does not capture {subjects}: choose another stream or \
             subject_prefix",
            settings.stream
        );
    }
    Ok(stream)
}

/// `<prefix>.<event type in lower case>`, e.g. `payoutregistry.v1.events.account_verified`.
pub fn subject(prefix: &str, event_type: &str) -> String {
    let token: String = event_type
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect();
    if token.is_empty() {
        format!("{prefix}.unknown")
    } else {
        format!("{prefix}.{token}")
    }
}

fn header<'a>(headers: &'a async_nats::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_the_prefix_and_the_lower_cased_event_type() {
        assert_eq!(
            subject("payoutregistry.v1.events", "ACCOUNT_VERIFIED"),
            "payoutregistry.v1.events.account_verified"
        );
        assert_eq!(subject("p", "A.B *>"), "p.a_b___");
        assert_eq!(subject("p", ""), "p.unknown");
    }
}
