//! Races, with real parallel connections: many tasks hit the store at once and the
//! registry's rules must still hold. On PostgreSQL each task runs on its own pooled
//! connection, so the database (row locks, the partial unique index) decides; on SQLite
//! the single writer serialises them.

mod common;

use std::sync::Arc;

use common::{Backend, TestDb, COOLING_OFF};
use payout_registry::domain::*;
use payout_registry::store::*;
use tokio::sync::Barrier;
use uuid::Uuid;

const TASKS: usize = 16;

fn ctx(key: Option<Uuid>) -> WriteContext {
    WriteContext {
        actor: "race".into(),
        idempotency: key.map(|key| Idempotency {
            key,
            request_hash: b"same".to_vec(),
        }),
        now: Timestamp::now(),
        authority: common::entitled(),
    }
}

/// Citizens with distinct valid ids: Hà Nội, born 1990, serials 0..n.
fn citizen(i: usize) -> CitizenId {
    CitizenId::parse(&format!("001090{i:06}")).unwrap()
}

fn link(citizen: CitizenId, number: &str, verified: bool) -> LinkAccount {
    LinkAccount {
        citizen_id: citizen,
        kind: AccountKind::BankAccount,
        provider_code: "970418".into(),
        account_ref: AccountRef::parse(AccountKind::BankAccount, number).unwrap(),
        holder_name: None,
        verification: verified.then(|| VerificationInput {
            method: VerificationMethod::IssuerConfirmed,
            evidence_ref: "bidv-confirmation".into(),
        }),
        reason: "race".into(),
    }
}

async fn parallel_store(backend: Backend) -> (TestDb, Arc<dyn Store>) {
    let db = TestDb::new(backend).await;
    let store = db
        .store_with(StoreOptions {
            cooling_off: COOLING_OFF,
            max_connections: TASKS as u32 + 4,
            ..StoreOptions::default()
        })
        .await;
    (db, store)
}

/// Runs `n` copies of `f` at once (released together by a barrier) and returns their
/// results.
async fn race<F, Fut, T>(n: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            let fut = f(i);
            tokio::spawn(async move {
                barrier.wait().await;
                fut.await
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

fn refusals(results: &[StoreResult<Account>], reason: Reason) -> usize {
    results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Rejected(x)) if x.reason == reason))
        .count()
}

async fn many_citizens_claiming_one_account_at_once_leave_exactly_one_holder(backend: Backend) {
    let (db, store) = parallel_store(backend).await;
    let results = race(TASKS, |i| {
        let store = store.clone();
        async move {
            store
                .link_account(&ctx(None), &link(citizen(i), "12345678901", true))
                .await
        }
    })
    .await;
    let winners = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(winners, 1, "{results:?}");
    assert_eq!(
        refusals(&results, Reason::AccountOwnedByAnotherCitizen),
        TASKS - 1,
        "{results:?}"
    );
    assert_eq!(
        store.duplicate_claims(None, None, 100).await.unwrap().len(),
        TASKS - 1
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM accounts WHERE status = 'VERIFIED'")
            .await,
        1
    );
}

async fn concurrent_verifications_of_competing_claims_leave_exactly_one_holder(backend: Backend) {
    let (db, store) = parallel_store(backend).await;
    let mut pending = Vec::new();
    for i in 0..TASKS {
        pending.push(
            store
                .link_account(&ctx(None), &link(citizen(i), "98765432100", false))
                .await
                .unwrap(),
        );
    }
    let results = race(TASKS, |i| {
        let store = store.clone();
        let id = pending[i].id;
        async move {
            let cmd = ChangeAccount {
                account_id: id,
                expected_version: Some(1),
                action: AccountAction::Verify {
                    verification: VerificationInput {
                        method: VerificationMethod::IssuerConfirmed,
                        evidence_ref: "x".into(),
                    },
                    holder_name: None,
                },
                reason: "race".into(),
            };
            store.change_account(&ctx(None), &cmd).await
        }
    })
    .await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert_eq!(
        refusals(&results, Reason::AccountOwnedByAnotherCitizen),
        TASKS - 1
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM accounts WHERE status = 'VERIFIED'")
            .await,
        1
    );
    assert_eq!(
        store.duplicate_claims(None, None, 100).await.unwrap().len(),
        TASKS - 1
    );
}

