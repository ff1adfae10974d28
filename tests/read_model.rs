//! The resolution read model: Resolve answers from it, every write keeps it equal to the
//! tables it is derived from, and `payout-registry check` finds (and repairs) any row that
//! is not.

mod common;

use common::{Backend, TestApp, ADMIN, MASKED, PAYER};
use payout_registry::proto::{
    AccountKind, BatchResolveRequest, CitizenRecord, CitizenStatus, LinkAccountRequest,
    PayoutFailureCode, ReportPayoutFailureRequest, ResolveOutcome, ResolveRequest, ResolveResponse,
    SuspendAccountRequest, Verification, VerificationMethod, VerifyAccountRequest,
};
use payout_registry::store::ModelCheck;
use payout_registry::tools::demo::DemoSpec;
use uuid::Uuid;

on_both_backends!(
    check_is_clean_after_a_mixed_workload_and_finds_and_repairs_every_tampered_row,
    an_upgraded_database_gets_its_read_model_built_by_the_migration_step,
    check_finds_every_broken_reference_between_the_source_tables,
    a_rolling_update_writes_the_first_form_until_every_instance_reads_the_compact_one,
    a_batch_answers_each_account_as_resolve_does_in_full_and_masked,
);

/// Citizens written one record at a time, on top of a synced demo population.
const MOVED: &str = "001089007001";
const SUSPENDED: &str = "001089007002";
const FAILED: &str = "001089007003";
const DIED: &str = "001089007004";
/// A citizen id no citizen has.
const NOBODY: &str = "001089007099";

fn key() -> String {
    Uuid::new_v4().to_string()
}

/// Links a Vietcombank account, verified in person at link time unless `verified` is
/// false; answers its id.
async fn link(app: &TestApp, citizen: &str, number: &str, verified: bool) -> String {
    link_with(app.registry(Some(ADMIN)), citizen, number, verified).await
}

/// [`link`] through `registry`.
async fn link_with(
    mut registry: common::Registry,
    citizen: &str,
    number: &str,
    verified: bool,
) -> String {
    let request = LinkAccountRequest {
        idempotency_key: key(),
        citizen_id: citizen.into(),
        kind: AccountKind::BankAccount.into(),
        provider_code: "970436".into(),
        account_ref: number.into(),
        verification: verified.then(|| Verification {
            method: VerificationMethod::InPerson.into(),
            evidence_ref: "EV-7".into(),
            ..Default::default()
        }),
        reason: "declared at the commune office".into(),
        ..Default::default()
    };
    let response = registry.link_account(request).await;
    response
        .expect("link")
        .into_inner()
        .account
        .expect("account")
        .account_id
}

/// Makes `default` MOVED's default account and `pension` its PENSION account.
async fn prefer(app: &TestApp, default: &str, pension: &str) {
    for (account, program) in [(default, ""), (pension, "PENSION")] {
        common::set_preference(app, MOVED, account, program).await;
    }
}

/// The payer's answer for `citizen`, without the instant asked about and the feed
/// position, which move on while the answer stays the same.
async fn resolved(app: &TestApp, citizen: &str, program: &str) -> ResolveResponse {
    resolved_with(app.resolver(Some(PAYER)), citizen, program).await
}

/// [`resolved`] through `resolver`.
async fn resolved_with(
    mut resolver: common::Resolver,
    citizen: &str,
    program: &str,
) -> ResolveResponse {
    let mut response = resolver
        .resolve(ResolveRequest {
            citizen_id: citizen.into(),
            program_code: program.into(),
            purpose: "monthly payroll".into(),
            ..Default::default()
        })
        .await
        .expect("resolve")
        .into_inner();
    response.as_of = None;
    response.position = 0;
    response
}

async fn outcome(app: &TestApp, citizen: &str, program: &str) -> ResolveOutcome {
    resolved(app, citizen, program).await.outcome()
}

async fn check(app: &TestApp, repair: bool) -> ModelCheck {
    app.store
        .check_resolution_model(None, repair)
        .await
        .expect("check runs")
}

