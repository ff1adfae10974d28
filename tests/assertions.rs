//! Who may vouch for what, end to end: every assertion about an account counts only from
//! the party entitled to make it (SECURITY.md, "Who may vouch").
//!
//! The server requires client certificates; every client here is identified by its own
//! certificate: a provincial welfare office (no binding), Vietcombank's client (bound to
//! 970436), VietinBank's (bound to 970415), the commune police (`verify.in_person`), the
//! social insurance agency's payroll (a payer), the population platform, VNeID
//! (`citizen.self`) and an auditor. The account under test is always a Vietcombank
//! account, so Vietcombank is its provider and VietinBank is merely *a* bank.
//!
//! The expected outcome of each (method, client, RPC) comes from [`entitled`], written
//! from the rules and not from the code; each refusal must be PERMISSION_DENIED with
//! ASSERTION_NOT_ALLOWED naming the method, and must leave the registry as it was.

mod common;

use common::{
    feed_on, population_on, refused, registry_on, resolver_on, Backend, TestApp, AUDITOR_CERT,
    FEED_CERT, OFFICE_CERT, PAYER_CERT, POLICE_CERT, SYNC_CERT, VIETCOMBANK_CERT, VIETINBANK_CERT,
    VNEID, VNEID_CERT,
};
use payout_registry::proto::{
    Account, AccountChange, AccountKind, AccountRecord, AccountStatus, Capacity, CitizenRecord,
    CitizenStatus, GetAccountHistoryRequest, GetAccountRequest, LinkAccountRequest,
    ListAccessLogRequest, ListCitizenAccountsRequest, ListDuplicateClaimsRequest,
    PayoutFailureCode, RejectAccountRequest, ReportPayoutFailureRequest, ResolveRequest,
    SubscribeRequest, SyncAccountsRequest, Verification, VerificationMethod, VerifyAccountRequest,
};
use tonic::Code;
use uuid::Uuid;

on_both_backends!(
    each_verification_method_is_accepted_only_from_the_party_entitled_to_it,
    a_verification_at_link_time_follows_the_same_rules_and_a_refusal_links_nothing,
    a_holder_name_typed_by_an_office_is_declared_and_never_satisfies_name_match,
    only_the_provider_or_a_payer_rejects_an_account,
    a_provider_reports_only_its_account_closed_and_a_payer_reports_any_failure,
    population_sync_vouches_for_what_vneid_relays_and_is_recorded_as_such,
    the_change_feed_says_who_vouched_and_as_what,
    vneid_reads_only_the_citizen_it_acts_for,
);

/// The citizen: registered by the population platform as NGUYEN VAN AN (Hà Nội, 1985).
const CITIZEN: &str = "001085000001";
const REGISTERED_NAME: &str = "Nguyễn Văn An";
/// Vietcombank's NAPAS BIN: the provider of every account under test.
const VIETCOMBANK_BIN: &str = "970436";

/// The clients that may call VerifyAccount, with what their configuration grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Party {
    /// accounts.write/verify, no binding.
    Office,
    /// bound to 970436: the account's provider.
    Vietcombank,
    /// bound to 970415: a bank, not this account's.
    Vietinbank,
    /// verify.in_person.
    Police,
}

impl Party {
    const ALL: [Party; 4] = [
        Party::Office,
        Party::Vietcombank,
        Party::Vietinbank,
        Party::Police,
    ];

    fn cert(self) -> &'static str {
        match self {
            Party::Office => OFFICE_CERT,
            Party::Vietcombank => VIETCOMBANK_CERT,
            Party::Vietinbank => VIETINBANK_CERT,
            Party::Police => POLICE_CERT,
        }
    }
}

const METHODS: [VerificationMethod; 4] = [
    VerificationMethod::IssuerConfirmed,
    VerificationMethod::NameMatch,
    VerificationMethod::InPerson,
    VerificationMethod::VneidDeclared,
];

/// The rules, as the issue states them: ISSUER_CONFIRMED and NAME_MATCH only from the
/// account's provider; IN_PERSON only from a verifier; VNEID_DECLARED never through the
/// registry (only population sync). The capacity it is recorded in, when entitled.
fn entitled(party: Party, method: VerificationMethod) -> Option<Capacity> {
    use VerificationMethod::*;
    match (method, party) {
        (IssuerConfirmed | NameMatch, Party::Vietcombank) => Some(Capacity::Provider),
        (InPerson, Party::Police) => Some(Capacity::Verifier),
        _ => None,
    }
}

