//! The JetStream relay end to end, on both backends, against the real nats-server
//! (`NATS_URL`, else nats://127.0.0.1:4222; `.ci/run` starts one): the real
//! `payout-registry relay` binary killed with SIGKILL mid-publish and restarted must
//! leave every feed position in the stream exactly once and in order; and the relay's
//! durable position keeps unsent events from being pruned. Each test has a stream and a
//! subject prefix of its own, deleted at the end.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::{Backend, TestApp};
use payout_registry::config::RelaySettings;
use payout_registry::proto::FeedEvent;
use payout_registry::store::{Event, Store};
use payout_registry::tools::relay::{self, CLIENT_ID, CONTENT_TYPE, POSITION_HEADER};
use prost::Message as _;
use uuid::Uuid;

on_both_backends!(
    a_relay_killed_mid_publish_leaves_every_feed_event_in_the_stream_once_and_in_order,
    the_relay_position_advances_and_keeps_unsent_events_from_being_pruned,
    a_relay_whose_stream_was_lost_refuses_to_skip_the_past_and_refills_only_when_told,
);

const CONSUMER: &str = "jetstream-relay";

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A stream and subject prefix of the test's own, deleted when dropped.
struct TestStream {
    js: jetstream::Context,
    name: String,
    prefix: String,
}

impl TestStream {
    async fn new() -> TestStream {
        let client = async_nats::connect(nats_url()).await.unwrap_or_else(|e| {
            panic!(
                "the relay tests need a nats-server with JetStream at {} ({e}); install \
                 nats-server and run `nats-server -js`, or set NATS_URL",
                nats_url()
            )
        });
        let suffix = Uuid::new_v4().simple().to_string();
        TestStream {
            js: jetstream::new(client),
            name: format!("RELAY_TEST_{suffix}"),
            prefix: format!("relaytest.{suffix}.events"),
        }
    }

    fn settings(&self) -> RelaySettings {
        RelaySettings {
            nats_url: payout_registry::config::Secret::new(nats_url()),
            stream: self.name.clone(),
            subject_prefix: self.prefix.clone(),
            page_size: 50,
            max_in_flight: 16,
            ..RelaySettings::default()
        }
    }

    /// The stream's last sequence (0 before the relay created it).
    async fn last_sequence(&self) -> u64 {
        match self.js.get_stream(&self.name).await {
            Ok(mut s) => s.info().await.map(|i| i.state.last_sequence).unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Waits until the stream's last sequence reaches `n`; answers it.
    async fn wait_for(&self, n: u64) -> u64 {
        self.wait_for_relay(n, None).await
    }

    /// Waits until the stream's last sequence reaches `n` while the relay process runs
    /// (its logs are shown if it stops first).
    async fn wait_for_relay(&self, n: u64, mut relay: Option<(&mut Child, &Path)>) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let last = self.last_sequence().await;
            if last >= n {
                return last;
            }
            if let Some((child, logs)) = relay.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "the relay exited ({status}) with {last} messages in the stream:\n{}",
                        std::fs::read_to_string(logs).unwrap_or_default()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "the stream holds {last} messages, expected {n} within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Every message, in stream order.
    async fn messages(&self) -> Vec<async_nats::jetstream::message::StreamMessage> {
        let stream = self.js.get_stream(&self.name).await.expect("stream");
        let last = self.last_sequence().await;
        let mut out = Vec::new();
        for seq in 1..=last {
            out.push(stream.get_raw_message(seq).await.expect("message"));
        }
        out
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let name = self.name.clone();
        common::cleanup_in_drop(async move {
            let client = async_nats::connect(nats_url()).await.ok()?;
            jetstream::new(client).delete_stream(&name).await.ok()
        });
    }
}

/// Links and verifies citizen `n`'s account: three events.
async fn change(app: &TestApp, n: u32) {
    common::link_issuer_confirmed(app, &citizen(n), &account_ref(n)).await;
}

fn citizen(n: u32) -> String {
    format!("0480890{n:05}")
}

fn account_ref(n: u32) -> String {
    format!("00480{n:08}")
}

async fn feed(store: &Arc<dyn Store>) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        let after = events
            .last()
            .and_then(|e: &Event| e.feed_position)
            .unwrap_or(0);
        let page = store.feed_after(after, 1000).await.unwrap();
        if page.is_empty() {
            return events;
        }
        events.extend(page);
    }
}

