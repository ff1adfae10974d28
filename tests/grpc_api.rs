//! The gRPC API end to end: real tonic clients against the real server (bound on
//! `127.0.0.1:0`, over a fresh database), every behaviour on SQLite and on PostgreSQL.
//!
//! The tests speak only the public API, the way a welfare office, a verifier or a payer
//! would: they link, verify and resolve, and read back the `google.rpc` details a client
//! acts on (the ErrorInfo reason, the BadRequest field, the request id). The store is
//! never called. Time moves only through the server's injected clock, so cooling-off and
//! "as of" resolution are tested without sleeping.
//!
//! Citizen ids are valid and distinct per test: a province code (001 Hà Nội, 048 Đà Nẵng,
//! 079 Hồ Chí Minh ...), the century/sex digit, two birth-year digits and a serial.

mod common;

use std::time::Duration;

use common::{refused, Backend, TestApp, ADMIN, AUDITOR, EXISTS, MASKED, NOSCOPE, PAYER};
use payout_registry::proto::{
    Account, AccountHistoryEntry, AccountKind, AccountStatus, CloseAccountRequest,
    GetAccountHistoryRequest, GetAccountHistoryResponse, GetAccountRequest, LinkAccountRequest,
    ListCitizenAccountsRequest, ListCitizenAccountsResponse, ReinstateAccountRequest,
    RejectAccountRequest, ResolveOutcome, ResolveRequest, ResolveResponse, ResolveScope,
    SetDefaultAccountRequest, SetDefaultAccountResponse, SuspendAccountRequest, Verification,
    VerificationMethod, VerifyAccountRequest,
};
use payout_registry::proto::{
    FindAccountHoldersRequest, ListAccessLogRequest, ListDuplicateClaimsRequest,
    ReportPayoutFailureRequest,
};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use uuid::Uuid;

on_both_backends!(
    // Authentication, scopes and the public services.
    every_rpc_refuses_callers_without_a_valid_token_or_its_scope,
    a_yes_no_client_learns_whether_a_citizen_can_be_paid_but_not_where,
    health_and_reflection_answer_without_a_token,
    every_answer_carries_a_request_id,
    // The happy path and masking.
    an_account_is_linked_verified_made_the_default_and_resolved,
    account_numbers_are_masked_unless_the_caller_holds_resolve_full,
    // LinkAccount.
    each_citizen_id_rule_is_reported_on_the_citizen_id_field,
    a_link_without_an_account_kind_is_invalid,
    malformed_account_numbers_are_invalid,
    unknown_inactive_and_mismatched_providers_are_refused,
    a_link_needs_a_uuid_idempotency_key,
    repeating_a_link_with_its_idempotency_key_returns_the_first_account,
    reusing_an_idempotency_key_for_another_link_is_refused,
    a_second_citizen_cannot_claim_a_verified_account,
    a_citizen_cannot_link_the_same_account_twice,
    an_eleventh_open_account_is_refused,
    mobile_numbers_written_any_way_are_stored_in_one_form,
    // VerifyAccount.
    verifying_an_unknown_or_malformed_account_id_is_refused,
    an_account_cannot_be_verified_twice,
    a_stale_expected_version_is_aborted_and_changes_nothing,
    a_verification_request_must_carry_its_evidence,
    name_match_is_refused_while_the_registry_holds_no_name_for_the_citizen,
    a_pending_account_cannot_be_verified_while_another_citizen_holds_it,
    // RejectAccount, SuspendAccount, ReinstateAccount, CloseAccount.
    a_rejection_needs_a_reason_and_only_a_pending_account_can_be_rejected,
    an_account_can_be_suspended_reinstated_and_closed,
    suspend_reinstate_and_close_refuse_illegal_transitions,
    a_closed_account_is_terminal_and_its_number_can_be_linked_again,
    status_changes_follow_the_idempotency_convention,
    every_write_on_an_existing_account_refuses_a_stale_expected_version,
    // SetDefaultAccount and cooling-off.
    only_a_verified_account_can_become_the_default,
    a_citizen_cannot_choose_another_citizens_account,
    program_codes_must_be_known_upper_case_codes,
    a_program_preference_pays_its_program_and_the_default_pays_the_others,
    a_first_program_preference_is_cooled_off_like_a_default_change,
    a_new_default_is_paid_only_after_the_cooling_off_period,
    a_new_default_confirmed_by_its_issuer_is_paid_at_once,
    // Reads.
    get_account_reads_one_account_and_refuses_unknown_ids,
    listing_hides_closed_accounts_unless_asked_and_shows_the_preferences,
    account_history_pages_walk_every_state_in_version_order,
    account_history_refuses_foreign_page_tokens_and_unknown_accounts,
    // Resolve.
    resolving_a_never_seen_citizen_answers_unknown_citizen,
    a_citizen_with_only_a_pending_account_has_no_verified_account,
    a_suspended_default_is_not_paid,
    resolution_as_of_a_past_instant_uses_the_state_at_that_instant,
    an_out_of_range_as_of_is_invalid,
    // Failures.
    internal_errors_carry_a_request_id_and_no_sql,
);

const VIETCOMBANK: &str = "970436";
const BIDV: &str = "970418";
/// DongA Bank: in the reference data, but inactive.
const DONGA_BANK: &str = "970406";
/// The client id behind the ADMIN token, recorded as the actor of its changes.
const ADMIN_CLIENT: &str = "welfare-admin";
const HOUR: Duration = Duration::from_secs(3600);

use VerificationMethod::{InPerson, IssuerConfirmed, NameMatch};

// ------------------------------------------------------------------------------------
// Requests
// ------------------------------------------------------------------------------------

/// A fresh idempotency key.
fn key() -> String {
    Uuid::new_v4().to_string()
}

/// A request to link a Vietcombank account, pending verification.
fn bank(citizen: &str, number: &str) -> LinkAccountRequest {
    LinkAccountRequest {
        idempotency_key: key(),
        citizen_id: citizen.into(),
        kind: AccountKind::BankAccount.into(),
        provider_code: VIETCOMBANK.into(),
        account_ref: number.into(),
        reason: "declared by the citizen on VNeID".into(),
        ..Default::default()
    }
}

/// A request to link an e-wallet keyed by a mobile number.
fn wallet(citizen: &str, provider: &str, msisdn: &str) -> LinkAccountRequest {
    LinkAccountRequest {
        kind: AccountKind::Ewallet.into(),
        provider_code: provider.into(),
        account_ref: msisdn.into(),
        ..bank(citizen, "")
    }
}

/// Evidence of ownership, as a verifier submits it.
fn evidence(method: VerificationMethod) -> Verification {
    Verification {
        method: method.into(),
        evidence_ref: "EV-2026-0001".into(),
        ..Default::default()
    }
}

/// The same link request, verified at link time.
fn verified_at_link(request: LinkAccountRequest, method: VerificationMethod) -> LinkAccountRequest {
    LinkAccountRequest {
        verification: Some(evidence(method)),
        ..request
    }
}

fn verify_request(account_id: &str, method: VerificationMethod) -> VerifyAccountRequest {
    VerifyAccountRequest {
        idempotency_key: key(),
        account_id: account_id.into(),
        verification: Some(evidence(method)),
        reason: "ownership confirmed".into(),
        ..Default::default()
    }
}

fn resolve_request(citizen: &str, program: &str) -> ResolveRequest {
    ResolveRequest {
        citizen_id: citizen.into(),
        program_code: program.into(),
        purpose: "monthly payroll".into(),
        ..Default::default()
    }
}

// ------------------------------------------------------------------------------------
// Calls (always through the real client; ADMIN unless a token is named)
// ------------------------------------------------------------------------------------