fn registry(app: &TestApp, cert: &str) -> common::Registry {
    registry_on(app.tls().channel(app, Some(cert)), None)
}

fn oversight(app: &TestApp, cert: &str) -> common::Overseer {
    common::oversight_on(app.tls().channel(app, Some(cert)), None)
}

async fn spawn(backend: Backend) -> TestApp {
    let app = TestApp::builder(backend)
        .requiring_client_certificates()
        .spawn()
        .await;
    register_citizen(&app, CITIZEN, REGISTERED_NAME).await;
    app
}

/// The population platform registers a citizen with a name (NAME_MATCH needs one).
async fn register_citizen(app: &TestApp, citizen: &str, name: &str) {
    let record = CitizenRecord {
        record_id: format!("citizen-{citizen}"),
        version: 1,
        citizen_id: citizen.into(),
        full_name: name.into(),
        status: CitizenStatus::Active.into(),
        ..Default::default()
    };
    let mut population = population_on(app.tls().channel(app, Some(SYNC_CERT)), None);
    let requests = vec![payout_registry::proto::SyncCitizensRequest {
        record: Some(record),
    }];
    let acks = population
        .sync_citizens(tokio_stream::iter(requests))
        .await
        .expect("stream")
        .into_inner();
    let acks = common::all_acks(acks).await;
    assert_eq!(acks.last().map(|a| a.applied), Some(1), "{acks:?}");
}

fn link_request(citizen: &str, number: &str) -> LinkAccountRequest {
    LinkAccountRequest {
        idempotency_key: Uuid::new_v4().to_string(),
        citizen_id: citizen.into(),
        kind: AccountKind::BankAccount.into(),
        provider_code: VIETCOMBANK_BIN.into(),
        account_ref: number.into(),
        reason: "assertion test".into(),
        ..Default::default()
    }
}

fn evidence(method: VerificationMethod) -> Verification {
    Verification {
        method: method.into(),
        evidence_ref: format!("evidence for {}", method.as_str_name()),
        ..Default::default()
    }
}

/// The office links a pending Vietcombank account; answers it.
async fn pending_account(app: &TestApp, number: &str) -> Account {
    pending_account_of(app, CITIZEN, number).await
}

async fn pending_account_of(app: &TestApp, citizen: &str, number: &str) -> Account {
    registry(app, OFFICE_CERT)
        .link_account(link_request(citizen, number))
        .await
        .expect("the office links a pending account")
        .into_inner()
        .account
        .expect("account")
}

async fn account_now(app: &TestApp, id: &str) -> Account {
    registry(app, OFFICE_CERT)
        .get_account(GetAccountRequest {
            account_id: id.into(),
            purpose: "assertion test".into(),
            min_position: 0,
        })
        .await
        .expect("get account")
        .into_inner()
        .account
        .expect("account")
}

async fn history(app: &TestApp, id: &str) -> Vec<payout_registry::proto::AccountHistoryEntry> {
    registry(app, OFFICE_CERT)
        .get_account_history(GetAccountHistoryRequest {
            account_id: id.into(),
            page_size: 100,
            purpose: "assertion test".into(),
            ..Default::default()
        })
        .await
        .expect("history")
        .into_inner()
        .entries
}

/// An enum value's name as messages write it (without its enum's prefix).
fn short(name: &str) -> &str {
    ["VERIFICATION_METHOD_", "PAYOUT_FAILURE_CODE_"]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name)
}

/// Asserts an assertion was refused as not allowed, naming `what`.
#[track_caller]
fn not_allowed<T: std::fmt::Debug>(result: Result<T, tonic::Status>, what: &str) {
    let status = refused(result, Code::PermissionDenied, "ASSERTION_NOT_ALLOWED");
    assert!(
        status.message().contains(what),
        "the refusal names {what}: {}",
        status.message()
    );
}

fn verify_request(account: &Account, method: VerificationMethod) -> VerifyAccountRequest {
    VerifyAccountRequest {
        idempotency_key: Uuid::new_v4().to_string(),
        account_id: account.account_id.clone(),
        verification: Some(evidence(method)),
        // NAME_MATCH needs the holder name the provider reports; the others ignore it
        // for matching (and keep it as declared when not the provider's).
        holder_name: if method == VerificationMethod::NameMatch {
            REGISTERED_NAME.into()
        } else {
            String::new()
        },
        reason: "assertion test".into(),
        ..Default::default()
    }
}

