//! Mutual TLS end to end: the real server on `127.0.0.1:0` over real TLS (rustls through
//! tonic), real tonic clients with and without certificates, on SQLite and PostgreSQL.
//!
//! Every test makes its own CA and certificates with `generate_dev_certs` (or the
//! `dev-certs` subcommand itself) in a temp dir; no key material is checked in. A client
//! certificate's Common Name is the client id; the test server maps the ids of the token
//! clients of `common` to the same scopes (`ADMIN_CERT` is `welfare-admin`, ...).
//!
//! A refusal by the TLS handshake reaches a client as a transport error (its code
//! depends on when the client notices the alert); a refusal by the registry is
//! UNAUTHENTICATED or PERMISSION_DENIED. Whenever a write is refused, the tests also
//! check through an authorised client that nothing was written.

mod common;

use std::path::Path;
use std::process::Output;

use common::{
    client_identity, plaintext_channel, registry_on, resolver_on, tls_channel, tls_settings,
    Backend, TestApp, TlsMaterial, ADMIN, ADMIN_CERT, MASKED_CERT, NOSCOPE_CERT, PAYER, PAYER_CERT,
    UNKNOWN_CERT,
};
use payout_registry::proto::{
    Account, AccountKind, GetAccountHistoryRequest, LinkAccountRequest, ListCitizenAccountsRequest,
    ResolveOutcome, ResolveRequest,
};
use tonic::transport::ClientTlsConfig;
use tonic::{Code, Status};
use uuid::Uuid;

on_both_backends!(
    a_client_with_a_valid_certificate_is_identified_by_it_and_recorded_as_the_actor,
    a_client_certificate_signed_by_another_ca_is_refused,
    a_client_without_a_certificate_is_refused_when_one_is_required,
    a_certificate_whose_common_name_is_not_configured_is_unauthenticated,
    a_certificate_client_without_the_scope_is_permission_denied,
    a_certificate_and_a_token_naming_different_clients_are_unauthenticated,
    a_certificate_and_its_own_clients_token_are_accepted_together,
    a_plain_text_client_cannot_talk_to_the_tls_port,
    a_bearer_token_over_tls_works_when_client_certificates_are_optional,
    a_certificate_still_identifies_its_client_when_certificates_are_optional,
    the_files_written_by_dev_certs_serve_and_identify_a_client_end_to_end,
);

const VIETCOMBANK: &str = "970436";
/// A citizen born in Hà Nội in 1999.
const CITIZEN: &str = "001099012345";

fn link_request(citizen: &str, number: &str) -> LinkAccountRequest {
    LinkAccountRequest {
        idempotency_key: Uuid::new_v4().to_string(),
        citizen_id: citizen.into(),
        kind: AccountKind::BankAccount.into(),
        provider_code: VIETCOMBANK.into(),
        account_ref: number.into(),
        reason: "declared by the citizen at the commune office".into(),
        ..Default::default()
    }
}

/// Links an account through `channel` with `token` (or none).
async fn link_on(
    channel: tonic::transport::Channel,
    token: Option<&str>,
) -> Result<Account, Status> {
    let response = registry_on(channel, token)
        .link_account(link_request(CITIZEN, "0071000123456"))
        .await?;
    Ok(response
        .into_inner()
        .account
        .expect("the response carries the account"))
}

/// The citizen's accounts, read by the admin over its certificate.
async fn accounts_of_citizen(app: &TestApp, tls: &TlsMaterial) -> Vec<Account> {
    registry_on(tls.channel(app, Some(ADMIN_CERT)), None)
        .list_citizen_accounts(ListCitizenAccountsRequest {
            citizen_id: CITIZEN.into(),
            include_closed: true,
            purpose: "audit".into(),
            ..Default::default()
        })
        .await
        .expect("the admin lists the citizen's accounts")
        .into_inner()
        .accounts
}

