//! Population sync and batch resolution end to end: the police data-sync job's streams
//! (SyncCitizens, SyncAccounts) and a payroll run's BatchResolve, through real tonic
//! clients over TLS against the real server, on SQLite and on PostgreSQL.
//!
//! Citizen ids here are `0010850nnnnn`: province 001 (Hà Nội), a man born in 1985.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    population_on, sync_accounts, sync_citizens, Backend, TestApp, ADMIN, EXISTS, PAYER, SYNC,
};
use futures::StreamExt;
use payout_registry::proto::{
    AccountKind, AccountRecord, AccountStatus, BatchResolveRequest, CitizenRecord, CitizenStatus,
    LinkAccountRequest, ListCitizenAccountsRequest, ListDuplicateClaimsRequest, RecordError,
    ResolveOutcome, ResolveRequest, ResolveResponse, ResolveScope, SyncBatchResult,
    SyncCitizensRequest, VerificationMethod,
};
use tonic::Code;

on_both_backends!(
    citizen_records_apply_once_and_replays_answer_applied_while_older_versions_are_stale,
    an_account_refusal_sent_again_is_answered_with_the_same_reason_field_and_message,
    an_applied_account_record_sent_again_is_answered_applied_and_writes_nothing,
    a_citizen_first_seen_by_a_record_is_created_only_when_the_record_is_applied,
    a_citizen_refusal_sent_again_is_answered_with_the_same_refusal,
    a_refusal_recorded_without_its_message_is_repeated_with_a_message_that_says_so,
    death_stops_payment_from_its_commit_and_a_newer_record_can_correct_it,
    a_bad_record_is_rejected_alone_and_its_neighbours_are_applied,
    legacy_cmnd_numbers_resolve_to_their_citizen_wherever_an_id_is_looked_up,
    declared_accounts_follow_the_verification_and_one_holder_rules,
    a_cut_stream_resumes_from_its_last_acknowledgement_without_double_application,
    a_client_that_waits_for_each_acknowledgement_before_sending_more_gets_it,
    batch_resolve_answers_every_request_in_order_with_its_correlation_id,
    batch_resolve_slows_down_for_a_slow_reader_instead_of_buffering,
    the_streams_require_their_scopes,
    a_stream_beside_unary_writes_commits_small_batches_one_at_a_time,
    a_stream_commits_batches_of_at_most_the_configured_size,
);

fn cid(n: u32) -> String {
    format!("0010850{n:05}")
}

fn citizen(record: &str, version: i64, n: u32, name: &str) -> CitizenRecord {
    CitizenRecord {
        record_id: record.into(),
        version,
        citizen_id: cid(n),
        full_name: name.into(),
        date_of_birth: common::date("1985-04-12"),
        status: CitizenStatus::Active.into(),
        ..Default::default()
    }
}

fn deceased(mut r: CitizenRecord, on: &str) -> CitizenRecord {
    r.status = CitizenStatus::Deceased.into();
    r.date_of_death = common::date(on);
    r
}

fn bank(
    record: &str,
    version: i64,
    n: u32,
    number: &str,
    confirmation: VerificationMethod,
) -> AccountRecord {
    AccountRecord {
        record_id: record.into(),
        version,
        citizen_id: cid(n),
        kind: AccountKind::BankAccount.into(),
        provider_code: "970436".into(),
        account_ref: number.into(),
        holder_name: "NGUYEN VAN AN".into(),
        verification_method: confirmation.into(),
        removed: false,
    }
}

/// The counts after the last acknowledgement: (committed, applied, stale, rejected).
fn totals(acks: &[SyncBatchResult]) -> (u64, u64, u64, u64) {
    let last = acks.last().expect("at least one ack");
    (
        last.records_committed,
        last.applied,
        last.stale,
        last.rejected,
    )
}

/// Every record refused on a stream, in order.
fn errors(acks: &[SyncBatchResult]) -> Vec<RecordError> {
    acks.iter().flat_map(|a| a.errors.iter().cloned()).collect()
}

/// The rows of every table a sync batch may write, and the time of the last ledger write:
/// equal before and after a batch that changed nothing (move the test clock in between,
/// so a rewritten ledger entry shows).
async fn footprint(app: &TestApp) -> Vec<(&'static str, i64)> {
    let mut out = Vec::new();
    for table in [
        "citizens",
        "citizen_history",
        "citizen_aliases",
        "accounts",
        "account_history",
        "preferences",
        "duplicate_claims",
        "events",
        "sync_records",
    ] {
        let rows = app.db.count(&format!("SELECT COUNT(*) FROM {table}")).await;
        out.push((table, rows));
    }
    let synced = app
        .db
        .count("SELECT MAX(synced_at) FROM sync_records")
        .await;
    out.push(("last ledger write", synced));
    out
}

/// Resolves at the feed's head: once every committed change is numbered, from state
/// that includes them all (a payer's cache of an instance may otherwise trail by the feed
/// lag; tests/consistency.rs tests that bound).
async fn resolve(app: &TestApp, citizen: &str) -> ResolveResponse {
    let head = common::sequenced_head(app).await as u64;
    app.resolver(Some(PAYER))
        .resolve(ResolveRequest {
            citizen_id: citizen.into(),
            min_position: head,
            ..Default::default()
        })
        .await
        .expect("resolve")
        .into_inner()
}

fn outcome(r: &ResolveResponse) -> ResolveOutcome {
    ResolveOutcome::try_from(r.outcome).unwrap()
}