async fn each_verification_method_is_accepted_only_from_the_party_entitled_to_it(backend: Backend) {
    let app = spawn(backend).await;
    let mut number = 0;
    for method in METHODS {
        for party in Party::ALL {
            number += 1;
            // A citizen per case: at most 10 open accounts each.
            let citizen = format!("0010870{number:05}");
            register_citizen(&app, &citizen, REGISTERED_NAME).await;
            let account = pending_account_of(&app, &citizen, &format!("00710{number:08}")).await;
            let answer = registry(&app, party.cert())
                .verify_account(verify_request(&account, method))
                .await;
            match entitled(party, method) {
                Some(capacity) => {
                    let verified = answer
                        .unwrap_or_else(|s| panic!("{party:?} verifies {method:?}: {s:?}"))
                        .into_inner()
                        .account
                        .expect("account");
                    assert_eq!(verified.status(), AccountStatus::Verified);
                    let v = verified.verification.expect("verification");
                    assert_eq!(v.method(), method);
                    assert_eq!(v.capacity(), capacity, "{party:?} {method:?}");
                    assert_eq!(v.verified_by, party.cert(), "who vouched is recorded");
                }
                None => {
                    not_allowed(answer, short(method.as_str_name()));
                    let now = account_now(&app, &account.account_id).await;
                    assert_eq!(
                        now.status(),
                        AccountStatus::PendingVerification,
                        "{party:?} {method:?} changed nothing"
                    );
                    assert_eq!(now.version, 1);
                    assert_eq!(history(&app, &account.account_id).await.len(), 1);
                }
            }
        }
    }
}

async fn a_verification_at_link_time_follows_the_same_rules_and_a_refusal_links_nothing(
    backend: Backend,
) {
    let app = spawn(backend).await;
    let mut number = 0;
    for method in METHODS {
        for party in Party::ALL {
            number += 1;
            let citizen = format!("0010860{number:05}");
            register_citizen(&app, &citizen, REGISTERED_NAME).await;
            let request = LinkAccountRequest {
                verification: Some(evidence(method)),
                holder_name: REGISTERED_NAME.into(),
                ..link_request(&citizen, &format!("00720{number:08}"))
            };
            let answer = registry(&app, party.cert()).link_account(request).await;
            let accounts = registry(&app, OFFICE_CERT)
                .list_citizen_accounts(ListCitizenAccountsRequest {
                    citizen_id: citizen.clone(),
                    include_closed: true,
                    purpose: "assertion test".into(),
                    ..Default::default()
                })
                .await
                .expect("list")
                .into_inner()
                .accounts;
            match entitled(party, method) {
                Some(capacity) => {
                    let linked = answer
                        .unwrap_or_else(|s| panic!("{party:?} links {method:?}: {s:?}"))
                        .into_inner()
                        .account
                        .expect("account");
                    assert_eq!(linked.status(), AccountStatus::Verified);
                    assert_eq!(
                        linked.verification.expect("verification").capacity(),
                        capacity
                    );
                    assert_eq!(accounts.len(), 1);
                }
                None => {
                    not_allowed(answer, short(method.as_str_name()));
                    assert!(accounts.is_empty(), "{party:?} {method:?} linked nothing");
                }
            }
        }
    }
    // No refusal recorded anything, not even a duplicate claim.
    let claims = oversight(&app, AUDITOR_CERT)
        .list_duplicate_claims(ListDuplicateClaimsRequest::default())
        .await
        .expect("claims")
        .into_inner()
        .claims;
    assert!(claims.is_empty(), "{claims:?}");
}

