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
    WriteContext {
        actor: "test-client".into(),
        idempotency: None,
        now,
        authority: common::entitled(),
    }
}

fn ctx_key(now: Timestamp, key: Uuid, body: &str) -> WriteContext {
    WriteContext {
        actor: "test-client".into(),
        idempotency: Some(Idempotency {
            key,
            request_hash: body.as_bytes().to_vec(),
        }),
        now,
        authority: common::entitled(),
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
        verification: Some(VerificationInput {
            method,
            evidence_ref: "ev-1".into(),
        }),
        ..bank_link(citizen, number)
    }
}

fn action(account: &Account, action: AccountAction) -> ChangeAccount {
    ChangeAccount {
        account_id: account.id,
        expected_version: None,
        action,
        reason: "test".into(),
    }
}

fn verify(account: &Account, method: VerificationMethod) -> ChangeAccount {
    action(
        account,
        AccountAction::Verify {
            verification: VerificationInput {
                method,
                evidence_ref: "ev-2".into(),
            },
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

/// Links `number` (a bank account) for `citizen` and verifies it in person: the
/// citizen's first verified account, so their default.
async fn link_verified(
    store: &Arc<dyn Store>,
    citizen: &str,
    number: &str,
    now: Timestamp,
) -> Account {
    let a = store
        .link_account(&ctx(now), &bank_link(citizen, number))
        .await
        .unwrap();
    store
        .change_account(&ctx(now), &verify(&a, VerificationMethod::InPerson))
        .await
        .unwrap();
    a
}

async fn linking_creates_a_pending_account_with_its_first_history_entry(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let now = Timestamp::now();
    let a = store
        .link_account(&ctx(now), &bank_link("001099012345", "0071 0001 23456"))
        .await
        .unwrap();
    assert_eq!(a.status, AccountStatus::PendingVerification);
    assert_eq!(a.version, 1);
    assert_eq!(a.account_ref.as_str(), "0071000123456");
    assert_eq!(store.get_account(a.id).await.unwrap(), Some(a.clone()));
    let history = store.account_history(a.id, 0, 10).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].change, "LINKED");
    assert_eq!(history[0].actor, "test-client");
}

async fn verifying_makes_the_first_verified_account_the_default(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let now = Timestamp::now();
    let a = store
        .link_account(&ctx(now), &bank_link("001099012345", "0071000123456"))
        .await
        .unwrap();
    let v = store
        .change_account(&ctx(now), &verify(&a, VerificationMethod::InPerson))
        .await
        .unwrap();
    assert_eq!(v.status, AccountStatus::Verified);
    assert_eq!(v.version, 2);
    let verification = v.verification.clone().unwrap();
    assert_eq!(verification.method, VerificationMethod::InPerson);
    assert_eq!(verification.verified_by, "test-client");
    let (_, prefs) = store
        .list_citizen_accounts(&a.citizen_id, false)
        .await
        .unwrap();
    assert_eq!(
        prefs,
        vec![Preference {
            program: None,
            account_id: a.id,
            since: now
        }]
    );
    let r = store
        .resolve(&query("001099012345", None, None), now)
        .await
        .unwrap();
    assert_eq!(resolved_id(&r), Some(a.id));
}

async fn illegal_transitions_are_refused_and_change_nothing(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let now = Timestamp::now();
    let a = store
        .link_account(&ctx(now), &bank_link("001099012345", "0071000123456"))
        .await
        .unwrap();
    for bad in [AccountAction::Suspend, AccountAction::Reinstate] {
        let r = rejected(store.change_account(&ctx(now), &action(&a, bad)).await);
        assert_eq!(r.reason, Reason::IllegalTransition);
    }
    let closed = store
        .change_account(&ctx(now), &action(&a, AccountAction::Close))
        .await
        .unwrap();
    assert_eq!(closed.status, AccountStatus::Closed);
    let r = rejected(
        store
            .change_account(&ctx(now), &verify(&closed, VerificationMethod::InPerson))
            .await,
    );
    assert_eq!(r.reason, Reason::IllegalTransition);
    assert_eq!(store.get_account(a.id).await.unwrap().unwrap(), closed);
    assert_eq!(store.account_history(a.id, 0, 10).await.unwrap().len(), 2);
}

async fn a_second_citizen_claiming_a_verified_account_is_refused_and_recorded(backend: Backend) {
    let (db, store) = setup(backend).await;
    let now = Timestamp::now();
    let holder = store
        .link_account(
            &ctx(now),
            &verified_link(
                "001099012345",
                "0071000123456",
                VerificationMethod::IssuerConfirmed,
            ),
        )
        .await
        .unwrap();
    for link in [
        bank_link("079200012345", "0071000123456"),
        verified_link(
            "079200012345",
            "0071-000-123456",
            VerificationMethod::InPerson,
        ),
    ] {
        let r = rejected(store.link_account(&ctx(now), &link).await);
        assert_eq!(r.reason, Reason::AccountOwnedByAnotherCitizen);
        assert!(
            !r.message.contains("001099012345"),
            "the refusal must not reveal the holder"
        );
    }
    let claims = store.duplicate_claims(None, None, 10).await.unwrap();
    assert_eq!(claims.len(), 2);
    assert!(claims
        .iter()
        .all(|c| c.holder == holder.citizen_id && c.claimant == cid("079200012345")));
    assert!(claims
        .iter()
        .all(|c| c.holder_account_id == holder.id && c.context == "LINK"));
    let events = store.events_after(0, 100).await.unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_type == "DUPLICATE_CLAIM_DETECTED")
            .count(),
        2
    );
    // The refused claimant got no account, and the registry still does not know them.
    assert_eq!(db.count("SELECT COUNT(*) FROM accounts").await, 1);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM citizens WHERE citizen_id = '079200012345'")
            .await,
        0
    );
}

async fn verifying_an_account_another_citizen_holds_is_refused_and_recorded(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let now = Timestamp::now();
    // Both citizens link while neither holds it; the first verification wins.
    let first = store
        .link_account(&ctx(now), &bank_link("001099012345", "0071000123456"))
        .await
        .unwrap();
    let second = store
        .link_account(&ctx(now), &bank_link("079200012345", "0071000123456"))
        .await
        .unwrap();
    store
        .change_account(
            &ctx(now),
            &verify(&first, VerificationMethod::IssuerConfirmed),
        )
        .await
        .unwrap();
    let r = rejected(
        store
            .change_account(
                &ctx(now),
                &verify(&second, VerificationMethod::IssuerConfirmed),
            )
            .await,
    );
    assert_eq!(r.reason, Reason::AccountOwnedByAnotherCitizen);
    assert_eq!(
        store.get_account(second.id).await.unwrap().unwrap().status,
        AccountStatus::PendingVerification
    );
    let claims = store.duplicate_claims(None, None, 10).await.unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].context, "VERIFY");
}

