//! `serve`, `migrate`, `hash-token` and `dev-certs`: running the service and setting it
//! up. The wiring itself is `crate::app`.

use std::path::Path;

use anyhow::Context as _;

use crate::app::{open_store, shutdown_signal, App};
use crate::config::Settings;
use crate::security::auth::{hash_token as digest_of, new_token};

/// `serve`: wires the registry from the configuration and serves until SIGTERM or Ctrl-C;
/// on SIGHUP, reloads the TLS files and the clients from the same configuration.
pub async fn serve(config: Option<&Path>) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    crate::telemetry::init(settings.log_format, &settings.log_level);
    let app = App::build(&settings).await?;
    #[cfg(unix)]
    tokio::spawn(app.reloader().on_hangup(config.map(Path::to_path_buf))?);
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    app.serve(listener, shutdown_signal()).await
}

/// `migrate`: applies migrations and loads the reference data.
pub async fn migrate(config: Option<&Path>) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    crate::telemetry::init(settings.log_format, &settings.log_level);
    open_store(&settings).await?;
    println!("migrations applied and reference data loaded");
    Ok(())
}

/// `hash-token`: the digest of a token for `token_sha256` (of a new token when none).
pub fn hash_token(token: Option<String>) {
    let token = token.unwrap_or_else(new_token);
    println!("token:        {token}\ntoken_sha256: {}", digest_of(&token));
}

pub fn dev_certs(out: &Path, clients: &[String]) -> anyhow::Result<()> {
    let ids: Vec<&str> = clients.iter().map(String::as_str).collect();
    let files = crate::security::tls::generate_dev_certs(out, &ids)?;
    println!(
        "development certificates in {} (keys mode 0600; for local use only):",
        out.display()
    );
    println!("  CA       {}", files.ca_cert.display());
    println!(
        "  server   {}  ({})",
        files.server_cert.display(),
        crate::security::tls::DEV_SERVER_NAMES.join(", ")
    );
    for c in &files.clients {
        println!(
            "  client   {}  (cert_subject = {:?})",
            c.cert.display(),
            c.client_id
        );
    }
    println!(
        "\nServe with them by adding to the configuration:\n\n[tls]\ncert_file = {:?}\n\
         key_file = {:?}\nclient_ca_file = {:?}",
        files.server_cert.display().to_string(),
        files.server_key.display().to_string(),
        files.ca_cert.display().to_string(),
    );
    Ok(())
}