async fn a_holder_name_typed_by_an_office_is_declared_and_never_satisfies_name_match(
    backend: Backend,
) {
    let app = spawn(backend).await;
    // The office types the citizen's registered name as the holder name.
    let typed = registry(&app, OFFICE_CERT)
        .link_account(LinkAccountRequest {
            holder_name: REGISTERED_NAME.into(),
            ..link_request(CITIZEN, "0071000000777")
        })
        .await
        .expect("link")
        .into_inner()
        .account
        .expect("account");
    assert_eq!(typed.holder_name, "", "not the provider's statement");
    assert_eq!(typed.declared_holder_name, "NGUYEN VAN AN");

    // The bank confirms NAME_MATCH without reporting a name: the typed one does not count.
    let request = VerifyAccountRequest {
        holder_name: String::new(),
        ..verify_request(&typed, VerificationMethod::NameMatch)
    };
    let status = registry(&app, VIETCOMBANK_CERT)
        .verify_account(request)
        .await
        .expect_err("a declared name does not satisfy NAME_MATCH");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // A name the bank reports that differs from the registered one is a mismatch.
    let request = VerifyAccountRequest {
        holder_name: "NGUYEN VAN BINH".into(),
        ..verify_request(&typed, VerificationMethod::NameMatch)
    };
    refused(
        registry(&app, VIETCOMBANK_CERT)
            .verify_account(request)
            .await,
        Code::FailedPrecondition,
        "HOLDER_NAME_MISMATCH",
    );
    assert_eq!(
        account_now(&app, &typed.account_id).await.status(),
        AccountStatus::PendingVerification
    );

    // The bank reports the holder name on its own call: that one counts, and is kept.
    let verified = registry(&app, VIETCOMBANK_CERT)
        .verify_account(verify_request(&typed, VerificationMethod::NameMatch))
        .await
        .expect("the provider's own name matches")
        .into_inner()
        .account
        .expect("account");
    assert_eq!(verified.status(), AccountStatus::Verified);
    assert_eq!(verified.holder_name, "NGUYEN VAN AN");
    assert_eq!(verified.declared_holder_name, "NGUYEN VAN AN");
    assert_eq!(
        verified.verification.expect("verification").capacity(),
        Capacity::Provider
    );
}

async fn only_the_provider_or_a_payer_rejects_an_account(backend: Backend) {
    let app = spawn(backend).await;
    let reject = |account: &Account| RejectAccountRequest {
        idempotency_key: Uuid::new_v4().to_string(),
        account_id: account.account_id.clone(),
        reason: "the bank does not know this holder".into(),
        ..Default::default()
    };
    let account = pending_account(&app, "0071000000901").await;
    for cert in [OFFICE_CERT, VIETINBANK_CERT] {
        not_allowed(
            registry(&app, cert).reject_account(reject(&account)).await,
            "RejectAccount",
        );
        assert_eq!(
            account_now(&app, &account.account_id).await.status(),
            AccountStatus::PendingVerification
        );
    }
    for (cert, capacity, number) in [
        (VIETCOMBANK_CERT, Capacity::Provider, "0071000000902"),
        (PAYER_CERT, Capacity::Payer, "0071000000903"),
    ] {
        let account = pending_account(&app, number).await;
        let rejected = registry(&app, cert)
            .reject_account(reject(&account))
            .await
            .unwrap_or_else(|s| panic!("{cert} rejects: {s:?}"))
            .into_inner()
            .account
            .expect("account");
        assert_eq!(rejected.status(), AccountStatus::Rejected);
        let history = history(&app, &account.account_id).await;
        let last = history.last().expect("entries");
        assert_eq!(last.change(), AccountChange::Rejected);
        assert_eq!(last.actor, cert);
        assert_eq!(last.capacity(), capacity, "who rejected, and as what");
    }
}

/// A Vietcombank account verified by its provider (issuer-confirmed): paid at once.
async fn verified_account(app: &TestApp, number: &str) -> Account {
    let account = pending_account(app, number).await;
    registry(app, VIETCOMBANK_CERT)
        .verify_account(verify_request(
            &account,
            VerificationMethod::IssuerConfirmed,
        ))
        .await
        .expect("the provider confirms")
        .into_inner()
        .account
        .expect("account")
}

async fn a_provider_reports_only_its_account_closed_and_a_payer_reports_any_failure(
    backend: Backend,
) {
    let app = spawn(backend).await;
    let report = |account: &Account, code: PayoutFailureCode| ReportPayoutFailureRequest {
        idempotency_key: Uuid::new_v4().to_string(),
        account_id: account.account_id.clone(),
        failure_code: code.into(),
        payer_reference: "credit 2026-12".into(),
        reason: "credit returned".into(),
        ..Default::default()
    };
    let account = verified_account(&app, "0071000000911").await;
    let refusals = [
        (OFFICE_CERT, PayoutFailureCode::AccountClosedAtProvider),
        (VIETINBANK_CERT, PayoutFailureCode::AccountClosedAtProvider),
        (VIETCOMBANK_CERT, PayoutFailureCode::HolderNameMismatch),
        (VIETCOMBANK_CERT, PayoutFailureCode::AccountFrozen),
    ];
    for (cert, code) in refusals {
        not_allowed(
            registry(&app, cert)
                .report_payout_failure(report(&account, code))
                .await,
            short(code.as_str_name()),
        );
    }
    let still = account_now(&app, &account.account_id).await;
    assert_eq!(
        still.status(),
        AccountStatus::Verified,
        "nothing suspended it"
    );
    assert_eq!(still.version, account.version);

    for (cert, code, capacity, number) in [
        (
            VIETCOMBANK_CERT,
            PayoutFailureCode::AccountClosedAtProvider,
            Capacity::Provider,
            "0071000000912",
        ),
        (
            PAYER_CERT,
            PayoutFailureCode::HolderNameMismatch,
            Capacity::Payer,
            "0071000000913",
        ),
    ] {
        let account = verified_account(&app, number).await;
        let answer = registry(&app, cert)
            .report_payout_failure(report(&account, code))
            .await
            .unwrap_or_else(|s| panic!("{cert} reports {code:?}: {s:?}"))
            .into_inner();
        assert_eq!(
            answer.account.expect("account").status(),
            AccountStatus::Suspended
        );
        let history = history(&app, &account.account_id).await;
        let last = history.last().expect("entries");
        assert_eq!(last.change(), AccountChange::Suspended);
        assert_eq!(last.capacity(), capacity);
    }
}