async fn a_suspended_account_still_belongs_to_its_holder(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let now = Timestamp::now();
    let a = store
        .link_account(
            &ctx(now),
            &verified_link(
                "001099012345",
                "0071000123456",
                VerificationMethod::InPerson,
            ),
        )
        .await
        .unwrap();
    store
        .change_account(&ctx(now), &action(&a, AccountAction::Suspend))
        .await
        .unwrap();
    let r = rejected(
        store
            .link_account(
                &ctx(now),
                &verified_link(
                    "079200012345",
                    "0071000123456",
                    VerificationMethod::InPerson,
                ),
            )
            .await,
    );
    assert_eq!(r.reason, Reason::AccountOwnedByAnotherCitizen);
}

async fn a_stale_expected_version_is_aborted_and_changes_nothing(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let now = Timestamp::now();
    let a = store
        .link_account(&ctx(now), &bank_link("001099012345", "0071000123456"))
        .await
        .unwrap();
    let mut cmd = verify(&a, VerificationMethod::InPerson);
    cmd.expected_version = Some(7);
    let r = rejected(store.change_account(&ctx(now), &cmd).await);
    assert_eq!(r.reason, Reason::VersionMismatch);
    assert_eq!(store.get_account(a.id).await.unwrap().unwrap(), a);
    cmd.expected_version = Some(1);
    assert_eq!(
        store.change_account(&ctx(now), &cmd).await.unwrap().version,
        2
    );
}

async fn a_repeated_idempotency_key_returns_the_first_answer(backend: Backend) {
    let (db, store) = setup(backend).await;
    let now = Timestamp::now();
    let key = Uuid::new_v4();
    let link = bank_link("001099012345", "0071000123456");
    let first = store
        .link_account(&ctx_key(now, key, "body-1"), &link)
        .await
        .unwrap();
    let again = store
        .link_account(&ctx_key(now, key, "body-1"), &link)
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(db.count("SELECT COUNT(*) FROM accounts").await, 1);
    let other = bank_link("001099012345", "0071000999999");
    let r = rejected(
        store
            .link_account(&ctx_key(now, key, "body-2"), &other)
            .await,
    );
    assert_eq!(r.reason, Reason::IdempotencyKeyReused);
    // Keys belong to their client: another client may use the same key.
    let mut other_client = ctx_key(now, key, "body-2");
    other_client.actor = "another-client".into();
    store.link_account(&other_client, &other).await.unwrap();
    assert_eq!(db.count("SELECT COUNT(*) FROM accounts").await, 2);
}