fn answered(account: Option<Account>) -> Account {
    account.expect("the response carries the account")
}

async fn link(app: &TestApp, request: LinkAccountRequest) -> Result<Account, Status> {
    let response = app.registry(Some(ADMIN)).link_account(request).await?;
    Ok(answered(response.into_inner().account))
}

async fn link_bank(app: &TestApp, citizen: &str, number: &str) -> Account {
    link(app, bank(citizen, number))
        .await
        .expect("link a bank account")
}

async fn verify_with(app: &TestApp, request: VerifyAccountRequest) -> Result<Account, Status> {
    let response = app.registry(Some(ADMIN)).verify_account(request).await?;
    Ok(answered(response.into_inner().account))
}

async fn verify(
    app: &TestApp,
    account_id: &str,
    method: VerificationMethod,
) -> Result<Account, Status> {
    verify_with(app, verify_request(account_id, method)).await
}

/// Links a bank account and verifies it: the citizen's first one becomes their default.
async fn verified_bank(
    app: &TestApp,
    citizen: &str,
    number: &str,
    method: VerificationMethod,
) -> Account {
    let account = link_bank(app, citizen, number).await;
    verify(app, &account.account_id, method)
        .await
        .expect("verify the account")
}

/// The status changes that take only an account and a reason.
#[derive(Debug, Clone, Copy)]
enum Transition {
    Reject,
    Suspend,
    Reinstate,
    Close,
}

/// A status change as a client sends it: the four requests share these fields.
#[derive(Debug, Clone)]
struct StatusChange {
    idempotency_key: String,
    account_id: String,
    expected_version: Option<i64>,
    reason: String,
}

impl StatusChange {
    /// A change of `account_id` under a fresh key, with a reason, at any version.
    fn of(account_id: &str) -> StatusChange {
        StatusChange {
            idempotency_key: key(),
            account_id: account_id.into(),
            expected_version: None,
            reason: "requested by the provider".into(),
        }
    }
}

async fn send(app: &TestApp, step: Transition, change: &StatusChange) -> Result<Account, Status> {
    let mut registry = app.registry(Some(ADMIN));
    let StatusChange {
        idempotency_key,
        account_id,
        expected_version,
        reason,
    } = change.clone();
    macro_rules! request {
        ($message:ident) => {
            $message {
                idempotency_key,
                account_id,
                expected_version,
                reason,
            }
        };
    }
    let account = match step {
        Transition::Reject => {
            let response = registry
                .reject_account(request!(RejectAccountRequest))
                .await?;
            response.into_inner().account
        }
        Transition::Suspend => {
            let response = registry
                .suspend_account(request!(SuspendAccountRequest))
                .await?;
            response.into_inner().account
        }
        Transition::Reinstate => {
            let response = registry
                .reinstate_account(request!(ReinstateAccountRequest))
                .await?;
            response.into_inner().account
        }
        Transition::Close => {
            let response = registry
                .close_account(request!(CloseAccountRequest))
                .await?;
            response.into_inner().account
        }
    };
    Ok(answered(account))
}

/// Applies `step` to an account, with a fresh key and a reason.
async fn change(app: &TestApp, step: Transition, account_id: &str) -> Result<Account, Status> {
    send(app, step, &StatusChange::of(account_id)).await
}

fn set_default_request(citizen: &str, account_id: &str, program: &str) -> SetDefaultAccountRequest {
    SetDefaultAccountRequest {
        idempotency_key: key(),
        citizen_id: citizen.into(),
        account_id: account_id.into(),
        program_code: program.into(),
        reason: "chosen by the citizen on VNeID".into(),
        ..Default::default()
    }
}

async fn set_default_with(
    app: &TestApp,
    request: SetDefaultAccountRequest,
) -> Result<SetDefaultAccountResponse, Status> {
    let response = app
        .registry(Some(ADMIN))
        .set_default_account(request)
        .await?;
    Ok(response.into_inner())
}

async fn set_default(
    app: &TestApp,
    citizen: &str,
    account_id: &str,
    program: &str,
) -> Result<SetDefaultAccountResponse, Status> {
    set_default_with(app, set_default_request(citizen, account_id, program)).await
}

async fn resolve_with(
    app: &TestApp,
    token: &str,
    request: ResolveRequest,
) -> Result<ResolveResponse, Status> {
    Ok(app
        .resolver(Some(token))
        .resolve(request)
        .await?
        .into_inner())
}

/// Resolves as the payroll system (full account numbers).
async fn resolve(app: &TestApp, citizen: &str, program: &str) -> ResolveResponse {
    resolve_with(app, PAYER, resolve_request(citizen, program))
        .await
        .expect("resolve")
}

/// The account a resolution pays into; fails unless the outcome is RESOLVED.
#[track_caller]
fn paid_account(response: &ResolveResponse) -> &Account {
    assert_eq!(response.outcome(), ResolveOutcome::Resolved, "{response:?}");
    response
        .account
        .as_ref()
        .expect("a resolved answer carries the account")
}

async fn get_account(app: &TestApp, token: &str, account_id: &str) -> Result<Account, Status> {
    let request = GetAccountRequest {
        account_id: account_id.into(),
        purpose: "case review".into(),
        min_position: 0,
    };
    let response = app.registry(Some(token)).get_account(request).await?;
    Ok(answered(response.into_inner().account))
}

async fn list_accounts_as(
    app: &TestApp,
    token: &str,
    citizen: &str,
    include_closed: bool,
) -> Result<ListCitizenAccountsResponse, Status> {
    let request = ListCitizenAccountsRequest {
        citizen_id: citizen.into(),
        include_closed,
        purpose: "case review".into(),
        ..Default::default()
    };
    Ok(app
        .registry(Some(token))
        .list_citizen_accounts(request)
        .await?
        .into_inner())
}

async fn list_accounts(
    app: &TestApp,
    citizen: &str,
    include_closed: bool,
) -> ListCitizenAccountsResponse {
    list_accounts_as(app, ADMIN, citizen, include_closed)
        .await
        .expect("list the citizen's accounts")
}

async fn history_page(
    app: &TestApp,
    token: &str,
    account_id: &str,
    page_size: i32,
    page_token: &str,
) -> Result<GetAccountHistoryResponse, Status> {
    let request = GetAccountHistoryRequest {
        account_id: account_id.into(),
        page_size,
        page_token: page_token.into(),
        purpose: "audit".into(),
        min_position: 0,
    };
    Ok(app
        .registry(Some(token))
        .get_account_history(request)
        .await?
        .into_inner())
}

/// The whole history of an account (one default-sized page).
async fn history(app: &TestApp, account_id: &str) -> Vec<AccountHistoryEntry> {
    let page = history_page(app, ADMIN, account_id, 0, "")
        .await
        .expect("read the history");
    assert!(
        page.next_page_token.is_empty(),
        "a short history fits one page"
    );
    page.entries
}

fn ids(accounts: &[Account]) -> Vec<&str> {
    accounts.iter().map(|a| a.account_id.as_str()).collect()
}

/// `t` moved by `seconds` (negative: earlier).
fn shifted(t: &prost_types::Timestamp, seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.seconds + seconds,
        nanos: t.nanos,
    }
}

// ------------------------------------------------------------------------------------
// Assertions on refusals
// ------------------------------------------------------------------------------------

/// Asserts INVALID_ARGUMENT with `reason` and a BadRequest field violation on `field`.
#[track_caller]
fn invalid<T: std::fmt::Debug>(result: Result<T, Status>, reason: &str, field: &str) -> Status {
    let status = refused(result, Code::InvalidArgument, reason);
    let violations = status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.clone())
        .unwrap_or_default();
    assert!(
        violations.iter().any(|v| v.field == field),
        "expected a field violation on `{field}`, got {violations:?}"
    );
    status
}

