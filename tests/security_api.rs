//! Data protection end to end (Decree 13/2023/ND-CP): every read states a purpose and is
//! recorded in the access log; payers report failed credits; investigators look accounts
//! up in reverse and list refused claims; clients are rate limited, and misses cost more.
//! Real tonic clients against the real server, on SQLite and PostgreSQL.

mod common;

use std::time::Duration;

use common::{refused, Backend, TestApp, ADMIN, AUDITOR, MASKED, PAYER};
use payout_registry::proto::*;
use payout_registry::security::limits::{BucketConfig, RateLimitConfig};
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

on_both_backends!(
    a_read_without_a_purpose_is_refused,
    every_read_is_recorded_in_the_access_log_with_client_purpose_and_request_id,
    the_access_log_pages_newest_first,
    a_payout_failure_suspends_the_account_and_stops_resolution,
    a_payout_failure_report_is_idempotent_and_validated,
    a_payout_failure_on_an_account_that_is_not_payable_is_recorded_without_a_change,
    investigators_find_every_citizen_who_ever_claimed_an_account,
    duplicate_claims_are_listed_newest_first_in_pages,
    oversight_is_closed_to_clients_without_the_oversight_scope,
    a_client_over_its_rate_limit_is_told_when_to_retry,
    lookups_of_unknown_citizens_exhaust_the_rate_limit_faster,
    calls_beyond_the_in_flight_limit_are_refused_at_once_not_queued,
);

const VIETCOMBANK: &str = "970436";

fn key() -> String {
    Uuid::new_v4().to_string()
}