async fn population_sync_vouches_for_what_vneid_relays_and_is_recorded_as_such(backend: Backend) {
    let app = spawn(backend).await;
    let records = [
        (VerificationMethod::IssuerConfirmed, "0071000000921"),
        (VerificationMethod::VneidDeclared, "0071000000922"),
        (VerificationMethod::NameMatch, "0071000000923"),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (confirmation, number))| SyncAccountsRequest {
        record: Some(AccountRecord {
            record_id: format!("declared-{i}"),
            version: 1,
            citizen_id: CITIZEN.into(),
            kind: AccountKind::BankAccount.into(),
            provider_code: VIETCOMBANK_BIN.into(),
            account_ref: number.into(),
            holder_name: REGISTERED_NAME.into(),
            verification_method: confirmation.into(),
            removed: false,
        }),
    });
    let acks = population_on(app.tls().channel(&app, Some(SYNC_CERT)), None)
        .sync_accounts(tokio_stream::iter(records.collect::<Vec<_>>()))
        .await
        .expect("stream")
        .into_inner();
    let acks = common::all_acks(acks).await;
    assert_eq!(acks.last().map(|a| a.applied), Some(3), "{acks:?}");

    let accounts = registry(&app, OFFICE_CERT)
        .list_citizen_accounts(ListCitizenAccountsRequest {
            citizen_id: CITIZEN.into(),
            purpose: "assertion test".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .accounts;
    assert_eq!(accounts.len(), 3);
    for a in &accounts {
        assert_eq!(a.status(), AccountStatus::Verified);
        let v = a.verification.as_ref().expect("verification");
        assert_eq!(v.capacity(), Capacity::PopulationSync, "{a:?}");
        assert_eq!(v.verified_by, SYNC_CERT);
        assert_eq!(
            a.holder_name, "NGUYEN VAN AN",
            "relayed as the provider's name"
        );
    }
    let methods: Vec<VerificationMethod> = accounts
        .iter()
        .map(|a| a.verification.as_ref().unwrap().method())
        .collect();
    assert!(methods.contains(&VerificationMethod::VneidDeclared));
}

async fn the_change_feed_says_who_vouched_and_as_what(backend: Backend) {
    let app = spawn(backend).await;
    let account = verified_account(&app, "0071000000931").await;
    let police_verified = pending_account(&app, "0071000000932").await;
    registry(&app, POLICE_CERT)
        .verify_account(verify_request(
            &police_verified,
            VerificationMethod::InPerson,
        ))
        .await
        .expect("the commune police verify in person");
    let head = common::sequenced_head(&app).await;
    let mut feed = feed_on(app.tls().channel(&app, Some(FEED_CERT)), None)
        .subscribe(SubscribeRequest {
            after_position: 0,
            event_types: vec![common::event_type("ACCOUNT_VERIFIED")],
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = common::next_event(&mut feed).await.expect("open");
        assert!(event.position <= head as u64);
        let account = common::event_account(&event)
            .cloned()
            .expect("account snapshot");
        seen.push((
            event.account_id.clone(),
            event.actor.clone(),
            event.actor_capacity(),
            account.verification.expect("verification").capacity(),
        ));
    }
    assert!(seen.contains(&(
        account.account_id.clone(),
        VIETCOMBANK_CERT.to_owned(),
        Capacity::Provider,
        Capacity::Provider
    )));
    assert!(seen.contains(&(
        police_verified.account_id.clone(),
        POLICE_CERT.to_owned(),
        Capacity::Verifier,
        Capacity::Verifier
    )));
}

/// A request from VNeID acting for `acting` (or for nobody).
fn acting_for<T>(message: T, acting: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(citizen) = acting {
        request
            .metadata_mut()
            .insert("x-acting-citizen-id", citizen.parse().unwrap());
    }
    request
        .metadata_mut()
        .insert("x-purpose", "citizen self-view".parse().unwrap());
    request
}

async fn vneid_reads_only_the_citizen_it_acts_for(backend: Backend) {
    let app = spawn(backend).await;
    let other = "001085000002";
    register_citizen(&app, other, "Trần Thị Bình").await;
    verified_account(&app, "0071000000941").await;
    // A payer read the citizen's data.
    resolver_on(app.tls().channel(&app, Some(common::PAYER_CERT)), None)
        .resolve(ResolveRequest {
            citizen_id: CITIZEN.into(),
            purpose: "monthly pension payroll".into(),
            ..Default::default()
        })
        .await
        .expect("resolve");

    let vneid = || registry(&app, VNEID_CERT);
    let mine = vneid()
        .list_citizen_accounts(acting_for(
            ListCitizenAccountsRequest {
                citizen_id: CITIZEN.into(),
                ..Default::default()
            },
            Some(CITIZEN),
        ))
        .await
        .expect("the citizen's own accounts")
        .into_inner();
    assert_eq!(mine.accounts.len(), 1);
    let log = oversight(&app, VNEID_CERT)
        .list_access_log(acting_for(
            ListAccessLogRequest {
                citizen_id: CITIZEN.into(),
                ..Default::default()
            },
            Some(CITIZEN),
        ))
        .await
        .expect("who read the citizen's data")
        .into_inner();
    assert!(log
        .entries
        .iter()
        .any(|e| e.client_id == PAYER_CERT && e.purpose == "monthly pension payroll"));

    // Another citizen, no acting citizen, a mismatched one: refused before any lookup.
    for (asked, acting) in [
        (other, Some(CITIZEN)),
        (CITIZEN, None),
        (CITIZEN, Some(other)),
    ] {
        refused(
            vneid()
                .list_citizen_accounts(acting_for(
                    ListCitizenAccountsRequest {
                        citizen_id: asked.into(),
                        ..Default::default()
                    },
                    acting,
                ))
                .await,
            Code::PermissionDenied,
            "NOT_ACTING_FOR_CITIZEN",
        );
        refused(
            oversight(&app, VNEID_CERT)
                .list_access_log(acting_for(
                    ListAccessLogRequest {
                        citizen_id: asked.into(),
                        ..Default::default()
                    },
                    acting,
                ))
                .await,
            Code::PermissionDenied,
            "NOT_ACTING_FOR_CITIZEN",
        );
    }
    // Nothing else is open to citizen.self.
    let status = vneid()
        .get_account(acting_for(GetAccountRequest::default(), Some(CITIZEN)))
        .await
        .expect_err("GetAccount needs accounts.read");
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = resolver_on(app.tls().channel(&app, Some(VNEID_CERT)), None)
        .resolve(acting_for(
            ResolveRequest {
                citizen_id: CITIZEN.into(),
                ..Default::default()
            },
            Some(CITIZEN),
        ))
        .await
        .expect_err("Resolve needs a resolve scope");
    assert_eq!(status.code(), Code::PermissionDenied);

    // On a server that also admits bearer tokens, VNeID's token alone does not assert a
    // citizen: acting for one needs the certificate.
    let token_app = TestApp::spawn(app.db.backend).await;
    register_citizen(&token_app, CITIZEN, REGISTERED_NAME).await;
    refused(
        token_app
            .registry(Some(VNEID))
            .list_citizen_accounts(acting_for(
                ListCitizenAccountsRequest {
                    citizen_id: CITIZEN.into(),
                    ..Default::default()
                },
                Some(CITIZEN),
            ))
            .await,
        Code::PermissionDenied,
        "NOT_ACTING_FOR_CITIZEN",
    );

    // The refused reads left no trace in the other citizen's access log.
    let others = oversight(&app, AUDITOR_CERT)
        .list_access_log(acting_for(
            ListAccessLogRequest {
                citizen_id: other.into(),
                purpose: "audit".into(),
                ..Default::default()
            },
            None,
        ))
        .await
        .expect("audit")
        .into_inner();
    assert!(
        others.entries.iter().all(|e| e.client_id != VNEID_CERT),
        "{:?}",
        others.entries
    );
}
