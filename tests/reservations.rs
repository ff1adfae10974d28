//! One benefit, one payment, whoever pays it (*trùng lĩnh*): payment reservations end to
//! end through real clients on both backends. Two payers stand in for the social
//! insurance agency's payroll (`vss-payroll`) and a provincial welfare office
//! (`province-office`) paying overlapping rolls for the same period; an auditor and the
//! investigators' feed watch.

mod common;

use std::collections::HashMap;

use common::{
    refused, Backend, TestApp, AUDITOR, EXISTS, FEED, INVESTIGATIONS_FEED, MASKED, PAYER,
};
use payout_registry::proto::{
    BatchResolveRequest, BatchResolveResponse, EventType, ListDuplicateEntitlementsRequest,
    ReleaseReservationsRequest, ResolveOutcome, ResolveRequest, ResolveResponse, ResolveScope,
    SubscribeRequest,
};
use payout_registry::security::limits::{BucketConfig, RateLimitConfig};
use tonic::Code;

on_both_backends!(
    a_payment_is_reserved_once_its_holder_gets_it_back_and_another_payer_pays_nothing,
    reservations_are_refused_where_none_can_be_taken_and_nothing_is_written,
    a_program_paid_by_several_payers_lets_each_hold_its_own,
    two_payers_reserving_the_same_ten_thousand_citizens_at_once_end_with_one_holder_each,
    the_command_line_reserves_reports_and_releases,
);

const CITIZEN: &str = "001089400001";
const PERIOD: &str = "2026-12";

fn reserve(citizen: &str, program: &str, period: &str) -> ResolveRequest {
    ResolveRequest {
        citizen_id: citizen.into(),
        program_code: program.into(),
        purpose: "monthly payroll".into(),
        reservation_period: period.into(),
        ..Default::default()
    }
}

async fn resolve_as(app: &TestApp, token: &str, request: ResolveRequest) -> ResolveResponse {
    app.resolver(Some(token))
        .resolve(request)
        .await
        .expect("answered")
        .into_inner()
}

async fn release(
    app: &TestApp,
    token: &str,
    program: &str,
    period: &str,
    citizens: &[&str],
    reason: &str,
) -> Result<u64, tonic::Status> {
    app.resolver(Some(token))
        .release_reservations(ReleaseReservationsRequest {
            program_code: program.into(),
            period: period.into(),
            citizen_ids: citizens.iter().map(|c| c.to_string()).collect(),
            reason: reason.into(),
        })
        .await
        .map(|r| r.into_inner().released)
}

async fn live_reservations(app: &TestApp) -> i64 {
    app.db
        .count("SELECT COUNT(*) FROM reservations WHERE released_at IS NULL")
        .await
}

/// The first event of `event_type` a subscriber with `token` receives from the start.
async fn first_event_of(
    app: &TestApp,
    token: &str,
    event_type: EventType,
) -> payout_registry::proto::FeedEvent {
    let mut events = common::feed_on(app.new_channel(), Some(token))
        .subscribe(SubscribeRequest::default())
        .await
        .expect("subscribed")
        .into_inner();
    loop {
        let e = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            common::next_event(&mut events),
        )
        .await
        .expect("the event within 30 s")
        .expect("the feed goes on");
        if e.event_type() == event_type {
            return e;
        }
    }
}

