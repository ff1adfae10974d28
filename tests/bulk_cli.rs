//! The bulk command-line paths end to end, on both backends: `demo-data` into CSV files
//! and into the store, `import` of those files through the sync streams (including a
//! resume after an interrupted run), and `client resolve --file` writing a payroll CSV.
//! They drive the same functions the CLI calls, against the real server over TLS.

mod common;

use common::{Backend, TestApp, PAYER, SYNC};
use payout_registry::client::Credentials;
use payout_registry::proto::payout_resolver_service_client::PayoutResolverServiceClient;
use payout_registry::proto::{CitizenStatus, ResolveOutcome};
use payout_registry::tools::demo::{self, DemoSpec};
use payout_registry::tools::import::{self as bulk, FileKind};

on_both_backends!(
    an_import_interrupted_midway_resumes_after_its_checkpoint_and_applies_each_record_once,
    a_payroll_file_resolves_in_order_through_batch_resolve,
    demo_data_written_straight_into_the_store_has_the_planted_anomalies,
    a_load_with_batches_in_flight_ends_as_one_batch_at_a_time_would,
);

fn bearer(token: &str) -> Credentials {
    Credentials::new(Some(token), "bulk test").unwrap()
}

async fn import(
    app: &TestApp,
    kind: FileKind,
    path: &std::path::Path,
    max: Option<u64>,
) -> bulk::ImportReport {
    bulk::import_file(app.new_channel(), bearer(SYNC), kind, path, max)
        .await
        .expect("import")
}

async fn an_import_interrupted_midway_resumes_after_its_checkpoint_and_applies_each_record_once(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = DemoSpec {
        citizens: 3000,
        seed: 7,
    };
    let (citizens, accounts) = bulk::demo_csv(&spec, dir.path()).unwrap();

    // The first run stops after 1,200 records, as an interrupted run would.
    let first = import(&app, FileKind::Citizens, &citizens, Some(1200)).await;
    assert_eq!(first.committed, 1200);
    assert!(!first.complete);
    assert!(bulk::checkpoint_path(&citizens).exists());
    // The second run starts after the checkpoint: nothing is sent twice.
    let second = import(&app, FileKind::Citizens, &citizens, None).await;
    assert_eq!(second.resumed_after_line, 1200);
    assert_eq!(second.committed, 1800);
    assert_eq!(second.stale, 0);
    assert!(second.complete);
    assert!(
        !bulk::checkpoint_path(&citizens).exists(),
        "a finished import leaves no checkpoint"
    );
    assert_eq!(first.applied + second.applied, 3000);
    assert_eq!(app.db.count("SELECT COUNT(*) FROM citizens").await, 3000);
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM citizen_history").await,
        3000
    );

    let accounts_run = import(&app, FileKind::Accounts, &accounts, None).await;
    assert!(accounts_run.complete);
    assert!(accounts_run.applied > 3000, "{accounts_run:?}");
    assert!(
        accounts_run.rejected > 0,
        "the planted duplicate claims are refused: {accounts_run:?}"
    );
    let mut rejected = accounts.as_os_str().to_owned();
    rejected.push(".rejected.csv");
    let listed = std::fs::read_to_string(rejected).unwrap();
    assert_eq!(listed.lines().count() as u64, accounts_run.rejected);
    assert!(listed.contains("ACCOUNT_OWNED_BY_ANOTHER_CITIZEN"));

    // Replaying a finished file changes nothing: every record is answered with the
    // outcome recorded the first time, and the new run lists the same refusals again.
    let events = app.db.count("SELECT COUNT(*) FROM events").await;
    let history = app.db.count("SELECT COUNT(*) FROM account_history").await;
    let replay = import(&app, FileKind::Accounts, &accounts, None).await;
    assert_eq!(replay.committed, accounts_run.committed);
    assert_eq!(replay.applied, accounts_run.applied);
    assert_eq!(replay.rejected, accounts_run.rejected);
    assert_eq!(replay.stale, 0);
    assert_eq!(app.db.count("SELECT COUNT(*) FROM events").await, events);
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM account_history").await,
        history
    );
    let mut rejected = accounts.as_os_str().to_owned();
    rejected.push(".rejected.csv");
    assert_eq!(std::fs::read_to_string(rejected).unwrap(), listed);
}

