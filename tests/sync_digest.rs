//! ChangeFeed.GetSyncDigest end to end, on both backends: a consumer builds its own copy
//! of who gets paid where from the feed alone, following the recipe documented on the
//! RPC, and computes the same digest and count as the registry, for every citizen and
//! per province, as the registry changes through every kind of write (links,
//! verifications, defaults, program preferences, suspension, reinstatement, closure,
//! payout failures, deaths and their correction from the population sync, declared
//! accounts). The copy is also checked against Resolve, and a copy that misses one
//! change is caught.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::{
    feed_on, refused, set_preference, sync_accounts, sync_citizens, Backend, TestApp, ADMIN, FEED,
    PAYER, WATCHER,
};
use payout_registry::proto::{
    AccountKind, AccountRecord, AccountStatus, CitizenRecord, CitizenStatus, CloseAccountRequest,
    FeedEvent, GetSyncDigestRequest, GetSyncDigestResponse, PayoutFailureCode,
    ReinstateAccountRequest, ReportPayoutFailureRequest, ResolveOutcome, ResolveRequest,
    SubscribeRequest, SuspendAccountRequest, VerificationMethod,
};
use sha2::{Digest as _, Sha256};
use tonic::Code;
use uuid::Uuid;

on_both_backends!(
    a_consumer_rebuilding_from_the_feed_computes_the_registrys_digest,
    the_digest_needs_events_all_and_a_real_province,
);

// ---------------------------------------------------------------------------------------
// The consumer's side: its copy of the registry, built only from feed events, and the
// digest computed from it exactly as the RPC's documentation says.
// ---------------------------------------------------------------------------------------

#[derive(Default, Clone)]
struct Copy {
    /// Citizens announced by CITIZEN_STATUS_CHANGED; the others are ACTIVE.
    status: HashMap<String, CitizenStatus>,
    /// Every account's last known status.
    accounts: HashMap<String, AccountStatus>,
    /// (citizen, program_code) → account, from DEFAULT_CHANGED.
    preferences: BTreeMap<(String, String), String>,
    /// The last position applied.
    position: u64,
}

impl Copy {
    fn apply(&mut self, e: &FeedEvent) {
        assert_eq!(e.position, self.position + 1, "the feed is gapless");
        self.position = e.position;
        use payout_registry::proto::feed_event::Payload;
        if let Some(a) = common::event_account(e) {
            self.accounts.insert(a.account_id.clone(), a.status());
        }
        match &e.payload {
            Some(Payload::CitizenStatusChanged(c)) => {
                self.status.insert(e.citizen_id.clone(), c.status());
            }
            Some(Payload::PreferenceChanged(p)) => {
                let account = p
                    .account
                    .as_ref()
                    .expect("DEFAULT_CHANGED names its account");
                self.preferences.insert(
                    (e.citizen_id.clone(), p.program_code.clone()),
                    account.account_id.clone(),
                );
            }
            _ => {}
        }
    }

    /// The live routes: (citizen, program, account).
    fn routes(&self) -> Vec<(&str, &str, &str)> {
        self.preferences
            .iter()
            .filter(|((citizen, _), account)| {
                self.status
                    .get(citizen.as_str())
                    .is_none_or(|s| *s == CitizenStatus::Active)
                    && self.accounts.get(account.as_str()) == Some(&AccountStatus::Verified)
            })
            .map(|((citizen, program), account)| {
                (citizen.as_str(), program.as_str(), account.as_str())
            })
            .collect()
    }

    /// XOR of SHA-256(citizen "\n" program "\n" account), and the count, for the
    /// citizens whose id starts with `province` ("" for all).
    fn digest(&self, province: &str) -> (Vec<u8>, u64) {
        let mut digest = [0u8; 32];
        let mut count = 0;
        for (citizen, program, account) in self.routes() {
            if !citizen.starts_with(province) {
                continue;
            }
            let hash = Sha256::digest(format!("{citizen}\n{program}\n{account}").as_bytes());
            digest.iter_mut().zip(hash).for_each(|(d, h)| *d ^= h);
            count += 1;
        }
        (digest.to_vec(), count)
    }
}