/// The `x-request-id` a response or refusal carries.
#[track_caller]
fn request_id(metadata: &MetadataMap) -> Uuid {
    let value = metadata
        .get("x-request-id")
        .expect("an x-request-id header")
        .to_str()
        .expect("an ASCII request id");
    Uuid::parse_str(value).expect("the request id is a UUID")
}

/// Everything a client receives with a refusal: message, metadata and encoded details.
fn everything_sent(status: &Status) -> String {
    format!(
        "{} {:?} {}",
        status.message(),
        status.metadata(),
        String::from_utf8_lossy(status.details())
    )
}

// ------------------------------------------------------------------------------------
// 1. Authentication and scopes
// ------------------------------------------------------------------------------------

/// Every RPC of the API.
#[derive(Debug, Clone, Copy)]
enum Rpc {
    LinkAccount,
    VerifyAccount,
    RejectAccount,
    SetDefaultAccount,
    SuspendAccount,
    ReinstateAccount,
    CloseAccount,
    GetAccount,
    ListCitizenAccounts,
    GetAccountHistory,
    ReportPayoutFailure,
    Resolve,
    FindAccountHolders,
    ListDuplicateClaims,
    ListAccessLog,
}

/// Each RPC with a client holding its scope, and a client holding only other scopes.
const SCOPE_TABLE: [(Rpc, &str, &str); 15] = [
    (Rpc::LinkAccount, ADMIN, MASKED),
    (Rpc::VerifyAccount, ADMIN, MASKED),
    (Rpc::RejectAccount, ADMIN, MASKED),
    (Rpc::SetDefaultAccount, ADMIN, MASKED),
    (Rpc::SuspendAccount, ADMIN, MASKED),
    (Rpc::ReinstateAccount, ADMIN, MASKED),
    (Rpc::CloseAccount, ADMIN, PAYER),
    (Rpc::GetAccount, MASKED, PAYER),
    (Rpc::ListCitizenAccounts, MASKED, PAYER),
    (Rpc::GetAccountHistory, MASKED, PAYER),
    (Rpc::ReportPayoutFailure, PAYER, MASKED),
    (Rpc::Resolve, PAYER, NOSCOPE),
    (Rpc::FindAccountHolders, AUDITOR, ADMIN),
    (Rpc::ListDuplicateClaims, AUDITOR, PAYER),
    (Rpc::ListAccessLog, AUDITOR, MASKED),
];

/// Calls `rpc` with an empty request: enough to see whether the call passes the auth
/// layer (an authorised call is then refused for its content, never for its identity).
async fn call_with_empty_request(app: &TestApp, rpc: Rpc, token: Option<&str>) -> Status {
    let mut r = app.registry(token);
    let result = match rpc {
        Rpc::LinkAccount => r
            .link_account(LinkAccountRequest::default())
            .await
            .map(drop),
        Rpc::VerifyAccount => r
            .verify_account(VerifyAccountRequest::default())
            .await
            .map(drop),
        Rpc::RejectAccount => r
            .reject_account(RejectAccountRequest::default())
            .await
            .map(drop),
        Rpc::SetDefaultAccount => {
            let request = SetDefaultAccountRequest::default();
            r.set_default_account(request).await.map(drop)
        }
        Rpc::SuspendAccount => {
            let request = SuspendAccountRequest::default();
            r.suspend_account(request).await.map(drop)
        }
        Rpc::ReinstateAccount => {
            let request = ReinstateAccountRequest::default();
            r.reinstate_account(request).await.map(drop)
        }
        Rpc::CloseAccount => r
            .close_account(CloseAccountRequest::default())
            .await
            .map(drop),
        Rpc::GetAccount => r.get_account(GetAccountRequest::default()).await.map(drop),
        Rpc::ListCitizenAccounts => {
            let request = ListCitizenAccountsRequest::default();
            r.list_citizen_accounts(request).await.map(drop)
        }
        Rpc::GetAccountHistory => {
            let request = GetAccountHistoryRequest::default();
            r.get_account_history(request).await.map(drop)
        }
        Rpc::ReportPayoutFailure => {
            let request = ReportPayoutFailureRequest::default();
            r.report_payout_failure(request).await.map(drop)
        }
        Rpc::Resolve => {
            let request = ResolveRequest::default();
            app.resolver(token).resolve(request).await.map(drop)
        }
        Rpc::FindAccountHolders => {
            let request = FindAccountHoldersRequest::default();
            app.oversight(token)
                .find_account_holders(request)
                .await
                .map(drop)
        }
        Rpc::ListDuplicateClaims => {
            // The one call an empty request can satisfy: page through every claim with
            // a bad page token to make it a refusal past the auth layer.
            let request = ListDuplicateClaimsRequest {
                page_token: "not-a-token".into(),
                ..Default::default()
            };
            app.oversight(token)
                .list_duplicate_claims(request)
                .await
                .map(drop)
        }
        Rpc::ListAccessLog => {
            let request = ListAccessLogRequest::default();
            app.oversight(token)
                .list_access_log(request)
                .await
                .map(drop)
        }
    };
    result.expect_err("an empty request is never accepted")
}

async fn every_rpc_refuses_callers_without_a_valid_token_or_its_scope(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (rpc, holder, other_scopes) in SCOPE_TABLE {
        let cases = [
            (None, Code::Unauthenticated),
            (Some("not-a-known-token"), Code::Unauthenticated),
            (Some(NOSCOPE), Code::PermissionDenied),
            (Some(other_scopes), Code::PermissionDenied),
        ];
        for (token, expected) in cases {
            let status = call_with_empty_request(&app, rpc, token).await;
            assert_eq!(
                status.code(),
                expected,
                "{rpc:?} with {token:?}: {status:?}"
            );
        }
        // Past the auth layer, an empty request is refused for its content.
        let status = call_with_empty_request(&app, rpc, Some(holder)).await;
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{rpc:?} with {holder}: {status:?}"
        );
    }
}

async fn a_yes_no_client_learns_whether_a_citizen_can_be_paid_but_not_where(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001089000101";
    verified_bank(&app, citizen, "0071000100101", InPerson).await;

    for scope in [ResolveScope::Details, ResolveScope::Unspecified] {
        let request = ResolveRequest {
            scope: scope.into(),
            ..resolve_request(citizen, "")
        };
        let status = resolve_with(&app, EXISTS, request).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{scope:?}: {status:?}"
        );
    }

    let yes_no = |citizen: &str| ResolveRequest {
        scope: ResolveScope::ExistsOnly.into(),
        ..resolve_request(citizen, "")
    };
    let answer = resolve_with(&app, EXISTS, yes_no(citizen)).await.unwrap();
    assert_eq!(answer.outcome(), ResolveOutcome::Resolved);
    assert_eq!(answer.account, None, "the yes/no form discloses no account");
    assert_eq!(answer.matched_program_code, "");
    let unknown = resolve_with(&app, EXISTS, yes_no("001089000102"))
        .await
        .unwrap();
    assert_eq!(unknown.outcome(), ResolveOutcome::UnknownCitizen);
}

