//! Configuration: defaults, then a TOML file, then environment variables.
//!
//! `PAYOUT_REGISTRY_CONFIG` (or `--config`) names the TOML file; every setting can be
//! overridden by `PAYOUT_REGISTRY__<NAME>` (e.g. `PAYOUT_REGISTRY__LISTEN=0.0.0.0:50051`),
//! and `DATABASE_URL` overrides `database_url`. Secrets (the database URL, which may hold
//! a password) are wrapped so that `Debug` never prints them.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A string that never appears in `Debug` output or logs.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A client allowed to call the registry, and what it may do.
#[derive(Debug, Clone, Deserialize)]
pub struct ClientConfig {
    /// Recorded as the actor of every change the client makes.
    pub id: String,
    /// Hex SHA-256 of the client's bearer token (`payout-registry hash-token` prints it).
    /// The token itself is never stored.
    pub token_sha256: String,
    /// Scopes granted, e.g. `["resolve", "accounts.read"]`.
    pub scopes: Vec<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

/// Every setting of the service.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address the gRPC server listens on.
    pub listen: SocketAddr,
    /// `sqlite://data/registry.db` (embedded default) or `postgres://...`.
    pub database_url: Secret,
    /// Where the embedded database and the development token live.
    pub data_dir: PathBuf,
    /// Plain-text gRPC is refused on non-loopback addresses unless this is set.
    pub allow_plaintext_non_loopback: bool,
    /// Hours the previous account keeps being paid after a default or preference change.
    pub cooling_off_hours: u64,
    /// Database connections in the pool.
    pub db_max_connections: u32,
    /// Create a development client with every scope and write its token to
    /// `<data_dir>/dev-token` when no clients are configured.
    pub dev_client: bool,
    /// Configured clients.
    pub clients: Vec<ClientConfig>,
    /// Longest a graceful shutdown waits for in-flight calls.
    pub shutdown_grace_secs: u64,
    /// Largest request message accepted, in bytes.
    pub max_message_bytes: usize,
    /// `json` or `pretty`.
    pub log_format: LogFormat,
    /// A tracing filter, e.g. `info` or `payout_registry=debug,info`.
    pub log_level: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            database_url: Secret::new("sqlite://data/registry.db"),
            data_dir: PathBuf::from("data"),
            allow_plaintext_non_loopback: false,
            cooling_off_hours: 72,
            db_max_connections: 16,
            dev_client: true,
            clients: Vec::new(),
            shutdown_grace_secs: 30,
            max_message_bytes: 4 * 1024 * 1024,
            log_format: LogFormat::Json,
            log_level: "info".into(),
        }
    }
}

impl Settings {
    /// Loads defaults, then `file` (if given, or named by `PAYOUT_REGISTRY_CONFIG`), then
    /// the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, config::ConfigError> {
        let env_file = std::env::var_os("PAYOUT_REGISTRY_CONFIG").map(PathBuf::from);
        let mut builder = config::Config::builder();
        if let Some(path) = file.map(Path::to_path_buf).or(env_file) {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("PAYOUT_REGISTRY")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        if let Ok(url) = std::env::var("DATABASE_URL") {
            builder = builder.set_override("database_url", url)?;
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), config::ConfigError> {
        let bad = |m: String| Err(config::ConfigError::Message(m));
        for c in &self.clients {
            if c.token_sha256.len() != 64 || hex::decode(&c.token_sha256).is_err() {
                return bad(format!(
                    "client {}: token_sha256 must be 64 hex characters (see `hash-token`)",
                    c.id
                ));
            }
            for s in &c.scopes {
                if crate::auth::Scope::parse(s).is_none() {
                    return bad(format!("client {}: unknown scope {s:?}", c.id));
                }
            }
        }
        if self.max_message_bytes == 0 {
            return bad("max_message_bytes must be positive".into());
        }
        Ok(())
    }

    pub fn cooling_off(&self) -> Duration {
        Duration::from_secs(self.cooling_off_hours * 3600)
    }

    /// True when the database is the embedded SQLite file.
    pub fn is_embedded(&self) -> bool {
        self.database_url.expose().starts_with("sqlite:")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print_in_debug_output() {
        let s = Settings {
            database_url: Secret::new("postgres://u:hunter2@db/x"),
            ..Settings::default()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn a_toml_file_overrides_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:6000\"\ncooling_off_hours = 1\n\
             [[clients]]\nid = \"vss\"\ntoken_sha256 = \""
                .to_owned()
                + &"ab".repeat(32)
                + "\"\nscopes = [\"resolve\"]\n",
        )
        .unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.listen.port(), 6000);
        assert_eq!(s.cooling_off(), Duration::from_secs(3600));
        assert_eq!(s.clients[0].id, "vss");
    }

    #[test]
    fn an_unknown_scope_is_refused_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[[clients]]\nid = \"x\"\ntoken_sha256 = \"".to_owned()
                + &"ab".repeat(32)
                + "\"\nscopes = [\"everything\"]\n",
        )
        .unwrap();
        let err = Settings::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("unknown scope"), "{err}");
    }

    #[test]
    fn the_example_configuration_in_deploy_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/registry.example.toml");
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.clients.len(), 2);
        assert!(!s.dev_client);
    }
}