/// Applies the feed to `copy` up to `position`.
async fn catch_up(app: &TestApp, copy: &mut Copy, position: u64) {
    if copy.position >= position {
        return;
    }
    let mut stream = feed_on(app.channel(), Some(FEED))
        .subscribe(SubscribeRequest {
            after_position: copy.position,
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    while copy.position < position {
        let e = tokio::time::timeout(Duration::from_secs(10), common::next_event(&mut stream))
            .await
            .expect("an event within 10 s")
            .expect("stream open");
        copy.apply(&e);
    }
}

async fn digest(app: &TestApp, province: &str) -> GetSyncDigestResponse {
    feed_on(app.channel(), Some(FEED))
        .get_sync_digest(GetSyncDigestRequest {
            province_code: province.into(),
        })
        .await
        .expect("digest")
        .into_inner()
}

/// The digest once the registry is quiet: the writes the test made have committed, so
/// once the sequencer has numbered their events and brought the digest up to that head,
/// the digest describes it.
async fn settled_digest(app: &TestApp, province: &str) -> GetSyncDigestResponse {
    let head = common::digest_at_head(app).await;
    let d = feed_on(app.channel(), Some(FEED))
        .get_sync_digest(GetSyncDigestRequest {
            province_code: province.into(),
        })
        .await
        .expect("digest")
        .into_inner();
    assert_eq!(
        d.position as i64, head,
        "the digest describes the quiet head"
    );
    d
}

/// Compares the registry's digest (all citizens and the provinces used) with the copy's,
/// each at the position the registry names.
async fn assert_in_sync(app: &TestApp, copy: &mut Copy) {
    let all = settled_digest(app, "").await;
    catch_up(app, copy, all.position).await;
    assert_eq!(all.algorithm, "xor-sha256-v1");
    let (expected, count) = copy.digest("");
    assert_eq!(
        all.routes, count,
        "route count at position {}",
        all.position
    );
    assert_eq!(all.digest, expected, "digest at position {}", all.position);
    for province in ["001", "079", "048"] {
        let d = digest(app, province).await;
        assert_eq!(d.position, copy.position, "nothing was written since");
        assert_eq!(
            (d.digest, d.routes),
            copy.digest(province),
            "province {province}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The registry's side: changes through the real API.
// ---------------------------------------------------------------------------------------

fn key() -> String {
    Uuid::new_v4().to_string()
}

async fn link(app: &TestApp, citizen: &str, number: &str) -> String {
    common::link_issuer_confirmed(app, citizen, number).await
}

#[derive(Clone, Copy)]
enum Action {
    Suspend,
    Reinstate,
    Close,
}

async fn change(app: &TestApp, action: Action, account: &str) {
    let mut registry = app.registry(Some(ADMIN));
    let (account_id, idempotency_key) = (account.to_owned(), key());
    let reason = "digest test".to_owned();
    match action {
        Action::Suspend => registry
            .suspend_account(SuspendAccountRequest {
                idempotency_key,
                account_id,
                reason,
                ..Default::default()
            })
            .await
            .map(drop),
        Action::Reinstate => registry
            .reinstate_account(ReinstateAccountRequest {
                idempotency_key,
                account_id,
                reason,
                ..Default::default()
            })
            .await
            .map(drop),
        Action::Close => registry
            .close_account(CloseAccountRequest {
                idempotency_key,
                account_id,
                reason,
                ..Default::default()
            })
            .await
            .map(drop),
    }
    .expect("account change");
}

async fn report_failure(app: &TestApp, account: &str) {
    app.registry(Some(PAYER))
        .report_payout_failure(ReportPayoutFailureRequest {
            idempotency_key: key(),
            account_id: account.into(),
            program_code: "PENSION".into(),
            failure_code: PayoutFailureCode::AccountFrozen.into(),
            payer_reference: "PAY-1".into(),
            reason: "credit bounced".into(),
            ..Default::default()
        })
        .await
        .expect("report failure");
}

fn citizen_record(citizen: &str, version: i64, deceased: bool) -> CitizenRecord {
    CitizenRecord {
        record_id: format!("citizen-{citizen}"),
        version,
        citizen_id: citizen.into(),
        full_name: "NGUYEN VAN AN".into(),
        status: if deceased {
            CitizenStatus::Deceased
        } else {
            CitizenStatus::Active
        }
        .into(),
        date_of_death: if deceased {
            common::date("2026-10-01")
        } else {
            None
        },
        ..Default::default()
    }
}

async fn sync_citizen(app: &TestApp, record: CitizenRecord) {
    let acks = sync_citizens(app, vec![record]).await;
    assert_eq!(
        acks.last().map(|a| a.applied),
        Some(1),
        "the citizen record is applied"
    );
}

async fn declare_account(app: &TestApp, citizen: &str, number: &str) {
    let record = AccountRecord {
        record_id: format!("account-{number}"),
        version: 1,
        citizen_id: citizen.into(),
        kind: AccountKind::BankAccount.into(),
        provider_code: "970436".into(),
        account_ref: number.into(),
        holder_name: "NGUYEN VAN AN".into(),
        verification_method: VerificationMethod::IssuerConfirmed.into(),
        removed: false,
    };
    let acks = sync_accounts(app, vec![record]).await;
    assert_eq!(
        acks.last().map(|a| a.applied),
        Some(1),
        "the declared account is applied"
    );
}

async fn resolved_default(app: &TestApp, citizen: &str) -> Option<String> {
    let r = app
        .resolver(Some(PAYER))
        .resolve(ResolveRequest {
            citizen_id: citizen.into(),
            ..Default::default()
        })
        .await
        .expect("resolve")
        .into_inner();
    (r.outcome() == ResolveOutcome::Resolved).then(|| r.account.expect("account").account_id)
}

const A: &str = "001090000001";
const B: &str = "079090000002";
const C: &str = "079085000003";
const D: &str = "001085000004";
const E: &str = "048090000005";

async fn a_consumer_rebuilding_from_the_feed_computes_the_registrys_digest(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut copy = Copy::default();

    // A: two accounts, the second made the default, the first kept for pensions.
    let a1 = link(&app, A, "0011000001").await;
    let a2 = link(&app, A, "0011000002").await;
    set_preference(&app, A, &a2, "").await;
    set_preference(&app, A, &a1, "PENSION").await;
    // B: one account; C and D: one each; E: declared by the population platform.
    let b1 = link(&app, B, "0791000001").await;
    let c1 = link(&app, C, "0791000002").await;
    let d1 = link(&app, D, "0011000003").await;
    sync_citizen(&app, citizen_record(C, 10, false)).await;
    sync_citizen(&app, citizen_record(E, 1, false)).await;
    declare_account(&app, E, "0481000001").await;
    assert_in_sync(&app, &mut copy).await;
    assert_eq!(copy.routes().len(), 6, "A twice, B, C, D, E");

    // Every resolved default is one of the copy's routes, and vice versa.
    let mut resolved = 0;
    for citizen in [A, B, C, D, E] {
        let paid = resolved_default(&app, citizen).await;
        let route = copy
            .preferences
            .get(&(citizen.to_owned(), String::new()))
            .filter(|_| {
                copy.routes()
                    .iter()
                    .any(|r| r.0 == citizen && r.1.is_empty())
            });
        assert_eq!(paid.as_ref(), route, "citizen {}'s default", &citizen[..3]);
        resolved += usize::from(paid.is_some());
    }
    assert_eq!(resolved, 5);

    // Routes go and come back: suspension, reinstatement, closure, death and its
    // correction, a payout failure (which suspends the account).
    change(&app, Action::Suspend, &b1).await;
    assert_in_sync(&app, &mut copy).await;
    assert_eq!(copy.routes().len(), 5);
    change(&app, Action::Reinstate, &b1).await;
    change(&app, Action::Close, &d1).await;
    sync_citizen(&app, citizen_record(C, 11, true)).await;
    assert_in_sync(&app, &mut copy).await;
    assert_eq!(copy.routes().len(), 4, "D closed, C dead");
    assert_eq!(resolved_default(&app, C).await, None);
    sync_citizen(&app, citizen_record(C, 12, false)).await;
    report_failure(&app, &a2).await;
    assert_in_sync(&app, &mut copy).await;
    assert_eq!(copy.routes().len(), 4, "C corrected; A's default suspended");
    assert!(copy.routes().contains(&(A, "PENSION", a1.as_str())));
    assert_eq!(resolved_default(&app, A).await, None);
    assert_eq!(resolved_default(&app, C).await, Some(c1));

    // A copy that missed a change no longer matches.
    let mut stale = copy.clone();
    stale.accounts.insert(a2.clone(), AccountStatus::Verified);
    assert_ne!(stale.digest("001"), copy.digest("001"));
    assert_ne!(stale.digest("").0, digest(&app, "").await.digest);
    // Provinces the copy has no citizen in: zero routes, 32 zero bytes.
    let empty = digest(&app, "096").await;
    assert_eq!((empty.routes, empty.digest), (0, vec![0; 32]));
}

async fn the_digest_needs_events_all_and_a_real_province(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    link(&app, A, "0011000001").await;
    let d = settled_digest(&app, "").await;
    assert_eq!(d.routes, 1);
    let bad = feed_on(app.channel(), Some(FEED))
        .get_sync_digest(GetSyncDigestRequest {
            province_code: "099".into(),
        })
        .await;
    let status = refused(bad, Code::InvalidArgument, "PROVINCE_CODE_INVALID");
    assert!(status.message().contains("province"));
    // A watch-list consumer sees only its citizens' events: it cannot hold a copy the
    // whole-province digest describes.
    let denied = feed_on(app.channel(), Some(WATCHER))
        .get_sync_digest(GetSyncDigestRequest::default())
        .await
        .expect_err("events.subscribe alone is not enough");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let anonymous = feed_on(app.channel(), None)
        .get_sync_digest(GetSyncDigestRequest::default())
        .await
        .expect_err("a token is required");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}

/// The digest's work in bounded steps, driven round by round through the store: the
/// first build over a population whose events were numbered before any digest existed,
/// and the catch-up after a busy spell, each with writes between the steps. Nothing is
/// published until the work has reached the head; what is published is what one
/// uninterrupted build of the same state computes.
mod in_steps {
    use std::sync::Arc;

    use crate::common::{self, Backend, TestDb};
    use payout_registry::domain::*;
    use payout_registry::store::{Store, SyncDigest, WriteContext};

    crate::on_both_backends!(
        the_digest_is_built_and_caught_up_in_bounded_steps_while_writes_go_on,
        a_step_defers_a_citizen_whose_change_waits_for_its_feed_position
    );

    const PROVINCES: [&str; 3] = ["001", "048", "079"];

    fn ctx() -> WriteContext {
        WriteContext {
            actor: "test-client".into(),
            idempotency: None,
            now: Timestamp::now(),
            authority: common::entitled(),
        }
    }

    /// Citizen `n` of `province`: ids sort by province, then by `n`.
    fn citizen(province: &str, n: u32) -> String {
        format!("{province}09{n:07}")
    }

    /// Links and verifies an account, the citizen's first: it becomes the default.
    async fn paid(store: &Arc<dyn Store>, citizen: &str, number: u32) -> Account {
        store
            .link_account(
                &ctx(),
                &LinkAccount {
                    citizen_id: CitizenId::parse(citizen).unwrap(),
                    kind: AccountKind::BankAccount,
                    provider_code: "970436".into(),
                    account_ref: AccountRef::parse(
                        AccountKind::BankAccount,
                        &format!("00710{number:08}"),
                    )
                    .unwrap(),
                    holder_name: None,
                    verification: Some(VerificationInput {
                        method: VerificationMethod::InPerson,
                        evidence_ref: "ev-1".into(),
                    }),
                    reason: "test".into(),
                },
            )
            .await
            .unwrap()
    }

    async fn change(store: &Arc<dyn Store>, account: &Account, action: AccountAction) {
        store
            .change_account(
                &ctx(),
                &ChangeAccount {
                    account_id: account.id,
                    expected_version: None,
                    action,
                    reason: "test".into(),
                },
            )
            .await
            .unwrap();
    }

    async fn published(store: &Arc<dyn Store>) -> Option<SyncDigest> {
        store.sync_digest(None).await.unwrap()
    }

    /// Citizens `0..n`, spread over the provinces in turn, each paid to one verified
    /// account (citizen `n`'s is `accounts[n]`), their events numbered.
    async fn paid_population(store: &Arc<dyn Store>, n: u32) -> Vec<Account> {
        let mut accounts = Vec::new();
        for i in 0..n {
            let province = PROVINCES[(i % 3) as usize];
            accounts.push(paid(store, &citizen(province, i), i).await);
        }
        number_all(store).await;
        accounts
    }

    /// Numbers every committed event without the digest's work: rounds of a busy feed.
    async fn number_all(store: &Arc<dyn Store>) {
        while store.sequence_events(1000).await.unwrap().assigned > 0 {}
    }

    /// The digest, and each province's, as one uninterrupted build computes them from
    /// the state now: the digest is dropped and built again in a single round.
    async fn built_at_once(db: &TestDb, store: &Arc<dyn Store>) -> Vec<SyncDigest> {
        for sql in [
            "UPDATE digest_head SET digest_through = NULL, digest_work_through = NULL, \
             digest_build_cursor = NULL",
            "DELETE FROM digest_deferred",
            "DELETE FROM digest_citizens",
            "DELETE FROM digest_provinces",
        ] {
            db.execute_raw(sql).await.unwrap();
        }
        number_all(store).await;
        let step = store.step_digest(100_000).await.unwrap();
        assert!(!step.behind, "one step builds it");
        every_digest(store).await
    }

    async fn every_digest(store: &Arc<dyn Store>) -> Vec<SyncDigest> {
        let mut all = vec![published(store).await.expect("published")];
        for province in PROVINCES {
            all.push(store.sync_digest(Some(province)).await.unwrap().unwrap());
        }
        all
    }

    async fn the_digest_is_built_and_caught_up_in_bounded_steps_while_writes_go_on(
        backend: Backend,
    ) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        // 30 citizens, 10 per province, each paid to one verified account; their events
        // numbered before any digest existed (a registry upgraded over a population).
        let accounts = paid_population(&store, 30).await;
        assert!(published(&store).await.is_none());

        // The first build: four positions and four citizens a step. Between steps, writes
        // to citizens the scan has passed and to citizens it has not reached.
        let mut steps = 0;
        loop {
            store.sequence_events(4).await.unwrap();
            let step = store.step_digest(4).await.unwrap();
            steps += 1;
            if !step.behind {
                break;
            }
            assert!(published(&store).await.is_none(), "published mid-build");
            match steps {
                // Scanned in the first step (the smallest id): its route goes.
                2 => change(&store, &accounts[0], AccountAction::Suspend).await,
                // Below the cursor by now (001 sorts first): a route appears.
                4 => {
                    paid(&store, &citizen("001", 100), 100).await;
                }
                // Not yet scanned (079 sorts last): its route goes.
                5 => change(&store, &accounts[29], AccountAction::Close).await,
                _ => {}
            }
            assert!(steps < 200, "the build ends");
        }
        assert!(steps >= 8, "30 citizens, four a step: {steps} steps");
        let built = every_digest(&store).await;
        assert_eq!(built[0].position, store.feed_head().await.unwrap());
        assert_eq!(
            built[0].digest.routes, 29,
            "30, one suspended, one new, one closed"
        );
        assert_eq!(built, built_at_once(&db, &store).await);

        // A busy spell: changes numbered by rounds that skip the digest's work.
        let before = every_digest(&store).await;
        for account in &accounts[1..7] {
            change(&store, account, AccountAction::Suspend).await;
        }
        change(&store, &accounts[1], AccountAction::Reinstate).await;
        number_all(&store).await;
        let head = store.feed_head().await.unwrap();
        assert!(head - before[0].position >= 7);
        // The catch-up, two positions a step. Until it reaches the head, the digest
        // published before is what GetSyncDigest answers, exactly.
        let mut steps = 0;
        loop {
            store.sequence_events(2).await.unwrap();
            let step = store.step_digest(2).await.unwrap();
            steps += 1;
            if !step.behind {
                break;
            }
            assert_eq!(every_digest(&store).await, before, "step {steps}");
            if steps == 2 {
                paid(&store, &citizen("048", 200), 200).await;
            }
            assert!(steps < 200, "the catch-up ends");
        }
        assert!(
            steps as i64 >= (head - before[0].position) / 2,
            "{steps} steps"
        );
        let caught_up = every_digest(&store).await;
        assert_eq!(caught_up[0].position, store.feed_head().await.unwrap());
        assert_eq!(caught_up[0].digest.routes, 29 - 6 + 1 + 1);
        assert_eq!(caught_up, built_at_once(&db, &store).await);
    }

    /// A step runs apart from numbering, so its snapshot may hold committed changes the
    /// feed has not numbered yet. A citizen with such a change is not read ahead of the
    /// head: a step that takes in the citizen's numbered events defers it and publishes
    /// nothing; a citizen whose only change waits is left for the step that takes it in.
    async fn a_step_defers_a_citizen_whose_change_waits_for_its_feed_position(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let accounts = paid_population(&store, 6).await;
        assert!(!store.step_digest(1000).await.unwrap().behind);
        let built = every_digest(&store).await;
        assert_eq!(built[0].digest.routes, 6);

        // Citizen 0's suspension is numbered, its reinstatement committed but not yet:
        // the step takes in the suspension, and would read citizen 0 reinstated.
        change(&store, &accounts[0], AccountAction::Suspend).await;
        number_all(&store).await;
        let suspended_at = store.feed_head().await.unwrap();
        change(&store, &accounts[0], AccountAction::Reinstate).await;
        // The second step has nothing new to take in, and holds it back all the same: the
        // deferral is kept between steps.
        for step in 1..=2 {
            assert!(
                store.step_digest(1000).await.unwrap().behind,
                "step {step}: nothing published while citizen 0 is deferred"
            );
            assert_eq!(every_digest(&store).await, built, "step {step}");
        }

        // Numbered, the reinstatement is taken in with the deferred citizen: the digest
        // is published at the head, and is what one build of the state computes.
        number_all(&store).await;
        assert!(store.feed_head().await.unwrap() > suspended_at);
        assert!(!store.step_digest(1000).await.unwrap().behind);
        let caught_up = every_digest(&store).await;
        assert_eq!(caught_up[0].position, store.feed_head().await.unwrap());
        assert_eq!(caught_up[0].digest.routes, 6);
        assert_eq!(caught_up, built_at_once(&db, &store).await);

        // Citizen 1's suspension is numbered; citizen 2's waits. The step publishes at the
        // head: citizen 2's route is still in the digest, its change past the position.
        change(&store, &accounts[1], AccountAction::Suspend).await;
        number_all(&store).await;
        let head = store.feed_head().await.unwrap();
        change(&store, &accounts[2], AccountAction::Suspend).await;
        assert!(!store.step_digest(1000).await.unwrap().behind);
        let at_head = every_digest(&store).await;
        assert_eq!(at_head[0].position, head);
        assert_eq!(
            at_head[0].digest.routes, 5,
            "citizen 1 suspended, citizen 2 not yet"
        );

        // And the next, once citizen 2's change is numbered.
        number_all(&store).await;
        let step = store.step_digest(1000).await.unwrap();
        assert!(!step.behind);
        let last = every_digest(&store).await;
        assert_eq!(last[0].position, store.feed_head().await.unwrap());
        assert_eq!(last[0].digest.routes, 4);
        assert_eq!(last, built_at_once(&db, &store).await);
    }
}