async fn a_payment_is_reserved_once_its_holder_gets_it_back_and_another_payer_pays_nothing(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    common::link_issuer_confirmed(&app, CITIZEN, "0071400000001").await;

    // The agency's payroll reserves December's pension, and gets the same back on a re-run.
    let first = resolve_as(&app, PAYER, reserve(CITIZEN, "PENSION", PERIOD)).await;
    assert_eq!(first.outcome(), ResolveOutcome::Resolved);
    assert!(first.account.is_some());
    let held = first.reservation.clone().expect("a reservation");
    assert_eq!(
        (held.program_code.as_str(), held.period.as_str()),
        ("PENSION", PERIOD)
    );
    let again = resolve_as(&app, PAYER, reserve(CITIZEN, "PENSION", PERIOD)).await;
    assert_eq!(
        again.reservation,
        Some(held.clone()),
        "idempotent for its holder"
    );

    // The province paying the same citizen for the same period is told to pay nothing,
    // and learns neither who holds the payment nor where it goes.
    for _ in 0..2 {
        let other = resolve_as(&app, MASKED, reserve(CITIZEN, "PENSION", PERIOD)).await;
        assert_eq!(other.outcome(), ResolveOutcome::AlreadyReserved);
        assert_eq!(other.account, None);
        assert_eq!(other.reservation, None);
        assert!(other.matched_program_code.is_empty() && !other.cooling_off);
    }
    // Recorded once per claimant, however often it asks.
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM duplicate_entitlements")
            .await,
        1
    );
    // Another period, and a plain lookup, are not affected.
    let january = resolve_as(&app, MASKED, reserve(CITIZEN, "PENSION", "2027-01")).await;
    assert_eq!(january.outcome(), ResolveOutcome::Resolved);
    assert!(january.reservation.is_some());
    let lookup = resolve_as(&app, MASKED, reserve(CITIZEN, "PENSION", "")).await;
    assert_eq!(lookup.outcome(), ResolveOutcome::Resolved);
    assert_eq!(lookup.reservation, None);

    // Investigators see who and whom; the province filter works.
    let list = |province: &str| ListDuplicateEntitlementsRequest {
        program_code: "PENSION".into(),
        period: PERIOD.into(),
        province_code: province.into(),
        purpose: "trùng lĩnh review".into(),
        ..Default::default()
    };
    let found = app
        .oversight(Some(AUDITOR))
        .list_duplicate_entitlements(list("001"))
        .await
        .expect("listed")
        .into_inner()
        .entitlements;
    assert_eq!(found.len(), 1);
    let d = &found[0];
    assert_eq!(d.citizen_id, CITIZEN);
    assert_eq!(d.holder_client_id, "vss-payroll");
    assert_eq!(d.claimant_client_id, "province-office");
    assert_eq!(d.reservation_id, held.reservation_id);
    let elsewhere = app
        .oversight(Some(AUDITOR))
        .list_duplicate_entitlements(list("079"))
        .await
        .unwrap()
        .into_inner();
    assert!(elsewhere.entitlements.is_empty());
    refused(
        app.oversight(Some(PAYER))
            .list_duplicate_entitlements(list(""))
            .await,
        Code::PermissionDenied,
        "SCOPE_MISSING",
    );

    // Announced on the feed: the clients' ids for investigators only.
    let seen = first_event_of(&app, FEED, EventType::DuplicateEntitlementDetected).await;
    assert_eq!(seen.citizen_id, CITIZEN);
    let Some(payout_registry::proto::feed_event::Payload::DuplicateEntitlementDetected(p)) =
        seen.payload
    else {
        panic!("typed payload: {seen:?}")
    };
    assert_eq!(
        (p.program_code.as_str(), p.period.as_str()),
        ("PENSION", PERIOD)
    );
    assert!(p.holder_client_id.is_empty() && p.claimant_client_id.is_empty());
    let seen = first_event_of(
        &app,
        INVESTIGATIONS_FEED,
        EventType::DuplicateEntitlementDetected,
    )
    .await;
    let Some(payout_registry::proto::feed_event::Payload::DuplicateEntitlementDetected(p)) =
        seen.payload
    else {
        panic!("typed payload: {seen:?}")
    };
    assert_eq!(
        (p.holder_client_id.as_str(), p.claimant_client_id.as_str()),
        ("vss-payroll", "province-office")
    );

    // Only the holder releases its reservation; then the province may take the payment.
    assert_eq!(
        release(&app, MASKED, "PENSION", PERIOD, &[CITIZEN], "not ours")
            .await
            .unwrap(),
        0
    );
    refused(
        release(&app, PAYER, "PENSION", PERIOD, &[], " ").await,
        Code::InvalidArgument,
        "FIELD_REQUIRED",
    );
    assert_eq!(
        release(&app, PAYER, "PENSION", PERIOD, &[], "payroll cancelled")
            .await
            .unwrap(),
        1
    );
    let taken = resolve_as(&app, MASKED, reserve(CITIZEN, "PENSION", PERIOD)).await;
    assert_eq!(taken.outcome(), ResolveOutcome::Resolved);
    let now_held = taken.reservation.expect("the province's reservation");
    assert_ne!(now_held.reservation_id, held.reservation_id);
    let after = resolve_as(&app, PAYER, reserve(CITIZEN, "PENSION", PERIOD)).await;
    assert_eq!(after.outcome(), ResolveOutcome::AlreadyReserved);

    // Never deleted: the released row stays, with its reason, and cannot be removed.
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM reservations WHERE release_reason = 'payroll cancelled'")
            .await,
        1
    );
    assert!(app
        .db
        .execute_raw("DELETE FROM reservations")
        .await
        .is_err());
    assert!(app
        .db
        .execute_raw("UPDATE reservations SET holder = 'x' WHERE released_at IS NOT NULL")
        .await
        .is_err());
    app.stop().await;
}

