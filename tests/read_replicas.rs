//! Read replicas, against a real PostgreSQL streaming replica: the harness starts a
//! throw-away primary, makes a hot standby of it with `pg_basebackup -R`, and serves the
//! registry over the primary with the standby as `read_database_urls`. Reads go to the
//! replica when it is fresh enough for them, to the primary when a read needs more than
//! the replica shows, when the replica lags too far, and when it is stopped mid-run:
//! no read fails because of a replica. A subscriber catching up reads the replica.

mod common;

use std::time::{Duration, Instant};

use common::{link_issuer_confirmed, Cluster, TestApp, TestDb, ADMIN, FEED, PAYER};
use payout_registry::proto::{
    GetAccountRequest, ResolveOutcome, ResolveRequest, ResolveResponse, SubscribeRequest,
};
use payout_registry::security::limits::{BucketConfig, RateLimitConfig};
use sqlx::Connection;

const CITIZEN: &str = "001089500001";

async fn resolve(app: &TestApp, min_position: u64) -> Result<ResolveResponse, tonic::Status> {
    app.resolver(Some(PAYER))
        .resolve(ResolveRequest {
            citizen_id: CITIZEN.into(),
            purpose: "monthly payroll".into(),
            min_position,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

fn paid(r: &ResolveResponse) -> bool {
    r.outcome() == ResolveOutcome::Resolved
}

/// Suspends or reinstates the account; answers the write's position.
async fn toggle(app: &TestApp, account: &str, suspend: bool) -> u64 {
    common::suspend_or_reinstate(&mut app.registry(Some(ADMIN)), account, suspend).await
}

/// Runs SQL on the replica (pausing and resuming its WAL replay).
async fn on_replica(replica: &Cluster, sql: &str) {
    let mut c = sqlx::PgConnection::connect(&replica.url("registry"))
        .await
        .expect("replica connection");
    sqlx::query(sql).execute(&mut c).await.expect(sql);
}

/// Subscribes from the feed's start and reads up to `last`: every event, in order.
async fn catch_up(app: &TestApp, last: u64) {
    let mut stream = common::feed_on(app.channel(), Some(FEED))
        .subscribe(SubscribeRequest {
            after_position: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = 0u64;
    while seen < last {
        let event = stream.message().await.unwrap().unwrap().event.unwrap();
        assert_eq!(event.position, seen + 1, "in order, without a gap");
        seen = event.position;
    }
}

/// How many scans the replica's own queries made of `events` (its statistics are its
/// own: the primary's reads and writes do not count there).
async fn event_scans(replica: &Cluster) -> i64 {
    let mut c = sqlx::PgConnection::connect(&replica.url("registry"))
        .await
        .expect("replica connection");
    let (scans,): (i64,) = sqlx::query_as(
        "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables \
         WHERE relname = 'events'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    scans
}

/// The feed position a paused replica shows, once its replay has paused.
async fn paused_head(replica: &Cluster) -> u64 {
    let mut c = sqlx::PgConnection::connect(&replica.url("registry"))
        .await
        .expect("replica connection");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (state,): (String,) = sqlx::query_as("SELECT pg_get_wal_replay_pause_state()")
            .fetch_one(&mut c)
            .await
            .unwrap();
        if state == "paused" {
            break;
        }
        assert!(Instant::now() < deadline, "replay did not pause");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (head,): (i64,) = sqlx::query_as("SELECT last_position FROM feed_head WHERE id = 1")
        .fetch_one(&mut c)
        .await
        .unwrap();
    head as u64
}

/// Polls the store's view of the replica until `ok` holds (there is no signal to wait
/// on: the registry's poller reads the replica every 100 ms). Fails after 20 s.
async fn until_replica(app: &TestApp, what: &str, ok: impl Fn(bool, i64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = app.store.read_state();
        let (_, up, head) = state.replicas.first().cloned().expect("one replica");
        if ok(up, head) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "waited 20 s for the replica {what}: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_go_to_a_fresh_enough_replica_and_to_the_primary_when_it_lags_or_stops() {
    let primary = Cluster::start();
    let mut admin = sqlx::PgConnection::connect(&primary.url("postgres"))
        .await
        .expect("primary");
    common::create_registry_database(&mut admin).await;
    let replica = primary.replica();
    let replica_url = replica.url("registry");
    let app = TestApp::builder(common::Backend::Postgres)
        .database(TestDb::at(primary.url("registry")))
        .configure(move |s| {
            s.read_database_urls = vec![payout_registry::config::Secret::new(replica_url)];
            s.replica_max_lag = 5;
        })
        // The reads across the replica's death run as fast as they are answered; the
        // client's read budget must not be what ends them.
        .limits(RateLimitConfig {
            read: BucketConfig {
                per_second: 1_000_000.0,
                burst: 1_000_000.0,
            },
            ..RateLimitConfig::default()
        })
        .spawn()
        .await;
    let account = link_issuer_confirmed(&app, CITIZEN, "0074000000001").await;
    let linked = toggle(&app, &account, true).await;
    let linked = toggle(&app, &account, false).await.max(linked);
    until_replica(&app, "to show the writes", |up, head| {
        up && head >= linked as i64
    })
    .await;

    // A read the replica is fresh enough for.
    let r = resolve(&app, linked).await.unwrap();
    assert!(paid(&r) && r.position >= linked, "{r:?}");

    // The replica stops replaying: it shows the past. A read without a minimum may be
    // answered from it, and says so by its position; a read carrying the write's
    // position is answered from the primary.
    on_replica(&replica, "SELECT pg_wal_replay_pause()").await;
    let replica_head = paused_head(&replica).await;
    until_replica(&app, "to be seen paused", |up, head| {
        up && head == replica_head as i64
    })
    .await;
    let suspended = toggle(&app, &account, true).await;
    let stale = resolve(&app, 0).await.unwrap();
    assert!(
        paid(&stale) && stale.position == replica_head && stale.position < suspended,
        "answered from the paused replica, at its position: {stale:?}"
    );
    let fresh = resolve(&app, suspended).await.unwrap();
    assert!(!paid(&fresh) && fresh.position >= suspended, "{fresh:?}");
    // What the replica answered was not cached: the next read without a minimum, if
    // served from the cache, would be fresh; from the replica, stale again; never a
    // stale answer claiming a fresh position.
    let again = resolve(&app, 0).await.unwrap();
    assert_eq!(paid(&again), again.position < suspended, "{again:?}");
    let got = app
        .registry(Some(ADMIN))
        .get_account(GetAccountRequest {
            account_id: account.clone(),
            purpose: "case review".into(),
            min_position: suspended,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.account.unwrap().status().as_str_name(),
        "ACCOUNT_STATUS_SUSPENDED"
    );

    // More than `replica_max_lag` positions behind: skipped even without a minimum.
    let mut last = suspended;
    for i in 0..6 {
        last = toggle(&app, &account, i % 2 == 1).await;
    }
    assert!(last - replica_head > 5);
    // Once this instance has followed the feed that far (milliseconds; no signal to wait on
    // from here), the replica is more than `replica_max_lag` behind it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.store.read_state().position < last as i64 {
        assert!(
            Instant::now() < deadline,
            "the instance did not follow the feed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = resolve(&app, 0).await.unwrap();
    assert!(
        r.position > replica_head + 5,
        "a replica too far behind was read: {r:?}"
    );
    assert!(!paid(&r), "{r:?}");

    // The change feed's catch-up skips the replica too far behind; the subscriber misses
    // nothing.
    catch_up(&app, last).await;

    // Replay resumes: the replica catches up and is read again.
    on_replica(&replica, "SELECT pg_wal_replay_resume()").await;
    until_replica(&app, "to catch up", |up, head| up && head >= last as i64).await;
    let r = resolve(&app, last).await.unwrap();
    assert!(!paid(&r) && r.position >= last);

    // A subscriber catching up is served by the caught-up replica: its scans of the
    // events (which nothing else reads there) grow, and the subscriber misses nothing.
    let scans_before = event_scans(&replica).await;
    catch_up(&app, last).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while event_scans(&replica).await <= scans_before {
        // A backend reports its counters within PostgreSQL's stats interval (up to 10 s
        // when idle).
        assert!(
            Instant::now() < deadline,
            "the catch-up pages were not read on the replica"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The replica dies mid-run: every read is still answered, and answered right.
    // (GetAccount, which no cache answers, so that the reads reach the replica.)
    let reader = {
        let channel = app.channel();
        let account = account.clone();
        tokio::spawn(async move {
            let mut registry = common::registry_on(channel, Some(ADMIN));
            let mut answered = 0;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(3) {
                let got = registry
                    .get_account(GetAccountRequest {
                        account_id: account.clone(),
                        purpose: "case review".into(),
                        min_position: last,
                    })
                    .await
                    .expect("a replica's death fails no read")
                    .into_inner();
                assert!(got.position >= last);
                assert_eq!(
                    got.account.unwrap().status().as_str_name(),
                    "ACCOUNT_STATUS_SUSPENDED"
                );
                answered += 1;
            }
            answered
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    replica.stop();
    let answered = reader.await.unwrap();
    assert!(answered > 10, "only {answered} reads in 3 s");
    let reinstated = toggle(&app, &account, false).await;
    until_replica(&app, "to be marked down", |up, _| !up).await;
    let r = resolve(&app, reinstated).await.unwrap();
    assert!(paid(&r) && r.position >= reinstated, "{r:?}");

    // Back up: read again.
    replica.restart();
    until_replica(&app, "to answer again", |up, head| {
        up && head >= reinstated as i64
    })
    .await;
    let r = resolve(&app, 0).await.unwrap();
    assert!(paid(&r), "{r:?}");
    app.stop().await;
}