async fn citizen_records_apply_once_and_replays_answer_applied_while_older_versions_are_stale(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let first = vec![
        citizen("c1", 10, 1, "Nguyễn Văn An"),
        citizen("c2", 10, 2, "Trần Thị Bình"),
        citizen("c3", 10, 3, "Lê Văn Cường"),
    ];
    let acks = sync_citizens(&app, first.clone()).await;
    assert_eq!(totals(&acks), (3, 3, 0, 0));
    assert_eq!(acks.last().unwrap().last_record_id, "c3");

    // The same stream again, and an older version of c1: nothing changes. The replays are
    // answered with their recorded outcome (applied), the older version is stale.
    let mut again = first.clone();
    again.push(citizen("c1", 9, 1, "Wrong Name"));
    assert_eq!(totals(&sync_citizens(&app, again).await), (4, 3, 1, 0));
    let history = app
        .db
        .count(&format!(
            "SELECT COUNT(*) FROM citizen_history WHERE citizen_id = '{}'",
            cid(1)
        ))
        .await;
    assert_eq!(history, 1, "a replay must not append history");

    // A newer version replaces the facts: NAME_MATCH now compares with the new name.
    assert_eq!(
        totals(&sync_citizens(&app, vec![citizen("c1", 11, 1, "Nguyễn Văn Ân Mới")]).await),
        (1, 1, 0, 0)
    );
    let acks = sync_accounts(
        &app,
        vec![AccountRecord {
            holder_name: "NGUYEN VAN AN MOI".into(),
            ..bank("a1", 1, 1, "0011000000001", VerificationMethod::NameMatch)
        }],
    )
    .await;
    assert_eq!(totals(&acks), (1, 1, 0, 0), "{acks:?}");
    assert_eq!(
        outcome(&resolve(&app, &cid(1)).await),
        ResolveOutcome::Resolved
    );
}

async fn an_account_refusal_sent_again_is_answered_with_the_same_reason_field_and_message(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    sync_citizens(
        &app,
        vec![
            citizen("c1", 1, 700, "Nguyễn Văn An"),
            citizen("c2", 1, 701, "Hoàng Văn Bảo"),
        ],
    )
    .await;
    // Citizen 701 declares the account verified for citizen 700: refused, and recorded as a
    // duplicate claim.
    let claim = bank(
        "x1",
        2,
        701,
        "0011000000700",
        VerificationMethod::IssuerConfirmed,
    );
    let acks = sync_accounts(
        &app,
        vec![
            bank(
                "h1",
                1,
                700,
                "0011000000700",
                VerificationMethod::IssuerConfirmed,
            ),
            claim.clone(),
        ],
    )
    .await;
    assert_eq!(totals(&acks), (2, 1, 0, 1), "{acks:?}");
    let refused = errors(&acks);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].record_id, "x1");
    assert_eq!(refused[0].reason, "ACCOUNT_OWNED_BY_ANOTHER_CITIZEN");
    assert_eq!(refused[0].field, "account_ref");
    assert!(!refused[0].message.is_empty());
    let recorded = app
        .db
        .count(
            "SELECT COUNT(*) FROM sync_records WHERE record_id = 'x1' AND version = 2 \
             AND outcome = 'ACCOUNT_OWNED_BY_ANOTHER_CITIZEN' \
             AND rejected_field = 'account_ref' AND rejected_message IS NOT NULL",
        )
        .await;
    assert_eq!(recorded, 1, "the ledger keeps the refusal in full");
    let before = footprint(&app).await;
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM duplicate_claims").await,
        1
    );

    // Sent again, as a client resuming a cut stream does with a batch committed after its
    // last acknowledgement: the same refusal, not STALE, and nothing written (no second
    // duplicate claim, no event, the ledger untouched).
    app.clock.advance(Duration::from_secs(60));
    let acks = sync_accounts(&app, vec![claim.clone()]).await;
    assert_eq!(totals(&acks), (1, 0, 0, 1), "{acks:?}");
    assert_eq!(
        errors(&acks),
        refused,
        "the same record id, reason, field and message"
    );
    assert_eq!(footprint(&app).await, before, "a replay changes nothing");

    // An older version of the record is still STALE.
    let acks = sync_accounts(
        &app,
        vec![AccountRecord {
            version: 1,
            ..claim
        }],
    )
    .await;
    assert_eq!(totals(&acks), (1, 0, 1, 0), "{acks:?}");
    assert!(errors(&acks).is_empty());
    assert_eq!(
        footprint(&app).await,
        before,
        "a stale record changes nothing"
    );
}

async fn a_citizen_first_seen_by_a_record_is_created_only_when_the_record_is_applied(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    // Neither 720 nor 721 nor 722 is known to the registry. 720 declares an account and
    // is created by it; 721 claims the account 720 now holds and 722 names a provider the
    // reference data lacks: both are refused, and neither citizen is created.
    let mut unknown_provider = bank(
        "u1",
        1,
        722,
        "0011000000722",
        VerificationMethod::Unspecified,
    );
    unknown_provider.provider_code = "999999".into();
    let acks = sync_accounts(
        &app,
        vec![
            bank(
                "h1",
                1,
                720,
                "0011000000720",
                VerificationMethod::IssuerConfirmed,
            ),
            bank(
                "c1",
                1,
                721,
                "0011000000720",
                VerificationMethod::IssuerConfirmed,
            ),
            unknown_provider,
        ],
    )
    .await;
    assert_eq!(totals(&acks), (3, 1, 0, 2), "{acks:?}");
    let exists = |n: u32| {
        format!(
            "SELECT COUNT(*) FROM citizens WHERE citizen_id = '{}'",
            cid(n)
        )
    };
    assert_eq!(app.db.count(&exists(720)).await, 1);
    assert_eq!(
        app.db.count(&exists(721)).await,
        0,
        "a refused claim creates no citizen"
    );
    assert_eq!(
        app.db.count(&exists(722)).await,
        0,
        "a refused record creates no citizen"
    );
    let first_seen = app
        .db
        .count(&format!(
            "SELECT COUNT(*) FROM citizen_history WHERE citizen_id = '{}' \
             AND status = 'ACTIVE' AND reason = 'first seen when an account was declared'",
            cid(720)
        ))
        .await;
    assert_eq!(first_seen, 1, "the created citizen's first history entry");
    assert_eq!(
        outcome(&resolve(&app, &cid(720)).await),
        ResolveOutcome::Resolved
    );
    assert_eq!(
        outcome(&resolve(&app, &cid(721)).await),
        ResolveOutcome::UnknownCitizen
    );
}