async fn a_payroll_file_resolves_in_order_through_batch_resolve(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = DemoSpec {
        citizens: 400,
        seed: 11,
    };
    let (citizens, accounts) = bulk::demo_csv(&spec, dir.path()).unwrap();
    import(&app, FileKind::Citizens, &citizens, None).await;
    import(&app, FileKind::Accounts, &accounts, None).await;

    let ids: Vec<String> = (0..400).map(|i| demo::citizen_id_at(&spec, i)).collect();
    let mut input = String::from("citizen_id\n");
    for id in &ids {
        input.push_str(id);
        input.push('\n');
    }
    input.push_str("not-an-id\n");
    let input_path = dir.path().join("ids.txt");
    std::fs::write(&input_path, input).unwrap();
    let out = dir.path().join("payroll.csv");
    let resolver = PayoutResolverServiceClient::with_interceptor(app.new_channel(), bearer(PAYER));
    let written = bulk::resolve_file(resolver, &input_path, &out, "PENSION", false, "")
        .await
        .unwrap();
    assert_eq!(written, 401);
    let mut reader = csv::Reader::from_path(&out).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 401);
    for (row, id) in rows.iter().zip(&ids) {
        assert_eq!(&row[0], id, "rows follow the input order");
    }
    let resolved = rows.iter().filter(|r| &r[1] == "RESOLVED").count();
    let deceased = rows.iter().filter(|r| &r[1] == "CITIZEN_DECEASED").count();
    assert!(resolved > 250, "{resolved} of 400 resolved");
    assert!(rows
        .iter()
        .filter(|r| &r[1] == "RESOLVED")
        .all(|r| !r[4].is_empty() && !r[4].contains('*')));
    assert!(deceased < 30);
    assert_eq!(&rows[400][1], "ERROR");
    assert_eq!(&rows[400][6], "CITIZEN_ID_INVALID_LENGTH");
    assert!(
        rows.iter().all(|r| r[7].is_empty()),
        "no reservation asked for"
    );

    // The same roll paid by two payers for December: the first reserves every payable
    // citizen, the second is told to pay none of them.
    let payroll = |token: &str, name: &str| {
        let resolver =
            PayoutResolverServiceClient::with_interceptor(app.new_channel(), bearer(token));
        let out = dir.path().join(name);
        let input = input_path.clone();
        async move {
            bulk::resolve_file(resolver, &input, &out, "PENSION", false, "2026-12")
                .await
                .unwrap();
            let mut reader = csv::Reader::from_path(&out).unwrap();
            reader
                .records()
                .map(Result::unwrap)
                .collect::<Vec<csv::StringRecord>>()
        }
    };
    let agency = payroll(PAYER, "agency.csv").await;
    let province = payroll(common::MASKED, "province.csv").await;
    for (a, p) in agency.iter().zip(&province) {
        if &a[1] == "RESOLVED" {
            assert!(!a[7].is_empty(), "the agency's reservation id");
            assert_eq!(&p[1], "ALREADY_RESERVED");
            assert!(p[4].is_empty() && p[7].is_empty());
        } else {
            assert_eq!(&a[1], &p[1]);
        }
    }
    assert_eq!(
        province
            .iter()
            .filter(|r| &r[1] == "ALREADY_RESERVED")
            .count(),
        resolved
    );
}