async fn health_and_reflection_answer_without_a_token(backend: Backend) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let app = TestApp::spawn(backend).await;
    let mut health = HealthClient::new(app.channel());
    for service in [
        "",
        "payoutregistry.v1.AccountRegistryService",
        "payoutregistry.v1.PayoutResolverService",
    ] {
        let request = HealthCheckRequest {
            service: service.into(),
        };
        let answer = health
            .check(request)
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(
            answer.status(),
            ServingStatus::Serving,
            "service {service:?}"
        );
    }

    let list_services = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(app.channel())
        .server_reflection_info(tokio_stream::iter([list_services]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("a reflection answer")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("expected the list of services, got {answer:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"payoutregistry.v1.AccountRegistryService"),
        "{names:?}"
    );
    assert!(
        names.contains(&"payoutregistry.v1.PayoutResolverService"),
        "{names:?}"
    );
}

async fn every_answer_carries_a_request_id(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let request = || ListCitizenAccountsRequest {
        citizen_id: "001089000201".into(),
        ..Default::default()
    };

    let ok = app
        .registry(Some(ADMIN))
        .list_citizen_accounts(request())
        .await
        .unwrap();
    let again = app
        .registry(Some(ADMIN))
        .list_citizen_accounts(request())
        .await
        .unwrap();
    assert_ne!(
        request_id(ok.metadata()),
        request_id(again.metadata()),
        "one id per call"
    );

    let unauthenticated = app
        .registry(None)
        .list_citizen_accounts(request())
        .await
        .unwrap_err();
    request_id(unauthenticated.metadata());

    let invalid_call = get_account(&app, ADMIN, "not-a-uuid").await.unwrap_err();
    let details = invalid_call.get_error_details();
    let in_details = details.request_info().expect("RequestInfo");
    assert_eq!(
        in_details.request_id,
        request_id(invalid_call.metadata()).to_string()
    );
}

// ------------------------------------------------------------------------------------
// 2-3. The walkthrough and masking
// ------------------------------------------------------------------------------------

async fn an_account_is_linked_verified_made_the_default_and_resolved(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001089000301";

    let first_request = LinkAccountRequest {
        holder_name: "Nguyễn  Văn Đức".into(),
        ..bank(citizen, "0071 0003 01001")
    };
    let first = link(&app, first_request).await.unwrap();
    assert_eq!(first.status(), AccountStatus::PendingVerification);
    assert_eq!(
        first.holder_name, "NGUYEN VAN DUC",
        "normalised as banks print it"
    );
    assert_eq!((first.version, first.citizen_id.as_str()), (1, citizen));
    assert_eq!(
        first.account_ref, "0071000301001",
        "stored without separators"
    );
    assert_eq!(
        resolve(&app, citizen, "").await.outcome(),
        ResolveOutcome::NoVerifiedAccount,
        "a pending account is never paid"
    );

    let verified = verify(&app, &first.account_id, InPerson).await.unwrap();
    assert_eq!(verified.status(), AccountStatus::Verified);
    assert_eq!(verified.version, 2);
    let verification = verified.verification.expect("the verification is recorded");
    assert_eq!(verification.method(), InPerson);
    assert_eq!(verification.verified_by, ADMIN_CLIENT);
    assert_eq!(verification.evidence_ref, "EV-2026-0001");

    let listed = list_accounts(&app, citizen, false).await;
    assert_eq!(
        listed.preferences.len(),
        1,
        "the first verified account becomes the default"
    );
    assert_eq!(listed.preferences[0].program_code, "");
    assert_eq!(listed.preferences[0].account_id, first.account_id);
    let answer = resolve(&app, citizen, "").await;
    assert_eq!(paid_account(&answer).account_id, first.account_id);
    assert!(!answer.cooling_off);

    let second_request = LinkAccountRequest {
        provider_code: BIDV.into(),
        ..bank(citizen, "2150003010")
    };
    let second = link(&app, verified_at_link(second_request, IssuerConfirmed))
        .await
        .unwrap();
    assert_eq!(
        second.status(),
        AccountStatus::Verified,
        "verified at link time"
    );
    let chosen = set_default(&app, citizen, &second.account_id, "")
        .await
        .unwrap();
    assert_eq!(answered(chosen.account).account_id, second.account_id);
    assert_eq!(chosen.program_code, "");
    let answer = resolve(&app, citizen, "PENSION").await;
    assert_eq!(paid_account(&answer).account_id, second.account_id);
    assert_eq!(
        answer.matched_program_code, "",
        "no PENSION preference: the default pays"
    );

    let entries = history(&app, &first.account_id).await;
    let changes: Vec<&str> = entries.iter().map(|e| common::change_name(e)).collect();
    assert_eq!(changes, ["LINKED", "VERIFIED"]);
    assert!(
        entries.iter().all(|e| e.actor == ADMIN_CLIENT),
        "{entries:?}"
    );
    assert_eq!(entries[1].reason, "ownership confirmed");
}

async fn account_numbers_are_masked_unless_the_caller_holds_resolve_full(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "079090000401";
    let account = verified_bank(&app, citizen, "0071000401234", InPerson).await;
    let masked = "*********1234";

    let for_payer = resolve(&app, citizen, "").await;
    let full = paid_account(&for_payer);
    assert_eq!(
        (full.account_ref.as_str(), full.account_ref_masked),
        ("0071000401234", false)
    );

    let for_office = resolve_with(&app, MASKED, resolve_request(citizen, ""))
        .await
        .unwrap();
    let shown = paid_account(&for_office);
    assert_eq!(
        (shown.account_ref.as_str(), shown.account_ref_masked),
        (masked, true)
    );

    let read = get_account(&app, MASKED, &account.account_id)
        .await
        .unwrap();
    assert_eq!(
        (read.account_ref.as_str(), read.account_ref_masked),
        (masked, true)
    );
    let listed = list_accounts_as(&app, MASKED, citizen, true).await.unwrap();
    assert!(listed
        .accounts
        .iter()
        .all(|a| a.account_ref == masked && a.account_ref_masked));
    let page = history_page(&app, MASKED, &account.account_id, 0, "")
        .await
        .unwrap();
    let in_history: Vec<&Account> = page
        .entries
        .iter()
        .filter_map(|e| e.account.as_ref())
        .collect();
    assert_eq!(in_history.len(), 2);
    assert!(in_history
        .iter()
        .all(|a| a.account_ref == masked && a.account_ref_masked));
}

// ------------------------------------------------------------------------------------
// 4. LinkAccount
// ------------------------------------------------------------------------------------

async fn each_citizen_id_rule_is_reported_on_the_citizen_id_field(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let cases = [
        ("00108900050", "CITIZEN_ID_INVALID_LENGTH"),
        ("0010890005011", "CITIZEN_ID_INVALID_LENGTH"),
        ("00108900050X", "CITIZEN_ID_NOT_DIGITS"),
        ("099089000501", "CITIZEN_ID_INVALID_PROVINCE"),
        ("001299000501", "CITIZEN_ID_BIRTH_YEAR_IN_FUTURE"),
    ];
    for (citizen, reason) in cases {
        let status = invalid(
            link(&app, bank(citizen, "0071000500001")).await,
            reason,
            "citizen_id",
        );
        assert!(
            !status.message().contains(citizen),
            "the message does not echo the id"
        );
    }
}

async fn a_link_without_an_account_kind_is_invalid(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let request = LinkAccountRequest {
        kind: AccountKind::Unspecified.into(),
        ..bank("001089000601", "0071000600001")
    };
    invalid(link(&app, request).await, "FIELD_REQUIRED", "kind");
    // A value this version of the API does not define: the one reason for every enum.
    let request = LinkAccountRequest {
        kind: 99,
        ..bank("001089000601", "0071000600001")
    };
    invalid(link(&app, request).await, "ENUM_VALUE_UNKNOWN", "kind");
}

async fn malformed_account_numbers_are_invalid(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001089000701";
    for msisdn in ["12345", "+1 212 555 0100", "0212345678"] {
        let result = link(&app, wallet(citizen, "MOMO", msisdn)).await;
        invalid(result, "MSISDN_INVALID", "account_ref");
    }
    for number in ["12345", "0071-0007-01!"] {
        invalid(
            link(&app, bank(citizen, number)).await,
            "BANK_ACCOUNT_INVALID",
            "account_ref",
        );
    }
    assert!(list_accounts(&app, citizen, true).await.accounts.is_empty());
}

async fn unknown_inactive_and_mismatched_providers_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001089000801";
    let with_provider = |provider: &str| LinkAccountRequest {
        provider_code: provider.into(),
        ..bank(citizen, "0912345678")
    };
    invalid(
        link(&app, with_provider("970499")).await,
        "PROVIDER_UNKNOWN",
        "provider_code",
    );
    let inactive = link(&app, with_provider(DONGA_BANK)).await;
    refused(inactive, Code::FailedPrecondition, "PROVIDER_INACTIVE");
    let wallet_as_bank = link(&app, with_provider("MOMO")).await;
    invalid(wallet_as_bank, "PROVIDER_KIND_MISMATCH", "provider_code");
    let mobile_money_as_wallet = link(&app, wallet(citizen, "VIETTELMONEY", "0912345678")).await;
    invalid(
        mobile_money_as_wallet,
        "PROVIDER_KIND_MISMATCH",
        "provider_code",
    );
    assert!(list_accounts(&app, citizen, true).await.accounts.is_empty());
    let answer = resolve(&app, citizen, "").await;
    assert_eq!(
        answer.outcome(),
        ResolveOutcome::UnknownCitizen,
        "refused links leave no trace"
    );
}