/// `payout-registry check <args>` against the test's database: its exit success and
/// standard output.
fn check_binary(app: &TestApp, args: &[&str]) -> (bool, String) {
    let data_dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_payout-registry"))
        .arg("check")
        .args(args)
        .env_remove("PAYOUT_REGISTRY_CONFIG")
        .env("DATABASE_URL", &app.db.url)
        .env("PAYOUT_REGISTRY__DATA_DIR", data_dir.path())
        .output()
        .expect("run payout-registry check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn check_is_clean_after_a_mixed_workload_and_finds_and_repairs_every_tampered_row(
    backend: Backend,
) {
    // No cache: the test tampers with the model behind the registry's back, which no
    // change-feed event announces.
    let app = TestApp::builder(backend)
        .configure(|s| s.resolution_cache_entries = 0)
        .spawn()
        .await;
    // The bulk path: a synced population with deaths, legacy ids, wallets and duplicate
    // claims.
    let spec = DemoSpec {
        citizens: 1_500,
        seed: 13,
    };
    payout_registry::tools::import::demo_store(app.store.clone(), &spec, 2)
        .await
        .expect("the population");

    // The single-record path, each write a different rule.
    let first = link(&app, MOVED, "0071007000011", true).await;
    let second = link(&app, MOVED, "0071007000012", false).await;
    app.registry(Some(ADMIN))
        .verify_account(VerifyAccountRequest {
            idempotency_key: key(),
            account_id: second.clone(),
            verification: Some(Verification {
                method: VerificationMethod::InPerson.into(),
                evidence_ref: "EV-8".into(),
                ..Default::default()
            }),
            reason: "ownership confirmed".into(),
            ..Default::default()
        })
        .await
        .expect("verify");
    prefer(&app, &second, &first).await;
    let suspended = link(&app, SUSPENDED, "0071007000021", true).await;
    app.registry(Some(ADMIN))
        .suspend_account(SuspendAccountRequest {
            idempotency_key: key(),
            account_id: suspended,
            reason: "requested by the provider".into(),
            ..Default::default()
        })
        .await
        .expect("suspend");
    let failed = link(&app, FAILED, "0071007000031", true).await;
    app.registry(Some(PAYER))
        .report_payout_failure(ReportPayoutFailureRequest {
            idempotency_key: key(),
            account_id: failed,
            failure_code: PayoutFailureCode::AccountFrozen.into(),
            payer_reference: "PAY-2026-12-0001".into(),
            ..Default::default()
        })
        .await
        .expect("report failure");
    link(&app, DIED, "0071007000041", true).await;
    let acks = common::sync_citizens(
        &app,
        vec![CitizenRecord {
            record_id: "death-7004".into(),
            version: 1,
            citizen_id: DIED.into(),
            full_name: "TRAN THI BINH".into(),
            date_of_birth: common::date("1989-02-03"),
            status: CitizenStatus::Deceased.into(),
            date_of_death: common::date("2026-11-30"),
            ..Default::default()
        }],
    )
    .await;
    assert_eq!(acks.iter().map(|a| a.applied).sum::<u64>(), 1, "{acks:?}");

    // Every row of the model equals what the source tables say.
    let clean = check(&app, false).await;
    assert!(
        clean.checked > 1_500,
        "every citizen checked: {}",
        clean.checked
    );
    assert!(clean.references_checked);
    common::assert_whole(&clean);
    assert_eq!(
        outcome(&app, DIED, "").await,
        ResolveOutcome::CitizenDeceased
    );
    assert_eq!(outcome(&app, MOVED, "").await, ResolveOutcome::Resolved);
    let sampled = app
        .store
        .check_resolution_model(Some(200), false)
        .await
        .unwrap();
    assert_eq!(sampled.checked, 200);
    assert_eq!(sampled.differences, vec![]);
    assert!(!sampled.references_checked, "a sample checks no references");

    // Tampered behind the registry's back: a status, a missing row, a row of no citizen
    // (in the JSON form of rows before migration 0018), another citizen's preferences.
    for sql in [
        format!("UPDATE resolution_inputs SET status = 'DECEASED' WHERE citizen_id = '{MOVED}'"),
        format!("DELETE FROM resolution_inputs WHERE citizen_id = '{SUSPENDED}'"),
        format!(
            "INSERT INTO resolution_inputs (citizen_id, status, preferences) \
             VALUES ('{NOBODY}', 'ACTIVE', '[]')"
        ),
        format!(
            "UPDATE resolution_inputs SET inputs = \
             (SELECT inputs FROM resolution_inputs WHERE citizen_id = '{DIED}') \
             WHERE citizen_id = '{FAILED}'"
        ),
    ] {
        app.db.execute_raw(&sql).await.expect("tamper");
    }
    // Resolve answers from the model alone: the tampered status is what it says.
    assert_eq!(
        outcome(&app, MOVED, "").await,
        ResolveOutcome::CitizenDeceased
    );
    let found = check(&app, false).await;
    let mut who: Vec<&str> = found
        .differences
        .iter()
        .map(|d| d.citizen_id.as_str())
        .collect();
    who.dedup();
    assert_eq!(who, vec![MOVED, SUSPENDED, FAILED, NOBODY], "{found:?}");
    assert!(found.differences[0].what.contains("status"), "{found:?}");
    assert!(found.differences[1].what.contains("missing"), "{found:?}");
    assert!(
        found.differences[2].what.contains("default preference"),
        "{found:?}"
    );
    assert!(
        found.differences[3].what.contains("not a citizen"),
        "{found:?}"
    );

    // The command an operator runs: it fails, names each citizen masked, and repairs.
    let (ok, out) = check_binary(&app, &[]);
    assert!(!ok, "differences fail the check: {out}");
    assert!(out.contains("4 differences"), "{out}");
    for citizen in [MOVED, SUSPENDED, FAILED, NOBODY] {
        assert!(!out.contains(citizen), "an unmasked citizen id: {out}");
    }
    let (ok, out) = check_binary(&app, &["--repair"]);
    assert!(ok, "{out}");
    assert!(out.contains("4 citizens repaired"), "{out}");
    assert_eq!(check(&app, false).await.differences, vec![]);
    assert_eq!(outcome(&app, MOVED, "").await, ResolveOutcome::Resolved);
    assert_eq!(
        app.db
            .count(&format!(
                "SELECT COUNT(*) FROM resolution_inputs WHERE citizen_id = '{NOBODY}'"
            ))
            .await,
        0
    );
    app.stop().await;
}

/// A database from before the read model (its table empty, never marked built) is filled
/// from the source tables when the service migrates it, before any Resolve reads it.
async fn an_upgraded_database_gets_its_read_model_built_by_the_migration_step(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let spec = DemoSpec {
        citizens: 2_500,
        seed: 14,
    };
    payout_registry::tools::import::demo_store(app.store.clone(), &spec, 2)
        .await
        .expect("the population");
    link(&app, MOVED, "0071007000011", true).await;
    let rows = app.db.count("SELECT COUNT(*) FROM resolution_inputs").await;
    assert_eq!(
        rows,
        app.db.count("SELECT COUNT(*) FROM citizens").await,
        "one row per citizen"
    );
    for sql in ["DELETE FROM resolution_inputs", "DELETE FROM read_models"] {
        app.db.execute_raw(sql).await.expect("back to before");
    }
    assert_eq!(
        outcome(&app, MOVED, "").await,
        ResolveOutcome::UnknownCitizen
    );
    assert!(!check(&app, false).await.differences.is_empty());

    app.store.migrate().await.expect("migrate");
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM resolution_inputs").await,
        rows,
        "rebuilt in chunks, every citizen"
    );
    assert_eq!(check(&app, false).await.differences, vec![]);
    assert_eq!(outcome(&app, MOVED, "").await, ResolveOutcome::Resolved);
    // Built once: a later start does not rebuild (a row changed behind its back stays
    // changed, for `check` to find).
    app.db
        .execute_raw(&format!(
            "UPDATE resolution_inputs SET status = 'DECEASED' WHERE citizen_id = '{MOVED}'"
        ))
        .await
        .unwrap();
    app.store.migrate().await.expect("migrate again");
    assert_eq!(check(&app, false).await.differences.len(), 1);
    check(&app, true).await;
    app.stop().await;
}