/// True when the call failed in the transport (the TLS handshake or the connection),
/// never reaching the server's gRPC layer. Which code a client reports then depends on
/// when it notices (UNAVAILABLE, UNKNOWN, CANCELLED, INTERNAL): the source says it.
fn is_transport_failure(status: &Status) -> bool {
    std::error::Error::source(status)
        .is_some_and(|e| e.downcast_ref::<tonic::transport::Error>().is_some())
}

/// Asserts the call was refused by the TLS handshake, or by the registry as
/// UNAUTHENTICATED: never answered.
fn refused_before_any_handler<T: std::fmt::Debug>(result: Result<T, Status>) -> Status {
    let status = result.expect_err("the call must be refused");
    assert!(
        is_transport_failure(&status) || status.code() == Code::Unauthenticated,
        "refused at the handshake or as unauthenticated, got {status:?}"
    );
    status
}

/// Asserts the connection itself failed: the handshake refused the client.
fn refused_by_the_transport<T: std::fmt::Debug>(result: Result<T, Status>) -> Status {
    let status = result.expect_err("the call must be refused");
    assert!(
        is_transport_failure(&status),
        "the connection itself must fail, got {status:?}"
    );
    status
}

async fn a_client_with_a_valid_certificate_is_identified_by_it_and_recorded_as_the_actor(
    backend: Backend,
) {
    let app = TestApp::builder(backend)
        .requiring_client_certificates()
        .spawn()
        .await;
    let tls = app.tls();
    // No token at all: the certificate alone identifies the client.
    let account = link_on(tls.channel(&app, Some(ADMIN_CERT)), None)
        .await
        .expect("a certificate client with accounts.write links an account");

    let history = registry_on(tls.channel(&app, Some(ADMIN_CERT)), None)
        .get_account_history(GetAccountHistoryRequest {
            account_id: account.account_id.clone(),
            purpose: "audit".into(),
            ..Default::default()
        })
        .await
        .expect("read the history")
        .into_inner()
        .entries;
    assert_eq!(history.len(), 1);
    assert_eq!(
        history[0].change(),
        payout_registry::proto::AccountChange::Linked
    );
    assert_eq!(history[0].actor, ADMIN_CERT, "the certificate's client id");

    // A payer's certificate reaches the resolver, with its own scopes.
    let answer = resolver_on(tls.channel(&app, Some(PAYER_CERT)), None)
        .resolve(ResolveRequest {
            citizen_id: CITIZEN.into(),
            purpose: "monthly payroll".into(),
            ..Default::default()
        })
        .await
        .expect("the payer resolves")
        .into_inner();
    assert_eq!(answer.outcome(), ResolveOutcome::NoVerifiedAccount);
    app.stop().await;
}

async fn a_client_certificate_signed_by_another_ca_is_refused(backend: Backend) {
    let app = TestApp::builder(backend)
        .requiring_client_certificates()
        .spawn()
        .await;
    let tls = app.tls();
    // Same client id, right server CA, but a certificate from a CA the server never
    // heard of.
    let impostor = TlsMaterial::generate();
    let client = ClientTlsConfig::new()
        .ca_certificate(tls.ca())
        .identity(impostor.identity(ADMIN_CERT));
    refused_before_any_handler(link_on(tls_channel(app.addr, client), None).await);
    assert!(accounts_of_citizen(&app, tls).await.is_empty());
    app.stop().await;
}

async fn a_client_without_a_certificate_is_refused_when_one_is_required(backend: Backend) {
    let app = TestApp::builder(backend)
        .requiring_client_certificates()
        .spawn()
        .await;
    let tls = app.tls();
    // The app's own channel trusts the server but presents no certificate; a valid
    // token does not make up for it.
    refused_by_the_transport(link_on(app.channel(), Some(ADMIN)).await);
    refused_by_the_transport(link_on(app.channel(), None).await);
    assert!(accounts_of_citizen(&app, tls).await.is_empty());
    app.stop().await;
}