async fn a_link_needs_a_uuid_idempotency_key(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for bad_key in ["", "not-a-uuid", "12345"] {
        let request = LinkAccountRequest {
            idempotency_key: bad_key.into(),
            ..bank("001089000901", "0071000900001")
        };
        invalid(
            link(&app, request).await,
            "IDEMPOTENCY_KEY_INVALID",
            "idempotency_key",
        );
    }
}

async fn repeating_a_link_with_its_idempotency_key_returns_the_first_account(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001089001001";
    let request = bank(citizen, "0071001000001");
    let first = link(&app, request.clone()).await.unwrap();
    app.clock.advance(HOUR);
    let repeated = link(&app, request).await.unwrap();
    assert_eq!(repeated, first, "the first answer, unchanged");
    assert_eq!(
        ids(&list_accounts(&app, citizen, true).await.accounts),
        [first.account_id.as_str()]
    );
    assert_eq!(history(&app, &first.account_id).await.len(), 1);
}

async fn reusing_an_idempotency_key_for_another_link_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001089001101";
    let first = bank(citizen, "0071001100001");
    let account = link(&app, first.clone()).await.unwrap();
    let other_body = LinkAccountRequest {
        account_ref: "0071001100002".into(),
        ..first
    };
    let status = link(&app, other_body).await;
    refused(status, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(
        ids(&list_accounts(&app, citizen, true).await.accounts),
        [account.account_id.as_str()]
    );
}

async fn a_second_citizen_cannot_claim_a_verified_account(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let holder = "001085001201";
    let claimant = "079092001202";
    verified_bank(&app, holder, "0071001201234", IssuerConfirmed).await;

    // The same account, written another way.
    let claim = link(&app, bank(claimant, "0071-0012-01234")).await;
    let status = refused(
        claim,
        Code::FailedPrecondition,
        "ACCOUNT_OWNED_BY_ANOTHER_CITIZEN",
    );
    let sent = everything_sent(&status);
    assert!(!sent.contains(holder), "the holder is not revealed: {sent}");
    assert!(list_accounts(&app, claimant, true)
        .await
        .accounts
        .is_empty());
    let for_claimant = resolve(&app, claimant, "").await;
    assert_ne!(
        for_claimant.outcome(),
        ResolveOutcome::Resolved,
        "the claimant is paid nothing"
    );
}

async fn a_citizen_cannot_link_the_same_account_twice(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "048095001301";
    link_bank(&app, citizen, "0071001300001").await;
    let again = link(&app, bank(citizen, "0071 0013 00001")).await;
    refused(again, Code::FailedPrecondition, "ACCOUNT_ALREADY_LINKED");
    assert_eq!(list_accounts(&app, citizen, true).await.accounts.len(), 1);
}

async fn an_eleventh_open_account_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001089001401";
    let mut linked = Vec::new();
    for i in 0..10 {
        linked.push(link_bank(&app, citizen, &format!("19035555{i:04}")).await);
    }
    let eleventh = link(&app, bank(citizen, "190355559999")).await;
    refused(eleventh, Code::FailedPrecondition, "TOO_MANY_OPEN_ACCOUNTS");

    // Only open accounts count: closing one makes room.
    change(&app, Transition::Close, &linked[0].account_id)
        .await
        .unwrap();
    link(&app, bank(citizen, "190355559999"))
        .await
        .expect("a tenth open account");
}

async fn mobile_numbers_written_any_way_are_stored_in_one_form(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let forms = [
        ("001089001501", "0912 345 678"),
        ("001089001502", "84912345678"),
        ("001089001503", "+84 912.345.678"),
    ];
    for (citizen, written) in forms {
        let account = link(&app, wallet(citizen, "MOMO", written)).await.unwrap();
        assert_eq!(account.account_ref, "+84912345678", "{written:?}");
        assert!(!account.account_ref_masked, "ADMIN holds resolve.full");
    }
    // One number is one account: the same citizen cannot link it again in another form.
    let again = link(&app, wallet("001089001501", "MOMO", "+84912345678")).await;
    refused(again, Code::FailedPrecondition, "ACCOUNT_ALREADY_LINKED");
}

// ------------------------------------------------------------------------------------
// 5. VerifyAccount
// ------------------------------------------------------------------------------------

async fn verifying_an_unknown_or_malformed_account_id_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let unknown = verify(&app, &Uuid::new_v4().to_string(), InPerson).await;
    refused(unknown, Code::NotFound, "ACCOUNT_NOT_FOUND");
    let malformed = verify(&app, "account-42", InPerson).await;
    invalid(malformed, "ACCOUNT_ID_INVALID", "account_id");
}

async fn an_account_cannot_be_verified_twice(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let account = verified_bank(&app, "001089001701", "0071001700001", InPerson).await;
    let again = verify(&app, &account.account_id, IssuerConfirmed).await;
    refused(again, Code::FailedPrecondition, "ILLEGAL_TRANSITION");
    let read = get_account(&app, ADMIN, &account.account_id).await.unwrap();
    assert_eq!(read, account, "the first verification stands");
}

async fn a_stale_expected_version_is_aborted_and_changes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let account = link_bank(&app, "001089001801", "0071001800001").await;
    let at_version = |version: i64| VerifyAccountRequest {
        expected_version: Some(version),
        ..verify_request(&account.account_id, InPerson)
    };

    let stale = verify_with(&app, at_version(account.version + 1)).await;
    refused(stale, Code::Aborted, "VERSION_MISMATCH");
    assert_eq!(
        get_account(&app, ADMIN, &account.account_id).await.unwrap(),
        account
    );
    assert_eq!(history(&app, &account.account_id).await.len(), 1);

    let current = verify_with(&app, at_version(account.version))
        .await
        .unwrap();
    assert_eq!(current.version, account.version + 1);
}

async fn a_verification_request_must_carry_its_evidence(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let account = link_bank(&app, "001089001901", "0071001900001").await;
    let without = VerifyAccountRequest {
        verification: None,
        ..verify_request(&account.account_id, InPerson)
    };
    invalid(
        verify_with(&app, without).await,
        "FIELD_REQUIRED",
        "verification",
    );
    let without_evidence = VerifyAccountRequest {
        verification: Some(Verification {
            evidence_ref: " ".into(),
            ..evidence(InPerson)
        }),
        ..verify_request(&account.account_id, InPerson)
    };
    let result = verify_with(&app, without_evidence).await;
    invalid(result, "FIELD_REQUIRED", "verification.evidence_ref");
    let read = get_account(&app, ADMIN, &account.account_id).await.unwrap();
    assert_eq!(read.status(), AccountStatus::PendingVerification);
}