/// Links a Vietcombank account verified in person; the citizen's first becomes default.
async fn verified_account(app: &TestApp, citizen: &str, number: &str) -> Account {
    app.registry(Some(ADMIN))
        .link_account(LinkAccountRequest {
            idempotency_key: key(),
            citizen_id: citizen.into(),
            kind: AccountKind::BankAccount.into(),
            provider_code: VIETCOMBANK.into(),
            account_ref: number.into(),
            verification: Some(Verification {
                method: VerificationMethod::InPerson.into(),
                evidence_ref: "CA-2026-1".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("link")
        .into_inner()
        .account
        .expect("account")
}

fn resolve_request(citizen: &str, purpose: &str) -> ResolveRequest {
    ResolveRequest {
        citizen_id: citizen.into(),
        purpose: purpose.into(),
        ..Default::default()
    }
}

async fn outcome(app: &TestApp, citizen: &str) -> ResolveOutcome {
    let r = app
        .resolver(Some(PAYER))
        .resolve(resolve_request(citizen, "payroll"))
        .await
        .expect("resolve")
        .into_inner();
    ResolveOutcome::try_from(r.outcome).expect("a known outcome")
}

/// The Vietcombank account of the oversight tests (written with separators, as an
/// investigator might).
fn the_account() -> AccountKey {
    AccountKey {
        kind: AccountKind::BankAccount.into(),
        provider_code: VIETCOMBANK.into(),
        account_ref: "0071-1000-00007".into(),
    }
}

async fn access_log(
    app: &TestApp,
    citizen: &str,
    page_token: &str,
    size: i32,
) -> ListAccessLogResponse {
    app.oversight(Some(AUDITOR))
        .list_access_log(ListAccessLogRequest {
            citizen_id: citizen.into(),
            page_size: size,
            page_token: page_token.into(),
            purpose: "citizen asked who read their data".into(),
        })
        .await
        .expect("list access log")
        .into_inner()
}

async fn a_read_without_a_purpose_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let account = verified_account(&app, "001089100001", "0071100000001").await;
    let mut resolver = app.resolver_without_purpose(Some(PAYER));
    let result = resolver.resolve(resolve_request("001089100001", "")).await;
    let status = refused(result, Code::InvalidArgument, "PURPOSE_REQUIRED");
    let fields: Vec<String> = status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    assert_eq!(fields, ["purpose"]);
    let mut registry = app.registry_without_purpose(Some(ADMIN));
    let result = registry
        .get_account(GetAccountRequest {
            account_id: account.account_id.clone(),
            purpose: " ".into(),
            min_position: 0,
        })
        .await;
    refused(result, Code::InvalidArgument, "PURPOSE_REQUIRED");
    // The field or the `x-purpose` metadata both state it.
    resolver
        .resolve(resolve_request("001089100001", "pension run 2026-11"))
        .await
        .expect("purpose in the request");
    app.resolver(Some(PAYER))
        .resolve(resolve_request("001089100001", ""))
        .await
        .expect("purpose in x-purpose metadata");
}

/// The access log's tests again, with reads recorded through this instance's spool
/// (`[access_log] spool_dir`, shipped only every minute here): ListAccessLog ships the
/// spool first, so it lists every read the instance answered before it.
mod spooled {
    use super::*;

    on_both_backends!(
        every_read_is_recorded_in_the_access_log_with_client_purpose_and_request_id,
        the_access_log_pages_newest_first,
    );

    async fn spooled(backend: Backend) -> TestApp {
        let app = TestApp::builder(backend)
            .spooled_access_log(60_000)
            .spawn()
            .await;
        // The spool is open (it holds its directory's lock): reads go through it.
        let dir = app.settings.access_log.spool_dir.as_ref().expect("a spool");
        assert!(dir.join("LOCK").exists(), "no spool in {}", dir.display());
        app
    }

    async fn every_read_is_recorded_in_the_access_log_with_client_purpose_and_request_id(
        backend: Backend,
    ) {
        super::reads_are_recorded(spooled(backend).await).await
    }

    async fn the_access_log_pages_newest_first(backend: Backend) {
        super::log_pages(spooled(backend).await).await
    }
}

async fn every_read_is_recorded_in_the_access_log_with_client_purpose_and_request_id(
    backend: Backend,
) {
    reads_are_recorded(TestApp::spawn(backend).await).await
}

async fn reads_are_recorded(app: TestApp) {
    let citizen = "001089100002";
    let account = verified_account(&app, citizen, "0071100000002").await;
    let response = app
        .resolver(Some(PAYER))
        .resolve(resolve_request(citizen, "pension run 2026-11"))
        .await
        .expect("resolve");
    let resolve_request_id = response
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let mut registry = app.registry_without_purpose(Some(MASKED));
    registry
        .get_account(GetAccountRequest {
            account_id: account.account_id.clone(),
            purpose: "audit A".into(),
            min_position: 0,
        })
        .await
        .expect("get");
    registry
        .list_citizen_accounts(ListCitizenAccountsRequest {
            page_size: 0,
            page_token: String::new(),
            citizen_id: citizen.into(),
            include_closed: true,
            purpose: "audit B".into(),
            min_position: 0,
        })
        .await
        .expect("list");
    registry
        .get_account_history(GetAccountHistoryRequest {
            account_id: account.account_id.clone(),
            purpose: "audit C".into(),
            ..Default::default()
        })
        .await
        .expect("history");
    let log = access_log(&app, citizen, "", 100).await.entries;
    let seen: Vec<(&str, &str, &str)> = log
        .iter()
        .map(|e| {
            (
                e.client_id.as_str(),
                e.method.rsplit('/').next().unwrap(),
                e.purpose.as_str(),
            )
        })
        .collect();
    // Newest first; the audit read of the log itself is recorded too, after this page was read.
    assert_eq!(
        seen,
        [
            ("province-office", "GetAccountHistory", "audit C"),
            ("province-office", "ListCitizenAccounts", "audit B"),
            ("province-office", "GetAccount", "audit A"),
            ("vss-payroll", "Resolve", "pension run 2026-11"),
        ]
    );
    assert_eq!(log[3].request_id, resolve_request_id);
    let again = access_log(&app, citizen, "", 1).await.entries;
    assert_eq!(again[0].client_id, "auditor");
    assert_eq!(
        again[0].method,
        "/payoutregistry.v1.OversightService/ListAccessLog"
    );
    // Another citizen's log is untouched.
    assert!(access_log(&app, "001089100099", "", 10).await.entries.len() <= 1);
}

async fn the_access_log_pages_newest_first(backend: Backend) {
    log_pages(TestApp::spawn(backend).await).await
}

async fn log_pages(app: TestApp) {
    let citizen = "001089100003";
    verified_account(&app, citizen, "0071100000003").await;
    for i in 0..5 {
        app.resolver(Some(PAYER))
            .resolve(resolve_request(citizen, &format!("run {i}")))
            .await
            .expect("resolve");
    }
    let mut purposes = Vec::new();
    let mut token = String::new();
    loop {
        let page = access_log(&app, citizen, &token, 2).await;
        assert!(page.entries.len() <= 2);
        purposes.extend(page.entries.into_iter().map(|e| e.purpose));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let runs: Vec<&str> = purposes
        .iter()
        .map(String::as_str)
        .filter(|p| p.starts_with("run"))
        .collect();
    assert_eq!(runs, ["run 4", "run 3", "run 2", "run 1", "run 0"]);
    let result = app
        .oversight(Some(AUDITOR))
        .list_access_log(ListAccessLogRequest {
            citizen_id: citizen.into(),
            page_token: "v3".into(),
            purpose: "x".into(),
            ..Default::default()
        })
        .await;
    refused(result, Code::InvalidArgument, "PAGE_TOKEN_INVALID");
}

fn failure_report(account_id: &str) -> ReportPayoutFailureRequest {
    ReportPayoutFailureRequest {
        idempotency_key: key(),
        account_id: account_id.into(),
        program_code: "PENSION".into(),
        failure_code: PayoutFailureCode::AccountClosedAtProvider.into(),
        payer_reference: "VSS-2026-11-line-4411".into(),
        failed_at: None,
        reason: "credit returned by the bank".into(),
    }
}

async fn a_payout_failure_suspends_the_account_and_stops_resolution(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001089100004";
    let account = verified_account(&app, citizen, "0071100000004").await;
    assert_eq!(outcome(&app, citizen).await, ResolveOutcome::Resolved);
    let response = app
        .registry(Some(PAYER))
        .report_payout_failure(failure_report(&account.account_id))
        .await
        .expect("report")
        .into_inner();
    let after = response.account.expect("account");
    assert_eq!(after.status(), AccountStatus::Suspended);
    assert!(Uuid::parse_str(&response.failure_id).is_ok());
    assert_eq!(
        outcome(&app, citizen).await,
        ResolveOutcome::NoVerifiedAccount
    );
    let history = app
        .registry(Some(ADMIN))
        .get_account_history(GetAccountHistoryRequest {
            account_id: account.account_id.clone(),
            ..Default::default()
        })
        .await
        .expect("history")
        .into_inner()
        .entries;
    let last = history.last().expect("entries");
    assert_eq!(last.change(), AccountChange::Suspended);
    assert_eq!(last.actor, "vss-payroll");
    assert!(
        last.reason.contains("ACCOUNT_CLOSED_AT_PROVIDER"),
        "{}",
        last.reason
    );
    let events = app.store.events_after(0, 100).await.expect("events");
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert!(
        types.ends_with(&["PAYOUT_FAILURE_REPORTED", "ACCOUNT_SUSPENDED"]),
        "{types:?}"
    );
    // Reinstating after the citizen fixed the account pays it again.
    app.registry(Some(ADMIN))
        .reinstate_account(ReinstateAccountRequest {
            idempotency_key: key(),
            account_id: account.account_id.clone(),
            reason: "bank confirmed the account is open".into(),
            ..Default::default()
        })
        .await
        .expect("reinstate");
    assert_eq!(outcome(&app, citizen).await, ResolveOutcome::Resolved);
}

async fn a_payout_failure_report_is_idempotent_and_validated(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let account = verified_account(&app, "001089100005", "0071100000005").await;
    let report = failure_report(&account.account_id);
    let mut registry = app.registry(Some(PAYER));
    let first = registry
        .report_payout_failure(report.clone())
        .await
        .expect("first")
        .into_inner();
    let again = registry
        .report_payout_failure(report.clone())
        .await
        .expect("again")
        .into_inner();
    assert_eq!(first.failure_id, again.failure_id);
    let failures = app.db.count("SELECT COUNT(*) FROM payout_failures").await;
    assert_eq!(failures, 1);
    let other = ReportPayoutFailureRequest {
        payer_reference: "another line".into(),
        ..report.clone()
    };
    refused(
        registry.report_payout_failure(other).await,
        Code::AlreadyExists,
        "IDEMPOTENCY_KEY_REUSED",
    );
    let cases = [
        (
            ReportPayoutFailureRequest {
                failure_code: 0,
                ..failure_report(&account.account_id)
            },
            "FIELD_REQUIRED",
        ),
        (
            ReportPayoutFailureRequest {
                failure_code: 99,
                ..failure_report(&account.account_id)
            },
            "ENUM_VALUE_UNKNOWN",
        ),
        (
            ReportPayoutFailureRequest {
                payer_reference: "".into(),
                ..failure_report(&account.account_id)
            },
            "FIELD_REQUIRED",
        ),
        (
            ReportPayoutFailureRequest {
                program_code: "NOPE".into(),
                ..failure_report(&account.account_id)
            },
            "PROGRAM_UNKNOWN",
        ),
        (
            ReportPayoutFailureRequest {
                account_id: "x".into(),
                ..failure_report(&account.account_id)
            },
            "ACCOUNT_ID_INVALID",
        ),
    ];
    for (request, reason) in cases {
        refused(
            registry.report_payout_failure(request).await,
            Code::InvalidArgument,
            reason,
        );
    }
    let unknown = failure_report(&Uuid::new_v4().to_string());
    refused(
        registry.report_payout_failure(unknown).await,
        Code::NotFound,
        "ACCOUNT_NOT_FOUND",
    );
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM payout_failures").await,
        1
    );
    // Only payers report failures.
    let denied = app
        .registry(Some(MASKED))
        .report_payout_failure(failure_report(&account.account_id))
        .await;
    assert_eq!(denied.unwrap_err().code(), Code::PermissionDenied);
}

async fn a_payout_failure_on_an_account_that_is_not_payable_is_recorded_without_a_change(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let account = verified_account(&app, "001089100006", "0071100000006").await;
    let mut registry = app.registry(Some(PAYER));
    let first = registry
        .report_payout_failure(failure_report(&account.account_id))
        .await
        .expect("first");
    let suspended = first.into_inner().account.expect("account");
    let second = registry
        .report_payout_failure(failure_report(&account.account_id))
        .await
        .expect("a second failure on the suspended account")
        .into_inner();
    let still = second.account.expect("account");
    assert_eq!(still.status(), AccountStatus::Suspended);
    assert_eq!(
        still.version, suspended.version,
        "no new state for an account already suspended"
    );
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM payout_failures").await,
        2
    );
}

async fn investigators_find_every_citizen_who_ever_claimed_an_account(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let number = "0071100000007";
    // A first holder closes the account; a second citizen verifies it; a third is refused.
    let first = verified_account(&app, "001089100071", number).await;
    app.registry(Some(ADMIN))
        .close_account(CloseAccountRequest {
            idempotency_key: key(),
            account_id: first.account_id.clone(),
            reason: "account transferred".into(),
            ..Default::default()
        })
        .await
        .expect("close");
    let second = verified_account(&app, "079200100072", number).await;
    let refused_claim = app
        .registry(Some(ADMIN))
        .link_account(LinkAccountRequest {
            idempotency_key: key(),
            citizen_id: "048300100073".into(),
            kind: AccountKind::BankAccount.into(),
            provider_code: VIETCOMBANK.into(),
            account_ref: number.into(),
            ..Default::default()
        })
        .await;
    refused(
        refused_claim,
        Code::FailedPrecondition,
        "ACCOUNT_OWNED_BY_ANOTHER_CITIZEN",
    );
    let found = app
        .oversight(Some(AUDITOR))
        .find_account_holders(FindAccountHoldersRequest {
            account: Some(the_account()),
            purpose: "investigation 2026/117".into(),
            ..Default::default()
        })
        .await
        .expect("find")
        .into_inner();
    let holders: Vec<(&str, AccountStatus)> = found
        .holders
        .iter()
        .map(|h| (h.citizen_id.as_str(), h.status()))
        .collect();
    assert_eq!(
        holders,
        [
            ("001089100071", AccountStatus::Closed),
            ("079200100072", AccountStatus::Verified)
        ]
    );
    assert_eq!(found.holders[1].account_id, second.account_id);
    assert!(found
        .holders
        .iter()
        .all(|h| h.linked_at.is_some() && h.verified_at.is_some()));
    // The refused claims on the account: ListDuplicateClaims filtered by the account.
    let claims = app
        .oversight(Some(AUDITOR))
        .list_duplicate_claims(ListDuplicateClaimsRequest {
            account: Some(the_account()),
            purpose: "investigation 2026/117".into(),
            ..Default::default()
        })
        .await
        .expect("claims")
        .into_inner()
        .claims;
    assert_eq!(claims.len(), 1);
    let claim = &claims[0];
    assert_eq!(
        (
            claim.claimant_citizen_id.as_str(),
            claim.holder_citizen_id.as_str()
        ),
        ("048300100073", "079200100072")
    );
    assert_eq!(claim.context, "LINK");
    assert_eq!(
        claim.account.as_ref().map(|a| a.account_ref.as_str()),
        Some("*********0007"),
        "masked without resolve.full"
    );
    // The investigator's look is itself in each citizen's access log: the holders' by
    // FindAccountHolders, the claimant's (and the holder's) by ListDuplicateClaims.
    for (citizen, method) in [
        ("001089100071", "FindAccountHolders"),
        ("079200100072", "FindAccountHolders"),
        ("079200100072", "ListDuplicateClaims"),
        ("048300100073", "ListDuplicateClaims"),
    ] {
        let log = access_log(&app, citizen, "", 10).await.entries;
        assert!(
            log.iter()
                .any(|e| e.method.ends_with(method) && e.purpose == "investigation 2026/117"),
            "{citizen} {method}: {log:?}"
        );
    }
}

async fn duplicate_claims_are_listed_newest_first_in_pages(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    verified_account(&app, "001089100008", "0071100000008").await;
    let claimants = ["079200100081", "079200100082", "079200100083"];
    for c in claimants {
        let result = app
            .registry(Some(ADMIN))
            .link_account(LinkAccountRequest {
                idempotency_key: key(),
                citizen_id: c.into(),
                kind: AccountKind::BankAccount.into(),
                provider_code: VIETCOMBANK.into(),
                account_ref: "0071100000008".into(),
                ..Default::default()
            })
            .await;
        refused(
            result,
            Code::FailedPrecondition,
            "ACCOUNT_OWNED_BY_ANOTHER_CITIZEN",
        );
        app.clock.advance(Duration::from_secs(1));
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .oversight(Some(AUDITOR))
            .list_duplicate_claims(ListDuplicateClaimsRequest {
                page_size: 2,
                page_token: token,
                purpose: "weekly review".into(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        seen.extend(page.claims.into_iter().map(|c| c.claimant_citizen_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["079200100083", "079200100082", "079200100081"]);
}

async fn oversight_is_closed_to_clients_without_the_oversight_scope(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for token in [ADMIN, PAYER, MASKED] {
        let result = app
            .oversight(Some(token))
            .list_duplicate_claims(ListDuplicateClaimsRequest {
                purpose: "x".into(),
                ..Default::default()
            })
            .await;
        assert_eq!(
            result.unwrap_err().code(),
            Code::PermissionDenied,
            "{token}"
        );
    }
    let result = app
        .oversight(None)
        .list_access_log(ListAccessLogRequest {
            citizen_id: "001089100009".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(result.unwrap_err().code(), Code::Unauthenticated);
}

fn tight_limits(burst: f64, unknown_cost: f64) -> RateLimitConfig {
    // No refill to speak of within a test: the burst is all a client gets.
    let b = BucketConfig {
        per_second: 0.01,
        burst,
    };
    RateLimitConfig {
        write: BucketConfig {
            per_second: 1000.0,
            burst: 1000.0,
        },
        read: b,
        resolve: b,
        oversight: b,
        bulk: b,
        unknown_citizen_cost: unknown_cost,
        max_concurrent_calls: 64,
        max_concurrent_streams: 64,
    }
}

async fn a_client_over_its_rate_limit_is_told_when_to_retry(backend: Backend) {
    let app = TestApp::builder(backend)
        .limits(tight_limits(3.0, 0.0))
        .spawn()
        .await;
    verified_account(&app, "001089100010", "0071100000010").await;
    for _ in 0..3 {
        app.resolver(Some(PAYER))
            .resolve(resolve_request("001089100010", "p"))
            .await
            .expect("within the burst");
    }
    let result = app
        .resolver(Some(PAYER))
        .resolve(resolve_request("001089100010", "p"))
        .await;
    let status = refused(result, Code::ResourceExhausted, "RATE_LIMITED");
    let retry = status
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay);
    assert!(
        retry.is_some_and(|d| d > Duration::ZERO),
        "RetryInfo with a delay: {retry:?}"
    );
    // Another client's bucket is its own.
    app.resolver(Some(MASKED))
        .resolve(resolve_request("001089100010", "p"))
        .await
        .expect("other client");
}

async fn lookups_of_unknown_citizens_exhaust_the_rate_limit_faster(backend: Backend) {
    let app = TestApp::builder(backend)
        .limits(tight_limits(10.0, 4.0))
        .spawn()
        .await;
    verified_account(&app, "001089100011", "0071100000011").await;
    // Hits: ten fit in the burst.
    for _ in 0..10 {
        app.resolver(Some(MASKED))
            .resolve(resolve_request("001089100011", "p"))
            .await
            .expect("hit");
    }
    // Misses cost 1 + 4: the third unknown id is refused.
    for serial in 0..2 {
        let r = app
            .resolver(Some(PAYER))
            .resolve(resolve_request(&format!("0010891009{serial:02}"), "p"))
            .await
            .expect("miss within the budget");
        assert_eq!(r.into_inner().outcome(), ResolveOutcome::UnknownCitizen);
    }
    let result = app
        .resolver(Some(PAYER))
        .resolve(resolve_request("001089100977", "p"))
        .await;
    refused(result, Code::ResourceExhausted, "RATE_LIMITED");
}

/// Holds the access log's table locked from another connection, so that every read
/// waits in flight for its log entry until the lock is released.
enum LogLock {
    Postgres(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

async fn lock_access_log(app: &TestApp) -> LogLock {
    use sqlx::Connection;
    match app.db.backend {
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&app.db.url)
                .await
                .expect("connect");
            sqlx::query("BEGIN").execute(&mut c).await.expect("begin");
            sqlx::query("LOCK TABLE access_log IN EXCLUSIVE MODE")
                .execute(&mut c)
                .await
                .expect("lock");
            LogLock::Postgres(c)
        }
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&app.db.url)
                .await
                .expect("connect");
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut c)
                .await
                .expect("lock the writer");
            LogLock::Sqlite(c)
        }
    }
}

async fn release(lock: LogLock) {
    match lock {
        LogLock::Postgres(mut c) => drop(sqlx::query("ROLLBACK").execute(&mut c).await),
        LogLock::Sqlite(mut c) => drop(sqlx::query("ROLLBACK").execute(&mut c).await),
    }
}

async fn calls_beyond_the_in_flight_limit_are_refused_at_once_not_queued(backend: Backend) {
    let limits = RateLimitConfig {
        max_concurrent_calls: 2,
        ..RateLimitConfig::default()
    };
    let app = TestApp::builder(backend).limits(limits).spawn().await;
    verified_account(&app, "001089100012", "0071100000012").await;
    let lock = lock_access_log(&app).await;
    // Two reads go in flight and wait for their access-log entries.
    let in_flight: Vec<_> = (0..2)
        .map(|_| {
            let mut resolver = app.resolver(Some(PAYER));
            tokio::spawn(
                async move { resolver.resolve(resolve_request("001089100012", "p")).await },
            )
        })
        .collect();
    // Give both calls time to reach the server and block on the log. Should they not
    // have, the third call is admitted and blocks too; the timeout below then fails the
    // test instead of hanging it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = std::time::Instant::now();
    let mut third = app.resolver(Some(MASKED));
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        third.resolve(resolve_request("001089100012", "p")),
    )
    .await;
    let elapsed = started.elapsed();
    release(lock).await;
    let result = answer.expect("the third call is answered at once, not queued");
    let status = refused(result, Code::Unavailable, "OVERLOADED");
    assert!(
        elapsed < Duration::from_secs(1),
        "shed at once, not queued: {elapsed:?}"
    );
    assert!(status.get_error_details().retry_info().is_some());
    for call in in_flight {
        call.await
            .expect("task")
            .expect("the waiting reads complete once the log is free");
    }
    // With the load gone, calls are admitted again.
    app.resolver(Some(MASKED))
        .resolve(resolve_request("001089100012", "p"))
        .await
        .expect("admitted");
}
