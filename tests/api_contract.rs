//! The API's contract as an integrator relies on it, end to end through real clients on
//! both backends: requests the registry cannot answer inside a stream are answered in
//! place, every write needs its idempotency key, resolution never answers about the
//! future, the claimant's side never learns who holds an account, and every refusal
//! (auth-layer ones and out-of-range enum values included) carries an ErrorReason in its
//! ErrorInfo, with the request id the client sent.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{
    feed_on, refused, sync_accounts, Backend, TestApp, ADMIN, INVESTIGATIONS_FEED, PAYER, WATCHER,
};
use payout_registry::domain::{Category, Reason};
use payout_registry::proto::{
    self, AccountKind, AccountRecord, BatchResolveRequest, CloseAccountRequest,
    EditWatchListRequest, LinkAccountRequest, ListCitizenAccountsRequest, ReinstateAccountRequest,
    RejectAccountRequest, ReportPayoutFailureRequest, ResolveRequest, SetDefaultAccountRequest,
    SubscribeRequest, SuspendAccountRequest, Verification, VerificationMethod,
    VerifyAccountRequest,
};
use prost::Message as _;
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

on_both_backends!(
    batch_resolve_answers_an_unknown_program_and_a_future_as_of_in_place_and_goes_on,
    every_write_refuses_a_missing_idempotency_key_and_changes_nothing,
    resolve_refuses_an_as_of_in_the_future,
    the_duplicate_claim_event_names_the_holder_to_oversight_only,
    auth_layer_refusals_carry_their_reason_and_the_missing_scope,
    an_enum_value_out_of_range_is_refused_with_one_reason_everywhere,
    the_clients_request_id_is_echoed_and_used_in_refusals,
    a_page_token_continues_only_the_list_that_issued_it,
);

const CITIZEN: &str = "001085100001";

fn key() -> String {
    Uuid::new_v4().to_string()
}

async fn issuer_confirmed(app: &TestApp, citizen: &str, number: &str) -> String {
    common::link_issuer_confirmed(app, citizen, number).await
}

async fn batch_resolve_answers_an_unknown_program_and_a_future_as_of_in_place_and_goes_on(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    issuer_confirmed(&app, CITIZEN, "0071000100001").await;
    const TOTAL: usize = 2000;
    let future = payout_registry::grpc::convert::timestamp_out(
        app.clock.now().plus(Duration::from_secs(3600)),
    );
    let requests: Vec<BatchResolveRequest> = (0..TOTAL)
        .map(|i| BatchResolveRequest {
            correlation_id: i.to_string(),
            citizen_id: CITIZEN.into(),
            program_code: if i == 1500 {
                "NOT_A_PROGRAM".into()
            } else {
                "PENSION".into()
            },
            as_of: (i == 1700).then_some(future),
            purpose: "monthly payroll".into(),
            ..Default::default()
        })
        .collect();
    let got = common::batch_resolve_all(&app, PAYER, requests).await;
    assert_eq!(got.len(), TOTAL, "every request is answered");
    for (i, answer) in got.iter().enumerate() {
        assert_eq!(answer.correlation_id, i.to_string(), "in request order");
        match i {
            1500 => {
                let e = answer.error.as_ref().expect("answered in place");
                assert_eq!(
                    (e.reason.as_str(), e.field.as_str()),
                    ("PROGRAM_UNKNOWN", "program_code")
                );
            }
            1700 => {
                let e = answer.error.as_ref().expect("answered in place");
                assert_eq!(
                    (e.reason.as_str(), e.field.as_str()),
                    ("AS_OF_IN_FUTURE", "as_of")
                );
            }
            _ => assert_eq!(
                answer.result.as_ref().map(|r| r.outcome()),
                Some(proto::ResolveOutcome::Resolved),
                "request {i}"
            ),
        }
    }
}