async fn name_match_is_refused_while_the_registry_holds_no_name_for_the_citizen(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let account = link_bank(&app, "001089002001", "0071002000001").await;
    let request = VerifyAccountRequest {
        holder_name: "Nguyễn Văn An".into(),
        ..verify_request(&account.account_id, NameMatch)
    };
    let result = verify_with(&app, request).await;
    refused(result, Code::FailedPrecondition, "CITIZEN_NAME_UNKNOWN");
    let read = get_account(&app, ADMIN, &account.account_id).await.unwrap();
    assert_eq!(read.status(), AccountStatus::PendingVerification);
}

async fn a_pending_account_cannot_be_verified_while_another_citizen_holds_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let claimant = "079092002101";
    let holder = "001085002102";
    let number = "0071002101234";
    let pending = link_bank(&app, claimant, number).await;
    link(
        &app,
        verified_at_link(bank(holder, number), IssuerConfirmed),
    )
    .await
    .unwrap();

    let result = verify(&app, &pending.account_id, InPerson).await;
    let status = refused(
        result,
        Code::FailedPrecondition,
        "ACCOUNT_OWNED_BY_ANOTHER_CITIZEN",
    );
    let sent = everything_sent(&status);
    assert!(!sent.contains(holder), "the holder is not revealed: {sent}");
    let read = get_account(&app, ADMIN, &pending.account_id).await.unwrap();
    assert_eq!(read.status(), AccountStatus::PendingVerification);
}

// ------------------------------------------------------------------------------------
// 6. RejectAccount, SuspendAccount, ReinstateAccount, CloseAccount
// ------------------------------------------------------------------------------------

async fn a_rejection_needs_a_reason_and_only_a_pending_account_can_be_rejected(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001089002201";
    let pending = link_bank(&app, citizen, "0071002200001").await;
    let without_reason = StatusChange {
        reason: "  ".into(),
        ..StatusChange::of(&pending.account_id)
    };
    let without_reason = send(&app, Transition::Reject, &without_reason).await;
    invalid(without_reason, "FIELD_REQUIRED", "reason");

    let rejected = change(&app, Transition::Reject, &pending.account_id)
        .await
        .unwrap();
    assert_eq!(rejected.status(), AccountStatus::Rejected);
    assert_eq!(rejected.version, 2);

    let verified = verified_bank(&app, citizen, "0071002200002", InPerson).await;
    let result = change(&app, Transition::Reject, &verified.account_id).await;
    refused(result, Code::FailedPrecondition, "ILLEGAL_TRANSITION");
}

async fn an_account_can_be_suspended_reinstated_and_closed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let account = verified_bank(&app, "001089002301", "0071002300001", InPerson).await;
    let steps = [
        (Transition::Suspend, AccountStatus::Suspended, 3),
        (Transition::Reinstate, AccountStatus::Verified, 4),
        (Transition::Close, AccountStatus::Closed, 5),
    ];
    for (step, status, version) in steps {
        let changed = change(&app, step, &account.account_id).await.unwrap();
        assert_eq!(
            (changed.status(), changed.version),
            (status, version),
            "{step:?}"
        );
        assert_eq!(
            changed.verification, account.verification,
            "the evidence is kept"
        );
    }
}

async fn suspend_reinstate_and_close_refuse_illegal_transitions(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001089002401";
    let pending = link_bank(&app, citizen, "0071002400001").await;
    let verified = verified_bank(&app, citizen, "0071002400002", InPerson).await;
    let rejected = link_bank(&app, citizen, "0071002400003").await;
    change(&app, Transition::Reject, &rejected.account_id)
        .await
        .unwrap();

    let illegal = [
        (Transition::Suspend, &pending),
        (Transition::Reinstate, &verified),
        (Transition::Close, &rejected),
    ];
    for (step, account) in illegal {
        let result = change(&app, step, &account.account_id).await;
        refused(result, Code::FailedPrecondition, "ILLEGAL_TRANSITION");
    }
}

async fn a_closed_account_is_terminal_and_its_number_can_be_linked_again(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001089002501";
    let number = "0071002500001";
    let account = verified_bank(&app, citizen, number, InPerson).await;
    let closed = change(&app, Transition::Close, &account.account_id)
        .await
        .unwrap();

    for step in [
        Transition::Suspend,
        Transition::Reinstate,
        Transition::Close,
        Transition::Reject,
    ] {
        let result = change(&app, step, &account.account_id).await;
        refused(result, Code::FailedPrecondition, "ILLEGAL_TRANSITION");
    }
    let result = verify(&app, &account.account_id, InPerson).await;
    refused(result, Code::FailedPrecondition, "ILLEGAL_TRANSITION");
    assert_eq!(
        get_account(&app, ADMIN, &account.account_id).await.unwrap(),
        closed
    );
    assert_eq!(
        resolve(&app, citizen, "").await.outcome(),
        ResolveOutcome::NoVerifiedAccount
    );

    let relinked = link_bank(&app, citizen, number).await;
    assert_ne!(relinked.account_id, account.account_id, "a new account");
    assert_eq!(relinked.status(), AccountStatus::PendingVerification);
    verify(&app, &relinked.account_id, InPerson)
        .await
        .expect("verify the new account");
}

