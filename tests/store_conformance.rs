//! The storage conformance suite: written once against the `Store` trait, run against
//! SQLite and PostgreSQL. Each test gets its own fresh database.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Backend, TestDb, COOLING_OFF};
use payout_registry::domain::*;
use payout_registry::store::*;
use uuid::Uuid;

const HOUR: Duration = Duration::from_secs(3600);

fn ctx(now: Timestamp) -> WriteContext {
    WriteContext { actor: "test-client".into(), idempotency: None, now }
}

fn ctx_key(now: Timestamp, key: Uuid, body: &str) -> WriteContext {
    WriteContext {
        actor: "test-client".into(),
        idempotency: Some(Idempotency { key, request_hash: body.as_bytes().to_vec() }),
        now,
    }
}

fn cid(s: &str) -> CitizenId {
    CitizenId::parse(s).unwrap()
}

fn bank_link(citizen: &str, number: &str) -> LinkAccount {
    LinkAccount {
        citizen_id: cid(citizen),
        kind: AccountKind::BankAccount,
        provider_code: "970436".into(),
        account_ref: AccountRef::parse(AccountKind::BankAccount, number).unwrap(),
        holder_name: None,
        verification: None,
        reason: "test".into(),
    }
}

fn verified_link(citizen: &str, number: &str, method: VerificationMethod) -> LinkAccount {
    LinkAccount {
        verification: Some(VerificationInput { method, evidence_ref: "ev-1".into() }),
        ..bank_link(citizen, number)
    }
}

fn action(account: &Account, action: AccountAction) -> ChangeAccount {
    ChangeAccount { account_id: account.id, expected_version: None, action, reason: "test".into() }
}

fn verify(account: &Account, method: VerificationMethod) -> ChangeAccount {
    action(
        account,
        AccountAction::Verify {
            verification: VerificationInput { method, evidence_ref: "ev-2".into() },
            holder_name: None,
        },
    )
}

fn prefer(account: &Account, program: Option<&str>) -> SetPreference {
    SetPreference {
        citizen_id: account.citizen_id.clone(),
        account_id: account.id,
        program: program.map(|p| ProgramCode::parse_optional(p).unwrap().unwrap()),
        expected_version: None,
        reason: "test".into(),
    }
}

fn query(citizen: &str, program: Option<&str>, as_of: Option<Timestamp>) -> ResolveQuery {
    ResolveQuery {
        citizen_id: cid(citizen),
        program: program.map(|p| ProgramCode::parse_optional(p).unwrap().unwrap()),
        as_of,
    }
}

fn rejected<T: std::fmt::Debug>(r: StoreResult<T>) -> Rejection {
    match r {
        Err(StoreError::Rejected(r)) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn resolved_id(r: &Resolution) -> Option<Uuid> {
    match r {
        Resolution::Resolved { account, .. } => Some(account.id),
        _ => None,
    }
}

async fn setup(backend: Backend) -> (TestDb, Arc<dyn Store>) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    (db, store)
}

async fn linking_creates_a_pending_account_with_its_first_history_entry(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let now = Timestamp::now();
    let a = store.link_account(&ctx(now), &bank_link("001099012345", "0071 0001 23456")).await.unwrap();
    assert_eq!(a.status, AccountStatus::PendingVerification);
    assert_eq!(a.version, 1);
    assert_eq!(a.account_ref.as_str(), "0071000123456");
    assert_eq!(store.get_account(a.id).await.unwrap(), Some(a.clone()));
    let history = store.account_history(a.id, 0, 10).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].change, "LINKED");
    assert_eq!(history[0].actor, "test-client");
}

on_both_backends!(linking_creates_a_pending_account_with_its_first_history_entry);