/// A model row's form (the first byte of its `inputs`) as an integer, in `backend`'s SQL.
fn form_sql(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "get_byte(inputs, 0)::bigint",
        Backend::Sqlite => "CAST(hex(substr(inputs, 1, 1)) AS INTEGER)",
    }
}

/// The form of MOVED's row of the model.
async fn form_of_moved(app: &TestApp) -> i64 {
    app.db
        .count(&format!(
            "SELECT {} FROM resolution_inputs WHERE citizen_id = '{MOVED}'",
            form_sql(app.db.backend)
        ))
        .await
}

/// A rolling update from instances that read only the first binary form: the new ones run
/// with `resolution_model_format = 1` and write that form; an instance writing the
/// compact form (the next rollout) answers the same from those rows, and the first
/// instance the same from compact rows. `check --repair` compacts the rows of the first
/// form, and so does a citizen's next write by a compact instance. Without the setting a
/// new instance would write rows the old ones cannot read.
async fn a_rolling_update_writes_the_first_form_until_every_instance_reads_the_compact_one(
    backend: Backend,
) {
    let app = TestApp::builder(backend)
        .configure(|s| {
            s.resolution_cache_entries = 0;
            s.resolution_model_format = 1;
        })
        .spawn()
        .await;
    // Two preferences, the default one changed (its previous account paid during
    // cooling-off): every part of a row.
    let first = link(&app, MOVED, "0071007000011", true).await;
    let second = link(&app, MOVED, "0071007000012", true).await;
    prefer(&app, &second, &first).await;
    assert_eq!(form_of_moved(&app).await, 1, "written in the first form");
    let default = resolved(&app, MOVED, "").await;
    let pension = resolved(&app, MOVED, "PENSION").await;
    assert!(default.cooling_off, "{default:?}");
    assert_eq!(pension.outcome(), ResolveOutcome::Resolved);

    let compact = app
        .another_instance_with(|s| s.resolution_model_format = 2)
        .await;
    let on_compact = || common::resolver_on(compact.channel(), Some(PAYER));
    let both_answer_as_before = || async {
        for program in ["", "PENSION"] {
            let expected = if program.is_empty() {
                &default
            } else {
                &pension
            };
            assert_eq!(&resolved_with(on_compact(), MOVED, program).await, expected);
            assert_eq!(&resolved(&app, MOVED, program).await, expected);
        }
    };
    both_answer_as_before().await;
    assert_eq!(form_of_moved(&app).await, 1, "reading rewrites nothing");

    // Once every instance reads the compact form, `check --repair` (compact, as the
    // default) rewrites the rows of the first form, online, with the same content.
    let in_first_form = app
        .db
        .count(&format!(
            "SELECT COUNT(*) FROM resolution_inputs WHERE {} = 1",
            form_sql(backend)
        ))
        .await;
    assert!(in_first_form >= 1);
    let (ok, out) = check_binary(&app, &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "first binary form): {in_first_form} found, 0 rewritten"
        )),
        "{out}"
    );
    let (ok, out) = check_binary(&app, &["--repair"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "first binary form): {in_first_form} found, {in_first_form} rewritten"
        )),
        "{out}"
    );
    assert_eq!(form_of_moved(&app).await, 2, "rewritten by check --repair");
    both_answer_as_before().await;

    // Or a citizen's next write by a compact instance rewrites its row. (Accounts not yet
    // verified: the answers stay.)
    link(&app, MOVED, "0071007000013", false).await;
    assert_eq!(form_of_moved(&app).await, 1, "written in the first form");
    let registry = common::registry_on(compact.channel(), Some(ADMIN));
    link_with(registry, MOVED, "0071007000014", false).await;
    assert_eq!(
        form_of_moved(&app).await,
        2,
        "rewritten in the compact form"
    );
    both_answer_as_before().await;
    assert_eq!(check(&app, false).await.differences, vec![]);
    drop(compact);
    app.stop().await;
}

