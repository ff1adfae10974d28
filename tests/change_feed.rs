//! The change feed end to end: the outbox sequenced into gapless commit-order positions,
//! Subscribe (catch-up, then live), durable consumers, filters and masking, through real
//! tonic clients. The out-of-order test runs 8 writers whose transactions commit out of
//! order against several server instances sharing one PostgreSQL database.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{feed_on, refused, Backend, TestApp, ADMIN, FEED, PAYER, WATCHER};
use payout_registry::proto::{
    CommitPositionRequest, EditWatchListRequest, EditWatchListResponse, FeedEvent,
    GetPositionRequest, SetDefaultAccountRequest, SubscribeRequest, SubscribeResponse,
};
use tonic::Code;
use uuid::Uuid;

on_both_backends!(
    a_subscriber_catches_up_then_receives_live_events,
    named_consumers_commit_and_resume_from_their_position,
    subscriptions_are_filtered_minimised_and_masked,
    a_watch_list_limits_a_subscription_to_the_citizens_it_serves,
    retention_prunes_old_events_but_never_past_the_slowest_consumer,
    retention_prunes_a_long_backlog_in_steps_up_to_the_slowest_consumer,
    a_graceful_shutdown_ends_live_subscriptions_instead_of_waiting_on_them,
);

async fn a_graceful_shutdown_ends_live_subscriptions_instead_of_waiting_on_them(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    change(&app, 0).await;
    let mut stream = subscribe(&app, FEED, SubscribeRequest::default()).await;
    for _ in 0..3 {
        next(&mut stream).await;
    }
    // Caught up and waiting live; the default grace period is 30 s.
    let started = Instant::now();
    app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown waited {:?} on a live subscription",
        started.elapsed()
    );
    let status = match stream.message().await {
        Err(status) => status,
        Ok(other) => panic!("the subscription should have been ended: {other:?}"),
    };
    assert_eq!(status.code(), Code::Unavailable);
}

