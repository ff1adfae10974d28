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

/// `health`'s arguments.
#[derive(clap::Args)]
pub struct HealthArgs {
    /// The health endpoint: `health_listen` (plain text), or the gRPC port (`https://`
    /// with --ca).
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    pub endpoint: String,
    /// The service to ask about: empty for the server as a whole (readiness),
    /// `liveness` for the process, or a service's full name.
    #[arg(long, default_value = "")]
    pub service: String,
    /// PEM CA certificate of the server, for an `https://` endpoint.
    #[arg(long)]
    pub ca: Option<std::path::PathBuf>,
    /// Longest the probe may take, in seconds.
    #[arg(long, default_value_t = 2)]
    pub timeout_secs: u64,
}

/// `health`: exits 0 when the service reports SERVING; otherwise prints what it
/// reported (or why it could not be asked) and fails.
pub async fn health(args: HealthArgs) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let timeout = std::time::Duration::from_secs(args.timeout_secs.max(1));
    let mut endpoint = tonic::transport::Endpoint::from_shared(args.endpoint.clone())?
        .connect_timeout(timeout)
        .timeout(timeout);
    if let Some(ca) = &args.ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        endpoint = endpoint.tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        )?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.endpoint))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: args.service.clone(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("health check failed: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let status = ServingStatus::try_from(answer.status).unwrap_or(ServingStatus::Unknown);
    let name = if args.service.is_empty() {
        "the server"
    } else {
        args.service.as_str()
    };
    if status == ServingStatus::Serving {
        println!("{name}: SERVING");
        Ok(())
    } else {
        anyhow::bail!("{name}: {}", status.as_str_name())
    }
}

/// `migrate`: applies migrations and loads the reference data.
pub async fn migrate(config: Option<&Path>) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    crate::telemetry::init(settings.log_format, &settings.log_level);
    open_store(&settings).await?;
    println!("migrations applied and reference data loaded");
    Ok(())
}

/// `check`: compares the resolution read model with its source tables and prints every
/// difference (citizen ids masked); fails when one is left unrepaired. A full check also
/// checks the references between the source tables, and fails when a rule is broken.
pub async fn check(config: Option<&Path>, sample: Option<u64>, repair: bool) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    crate::telemetry::init(settings.log_format, &settings.log_level);
    let store = open_store(&settings).await?;
    let started = std::time::Instant::now();
    let report = store.check_resolution_model(sample, repair).await?;
    for d in &report.differences {
        println!(
            "{}: {}",
            crate::domain::mask::mask_citizen_id(&d.citizen_id),
            d.what
        );
    }
    println!(
        "resolution read model: {} citizens checked in {:.1} s, {} differences, {} citizens repaired",
        report.checked,
        started.elapsed().as_secs_f64(),
        report.differences.len(),
        report.repaired
    );
    if sample.is_none() {
        println!(
            "rows in an older form (the JSON of before migration 0018, or the first binary \
             form): {} found, {} rewritten in this instance's form",
            report.legacy_rows, report.rewritten
        );
    }
    if report.references_checked {
        for b in &report.broken_references {
            let citizens: Vec<String> = b
                .citizens
                .iter()
                .map(|c| crate::domain::mask::mask_citizen_id(c))
                .collect();
            println!(
                "{} rows: {} (citizens {})",
                b.rows,
                b.rule,
                citizens.join(", ")
            );
        }
        println!(
            "references between the source tables: {} rules broken",
            report.broken_references.len()
        );
    } else {
        println!("references between the source tables: not checked (a sample)");
    }
    if !report.broken_references.is_empty() {
        anyhow::bail!(
            "the source tables break their references; `check --repair` cannot mend that: \
             find what wrote those rows"
        );
    }
    if !report.differences.is_empty() && !repair {
        anyhow::bail!(
            "the read model differs from its source tables; `check --repair` rewrites the \
             differing rows"
        );
    }
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