async fn idempotency_keys_survive_a_restart(backend: Backend) {
    let (db, store) = setup(backend).await;
    let now = Timestamp::now();
    let key = Uuid::new_v4();
    let link = bank_link("001099012345", "0071000123456");
    let first = store
        .link_account(&ctx_key(now, key, "b"), &link)
        .await
        .unwrap();
    drop(store);
    let reopened = db.store().await;
    assert_eq!(
        reopened
            .link_account(&ctx_key(now, key, "b"), &link)
            .await
            .unwrap(),
        first
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM accounts").await, 1);
}

async fn retrying_a_refused_duplicate_claim_does_not_record_it_twice(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let now = Timestamp::now();
    store
        .link_account(
            &ctx(now),
            &verified_link(
                "001099012345",
                "0071000123456",
                VerificationMethod::InPerson,
            ),
        )
        .await
        .unwrap();
    let key = Uuid::new_v4();
    let claim = bank_link("079200012345", "0071000123456");
    for _ in 0..3 {
        let r = rejected(
            store
                .link_account(&ctx_key(now, key, "claim"), &claim)
                .await,
        );
        assert_eq!(r.reason, Reason::AccountOwnedByAnotherCitizen);
    }
    assert_eq!(
        store.duplicate_claims(None, None, 10).await.unwrap().len(),
        1
    );
}

async fn a_citizen_may_have_at_most_ten_open_accounts(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let now = Timestamp::now();
    let mut accounts = Vec::new();
    for i in 0..10 {
        accounts.push(
            store
                .link_account(
                    &ctx(now),
                    &bank_link("001099012345", &format!("00710001234{i:02}")),
                )
                .await
                .unwrap(),
        );
    }
    let r = rejected(
        store
            .link_account(&ctx(now), &bank_link("001099012345", "0071000999999"))
            .await,
    );
    assert_eq!(r.reason, Reason::TooManyOpenAccounts);
    // Closing one makes room.
    store
        .change_account(&ctx(now), &action(&accounts[0], AccountAction::Close))
        .await
        .unwrap();
    store
        .link_account(&ctx(now), &bank_link("001099012345", "0071000999999"))
        .await
        .unwrap();
}

async fn the_same_citizen_cannot_link_the_same_account_twice_while_it_is_open(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let now = Timestamp::now();
    let a = store
        .link_account(&ctx(now), &bank_link("001099012345", "0071000123456"))
        .await
        .unwrap();
    let r = rejected(
        store
            .link_account(&ctx(now), &bank_link("001099012345", "0071-0001-23456"))
            .await,
    );
    assert_eq!(r.reason, Reason::AccountAlreadyLinked);
    store
        .change_account(&ctx(now), &action(&a, AccountAction::Close))
        .await
        .unwrap();
    let again = store
        .link_account(&ctx(now), &bank_link("001099012345", "0071000123456"))
        .await
        .unwrap();
    assert_ne!(again.id, a.id);
}

async fn providers_must_exist_be_active_and_match_the_kind(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let now = Timestamp::now();
    let with_provider = |code: &str, kind: AccountKind, r: &str| LinkAccount {
        provider_code: code.into(),
        kind,
        account_ref: AccountRef::parse(kind, r).unwrap(),
        ..bank_link("001099012345", "0071000123456")
    };
    let cases = [
        (
            with_provider("123456", AccountKind::BankAccount, "0071000123456"),
            Reason::ProviderUnknown,
        ),
        (
            with_provider("970406", AccountKind::BankAccount, "0071000123456"),
            Reason::ProviderInactive,
        ),
        (
            with_provider("MOMO", AccountKind::BankAccount, "0071000123456"),
            Reason::ProviderKindMismatch,
        ),
        (
            with_provider("970436", AccountKind::Ewallet, "0912345678"),
            Reason::ProviderKindMismatch,
        ),
    ];
    for (link, reason) in cases {
        assert_eq!(
            rejected(store.link_account(&ctx(now), &link).await).reason,
            reason
        );
    }
    let momo = store
        .link_account(
            &ctx(now),
            &with_provider("MOMO", AccountKind::Ewallet, "0912 345 678"),
        )
        .await
        .unwrap();
    assert_eq!(momo.account_ref.as_str(), "+84912345678");
    assert!(store
        .providers()
        .await
        .unwrap()
        .iter()
        .any(|p| p.code == "999888"));
}

async fn resolution_prefers_the_program_then_the_default_and_only_pays_verified_accounts(
    backend: Backend,
) {
    let (_db, store) = setup(backend).await;
    let now = Timestamp::now();
    let c = "001099012345";
    assert_eq!(
        store.resolve(&query(c, None, None), now).await.unwrap(),
        Resolution::UnknownCitizen
    );
    let pending = store
        .link_account(&ctx(now), &bank_link(c, "0071000000001"))
        .await
        .unwrap();
    assert_eq!(
        store.resolve(&query(c, None, None), now).await.unwrap(),
        Resolution::NoVerifiedAccount
    );
    let default = store
        .change_account(&ctx(now), &verify(&pending, VerificationMethod::InPerson))
        .await
        .unwrap();
    let pension = store
        .link_account(
            &ctx(now),
            &verified_link(c, "0071000000002", VerificationMethod::IssuerConfirmed),
        )
        .await
        .unwrap();
    store
        .set_preference(&ctx(now), &prefer(&pension, Some("PENSION")))
        .await
        .unwrap();
    let r = store
        .resolve(&query(c, Some("PENSION"), None), now)
        .await
        .unwrap();
    assert_eq!(resolved_id(&r), Some(pension.id));
    assert!(matches!(
        r,
        Resolution::Resolved {
            matched_program: true,
            ..
        }
    ));
    let r = store
        .resolve(&query(c, Some("SOCIAL_ALLOWANCE"), None), now)
        .await
        .unwrap();
    assert_eq!(resolved_id(&r), Some(default.id));
    // A suspended program account falls back to the default; a suspended default pays nobody.
    store
        .change_account(&ctx(now), &action(&pension, AccountAction::Suspend))
        .await
        .unwrap();
    let r = store
        .resolve(&query(c, Some("PENSION"), None), now)
        .await
        .unwrap();
    assert_eq!(resolved_id(&r), Some(default.id));
    store
        .change_account(&ctx(now), &action(&default, AccountAction::Suspend))
        .await
        .unwrap();
    assert_eq!(
        store
            .resolve(&query(c, Some("PENSION"), None), now)
            .await
            .unwrap(),
        Resolution::NoVerifiedAccount
    );
}

async fn preferences_need_a_verified_account_of_the_same_citizen_and_a_known_program(
    backend: Backend,
) {
    let (_db, store) = setup(backend).await;
    let now = Timestamp::now();
    let pending = store
        .link_account(&ctx(now), &bank_link("001099012345", "0071000000001"))
        .await
        .unwrap();
    assert_eq!(
        rejected(
            store
                .set_preference(&ctx(now), &prefer(&pending, None))
                .await
        )
        .reason,
        Reason::AccountNotVerified
    );
    let other = store
        .link_account(
            &ctx(now),
            &verified_link(
                "079200012345",
                "0071000000002",
                VerificationMethod::InPerson,
            ),
        )
        .await
        .unwrap();
    let mut steal = prefer(&other, None);
    steal.citizen_id = cid("001099012345");
    assert_eq!(
        rejected(store.set_preference(&ctx(now), &steal).await).reason,
        Reason::AccountNotOwnedByCitizen
    );
    assert_eq!(
        rejected(
            store
                .set_preference(&ctx(now), &prefer(&other, Some("NOPE")))
                .await
        )
        .reason,
        Reason::ProgramUnknown
    );
    let typo = store
        .resolve(
            &query("079200012345", Some("PENSON"), None),
            Timestamp::now(),
        )
        .await;
    assert_eq!(rejected(typo).reason, Reason::ProgramUnknown);
}

async fn death_and_revocation_stop_payment_and_stale_records_change_nothing(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let now = Timestamp::now();
    let c = "001099012345";
    let a = store
        .link_account(
            &ctx(now),
            &verified_link(c, "0071000000001", VerificationMethod::InPerson),
        )
        .await
        .unwrap();
    let record = |status, version| CitizenRecord {
        citizen_id: cid(c),
        full_name: Some("Nguyễn Văn Đức".into()),
        date_of_birth: Some("1999-01-02".into()),
        status,
        died_on: (status == CitizenStatus::Deceased).then(|| "2026-10-01".into()),
        source_version: version,
    };
    assert_eq!(
        store
            .upsert_citizen(&ctx(now), &record(CitizenStatus::Deceased, 10))
            .await
            .unwrap(),
        CitizenUpsert::Updated
    );
    assert_eq!(
        store.resolve(&query(c, None, None), now).await.unwrap(),
        Resolution::CitizenDeceased
    );
    // A replayed older ACTIVE record must not resurrect the citizen.
    assert_eq!(
        store
            .upsert_citizen(&ctx(now), &record(CitizenStatus::Active, 9))
            .await
            .unwrap(),
        CitizenUpsert::Stale
    );
    assert_eq!(
        store.resolve(&query(c, None, None), now).await.unwrap(),
        Resolution::CitizenDeceased
    );
    assert_eq!(
        store
            .upsert_citizen(&ctx(now), &record(CitizenStatus::IdRevoked, 11))
            .await
            .unwrap(),
        CitizenUpsert::Updated
    );
    assert_eq!(
        store.resolve(&query(c, None, None), now).await.unwrap(),
        Resolution::CitizenIdRevoked
    );
    // A newer record can correct an erroneous death.
    store
        .upsert_citizen(&ctx(now), &record(CitizenStatus::Active, 12))
        .await
        .unwrap();
    assert_eq!(
        resolved_id(&store.resolve(&query(c, None, None), now).await.unwrap()),
        Some(a.id)
    );
    let events = store.events_after(0, 100).await.unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_type == "CITIZEN_STATUS_CHANGED")
            .count(),
        3
    );
    // A deceased citizen cannot link new accounts.
    store
        .upsert_citizen(&ctx(now), &record(CitizenStatus::Deceased, 13))
        .await
        .unwrap();
    assert_eq!(
        rejected(
            store
                .link_account(&ctx(now), &bank_link(c, "0071000000009"))
                .await
        )
        .reason,
        Reason::CitizenNotActive
    );
}