async fn an_applied_account_record_sent_again_is_answered_applied_and_writes_nothing(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    sync_citizens(&app, vec![citizen("c1", 1, 710, "Nguyễn Văn An")]).await;
    let linked = bank(
        "a1",
        1,
        710,
        "0011000000710",
        VerificationMethod::Unspecified,
    );
    let verified = bank(
        "a1",
        2,
        710,
        "0011000000710",
        VerificationMethod::IssuerConfirmed,
    );
    let acks = sync_accounts(&app, vec![linked.clone(), verified.clone()]).await;
    assert_eq!(totals(&acks), (2, 2, 0, 0), "{acks:?}");
    let before = footprint(&app).await;
    let paid = resolve(&app, &cid(710)).await;
    assert_eq!(outcome(&paid), ResolveOutcome::Resolved);

    // The last version again: APPLIED, as the ledger recorded it, with nothing written.
    app.clock.advance(Duration::from_secs(60));
    let acks = sync_accounts(&app, vec![verified]).await;
    assert_eq!(totals(&acks), (1, 1, 0, 0), "{acks:?}");
    assert!(errors(&acks).is_empty());
    assert_eq!(
        footprint(&app).await,
        before,
        "no event, history or ledger write"
    );

    // The earlier version: STALE.
    let acks = sync_accounts(&app, vec![linked]).await;
    assert_eq!(totals(&acks), (1, 0, 1, 0), "{acks:?}");
    assert_eq!(footprint(&app).await, before);
    let ledger = app
        .db
        .count(
            "SELECT COUNT(*) FROM sync_records WHERE record_id = 'a1' AND version = 2 \
             AND outcome = 'APPLIED' AND rejected_field IS NULL AND rejected_message IS NULL",
        )
        .await;
    assert_eq!(ledger, 1, "the ledger still holds version 2, applied");
    assert_eq!(resolve(&app, &cid(710)).await.account, paid.account);
}

async fn a_citizen_refusal_sent_again_is_answered_with_the_same_refusal(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let holder = CitizenRecord {
        legacy_ids: vec!["012345678".into()],
        ..citizen("c1", 5, 720, "Võ Văn Tài")
    };
    let taker = CitizenRecord {
        legacy_ids: vec!["012345678".into()],
        ..citizen("c2", 5, 721, "Đỗ Thị Hoa")
    };
    let acks = sync_citizens(&app, vec![holder.clone(), taker.clone()]).await;
    assert_eq!(totals(&acks), (2, 1, 0, 1), "{acks:?}");
    let refused = errors(&acks);
    assert_eq!(refused.len(), 1);
    assert_eq!(
        (refused[0].record_id.as_str(), refused[0].reason.as_str()),
        ("c2", "LEGACY_ID_TAKEN")
    );
    assert_eq!(refused[0].field, "legacy_ids");
    let before = footprint(&app).await;

    // Both again: each answered with its recorded outcome, nothing written.
    app.clock.advance(Duration::from_secs(60));
    let acks = sync_citizens(&app, vec![holder, taker.clone()]).await;
    assert_eq!(totals(&acks), (2, 1, 0, 1), "{acks:?}");
    assert_eq!(errors(&acks), refused);
    assert_eq!(footprint(&app).await, before, "a replay changes nothing");

    // Older versions are STALE: of the same record id, and of another record id whose
    // version is not newer than the citizen's stored one.
    let acks = sync_citizens(
        &app,
        vec![
            CitizenRecord {
                version: 4,
                ..taker
            },
            citizen("c3", 5, 720, "Wrong Name"),
            citizen("c4", 4, 720, "Wrong Name"),
        ],
    )
    .await;
    assert_eq!(totals(&acks), (3, 0, 3, 0), "{acks:?}");
    assert_eq!(
        footprint(&app).await,
        before,
        "stale records change nothing"
    );
}

async fn a_refusal_recorded_without_its_message_is_repeated_with_a_message_that_says_so(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let holder = CitizenRecord {
        legacy_ids: vec!["087654321".into()],
        ..citizen("c1", 1, 730, "Võ Văn Tài")
    };
    let taker = CitizenRecord {
        legacy_ids: vec!["087654321".into()],
        ..citizen("c2", 1, 731, "Đỗ Thị Hoa")
    };
    let acks = sync_citizens(&app, vec![holder, taker.clone()]).await;
    assert_eq!(totals(&acks), (2, 1, 0, 1), "{acks:?}");
    // As a ledger entry written before the refusal's field and message were kept.
    app.db
        .execute_raw(
            "UPDATE sync_records SET rejected_field = NULL, rejected_message = NULL \
             WHERE record_id = 'c2'",
        )
        .await
        .unwrap();
    let before = footprint(&app).await;

    let acks = sync_citizens(&app, vec![taker]).await;
    assert_eq!(totals(&acks), (1, 0, 0, 1), "{acks:?}");
    assert_eq!(
        errors(&acks),
        vec![RecordError {
            record_id: "c2".into(),
            reason: "LEGACY_ID_TAKEN".into(),
            field: String::new(),
            message: "refused earlier for LEGACY_ID_TAKEN; the recorded outcome is repeated".into(),
        }]
    );
    assert_eq!(footprint(&app).await, before);
}