async fn reservations_are_refused_where_none_can_be_taken_and_nothing_is_written(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    common::link_issuer_confirmed(&app, CITIZEN, "0071400000002").await;
    let cases = [
        (
            reserve(CITIZEN, "SICKNESS", PERIOD),
            "RESERVATION_NOT_ALLOWED",
        ),
        (reserve(CITIZEN, "", PERIOD), "RESERVATION_NOT_ALLOWED"),
        (
            reserve(CITIZEN, "PENSION", "tháng 12"),
            "RESERVATION_PERIOD_INVALID",
        ),
        (
            ResolveRequest {
                as_of: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                ..reserve(CITIZEN, "PENSION", PERIOD)
            },
            "RESERVATION_NOT_ALLOWED",
        ),
        (
            reserve(CITIZEN, "NO_SUCH_PROGRAM", PERIOD),
            "PROGRAM_UNKNOWN",
        ),
    ];
    for (request, reason) in cases.clone() {
        let status = refused(
            app.resolver(Some(PAYER)).resolve(request).await,
            Code::InvalidArgument,
            reason,
        );
        assert!(!status.message().contains(CITIZEN));
    }
    refused(
        app.resolver(Some(EXISTS))
            .resolve(ResolveRequest {
                scope: ResolveScope::ExistsOnly.into(),
                ..reserve(CITIZEN, "PENSION", PERIOD)
            })
            .await,
        Code::InvalidArgument,
        "RESERVATION_NOT_ALLOWED",
    );
    // In a batch, each is answered in place and the good request beside them reserves.
    let mut requests: Vec<BatchResolveRequest> = cases
        .iter()
        .enumerate()
        .map(|(i, (r, _))| batch_request(&format!("bad-{i}"), r))
        .collect();
    requests.push(batch_request("good", &reserve(CITIZEN, "PENSION", PERIOD)));
    let answers = common::batch_resolve_all(&app, PAYER, requests).await;
    for (a, (_, reason)) in answers.iter().zip(&cases) {
        assert_eq!(a.error.as_ref().map(|e| e.reason.as_str()), Some(*reason));
    }
    let good = answers.last().unwrap().result.as_ref().unwrap();
    assert!(good.reservation.is_some());
    // A citizen who cannot be paid reserves nothing.
    let unpaid = resolve_as(&app, PAYER, reserve("001089400099", "PENSION", PERIOD)).await;
    assert_eq!(unpaid.outcome(), ResolveOutcome::UnknownCitizen);
    assert_eq!(unpaid.reservation, None);
    assert_eq!(app.db.count("SELECT COUNT(*) FROM reservations").await, 1);
    app.stop().await;
}

fn batch_request(correlation: &str, r: &ResolveRequest) -> BatchResolveRequest {
    BatchResolveRequest {
        correlation_id: correlation.into(),
        citizen_id: r.citizen_id.clone(),
        program_code: r.program_code.clone(),
        as_of: r.as_of,
        scope: r.scope,
        purpose: r.purpose.clone(),
        reservation_period: r.reservation_period.clone(),
        min_position: r.min_position,
    }
}

async fn a_program_paid_by_several_payers_lets_each_hold_its_own(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    common::link_issuer_confirmed(&app, CITIZEN, "0071400000003").await;
    let event = "BAO-YAGI-2024";
    let agency = resolve_as(&app, PAYER, reserve(CITIZEN, "DISASTER_RELIEF", event)).await;
    let province = resolve_as(&app, MASKED, reserve(CITIZEN, "DISASTER_RELIEF", event)).await;
    let (a, b) = (
        agency.reservation.expect("the agency's"),
        province.reservation.expect("the province's"),
    );
    assert_ne!(a.reservation_id, b.reservation_id);
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM duplicate_entitlements")
            .await,
        0
    );
    // Each still holds one: its re-run gets its own back.
    let again = resolve_as(&app, MASKED, reserve(CITIZEN, "DISASTER_RELIEF", event)).await;
    assert_eq!(again.reservation, Some(b));
    assert_eq!(live_reservations(&app).await, 2);
    app.stop().await;
}