async fn one_idempotency_key_sent_many_times_at_once_creates_one_account(backend: Backend) {
    let (db, store) = parallel_store(backend).await;
    let key = Uuid::new_v4();
    let results = race(TASKS, |_| {
        let store = store.clone();
        async move {
            store
                .link_account(&ctx(Some(key)), &link(citizen(1), "55555555555", false))
                .await
        }
    })
    .await;
    let ids: Vec<Uuid> = results
        .iter()
        .map(|r| r.as_ref().expect("every retry gets the first answer").id)
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]));
    assert_eq!(db.count("SELECT COUNT(*) FROM accounts").await, 1);
}

async fn one_citizen_linking_many_accounts_at_once_never_exceeds_ten_open(backend: Backend) {
    let (db, store) = parallel_store(backend).await;
    let results = race(TASKS, |i| {
        let store = store.clone();
        async move {
            store
                .link_account(
                    &ctx(None),
                    &link(citizen(7), &format!("7000000{i:04}"), false),
                )
                .await
        }
    })
    .await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        MAX_OPEN_ACCOUNTS
    );
    assert_eq!(
        refusals(&results, Reason::TooManyOpenAccounts),
        TASKS - MAX_OPEN_ACCOUNTS
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM accounts").await,
        MAX_OPEN_ACCOUNTS as i64
    );
}

fn declared(record: String, citizen: CitizenId, number: &str, confirmed: bool) -> SyncAccount {
    SyncAccount {
        record_id: record,
        version: 1,
        citizen_id: citizen,
        kind: AccountKind::BankAccount,
        provider_code: "970418".into(),
        account_ref: AccountRef::parse(AccountKind::BankAccount, number).unwrap(),
        holder_name: None,
        confirmation: confirmed.then_some(VerificationMethod::IssuerConfirmed),
        removed: false,
    }
}

/// Sync batches from many streams at once: some claim one confirmed account each for a
/// citizen of their own, the others each declare an account for one shared citizen. The
/// outcomes are those of the batches in some order (one holder, ten open accounts) and
/// the read model matches the tables.
async fn sync_batches_racing_on_shared_keys_keep_the_one_holder_and_open_account_rules(
    backend: Backend,
) {
    let (db, store) = parallel_store(backend).await;
    // The shared citizen exists first: each declaration then only adds an account (a
    // stale plan is not caught by the citizens' primary key).
    let shared = common::active_citizen("shared", citizen(99));
    let applied = store.sync_citizens(&ctx(None), &[shared]).await.unwrap();
    assert_eq!(applied.outcomes, [RecordOutcome::Applied]);
    let results = race(2 * TASKS, |i| {
        let store = store.clone();
        async move {
            let record = if i < TASKS {
                declared(format!("claim-{i}"), citizen(i), "55555555555", true)
            } else {
                let number = format!("6000000{i:04}");
                declared(format!("shared-{i}"), citizen(99), &number, false)
            };
            let mut outcomes = store.sync_accounts(&ctx(None), &[record]).await.unwrap();
            outcomes.outcomes.pop().unwrap()
        }
    })
    .await;
    let rejected = |tasks: std::ops::Range<usize>, reason: Reason| {
        results[tasks]
            .iter()
            .filter(|o| matches!(o, RecordOutcome::Rejected(r) if r.reason == reason))
            .count()
    };
    assert_eq!(
        rejected(0..TASKS, Reason::AccountOwnedByAnotherCitizen),
        TASKS - 1,
        "{results:?}"
    );
    assert_eq!(
        rejected(TASKS..2 * TASKS, Reason::TooManyOpenAccounts),
        TASKS - MAX_OPEN_ACCOUNTS,
        "{results:?}"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM accounts WHERE status = 'VERIFIED'")
            .await,
        1
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM accounts WHERE citizen_id = '001090000099'")
            .await,
        MAX_OPEN_ACCOUNTS as i64
    );
    let check = store.check_resolution_model(None, false).await.unwrap();
    common::assert_whole(&check);
    // The winning claimant and the shared citizen: a citizen first seen by a refused
    // record is not created.
    assert_eq!(check.checked, 2);
    assert_eq!(db.count("SELECT COUNT(*) FROM citizens").await, 2);
}

on_both_backends!(
    many_citizens_claiming_one_account_at_once_leave_exactly_one_holder,
    sync_batches_racing_on_shared_keys_keep_the_one_holder_and_open_account_rules,
    concurrent_verifications_of_competing_claims_leave_exactly_one_holder,
    one_idempotency_key_sent_many_times_at_once_creates_one_account,
    one_citizen_linking_many_accounts_at_once_never_exceeds_ten_open,
);
