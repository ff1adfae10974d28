//! Consistency tokens and the resolution cache, through real clients: every answer
//! carries the feed position it reflects, a read carrying a write's position shows the
//! write, and no instance's cache answers a stale resolution once the change's position
//! is visible, on one instance (both backends) and on three over one PostgreSQL database.

mod common;

use common::{
    link_issuer_confirmed, refused, set_preference, suspend_or_reinstate, sync_citizens, Backend,
    TestApp, ADMIN, PAYER,
};
use payout_registry::proto::{
    BatchResolveRequest, CitizenRecord, CitizenStatus, GetAccountHistoryRequest, GetAccountRequest,
    ListCitizenAccountsRequest, ResolveOutcome, ResolveRequest, ResolveResponse,
    SuspendAccountRequest,
};
use tonic::Code;

on_both_backends!(
    a_read_carrying_a_writes_position_shows_the_write_and_says_how_fresh_it_is,
    a_write_answers_its_own_events_position_its_replay_the_same_and_a_no_op_the_head,
    a_min_position_beyond_the_feed_is_refused_and_reads_nothing,
    a_sync_acknowledgement_carries_the_position_of_its_changes,
    a_payroll_runs_bulk_reads_use_the_cache_but_do_not_fill_it,
);

fn resolve_request(citizen: &str, min_position: u64) -> ResolveRequest {
    ResolveRequest {
        citizen_id: citizen.into(),
        purpose: "monthly payroll".into(),
        min_position,
        ..Default::default()
    }
}

async fn resolve(resolver: &mut common::Resolver, citizen: &str, min: u64) -> ResolveResponse {
    resolver
        .resolve(resolve_request(citizen, min))
        .await
        .expect("resolved")
        .into_inner()
}

fn paid(r: &ResolveResponse) -> bool {
    r.outcome() == ResolveOutcome::Resolved
}