async fn every_write_refuses_a_missing_idempotency_key_and_changes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let account_id = issuer_confirmed(&app, CITIZEN, "0071000100011").await;
    let registry = || app.registry(Some(ADMIN));
    let link = LinkAccountRequest {
        idempotency_key: String::new(),
        citizen_id: CITIZEN.into(),
        kind: AccountKind::BankAccount.into(),
        provider_code: "970436".into(),
        account_ref: "0071000100012".into(),
        reason: "no key".into(),
        ..Default::default()
    };
    // An empty key, and one that is not a UUID.
    for key in ["", "retry-1"] {
        let result = registry()
            .link_account(LinkAccountRequest {
                idempotency_key: key.into(),
                ..link.clone()
            })
            .await;
        let status = refused(result, Code::InvalidArgument, "IDEMPOTENCY_KEY_INVALID");
        let info = status.get_error_details();
        assert_eq!(
            info.error_info()
                .unwrap()
                .metadata
                .get("field")
                .map(String::as_str),
            Some("idempotency_key")
        );
    }
    let accounts = registry()
        .list_citizen_accounts(ListCitizenAccountsRequest {
            citizen_id: CITIZEN.into(),
            include_closed: true,
            purpose: "check".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .accounts;
    assert_eq!(accounts.len(), 1, "the refused links created nothing");

    // Every other write refuses it too.
    let results = vec![
        registry()
            .verify_account(VerifyAccountRequest {
                account_id: account_id.clone(),
                verification: Some(Verification {
                    method: VerificationMethod::InPerson.into(),
                    evidence_ref: "e".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map(drop),
        registry()
            .reject_account(RejectAccountRequest {
                account_id: account_id.clone(),
                reason: "r".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        registry()
            .set_default_account(SetDefaultAccountRequest {
                citizen_id: CITIZEN.into(),
                account_id: account_id.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
        registry()
            .suspend_account(SuspendAccountRequest {
                account_id: account_id.clone(),
                reason: "r".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        registry()
            .reinstate_account(ReinstateAccountRequest {
                account_id: account_id.clone(),
                reason: "r".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        registry()
            .close_account(CloseAccountRequest {
                account_id: account_id.clone(),
                reason: "r".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        app.registry(Some(PAYER))
            .report_payout_failure(ReportPayoutFailureRequest {
                account_id: account_id.clone(),
                failure_code: proto::PayoutFailureCode::AccountFrozen.into(),
                payer_reference: "p".into(),
                ..Default::default()
            })
            .await
            .map(drop),
    ];
    for result in results {
        refused(result, Code::InvalidArgument, "IDEMPOTENCY_KEY_INVALID");
    }
}

async fn resolve_refuses_an_as_of_in_the_future(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    issuer_confirmed(&app, CITIZEN, "0071000100021").await;
    let at = |t: payout_registry::domain::Timestamp| ResolveRequest {
        citizen_id: CITIZEN.into(),
        as_of: Some(payout_registry::grpc::convert::timestamp_out(t)),
        purpose: "audit".into(),
        ..Default::default()
    };
    let now = app.clock.now();
    let far = payout_registry::domain::Timestamp(253_402_214_400_000_000); // 9999-12-31
    for t in [far, now.plus(Duration::from_secs(3600))] {
        let status = refused(
            app.resolver(Some(PAYER)).resolve(at(t)).await,
            Code::InvalidArgument,
            "AS_OF_IN_FUTURE",
        );
        let details = status.get_error_details();
        let violations = &details
            .bad_request()
            .expect("a field violation")
            .field_violations;
        assert_eq!(violations[0].field, "as_of");
    }
    // Within the allowed clock skew, and in the past: answered.
    for t in [now.plus(Duration::from_secs(2)), now] {
        let answer = app
            .resolver(Some(PAYER))
            .resolve(at(t))
            .await
            .expect("answered")
            .into_inner();
        assert_eq!(answer.outcome(), proto::ResolveOutcome::Resolved);
    }
}

async fn the_duplicate_claim_event_names_the_holder_to_oversight_only(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let holder = "079200100101";
    let claimant = "048300100102";
    let number = "0071000100101";
    let holder_account = issuer_confirmed(&app, holder, number).await;
    // The claimant's watcher (a provincial cache serving the claimant).
    let edit = feed_on(app.channel(), Some(WATCHER))
        .edit_watch_list(tokio_stream::iter(vec![EditWatchListRequest {
            consumer: "claimant-cache".into(),
            add: vec![claimant.into()],
            remove: vec![],
        }]))
        .await
        .expect("watch list");
    assert_eq!(edit.into_inner().size, 1);
    let refused_claim = app
        .registry(Some(ADMIN))
        .link_account(LinkAccountRequest {
            idempotency_key: key(),
            citizen_id: claimant.into(),
            kind: AccountKind::BankAccount.into(),
            provider_code: "970436".into(),
            account_ref: number.into(),
            ..Default::default()
        })
        .await;
    refused(
        refused_claim,
        Code::FailedPrecondition,
        "ACCOUNT_OWNED_BY_ANOTHER_CITIZEN",
    );
    common::sequenced_head(&app).await;

    let claim_of = |token: &'static str, consumer: &'static str| {
        let app = &app;
        async move {
            let mut events = feed_on(app.channel(), Some(token))
                .subscribe(SubscribeRequest {
                    consumer: consumer.into(),
                    event_types: vec![common::event_type("DUPLICATE_CLAIM_DETECTED")],
                    ..Default::default()
                })
                .await
                .expect("subscribe")
                .into_inner();
            let e = tokio::time::timeout(Duration::from_secs(10), common::next_event(&mut events))
                .await
                .expect("the claim's event")
                .expect("open");
            assert_eq!(e.citizen_id, claimant);
            match e.payload {
                Some(proto::feed_event::Payload::DuplicateClaimDetected(c)) => c,
                other => panic!("a duplicate claim payload, not {other:?}"),
            }
        }
    };
    let seen_by_watcher = claim_of(WATCHER, "claimant-cache").await;
    assert_eq!(
        seen_by_watcher.holder_citizen_id, "",
        "the holder is not revealed"
    );
    assert_eq!(seen_by_watcher.holder_account_id, "");
    assert_eq!(seen_by_watcher.context, "LINK");
    let account = seen_by_watcher.account.expect("the account claimed");
    assert_eq!(account.account_ref, "*********0101", "masked");
    let seen_by_oversight = claim_of(INVESTIGATIONS_FEED, "").await;
    assert_eq!(seen_by_oversight.holder_citizen_id, holder);
    assert_eq!(seen_by_oversight.holder_account_id, holder_account);
}

fn error_info(status: &tonic::Status) -> tonic_types::ErrorInfo {
    status
        .get_error_details()
        .error_info()
        .cloned()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"))
}

async fn auth_layer_refusals_carry_their_reason_and_the_missing_scope(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let resolve = ResolveRequest {
        citizen_id: CITIZEN.into(),
        purpose: "p".into(),
        ..Default::default()
    };
    let status = app
        .resolver(None)
        .resolve(resolve.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(error_info(&status).reason, "CREDENTIALS_MISSING");
    let status = app
        .resolver(Some("no-such-token"))
        .resolve(resolve.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(error_info(&status).reason, "CREDENTIALS_INVALID");
    // The feed reader holds no resolve scope: which ones would do is in the metadata.
    let status = app
        .resolver(Some(common::FEED))
        .resolve(resolve)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let info = error_info(&status);
    assert_eq!(info.reason, "SCOPE_MISSING");
    assert_eq!(
        info.metadata.get("required_scopes").map(String::as_str),
        Some("resolve,resolve.exists")
    );
    assert!(status.get_error_details().request_info().is_some());
}

async fn an_enum_value_out_of_range_is_refused_with_one_reason_everywhere(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut refusals = Vec::new();
    refusals.push((
        "scope",
        app.resolver(Some(PAYER))
            .resolve(ResolveRequest {
                citizen_id: CITIZEN.into(),
                scope: 99,
                purpose: "p".into(),
                ..Default::default()
            })
            .await
            .map(drop),
    ));
    refusals.push((
        "kind",
        app.registry(Some(ADMIN))
            .link_account(LinkAccountRequest {
                idempotency_key: key(),
                citizen_id: CITIZEN.into(),
                kind: 99,
                provider_code: "970436".into(),
                account_ref: "0071000100031".into(),
                ..Default::default()
            })
            .await
            .map(drop),
    ));
    refusals.push((
        "verification.method",
        app.registry(Some(ADMIN))
            .link_account(LinkAccountRequest {
                idempotency_key: key(),
                citizen_id: CITIZEN.into(),
                kind: AccountKind::BankAccount.into(),
                provider_code: "970436".into(),
                account_ref: "0071000100032".into(),
                verification: Some(Verification {
                    method: 99,
                    evidence_ref: "e".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map(drop),
    ));
    for (field, result) in refusals {
        let status = refused(result, Code::InvalidArgument, "ENUM_VALUE_UNKNOWN");
        assert_eq!(
            error_info(&status)
                .metadata
                .get("field")
                .map(String::as_str),
            Some(field)
        );
        assert_eq!(
            status.message(),
            format!("{field} is not one of the values this version of the API defines")
        );
    }
    // On a sync record: the record is rejected alone, with the same reason.
    let record = AccountRecord {
        record_id: "r1".into(),
        version: 1,
        citizen_id: CITIZEN.into(),
        kind: AccountKind::BankAccount.into(),
        provider_code: "970436".into(),
        account_ref: "0071000100033".into(),
        verification_method: 99,
        ..Default::default()
    };
    let acks = sync_accounts(&app, vec![record]).await;
    let error = &acks[0].errors[0];
    assert_eq!(
        (error.reason.as_str(), error.field.as_str()),
        ("ENUM_VALUE_UNKNOWN", "verification_method")
    );
}

async fn the_clients_request_id_is_echoed_and_used_in_refusals(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut request = tonic::Request::new(ResolveRequest {
        citizen_id: "123".into(),
        purpose: "p".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-request-id", "payroll-2026-12:line-42".parse().unwrap());
    let status = app
        .resolver(Some(PAYER))
        .resolve(request)
        .await
        .unwrap_err();
    assert_eq!(
        status.metadata().get("x-request-id").unwrap(),
        "payroll-2026-12:line-42"
    );
    let details = status.get_error_details();
    assert_eq!(
        details.request_info().map(|r| r.request_id.as_str()),
        Some("payroll-2026-12:line-42")
    );
    // An id that could forge a log line is replaced by one of the server's own.
    let mut request = tonic::Request::new(ResolveRequest::default());
    request
        .metadata_mut()
        .insert("x-request-id", "a b\"c".parse().unwrap());
    let status = app
        .resolver(Some(PAYER))
        .resolve(request)
        .await
        .unwrap_err();
    let echoed = status
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(Uuid::parse_str(echoed).is_ok(), "{echoed}");
}

/// The proto's ErrorReason lists exactly the reasons the service emits, in the same order,
/// and each value's comment names the status code its reason is sent with.
#[test]
fn the_proto_error_reasons_are_exactly_the_services_reasons_with_their_status_codes() {
    let set = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
    let file = set
        .file
        .iter()
        .find(|f| f.package() == "payoutregistry.v1")
        .expect("the API's file");
    let (index, reasons) = file
        .enum_type
        .iter()
        .enumerate()
        .find(|(_, e)| e.name() == "ErrorReason")
        .expect("an ErrorReason enum");
    let names: Vec<&str> = reasons
        .value
        .iter()
        .map(|v| v.name().trim_start_matches("ERROR_REASON_"))
        .filter(|n| *n != "UNSPECIFIED")
        .collect();
    let rust: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        names, rust,
        "the proto and the service list the same reasons"
    );

    // Each value's leading comment starts with its status code (source info path:
    // enum_type = 5, index, value = 2, value index).
    let comments: HashMap<Vec<i32>, &str> = file
        .source_code_info
        .as_ref()
        .expect("comments in the descriptor")
        .location
        .iter()
        .map(|l| (l.path.clone(), l.leading_comments()))
        .collect();
    for (i, value) in reasons.value.iter().enumerate().skip(1) {
        let comment = comments
            .get(&vec![5, index as i32, 2, i as i32])
            .unwrap_or_else(|| panic!("{} has no comment", value.name()));
        let reason = Reason::parse(value.name().trim_start_matches("ERROR_REASON_")).unwrap();
        let code = match reason.category() {
            Category::InvalidArgument => "INVALID_ARGUMENT",
            Category::FailedPrecondition => "FAILED_PRECONDITION",
            Category::NotFound => "NOT_FOUND",
            Category::Aborted => "ABORTED",
            Category::AlreadyExists => "ALREADY_EXISTS",
            Category::OutOfRange => "OUT_OF_RANGE",
            Category::Unavailable => "UNAVAILABLE",
            Category::PermissionDenied => "PERMISSION_DENIED",
            Category::Unauthenticated => "UNAUTHENTICATED",
            Category::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Category::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Category::Internal => "INTERNAL",
        };
        assert!(
            comment.trim_start().starts_with(&format!("{code}.")),
            "{}: the comment should start with {code}.: {comment}",
            value.name()
        );
    }
}

async fn a_page_token_continues_only_the_list_that_issued_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let other = "079200100201";
    for n in 1..=3 {
        issuer_confirmed(&app, CITIZEN, &format!("00710002000{n:02}")).await;
    }
    issuer_confirmed(&app, other, "0071000200099").await;
    let list = |citizen: &str, token: &str| {
        let request = ListCitizenAccountsRequest {
            citizen_id: citizen.into(),
            page_size: 2,
            page_token: token.into(),
            purpose: "paging".into(),
            ..Default::default()
        };
        let mut registry = app.registry(Some(ADMIN));
        async move { registry.list_citizen_accounts(request).await }
    };
    let first = list(CITIZEN, "").await.expect("first page").into_inner();
    assert_eq!(first.accounts.len(), 2);
    assert!(!first.next_page_token.is_empty());
    // Another citizen's list does not take this token.
    let status = refused(
        list(other, &first.next_page_token).await,
        Code::InvalidArgument,
        "PAGE_TOKEN_INVALID",
    );
    assert!(!status.message().contains(CITIZEN));
    let second = list(CITIZEN, &first.next_page_token)
        .await
        .expect("second page")
        .into_inner();
    assert_eq!(second.accounts.len(), 1);
    assert!(second.next_page_token.is_empty(), "the last page");
    let mut ids: Vec<String> = first
        .accounts
        .iter()
        .chain(&second.accounts)
        .map(|a| a.account_id.clone())
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), 3, "every account once, across the pages");
    // A negative page size is refused.
    let mut request = ListCitizenAccountsRequest {
        citizen_id: CITIZEN.into(),
        page_size: -1,
        purpose: "paging".into(),
        ..Default::default()
    };
    refused(
        app.registry(Some(ADMIN))
            .list_citizen_accounts(request.clone())
            .await,
        Code::InvalidArgument,
        "PAGE_SIZE_INVALID",
    );
    request.page_size = 0;
    assert_eq!(
        app.registry(Some(ADMIN))
            .list_citizen_accounts(request)
            .await
            .expect("the default page size")
            .into_inner()
            .accounts
            .len(),
        3
    );
}