/// What the write path never writes, written behind its back: `check` names each broken
/// rule, how many rows break it and their citizens (masked by the command), and fails;
/// `--repair` does not hide it. On PostgreSQL no foreign key refuses these rows any more
/// (migration 0016); a preference for another citizen's account none ever refused.
async fn check_finds_every_broken_reference_between_the_source_tables(backend: Backend) {
    let app = TestApp::builder(backend)
        .configure(|s| s.resolution_cache_entries = 0)
        .spawn()
        .await;
    link(&app, MOVED, "0071007000011", true).await;
    link(&app, SUSPENDED, "0071007000021", true).await;
    // Linked, never verified: no preference points at it.
    link(&app, FAILED, "0071007000031", false).await;
    let clean = check(&app, false).await;
    assert!(clean.references_checked);
    assert_eq!(clean.broken_references, vec![]);

    // MOVED's default now points at SUSPENDED's account: money for one citizen would go
    // to another's.
    let misdirect = |citizen: &str, owner: &str| {
        format!(
            "UPDATE preferences SET account_id = \
             (SELECT account_id FROM accounts WHERE citizen_id = '{owner}') \
             WHERE citizen_id = '{citizen}' AND program_code = ''"
        )
    };
    app.db
        .execute_raw(&misdirect(MOVED, SUSPENDED))
        .await
        .expect("tamper");
    let mut expected = vec!["a preference for an account that is not one of the citizen's"];
    if backend == Backend::Postgres {
        // What a foreign key refused before: an account and a legacy id of no citizen.
        for sql in [
            format!("UPDATE accounts SET citizen_id = '{NOBODY}' WHERE citizen_id = '{FAILED}'"),
            format!(
                "INSERT INTO citizen_aliases (legacy_id, citizen_id, created_at) \
                 VALUES ('070000001', '{NOBODY}', 0)"
            ),
        ] {
            app.db.execute_raw(&sql).await.expect("tamper");
        }
        expected = vec![
            "an account of no citizen",
            "a preference for an account that is not one of the citizen's",
            "a legacy id of no citizen",
            "an account's history of no account of that citizen",
        ];
    }
    let found = check(&app, false).await;
    let rules: Vec<&str> = found
        .broken_references
        .iter()
        .map(|b| b.rule.as_str())
        .collect();
    assert_eq!(rules, expected, "{found:?}");
    let misdirected = &found.broken_references[expected
        .iter()
        .position(|r| r.starts_with("a preference"))
        .unwrap()];
    assert_eq!(misdirected.rows, 1);
    assert_eq!(misdirected.citizens, vec![MOVED.to_owned()]);
    if backend == Backend::Postgres {
        assert_eq!(found.broken_references[0].citizens, vec![NOBODY.to_owned()]);
    }

    // The operator's command fails, with the ids masked, and `--repair` does not pass it.
    for args in [&[][..], &["--repair"][..]] {
        let (ok, out) = check_binary(&app, args);
        assert!(!ok, "broken references fail the check: {out}");
        assert!(
            out.contains(&format!(
                "references between the source tables: {} rules broken",
                expected.len()
            )),
            "{out}"
        );
        assert!(out.contains("1 rows: a preference for an account"), "{out}");
        for citizen in [MOVED, SUSPENDED, FAILED, NOBODY] {
            assert!(!out.contains(citizen), "an unmasked citizen id: {out}");
        }
    }
    let (_, out) = check_binary(&app, &["--sample", "10"]);
    assert!(out.contains("not checked (a sample)"), "{out}");

    // Put back, the references are whole again (and the teardown's check passes).
    if backend == Backend::Postgres {
        for sql in [
            format!("UPDATE accounts SET citizen_id = '{FAILED}' WHERE citizen_id = '{NOBODY}'"),
            format!("DELETE FROM citizen_aliases WHERE citizen_id = '{NOBODY}'"),
        ] {
            app.db.execute_raw(&sql).await.expect("put back");
        }
    }
    app.db
        .execute_raw(&misdirect(MOVED, MOVED))
        .await
        .expect("put back");
    check(&app, true).await;
    let after = check(&app, false).await;
    common::assert_whole(&after);
    app.stop().await;
}