async fn death_stops_payment_from_its_commit_and_a_newer_record_can_correct_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    sync_citizens(
        &app,
        vec![
            citizen("c10", 1, 10, "Nguyễn Văn An"),
            citizen("c11", 1, 11, "Nguyễn Văn An"),
        ],
    )
    .await;
    let acks = sync_accounts(
        &app,
        vec![
            bank(
                "a10",
                1,
                10,
                "0011000000010",
                VerificationMethod::IssuerConfirmed,
            ),
            bank(
                "a11",
                1,
                11,
                "0011000000011",
                VerificationMethod::IssuerConfirmed,
            ),
        ],
    )
    .await;
    assert_eq!(totals(&acks), (2, 2, 0, 0));
    let paid = resolve(&app, &cid(10)).await;
    assert_eq!(outcome(&paid), ResolveOutcome::Resolved);

    let acks = sync_citizens(
        &app,
        vec![
            deceased(citizen("c10", 2, 10, "Nguyễn Văn An"), "2026-10-01"),
            CitizenRecord {
                status: CitizenStatus::IdRevoked.into(),
                ..citizen("c11", 2, 11, "Nguyễn Văn An")
            },
        ],
    )
    .await;
    assert_eq!(totals(&acks), (2, 2, 0, 0));
    // The ack came after the commit: from its position on, nothing is paid.
    assert_eq!(
        outcome(&resolve(&app, &cid(10)).await),
        ResolveOutcome::CitizenDeceased
    );
    assert_eq!(
        outcome(&resolve(&app, &cid(11)).await),
        ResolveOutcome::CitizenIdRevoked
    );
    let events = app
        .db
        .count("SELECT COUNT(*) FROM events WHERE event_type = 'CITIZEN_STATUS_CHANGED'")
        .await;
    assert_eq!(events, 2, "each status change is announced");
    // A late copy of the old ACTIVE record does not bring the citizen back...
    sync_citizens(&app, vec![citizen("c10", 1, 10, "Nguyễn Văn An")]).await;
    assert_eq!(
        outcome(&resolve(&app, &cid(10)).await),
        ResolveOutcome::CitizenDeceased
    );
    // ...but a newer one correcting an erroneous death does.
    sync_citizens(&app, vec![citizen("c10", 3, 10, "Nguyễn Văn An")]).await;
    let back = resolve(&app, &cid(10)).await;
    assert_eq!(outcome(&back), ResolveOutcome::Resolved);
    assert_eq!(back.account, paid.account);
}

async fn a_bad_record_is_rejected_alone_and_its_neighbours_are_applied(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut records = Vec::new();
    for n in 0..10u32 {
        records.push(citizen(&format!("ok{n}"), 1, 100 + n, "Phạm Thị Dung"));
    }
    // Bad ones in between: each refused with its record id and reason.
    records.insert(
        2,
        CitizenRecord {
            citizen_id: "999085000001".into(),
            ..citizen("bad-province", 1, 1, "X")
        },
    );
    records.insert(5, deceased(citizen("bad-death", 1, 200, "X"), ""));
    records.insert(7, citizen("bad-version", 0, 201, "X"));
    records.insert(
        9,
        CitizenRecord {
            date_of_birth: common::date("1990-01-01"),
            ..citizen("bad-birth", 1, 202, "X")
        },
    );
    records.push(CitizenRecord {
        legacy_ids: vec!["12345".into()],
        ..citizen("bad-cmnd", 1, 203, "X")
    });
    let acks = sync_citizens(&app, records).await;
    assert_eq!(totals(&acks), (15, 10, 0, 5));
    let mut errors: Vec<(String, String, String)> = acks
        .iter()
        .flat_map(|a| a.errors.iter())
        .map(|e| (e.record_id.clone(), e.reason.clone(), e.field.clone()))
        .collect();
    errors.sort();
    assert_eq!(
        errors,
        vec![
            (
                "bad-birth".into(),
                "DATE_INVALID".into(),
                "date_of_birth".into()
            ),
            (
                "bad-cmnd".into(),
                "LEGACY_ID_INVALID".into(),
                "legacy_ids".into()
            ),
            (
                "bad-death".into(),
                "FIELD_REQUIRED".into(),
                "date_of_death".into()
            ),
            (
                "bad-province".into(),
                "CITIZEN_ID_INVALID_PROVINCE".into(),
                "citizen_id".into()
            ),
            (
                "bad-version".into(),
                "SOURCE_VERSION_INVALID".into(),
                "version".into()
            ),
        ]
    );
    let applied = app
        .db
        .count("SELECT COUNT(*) FROM citizens WHERE source_version IS NOT NULL")
        .await;
    assert_eq!(
        applied, 10,
        "the good neighbours were applied, the bad ones not at all"
    );

    // Accounts: an unknown provider and an invalid number are refused; the rest applied.
    let acks = sync_accounts(
        &app,
        vec![
            bank(
                "a1",
                1,
                100,
                "0011000000100",
                VerificationMethod::IssuerConfirmed,
            ),
            AccountRecord {
                provider_code: "NOPE".into(),
                ..bank(
                    "a2",
                    1,
                    101,
                    "0011000000101",
                    VerificationMethod::IssuerConfirmed,
                )
            },
            bank("a3", 1, 102, "12", VerificationMethod::IssuerConfirmed),
            bank(
                "a4",
                1,
                103,
                "0011000000103",
                VerificationMethod::Unspecified,
            ),
        ],
    )
    .await;
    assert_eq!(totals(&acks), (4, 2, 0, 2));
    let reasons: Vec<&str> = acks
        .iter()
        .flat_map(|a| a.errors.iter())
        .map(|e| e.reason.as_str())
        .collect();
    assert_eq!(reasons, vec!["PROVIDER_UNKNOWN", "BANK_ACCOUNT_INVALID"]);
    assert_eq!(
        outcome(&resolve(&app, &cid(100)).await),
        ResolveOutcome::Resolved
    );
    assert_eq!(
        outcome(&resolve(&app, &cid(101)).await),
        ResolveOutcome::NoVerifiedAccount
    );
}