async fn status_changes_follow_the_idempotency_convention(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let account = verified_bank(&app, "001089002511", "0071002510001", InPerson).await;
    let suspend = StatusChange::of(&account.account_id);
    let first = send(&app, Transition::Suspend, &suspend).await.unwrap();
    app.clock.advance(HOUR);
    let repeated = send(&app, Transition::Suspend, &suspend).await;
    assert_eq!(
        repeated.unwrap(),
        first,
        "the first answer, not an illegal transition"
    );
    assert_eq!(history(&app, &account.account_id).await.len(), 3);

    let other_reason = StatusChange {
        reason: "another reason".into(),
        ..suspend.clone()
    };
    let result = send(&app, Transition::Suspend, &other_reason).await;
    refused(result, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    let result = send(&app, Transition::Reinstate, &suspend).await;
    refused(result, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    let without_key = StatusChange {
        idempotency_key: String::new(),
        ..StatusChange::of(&account.account_id)
    };
    let result = send(&app, Transition::Reinstate, &without_key).await;
    invalid(result, "IDEMPOTENCY_KEY_INVALID", "idempotency_key");
    assert_eq!(
        get_account(&app, ADMIN, &account.account_id).await.unwrap(),
        first
    );
}

async fn every_write_on_an_existing_account_refuses_a_stale_expected_version(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001089002521";
    let pending = link_bank(&app, citizen, "0071002520001").await;
    let verified = verified_bank(&app, citizen, "0071002520002", InPerson).await;
    let suspended = verified_bank(&app, citizen, "0071002520003", InPerson).await;
    let suspended = change(&app, Transition::Suspend, &suspended.account_id)
        .await
        .unwrap();

    let cases = [
        (Transition::Reject, &pending),
        (Transition::Suspend, &verified),
        (Transition::Reinstate, &suspended),
        (Transition::Close, &verified),
    ];
    for (step, account) in cases {
        let stale = StatusChange {
            expected_version: Some(account.version - 1),
            ..StatusChange::of(&account.account_id)
        };
        refused(
            send(&app, step, &stale).await,
            Code::Aborted,
            "VERSION_MISMATCH",
        );
        let unchanged = get_account(&app, ADMIN, &account.account_id).await.unwrap();
        assert_eq!(&unchanged, account, "{step:?} changed nothing");
    }

    let preferences = list_accounts(&app, citizen, false).await.preferences;
    let stale = SetDefaultAccountRequest {
        expected_version: Some(verified.version + 1),
        ..set_default_request(citizen, &verified.account_id, "PENSION")
    };
    refused(
        set_default_with(&app, stale).await,
        Code::Aborted,
        "VERSION_MISMATCH",
    );
    assert_eq!(
        list_accounts(&app, citizen, false).await.preferences,
        preferences
    );
}

// ------------------------------------------------------------------------------------
// 7-8. SetDefaultAccount and cooling-off
// ------------------------------------------------------------------------------------

async fn only_a_verified_account_can_become_the_default(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001089002601";
    verified_bank(&app, citizen, "0071002600001", InPerson).await;
    let pending = link_bank(&app, citizen, "0071002600002").await;
    let result = set_default(&app, citizen, &pending.account_id, "").await;
    refused(result, Code::FailedPrecondition, "ACCOUNT_NOT_VERIFIED");
}

async fn a_citizen_cannot_choose_another_citizens_account(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let owner = "001089002701";
    let other = "079090002702";
    let owners = verified_bank(&app, owner, "0071002700001", IssuerConfirmed).await;
    let others = verified_bank(&app, other, "0071002700002", IssuerConfirmed).await;

    let result = set_default(&app, other, &owners.account_id, "").await;
    refused(result, Code::NotFound, "ACCOUNT_NOT_OWNED_BY_CITIZEN");
    let answer = resolve(&app, other, "").await;
    assert_eq!(paid_account(&answer).account_id, others.account_id);
}

async fn program_codes_must_be_known_upper_case_codes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001089002801";
    let account = verified_bank(&app, citizen, "0071002800001", InPerson).await;
    for program in ["NOPE", "pension"] {
        let result = set_default(&app, citizen, &account.account_id, program).await;
        invalid(result, "PROGRAM_UNKNOWN", "program_code");
        // A payer's typo is an error, not a silent fallback to the default account.
        let result = resolve_with(&app, PAYER, resolve_request(citizen, program)).await;
        invalid(result, "PROGRAM_UNKNOWN", "program_code");
    }
    let listed = list_accounts(&app, citizen, false).await;
    assert_eq!(
        listed.preferences.len(),
        1,
        "only the default: {:?}",
        listed.preferences
    );
}

async fn a_program_preference_pays_its_program_and_the_default_pays_the_others(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001060002901";
    let default = verified_bank(&app, citizen, "0071002900001", InPerson).await;
    let pension_request = LinkAccountRequest {
        provider_code: BIDV.into(),
        ..bank(citizen, "2150029001")
    };
    let pension = link(&app, verified_at_link(pension_request, IssuerConfirmed))
        .await
        .unwrap();
    let chosen = set_default(&app, citizen, &pension.account_id, "PENSION")
        .await
        .unwrap();
    assert_eq!(chosen.program_code, "PENSION");

    let for_pension = resolve(&app, citizen, "PENSION").await;
    assert_eq!(paid_account(&for_pension).account_id, pension.account_id);
    assert_eq!(for_pension.matched_program_code, "PENSION");
    for program in ["SOCIAL_ALLOWANCE", ""] {
        let answer = resolve(&app, citizen, program).await;
        assert_eq!(
            paid_account(&answer).account_id,
            default.account_id,
            "{program:?}"
        );
        assert_eq!(
            answer.matched_program_code, "",
            "{program:?}: the default matched"
        );
    }
}

/// Rule 4 (DESIGN §2): cooling-off applies when "the default (or a program preference)
/// changes to a new account". A program that was paid through the default and gets its
/// own preference changes account just the same; otherwise a first PENSION preference
/// would be a way around the account-takeover defence.
async fn a_first_program_preference_is_cooled_off_like_a_default_change(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001060003001";
    let default = verified_bank(&app, citizen, "0071003000001", InPerson).await;
    let new = verified_bank(&app, citizen, "0071003000002", InPerson).await;
    set_default(&app, citizen, &new.account_id, "PENSION")
        .await
        .unwrap();

    let answer = resolve(&app, citizen, "PENSION").await;
    assert_eq!(
        paid_account(&answer).account_id,
        default.account_id,
        "PENSION keeps being paid where it was paid until the cooling-off ends"
    );
    assert!(answer.cooling_off);

    app.clock.advance(73 * HOUR);
    let answer = resolve(&app, citizen, "PENSION").await;
    assert_eq!(paid_account(&answer).account_id, new.account_id);
    assert_eq!(answer.matched_program_code, "PENSION");
}

async fn a_new_default_is_paid_only_after_the_cooling_off_period(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001060003101";
    let old = verified_bank(&app, citizen, "0071003100001", InPerson).await;
    app.clock.advance(HOUR);
    let new = verified_bank(&app, citizen, "0071003100002", InPerson).await;
    set_default(&app, citizen, &new.account_id, "")
        .await
        .unwrap();
    let preference = list_accounts(&app, citizen, false).await.preferences;
    let since = preference[0].since.expect("the preference's start");

    let answer = resolve(&app, citizen, "").await;
    assert_eq!(
        paid_account(&answer).account_id,
        old.account_id,
        "the old account is paid"
    );
    assert!(answer.cooling_off);
    assert_eq!(answer.cooling_off_until, Some(shifted(&since, 72 * 3600)));

    app.clock.advance(73 * HOUR);
    let answer = resolve(&app, citizen, "").await;
    assert_eq!(paid_account(&answer).account_id, new.account_id);
    assert!(!answer.cooling_off);
    assert_eq!(answer.cooling_off_until, None);
}

async fn a_new_default_confirmed_by_its_issuer_is_paid_at_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001060003201";
    verified_bank(&app, citizen, "0071003200001", InPerson).await;
    app.clock.advance(HOUR);
    let new = verified_bank(&app, citizen, "0071003200002", IssuerConfirmed).await;
    set_default(&app, citizen, &new.account_id, "")
        .await
        .unwrap();

    let answer = resolve(&app, citizen, "").await;
    assert_eq!(paid_account(&answer).account_id, new.account_id);
    assert!(!answer.cooling_off);
}

// ------------------------------------------------------------------------------------
// 9. GetAccount, ListCitizenAccounts, GetAccountHistory
// ------------------------------------------------------------------------------------

async fn get_account_reads_one_account_and_refuses_unknown_ids(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let account = verified_bank(&app, "001089003301", "0071003300001", InPerson).await;
    assert_eq!(
        get_account(&app, ADMIN, &account.account_id).await.unwrap(),
        account
    );
    let unknown = get_account(&app, ADMIN, &Uuid::new_v4().to_string()).await;
    refused(unknown, Code::NotFound, "ACCOUNT_NOT_FOUND");
    let malformed = get_account(&app, ADMIN, "42").await;
    invalid(malformed, "ACCOUNT_ID_INVALID", "account_id");
}

