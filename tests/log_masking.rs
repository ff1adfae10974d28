//! No citizen id or account number reaches a log line in clear. This binary captures
//! every log line the server writes (JSON, as in production, at debug level for the
//! registry) while a realistic session runs through the real server (links,
//! verifications, refusals, resolutions, payout failures, oversight reads), then searches
//! the captured text for the session's ids and account numbers in every form a client
//! sent them.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use common::{Backend, TestApp, ADMIN, AUDITOR, PAYER};
use payout_registry::config::LogFormat;
use payout_registry::proto::*;
use uuid::Uuid;

/// Every byte the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        payout_registry::telemetry::init_with_writer(
            LogFormat::Json,
            "debug,payout_registry=debug,h2=info,hyper=info,tower=info",
            move || writer.clone(),
        );
        logs
    })
}

const CITIZENS: [&str; 3] = ["001089555501", "079200555502", "048300555503"];
const BANK_NUMBER: &str = "0071-5555-00001";
const BANK_NORMALISED: &str = "0071555500001";
const MSISDN_SENT: &str = "0987 654 321";
const MSISDN_NORMALISED: &str = "+84987654321";

fn key() -> String {
    Uuid::new_v4().to_string()
}

fn link(
    citizen: &str,
    kind: AccountKind,
    provider: &str,
    number: &str,
    verified: bool,
) -> LinkAccountRequest {
    LinkAccountRequest {
        idempotency_key: key(),
        citizen_id: citizen.into(),
        kind: kind.into(),
        provider_code: provider.into(),
        account_ref: number.into(),
        holder_name: "Trần Thị Thu Hà".into(),
        verification: verified.then(|| Verification {
            method: VerificationMethod::IssuerConfirmed.into(),
            evidence_ref: "kyc-1".into(),
            ..Default::default()
        }),
        reason: "session".into(),
    }
}