async fn name_match_verification_compares_normalised_names(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let now = Timestamp::now();
    let c = "001099012345";
    let a = store
        .link_account(&ctx(now), &bank_link(c, "0071000000001"))
        .await
        .unwrap();
    let by_name = |name: &str| {
        action(
            &a,
            AccountAction::Verify {
                verification: VerificationInput {
                    method: VerificationMethod::NameMatch,
                    evidence_ref: "napas-123".into(),
                },
                holder_name: Some(HolderName::parse(name).unwrap()),
            },
        )
    };
    assert_eq!(
        rejected(
            store
                .change_account(&ctx(now), &by_name("NGUYEN VAN DUC"))
                .await
        )
        .reason,
        Reason::CitizenNameUnknown
    );
    store
        .upsert_citizen(
            &ctx(now),
            &CitizenRecord {
                citizen_id: cid(c),
                full_name: Some("Nguyễn  Văn Đức".into()),
                date_of_birth: None,
                status: CitizenStatus::Active,
                died_on: None,
                source_version: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rejected(
            store
                .change_account(&ctx(now), &by_name("NGUYEN VAN DUNG"))
                .await
        )
        .reason,
        Reason::HolderNameMismatch
    );
    let v = store
        .change_account(&ctx(now), &by_name("nguyen van duc"))
        .await
        .unwrap();
    assert_eq!(v.status, AccountStatus::Verified);
    assert_eq!(v.holder_name.as_deref(), Some("NGUYEN VAN DUC"));
}

async fn resolution_as_of_a_past_instant_answers_from_history(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let t0 = Timestamp::now();
    let c = "001099012345";
    let a = store
        .link_account(&ctx(t0), &bank_link(c, "0071000000001"))
        .await
        .unwrap();
    let t1 = t0.plus(HOUR);
    store
        .change_account(&ctx(t1), &verify(&a, VerificationMethod::IssuerConfirmed))
        .await
        .unwrap();
    let b = store
        .link_account(
            &ctx(t1),
            &verified_link(c, "0071000000002", VerificationMethod::IssuerConfirmed),
        )
        .await
        .unwrap();
    let t2 = t1.plus(HOUR);
    store
        .set_preference(&ctx(t2), &prefer(&b, None))
        .await
        .unwrap();
    let t3 = t2.plus(HOUR);
    store
        .change_account(&ctx(t3), &action(&b, AccountAction::Suspend))
        .await
        .unwrap();
    let at = |t: Timestamp| query(c, None, Some(t));
    let now = t3.plus(HOUR);
    assert_eq!(
        store
            .resolve(&at(Timestamp(t0.micros() - 1)), now)
            .await
            .unwrap(),
        Resolution::UnknownCitizen
    );
    assert_eq!(
        store.resolve(&at(t0), now).await.unwrap(),
        Resolution::NoVerifiedAccount
    );
    assert_eq!(
        resolved_id(&store.resolve(&at(t1), now).await.unwrap()),
        Some(a.id)
    );
    assert_eq!(
        resolved_id(&store.resolve(&at(t2), now).await.unwrap()),
        Some(b.id)
    );
    assert_eq!(
        store.resolve(&at(t3), now).await.unwrap(),
        Resolution::NoVerifiedAccount
    );
    assert_eq!(
        store.resolve(&query(c, None, None), now).await.unwrap(),
        Resolution::NoVerifiedAccount
    );
}

async fn cooling_off_keeps_paying_the_previous_account_unless_the_issuer_confirmed_the_new_one(
    backend: Backend,
) {
    let (_db, store) = setup(backend).await;
    let t0 = Timestamp::now();
    let c = "001099012345";
    let old = store
        .link_account(
            &ctx(t0),
            &verified_link(c, "0071000000001", VerificationMethod::InPerson),
        )
        .await
        .unwrap();
    let declared = store
        .link_account(
            &ctx(t0),
            &verified_link(c, "0071000000002", VerificationMethod::InPerson),
        )
        .await
        .unwrap();
    let t1 = t0.plus(HOUR);
    store
        .set_preference(&ctx(t1), &prefer(&declared, None))
        .await
        .unwrap();
    let during = store
        .resolve(&query(c, None, None), t1.plus(HOUR))
        .await
        .unwrap();
    assert_eq!(resolved_id(&during), Some(old.id));
    assert!(
        matches!(during, Resolution::Resolved { cooling_off_until: Some(u), .. } if u == t1.plus(COOLING_OFF))
    );
    // The same answer as of that instant, from history.
    let as_of = store
        .resolve(&query(c, None, Some(t1.plus(HOUR))), t1.plus(HOUR * 100))
        .await
        .unwrap();
    assert_eq!(resolved_id(&as_of), Some(old.id));
    let after = store
        .resolve(&query(c, None, None), t1.plus(COOLING_OFF))
        .await
        .unwrap();
    assert_eq!(resolved_id(&after), Some(declared.id));
    // An issuer-confirmed account is paid at once.
    let confirmed = store
        .link_account(
            &ctx(t1),
            &verified_link(c, "0071000000003", VerificationMethod::IssuerConfirmed),
        )
        .await
        .unwrap();
    let t2 = t1.plus(COOLING_OFF).plus(HOUR);
    store
        .set_preference(&ctx(t2), &prefer(&confirmed, None))
        .await
        .unwrap();
    assert_eq!(
        resolved_id(&store.resolve(&query(c, None, None), t2).await.unwrap()),
        Some(confirmed.id)
    );
}

async fn every_change_appends_history_and_an_event_in_order(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let now = Timestamp::now();
    let a = link_verified(&store, "001099012345", "0071000000001", now).await;
    let a = store
        .change_account(&ctx(now), &action(&a, AccountAction::Suspend))
        .await
        .unwrap();
    let a = store
        .change_account(
            &ctx(now),
            &ChangeAccount {
                expected_version: Some(3),
                ..action(&a, AccountAction::Reinstate)
            },
        )
        .await
        .unwrap();
    store
        .change_account(&ctx(now), &action(&a, AccountAction::Close))
        .await
        .unwrap();
    let history = store.account_history(a.id, 0, 100).await.unwrap();
    let changes: Vec<_> = history.iter().map(|h| h.change.as_str()).collect();
    assert_eq!(
        changes,
        ["LINKED", "VERIFIED", "SUSPENDED", "REINSTATED", "CLOSED"]
    );
    let versions: Vec<_> = history.iter().map(|h| h.account.version).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    assert_eq!(store.account_history(a.id, 2, 2).await.unwrap().len(), 2);
    let events: Vec<_> = store.events_after(0, 100).await.unwrap();
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "ACCOUNT_LINKED",
            "ACCOUNT_VERIFIED",
            "DEFAULT_CHANGED",
            "ACCOUNT_SUSPENDED",
            "ACCOUNT_REINSTATED",
            "ACCOUNT_CLOSED"
        ]
    );
    assert!(events.windows(2).all(|w| w[0].position < w[1].position));
    assert!(events.iter().all(|e| e.actor == "test-client"));
}