async fn listing_hides_closed_accounts_unless_asked_and_shows_the_preferences(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001089003401";
    let default = verified_bank(&app, citizen, "0071003400001", InPerson).await;
    app.clock.advance(HOUR);
    let pension = verified_bank(&app, citizen, "0071003400002", IssuerConfirmed).await;
    set_default(&app, citizen, &pension.account_id, "PENSION")
        .await
        .unwrap();
    app.clock.advance(HOUR);
    let closed = link_bank(&app, citizen, "0071003400003").await;
    change(&app, Transition::Close, &closed.account_id)
        .await
        .unwrap();

    let open = list_accounts(&app, citizen, false).await;
    assert_eq!(
        ids(&open.accounts),
        [&default.account_id, &pension.account_id]
    );
    let mut preferences: Vec<(&str, &str)> = open
        .preferences
        .iter()
        .map(|p| (p.program_code.as_str(), p.account_id.as_str()))
        .collect();
    preferences.sort();
    assert_eq!(
        preferences,
        [
            ("", default.account_id.as_str()),
            ("PENSION", pension.account_id.as_str())
        ]
    );

    let all = list_accounts(&app, citizen, true).await;
    let expected = [&default.account_id, &pension.account_id, &closed.account_id];
    assert_eq!(ids(&all.accounts), expected, "oldest first");

    let result = list_accounts_as(&app, ADMIN, "001089", false).await;
    invalid(result, "CITIZEN_ID_INVALID_LENGTH", "citizen_id");
}

async fn account_history_pages_walk_every_state_in_version_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let account = verified_bank(&app, "001089003501", "0071003500001", InPerson).await;
    for step in [
        Transition::Suspend,
        Transition::Reinstate,
        Transition::Close,
    ] {
        app.clock.advance(HOUR);
        change(&app, step, &account.account_id).await.unwrap();
    }

    let mut entries = Vec::new();
    let mut token = String::new();
    for _page in 0..10 {
        let page = history_page(&app, ADMIN, &account.account_id, 1, &token)
            .await
            .unwrap();
        assert_eq!(page.entries.len(), 1, "{page:?}");
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }

    let walked: Vec<(i64, &str, AccountStatus)> = entries
        .iter()
        .map(|e| {
            let state = e.account.as_ref().expect("the state");
            (state.version, common::change_name(e), state.status())
        })
        .collect();
    assert_eq!(
        walked,
        [
            (1, "LINKED", AccountStatus::PendingVerification),
            (2, "VERIFIED", AccountStatus::Verified),
            (3, "SUSPENDED", AccountStatus::Suspended),
            (4, "REINSTATED", AccountStatus::Verified),
            (5, "CLOSED", AccountStatus::Closed),
        ]
    );
    assert!(entries.iter().all(|e| e.actor == ADMIN_CLIENT));
    let starts: Vec<i64> = entries
        .iter()
        .map(|e| e.valid_from.unwrap().seconds)
        .collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{starts:?}");
}

async fn account_history_refuses_foreign_page_tokens_and_unknown_accounts(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let account = link_bank(&app, "001089003601", "0071003600001").await;
    let other = link_bank(&app, "001089003602", "0071003600002").await;
    verify(&app, &other.account_id, InPerson).await.unwrap();
    // A real token of another account's history (page size 1, so there is a next page).
    let foreign = history_page(&app, ADMIN, &other.account_id, 1, "")
        .await
        .unwrap()
        .next_page_token;
    assert!(!foreign.is_empty());
    for token in ["not-a-token", "2", "v1", foreign.as_str()] {
        let result = history_page(&app, ADMIN, &account.account_id, 1, token).await;
        invalid(result, "PAGE_TOKEN_INVALID", "page_token");
        let unknown = history_page(&app, ADMIN, &Uuid::new_v4().to_string(), 1, token).await;
        invalid(unknown, "PAGE_TOKEN_INVALID", "page_token");
    }
    let unknown = history_page(&app, ADMIN, &Uuid::new_v4().to_string(), 1, "").await;
    refused(unknown, Code::NotFound, "ACCOUNT_NOT_FOUND");
}

// ------------------------------------------------------------------------------------
// 10. Resolve
// ------------------------------------------------------------------------------------

async fn resolving_a_never_seen_citizen_answers_unknown_citizen(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let answer = resolve(&app, "001089003701", "").await;
    assert_eq!(answer.outcome(), ResolveOutcome::UnknownCitizen);
    assert_eq!(answer.account, None);
}

async fn a_citizen_with_only_a_pending_account_has_no_verified_account(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001089003801";
    link_bank(&app, citizen, "0071003800001").await;
    let answer = resolve(&app, citizen, "PENSION").await;
    assert_eq!(answer.outcome(), ResolveOutcome::NoVerifiedAccount);
    assert_eq!(answer.account, None);
}

async fn a_suspended_default_is_not_paid(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001089003901";
    let account = verified_bank(&app, citizen, "0071003900001", InPerson).await;
    change(&app, Transition::Suspend, &account.account_id)
        .await
        .unwrap();
    let answer = resolve(&app, citizen, "").await;
    assert_eq!(answer.outcome(), ResolveOutcome::NoVerifiedAccount);
    assert_eq!(answer.account, None);
}

async fn resolution_as_of_a_past_instant_uses_the_state_at_that_instant(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001089004001";
    let linked = link_bank(&app, citizen, "0071004000001").await;
    app.clock.advance(HOUR);
    let verified = verify(&app, &linked.account_id, InPerson).await.unwrap();
    app.clock.advance(HOUR);
    change(&app, Transition::Suspend, &linked.account_id)
        .await
        .unwrap();
    app.clock.advance(HOUR);

    let as_of = |instant: prost_types::Timestamp| ResolveRequest {
        as_of: Some(instant),
        ..resolve_request(citizen, "")
    };
    let linked_at = linked.created_at.unwrap();
    let verified_at = verified.verification.as_ref().unwrap().verified_at.unwrap();

    let before_link = resolve_with(&app, PAYER, as_of(shifted(&linked_at, -60)))
        .await
        .unwrap();
    assert_eq!(before_link.outcome(), ResolveOutcome::UnknownCitizen);
    let while_pending = resolve_with(&app, PAYER, as_of(shifted(&linked_at, 1800)))
        .await
        .unwrap();
    assert_eq!(while_pending.outcome(), ResolveOutcome::NoVerifiedAccount);

    let instant = shifted(&verified_at, 1800);
    let while_verified = resolve_with(&app, PAYER, as_of(instant)).await.unwrap();
    let paid = paid_account(&while_verified);
    assert_eq!(paid.account_id, linked.account_id);
    assert_eq!(
        paid.status(),
        AccountStatus::Verified,
        "the account as it was then"
    );
    assert_eq!(while_verified.as_of, Some(instant));

    let now = resolve(&app, citizen, "").await;
    assert_eq!(now.outcome(), ResolveOutcome::NoVerifiedAccount);
}

async fn an_out_of_range_as_of_is_invalid(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let request = ResolveRequest {
        as_of: Some(prost_types::Timestamp {
            seconds: 1_777_000_000,
            nanos: -1,
        }),
        ..resolve_request("001089004101", "")
    };
    invalid(
        resolve_with(&app, PAYER, request).await,
        "TIMESTAMP_INVALID",
        "as_of",
    );
}

// ------------------------------------------------------------------------------------
// 11. Internal errors
// ------------------------------------------------------------------------------------

async fn internal_errors_carry_a_request_id_and_no_sql(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let citizen = "001089004201";
    verified_bank(&app, citizen, "0071004200001", InPerson).await;
    app.db
        .execute_raw("ALTER TABLE resolution_inputs RENAME TO resolution_inputs_gone")
        .await
        .expect("break the schema underneath the server");

    let result = resolve_with(&app, PAYER, resolve_request(citizen, "")).await;
    let status = refused(result, Code::Internal, "INTERNAL");
    let message = status.message().to_lowercase();
    assert!(message.contains("request id"), "{message}");
    assert!(
        message.contains(&request_id(status.metadata()).to_string()),
        "{message}"
    );
    let sent = everything_sent(&status).to_lowercase();
    for leak in [
        "resolution_inputs",
        "select",
        "relation",
        "sqlite",
        "syntax",
    ] {
        assert!(
            !sent.contains(leak),
            "internal detail {leak:?} reached the client: {sent}"
        );
    }
}