async fn demo_data_written_straight_into_the_store_has_the_planted_anomalies(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let spec = DemoSpec {
        citizens: 2000,
        seed: 3,
    };
    let (citizens, accounts) = bulk::demo_store(app.store.clone(), &spec, 2).await.unwrap();
    assert_eq!(citizens.applied, 2000);
    assert_eq!(citizens.rejected, 0);
    assert!(
        accounts.rejected > 0,
        "duplicate claims are planted: {accounts:?}"
    );
    // Refused: the duplicate claims, and NAME_MATCH records whose holder name is short.
    let claims = app.db.count("SELECT COUNT(*) FROM duplicate_claims").await;
    assert!(
        claims > 0 && claims as u64 <= accounts.rejected,
        "{claims} claims, {accounts:?}"
    );
    let deceased = app
        .db
        .count("SELECT COUNT(*) FROM citizens WHERE status = 'DECEASED'")
        .await;
    assert!((10..=80).contains(&deceased), "{deceased} deceased of 2000");
    let aliases = app.db.count("SELECT COUNT(*) FROM citizen_aliases").await;
    assert!(aliases > 100, "{aliases} legacy numbers");
    let provinces = app
        .db
        .count("SELECT COUNT(DISTINCT province_code) FROM citizens")
        .await;
    assert_eq!(provinces, 63);
    // Demo data is ordinary data: the dead are not paid, most of the living are.
    let mut resolver = app.resolver(Some(PAYER));
    let mut resolved = 0;
    for i in 0..60 {
        let citizen = demo::citizen_at(&spec, i);
        let answer = resolver
            .resolve(payout_registry::proto::ResolveRequest {
                citizen_id: citizen.citizen_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let outcome = ResolveOutcome::try_from(answer.outcome).unwrap();
        match CitizenStatus::try_from(citizen.status).unwrap() {
            CitizenStatus::Deceased => assert_eq!(outcome, ResolveOutcome::CitizenDeceased),
            CitizenStatus::IdRevoked => assert_eq!(outcome, ResolveOutcome::CitizenIdRevoked),
            _ => {
                assert!(
                    matches!(
                        outcome,
                        ResolveOutcome::Resolved | ResolveOutcome::NoVerifiedAccount
                    ),
                    "citizen {i}: {outcome:?}"
                );
                resolved += usize::from(outcome == ResolveOutcome::Resolved);
            }
        }
    }
    assert!(resolved >= 35, "{resolved} of 60 demo citizens resolved");
}

/// What a load decided, row by row: every account with its status and holder, which
/// account each preference points at, every refused claim and every ledger entry.
async fn loaded_state(app: &TestApp) -> Vec<String> {
    let mut rows = Vec::new();
    for sql in [
        "SELECT citizen_id || '|' || kind || '|' || provider_code || '|' || account_ref || '|' \
         || status || '|' || COALESCE(holder_name, '') FROM accounts",
        "SELECT p.citizen_id || '|' || p.program_code || '|' || a.account_ref FROM preferences p \
         JOIN accounts a ON a.account_id = p.account_id",
        "SELECT claimant_citizen_id || '|' || holder_citizen_id || '|' || account_ref \
         FROM duplicate_claims",
        "SELECT stream || '|' || record_id || '|' || CAST(version AS TEXT) || '|' || outcome \
         FROM sync_records",
        "SELECT citizen_id || '|' || status FROM citizens",
    ] {
        let mut part = app.db.texts(sql).await;
        part.sort();
        rows.push(format!("{} rows of {sql}", part.len()));
        rows.extend(part);
    }
    rows
}

async fn a_load_with_batches_in_flight_ends_as_one_batch_at_a_time_would(backend: Backend) {
    // 6,000 citizens make about nine account batches; the planted duplicate claims (a
    // citizen claiming the account of the one before) cross batch boundaries, where the
    // order of two batches decides who holds the account and who is refused.
    let spec = DemoSpec {
        citizens: 6000,
        seed: 5,
    };
    let one_at_a_time = TestApp::spawn(backend).await;
    let pipelined = TestApp::spawn(backend).await;
    let (c1, a1) = bulk::demo_store(one_at_a_time.store.clone(), &spec, 1)
        .await
        .unwrap();
    let (c3, a3) = bulk::demo_store(pipelined.store.clone(), &spec, 3)
        .await
        .unwrap();
    assert_eq!((c1, a1), (c3, a3));
    assert!(a1.rejected > 0, "claims were refused: {a1:?}");
    let (expected, got) = (
        loaded_state(&one_at_a_time).await,
        loaded_state(&pipelined).await,
    );
    assert!(expected.len() > 20_000, "{} rows", expected.len());
    let first_difference = expected.iter().zip(&got).position(|(a, b)| a != b);
    assert_eq!(
        (expected.len(), first_difference),
        (got.len(), None),
        "first difference: {:?}",
        first_difference.map(|i| (&expected[i], &got[i]))
    );
    one_at_a_time.stop().await;
    pipelined.stop().await;
}
