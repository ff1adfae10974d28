//! The registry's connections to PostgreSQL over TLS: the harness starts a throw-away
//! cluster that serves TLS with a certificate of a development CA and refuses every TCP
//! connection without it, and the registry reaches it through a `DATABASE_URL` that
//! verifies the server (`sslmode=verify-full`, `sslrootcert`). Citizens' account numbers
//! cross that link; on a network between hosts it must not be readable or redirectable.
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

    link_issuer_confirmed(&app, CITIZEN, "0074000000001").await;
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

    // Every session the registry holds is encrypted, and there are some.
    let (plain, tls): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE NOT s.ssl), count(*) FILTER (WHERE s.ssl) \
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = 'registry' AND a.backend_type = 'client backend'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(plain, 0);
    assert!(tls > 0, "the registry holds no session");
    app.stop().await;
}