async fn legacy_cmnd_numbers_resolve_to_their_citizen_wherever_an_id_is_looked_up(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let acks = sync_citizens(
        &app,
        vec![
            CitizenRecord {
                legacy_ids: vec!["012345678".into(), "087654321".into()],
                ..citizen("c1", 1, 300, "Võ Văn Tài")
            },
            CitizenRecord {
                legacy_ids: vec!["012345678".into()],
                ..citizen("c2", 1, 301, "Đỗ Thị Hoa")
            },
        ],
    )
    .await;
    assert_eq!(totals(&acks), (2, 1, 0, 1));
    assert_eq!(acks[0].errors[0].record_id, "c2");
    assert_eq!(acks[0].errors[0].reason, "LEGACY_ID_TAKEN");
    sync_accounts(
        &app,
        vec![bank(
            "a1",
            1,
            300,
            "0011000000300",
            VerificationMethod::IssuerConfirmed,
        )],
    )
    .await;

    let by_id = resolve(&app, &cid(300)).await;
    let by_cmnd = resolve(&app, "087654321").await;
    assert_eq!(outcome(&by_cmnd), ResolveOutcome::Resolved);
    assert_eq!(by_cmnd.account, by_id.account);
    assert_eq!(by_cmnd.account.as_ref().unwrap().citizen_id, cid(300));
    assert_eq!(
        outcome(&resolve(&app, "099999999").await),
        ResolveOutcome::UnknownCitizen
    );

    let listed = app
        .registry(Some(common::MASKED))
        .list_citizen_accounts(ListCitizenAccountsRequest {
            citizen_id: "012345678".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.accounts.len(), 1);
    assert_eq!(listed.accounts[0].citizen_id, cid(300));
    // The read is logged under the citizen id, not the alias.
    let logged = app
        .db
        .count(&format!(
            "SELECT COUNT(*) FROM access_log WHERE citizen_id = '{}'",
            cid(300)
        ))
        .await;
    assert_eq!(logged, 3);
    // A malformed lookup is refused with the citizen id's rules.
    let err = app
        .resolver(Some(PAYER))
        .resolve(ResolveRequest {
            citizen_id: "12345678".into(),
            ..Default::default()
        })
        .await;
    common::refused(err, Code::InvalidArgument, "CITIZEN_ID_INVALID_LENGTH");
}

async fn declared_accounts_follow_the_verification_and_one_holder_rules(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    sync_citizens(
        &app,
        vec![
            citizen("c1", 1, 400, "Nguyễn Văn An"),
            citizen("c2", 1, 401, "Hoàng Văn Bảo"),
        ],
    )
    .await;
    let acks = sync_accounts(
        &app,
        vec![
            // Declared only: linked, not payable.
            bank(
                "d1",
                1,
                400,
                "0011000000400",
                VerificationMethod::Unspecified,
            ),
            // NAME_MATCH against the registered name "NGUYEN VAN AN": matches.
            AccountRecord {
                kind: AccountKind::Ewallet.into(),
                provider_code: "MOMO".into(),
                ..bank("d2", 1, 400, "0912000400", VerificationMethod::NameMatch)
            },
            // NAME_MATCH for the other citizen, whose name differs: refused.
            bank("d3", 1, 401, "0011000000401", VerificationMethod::NameMatch),
            // Another citizen claims the account verified for citizen 400: refused and recorded.
            AccountRecord {
                kind: AccountKind::Ewallet.into(),
                provider_code: "MOMO".into(),
                ..bank(
                    "d4",
                    1,
                    401,
                    "+84 912 000 400",
                    VerificationMethod::IssuerConfirmed,
                )
            },
        ],
    )
    .await;
    assert_eq!(totals(&acks), (4, 2, 0, 2), "{acks:?}");
    let reasons: Vec<(&str, &str)> = acks
        .iter()
        .flat_map(|a| a.errors.iter())
        .map(|e| (e.record_id.as_str(), e.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("d3", "HOLDER_NAME_MISMATCH"),
            ("d4", "ACCOUNT_OWNED_BY_ANOTHER_CITIZEN")
        ]
    );
    let claims = app
        .oversight(Some(common::AUDITOR))
        .list_duplicate_claims(ListDuplicateClaimsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(claims.claims.len(), 1);

    let list = |n: u32| {
        let app = &app;
        async move {
            app.registry(Some(common::MASKED))
                .list_citizen_accounts(ListCitizenAccountsRequest {
                    citizen_id: cid(n),
                    include_closed: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let accounts = list(400).await;
    let status_of = |provider: &str| {
        let a = accounts
            .accounts
            .iter()
            .find(|a| a.provider_code == provider)
            .unwrap();
        AccountStatus::try_from(a.status).unwrap()
    };
    assert_eq!(
        status_of("MOMO"),
        AccountStatus::Verified,
        "the wallet (first verified: the default)"
    );
    assert_eq!(accounts.accounts.len(), 2);
    let paid = resolve(&app, &cid(400)).await;
    assert_eq!(paid.account.as_ref().unwrap().provider_code, "MOMO");

    // A newer version brings the bank's confirmation; a replay of it in the same batch is
    // answered with its outcome (applied) and writes nothing; the withdrawal of the wallet
    // closes it and the bank account is paid instead once chosen.
    let acks = sync_accounts(
        &app,
        vec![
            bank(
                "d1",
                2,
                400,
                "0011000000400",
                VerificationMethod::IssuerConfirmed,
            ),
            bank(
                "d1",
                2,
                400,
                "0011000000400",
                VerificationMethod::IssuerConfirmed,
            ),
            AccountRecord {
                removed: true,
                kind: AccountKind::Ewallet.into(),
                provider_code: "MOMO".into(),
                ..bank("d2", 2, 400, "0912000400", VerificationMethod::NameMatch)
            },
        ],
    )
    .await;
    assert_eq!(totals(&acks), (3, 3, 0, 0), "{acks:?}");
    let accounts = list(400).await;
    let statuses: Vec<(String, AccountStatus)> = accounts
        .accounts
        .iter()
        .map(|a| {
            (
                a.provider_code.clone(),
                AccountStatus::try_from(a.status).unwrap(),
            )
        })
        .collect();
    assert!(
        statuses.contains(&("970436".into(), AccountStatus::Verified)),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&("MOMO".into(), AccountStatus::Closed)),
        "{statuses:?}"
    );
    assert_eq!(
        accounts.accounts.len(),
        2,
        "the record kept naming the same accounts"
    );
    // The default was the closed wallet: nothing verified is chosen until the citizen picks.
    assert_eq!(
        outcome(&resolve(&app, &cid(400)).await),
        ResolveOutcome::NoVerifiedAccount
    );
    // Each state is in the account's history, with the sync client as actor.
    let history = app
        .db
        .count("SELECT COUNT(*) FROM account_history WHERE actor = 'population-platform'")
        .await;
    // Wallet: linked, verified, closed; bank: linked, verified. Refusals wrote nothing.
    assert_eq!(history, 5);
}

async fn a_cut_stream_resumes_from_its_last_acknowledgement_without_double_application(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    const N: u32 = 2500;
    let records: Vec<CitizenRecord> = (0..N)
        .map(|n| citizen(&format!("r{n:05}"), 1, 1000 + n, "Bùi Văn Long"))
        .collect();
    // First attempt: its own connection, cut after the first acknowledgement while the
    // client is still sending.
    let channel = app.new_channel();
    let (tx, rx) = tokio::sync::mpsc::channel::<SyncCitizensRequest>(64);
    let mut acks = population_on(channel.clone(), Some(SYNC))
        .sync_citizens(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let to_send = records.clone();
    let sender = tokio::spawn(async move {
        for (i, r) in to_send.into_iter().enumerate() {
            if tx
                .send(SyncCitizensRequest { record: Some(r) })
                .await
                .is_err()
            {
                return;
            }
            if i == 1500 {
                // Keep the stream open, half-sent, until it is cut.
                std::future::pending::<()>().await;
            }
        }
    });
    let first = acks
        .message()
        .await
        .unwrap()
        .expect("an ack before the cut")
        .result
        .expect("a batch result");
    assert!(first.records_committed > 0);
    sender.abort();
    drop(acks);
    drop(channel);

    // Resume: everything after the last acknowledged record, on a new connection.
    let resume_from = first.records_committed as usize;
    assert_eq!(first.last_record_id, format!("r{:05}", resume_from - 1));
    let acks = sync_citizens(&app, records[resume_from..].to_vec()).await;
    let (committed, applied, stale, rejected) = totals(&acks);
    assert_eq!(committed as usize, N as usize - resume_from);
    assert_eq!(rejected, 0);
    // Whatever the cut stream committed after its last ack is answered with its recorded
    // outcome (applied) now, without being applied again (the history below).
    assert_eq!(stale, 0);
    assert_eq!(applied, committed);

    let citizens = app.db.count("SELECT COUNT(*) FROM citizens").await;
    let history = app.db.count("SELECT COUNT(*) FROM citizen_history").await;
    assert_eq!(citizens, N as i64, "no record lost");
    assert_eq!(history, N as i64, "no record applied twice");
}

async fn a_client_that_waits_for_each_acknowledgement_before_sending_more_gets_it(
    backend: Backend,
) {
    // A lock-step client: a full batch, then nothing more until its acknowledgement.
    // The server holds that batch's transaction in flight while it waits for the next
    // record; the acknowledgement must come from the commit, not from the next read.
    let app = TestApp::spawn(backend).await;
    const BATCH: u32 = 1000;
    let (tx, rx) = tokio::sync::mpsc::channel::<SyncCitizensRequest>(BATCH as usize);
    let mut acks = app
        .population(Some(SYNC))
        .sync_citizens(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for round in 0..3u32 {
        for n in round * BATCH..(round + 1) * BATCH {
            let record = citizen(&format!("r{n:05}"), 1, n, "Bùi Văn Long");
            tx.send(SyncCitizensRequest {
                record: Some(record),
            })
            .await
            .unwrap();
        }
        // On a loaded machine the records may trickle in slower than the server's
        // linger, which then commits part of the round on its own: several
        // acknowledgements are fine, as long as the last record sent is acknowledged
        // without another record after it.
        let sent = u64::from((round + 1) * BATCH);
        loop {
            let ack = tokio::time::timeout(Duration::from_secs(20), acks.message())
                .await
                .expect("the acknowledgement of every record sent, without more sent")
                .unwrap()
                .expect("an acknowledgement")
                .result
                .unwrap();
            assert!(ack.records_committed <= sent, "acknowledged unsent records");
            assert_eq!(
                ack.last_record_id,
                format!("r{:05}", ack.records_committed - 1)
            );
            if ack.records_committed == sent {
                break;
            }
        }
    }
    drop(tx);
    while acks.message().await.unwrap().is_some() {}
    assert_eq!(app.db.count("SELECT COUNT(*) FROM citizens").await, 3000);
    app.stop().await;
}

fn batch_request(correlation: &str, citizen: &str) -> BatchResolveRequest {
    BatchResolveRequest {
        correlation_id: correlation.into(),
        citizen_id: citizen.into(),
        ..Default::default()
    }
}

async fn batch_resolve_answers_every_request_in_order_with_its_correlation_id(backend: Backend) {
    let app = TestApp::builder(backend).ticking_clock().spawn().await;
    let mut citizens = Vec::new();
    let mut accounts = Vec::new();
    for n in 0..300u32 {
        let mut c = citizen(&format!("c{n}"), 1, 2000 + n, "Đặng Văn Minh");
        if n % 50 == 0 {
            c = deceased(c, "2026-01-01");
        }
        if n == 7 {
            c.legacy_ids = vec!["111222333".into()];
        }
        citizens.push(c);
        if n % 3 != 0 {
            accounts.push(bank(
                &format!("a{n}"),
                1,
                2000 + n,
                &format!("00220{:08}", n),
                VerificationMethod::IssuerConfirmed,
            ));
        }
    }
    sync_citizens(&app, citizens).await;
    sync_accounts(&app, accounts).await;

    // 2,500 requests: three passes over the population plus unknown, invalid and CMND ids.
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    let mut requests_naming = Vec::new();
    for i in 0..2500u32 {
        let n = i % 300;
        let (citizen, want) = match i % 11 {
            5 => (cid(9000 + i), Some(ResolveOutcome::UnknownCitizen)),
            9 => ("0010850ABCDE".to_owned(), None),
            10 => ("111222333".to_owned(), Some(ResolveOutcome::Resolved)),
            _ if n % 50 == 0 => (cid(2000 + n), Some(ResolveOutcome::CitizenDeceased)),
            _ if n % 3 == 0 => (cid(2000 + n), Some(ResolveOutcome::NoVerifiedAccount)),
            _ => (cid(2000 + n), Some(ResolveOutcome::Resolved)),
        };
        requests.push(batch_request(&format!("corr-{i}"), &citizen));
        requests_naming.push(if i % 11 == 10 { cid(2007) } else { citizen });
        expected.push(want);
    }
    let got = common::batch_resolve_all(&app, PAYER, requests).await;
    assert_eq!(got.len(), 2500);
    for (i, (r, want)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(
            r.correlation_id,
            format!("corr-{i}"),
            "answers come back in request order"
        );
        match want {
            Some(outcome_wanted) => {
                let result = r.result.as_ref().unwrap_or_else(|| panic!("{i}: {r:?}"));
                assert_eq!(outcome(result), *outcome_wanted, "request {i}");
                if *outcome_wanted == ResolveOutcome::Resolved {
                    let account = result.account.as_ref().unwrap();
                    assert!(
                        !account.account_ref.contains('*'),
                        "resolve.full sees the number"
                    );
                    if i % 11 != 10 {
                        assert_eq!(account.citizen_id, cid(2000 + (i as u32 % 300)));
                    } else {
                        assert_eq!(account.citizen_id, cid(2007));
                    }
                }
            }
            None => {
                let error = r
                    .error
                    .as_ref()
                    .expect("an invalid id is answered in place");
                assert_eq!(error.reason, "CITIZEN_ID_NOT_DIGITS");
                assert_eq!(error.field, "citizen_id");
                assert!(r.result.is_none());
            }
        }
    }
    // A batch's reads are one access-log row naming all its citizens (1,000 requests a
    // batch at most: three batches, or a few more if the stream lingered).
    let rows = app
        .db
        .count("SELECT COUNT(*) FROM access_log WHERE method LIKE '%BatchResolve'")
        .await;
    assert!(
        (3..=30).contains(&rows),
        "{rows} access-log rows for 2,500 reads"
    );
    // Every read of a known citizen is in the access log, as ListAccessLog shows it;
    // checked on every 15th citizen, under the auditor's rate limit.
    for n in (0..300u32).step_by(15) {
        let log = app
            .oversight(Some(common::AUDITOR))
            .list_access_log(payout_registry::proto::ListAccessLogRequest {
                citizen_id: cid(2000 + n),
                purpose: "audit of payroll reads".into(),
                ..Default::default()
            })
            .await
            .expect("the citizen's access log")
            .into_inner();
        let batch_reads = log
            .entries
            .iter()
            .filter(|e| e.method.ends_with("BatchResolve"))
            .count();
        // At least once; at most once per request naming the citizen (a batch logs a
        // citizen it names twice once).
        let asked = requests_naming
            .iter()
            .filter(|c| **c == cid(2000 + n))
            .count();
        assert!(
            batch_reads >= 1 && batch_reads <= asked,
            "citizen {n}: {batch_reads} logged reads for {asked} requests"
        );
    }
}

async fn batch_resolve_slows_down_for_a_slow_reader_instead_of_buffering(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    sync_citizens(&app, vec![citizen("c1", 1, 5000, "Lý Thị Mai")]).await;
    sync_accounts(
        &app,
        vec![bank(
            "a1",
            1,
            5000,
            "0033000005000",
            VerificationMethod::IssuerConfirmed,
        )],
    )
    .await;
    // HTTP/2 lets each side buffer up to its flow-control window (1 MiB of requests on
    // the server, 2 MiB of answers on the client); requests are made heavy enough (a
    // long purpose) that the windows hold only a fraction of the stream.
    const TOTAL: usize = 60_000;
    let purpose = "payroll run 2026-12 for the monthly social allowance of the province, batch \
                   one of four, prepared by the provincial welfare office";
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = pulled.clone();
    let requests = futures::stream::iter(0..TOTAL).map(move |i| {
        counter.fetch_add(1, Ordering::Relaxed);
        BatchResolveRequest {
            purpose: purpose.into(),
            ..batch_request(&i.to_string(), &cid(5000))
        }
    });
    let mut responses = app
        .resolver(Some(PAYER))
        .batch_resolve(requests)
        .await
        .unwrap()
        .into_inner();
    // Read one answer, then nothing for a while: the server must stop taking requests.
    responses.message().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let taken = pulled.load(Ordering::Relaxed);
    assert!(
        taken < TOTAL * 3 / 5,
        "the server kept reading ({taken} of {TOTAL} requests) while its answers were not read"
    );
    // Then everything arrives, in order.
    let mut next = 1usize;
    while let Some(r) = responses.message().await.unwrap() {
        assert_eq!(r.correlation_id, next.to_string());
        next += 1;
    }
    assert_eq!(next, TOTAL);
}

async fn the_streams_require_their_scopes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let denied = app
        .population(Some(PAYER))
        .sync_citizens(tokio_stream::iter(vec![SyncCitizensRequest {
            record: Some(citizen("c1", 1, 1, "X")),
        }]))
        .await;
    assert_eq!(denied.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(app.db.count("SELECT COUNT(*) FROM citizens").await, 0);

    // A yes/no client may batch-resolve yes/no, not details.
    let exists_only = BatchResolveRequest {
        scope: ResolveScope::ExistsOnly.into(),
        ..batch_request("1", &cid(1))
    };
    let mut ok = app
        .resolver(Some(EXISTS))
        .batch_resolve(tokio_stream::iter(vec![exists_only]))
        .await
        .unwrap()
        .into_inner();
    let answer = ok.message().await.unwrap().unwrap();
    assert!(answer.result.unwrap().account.is_none());
    let mut details = app
        .resolver(Some(EXISTS))
        .batch_resolve(tokio_stream::iter(vec![batch_request("1", &cid(1))]))
        .await
        .unwrap()
        .into_inner();
    let status = match details.message().await {
        Ok(Some(r)) => panic!("a yes/no client got details: {r:?}"),
        Ok(None) => panic!("the stream ended without refusing"),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::PermissionDenied);
}

/// PostgreSQL's access log: a BatchResolve's row goes into the GIN index's pending list
/// (migration 0015), and the running registry's merge task (`background/access_log.rs`)
/// moves it into the index in bulk: at 250,000 entries, or five seconds after the first
/// (migration 0022); nothing else does here, as the test turns autovacuum off on the
/// table. Once the registry is stopped, a new row stays pending, until a registry starts.
mod postgres_access_log {
    use super::*;

    /// Entries waiting in the pending list of the index over a batch's citizens.
    async fn pending(app: &TestApp) -> i64 {
        app.db
            .count(
                "SELECT n_pending_tuples FROM gin_metapage_info(\
                 get_raw_page('access_log_by_citizen_key', 0))",
            )
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_running_registry_merges_its_batch_reads_into_the_access_log_index() {
        let mut app = TestApp::spawn(Backend::Postgres).await;
        for sql in [
            "CREATE EXTENSION IF NOT EXISTS pageinspect",
            "ALTER TABLE access_log SET (autovacuum_enabled = off)",
        ] {
            app.db.execute_raw(sql).await.expect(sql);
        }
        let citizens: Vec<CitizenRecord> = (0..50u32)
            .map(|n| citizen(&format!("c{n}"), 1, 3000 + n, "Đặng Văn Minh"))
            .collect();
        sync_citizens(&app, citizens).await;
        let requests: Vec<BatchResolveRequest> = (0..50u32)
            .map(|n| batch_request(&format!("r{n}"), &cid(3000 + n)))
            .collect();
        assert_eq!(
            common::batch_resolve_all(&app, PAYER, requests).await.len(),
            50
        );
        let logged = app
            .db
            .count("SELECT COUNT(*) FROM access_log WHERE citizen_keys IS NOT NULL")
            .await;
        assert!(logged >= 1, "the batch's reads are logged");
        // A small read waits to be merged with others, not at once: after three of the
        // cleaner's half-second rounds (each of which merged before 0022) it is pending.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut left = pending(&app).await;
        assert!(
            left > 0,
            "fifty entries are not merged on their own at once"
        );

        // Merged by the registry's task once they have waited five seconds.
        for _ in 0..100 {
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            left = pending(&app).await;
        }
        assert_eq!(
            left, 0,
            "the pending list is merged while the registry runs"
        );

        // Without the registry nothing merges it: a row appended now stays pending.
        app.stop_server().await;
        app.db
            .execute_raw(&format!(
                "INSERT INTO access_log (citizen_keys, client_id, method, purpose, \
                 accessed_at, request_id) VALUES (ARRAY[{}, {}]::int8[], 'test', \
                 'BatchResolve', 'audit', 0, gen_random_uuid())",
                cid(3000).parse::<i64>().unwrap(),
                cid(3001).parse::<i64>().unwrap()
            ))
            .await
            .expect("append a row");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(pending(&app).await, 1, "the row's entries, not merged");

        // A registry started on the database merges what an earlier run left pending
        // at once, without waiting for reads of its own.
        let restarted = TestApp::builder(Backend::Postgres)
            .database(common::TestDb::at(app.db.url.clone()))
            .spawn()
            .await;
        let mut left = pending(&app).await;
        for _ in 0..30 {
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            left = pending(&app).await;
        }
        assert_eq!(left, 0, "merged by the next start");
        drop(restarted);
    }
}

/// The records each acknowledgement of a stream covers (acknowledgements carry running
/// totals).
fn batch_sizes(acks: &[SyncBatchResult]) -> Vec<u64> {
    let mut before = 0;
    acks.iter()
        .map(|a| {
            let size = a.records_committed - before;
            before = a.records_committed;
            size
        })
        .collect()
}

/// `sync_batch_records` bounds every transaction of a stream (here 400, yielding off);
/// the default of 1,000 commits a stream sent at once in larger batches (the test
/// below).
async fn a_stream_commits_batches_of_at_most_the_configured_size(backend: Backend) {
    let app = TestApp::builder(backend)
        .configure(|s| {
            s.sync_batch_records = 400;
            s.sync_yield_window_ms = 0;
        })
        .spawn()
        .await;
    let records: Vec<CitizenRecord> = (0..2000)
        .map(|n| citizen(&format!("b{n:05}"), 1, n, "Đỗ Văn Hùng"))
        .collect();
    let sizes = batch_sizes(&sync_citizens(&app, records).await);
    assert_eq!(sizes.iter().sum::<u64>(), 2000);
    assert!(sizes.iter().all(|&n| n <= 400), "{sizes:?}");
    assert!(sizes.len() >= 5, "{sizes:?}");
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM citizens").await,
        2000,
        "every record applied"
    );
}

async fn a_stream_beside_unary_writes_commits_small_batches_one_at_a_time(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let records = |from: u32| -> Vec<CitizenRecord> {
        (from..from + 2000)
            .map(|n| citizen(&format!("y{n:05}"), 1, n, "Đỗ Văn Hùng"))
            .collect()
    };
    // Alone, a stream sent at once is committed in batches of up to 1,000.
    let alone = batch_sizes(&sync_citizens(&app, records(0)).await);
    assert_eq!(alone.iter().sum::<u64>(), 2000);
    assert!(alone.iter().any(|&n| n > 250), "{alone:?}");

    // Beside a payer's unary writes (one every 100 ms, as long as the stream runs), it
    // yields: batches of at most 250, so that the writes' commits do not queue behind it.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, mut registry) = (stop.clone(), app.registry(Some(ADMIN)));
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let request = LinkAccountRequest {
                    idempotency_key: uuid::Uuid::new_v4().to_string(),
                    citizen_id: cid(50_000 + n),
                    kind: AccountKind::BankAccount.into(),
                    provider_code: "970436".into(),
                    account_ref: format!("01000{n:05}"),
                    reason: "declared at the commune office".into(),
                    ..Default::default()
                };
                registry.link_account(request).await.expect("a unary write");
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let beside = batch_sizes(&sync_citizens(&app, records(10_000)).await);
    stop.store(true, Ordering::Relaxed);
    assert!(writer.await.unwrap() > 0);
    assert_eq!(beside.iter().sum::<u64>(), 2000);
    assert!(beside.iter().all(|&n| n <= 250), "{beside:?}");
    app.stop().await;
}