/// Asserts that the stream holds exactly `feed`, in order: positions, message ids,
/// subjects, headers, and payloads with masked account numbers.
async fn assert_stream_holds_the_feed(stream: &TestStream, feed: &[Event], accounts: &[String]) {
    let messages = stream.messages().await;
    assert_eq!(messages.len(), feed.len(), "one message per feed event");
    for (m, e) in messages.iter().zip(feed) {
        let position = e.feed_position.unwrap();
        let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(header(POSITION_HEADER), Some(position.to_string()));
        assert_eq!(header("Nats-Msg-Id"), Some(e.event_id.to_string()));
        assert_eq!(header("Content-Type").as_deref(), Some(CONTENT_TYPE));
        assert_eq!(
            m.subject.as_str(),
            format!("{}.{}", stream.prefix, e.event_type.to_lowercase())
        );
        let event = FeedEvent::decode(m.payload.as_ref()).expect("a FeedEvent");
        assert_eq!(event.position, position as u64);
        assert_eq!(event.event_id, e.event_id.to_string());
        assert_eq!(common::event_name(&event), e.event_type);
        // No account number in clear anywhere in the message (every typed field).
        let debug = format!("{event:?}");
        for account in accounts {
            assert!(
                !debug.contains(account.as_str()),
                "position {position} shows an account number in clear"
            );
        }
    }
    assert!(
        messages.iter().any(|m| {
            let e = FeedEvent::decode(m.payload.as_ref()).unwrap();
            common::event_account(&e)
                .is_some_and(|a| a.account_ref_masked && a.account_ref.ends_with(&accounts[0][9..]))
        }),
        "account numbers are published masked"
    );
}

/// The relay binary on the test's database and stream, its logs in `logs`.
fn spawn_relay(app: &TestApp, stream: &TestStream, data_dir: &Path, logs: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs)
        .expect("log file");
    Command::new(env!("CARGO_BIN_EXE_payout-registry"))
        .args(["relay", "--stream", &stream.name])
        .args(["--subject-prefix", &stream.prefix])
        .args(["--nats-url", &nats_url()])
        .env_remove("PAYOUT_REGISTRY_CONFIG")
        .env("DATABASE_URL", &app.db.url)
        .env("PAYOUT_REGISTRY__DATA_DIR", data_dir)
        .env("PAYOUT_REGISTRY__LOG_FORMAT", "json")
        .env("PAYOUT_REGISTRY__RELAY__PAGE_SIZE", "50")
        .env("PAYOUT_REGISTRY__RELAY__MAX_IN_FLIGHT", "16")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the relay binary")
}

async fn relay_position(app: &TestApp) -> i64 {
    app.store
        .consumer_position(CLIENT_ID, CONSUMER)
        .await
        .unwrap()
        .unwrap_or(0)
}