async fn a_read_carrying_a_writes_position_shows_the_write_and_says_how_fresh_it_is(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001089300001";
    let account = link_issuer_confirmed(&app, citizen, "0071000000001").await;
    let mut registry = app.registry(Some(ADMIN));
    let mut resolver = app.resolver(Some(PAYER));

    // Each write answers the position of its event; each read carrying it shows the
    // write, from the cache it warmed or not, and answers at least that position.
    let mut last = 0;
    for round in 0..6 {
        let suspend = round % 2 == 0;
        let position = suspend_or_reinstate(&mut registry, &account, suspend).await;
        assert!(position > last, "positions grow: {position} after {last}");
        last = position;
        for _ in 0..3 {
            let r = resolve(&mut resolver, citizen, position).await;
            assert_eq!(paid(&r), !suspend, "round {round}: {r:?}");
            assert!(r.position >= position, "{} < {position}", r.position);
        }
    }
    assert!(
        app.store.read_state().cache.hits > 0,
        "repeated reads were answered from the cache"
    );

    // The other reads carry positions too.
    let got = registry
        .get_account(GetAccountRequest {
            account_id: account.clone(),
            purpose: "case review".into(),
            min_position: last,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.position >= last);
    assert_eq!(
        got.account.unwrap().status().as_str_name(),
        "ACCOUNT_STATUS_VERIFIED"
    );
    let listed = registry
        .list_citizen_accounts(ListCitizenAccountsRequest {
            citizen_id: citizen.into(),
            min_position: last,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.position >= last);
    let history = registry
        .get_account_history(GetAccountHistoryRequest {
            account_id: account.clone(),
            min_position: last,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(history.position >= last);
    assert_eq!(
        history.entries.len(),
        8,
        "linked, verified, 3 suspensions, 3 reinstatements"
    );

    // A read without a minimum is at most the feed lag behind, and says how far it is.
    let r = resolve(&mut resolver, citizen, 0).await;
    assert!(r.position <= last);
    app.stop().await;
}

/// The consistency token of a single write is the feed position of that write's own last
/// event (not of whatever the citizen did since): a replay under the same idempotency key
/// answers it again, and a write that changed nothing answers a position covering every
/// earlier write.
async fn a_write_answers_its_own_events_position_its_replay_the_same_and_a_no_op_the_head(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001089300002";
    let account = link_issuer_confirmed(&app, citizen, "0071000000002").await;
    let mut registry = app.registry(Some(ADMIN));
    let suspend = SuspendAccountRequest {
        idempotency_key: uuid::Uuid::new_v4().to_string(),
        account_id: account.clone(),
        reason: "payout failed twice".into(),
        ..Default::default()
    };
    let suspended = registry
        .suspend_account(suspend.clone())
        .await
        .expect("suspended")
        .into_inner()
        .position;
    let at = app
        .store
        .feed_after(suspended as i64 - 1, 1)
        .await
        .expect("the feed");
    assert_eq!(
        (
            at[0].event_type.as_str(),
            at[0].account_id.map(|a| a.to_string())
        ),
        ("ACCOUNT_SUSPENDED", Some(account.clone())),
        "the token is the position of the write's event"
    );

    // The citizen's later write moves their latest event, not the first write's token.
    let reinstated = suspend_or_reinstate(&mut registry, &account, false).await;
    assert!(reinstated > suspended);
    let replayed = registry
        .suspend_account(suspend)
        .await
        .expect("replayed")
        .into_inner();
    assert_eq!(
        replayed.position, suspended,
        "a replay answers the first token"
    );
    assert_eq!(
        replayed.account.unwrap().status().as_str_name(),
        "ACCOUNT_STATUS_SUSPENDED",
        "and the first answer"
    );

    // The account is the default already: nothing changes, no event, and the token
    // covers the reinstatement, so a read carrying it sees the account paid.
    let head_before = app.store.feed_head().await.unwrap();
    let unchanged = set_preference(&app, citizen, &account, "").await;
    assert!(unchanged >= reinstated, "{unchanged} < {reinstated}");
    assert_eq!(
        app.store.feed_head().await.unwrap(),
        head_before,
        "no event"
    );
    let mut resolver = app.resolver(Some(PAYER));
    let r = resolve(&mut resolver, citizen, unchanged).await;
    assert!(paid(&r) && r.position >= unchanged, "{r:?}");
    app.stop().await;
}

async fn a_min_position_beyond_the_feed_is_refused_and_reads_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001089300002";
    let account = link_issuer_confirmed(&app, citizen, "0071000000002").await;
    let head = common::sequenced_head(&app).await as u64;
    let reads_before = app.db.count("SELECT COUNT(*) FROM access_log").await;
    let mut resolver = app.resolver(Some(PAYER));
    for beyond in [head + 1_000, u64::MAX] {
        let status = refused(
            resolver.resolve(resolve_request(citizen, beyond)).await,
            Code::InvalidArgument,
            "FEED_POSITION_INVALID",
        );
        assert!(status.message().contains("head"), "{status:?}");
        refused(
            app.registry(Some(ADMIN))
                .get_account(GetAccountRequest {
                    account_id: account.clone(),
                    purpose: "case review".into(),
                    min_position: beyond,
                })
                .await,
            Code::InvalidArgument,
            "FEED_POSITION_INVALID",
        );
    }
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM access_log").await,
        reads_before,
        "a refused read reads nobody's data"
    );
    // At the head itself: answered.
    let r = resolve(&mut resolver, citizen, head).await;
    assert!(paid(&r) && r.position >= head, "{r:?}");
    app.stop().await;
}

/// BatchResolve's answers, in request order: whether each citizen is paid.
async fn batch_paid(resolver: &mut common::Resolver, citizens: &[&str], min: u64) -> Vec<bool> {
    let requests: Vec<BatchResolveRequest> = citizens
        .iter()
        .enumerate()
        .map(|(i, c)| BatchResolveRequest {
            correlation_id: i.to_string(),
            citizen_id: (*c).into(),
            purpose: "monthly payroll".into(),
            min_position: min,
            ..Default::default()
        })
        .collect();
    common::batch_resolve_on(resolver, requests)
        .await
        .iter()
        .map(|a| a.result.as_ref().is_some_and(paid))
        .collect()
}

/// A payroll run reads millions of citizens once each: its reads are answered from
/// entries unary reads cached, but what it reads from the database is not cached, so it
/// neither evicts the unary readers' working set nor pays for inserting entries.
async fn a_payroll_runs_bulk_reads_use_the_cache_but_do_not_fill_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizens = ["001089300011", "001089300012", "001089300013"];
    for (i, c) in citizens.iter().enumerate() {
        link_issuer_confirmed(&app, c, &format!("007100000001{i}")).await;
    }
    let head = common::sequenced_head(&app).await as u64;
    let mut resolver = app.resolver(Some(PAYER));
    let cache = || app.store.read_state().cache;

    // A unary read caches its citizen: the second read is a hit.
    assert!(paid(&resolve(&mut resolver, citizens[0], head).await));
    let before = cache();
    assert!(paid(&resolve(&mut resolver, citizens[0], head).await));
    assert_eq!(cache().hits, before.hits + 1, "the unary read was cached");

    // The batch answers the cached citizen from the cache and reads the other two.
    let before = cache();
    assert_eq!(batch_paid(&mut resolver, &citizens, head).await, [true; 3]);
    let after = cache();
    assert_eq!(
        (after.hits - before.hits, after.misses - before.misses),
        (1, 2),
        "one hit, two reads: {before:?} -> {after:?}"
    );
    // Read again, the two are read again: the first batch did not cache them.
    let before = cache();
    assert_eq!(
        batch_paid(&mut resolver, &citizens[1..], head).await,
        [true; 2]
    );
    let after = cache();
    assert_eq!(
        (after.hits - before.hits, after.misses - before.misses),
        (0, 2),
        "{before:?} -> {after:?}"
    );
    // A unary read of one of them caches it as before.
    resolve(&mut resolver, citizens[1], head).await;
    let before = cache();
    resolve(&mut resolver, citizens[1], head).await;
    assert_eq!(cache().hits, before.hits + 1);
    app.stop().await;
}

/// Several instances over one PostgreSQL database, each with its own cache.
mod postgres_instances {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use common::{resolver_on, sync_citizens, Instance};
    use payout_registry::proto::{CitizenRecord, CitizenStatus};

    /// A write: citizen, position, paid after it, when it was sent.
    type Write = (usize, u64, bool, Instant);

    async fn three_instances() -> (TestApp, [Instance; 2]) {
        let app = TestApp::spawn(Backend::Postgres).await;
        let others = [app.another_instance().await, app.another_instance().await];
        (app, others)
    }

    fn resolvers(app: &TestApp, others: &[Instance; 2]) -> Vec<common::Resolver> {
        vec![
            app.resolver(Some(PAYER)),
            resolver_on(others[0].channel(), Some(PAYER)),
            resolver_on(others[1].channel(), Some(PAYER)),
        ]
    }

    /// Readers hammer every instance while a writer suspends and reinstates accounts
    /// through another. Each write's answer names its position; every answer of every
    /// instance names the position it reflects. No answer may reflect a position at or
    /// after a write and still show the state before it; and a read carrying the write's
    /// position shows it on every instance at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_instance_answers_a_stale_resolution_once_the_writes_position_is_visible() {
        let (app, others) = three_instances().await;
        const CITIZENS: usize = 8;
        let citizens: Vec<String> = (0..CITIZENS).map(|i| format!("00108930{i:04}")).collect();
        let mut accounts = Vec::new();
        for (i, c) in citizens.iter().enumerate() {
            accounts.push(link_issuer_confirmed(&app, c, &format!("00720000{i:05}")).await);
        }
        // The writes, as (citizen, position, paid after it, when it was sent), known once
        // answered.
        let writes: Arc<std::sync::Mutex<Vec<Write>>> = Default::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut readers = Vec::new();
        for mut resolver in resolvers(&app, &others) {
            let citizens = citizens.clone();
            let stop = stop.clone();
            readers.push(tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for (i, c) in citizens.iter().enumerate() {
                        let r = resolve(&mut resolver, c, 0).await;
                        answers.push((i, r.position, paid(&r), Instant::now()));
                    }
                }
                answers
            }));
        }
        let mut registry = app.registry(Some(ADMIN));
        let mut fresh_reads = 0;
        let mut all = resolvers(&app, &others);
        for round in 0..6 {
            let suspend = round % 2 == 0;
            for (i, account) in accounts.iter().enumerate() {
                let sent = Instant::now();
                let position = suspend_or_reinstate(&mut registry, account, suspend).await;
                writes.lock().unwrap().push((i, position, !suspend, sent));
                // Read your write, from every instance.
                for resolver in all.iter_mut() {
                    let r = resolve(resolver, &citizens[i], position).await;
                    assert_eq!(paid(&r), !suspend, "citizen {i} round {round}: {r:?}");
                    assert!(r.position >= position);
                    fresh_reads += 1;
                }
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let writes = writes.lock().unwrap().clone();
        let mut checked = 0;
        for reader in readers {
            for (i, position, was_paid, received) in reader.await.unwrap() {
                // An answer reflects every event up to its position, and may reflect more:
                // the state after this citizen's latest write at or before the position,
                // or after a later write already sent when the answer arrived. Never an
                // older one.
                let (known, later): (Vec<&Write>, Vec<&Write>) = writes
                    .iter()
                    .filter(|w| w.0 == i)
                    .partition(|w| w.1 <= position);
                let mut possible = vec![known.last().is_none_or(|w| w.2)];
                possible.extend(later.iter().filter(|w| w.3 < received).map(|w| w.2));
                assert!(
                    possible.contains(&was_paid),
                    "citizen {i} answered at position {position} shows a state older than it"
                );
                checked += 1;
            }
        }
        assert!(checked > 100, "only {checked} answers were checked");
        assert_eq!(fresh_reads, 6 * CITIZENS * 3);
        let state = app.store.read_state();
        assert!(state.cache.hits > 0, "the cache answered: {state:?}");
        drop(others);
        app.stop().await;
    }

    /// A death reported through SyncCitizens on one instance stops payment on every
    /// instance, whose caches held the citizen as paid, within the feed lag (the README's
    /// bound: a second, CONFIRM_WITHIN, even when a wake-up is lost).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_death_reported_through_population_sync_stops_payment_on_every_instance() {
        let (app, others) = three_instances().await;
        let citizen = "001089300100";
        link_issuer_confirmed(&app, citizen, "0073000000001").await;
        let mut all = resolvers(&app, &others);
        for resolver in all.iter_mut() {
            // Twice: the second answer comes from the instance's cache.
            for _ in 0..2 {
                assert!(paid(&resolve(resolver, citizen, 0).await));
            }
        }
        let reported = Instant::now();
        let acks = sync_citizens(
            &app,
            vec![CitizenRecord {
                record_id: "death-1".into(),
                version: 1,
                citizen_id: citizen.into(),
                full_name: "NGUYEN VAN A".into(),
                status: CitizenStatus::Deceased.into(),
                date_of_death: common::date("2026-11-30"),
                ..Default::default()
            }],
        )
        .await;
        assert_eq!(acks.iter().map(|a| a.applied).sum::<u64>(), 1, "{acks:?}");
        let mut stopped_after = Vec::new();
        for resolver in all.iter_mut() {
            loop {
                let r = resolve(resolver, citizen, 0).await;
                if r.outcome() == ResolveOutcome::CitizenDeceased {
                    stopped_after.push(reported.elapsed());
                    break;
                }
                assert!(
                    reported.elapsed() < Duration::from_secs(2),
                    "an instance still pays a dead citizen 2 s after the report: {r:?}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        eprintln!("payment stopped on each instance after {stopped_after:?}");
        drop(others);
        app.stop().await;
    }
}

/// A death reported through SyncCitizens, read back with the acknowledgement's position
/// as the minimum: the instance whose cache holds the citizen as paid answers "deceased".
async fn a_sync_acknowledgement_carries_the_position_of_its_changes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut resolver = app.resolver(Some(PAYER));
    let citizens = ["001089300011", "001089300012", "001089300013"];
    for (i, citizen) in citizens.iter().enumerate() {
        link_issuer_confirmed(&app, citizen, &format!("00710000001{i}")).await;
        // Warm the cache: each citizen is paid.
        assert!(paid(&resolve(&mut resolver, citizen, 0).await));
    }
    let record = |citizen: &str, version: i64, status: CitizenStatus| CitizenRecord {
        record_id: format!("pop-{citizen}"),
        version,
        citizen_id: citizen.into(),
        full_name: "Nguyễn Văn An".into(),
        date_of_birth: common::date("1989-03-01"),
        status: status.into(),
        date_of_death: match status {
            CitizenStatus::Deceased => common::date("2025-11-30"),
            _ => None,
        },
        ..Default::default()
    };

    // The first two are reported alive (a change: their names and source versions), the
    // third dead.
    let acks = sync_citizens(
        &app,
        vec![
            record(citizens[0], 1, CitizenStatus::Active),
            record(citizens[1], 1, CitizenStatus::Active),
            record(citizens[2], 1, CitizenStatus::Deceased),
        ],
    )
    .await;
    let position = acks.last().expect("an acknowledgement").position;
    assert!(
        position > 0,
        "the acknowledgement carries a position: {acks:?}"
    );
    for pair in acks.windows(2) {
        assert!(pair[0].position <= pair[1].position, "{acks:?}");
    }
    let r = resolve(&mut resolver, citizens[2], position).await;
    assert_eq!(
        r.outcome(),
        ResolveOutcome::CitizenDeceased,
        "read at the sync's position: {r:?}"
    );
    assert!(r.position >= position);
    assert!(paid(&resolve(&mut resolver, citizens[0], position).await));

    // Every event of the batch is in the feed at or before the position, and the position
    // is one of them (not a later head).
    let quoted: Vec<String> = citizens.iter().map(|c| format!("'{c}'")).collect();
    let numbered = |cond: &str| {
        format!(
            "SELECT count(*) FROM feed f JOIN events e ON e.position = f.position \
             WHERE e.event_type = 'CITIZEN_STATUS_CHANGED' AND e.citizen_id IN ({}) {cond}",
            quoted.join(", ")
        )
    };
    let status_events = app.db.count(&numbered("")).await;
    assert!(status_events >= 1, "the death is an event");
    assert_eq!(
        app.db
            .count(&numbered(&format!("AND f.feed_position <= {position}")))
            .await,
        status_events
    );
    assert_eq!(
        app.db
            .count(&format!(
                "SELECT count(*) FROM feed f JOIN events e ON e.position = f.position \
                 WHERE f.feed_position = {position} AND e.citizen_id IN ({})",
                quoted.join(", ")
            ))
            .await,
        1
    );

    // A stream that changes nothing (the same versions again) answers no position.
    let again = sync_citizens(&app, vec![record(citizens[2], 1, CitizenStatus::Deceased)]).await;
    assert_eq!(again.last().map(|a| a.position), Some(0), "{again:?}");
    app.stop().await;
}