/// A session that touches every code path that logs.
async fn session(app: &TestApp) {
    let mut registry = app.registry(Some(ADMIN));
    let bank = registry
        .link_account(link(
            CITIZENS[0],
            AccountKind::BankAccount,
            "970436",
            BANK_NUMBER,
            true,
        ))
        .await
        .expect("link bank")
        .into_inner()
        .account
        .unwrap();
    let wallet = registry
        .link_account(link(
            CITIZENS[0],
            AccountKind::Ewallet,
            "MOMO",
            MSISDN_SENT,
            false,
        ))
        .await
        .expect("link wallet")
        .into_inner()
        .account
        .unwrap();
    registry
        .verify_account(VerifyAccountRequest {
            idempotency_key: key(),
            account_id: wallet.account_id.clone(),
            verification: Some(Verification {
                method: VerificationMethod::InPerson.into(),
                evidence_ref: "ca-1".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("verify");
    registry
        .set_default_account(SetDefaultAccountRequest {
            idempotency_key: key(),
            citizen_id: CITIZENS[0].into(),
            account_id: wallet.account_id.clone(),
            program_code: "PENSION".into(),
            ..Default::default()
        })
        .await
        .expect("prefer");
    // Refusals: a duplicate claim, a bad id, a bad number, an unknown citizen.
    let _ = registry
        .link_account(link(
            CITIZENS[1],
            AccountKind::BankAccount,
            "970436",
            BANK_NORMALISED,
            true,
        ))
        .await
        .expect_err("duplicate claim");
    let _ = registry
        .link_account(link(
            "099089555504",
            AccountKind::BankAccount,
            "970436",
            BANK_NUMBER,
            false,
        ))
        .await
        .expect_err("bad province");
    let _ = registry
        .link_account(link(
            CITIZENS[2],
            AccountKind::MobileMoney,
            "VIETTELMONEY",
            "0123 456 789",
            false,
        ))
        .await
        .expect_err("bad msisdn");
    for citizen in CITIZENS {
        for program in ["", "PENSION"] {
            let _ = app
                .resolver(Some(PAYER))
                .resolve(ResolveRequest {
                    citizen_id: citizen.into(),
                    program_code: program.into(),
                    ..Default::default()
                })
                .await
                .expect("resolve");
        }
    }
    app.registry(Some(PAYER))
        .report_payout_failure(ReportPayoutFailureRequest {
            idempotency_key: key(),
            account_id: bank.account_id.clone(),
            failure_code: PayoutFailureCode::HolderNameMismatch.into(),
            payer_reference: "line-1".into(),
            ..Default::default()
        })
        .await
        .expect("failure");
    registry
        .get_account_history(GetAccountHistoryRequest {
            account_id: bank.account_id.clone(),
            ..Default::default()
        })
        .await
        .expect("history");
    registry
        .list_citizen_accounts(ListCitizenAccountsRequest {
            citizen_id: CITIZENS[0].into(),
            ..Default::default()
        })
        .await
        .expect("list");
    let mut oversight = app.oversight(Some(AUDITOR));
    oversight
        .find_account_holders(FindAccountHoldersRequest {
            account: Some(AccountKey {
                kind: AccountKind::BankAccount.into(),
                provider_code: "970436".into(),
                account_ref: BANK_NUMBER.into(),
            }),
            purpose: "investigation".into(),
            ..Default::default()
        })
        .await
        .expect("holders");
    oversight
        .list_access_log(ListAccessLogRequest {
            citizen_id: CITIZENS[0].into(),
            ..Default::default()
        })
        .await
        .expect("access log");
}

async fn logs_never_carry_a_citizen_id_or_an_account_number(backend: Backend) {
    let logs = captured();
    let app = TestApp::spawn(backend).await;
    session(&app).await;
    app.stop().await;
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    // The capture works: the session's calls and their masked ids are there.
    assert!(text.contains("\"request_id\""), "nothing captured");
    assert!(
        text.contains("001******501"),
        "masked citizen id expected in the logs"
    );
    let forbidden = CITIZENS.iter().copied().chain([
        "099089555504",
        BANK_NUMBER,
        BANK_NORMALISED,
        MSISDN_NORMALISED,
        "987654321",
        "0123 456 789",
    ]);
    for secret in forbidden {
        assert!(
            !text.contains(secret),
            "a log line carries {secret} in clear"
        );
    }
}

/// A caller's request id and W3C `traceparent` reach every log line of its call, so the
/// registry's lines join the caller's trace.
async fn a_callers_request_id_and_trace_parent_appear_in_the_calls_log_lines(backend: Backend) {
    let logs = captured();
    let app = TestApp::spawn(backend).await;
    let request_id = format!("vss-payroll-{}", Uuid::new_v4().simple());
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(ResolveRequest {
        citizen_id: CITIZENS[0].into(),
        purpose: "monthly payroll".into(),
        ..Default::default()
    });
    let metadata = request.metadata_mut();
    metadata.insert("x-request-id", request_id.parse().unwrap());
    metadata.insert(
        "traceparent",
        format!("00-{trace}-{parent}-01").parse().unwrap(),
    );
    app.resolver(Some(PAYER))
        .resolve(request)
        .await
        .expect("resolve");
    app.stop().await;
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!("\"request_id\":\"{request_id}\"")))
        .collect();
    assert!(!lines.is_empty(), "no line carries the caller's request id");
    for line in lines {
        assert!(
            line.contains(&format!("\"trace_id\":\"{trace}\"")),
            "{line}"
        );
        assert!(
            line.contains(&format!("\"parent_span_id\":\"{parent}\"")),
            "{line}"
        );
    }
}

/// The "call finished" line of a stream is written when the stream ends, with how long
/// it really lasted, what it sent and the code it ended with.
async fn a_streams_call_finished_line_is_written_when_it_ends_with_its_code(backend: Backend) {
    let logs = captured();
    let app = TestApp::spawn(backend).await;
    common::link_issuer_confirmed(&app, CITIZENS[0], BANK_NORMALISED).await;
    let request_id = format!("feed-reader-{}", Uuid::new_v4().simple());
    let mut request = tonic::Request::new(SubscribeRequest::default());
    request
        .metadata_mut()
        .insert("x-request-id", request_id.parse().unwrap());
    let started = std::time::Instant::now();
    let mut events = common::feed_on(app.channel(), Some(common::FEED))
        .subscribe(request)
        .await
        .expect("subscribed")
        .into_inner();
    events.message().await.expect("an event").expect("events");
    // Open for a second, then the reader goes away.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    drop(events);
    let held = started.elapsed();
    // The server learns of the cancel from the transport: wait for its line before
    // stopping the server, or a shutdown could end the stream first (SHUTTING_DOWN).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let finished_line = || {
        String::from_utf8_lossy(&logs.0.lock().unwrap())
            .lines()
            .any(|l| l.contains(&request_id) && l.contains("call finished"))
    };
    while !finished_line() {
        assert!(
            std::time::Instant::now() < deadline,
            "no call finished line 10 s after the reader went away"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    app.stop().await;
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    let finished: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| l.contains(&request_id) && l.contains("call finished"))
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(finished.len(), 1, "one line per call: {finished:?}");
    let fields = &finished[0];
    // Named as grpc-go and the standard dashboards name codes.
    assert_eq!(fields["grpc_code"], "Canceled", "{fields}");
    let elapsed = fields["elapsed_ms"].as_f64().expect("elapsed_ms");
    assert!(
        elapsed >= 1000.0 && elapsed <= held.as_secs_f64() * 1000.0 + 500.0,
        "the stream lasted {held:?}; its line says {elapsed} ms"
    );
    assert!(
        fields["messages_sent"].as_u64().is_some_and(|n| n >= 1),
        "{fields}"
    );
}

on_both_backends!(
    logs_never_carry_a_citizen_id_or_an_account_number,
    a_callers_request_id_and_trace_parent_appear_in_the_calls_log_lines,
    a_streams_call_finished_line_is_written_when_it_ends_with_its_code,
);

/// Maintenance statements take seconds at national scale by design (a bulk load's
/// ANALYZE, the VACUUM of the feed's queue, the merge of the access log's index): sqlx's
/// slow-statement line for them is information (INFO), not a warning, while a slow
/// statement of the service's own calls stays a warning. Each statement is made slow by
/// a lock held on its table for longer than sqlx's threshold (one second).
mod postgres_maintenance {
    use super::*;
    use common::TestDb;
    use payout_registry::store::{StoreOptions, SyncStream};
    use sqlx::Connection;

    /// The captured JSON lines that report a statement holding `statement` as slow (sqlx
    /// shortens a long statement's summary, and gives a short one's text in full only
    /// there).
    fn slow_lines(logs: &Captured, statement: &str) -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&logs.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains("slow statement"))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
            .filter(|l| {
                ["summary", "db.statement"]
                    .iter()
                    .any(|f| l[*f].as_str().is_some_and(|s| s.contains(statement)))
            })
            .collect()
    }

    /// A test database and a store on it whose calls' statements time out after 300 ms.
    async fn timed_store() -> (TestDb, std::sync::Arc<dyn payout_registry::store::Store>) {
        let db = TestDb::postgres().await;
        let store = db
            .store_with(StoreOptions {
                statement_timeout: Some(std::time::Duration::from_millis(300)),
                max_connections: 4,
                ..StoreOptions::default()
            })
            .await;
        (db, store)
    }

    /// Runs `work` while `held` keeps its locks for 1.3 s (then rolls its transaction
    /// back), and answers the slow-statement lines of `statement` logged meanwhile.
    async fn slow_while_held<F>(
        held: sqlx::PgConnection,
        statement: &str,
        work: F,
    ) -> Vec<serde_json::Value>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let logs = captured();
        let work = tokio::spawn(work);
        tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
        held.close().await.unwrap();
        work.await.unwrap();
        slow_lines(logs, statement)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_analyze_vacuum_or_index_merge_is_logged_as_information_and_a_slow_call_as_a_warning(
    ) {
        let db = TestDb::postgres().await;
        let store = db.store().await;
        let s = store.clone();
        let analyze = slow_while_held(
            db.lock("sync_records").await,
            "ANALYZE sync_records",
            async move { s.analyze(SyncStream::Citizens).await.expect("analyze") },
        )
        .await;
        let s = store.clone();
        let vacuum = slow_while_held(
            db.lock("feed_pending").await,
            "VACUUM feed_pending",
            async move { s.vacuum_feed_queue().await.expect("vacuum") },
        )
        .await;
        // The merge waits for the index's lock, held by a DROP INDEX rolled back after.
        let s = store.clone();
        let merge = slow_while_held(
            db.holding("DROP INDEX access_log_by_citizen_key").await,
            "gin_clean_pending_list",
            async move {
                assert!(s.clean_access_log_index().await.expect("merge"));
            },
        )
        .await;
        for (what, lines) in [
            ("ANALYZE", &analyze),
            ("VACUUM", &vacuum),
            ("merge", &merge),
        ] {
            assert_eq!(lines.len(), 1, "one slow line for the {what}: {lines:?}");
            assert_eq!(lines[0]["level"], "INFO", "{what}: {}", lines[0]);
        }
        // A call's statement behind the same kind of lock is still a warning.
        let app = TestApp::builder(Backend::Postgres).spawn().await;
        let resolver = app.resolver(Some(PAYER));
        let held = app.db.lock("resolution_inputs").await;
        // The lookup's own statement: other tests' slow reads of the table are INFO.
        let lookup = "FROM resolution_inputs WHERE citizen_id = ";
        let call = slow_while_held(held, lookup, async move {
            let mut resolver = resolver;
            resolver
                .resolve(ResolveRequest {
                    citizen_id: CITIZENS[1].into(),
                    purpose: "monthly payroll".into(),
                    ..Default::default()
                })
                .await
                .expect("resolve");
        })
        .await;
        assert!(!call.is_empty(), "no slow line for the resolve");
        assert!(call.iter().all(|l| l["level"] == "WARN"), "{call:?}");
        app.stop().await;
    }

    /// `check`'s reads of whole tables (the references between the source tables, a
    /// sample's pick) outlast a call's statement timeout on a large population (1.1 s for
    /// one rule at 1 M citizens; 5 s is the default limit): they run without it, on the
    /// maintenance connections, and a slow one is INFO. Here a lock held for 1.3 s makes
    /// each slower than the store's 300 ms limit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_check_whose_whole_table_reads_outlast_the_statement_timeout_completes_and_logs_information(
    ) {
        let (db, store) = timed_store().await;
        // The same limit stops a call's read behind the same lock.
        let s = store.clone();
        let held = db.lock("account_history").await;
        let timed_out = tokio::spawn(async move {
            s.account_history_at(Uuid::now_v7(), 0, 10, 0)
                .await
                .is_err()
        });
        let s = store.clone();
        let full = slow_while_held(held, "account_history", async move {
            let report = s
                .check_resolution_model(None, false)
                .await
                .expect("a full check");
            assert!(report.references_checked);
            assert!(
                report.broken_references.is_empty(),
                "{:?}",
                report.broken_references
            );
        })
        .await;
        assert!(
            timed_out.await.unwrap(),
            "a call's read waited out the lock"
        );
        let s = store.clone();
        let sample = slow_while_held(db.lock("citizens").await, "random()", async move {
            s.check_resolution_model(Some(10), false)
                .await
                .expect("a sample check");
        })
        .await;
        for (what, lines) in [("references", &full), ("sample", &sample)] {
            assert!(!lines.is_empty(), "no slow line for the {what}");
            assert!(
                lines.iter().all(|l| l["level"] == "INFO"),
                "{what}: {lines:?}"
            );
        }
    }

    /// A full check's last read, the search for the read model's rows still in the JSON
    /// form of before migration 0018, scans the whole model where none is left: it too
    /// runs without the calls' statement timeout. The model's table is locked once the
    /// check has passed it, while the check waits on a lock held on `account_history`
    /// (its references), so that only the search waits on it, for over a second.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checks_search_for_rows_of_the_old_form_outlasts_the_statement_timeout() {
        let (db, store) = timed_store().await;
        let logs = captured();
        let references = db.lock("account_history").await;
        let s = store.clone();
        let check = tokio::spawn(async move { s.check_resolution_model(None, false).await });
        // This database's backends only: the test beside it locks the same table.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while db.lock_waiters("%account_history%").await == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the check never reached its references"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let model = db.lock("resolution_inputs").await;
        references.close().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        model.close().await.unwrap();
        let report = check
            .await
            .unwrap()
            .expect("a full check whose last read waited 1.5 s");
        assert!(report.references_checked);
        assert_eq!(report.legacy_rows, 0);
        let lines = slow_lines(logs, "preferences IS NOT NULL");
        assert!(!lines.is_empty(), "the search did not wait on the lock");
        assert!(lines.iter().all(|l| l["level"] == "INFO"), "{lines:?}");
    }
}
