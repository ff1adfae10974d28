//! Revocation and reloading, end to end over real mutual TLS on both backends: client
//! certificates listed in a CRL (`[tls] crl_files`) are refused by the handshake, and a
//! reload (the in-process handle, and SIGHUP to the real binary) replaces the TLS
//! material and the client table without dropping connections.
//!
//! Certificates and CRLs are made per test with `generate_dev_certs` and `dev_crl`. A
//! refusal by the handshake reaches a client as a transport error; a refusal by the
//! registry on an established connection is UNAUTHENTICATED. Telling the two apart is what
//! shows whether a connection made before a reload is still the one in use: a client
//! whose new handshakes fail but whose call is answered UNAUTHENTICATED was answered on
//! its old connection.

mod common;

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    feed_on, next_event, registry_on, resolver_on, tls_channel, Backend, TestApp, TestDb,
    TlsMaterial, ADMIN_CERT, FEED_CERT, MASKED_CERT, PAYER_CERT, UNKNOWN_CERT,
};
use payout_registry::config::{Secret, Settings};
use payout_registry::proto::{
    AccountKind, LinkAccountRequest, ResolveOutcome, ResolveRequest, SubscribeRequest,
};
use payout_registry::security::tls::{dev_crl, generate_dev_certs};
use sha2::{Digest as _, Sha256};
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::{Code, Status};
use uuid::Uuid;

on_both_backends!(
    a_revoked_client_certificate_is_refused_at_the_handshake_and_an_unrevoked_one_is_served,
    a_missing_crl_file_stops_the_server_at_start_up_and_names_the_file,
    a_reload_revoking_a_client_refuses_its_new_connections_and_keeps_other_connections_open,
    a_client_removed_by_a_reload_is_unauthenticated_on_its_existing_connection,
    a_server_certificate_rotated_by_a_reload_is_presented_to_new_connections,
    a_reload_that_fails_keeps_the_whole_previous_configuration,
    sighup_makes_the_running_binary_reload_its_configuration_file,
);

/// A citizen born in Hà Nội in 1999.
const CITIZEN: &str = "001099012345";

/// True when the call failed in the transport (the TLS handshake or the connection),
/// never reaching the registry's gRPC layer.
fn is_transport_failure(status: &Status) -> bool {
    std::error::Error::source(status)
        .is_some_and(|e| e.downcast_ref::<tonic::transport::Error>().is_some())
}

#[track_caller]
fn refused_by_the_handshake<T: std::fmt::Debug>(result: Result<T, Status>) {
    let status = result.expect_err("the connection must be refused");
    assert!(
        is_transport_failure(&status),
        "the handshake must refuse the connection, got {status:?}"
    );
}