async fn a_certificate_whose_common_name_is_not_configured_is_unauthenticated(backend: Backend) {
    let app = TestApp::builder(backend)
        .requiring_client_certificates()
        .spawn()
        .await;
    let tls = app.tls();
    let status = link_on(tls.channel(&app, Some(UNKNOWN_CERT)), None)
        .await
        .expect_err("an unconfigured certificate is refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // Not even with a valid token of another client alongside it.
    let status = link_on(tls.channel(&app, Some(UNKNOWN_CERT)), Some(ADMIN))
        .await
        .expect_err("the certificate wins over the token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(accounts_of_citizen(&app, tls).await.is_empty());
    app.stop().await;
}

async fn a_certificate_client_without_the_scope_is_permission_denied(backend: Backend) {
    let app = TestApp::builder(backend)
        .requiring_client_certificates()
        .spawn()
        .await;
    let tls = app.tls();
    for client in [MASKED_CERT, NOSCOPE_CERT, PAYER_CERT] {
        let status = link_on(tls.channel(&app, Some(client)), None)
            .await
            .expect_err("linking needs accounts.write");
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{client}: {status:?}"
        );
        assert!(status.message().contains(client), "{status:?}");
    }
    assert!(accounts_of_citizen(&app, tls).await.is_empty());
    app.stop().await;
}

async fn a_certificate_and_a_token_naming_different_clients_are_unauthenticated(backend: Backend) {
    let app = TestApp::builder(backend)
        .requiring_client_certificates()
        .spawn()
        .await;
    let tls = app.tls();
    // The payer's certificate with the admin's token: not a way to borrow scopes.
    let status = link_on(tls.channel(&app, Some(PAYER_CERT)), Some(ADMIN))
        .await
        .expect_err("certificate and token disagree");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(accounts_of_citizen(&app, tls).await.is_empty());
    app.stop().await;
}

async fn a_certificate_and_its_own_clients_token_are_accepted_together(backend: Backend) {
    let app = TestApp::builder(backend)
        .requiring_client_certificates()
        .spawn()
        .await;
    let tls = app.tls();
    let account = link_on(tls.channel(&app, Some(ADMIN_CERT)), Some(ADMIN))
        .await
        .expect("the same client by both credentials");
    assert_eq!(account.citizen_id, CITIZEN);
    app.stop().await;
}

async fn a_plain_text_client_cannot_talk_to_the_tls_port(backend: Backend) {
    let app = TestApp::builder(backend)
        .requiring_client_certificates()
        .spawn()
        .await;
    let tls = app.tls();
    refused_by_the_transport(link_on(plaintext_channel(app.addr), Some(ADMIN)).await);
    // Nor can it reach the public health check.
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(plaintext_channel(app.addr));
    refused_by_the_transport(
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await,
    );
    assert!(accounts_of_citizen(&app, tls).await.is_empty());
    app.stop().await;
}

async fn a_bearer_token_over_tls_works_when_client_certificates_are_optional(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let tls = app.tls();
    // The app's channel is TLS without a client certificate.
    let account = link_on(app.channel(), Some(ADMIN))
        .await
        .expect("a token over TLS is accepted");
    let history = registry_on(app.channel(), Some(ADMIN))
        .get_account_history(GetAccountHistoryRequest {
            account_id: account.account_id,
            purpose: "audit".into(),
            ..Default::default()
        })
        .await
        .expect("read the history")
        .into_inner()
        .entries;
    assert_eq!(history[0].actor, "welfare-admin");
    // Without any credential the handshake succeeds but the registry refuses.
    let status = link_on(app.channel(), None)
        .await
        .expect_err("no certificate and no token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = link_on(app.channel(), Some("not-a-token"))
        .await
        .expect_err("an unknown token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(accounts_of_citizen(&app, tls).await.len(), 1);
    app.stop().await;
}

async fn a_certificate_still_identifies_its_client_when_certificates_are_optional(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let tls = app.tls();
    let account = link_on(tls.channel(&app, Some(ADMIN_CERT)), None)
        .await
        .expect("a certificate client without a token");
    assert_eq!(account.citizen_id, CITIZEN);
    // A certificate from another CA is still refused by the handshake.
    let impostor = TlsMaterial::generate();
    let client = ClientTlsConfig::new()
        .ca_certificate(tls.ca())
        .identity(impostor.identity(ADMIN_CERT));
    refused_by_the_transport(link_on(tls_channel(app.addr, client), Some(PAYER)).await);
    app.stop().await;
}

/// Runs the `payout-registry` binary, as an operator would, off the async runtime.
async fn cli(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_payout-registry"))
            .args(&args)
            .env_remove("PAYOUT_REGISTRY_CONFIG")
            .env_remove("PAYOUT_REGISTRY_ADDR")
            .env_remove("PAYOUT_REGISTRY_TOKEN")
            .env_remove("PAYOUT_REGISTRY_CA")
            .env_remove("PAYOUT_REGISTRY_CERT")
            .env_remove("PAYOUT_REGISTRY_KEY")
            .output()
            .expect("run payout-registry")
    })
    .await
    .expect("cli task")
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

async fn the_files_written_by_dev_certs_serve_and_identify_a_client_end_to_end(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let made = cli(vec![
        "dev-certs".into(),
        "--out".into(),
        out.display().to_string(),
    ])
    .await;
    assert!(
        made.status.success(),
        "dev-certs: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    for name in [
        "ca.pem",
        "server.key",
        "dev.pem",
        "dev.key",
        "vss-payroll.pem",
    ] {
        assert!(out.join(name).is_file(), "dev-certs wrote {name}");
    }

    // The server loads the files exactly as `serve` loads `[tls]`; the app's own
    // channel presents the `vss-payroll` certificate.
    let app = TestApp::builder(backend)
        .tls_files(
            tls_settings(&out, true),
            ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(
                    std::fs::read(out.join("ca.pem")).unwrap(),
                ))
                .identity(client_identity(&out, PAYER_CERT)),
        )
        .spawn()
        .await;
    let answer = app
        .resolver(None)
        .resolve(ResolveRequest {
            citizen_id: CITIZEN.into(),
            purpose: "monthly payroll".into(),
            ..Default::default()
        })
        .await
        .expect("the vss-payroll certificate resolves")
        .into_inner();
    assert_eq!(answer.outcome(), ResolveOutcome::UnknownCitizen);

    // And the command-line client, given the same files, over https.
    let resolved = cli(vec![
        "client".into(),
        "resolve".into(),
        "--addr".into(),
        format!("https://localhost:{}", app.addr.port()),
        "--ca".into(),
        path(&out, "ca.pem"),
        "--cert".into(),
        path(&out, "vss-payroll.pem"),
        "--key".into(),
        path(&out, "vss-payroll.key"),
        "--citizen".into(),
        CITIZEN.into(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&resolved.stdout);
    assert!(
        resolved.status.success(),
        "client resolve: {stdout}{}",
        String::from_utf8_lossy(&resolved.stderr)
    );
    assert!(stdout.contains("outcome: UNKNOWN_CITIZEN"), "{stdout}");

    // The `dev` certificate is valid but names no client configured on this server.
    let refused = cli(vec![
        "client".into(),
        "resolve".into(),
        "--addr".into(),
        format!("https://127.0.0.1:{}", app.addr.port()),
        "--ca".into(),
        path(&out, "ca.pem"),
        "--cert".into(),
        path(&out, "dev.pem"),
        "--key".into(),
        path(&out, "dev.key"),
        "--citizen".into(),
        CITIZEN.into(),
    ])
    .await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("Unauthenticated"), "{stderr}");

    // Running it again refuses to overwrite the keys in use.
    let again = cli(vec![
        "dev-certs".into(),
        "--out".into(),
        out.display().to_string(),
    ])
    .await;
    assert!(!again.status.success());
    app.stop().await;
}