async fn history_cannot_be_rewritten_even_with_direct_sql(backend: Backend) {
    let (db, store) = setup(backend).await;
    let now = Timestamp::now();
    store
        .link_account(
            &ctx(now),
            &verified_link(
                "001099012345",
                "0071000000001",
                VerificationMethod::InPerson,
            ),
        )
        .await
        .unwrap();
    // The link's events get their feed positions.
    assert!(store.sequence_events(100).await.unwrap().assigned > 0);
    for sql in [
        "UPDATE account_history SET status = 'CLOSED'",
        "DELETE FROM account_history",
        "DELETE FROM preference_history",
        "UPDATE citizen_history SET status = 'DECEASED'",
        "UPDATE events SET event_type = 'X'",
        "UPDATE events SET actor_capacity = 'X'",
        "UPDATE feed SET position = position + 1",
    ] {
        let err = db.execute_raw(sql).await.expect_err(sql);
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
}

async fn payout_failures_are_recorded_and_suspend_verified_accounts(backend: Backend) {
    let (db, store) = setup(backend).await;
    let now = Timestamp::now();
    let a = store
        .link_account(
            &ctx(now),
            &verified_link(
                "001099012345",
                "0071000000001",
                VerificationMethod::InPerson,
            ),
        )
        .await
        .unwrap();
    let report = ReportPayoutFailure {
        account_id: a.id,
        program: ProgramCode::parse_optional("PENSION").unwrap(),
        failure_code: PayoutFailureCode::AccountFrozen,
        payer_reference: "run-7".into(),
        failed_at: Some(now),
        reason: "returned".into(),
    };
    let (suspended, first_id) = store
        .report_payout_failure(&ctx(now), &report)
        .await
        .unwrap();
    assert_eq!(suspended.status, AccountStatus::Suspended);
    let (again, second_id) = store
        .report_payout_failure(&ctx(now), &report)
        .await
        .unwrap();
    assert_eq!(
        again, suspended,
        "an account already suspended does not change"
    );
    assert_ne!(first_id, second_id);
    assert_eq!(db.count("SELECT COUNT(*) FROM payout_failures").await, 2);
    assert_eq!(
        store
            .resolve(&query("001099012345", None, None), now)
            .await
            .unwrap(),
        Resolution::NoVerifiedAccount
    );
    let unknown = ReportPayoutFailure {
        account_id: Uuid::new_v4(),
        ..report
    };
    assert_eq!(
        rejected(store.report_payout_failure(&ctx(now), &unknown).await).reason,
        Reason::AccountNotFound
    );
}

async fn the_access_log_is_appended_in_batches_and_read_newest_first(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let now = Timestamp::now();
    let entry = |citizen: &str, i: i64| AccessRead {
        citizens: vec![cid(citizen)],
        client_id: "vss".into(),
        method: "/payoutregistry.v1.PayoutResolverService/Resolve".into(),
        purpose: format!("run {i}"),
        accessed_at: Timestamp(now.micros() + i),
        request_id: Uuid::new_v4(),
    };
    let batch: Vec<AccessRead> = (0..12_000)
        .map(|i| {
            entry(
                if i % 2 == 0 {
                    "001099012345"
                } else {
                    "079200012345"
                },
                i,
            )
        })
        .collect();
    store.append_access_log(&batch).await.unwrap();
    let first = store
        .access_log(&cid("001099012345"), None, 3)
        .await
        .unwrap();
    let purposes: Vec<_> = first.iter().map(|(_, e)| e.purpose.as_str()).collect();
    assert_eq!(purposes, ["run 11998", "run 11996", "run 11994"]);
    let next = store
        .access_log(&cid("001099012345"), Some(first[2].0), 2)
        .await
        .unwrap();
    assert_eq!(next[0].1.purpose, "run 11992");
    let mut all = 0;
    let mut before = None;
    loop {
        let page = store
            .access_log(&cid("079200012345"), before, 1000)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        all += page.len();
        before = page.last().map(|(id, _)| *id);
    }
    assert_eq!(all, 6000);
}

/// A call that reads many citizens is logged as one row naming them all; each citizen's
/// log still lists it, in order with its single reads, page by page.
async fn a_read_of_many_citizens_is_listed_in_each_of_their_logs_in_order(backend: Backend) {
    let (db, store) = setup(backend).await;
    let now = Timestamp::now();
    let call = Uuid::new_v4();
    let read = |citizens: &[&str], i: i64, request_id: Uuid| AccessRead {
        citizens: citizens.iter().map(|c| cid(c)).collect(),
        client_id: "vss".into(),
        method: "/payoutregistry.v1.PayoutResolverService/BatchResolve".into(),
        purpose: format!("run {i}"),
        accessed_at: Timestamp(now.micros() + i),
        request_id,
    };
    let (a, b, c) = ("001099012345", "079200012345", "001099054321");
    store
        .append_access_log(&[read(&[a], 1, Uuid::new_v4())])
        .await
        .unwrap();
    // One writer batch holding a call of three citizens, a single read, and a call of two.
    let second = Uuid::new_v4();
    store
        .append_access_log(&[
            read(&[a, b, c], 2, call),
            read(&[b], 3, Uuid::new_v4()),
            read(&[a, c], 4, second),
        ])
        .await
        .unwrap();
    store
        .append_access_log(&[read(&[a], 5, Uuid::new_v4())])
        .await
        .unwrap();
    // Rows: three singles, two calls of many.
    assert_eq!(db.count("SELECT COUNT(*) FROM access_log").await, 5);
    let purposes = |page: &[(i64, AccessEntry)]| -> Vec<String> {
        page.iter().map(|(_, e)| e.purpose.clone()).collect()
    };
    let first = store.access_log(&cid(a), None, 2).await.unwrap();
    assert_eq!(purposes(&first), ["run 5", "run 4"]);
    assert!(first.iter().all(|(_, e)| e.citizen_id == cid(a)));
    let rest = store
        .access_log(&cid(a), Some(first[1].0), 10)
        .await
        .unwrap();
    assert_eq!(purposes(&rest), ["run 2", "run 1"]);
    assert_eq!(rest[0].1.request_id, call);
    let b_log = store.access_log(&cid(b), None, 10).await.unwrap();
    assert_eq!(purposes(&b_log), ["run 3", "run 2"]);
    let c_log = store.access_log(&cid(c), None, 10).await.unwrap();
    assert_eq!(purposes(&c_log), ["run 4", "run 2"]);
    // On PostgreSQL the index over a call's citizens takes new entries into its pending
    // list and the log's cleaner merges them; the logs read the same after the merge.
    let merged = store.clean_access_log_index().await.unwrap();
    assert_eq!(merged, matches!(backend, Backend::Postgres));
    if merged {
        let options = db
            .texts(
                "SELECT array_to_string(reloptions, ',') FROM pg_class \
                 WHERE relname = 'access_log_by_citizen_key'",
            )
            .await;
        // Its pending list holds up to 32 MB: the registry merges it in bulk (0022).
        assert_eq!(options, ["fastupdate=on,gin_pending_list_limit=32768"]);
        // The calls' citizens are held as numbers (migration 0017).
        assert_eq!(
            db.count(
                "SELECT COUNT(*) FROM access_log WHERE citizen_keys IS NOT NULL \
                 AND citizen_ids IS NULL AND citizen_id IS NULL"
            )
            .await,
            2
        );
    }
    let c_log = store.access_log(&cid(c), None, 10).await.unwrap();
    assert_eq!(purposes(&c_log), ["run 4", "run 2"]);
    let a_log = store.access_log(&cid(a), None, 10).await.unwrap();
    assert_eq!(purposes(&a_log), ["run 5", "run 4", "run 2", "run 1"]);
    if merged {
        // A call logged before migration 0017 named its citizens as text: still listed,
        // in order, and only in its own citizens' logs.
        db.execute_raw(&format!(
            "INSERT INTO access_log (citizen_ids, client_id, method, purpose, accessed_at, \
             request_id) VALUES (ARRAY['{a}', '{c}'], 'vss', 'BatchResolve', 'run 6', {}, \
             gen_random_uuid())",
            now.micros() + 6
        ))
        .await
        .expect("a row in the form before 0017");
        let a_log = store.access_log(&cid(a), None, 10).await.unwrap();
        assert_eq!(
            purposes(&a_log),
            ["run 6", "run 5", "run 4", "run 2", "run 1"]
        );
        let b_log = store.access_log(&cid(b), None, 10).await.unwrap();
        assert_eq!(purposes(&b_log), ["run 3", "run 2"]);
        let c_page = store.access_log(&cid(c), None, 2).await.unwrap();
        assert_eq!(purposes(&c_page), ["run 6", "run 4"]);
        let c_rest = store
            .access_log(&cid(c), Some(c_page[1].0), 10)
            .await
            .unwrap();
        assert_eq!(purposes(&c_rest), ["run 2"]);
        // A row naming its citizens twice over is refused.
        let both = format!(
            "INSERT INTO access_log (citizen_ids, citizen_keys, client_id, method, purpose, \
             accessed_at, request_id) VALUES (ARRAY['{a}'], ARRAY[{}]::int8[], 'vss', \
             'BatchResolve', 'x', 0, gen_random_uuid())",
            cid(a).number().unwrap()
        );
        db.execute_raw(&both)
            .await
            .expect_err("two lists of citizens");
    }
    assert!(store
        .access_log(&cid("001099099999"), None, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn every_claim_on_an_account_is_found_in_reverse(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let now = Timestamp::now();
    let first = store
        .link_account(
            &ctx(now),
            &verified_link(
                "001099012345",
                "0071000000001",
                VerificationMethod::InPerson,
            ),
        )
        .await
        .unwrap();
    store
        .change_account(&ctx(now), &action(&first, AccountAction::Close))
        .await
        .unwrap();
    store
        .link_account(
            &ctx(now.plus(HOUR)),
            &verified_link(
                "079200012345",
                "0071000000001",
                VerificationMethod::InPerson,
            ),
        )
        .await
        .unwrap();
    for (i, claimant) in ["048300012345", "048300012346", "048300012347"]
        .iter()
        .enumerate()
    {
        let later = now.plus(HOUR * (2 + i as u32));
        rejected(
            store
                .link_account(&ctx(later), &bank_link(claimant, "0071000000001"))
                .await,
        );
    }
    let key = AccountKey {
        kind: AccountKind::BankAccount,
        provider_code: "970436".into(),
        account_ref: AccountRef::parse(AccountKind::BankAccount, "0071000000001").unwrap(),
    };
    let claims = store.account_claims(&key).await.unwrap();
    let holders: Vec<_> = claims
        .iter()
        .map(|a| (a.citizen_id.as_str().to_owned(), a.status))
        .collect();
    assert_eq!(
        holders,
        [
            ("001099012345".to_owned(), AccountStatus::Closed),
            ("079200012345".to_owned(), AccountStatus::Verified)
        ]
    );
    let page1 = store.duplicate_claims(Some(&key), None, 2).await.unwrap();
    let claimants: Vec<_> = page1.iter().map(|c| c.claimant.as_str()).collect();
    assert_eq!(claimants, ["048300012347", "048300012346"]);
    let last = page1.last().unwrap();
    let page2 = store
        .duplicate_claims(Some(&key), Some((last.detected_at, last.claim_id)), 2)
        .await
        .unwrap();
    assert_eq!(page2.len(), 1);
    assert_eq!(page2[0].claimant.as_str(), "048300012345");
    let other = AccountKey {
        account_ref: AccountRef::parse(AccountKind::BankAccount, "0071000000002").unwrap(),
        ..key
    };
    assert!(store
        .duplicate_claims(Some(&other), None, 10)
        .await
        .unwrap()
        .is_empty());
}

/// A load's ANALYZE refreshes the statistics of the tables its stream's batches look
/// rows up in and fill, and only those: a citizens load leaves the accounts' tables to
/// the accounts load, which leaves the citizens' as they are.
async fn analyze_gives_the_planner_statistics_of_the_tables_a_streams_load_looks_up(
    backend: Backend,
) {
    let (db, store) = setup(backend).await;
    let now = Timestamp::now();
    store
        .link_account(&ctx(now), &bank_link("001099012345", "0071 0001 23456"))
        .await
        .unwrap();
    let analysed = || async {
        match backend {
            Backend::Postgres => {
                db.texts(
                    "SELECT relname::text FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL \
                     AND relname IN ('citizens', 'citizen_aliases', 'sync_records', 'accounts', \
                     'preferences', 'events', 'account_history') ORDER BY relname",
                )
                .await
            }
            // SQLite keeps statistics of the non-empty tables' indexes only.
            Backend::Sqlite => {
                db.texts("SELECT DISTINCT tbl FROM sqlite_stat1 ORDER BY tbl")
                    .await
            }
        }
    };
    store.analyze(SyncStream::Citizens).await.unwrap();
    let expected: &[&str] = match backend {
        Backend::Postgres => &["citizen_aliases", "citizens", "sync_records"],
        Backend::Sqlite => &["citizens"],
    };
    assert_eq!(
        analysed().await,
        expected,
        "after a citizens load's ANALYZE"
    );
    store.analyze(SyncStream::Accounts).await.unwrap();
    let expected: &[&str] = match backend {
        Backend::Postgres => &[
            "accounts",
            "citizen_aliases",
            "citizens",
            "preferences",
            "sync_records",
        ],
        Backend::Sqlite => &["accounts", "citizens"],
    };
    assert_eq!(
        analysed().await,
        expected,
        "after an accounts load's ANALYZE"
    );
}

/// A sync batch whose write fails partway through leaves nothing of itself behind, and
/// sent again once the fault is gone it is applied whole. The fault is an error raised
/// on the third record's history row, after the rows before it in the same multi-row
/// statement were written: SQLite's `INSERT OR FAIL` keeps those rows in the transaction
/// (it keeps no statement journal to undo them), so this holds only because every write
/// error drops the batch's transaction unchanged.
async fn a_sync_batch_whose_write_fails_partway_leaves_nothing_and_applies_whole_when_resent(
    backend: Backend,
) {
    let (db, store) = setup(backend).await;
    let records: Vec<SyncCitizen> = (0..5)
        .map(|i| common::active_citizen(&format!("fault-{i}"), cid(&format!("0010990000{i:02}"))))
        .collect();
    let faulty = "001099000002";
    let inject = match backend {
        Backend::Sqlite => vec![format!(
            "CREATE TRIGGER injected_fault BEFORE INSERT ON citizen_history \
             WHEN NEW.citizen_id = '{faulty}' BEGIN SELECT RAISE(FAIL, 'injected fault'); END"
        )],
        Backend::Postgres => vec![
            format!(
                "CREATE FUNCTION injected_fault() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN IF NEW.citizen_id = '{faulty}' THEN \
                 RAISE EXCEPTION 'injected fault'; END IF; RETURN NEW; END $$"
            ),
            "CREATE TRIGGER injected_fault BEFORE INSERT ON citizen_history \
             FOR EACH ROW EXECUTE FUNCTION injected_fault()"
                .into(),
        ],
    };
    for sql in &inject {
        db.execute_raw(sql).await.expect("the fault is installed");
    }
    let failed = store.sync_citizens(&ctx(Timestamp::now()), &records).await;
    assert!(failed.is_err(), "the batch's write failed: {failed:?}");
    for table in ["citizens", "citizen_history", "sync_records", "events"] {
        assert_eq!(
            db.count(&format!("SELECT COUNT(*) FROM {table}")).await,
            0,
            "{table} keeps nothing of the failed batch"
        );
    }

    let remove = match backend {
        Backend::Sqlite => "DROP TRIGGER injected_fault",
        Backend::Postgres => "DROP TRIGGER injected_fault ON citizen_history",
    };
    db.execute_raw(remove).await.expect("the fault is removed");
    let applied = store
        .sync_citizens(&ctx(Timestamp::now()), &records)
        .await
        .expect("applied once the fault is gone");
    assert_eq!(applied.outcomes, vec![RecordOutcome::Applied; 5]);
    assert_eq!(db.count("SELECT COUNT(*) FROM citizen_history").await, 5);
    let check = store.check_resolution_model(None, false).await.unwrap();
    common::assert_whole(&check);
    assert_eq!(check.checked, 5);
}

on_both_backends!(
    a_sync_batch_whose_write_fails_partway_leaves_nothing_and_applies_whole_when_resent,
    analyze_gives_the_planner_statistics_of_the_tables_a_streams_load_looks_up,
    payout_failures_are_recorded_and_suspend_verified_accounts,
    the_access_log_is_appended_in_batches_and_read_newest_first,
    a_read_of_many_citizens_is_listed_in_each_of_their_logs_in_order,
    every_claim_on_an_account_is_found_in_reverse,
    linking_creates_a_pending_account_with_its_first_history_entry,
    verifying_makes_the_first_verified_account_the_default,
    illegal_transitions_are_refused_and_change_nothing,
    a_second_citizen_claiming_a_verified_account_is_refused_and_recorded,
    verifying_an_account_another_citizen_holds_is_refused_and_recorded,
    a_suspended_account_still_belongs_to_its_holder,
    a_stale_expected_version_is_aborted_and_changes_nothing,
    a_repeated_idempotency_key_returns_the_first_answer,
    idempotency_keys_survive_a_restart,
    retrying_a_refused_duplicate_claim_does_not_record_it_twice,
    a_citizen_may_have_at_most_ten_open_accounts,
    the_same_citizen_cannot_link_the_same_account_twice_while_it_is_open,
    providers_must_exist_be_active_and_match_the_kind,
    resolution_prefers_the_program_then_the_default_and_only_pays_verified_accounts,
    preferences_need_a_verified_account_of_the_same_citizen_and_a_known_program,
    death_and_revocation_stop_payment_and_stale_records_change_nothing,
    name_match_verification_compares_normalised_names,
    resolution_as_of_a_past_instant_answers_from_history,
    cooling_off_keeps_paying_the_previous_account_unless_the_issuer_confirmed_the_new_one,
    every_change_appends_history_and_an_event_in_order,
    history_cannot_be_rewritten_even_with_direct_sql,
);

/// The identifiers the indexes order (citizen ids, codes, references, record ids) are
/// compared byte by byte (migration 0019), also on a database created under the Vietnamese
/// locale (as every PostgreSQL test database is): no lookup or insert goes through the
/// locale (3.6-5x slower lookups under vi-VN), and their order is SQLite's.
#[tokio::test]
async fn postgres_indexes_compare_identifiers_byte_by_byte_under_a_vietnamese_locale() {
    let (db, store) = setup(Backend::Postgres).await;
    let locale = db
        .texts(
            "SELECT datlocprovider::text || ' ' || daticulocale FROM pg_database \
             WHERE datname = current_database()",
        )
        .await;
    assert_eq!(locale, ["i vi-VN"]);
    // The database's own order is not the byte order, so the check below means something.
    let own = db
        .texts("SELECT x FROM (VALUES ('B'), ('a'), ('_')) v (x) ORDER BY x")
        .await;
    assert_eq!(own, ["_", "a", "B"]);
    let not_bytewise = db
        .texts(
            "SELECT DISTINCT c.relname || '.' || a.attname FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             CROSS JOIN LATERAL generate_subscripts(i.indkey, 1) AS k \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[k] \
             WHERE n.nspname = 'public' AND a.atttypid = 'text'::regtype \
             AND k < i.indnkeyatts AND i.indcollation[k] <> 'pg_catalog.\"C\"'::regcollation \
             ORDER BY 1",
        )
        .await;
    assert!(
        not_bytewise.is_empty(),
        "indexed identifiers under the database's locale: {not_bytewise:?}"
    );
    // The columns that hold citizen ids, wherever they are, so joins between them agree.
    let citizen_columns = db
        .texts(
            "SELECT table_name || '.' || column_name FROM information_schema.columns \
             WHERE table_schema = 'public' AND data_type = 'text' \
             AND column_name LIKE '%citizen_id' AND collation_name IS DISTINCT FROM 'C' \
             ORDER BY 1",
        )
        .await;
    assert!(citizen_columns.is_empty(), "{citizen_columns:?}");
    // And the store works there: a link, its verification, the answer.
    let now = Timestamp::now();
    let a = link_verified(&store, "001099012345", "0071000123456", now).await;
    let r = store
        .resolve(&query("001099012345", None, None), now)
        .await
        .unwrap();
    assert_eq!(resolved_id(&r), Some(a.id));
}

/// The sequencer's queue of unnumbered events (`feed_pending`) gives its pages back once a
/// backlog is numbered and the queue vacuumed (migration 0025). A bulk load makes it long
/// (22,431 pages, 175 MB, after a 1 M-citizen load), the sequencer's VACUUMs during the
/// catch-up empty its front, and the rounds after the last one leave dead rows on a few
/// pages at its end: too few (under 2% of the pages) for PostgreSQL's VACUUM to clean the
/// index by default, and the pages that keep their dead entries cannot be truncated. The
/// queue then stayed that long, read whole by every step of the sync digest (46-279 ms a
/// read in the first SyncAccounts stream after a load).
#[tokio::test]
async fn postgres_gives_back_the_pages_of_a_drained_event_queue() {
    let (db, store) = setup(Backend::Postgres).await;
    // A backlog of 30,000 committed events, as a bulk load leaves.
    db.execute_raw(
        "INSERT INTO events (event_id, occurred_at, event_type, citizen_id, actor, reason, \
         payload) SELECT gen_random_uuid(), 0, 'ACCOUNT_LINKED', '001099012345', 'test', '', \
         '{}' FROM generate_series(1, 30000)",
    )
    .await
    .unwrap();
    let pages = "SELECT pg_relation_size('feed_pending') / 8192";
    let backlog = db.count(pages).await;
    assert!(backlog >= 150, "a long queue: {backlog} pages");
    // All but the last 100 numbered, then the sequencer's VACUUM: the front is emptied.
    assert_eq!(
        store.sequence_events(29_900).await.unwrap().assigned,
        29_900
    );
    store.vacuum_feed_queue().await.unwrap();
    // The rest numbered, then a VACUUM (the sequencer's, autovacuum's or an operator's).
    assert_eq!(store.sequence_events(1_000).await.unwrap().assigned, 100);
    db.execute_raw("VACUUM feed_pending").await.unwrap();
    assert_eq!(db.count("SELECT COUNT(*) FROM feed_pending").await, 0);
    assert_eq!(
        db.count(pages).await,
        0,
        "the drained queue's pages are given back"
    );
}

/// SQLite: commits reach the database file itself shortly after, copied from the WAL by
/// the checkpointer's own connection, long before the writer's backstop checkpoint (40,000
/// pages) would. Read with `immutable=1`, SQLite reads the file alone and ignores the WAL.
#[tokio::test]
async fn sqlite_commits_are_checkpointed_off_the_writer() {
    let (db, store) = setup(Backend::Sqlite).await;
    let file = db
        .url
        .strip_prefix("sqlite://")
        .expect("a SQLite url")
        .to_owned();
    // The accounts in the file alone; `None` while the file does not have the table yet.
    let in_file = || async {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&file)
            .read_only(true)
            .immutable(true);
        let mut conn = sqlx::ConnectOptions::connect(&options).await.expect("open");
        let counted: Result<(i64,), _> = sqlx::query_as("SELECT count(*) FROM accounts")
            .fetch_one(&mut conn)
            .await;
        counted.ok().map(|(n,)| n)
    };
    let until_in_file = |accounts: i64, what: &'static str| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while in_file().await != Some(accounts) {
            assert!(
                std::time::Instant::now() < deadline,
                "{what} still only in the WAL after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    until_in_file(0, "the migrations are").await;
    link_verified(&store, "001089000001", "0071000000001", Timestamp::now()).await;
    until_in_file(1, "the account is").await;
}
