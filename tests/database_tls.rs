//! The registry's connections to PostgreSQL over TLS: the harness starts a throw-away
//! cluster that serves TLS with a certificate of a development CA and refuses every TCP
//! connection without it, and the registry reaches it through a `DATABASE_URL` that
//! verifies the server (`sslmode=verify-full`, `sslrootcert`). Citizens' account numbers
//! cross that link; on a network between hosts it must not be readable or redirectable.
//! On this machine's loopback, where nothing crosses a network, a URL that names no
//! `sslmode` goes in plain text when the server takes it, and over TLS when it does not.
//! PostgreSQL only (SQLite has no connection), so outside the `postgres::`/`sqlite::`
//! pairs that CI counts.

mod common;

use std::path::Path;

use payout_registry::proto::{ResolveOutcome, ResolveRequest};
use payout_registry::security::tls::generate_dev_certs;
use payout_registry::store::{connect, StoreOptions};
use sqlx::{Connection, PgConnection};

use common::{link_issuer_confirmed, Cluster, TestApp, TestDb, PAYER};

const CITIZEN: &str = "001089500001";

/// `url` verifying the server against the CA in `ca`.
fn verified(url: &str, ca: &Path) -> String {
    format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_reaches_postgresql_over_verified_tls() {
    let pki = tempfile::tempdir().unwrap();
    let files = generate_dev_certs(pki.path(), &[]).unwrap();
    let cluster = Cluster::start_tls_only(&files.server_cert, &files.server_key);

    // The cluster refuses a plain connection, so whatever connects below is TLS.
    let plain = format!("{}?sslmode=disable", cluster.url("postgres"));
    assert!(PgConnection::connect(&plain).await.is_err());
    let mut admin = PgConnection::connect(&verified(&cluster.url("postgres"), &files.ca_cert))
        .await
        .expect("a verified TLS connection");
    common::create_registry_database(&mut admin).await;
    // The registry's store, given a URL that trusts another CA, refuses the server: the
    // URL's verification reaches the registry's own connections.
    let other = tempfile::tempdir().unwrap();
    let other_ca = generate_dev_certs(other.path(), &[]).unwrap().ca_cert;
    let refused = connect(
        &verified(&cluster.url("registry"), &other_ca),
        StoreOptions::default(),
    )
    .await
    .err()
    .expect("a server certificate from another CA");
    // With its causes, as the registry prints a failed start.
    let refused = format!("{:#}", anyhow::Error::new(refused));
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");
    let app = TestApp::builder(common::Backend::Postgres)
        .database(TestDb::at(verified(
            &cluster.url("registry"),
            &files.ca_cert,
        )))
        .spawn()
        .await;

    link_and_resolve(&app, "0074000000001").await;

    // Every session the registry holds is encrypted, and there are some.
    let (plain, tls) = sessions(&mut admin).await;
    assert_eq!(plain, 0);
    assert!(tls > 0, "the registry holds no session");
    app.stop().await;
}

/// Links account `number` for the citizen, confirmed by its issuer, and resolves it.
async fn link_and_resolve(app: &TestApp, number: &str) {
    link_issuer_confirmed(app, CITIZEN, number).await;
    let r = app
        .resolver(Some(PAYER))
        .resolve(ResolveRequest {
            citizen_id: CITIZEN.into(),
            purpose: "monthly payroll".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome(), ResolveOutcome::Resolved, "{r:?}");
}

/// The sessions on database `registry`: how many are in plain text, how many over TLS.
async fn sessions(admin: &mut PgConnection) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE NOT s.ssl), count(*) FILTER (WHERE s.ssl) \
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = 'registry' AND a.backend_type = 'client backend'",
    )
    .fetch_one(admin)
    .await
    .unwrap()
}

/// Starts a registry on `url`, has it link account `number` and resolve (so that it
/// holds sessions), and answers its sessions on the cluster as [`sessions`] counts them,
/// then stops it and waits for them to end.
async fn sessions_of_a_registry_at(
    url: &str,
    number: &str,
    admin: &mut PgConnection,
) -> (i64, i64) {
    let app = TestApp::builder(common::Backend::Postgres)
        .database(TestDb::at(url.to_string()))
        .spawn()
        .await;
    link_and_resolve(&app, number).await;
    let held = sessions(admin).await;
    app.stop().await;
    for _ in 0..100 {
        if sessions(admin).await == (0, 0) {
            return held;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the registry's sessions did not end after it stopped");
}

/// A cluster started by `start` with a certificate of a new development CA (in the
/// directory answered first), a verified TLS connection to it, and its database
/// `registry`.
async fn serving_tls(
    start: fn(&Path, &Path) -> Cluster,
) -> (tempfile::TempDir, Cluster, PgConnection) {
    let pki = tempfile::tempdir().unwrap();
    let files = generate_dev_certs(pki.path(), &[]).unwrap();
    let cluster = start(&files.server_cert, &files.server_key);
    let mut admin = PgConnection::connect(&verified(&cluster.url("postgres"), &files.ca_cert))
        .await
        .expect("a verified TLS connection");
    common::create_registry_database(&mut admin).await;
    (pki, cluster, admin)
}

/// A server on this machine, reached through a URL that names no `sslmode`: the
/// registry's sessions are in plain text even though the server offers TLS (loopback
/// traffic does not leave the machine, and TLS there made a bulk load slower). A URL
/// that names a mode gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_url_naming_no_sslmode_goes_in_plain_text_and_one_naming_it_over_tls() {
    let (_pki, cluster, mut admin) = serving_tls(Cluster::start_tls_offered).await;

    let (plain, tls) =
        sessions_of_a_registry_at(&cluster.url("registry"), "0074000000001", &mut admin).await;
    assert_eq!(tls, 0, "a loopback URL without sslmode held TLS sessions");
    assert!(plain > 0, "the registry held no session");

    let prefer = format!("{}?sslmode=prefer", cluster.url("registry"));
    let (plain, tls) = sessions_of_a_registry_at(&prefer, "0074000000002", &mut admin).await;
    assert_eq!(
        plain, 0,
        "sslmode=prefer held plain sessions on a server offering TLS"
    );
    assert!(tls > 0, "the registry held no session");
}

/// A server on this machine that refuses plain connections (`hostssl` only) is still
/// reached through a URL that names no `sslmode`: over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_server_refusing_plain_text_is_reached_over_tls_without_a_named_sslmode() {
    let (_pki, cluster, mut admin) = serving_tls(Cluster::start_tls_only).await;

    let (plain, tls) =
        sessions_of_a_registry_at(&cluster.url("registry"), "0074000000001", &mut admin).await;
    assert_eq!(plain, 0);
    assert!(tls > 0, "the registry held no session");
}