#[track_caller]
fn unauthenticated<T: std::fmt::Debug>(result: Result<T, Status>, why: &str) {
    let status = result.expect_err("the call must be refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains(why), "{status:?}");
}

/// A Resolve on `channel` (certificate only, no token): every certificate client of the
/// test servers but the feed reader may resolve.
async fn resolve(channel: &Channel) -> Result<ResolveOutcome, Status> {
    Ok(resolver_on(channel.clone(), None)
        .resolve(ResolveRequest {
            citizen_id: CITIZEN.into(),
            purpose: "monthly payroll".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .outcome())
}

/// Writes a CRL of `tls`'s CA revoking the certificates of `clients` into its directory.
fn crl_revoking(tls: &TlsMaterial, name: &str, clients: &[&str]) -> PathBuf {
    let certs: Vec<PathBuf> = clients
        .iter()
        .map(|id| tls.dir().join(format!("{id}.pem")))
        .collect();
    let refs: Vec<&Path> = certs.iter().map(PathBuf::as_path).collect();
    let pem = dev_crl(&tls.files.ca_cert, &tls.files.ca_key, &refs).expect("sign the CRL");
    let path = tls.dir().join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

/// The app's settings with these CRLs.
fn with_crls(app: &TestApp, crls: Vec<PathBuf>) -> Settings {
    let mut settings = app.settings.clone();
    settings.tls.as_mut().expect("a TLS app").crl_files = crls;
    settings
}

async fn a_revoked_client_certificate_is_refused_at_the_handshake_and_an_unrevoked_one_is_served(
    backend: Backend,
) {
    let tls = TlsMaterial::generate();
    let crl = crl_revoking(&tls, "clients.crl.pem", &[PAYER_CERT]);
    let mut settings = tls.settings(true);
    settings.crl_files = vec![crl];
    let app = TestApp::builder(backend)
        .tls_files(settings, tls.client_tls(None))
        .spawn()
        .await;

    assert_eq!(
        resolve(&tls.channel(&app, Some(ADMIN_CERT))).await.unwrap(),
        ResolveOutcome::UnknownCitizen,
        "a certificate of the same CA that no CRL lists is served"
    );
    refused_by_the_handshake(resolve(&tls.channel(&app, Some(PAYER_CERT))).await);
    // A valid token does not get a revoked certificate through the handshake either.
    let payer_with_token = resolver_on(tls.channel(&app, Some(PAYER_CERT)), Some(common::PAYER))
        .resolve(ResolveRequest {
            citizen_id: CITIZEN.into(),
            purpose: "monthly payroll".into(),
            ..Default::default()
        })
        .await;
    refused_by_the_handshake(payer_with_token);
    app.stop().await;
}

async fn a_missing_crl_file_stops_the_server_at_start_up_and_names_the_file(backend: Backend) {
    let db = TestDb::new(backend).await;
    let data_dir = tempfile::tempdir().unwrap();
    let tls = TlsMaterial::generate();
    let mut tls_settings = tls.settings(true);
    tls_settings.crl_files = vec![tls.dir().join("never-published.crl.pem")];
    let settings = Settings {
        database_url: Secret::new(db.url.clone()),
        data_dir: data_dir.path().to_path_buf(),
        dev_client: false,
        tls: Some(tls_settings),
        ..Settings::default()
    };
    let err = match payout_registry::app::App::build(&settings).await {
        Ok(_) => panic!("the app must not start with a missing CRL file"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("never-published.crl.pem"), "{err}");
}

async fn a_reload_revoking_a_client_refuses_its_new_connections_and_keeps_other_connections_open(
    backend: Backend,
) {
    let app = TestApp::builder(backend)
        .requiring_client_certificates()
        .spawn()
        .await;
    let tls = app.tls();
    // Y, the feed reader, follows the change feed on a connection made before the reload.
    let feed_channel = tls.channel(&app, Some(FEED_CERT));
    let mut events = feed_on(feed_channel.clone(), None)
        .subscribe(SubscribeRequest::default())
        .await
        .expect("the feed reader subscribes")
        .into_inner();
    // X, the payer, has a connection of its own too.
    let payer = tls.channel(&app, Some(PAYER_CERT));
    assert_eq!(
        resolve(&payer).await.unwrap(),
        ResolveOutcome::UnknownCitizen
    );

    let crl = crl_revoking(tls, "clients.crl.pem", &[PAYER_CERT]);
    let summary = app
        .reloader
        .reload(&with_crls(&app, vec![crl]))
        .await
        .expect("the reload succeeds");
    let now = summary.tls.expect("TLS material");
    assert_eq!((now.crls, now.revoked_certificates), (1, 1));
    assert!(!summary.server_certificate_replaced);
    assert!(summary.added.is_empty() && summary.removed.is_empty());

    // A new connection of X fails its handshake.
    refused_by_the_handshake(resolve(&tls.channel(&app, Some(PAYER_CERT))).await);
    // X's old connection is still open, and its certificate is refused there too.
    unauthenticated(resolve(&payer).await, "revoked");
    // Y's subscription, opened before the reload, carries an event written after it.
    let admin = tls.channel(&app, Some(ADMIN_CERT));
    registry_on(admin, None)
        .link_account(LinkAccountRequest {
            idempotency_key: Uuid::new_v4().to_string(),
            citizen_id: CITIZEN.into(),
            kind: AccountKind::BankAccount.into(),
            provider_code: "970436".into(),
            account_ref: "0071000123456".into(),
            reason: "declared by the citizen at the commune office".into(),
            ..Default::default()
        })
        .await
        .expect("the admin links an account after the reload");
    let event = tokio::time::timeout(Duration::from_secs(30), next_event(&mut events))
        .await
        .expect("an event within 30 s")
        .expect("the subscription is still open");
    assert_eq!(common::event_name(&event), "ACCOUNT_LINKED");
    // And a unary call on Y's same channel is served.
    feed_on(feed_channel, None)
        .get_position(payout_registry::proto::GetPositionRequest::default())
        .await
        .expect("the feed reader's connection keeps working");
    app.stop().await;
}

async fn a_client_removed_by_a_reload_is_unauthenticated_on_its_existing_connection(
    backend: Backend,
) {
    let app = TestApp::builder(backend)
        .requiring_client_certificates()
        .spawn()
        .await;
    let tls = app.tls();
    let office = tls.channel(&app, Some(MASKED_CERT));
    let payer = tls.channel(&app, Some(PAYER_CERT));
    resolve(&office).await.expect("the office resolves");
    resolve(&payer).await.expect("the payer resolves");

    let mut settings = app.settings.clone();
    settings.clients.retain(|c| c.id != MASKED_CERT);
    let summary = app.reloader.reload(&settings).await.expect("reload");
    assert_eq!(summary.removed, [MASKED_CERT]);
    assert_eq!(summary.clients, app.settings.clients.len() - 1);

    // Same channel, same connection (its handshake happened under the old table): the
    // registry no longer knows the client.
    unauthenticated(resolve(&office).await, "names no configured client");
    resolve(&payer)
        .await
        .expect("the payer is still configured");
    app.stop().await;
}

async fn a_server_certificate_rotated_by_a_reload_is_presented_to_new_connections(
    backend: Backend,
) {
    let app = TestApp::builder(backend)
        .requiring_client_certificates()
        .spawn()
        .await;
    let old = app.tls();
    let new = TlsMaterial::generate();
    // Clients keep their certificates (same client CA); only the server's changes.
    let trusting_new = || {
        tls_channel(
            app.addr,
            ClientTlsConfig::new()
                .ca_certificate(new.ca())
                .identity(old.identity(ADMIN_CERT)),
        )
    };
    let established = old.channel(&app, Some(ADMIN_CERT));
    resolve(&established).await.expect("served before");
    refused_by_the_handshake(resolve(&trusting_new()).await);

    let mut settings = app.settings.clone();
    let tls_settings = settings.tls.as_mut().unwrap();
    tls_settings.cert_file = new.files.server_cert.clone();
    tls_settings.key_file = new.files.server_key.clone();
    let summary = app.reloader.reload(&settings).await.expect("reload");
    assert!(summary.server_certificate_replaced);
    let pem = std::fs::read(&new.files.server_cert).unwrap();
    let der = x509_parser::pem::parse_x509_pem(&pem).unwrap().1.contents;
    assert_eq!(
        summary.tls.unwrap().server_certificate,
        hex::encode(Sha256::digest(&der))
    );

    assert_eq!(
        resolve(&trusting_new())
            .await
            .expect("the new certificate is presented"),
        ResolveOutcome::UnknownCitizen
    );
    refused_by_the_handshake(resolve(&old.channel(&app, Some(ADMIN_CERT))).await);
    resolve(&established)
        .await
        .expect("the connection made before the rotation keeps working");
    app.stop().await;
}

async fn a_reload_that_fails_keeps_the_whole_previous_configuration(backend: Backend) {
    let app = TestApp::builder(backend)
        .requiring_client_certificates()
        .spawn()
        .await;
    let tls = app.tls();
    let admin = tls.channel(&app, Some(ADMIN_CERT));
    resolve(&admin).await.expect("served before");

    // A garbage CRL alongside a client table without the admin: neither part applies.
    let garbage = tls.dir().join("garbage.crl.pem");
    std::fs::write(&garbage, "this is not a CRL\n").unwrap();
    let mut settings = with_crls(&app, vec![garbage]);
    settings.clients.retain(|c| c.id != ADMIN_CERT);
    let err = app
        .reloader
        .reload(&settings)
        .await
        .expect_err("a garbage CRL fails the reload");
    assert!(format!("{err:#}").contains("garbage.crl.pem"), "{err:#}");

    // An invalid client table, with good TLS files: refused too.
    let mut settings = app.settings.clone();
    settings.clients[0].scopes.push("everything".into());
    settings.clients.retain(|c| c.id != PAYER_CERT);
    let err = app
        .reloader
        .reload(&settings)
        .await
        .expect_err("an unknown scope fails the reload");
    assert!(format!("{err:#}").contains("unknown scope"), "{err:#}");

    // Everything as before: the admin on its connection and on a new one, the payer (whom
    // the second table dropped) too, and a certificate nobody configured still refused.
    resolve(&admin).await.expect("the old table is in force");
    resolve(&tls.channel(&app, Some(ADMIN_CERT)))
        .await
        .expect("the old TLS material serves new connections");
    resolve(&tls.channel(&app, Some(PAYER_CERT)))
        .await
        .expect("the payer is still configured");
    unauthenticated(
        resolve(&tls.channel(&app, Some(UNKNOWN_CERT))).await,
        "names no configured client",
    );
    // And the next good reload applies.
    let summary = app.reloader.reload(&app.settings).await.expect("reload");
    assert!(summary.removed.is_empty() && summary.changed.is_empty());
    app.stop().await;
}

/// The real binary, killed if the test ends without stopping it.
struct Server {
    child: Child,
    logs: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Server {
    /// `payout-registry --config <config> serve` with the database of `db`, its JSON logs
    /// read line by line.
    fn start(config: &Path, db: &TestDb) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_payout-registry"))
            .args(["--config", &config.display().to_string(), "serve"])
            .env("DATABASE_URL", &db.url)
            .env("RUST_LOG", "info")
            .env_remove("PAYOUT_REGISTRY_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start payout-registry serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, logs) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Server { child, logs }
    }

    /// The next log line containing `text`, within 60 s (the binary is on a busy machine).
    async fn log_line(&mut self, text: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match tokio::time::timeout_at(deadline, self.logs.recv()).await {
                Ok(Some(line)) if line.contains(text) => return line,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the server exited before logging {text:?}"),
                Err(_) => panic!("no log line with {text:?} within 60 s"),
            }
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The configuration file of the binary test: three certificate clients (the payer with a
/// token too), minus `without`, and the CRL files.
fn binary_config(
    port: u16,
    data_dir: &Path,
    certs: &Path,
    without: &str,
    crls: &[PathBuf],
) -> String {
    let crl_list: Vec<String> = crls
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    let mut toml = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = {data:?}\ndev_client = false\n\
         log_format = \"json\"\n\n[tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n\
         client_ca_file = {ca:?}\nrequire_client_cert = true\ncrl_files = [{crls}]\n",
        data = data_dir.display().to_string(),
        cert = certs.join("server.pem").display().to_string(),
        key = certs.join("server.key").display().to_string(),
        ca = certs.join("ca.pem").display().to_string(),
        crls = crl_list.join(", "),
    );
    for id in [ADMIN_CERT, PAYER_CERT, MASKED_CERT] {
        if id == without {
            continue;
        }
        toml.push_str(&format!(
            "\n[[clients]]\nid = {id:?}\ncert_subject = {id:?}\nscopes = [\"resolve\"]\n"
        ));
        if id == PAYER_CERT {
            toml.push_str(&format!(
                "token_sha256 = {:?}\n",
                payout_registry::security::auth::hash_token("payroll-secret")
            ));
        }
    }
    toml
}

async fn sighup_makes_the_running_binary_reload_its_configuration_file(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let files = generate_dev_certs(&certs, &[ADMIN_CERT, PAYER_CERT, MASKED_CERT]).unwrap();
    let config = dir.path().join("registry.toml");
    let data_dir = dir.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(&config, binary_config(port, &data_dir, &certs, "", &[])).unwrap();
    let mut server = Server::start(&config, &db);
    server.log_line("payout-registry listening").await;

    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let client = |id: &str| {
        tls_channel(
            addr,
            ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(
                    std::fs::read(&files.ca_cert).unwrap(),
                ))
                .identity(common::client_identity(&certs, id)),
        )
    };
    let payer = client(PAYER_CERT);
    let office = client(MASKED_CERT);
    for channel in [&client(ADMIN_CERT), &payer, &office] {
        assert_eq!(
            resolve(channel).await.expect("served before the reload"),
            ResolveOutcome::UnknownCitizen
        );
    }

    // The operator revokes the admin's certificate and removes the payer, then SIGHUP.
    let admin_cert = certs.join(format!("{ADMIN_CERT}.pem"));
    let crl = certs.join("clients.crl.pem");
    std::fs::write(
        &crl,
        dev_crl(&files.ca_cert, &files.ca_key, &[&admin_cert]).unwrap(),
    )
    .unwrap();
    std::fs::write(
        &config,
        binary_config(
            port,
            &data_dir,
            &certs,
            PAYER_CERT,
            std::slice::from_ref(&crl),
        ),
    )
    .unwrap();
    server.signal("-HUP");
    let line = server.log_line("configuration reloaded").await;
    assert!(line.contains(&format!("removed: {PAYER_CERT}")), "{line}");
    assert!(line.contains("revoking 1 certificate"), "{line}");
    let digest = payout_registry::security::auth::hash_token("payroll-secret");
    assert!(
        !line.contains(&digest),
        "no token digest in the log: {line}"
    );

    unauthenticated(resolve(&payer).await, "names no configured client");
    refused_by_the_handshake(resolve(&client(ADMIN_CERT)).await);
    resolve(&office)
        .await
        .expect("the office's connection stays");

    // A broken CRL: the reload fails, says why, and the previous configuration stays.
    std::fs::write(&crl, "garbage\n").unwrap();
    server.signal("-HUP");
    let line = server.log_line("configuration reload failed").await;
    assert!(line.contains("clients.crl.pem"), "{line}");
    resolve(&client(MASKED_CERT))
        .await
        .expect("new connections are still served");
    refused_by_the_handshake(resolve(&client(ADMIN_CERT)).await);
    unauthenticated(resolve(&payer).await, "names no configured client");

    server.signal("-TERM");
    server.log_line("server stopped").await;
}