/// Rows written before migration 0018 hold a citizen's preferences as JSON text; the
/// registry still answers from them, `check` finds them equal to the source tables and
/// counts them, and `check --repair` or the citizen's next write rewrites the row in the
/// binary form. (PostgreSQL builds the JSON here; the code that reads it is the same on
/// SQLite.) Beside them, the online rewrite's guard for either older form, JSON or the
/// first binary form (it needs a second connection to hold the row's lock).
mod postgres_json_rows {
    use super::*;

    /// `alias`'s account as the JSON form's short field names spell it.
    fn account_json(alias: &str) -> String {
        [
            ("id", "account_id"),
            ("c", "citizen_id"),
            ("k", "kind"),
            ("p", "provider_code"),
            ("r", "account_ref"),
            ("h", "holder_name"),
            ("s", "status"),
            ("vm", "verification_method"),
            ("vb", "verified_by"),
            ("va", "verified_at"),
            ("ve", "evidence_ref"),
            ("v", "version"),
            ("ca", "created_at"),
            ("ua", "updated_at"),
            ("dh", "declared_holder_name"),
            ("vc", "verification_capacity"),
        ]
        .iter()
        .map(|(key, column)| format!("'{key}', {alias}.{column}"))
        .collect::<Vec<_>>()
        .join(", ")
    }