/// A server whose rate limits let whole payrolls through, over a demo population of
/// `citizens` (loaded straight into the store), and those citizens' ids.
async fn payroll_population(backend: Backend, citizens: u64) -> (TestApp, Vec<String>) {
    use payout_registry::tools::demo::{citizen_id_at, DemoSpec};
    let generous = BucketConfig {
        per_second: 1e9,
        burst: 1e9,
    };
    let app = TestApp::builder(backend)
        .limits(RateLimitConfig {
            resolve: generous,
            bulk: generous,
            ..RateLimitConfig::default()
        })
        .spawn()
        .await;
    let spec = DemoSpec { citizens, seed: 16 };
    payout_registry::tools::import::demo_store(app.store.clone(), &spec, 2)
        .await
        .expect("the population");
    let ids = (0..citizens).map(|i| citizen_id_at(&spec, i)).collect();
    (app, ids)
}

async fn two_payers_reserving_the_same_ten_thousand_citizens_at_once_end_with_one_holder_each(
    backend: Backend,
) {
    const N: u64 = 10_000;
    let (app, ids) = payroll_population(backend, N).await;
    let requests = |order: &mut dyn Iterator<Item = &String>| -> Vec<BatchResolveRequest> {
        order
            .map(|id| batch_request(id, &reserve(id, "SOCIAL_ALLOWANCE", PERIOD)))
            .collect()
    };
    // Real parallel streams, one per payer, in opposite orders.
    let agency = common::batch_resolve_all(&app, PAYER, requests(&mut ids.iter()));
    let province = common::batch_resolve_all(&app, MASKED, requests(&mut ids.iter().rev()));
    let (agency, province) = tokio::join!(agency, province);
    let outcome = |answers: Vec<BatchResolveResponse>| -> HashMap<String, ResolveResponse> {
        answers
            .into_iter()
            .map(|a| (a.correlation_id, a.result.expect("answered")))
            .collect()
    };
    let (agency, province) = (outcome(agency), outcome(province));
    assert_eq!((agency.len(), province.len()), (N as usize, N as usize));
    let mut payable = 0;
    let mut held_by_agency = 0;
    for id in &ids {
        let (a, p) = (&agency[id], &province[id]);
        match (a.outcome(), p.outcome()) {
            (ResolveOutcome::Resolved, ResolveOutcome::AlreadyReserved) => {
                assert!(a.reservation.is_some() && p.account.is_none());
                held_by_agency += 1;
                payable += 1;
            }
            (ResolveOutcome::AlreadyReserved, ResolveOutcome::Resolved) => {
                assert!(p.reservation.is_some() && a.account.is_none());
                payable += 1;
            }
            (x, y) if x == y && x != ResolveOutcome::Resolved => {
                assert!(a.reservation.is_none() && p.reservation.is_none());
            }
            other => panic!("citizen {id}: {other:?}, expected exactly one holder"),
        }
    }
    // The demo population: some citizens have no verified account, a few have died.
    assert!(
        payable > N * 3 / 4,
        "most of the population is payable: {payable}"
    );
    assert_eq!(live_reservations(&app).await, payable as i64);
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM duplicate_entitlements")
            .await,
        payable as i64
    );
    eprintln!(
        "{backend:?}: {payable} payable citizens, {held_by_agency} held by the agency, {} by \
         the province",
        payable - held_by_agency
    );
    app.stop().await;
}