async fn a_relay_killed_mid_publish_leaves_every_feed_event_in_the_stream_once_and_in_order(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let stream = TestStream::new().await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("relay.log");
    for n in 0..300 {
        change(&app, n).await;
    }
    let first_head = common::sequenced_head(&app).await;
    assert_eq!(first_head, 900);

    // Killed twice while publishing the backlog, at different points. Whether a kill
    // lands between an acknowledgement and the position's commit is up to timing.
    let mut position_lagged = false;
    for kill_at in [60u64, 400] {
        let mut relay = spawn_relay(&app, &stream, dir.path(), &logs);
        stream
            .wait_for_relay(kill_at, Some((&mut relay, &logs)))
            .await;
        relay.kill().expect("SIGKILL");
        let _ = relay.wait();
        let stored = stream.last_sequence().await;
        assert!(
            stored < first_head as u64,
            "the relay had finished ({stored} messages) before it was killed"
        );
        // The durable position may lag the stream (killed between ack and commit), but
        // never runs ahead of it.
        let position = relay_position(&app).await;
        assert!(position <= stored as i64);
        position_lagged |= position < stored as i64;
    }

    // More changes while the relay is down; then it catches up and stops on SIGTERM.
    for n in 300..400 {
        change(&app, n).await;
    }
    let head = common::sequenced_head(&app).await;
    let mut relay = spawn_relay(&app, &stream, dir.path(), &logs);
    stream
        .wait_for_relay(head as u64, Some((&mut relay, &logs)))
        .await;
    let terminated = Command::new("kill")
        .args(["-TERM", &relay.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(terminated.success());
    let status = relay.wait().expect("relay exit");
    assert!(
        status.success(),
        "the relay stops cleanly on SIGTERM: {status}"
    );
    assert_eq!(
        relay_position(&app).await,
        head,
        "a graceful stop commits the position"
    );

    let accounts: Vec<String> = (0..400).map(account_ref).collect();
    assert_stream_holds_the_feed(&stream, &feed(&app.store).await, &accounts).await;
    let logs = std::fs::read_to_string(&logs).unwrap();
    // When a kill left the durable position behind the stream, the restart found the
    // events already published and skipped them (the stream check above proves it
    // published none twice; this proves it knew why).
    assert!(
        !position_lagged || logs.contains("already in the stream"),
        "a restart did not report events the durable position had not recorded:\n{logs}"
    );
    for n in 0..400 {
        assert!(
            !logs.contains(&citizen(n)),
            "a citizen id in clear in the logs"
        );
        assert!(
            !logs.contains(&account_ref(n)),
            "an account number in the logs"
        );
    }
}

async fn the_relay_position_advances_and_keeps_unsent_events_from_being_pruned(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let stream = TestStream::new().await;
    let start = |app: &TestApp| {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(relay::run(
            app.store.clone(),
            stream.settings(),
            async move {
                let _ = rx.await;
            },
        ));
        (tx, task)
    };
    for n in 0..10 {
        change(&app, n).await;
    }
    let (stop, task) = start(&app);
    stream.wait_for(30).await;
    // Live: a change made now is relayed without a restart.
    change(&app, 10).await;
    stream.wait_for(33).await;
    stop.send(()).unwrap();
    let stats = task.await.unwrap().expect("relay run");
    assert_eq!((stats.published, stats.position), (33, 33));
    assert_eq!(relay_position(&app).await, 33);

    // While the relay is stopped, retention prunes what it published and nothing more.
    for n in 11..15 {
        change(&app, n).await;
    }
    let head = common::sequenced_head(&app).await;
    assert_eq!(head, 45);
    common::digest_at_head(&app).await;
    let tomorrow = payout_registry::domain::Timestamp::now().plus(Duration::from_secs(86_400));
    assert_eq!(app.store.prune_events(tomorrow).await.unwrap(), 33);
    assert_eq!(app.store.feed_pruned_through().await.unwrap(), 33);

    // Restarted, it publishes the rest: the stream holds the whole feed once.
    let (stop, task) = start(&app);
    stream.wait_for(45).await;
    stop.send(()).unwrap();
    let stats = task.await.unwrap().expect("relay run");
    assert_eq!((stats.published, stats.skipped), (12, 0));
    let messages = stream.messages().await;
    let positions: Vec<String> = messages
        .iter()
        .map(|m| m.headers.get(POSITION_HEADER).unwrap().as_str().to_owned())
        .collect();
    let expected: Vec<String> = (1..=45).map(|p| p.to_string()).collect();
    assert_eq!(positions, expected);
}

async fn a_relay_whose_stream_was_lost_refuses_to_skip_the_past_and_refills_only_when_told(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let stream = TestStream::new().await;
    let run = |settings: RelaySettings| {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(relay::run(app.store.clone(), settings, async move {
            let _ = rx.await;
        }));
        (tx, task)
    };
    for n in 0..4 {
        change(&app, n).await;
    }
    let (stop, task) = run(stream.settings());
    stream.wait_for(12).await;
    stop.send(()).unwrap();
    task.await.unwrap().expect("relay run");
    assert_eq!(relay_position(&app).await, 12);

    // The stream is lost (deleted by an operator, a JetStream store wiped) while the
    // relay's durable position says 12 events went out. More changes meanwhile.
    stream.js.delete_stream(&stream.name).await.expect("delete");
    for n in 4..6 {
        change(&app, n).await;
    }
    let head = common::sequenced_head(&app).await;
    assert_eq!(head, 18);

    // Without a word, the relay would resume at 13 in an empty stream. It refuses.
    let (_stop, task) = run(stream.settings());
    let refused = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the relay stops by itself")
        .unwrap()
        .expect_err("an empty stream behind position 12 is refused");
    assert!(
        refused.downcast_ref::<relay::StreamRefused>().is_some(),
        "a StreamRefused error, not a transient one: {refused:#}"
    );
    let message = format!("{refused:#}");
    assert!(
        message.contains(&stream.name) && message.contains("refill"),
        "the error names the stream and the way out: {message}"
    );
    assert_eq!(stream.last_sequence().await, 0, "nothing was published");
    assert_eq!(relay_position(&app).await, 12, "the position is untouched");

    // Told to refill, it republishes the whole feed, then goes on live.
    let (stop, task) = run(RelaySettings {
        refill: true,
        ..stream.settings()
    });
    stream.wait_for(head as u64).await;
    stop.send(()).unwrap();
    task.await.unwrap().expect("relay run with refill");
    let accounts: Vec<String> = (0..6).map(account_ref).collect();
    assert_stream_holds_the_feed(&stream, &feed(&app.store).await, &accounts).await;
    assert_eq!(relay_position(&app).await, head);

    // Lost while the relay runs: its next publish fails, and it refuses to go on.
    let (_stop, task) = run(stream.settings());
    change(&app, 6).await;
    stream.wait_for(head as u64 + 3).await;
    stream.js.delete_stream(&stream.name).await.expect("delete");
    change(&app, 7).await;
    let refused = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the relay stops by itself")
        .unwrap()
        .expect_err("the stream lost under a running relay is refused");
    assert!(
        refused.downcast_ref::<relay::StreamRefused>().is_some(),
        "{refused:#}"
    );
    assert_eq!(relay_position(&app).await, head + 3);
}