    async fn form(app: &TestApp) -> (i64, i64) {
        let count = |condition: &str| {
            format!(
                "SELECT COUNT(*) FROM resolution_inputs WHERE citizen_id = '{MOVED}' \
                 AND {condition}"
            )
        };
        (
            app.db
                .count(&count("preferences IS NOT NULL AND inputs IS NULL"))
                .await,
            app.db
                .count(&count("preferences IS NULL AND inputs IS NOT NULL"))
                .await,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_in_the_json_form_answers_as_before_and_check_repair_or_the_next_write_rewrites_it(
    ) {
        let app = TestApp::builder(Backend::Postgres)
            .configure(|s| s.resolution_cache_entries = 0)
            .spawn()
            .await;
        // Two preferences, the default one changed (its previous account paid during
        // cooling-off).
        let first = link(&app, MOVED, "0071007000011", true).await;
        let second = link(&app, MOVED, "0071007000012", true).await;
        prefer(&app, &second, &first).await;
        assert_eq!(form(&app).await, (0, 1), "written in the binary form");
        let default = resolved(&app, MOVED, "").await;
        let pension = resolved(&app, MOVED, "PENSION").await;
        assert!(default.cooling_off, "{default:?}");

        to_json_form(&app).await;
        assert_eq!(form(&app).await, (1, 0), "in the JSON form");
        answers(&app, &default, &pension).await;
        let found = check(&app, false).await;
        assert_eq!(found.differences, vec![]);
        assert_eq!((found.legacy_rows, found.rewritten), (1, 0), "{found:?}");
        assert_eq!(
            form(&app).await,
            (1, 0),
            "a check without --repair rewrites nothing"
        );

        // `check --repair` rewrites it in the binary form, online, with the same content.
        let (ok, out) = check_binary(&app, &["--repair"]);
        assert!(ok, "{out}");
        assert!(
            out.contains(
                "JSON of before migration 0018, or the first binary form): 1 found, 1 rewritten"
            ),
            "{out}"
        );
        assert_eq!(form(&app).await, (0, 1), "rewritten by check --repair");
        answers(&app, &default, &pension).await;
        let after = check(&app, false).await;
        assert_eq!(after.differences, vec![]);
        assert_eq!((after.legacy_rows, after.rewritten), (0, 0), "{after:?}");

        // Or the citizen's next write rewrites the row, in the binary form.
        to_json_form(&app).await;
        assert_eq!(form(&app).await, (1, 0), "in the JSON form");
        link(&app, MOVED, "0071007000013", false).await;
        assert_eq!(form(&app).await, (0, 1), "rewritten in the binary form");
        answers(&app, &default, &pension).await;
        assert_eq!(check(&app, false).await.differences, vec![]);
        app.stop().await;
    }

    /// The rewrite is online: it takes no citizen's lock, and updates a row only if it
    /// still holds what it read, the JSON or the first binary form's bytes. Here a writer
    /// holds MOVED's row while `check --repair` has read it and waits to rewrite it; the
    /// writer puts the row in an earlier state and commits. The check must keep the
    /// writer's row. (The writer's bytes are an earlier state's, which the check cannot
    /// produce from what it read, so that an overwrite would show in the bytes as well as
    /// in the count.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn check_repair_keeps_a_json_row_a_writer_refreshed_after_the_check_read_it() {
        repair_keeps_a_row_a_writer_refreshed(Older::Json).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn check_repair_keeps_a_first_form_row_a_writer_refreshed_after_the_check_read_it() {
        repair_keeps_a_row_a_writer_refreshed(Older::FirstBinary).await
    }

    /// The older form a row is in when `check --repair` reads it.
    #[derive(Clone, Copy, PartialEq)]
    enum Older {
        /// Written by this instance, then put back in the JSON of before migration 0018.
        Json,
        /// Written by an instance with `resolution_model_format = 1`.
        FirstBinary,
    }

    async fn repair_keeps_a_row_a_writer_refreshed(older: Older) {
        use sqlx::Connection;
        let app = TestApp::builder(Backend::Postgres)
            .configure(|s| s.resolution_cache_entries = 0)
            .spawn()
            .await;
        let first_form = app
            .another_instance_with(|s| s.resolution_model_format = 1)
            .await;
        let registry = || match older {
            Older::Json => app.registry(Some(ADMIN)),
            Older::FirstBinary => common::registry_on(first_form.channel(), Some(ADMIN)),
        };
        let mut writer = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
        link_with(registry(), MOVED, "0071007000011", true).await;
        let earlier = inputs(&mut writer).await.expect("binary form");
        let second = link_with(registry(), MOVED, "0071007000012", true).await;
        // The pension paid to the second account, so that the row the check reads is not
        // the earlier state's.
        registry()
            .set_default_account(payout_registry::proto::SetDefaultAccountRequest {
                idempotency_key: key(),
                citizen_id: MOVED.into(),
                account_id: second,
                program_code: "PENSION".into(),
                reason: "chosen by the citizen".into(),
                ..Default::default()
            })
            .await
            .expect("prefer");
        match older {
            Older::Json => {
                to_json_form(&app).await;
                assert_eq!(form(&app).await, (1, 0), "in the JSON form");
            }
            Older::FirstBinary => {
                assert_eq!(form_of_moved(&app).await, 1, "in the first form");
                assert_ne!(inputs(&mut writer).await.as_ref(), Some(&earlier));
            }
        }

        sqlx::query("BEGIN").execute(&mut writer).await.unwrap();
        sqlx::query("SELECT 1 FROM resolution_inputs WHERE citizen_id = $1 FOR UPDATE")
            .bind(MOVED)
            .execute(&mut writer)
            .await
            .unwrap();
        let store = app.store.clone();
        let repair = tokio::spawn(async move { store.check_resolution_model(None, true).await });
        // The check has read the row and waits for the writer's lock to rewrite it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while app.db.lock_waiters("%UPDATE resolution_inputs%").await == 0 {
            if repair.is_finished() {
                panic!("the check did not wait for the writer: {:?}", repair.await);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the check never reached the row"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        sqlx::query(
            "UPDATE resolution_inputs SET inputs = $1, preferences = NULL WHERE citizen_id = $2",
        )
        .bind(&earlier)
        .bind(MOVED)
        .execute(&mut writer)
        .await
        .unwrap();
        sqlx::query("COMMIT").execute(&mut writer).await.unwrap();

        let report = repair.await.unwrap().expect("check runs");
        assert_eq!(
            (report.legacy_rows, report.rewritten),
            (1, 0),
            "found, and left to the writer: {report:?}"
        );
        assert_eq!(
            inputs(&mut writer).await,
            Some(earlier),
            "the writer's row is kept"
        );
        // The writer's earlier state is a difference from the source tables, which a
        // repair puts right (the harness checks the model at stop).
        check(&app, true).await;
        drop(first_form);
        app.stop().await;
    }

    /// MOVED's row of the read model in the binary form (`None`: not in it).
    async fn inputs(conn: &mut sqlx::PgConnection) -> Option<Vec<u8>> {
        sqlx::query_scalar("SELECT inputs FROM resolution_inputs WHERE citizen_id = $1")
            .bind(MOVED)
            .fetch_one(conn)
            .await
            .expect("MOVED's row")
    }

    /// MOVED resolves as it did before its row changed form.
    async fn answers(app: &TestApp, default: &ResolveResponse, pension: &ResolveResponse) {
        assert_eq!(&resolved(app, MOVED, "").await, default);
        assert_eq!(&resolved(app, MOVED, "PENSION").await, pension);
    }

    /// Puts MOVED's row of the read model back in the JSON form of before migration
    /// 0018, built from the source tables as that version wrote it.
    async fn to_json_form(app: &TestApp) {
        let json = format!(
            "SELECT json_agg(json_build_object('p', p.program_code, 's', p.since, \
             'a', json_build_object({}), \
             'b', CASE WHEN b.account_id IS NULL THEN NULL ELSE json_build_object({}) END) \
             ORDER BY p.program_code)::text \
             FROM preferences p JOIN accounts a ON a.account_id = p.account_id \
             LEFT JOIN accounts b ON b.account_id = p.previous_account_id \
             WHERE p.citizen_id = '{MOVED}'",
            account_json("a"),
            account_json("b")
        );
        app.db
            .execute_raw(&format!(
                "UPDATE resolution_inputs SET inputs = NULL, preferences = ({json}) \
                 WHERE citizen_id = '{MOVED}'"
            ))
            .await
            .expect("back to the JSON form");
    }
}

/// BatchResolve reads the read model by its primary key however small the table's
/// statistics say it is. Its read keeps one plan per connection (PostgreSQL's generic
/// plan, made once); with the statistics of a table of three rows, as a fresh database
/// analysed before its first load has, that plan would be a sequential scan, and a
/// connection would keep scanning the whole table for every batch as the population grew.
mod postgres_batch_read {
    use super::*;
    use payout_registry::proto::BatchResolveRequest;

    const CITIZENS: [&str; 3] = ["001089007011", "001089007012", "001089007013"];
    /// Streams sent, each read in one batch: far more than anything else in the test
    /// could scan the table.
    const STREAMS: i64 = 40;

    async fn scans(app: &TestApp) -> (i64, i64) {
        let of = |column: &str| {
            format!("SELECT {column} FROM pg_stat_user_tables WHERE relname = 'resolution_inputs'")
        };
        (
            app.db.count(&of("seq_scan")).await,
            app.db.count(&of("idx_scan")).await,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_read_of_a_small_analysed_model_searches_its_primary_key() {
        let app = TestApp::spawn(Backend::Postgres).await;
        for (i, citizen) in CITIZENS.iter().enumerate() {
            link(&app, citizen, &format!("007100700011{i}"), true).await;
        }
        app.db
            .execute_raw("ANALYZE resolution_inputs")
            .await
            .expect("analyse");
        let (seq_before, idx_before) = scans(&app).await;
        for stream in 0..STREAMS {
            let requests = CITIZENS
                .iter()
                .chain([NOBODY].iter())
                .map(|c| BatchResolveRequest {
                    correlation_id: format!("{stream}-{c}"),
                    citizen_id: (*c).into(),
                    purpose: "monthly payroll".into(),
                    ..Default::default()
                })
                .collect();
            let answers = common::batch_resolve_all(&app, PAYER, requests).await;
            let outcomes: Vec<_> = answers
                .iter()
                .map(|a| a.result.as_ref().expect("answered").outcome())
                .collect();
            assert_eq!(
                outcomes,
                [
                    ResolveOutcome::Resolved,
                    ResolveOutcome::Resolved,
                    ResolveOutcome::Resolved,
                    ResolveOutcome::UnknownCitizen
                ]
            );
        }
        // A backend reports its counts when idle, at most once a second.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let (seq_after, idx_after) = loop {
            let (seq, idx) = scans(&app).await;
            if idx - idx_before >= STREAMS || std::time::Instant::now() > deadline {
                break (seq, idx);
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        };
        assert!(
            idx_after - idx_before >= STREAMS,
            "every batch searched the primary key: {} index scans for {STREAMS} batches",
            idx_after - idx_before
        );
        assert!(
            seq_after - seq_before < STREAMS / 4,
            "no batch scanned the table: {} sequential scans for {STREAMS} batches",
            seq_after - seq_before
        );
        app.stop().await;
    }
}

/// BatchResolve moves each account's text into its answer, where unary Resolve copies it:
/// both must answer the same, field for field, to a payer that sees account numbers in
/// full and to one that sees them masked.
async fn a_batch_answers_each_account_as_resolve_does_in_full_and_masked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // The default changed (its previous account paid during cooling-off), and PENSION's
    // own account.
    let first = link(&app, MOVED, "0071007000011", true).await;
    let second = link(&app, MOVED, "0071007000012", true).await;
    prefer(&app, &second, &first).await;
    for token in [PAYER, MASKED] {
        let mut expected = Vec::new();
        let mut requests = Vec::new();
        for program in ["", "PENSION"] {
            expected.push(resolved_with(app.resolver(Some(token)), MOVED, program).await);
            requests.push(BatchResolveRequest {
                correlation_id: program.into(),
                citizen_id: MOVED.into(),
                program_code: program.into(),
                purpose: "monthly payroll".into(),
                ..Default::default()
            });
        }
        let got: Vec<ResolveResponse> = common::batch_resolve_all(&app, token, requests)
            .await
            .into_iter()
            .map(|a| {
                let mut r = a.result.expect("answered");
                r.as_of = None;
                r.position = 0;
                r
            })
            .collect();
        assert_eq!(got, expected, "{token}");
        assert!(got[0].cooling_off, "{token}: {got:?}");
        for answer in &got {
            let account = answer.account.as_ref().expect("an account");
            assert_eq!(account.account_id, first, "{token}");
            assert_eq!(account.account_ref_masked, token == MASKED, "{token}");
            assert_eq!(
                account.account_ref == "0071007000011",
                token == PAYER,
                "{token}"
            );
            assert_eq!(
                (account.citizen_id.as_str(), account.provider_code.as_str()),
                (MOVED, "970436")
            );
            let verification = account.verification.as_ref().expect("verified");
            assert_eq!(verification.evidence_ref, "EV-7", "{token}");
        }
    }
    app.stop().await;
}