/// `payout-registry client ...` as a payroll officer and an investigator run it.
async fn the_command_line_reserves_reports_and_releases(backend: Backend) {
    let app = TestApp::builder(backend).plain_text().spawn().await;
    common::link_issuer_confirmed(&app, CITIZEN, "0071400000004").await;
    let addr = format!("http://{}", app.addr);
    let cli = |token: &'static str, args: Vec<&'static str>| {
        let addr = addr.clone();
        async move {
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_payout-registry"))
                    .arg("client")
                    .args(&args[..1])
                    .args(["--addr", &addr, "--token", token])
                    .args(&args[1..])
                    .env_remove("PAYOUT_REGISTRY_CONFIG")
                    .env_remove("PAYOUT_REGISTRY_TOKEN")
                    .env_remove("PAYOUT_REGISTRY_ADDR")
                    .output()
                    .expect("run payout-registry")
            })
            .await
            .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let reserve = vec![
        "resolve",
        "--citizen",
        CITIZEN,
        "--program",
        "PENSION",
        "--reserve-period",
        PERIOD,
    ];
    let said = cli(PAYER, reserve.clone()).await;
    assert!(
        said.contains("outcome: RESOLVED") && said.contains("reserved: PENSION for 2026-12"),
        "{said}"
    );
    let said = cli(MASKED, reserve).await;
    assert!(
        said.contains("outcome: ALREADY_RESERVED") && !said.contains("pay into"),
        "{said}"
    );
    let report = cli(AUDITOR, vec!["duplicates", "--period", PERIOD]).await;
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 2, "{report}");
    assert!(lines[0].starts_with("detected_at,citizen_id,program_code,period,holder,claimant"));
    assert!(
        lines[1].contains(&format!(
            "{CITIZEN},PENSION,{PERIOD},vss-payroll,province-office"
        )),
        "{report}"
    );
    let said = cli(
        PAYER,
        vec![
            "release",
            "--program",
            "PENSION",
            "--period",
            PERIOD,
            "--reason",
            "payroll corrected",
        ],
    )
    .await;
    assert!(
        said.contains("1 reservations of PENSION for 2026-12 released"),
        "{said}"
    );
    app.stop().await;
}

/// PostgreSQL only: what its planner does with a payroll period it has no statistics for.
mod plans {
    use super::*;

    /// A payroll re-run reads back only the reservations it asks about. Every period
    /// starts after the last ANALYZE, so PostgreSQL believes the period holds no rows;
    /// asked `citizen_id = ANY(...)`, it then scanned the period's whole part of the index
    /// for every batch (on the 1 M population, 0.09x the plain BatchResolve rate). The
    /// read-back must probe the index once per citizen: a re-run of 100 citizens of a
    /// 3,000-citizen period reads a few hundred index entries, not the period.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_payroll_rerun_reads_back_only_its_own_citizens_on_a_period_without_statistics() {
        let (app, ids) = payroll_population(Backend::Postgres, 3_000).await;
        let payroll = |period: &str, ids: &[String]| -> Vec<BatchResolveRequest> {
            ids.iter()
                .map(|id| batch_request(id, &reserve(id, "SOCIAL_ALLOWANCE", period)))
                .collect()
        };
        // Last month's payroll, then statistics; this month's payroll after them.
        common::batch_resolve_all(&app, PAYER, payroll("2026-11", &ids)).await;
        app.db
            .execute_raw("ANALYZE reservations")
            .await
            .expect("analyze");
        let first = common::batch_resolve_all(&app, PAYER, payroll(PERIOD, &ids)).await;
        let held: Vec<String> = first
            .into_iter()
            .filter(|a| a.result.as_ref().is_some_and(|r| r.reservation.is_some()))
            .map(|a| a.correlation_id)
            .collect();
        assert!(held.len() > 2_000, "most are payable: {}", held.len());
        let read_before = index_entries_read(&app).await;
        // The re-run: 100 citizens, each getting its own reservation back.
        let rerun = common::batch_resolve_all(&app, PAYER, payroll(PERIOD, &held[..100])).await;
        assert!(rerun
            .iter()
            .all(|a| a.result.as_ref().is_some_and(|r| r.reservation.is_some())));
        // The server's connections report their counts within about ten seconds of
        // going idle; the re-run's arrive together (one transaction).
        let mut read = 0;
        for _ in 0..150 {
            read = index_entries_read(&app).await - read_before;
            if read >= 100 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(read >= 100, "the re-run's index reads were never reported");
        eprintln!("a re-run of 100 read {read} index entries");
        assert!(
            read < 1_000,
            "a re-run of 100 citizens read {read} entries of the live-reservation index \
             (its period holds {})",
            held.len()
        );
        app.stop().await;
    }

    async fn index_entries_read(app: &TestApp) -> i64 {
        app.db
            .count(
                "SELECT COALESCE(SUM(idx_tup_read), 0)::bigint FROM pg_stat_user_indexes \
                 WHERE indexrelname = 'reservations_live'",
            )
            .await
    }
}