async fn retention_prunes_old_events_but_never_past_the_slowest_consumer(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for n in 0..3 {
        change(&app, n).await;
    }
    let mut stream = subscribe(&app, FEED, SubscribeRequest::default()).await;
    for _ in 0..9 {
        next(&mut stream).await;
    }
    drop(stream);
    let mut feed = feed_on(app.channel(), Some(FEED));
    commit_slow(&mut feed, 4).await;
    // Every event is older than a horizon a day ahead; the slow consumer holds back 5..9.
    // (Pruning also waits for the sync digest, which trails the head by a moment.)
    common::digest_at_head(&app).await;
    let tomorrow = payout_registry::domain::Timestamp::now().plus(Duration::from_secs(86_400));
    assert_eq!(app.store.prune_events(tomorrow).await.unwrap(), 4);
    assert_eq!(earliest_and_head(&mut feed, "slow").await, (5, 9));
    let status = refused(
        feed.subscribe(SubscribeRequest::default()).await,
        Code::OutOfRange,
        "FEED_POSITION_PRUNED",
    );
    assert!(
        status.message().contains("earliest position kept is 5"),
        "{status:?}"
    );
    let mut resumed = subscribe(
        &app,
        FEED,
        SubscribeRequest {
            consumer: "slow".into(),
            from_consumer_position: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(next(&mut resumed).await.position, 5);
    // A horizon in the past prunes nothing.
    let yesterday = payout_registry::domain::Timestamp(
        payout_registry::domain::Timestamp::now().micros() - 86_400_000_000,
    );
    commit_slow(&mut feed, 7).await;
    assert_eq!(app.store.prune_events(yesterday).await.unwrap(), 0);
    assert_eq!(app.store.prune_events(tomorrow).await.unwrap(), 3);
    // A consumer that is gone no longer holds retention back once forgotten.
    let feed_reader = "feed-reader";
    assert!(app
        .store
        .delete_consumer(feed_reader, "slow")
        .await
        .unwrap());
    assert!(!app
        .store
        .delete_consumer(feed_reader, "slow")
        .await
        .unwrap());
    assert_eq!(app.store.prune_events(tomorrow).await.unwrap(), 2);
}

/// Retention past more events than one pruning transaction takes (1,000 feed positions)
/// goes in steps, and ends where one delete would have: at the slowest consumer's
/// position, in the middle of a step, then at the head once that consumer is forgotten.
/// On PostgreSQL a trigger notes each delete from `feed` with its transaction: every step
/// commits on its own and deletes at most one step's positions (a prune in one
/// transaction, or steps sharing one, would hold the feed's head lock and every deleted
/// row's lock until the whole backlog was gone).
async fn retention_prunes_a_long_backlog_in_steps_up_to_the_slowest_consumer(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    if backend == Backend::Postgres {
        note_prune_transactions(&app).await;
    }
    let spec = payout_registry::tools::demo::DemoSpec {
        citizens: 1_000,
        seed: 7,
    };
    common::sync_accounts(
        &app,
        payout_registry::tools::demo::accounts(&spec).collect(),
    )
    .await;
    let head = common::digest_at_head(&app).await;
    assert!(head > 2_500, "a backlog of several steps: {head} events");
    let mut feed = feed_on(app.channel(), Some(FEED));
    commit_slow(&mut feed, 1_500).await;
    let tomorrow = payout_registry::domain::Timestamp::now().plus(Duration::from_secs(86_400));
    assert_eq!(app.store.prune_events(tomorrow).await.unwrap(), 1_500);
    assert_eq!(app.store.feed_pruned_through().await.unwrap(), 1_500);
    assert_eq!(
        earliest_and_head(&mut feed, "slow").await,
        (1_501, head as u64)
    );
    assert!(app
        .store
        .delete_consumer("feed-reader", "slow")
        .await
        .unwrap());
    let rest = u64::try_from(head - 1_500).unwrap();
    assert_eq!(app.store.prune_events(tomorrow).await.unwrap(), rest);
    assert_eq!(app.store.feed_pruned_through().await.unwrap(), head);
    assert_eq!(app.db.count("SELECT COUNT(*) FROM events").await, 0);
    if backend == Backend::Postgres {
        let db = &app.db;
        let steps = |what: &str| format!("SELECT {what} FROM prune_steps WHERE positions > 0");
        assert_eq!(db.count(&steps("SUM(positions)::bigint")).await, head);
        assert_eq!(db.count(&steps("MAX(positions)")).await, 1_000);
        let transactions = db.count(&steps("COUNT(DISTINCT txid)")).await;
        assert_eq!(transactions, db.count(&steps("COUNT(*)")).await);
        // 1,500 in two steps up to the slow consumer, then the rest in steps of 1,000.
        assert_eq!(transactions, 2 + (head - 1_500 + 999) / 1_000);
    }
}

/// Notes each statement that deletes from `feed` (PostgreSQL): its transaction and how
/// many positions it deleted, in the test database's own table `prune_steps`.
async fn note_prune_transactions(app: &TestApp) {
    for sql in [
        "CREATE TABLE prune_steps (txid BIGINT NOT NULL, positions BIGINT NOT NULL)",
        "CREATE FUNCTION note_prune_step() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         INSERT INTO prune_steps SELECT txid_current(), COUNT(*) FROM gone; RETURN NULL; END $$",
        "CREATE TRIGGER note_prune_step AFTER DELETE ON feed REFERENCING OLD TABLE AS gone \
         FOR EACH STATEMENT EXECUTE FUNCTION note_prune_step()",
    ] {
        app.db.execute_raw(sql).await.expect(sql);
    }
}

/// Records position `position` for the consumer "slow".
async fn commit_slow(feed: &mut common::Feed, position: u64) {
    feed.commit_position(CommitPositionRequest {
        consumer: "slow".into(),
        position,
    })
    .await
    .unwrap();
}

/// The feed's earliest position kept and its head, as `consumer` is told them.
async fn earliest_and_head(feed: &mut common::Feed, consumer: &str) -> (u64, u64) {
    let position = feed
        .get_position(GetPositionRequest {
            consumer: consumer.into(),
        })
        .await
        .unwrap()
        .into_inner();
    (position.earliest, position.head)
}

/// Links (and verifies) an account for citizen `n`: two events, three with the default.
async fn change(app: &TestApp, n: u32) {
    link(app, n, 0).await
}

/// Links and verifies the citizen's `k`th account.
async fn link(app: &TestApp, n: u32, k: u32) {
    common::link_issuer_confirmed(app, &format!("0480890{n:05}"), &format!("0048{k}{n:08}")).await;
}

async fn next(stream: &mut tonic::Streaming<SubscribeResponse>) -> FeedEvent {
    tokio::time::timeout(Duration::from_secs(10), common::next_event(stream))
        .await
        .expect("an event within 10 s")
        .expect("stream open")
}

async fn subscribe(
    app: &TestApp,
    token: &str,
    req: SubscribeRequest,
) -> tonic::Streaming<SubscribeResponse> {
    feed_on(app.channel(), Some(token))
        .subscribe(req)
        .await
        .expect("subscribe")
        .into_inner()
}

async fn a_subscriber_catches_up_then_receives_live_events(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for n in 0..3 {
        change(&app, n).await;
    }
    let mut stream = subscribe(&app, FEED, SubscribeRequest::default()).await;
    let mut seen = Vec::new();
    for _ in 0..9 {
        seen.push(next(&mut stream).await);
    }
    let positions: Vec<u64> = seen.iter().map(|e| e.position).collect();
    assert_eq!(
        positions,
        (1..=9).collect::<Vec<_>>(),
        "consecutive, from the beginning"
    );
    let types: Vec<&str> = seen[..3].iter().map(common::event_name).collect();
    assert_eq!(
        types,
        ["ACCOUNT_LINKED", "ACCOUNT_VERIFIED", "DEFAULT_CHANGED"]
    );
    assert_eq!(seen[0].actor, "welfare-admin");

    // Live: a change made now arrives without waiting for the safety tick (1 s).
    let started = Instant::now();
    change(&app, 3).await;
    let live = next(&mut stream).await;
    let lag = started.elapsed();
    assert_eq!(live.position, 10);
    assert_eq!(live.citizen_id, "048089000003");
    assert!(lag < Duration::from_millis(900), "live event after {lag:?}");

    // Resuming after the last position seen repeats nothing.
    drop(stream);
    let mut resumed = subscribe(
        &app,
        FEED,
        SubscribeRequest {
            after_position: 10,
            ..Default::default()
        },
    )
    .await;
    let more = next(&mut resumed).await;
    assert_eq!(more.position, 11);
}

async fn named_consumers_commit_and_resume_from_their_position(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for n in 0..2 {
        change(&app, n).await;
    }
    let mut feed = feed_on(app.channel(), Some(FEED));
    // Wait until the six events are sequenced.
    let mut stream = subscribe(&app, FEED, SubscribeRequest::default()).await;
    for _ in 0..6 {
        next(&mut stream).await;
    }
    let unknown = feed
        .get_position(GetPositionRequest {
            consumer: "payroll-cache".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!unknown.found);
    assert_eq!(unknown.head, 6);
    refused(
        feed.commit_position(CommitPositionRequest {
            consumer: "payroll-cache".into(),
            position: 7,
        })
        .await,
        Code::InvalidArgument,
        "FEED_POSITION_INVALID",
    );
    feed.commit_position(CommitPositionRequest {
        consumer: "payroll-cache".into(),
        position: 4,
    })
    .await
    .unwrap();
    let known = feed
        .get_position(GetPositionRequest {
            consumer: "payroll-cache".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((known.found, known.position), (true, 4));
    let mut resumed = subscribe(
        &app,
        FEED,
        SubscribeRequest {
            consumer: "payroll-cache".into(),
            from_consumer_position: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(next(&mut resumed).await.position, 5);
    // Consumer names belong to their client.
    let other = feed_on(app.channel(), Some(WATCHER))
        .get_position(GetPositionRequest {
            consumer: "payroll-cache".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!other.found);
}

async fn subscriptions_are_filtered_minimised_and_masked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    change(&app, 0).await;
    // Without events.all, a subscriber must be limited to a watch list.
    refused(
        feed_on(app.channel(), Some(WATCHER))
            .subscribe(SubscribeRequest::default())
            .await,
        Code::FailedPrecondition,
        "WATCH_LIST_REQUIRED",
    );
    // Without any events scope: denied.
    let denied = feed_on(app.channel(), Some(PAYER))
        .subscribe(SubscribeRequest::default())
        .await;
    assert_eq!(denied.unwrap_err().code(), Code::PermissionDenied);

    let mut verified_only = subscribe(
        &app,
        FEED,
        SubscribeRequest {
            event_types: vec![common::event_type("ACCOUNT_VERIFIED")],
            ..Default::default()
        },
    )
    .await;
    let e = next(&mut verified_only).await;
    assert_eq!(
        (common::event_name(&e), e.position),
        ("ACCOUNT_VERIFIED", 2)
    );
    // The payload is the typed account; the account number masked for a client without
    // resolve.full.
    let account = common::event_account(&e).expect("the account snapshot");
    assert_eq!(account.citizen_id, "048089000000");
    assert_eq!(
        account.status(),
        payout_registry::proto::AccountStatus::Verified
    );
    assert_eq!(
        account.kind(),
        payout_registry::proto::AccountKind::BankAccount
    );
    assert_eq!(
        account.verification.as_ref().map(|v| v.method()),
        Some(payout_registry::proto::VerificationMethod::IssuerConfirmed)
    );
    assert_eq!(
        (account.account_ref.as_str(), account.account_ref_masked),
        ("*********0000", true)
    );
    change(&app, 1).await;
    let e = next(&mut verified_only).await;
    assert_eq!(
        (common::event_name(&e), e.position),
        ("ACCOUNT_VERIFIED", 5)
    );

    // A program filter: preference changes of other programs are left out; events not
    // about one program pass, and so do changes of the default (every program's
    // fallback).
    let second = common::link_issuer_confirmed(&app, "048089000000", "0048100000000").await;
    app.registry(Some(ADMIN))
        .set_default_account(SetDefaultAccountRequest {
            idempotency_key: Uuid::new_v4().to_string(),
            citizen_id: "048089000000".into(),
            account_id: second.clone(),
            program_code: "PENSION".into(),
            reason: "pension to the second account".into(),
            ..Default::default()
        })
        .await
        .expect("set the pension account");
    app.registry(Some(ADMIN))
        .set_default_account(SetDefaultAccountRequest {
            idempotency_key: Uuid::new_v4().to_string(),
            citizen_id: "048089000000".into(),
            account_id: second.clone(),
            program_code: "UNEMPLOYMENT_INSURANCE".into(),
            reason: "unemployment benefit to the second account".into(),
            ..Default::default()
        })
        .await
        .expect("set the unemployment account");
    let mut pension = subscribe(
        &app,
        FEED,
        SubscribeRequest {
            program_codes: vec!["PENSION".into()],
            ..Default::default()
        },
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..9 {
        let e = next(&mut pension).await;
        seen.push((common::event_name(&e), common::event_program(&e).to_owned()));
    }
    let expected = [
        ("ACCOUNT_LINKED", ""),
        ("ACCOUNT_VERIFIED", ""),
        ("DEFAULT_CHANGED", ""),
        ("ACCOUNT_LINKED", ""),
        ("ACCOUNT_VERIFIED", ""),
        ("DEFAULT_CHANGED", ""),
        ("ACCOUNT_LINKED", ""),
        ("ACCOUNT_VERIFIED", ""),
        ("DEFAULT_CHANGED", "PENSION"),
    ];
    let seen: Vec<(&str, &str)> = seen.iter().map(|(t, p)| (*t, p.as_str())).collect();
    assert_eq!(
        seen, expected,
        "the UNEMPLOYMENT_INSURANCE change is left out"
    );
    // The next event is a later change, not the other program's.
    change(&app, 2).await;
    let e = next(&mut pension).await;
    assert_eq!(
        (common::event_name(&e), e.citizen_id.as_str()),
        ("ACCOUNT_LINKED", "048089000002"),
        "the UNEMPLOYMENT_INSURANCE change was left out"
    );
}

async fn edit(app: &TestApp, consumer: &str, add: &[u32], remove: &[u32]) -> EditWatchListResponse {
    let id = |n: &u32| format!("0480890{n:05}");
    feed_on(app.channel(), Some(WATCHER))
        .edit_watch_list(tokio_stream::iter(vec![EditWatchListRequest {
            consumer: consumer.into(),
            add: add.iter().map(id).collect(),
            remove: remove.iter().map(id).collect(),
        }]))
        .await
        .expect("edit watch list")
        .into_inner()
}

async fn a_watch_list_limits_a_subscription_to_the_citizens_it_serves(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let watched = SubscribeRequest {
        consumer: "hanoi-roll".into(),
        ..Default::default()
    };
    // An empty list is no list.
    refused(
        feed_on(app.channel(), Some(WATCHER))
            .subscribe(watched.clone())
            .await,
        Code::FailedPrecondition,
        "WATCH_LIST_REQUIRED",
    );
    let summary = edit(&app, "hanoi-roll", &[1, 3, 3], &[]).await;
    assert_eq!((summary.size, summary.added), (2, 2));
    for n in 0..5 {
        change(&app, n).await;
    }
    let mut stream = subscribe(&app, WATCHER, watched.clone()).await;
    let mut citizens = Vec::new();
    for _ in 0..6 {
        citizens.push(next(&mut stream).await.citizen_id);
    }
    let expected: Vec<String> = [1u32, 1, 1, 3, 3, 3]
        .iter()
        .map(|n| format!("0480890{n:05}"))
        .collect();
    assert_eq!(citizens, expected, "only the watched citizens' events");
    // Removing a citizen stops its events; the others still arrive, live.
    let summary = edit(&app, "hanoi-roll", &[4], &[3]).await;
    assert_eq!((summary.size, summary.added, summary.removed), (2, 1, 1));
    link(&app, 3, 1).await;
    link(&app, 4, 1).await;
    // Citizen 4's new events are positions 18 and 19 (its older ones, 13 to 15, may come
    // first: they are after the subscription's position and 4 is now watched). Citizen 3's
    // new events (16, 17) never come.
    loop {
        let e = next(&mut stream).await;
        assert_eq!(e.citizen_id, "048089000004", "position {}", e.position);
        if e.position == 19 {
            break;
        }
    }
    // An invalid id refuses the message.
    let bad = feed_on(app.channel(), Some(WATCHER))
        .edit_watch_list(tokio_stream::iter(vec![EditWatchListRequest {
            consumer: "hanoi-roll".into(),
            add: vec!["12345".into()],
            remove: vec![],
        }]))
        .await;
    refused(bad, Code::InvalidArgument, "CITIZEN_ID_INVALID_LENGTH");
}

mod postgres_instances {
    use super::*;
    use rand::Rng;
    use sqlx::Connection;

    /// 8 writers make 500 changes each, each in a transaction that sleeps a random while
    /// after taking its sequence value, so transactions commit out of order. Meanwhile a
    /// subscriber reads the feed from three server instances over the same database,
    /// disconnecting and resuming from its last position every few hundred events. It
    /// must receive exactly the 4,000 events: no gap, no duplicate, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn resuming_subscribers_see_every_event_once_in_order_despite_out_of_order_commits() {
        let app = TestApp::spawn(Backend::Postgres).await;
        let instances = [app.another_instance().await, app.another_instance().await];
        const WRITERS: usize = 8;
        const CHANGES: usize = 500;
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let url = app.db.url.clone();
            writers.push(tokio::spawn(async move {
                let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
                let mut ids = Vec::with_capacity(CHANGES);
                for i in 0..CHANGES {
                    let id = Uuid::now_v7();
                    let delay = rand::rng().random_range(0..4u64);
                    let mut tx = conn.begin().await.unwrap();
                    sqlx::query(
                        "INSERT INTO events (event_id, occurred_at, event_type, citizen_id, actor, \
                         reason, payload) VALUES ($1, 0, 'ACCOUNT_LINKED', $2, 'writer', 'test', '{}')",
                    )
                    .bind(id)
                    .bind(format!("0010850{w:01}{i:04}"))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    tx.commit().await.unwrap();
                    ids.push(id);
                }
                ids
            }));
        }
        let channels = [
            app.channel(),
            instances[0].channel(),
            instances[1].channel(),
        ];
        let mut received: Vec<FeedEvent> = Vec::new();
        let mut after = 0u64;
        let mut reconnects = 0;
        while received.len() < WRITERS * CHANGES {
            let channel = channels[reconnects % channels.len()].clone();
            let mut stream = feed_on(channel, Some(FEED))
                .subscribe(SubscribeRequest {
                    after_position: after,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let quota = rand::rng().random_range(200..900);
            for _ in 0..quota {
                if received.len() == WRITERS * CHANGES {
                    break;
                }
                let e = next(&mut stream).await;
                after = e.position;
                received.push(e);
            }
            drop(stream);
            reconnects += 1;
        }
        let mut written = HashSet::new();
        for w in writers {
            written.extend(w.await.unwrap());
        }
        assert!(reconnects >= 5, "the subscriber resumed {reconnects} times");
        let positions: Vec<u64> = received.iter().map(|e| e.position).collect();
        assert_eq!(
            positions,
            (1..=(WRITERS * CHANGES) as u64).collect::<Vec<_>>(),
            "every position once, in order"
        );
        let got: HashSet<Uuid> = received
            .iter()
            .map(|e| e.event_id.parse().unwrap())
            .collect();
        assert_eq!(got.len(), WRITERS * CHANGES, "no event twice");
        assert_eq!(got, written, "exactly the events written");
        drop(instances);
    }

    /// A subscriber far behind reads in growing pages, each read ahead while the last is
    /// sent: 7,500 events committed before it subscribes and 2,500 more committed while
    /// it catches up arrive exactly once, in order, across the page boundaries.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_subscriber_far_behind_catches_up_in_growing_pages_without_gap_or_duplicate() {
        let app = TestApp::spawn(Backend::Postgres).await;
        let url = app.db.url.clone();
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let insert = "INSERT INTO events (event_id, occurred_at, event_type, citizen_id, actor, \
                      reason, payload) SELECT gen_random_uuid(), 0, 'ACCOUNT_LINKED', \
                      '00108' || lpad(n::text, 7, '0'), 'writer', 'test', '{}' \
                      FROM generate_series($1::int, $2::int) AS n RETURNING event_id";
        let mut written: Vec<Uuid> = sqlx::query_scalar(insert)
            .bind(1)
            .bind(7_500)
            .fetch_all(&mut conn)
            .await
            .unwrap();
        let mut stream = feed_on(app.channel(), Some(FEED))
            .subscribe(SubscribeRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut received: Vec<FeedEvent> = Vec::new();
        while received.len() < 10_000 {
            if received.len() == 1_500 {
                // Committed while the subscriber is inside its catch-up.
                written.extend(
                    sqlx::query_scalar::<_, Uuid>(insert)
                        .bind(7_501)
                        .bind(10_000)
                        .fetch_all(&mut conn)
                        .await
                        .unwrap(),
                );
            }
            received.push(next(&mut stream).await);
        }
        let positions: Vec<u64> = received.iter().map(|e| e.position).collect();
        assert_eq!(
            positions,
            (1..=10_000u64).collect::<Vec<_>>(),
            "every position once, in order"
        );
        let got: HashSet<Uuid> = received
            .iter()
            .map(|e| e.event_id.parse().unwrap())
            .collect();
        assert_eq!(
            got,
            written.into_iter().collect(),
            "exactly the events written"
        );
        // Caught up, the subscription is on the live tail.
        sqlx::query_scalar::<_, Uuid>(insert)
            .bind(10_001)
            .bind(10_001)
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert_eq!(next(&mut stream).await.position, 10_001);
    }

    /// Numbering an event deletes its row from the sequencer's queue (`feed_pending`),
    /// leaving a dead row version behind. The sequencer vacuums the queue at its first
    /// round and then every 50,000 positions, so the dead rows do not pile up where
    /// autovacuum is off (as on the test machine) and its rounds' plans stay cheap.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_sequencer_vacuums_its_queue_as_the_feed_grows() {
        let app = TestApp::spawn(Backend::Postgres).await;
        let vacuums = "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'feed_pending'";
        let head = "SELECT COUNT(*) FROM feed";
        let until = |what: &'static str, sql: &'static str, at_least: i64| {
            let db = &app.db;
            async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                loop {
                    let n = db.count(sql).await;
                    if n >= at_least {
                        return n;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{what}: {n} after a minute, expected {at_least}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        until("vacuums at the first round", vacuums, 1).await;
        let mut conn = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
        sqlx::query(
            "INSERT INTO events (event_id, occurred_at, event_type, citizen_id, actor, reason, \
             payload) SELECT gen_random_uuid(), 0, 'ACCOUNT_LINKED', \
             '00108' || lpad(n::text, 7, '0'), 'writer', 'test', '{}' \
             FROM generate_series(1, 60000) AS n",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        until("numbered", head, 60_000).await;
        until("vacuums once 50,000 positions were numbered", vacuums, 2).await;
        assert_eq!(
            app.db.count("SELECT COUNT(*) FROM feed_pending").await,
            0,
            "every event numbered"
        );
        // The vacuum due at 50,000 reclaims what was deleted before it began; rows of the
        // rounds committed while it ran or after it (10,000 each) stay dead until the next.
        // Counted in the table itself (pgstattuple): the statistics' `n_dead_tup` is an
        // estimate, which counts a row deleted while the vacuum ran twice. A row some
        // concurrent snapshot could still see is not reclaimable when the vacuum passes
        // (seen on a loaded machine: all 50,000 left); the next round's page pruning or
        // the next vacuum takes it, so the check allows that a few seconds.
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pgstattuple")
            .execute(&mut conn)
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let dead = app
                .db
                .count("SELECT dead_tuple_count FROM pgstattuple('feed_pending')")
                .await;
            if dead <= 30_000 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the dead rows of the numbered events were reclaimed: {dead} of 60,000 still \
                 dead after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// SQLite only: the change feed's planner statistics.
mod sqlite_feed_statistics {
    use super::*;
    use sqlx::Connection;

    /// The sequencer's statements that delete from `events` (the retention prune) and from
    /// `feed_pending` (numbering), as SQLite plans them on a new connection.
    async fn delete_plans(app: &TestApp) -> Vec<String> {
        let mut conn = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
        let mut details = Vec::new();
        for statement in [
            "DELETE FROM events WHERE position IN (SELECT position FROM feed \
             WHERE feed_position > 1 AND feed_position <= 2)",
            "DELETE FROM feed_pending WHERE position IN (SELECT position FROM feed \
             WHERE feed_position > 1 AND feed_position <= 2) RETURNING citizen_id",
        ] {
            let rows: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(&format!("EXPLAIN QUERY PLAN {statement}"))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
            details.extend(rows.into_iter().map(|(_, _, _, detail)| detail));
        }
        details
    }

    /// Statistics taken while the feed was small (here written as if ten rows were
    /// counted; an ANALYZE of the test's few events records as few) make SQLite scan
    /// `events` and `feed_pending` to delete a few rows from them, however far the feed
    /// has grown since. The sequencer's refresh leaves the feed's tables no statistics to
    /// go stale (on SQLite an ANALYZE of them counts every index entry while holding the
    /// one writer: seconds at millions of events, failing the writes that wait), and
    /// SQLite then deletes by key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_feeds_statistics_refresh_leaves_sqlite_none_to_go_stale() {
        let app = TestApp::spawn(Backend::Sqlite).await;
        // A few events, numbered: an ANALYZE of the feed would now record a small feed.
        for n in 0..3 {
            change(&app, n).await;
        }
        for statement in [
            "ANALYZE sqlite_schema",
            "DELETE FROM sqlite_stat1 WHERE tbl IN ('events', 'feed', 'feed_pending')",
            "INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES \
             ('events', 'sqlite_autoindex_events_1', '10 1'), \
             ('feed', 'sqlite_autoindex_feed_1', '10 1'), ('feed_pending', NULL, '10')",
        ] {
            app.db.execute_raw(statement).await.expect(statement);
        }
        let stale = delete_plans(&app).await;
        assert!(
            stale.iter().any(|d| d == "SCAN events")
                && stale.iter().any(|d| d == "SCAN feed_pending"),
            "statistics of a small feed make SQLite scan: {stale:?}"
        );

        app.store.analyze_feed().await.expect("refresh");
        assert_eq!(
            app.db
                .count("SELECT COUNT(*) FROM sqlite_stat1 WHERE tbl IN ('events', 'feed', 'feed_pending')")
                .await,
            0,
            "no statistics of the feed's tables are left"
        );
        let plans = delete_plans(&app).await;
        for table in ["events", "feed_pending"] {
            assert!(
                plans.contains(&format!(
                    "SEARCH {table} USING INTEGER PRIMARY KEY (rowid=?)"
                )),
                "{table} deleted from by key: {plans:?}"
            );
        }
        app.stop().await;
    }
}

/// Writers wake their own instance's sequencer in process and send no NOTIFY: PostgreSQL
/// serializes the commits of every transaction that sent one (a lock for the whole cluster,
/// held until the commit is flushed), so each write and sequencing round waited behind a
/// bulk batch's commit. The sequencing round still notifies, which wakes the other
/// instances' followers.
mod postgres_wake_ups {
    use super::*;
    use sqlx::postgres::PgListener;

    /// Writes made one after another, each waiting for its events.
    const WRITES: u32 = 20;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_send_no_notification_and_their_events_are_numbered_at_once_and_announced() {
        let app = TestApp::spawn(Backend::Postgres).await;
        let mut listener = PgListener::connect(&app.db.url).await.expect("connect");
        listener
            .listen_all(["payout_events", "payout_feed"])
            .await
            .expect("listen");
        let mut stream = subscribe(&app, FEED, SubscribeRequest::default()).await;
        // The writer's own instance numbers its events at once, woken in process: left to
        // the sequencer's one-second safety tick, 20 writes in turn would take about 10 s.
        let started = Instant::now();
        for n in 1..=WRITES {
            change(&app, n).await;
            for _ in 0..3 {
                next(&mut stream).await;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{WRITES} writes in turn, each until its events were received: {:?}",
            started.elapsed()
        );
        // Every notification committed so far is queued on the listener's connection.
        let mut channels = HashSet::new();
        while let Ok(received) =
            tokio::time::timeout(Duration::from_millis(500), listener.recv()).await
        {
            channels.insert(received.expect("notification").channel().to_owned());
        }
        assert!(
            channels.contains("payout_feed"),
            "the sequencing round announces the events: {channels:?}"
        );
        assert!(
            !channels.contains("payout_events"),
            "a writer sent a notification: {channels:?}"
        );
        app.stop().await;
    }
}
