//! Configuration: defaults, then a TOML file, then environment variables.
//!
//! `PAYOUT_REGISTRY_CONFIG` (or `--config`) names the TOML file; every setting can be
//! overridden by `PAYOUT_REGISTRY__<NAME>` (e.g. `PAYOUT_REGISTRY__LISTEN=0.0.0.0:50051`),
//! and `DATABASE_URL` overrides `database_url`. Secrets (the database URL, which may hold
//! a password) are wrapped so that `Debug` never prints them. The optional `[tls]` section
//! holds only file paths: key material is read when the server starts, never kept here.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::security::auth::{validate_clients, ClientConfig};
use crate::security::limits::RateLimitConfig;
use crate::security::tls::TlsSettings;

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
    /// Read replicas: PostgreSQL streaming standbys of `database_url` that answer
    /// Resolve, BatchResolve, GetAccount, ListCitizenAccounts, GetAccountHistory and the
    /// change feed's catch-up (writes, the access log and the feed's live tail stay on the
    /// primary). `READ_DATABASE_URLS` (comma-separated) overrides it.
    pub read_database_urls: Vec<Secret>,
    /// Most change-feed positions a replica may trail this instance's followed position
    /// and still be read; one further behind is skipped until it catches up.
    pub replica_max_lag: u64,
    /// Citizens whose resolution inputs each instance caches (the change feed keeps the
    /// cache true); 0 turns the cache off. About 1.4 KB of memory per cached citizen
    /// (measured: 1 M entries, 1.4 GiB RSS): size it with the pod's memory limit.
    pub resolution_cache_entries: u64,
    /// The form this instance writes the resolution read model's rows in: 2, the compact
    /// form (the default), or 1, the first binary form. Every instance reads both. Set 1
    /// while a rolling update replaces instances older than the compact form (they read
    /// only 1), then 2 with the next rollout.
    pub resolution_model_format: u8,
    /// Where the embedded database and the development token live.
    pub data_dir: PathBuf,
    /// Plain-text gRPC is refused on non-loopback addresses unless this is set (or `[tls]`
    /// is configured). It also lets bearer tokens arrive in plain text from non-loopback
    /// peers, e.g. from a TLS-terminating proxy.
    pub allow_plaintext_non_loopback: bool,
    /// Serve over TLS (mutual TLS by default); plain text when absent.
    pub tls: Option<TlsSettings>,
    /// Hours the previous account keeps being paid after a default or preference change.
    pub cooling_off_hours: u64,
    /// Database connections in the pool.
    pub db_max_connections: u32,
    /// Longest a call waits for a pooled database connection before it is answered
    /// UNAVAILABLE (DATABASE_UNAVAILABLE), in milliseconds.
    pub db_acquire_timeout_ms: u64,
    /// Longest one SQL statement may run (PostgreSQL `statement_timeout`; SQLite's busy
    /// timeout), in milliseconds. A statement stopped by it is answered UNAVAILABLE
    /// (DATABASE_TIMEOUT). Keep it well under the clients' deadlines.
    pub db_statement_timeout_ms: u64,
    /// Batch transactions of one sync stream running at once, 1 to 16 (`demo-data
    /// --into-store` has its own `--in-flight`). More keeps more of the database's cores
    /// busy during a bulk load; fewer leaves more of its commits to everything else. On
    /// two cores, beside a SyncAccounts load, a unary write's commit-to-numbered p99 was
    /// at most 50-100 ms at 1 against 150-250 ms at 2 (send to receipt p99 63-121 ms
    /// against 160-202 ms), for 14-34% fewer records/s (3.7-4.8 k against 5.3-5.6 k).
    /// Streams run one batch at a time anyway while unary writes arrive
    /// (`sync_yield_window_ms`). SQLite has one writer: more than one changes nothing
    /// there.
    pub sync_batches_in_flight: usize,
    /// Most records of a sync stream applied in one transaction, 250 to 10,000 (while the
    /// stream yields to unary writes its batches stay at 250, whatever this says). Larger
    /// batches load faster and hold back the change feed longer: each commit brings the
    /// feed thousands of events at once. On two cores, the 1 M population, batches of
    /// 4,000 against 1,000 took SyncCitizens from 21.5-28.5 k to 35.6-37.2 k records/s on
    /// PostgreSQL (10.0-10.3 k to 13.0-13.8 k on SQLite) and SyncAccounts from 6.8-8.4 k
    /// to 9.0-9.3 k (SQLite unchanged), while a unary write's commit-to-receipt p99 beside
    /// a SyncAccounts stream went from 35-129 ms to 167-367 ms. Raise it for a first
    /// national load that no payer's feed waits on; keep 1,000 beside live consumers.
    pub sync_batch_records: usize,
    /// While a unary write (LinkAccount, VerifyAccount, ...) was admitted within this many
    /// milliseconds, a sync stream runs one batch at a time, whatever
    /// `sync_batches_in_flight` says, so that the write's commit and its event's numbering
    /// do not queue behind bulk WAL (`src/grpc/priority.rs`). 0: streams never yield.
    /// At most 60,000.
    pub sync_yield_window_ms: u64,
    /// Create a development client with every scope and write its token to
    /// `<data_dir>/dev-token` when no clients are configured.
    pub dev_client: bool,
    /// Configured clients.
    pub clients: Vec<ClientConfig>,
    /// Longest a graceful shutdown waits for in-flight calls.
    pub shutdown_grace_secs: u64,
    /// After SIGTERM, how long the server keeps its listeners open with health reporting
    /// NOT_SERVING (new calls answered UNAVAILABLE, SHUTTING_DOWN) before the drain, so
    /// that probes and load balancers see the change.
    pub shutdown_notice_secs: u64,
    /// Connections older than this are asked to go away (HTTP/2 GOAWAY, gRFC A9) and
    /// clients reconnect, so that load spreads onto instances added later. 0: never.
    pub max_connection_age_secs: u64,
    /// Serve only `grpc.health.v1.Health`, in plain text, on this address (for probes
    /// that cannot present a client certificate, such as Kubernetes' gRPC probes).
    pub health_listen: Option<SocketAddr>,
    /// Serve Prometheus metrics (`GET /metrics`) on this address.
    pub metrics_listen: Option<SocketAddr>,
    /// Largest request message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Longest one call may take (unary calls, body included).
    pub request_timeout_secs: u64,
    /// Per-client rate limits and the in-flight limit.
    pub rate_limits: RateLimitConfig,
    /// The access log's writers (`[access_log]`).
    pub access_log: AccessLogSettings,
    /// The change feed's sequencer and retention (`[feed]`).
    pub feed: FeedSettings,
    /// `json` or `pretty`.
    pub log_format: LogFormat,
    /// A tracing filter, e.g. `info` or `payout_registry=debug,info`.
    pub log_level: String,
    /// The NATS JetStream relay of the change feed (`payout-registry relay`).
    pub relay: RelaySettings,
}

/// The `[access_log]` section: how reads are recorded (see `background::access_log`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogSettings {
    /// Record every read. Turn off only to measure the log's cost in a benchmark:
    /// Decree 13/2023/ND-CP requires the record in production.
    pub enabled: bool,
    /// Reads waiting to be written at most; a fuller queue slows reads down.
    pub queue: usize,
    /// Entries written by one statement at most.
    pub max_batch: usize,
    /// Writer tasks; several overlap their commits. Fewer make larger batches: on two
    /// cores, unary Resolve at concurrency 32 did 7.2 k calls/s with 4, 8.0 k with 2 and
    /// 7.8 k with 1 (the access log's INSERTs share the cores with everything else).
    pub writers: usize,
    /// This instance's spool: where reads are recorded before they are shipped to the
    /// database (see `background::access_spool`). Unset: each group of reads is
    /// committed to the database before it is answered. Each instance needs a directory
    /// of its own (it is locked) that outlives a crash of the process.
    pub spool_dir: Option<std::path::PathBuf>,
    /// `fdatasync` each spool write before its reads are answered: an answered read's
    /// entry then survives a crash of the machine, not only of the registry. Off by
    /// default: on two cores unary Resolve at concurrency 8 did 10 k calls/s with it
    /// against 22.7 k without, no faster than the database path.
    pub spool_sync: bool,
    /// Unshipped spool bytes at most (the database down for long); beyond, reads are
    /// refused.
    pub spool_max_bytes: u64,
    /// How often the spool is shipped to the database, in milliseconds: also how late a
    /// read can appear in the database (ListAccessLog ships this instance's spool first).
    pub ship_every_ms: u64,
}

impl Default for AccessLogSettings {
    fn default() -> Self {
        AccessLogSettings {
            enabled: true,
            queue: 10_000,
            max_batch: 2_000,
            writers: 2,
            spool_dir: None,
            spool_sync: false,
            spool_max_bytes: 1 << 30,
            ship_every_ms: 200,
        }
    }
}

/// The `[feed]` section: the change feed's sequencer and retention.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct FeedSettings {
    /// Events older than this many days are pruned, never beyond the slowest named
    /// consumer's position. 0 keeps every event.
    pub retention_days: u32,
    /// How often the pruner runs, in seconds.
    pub prune_every_secs: u64,
    /// Events the sequencer numbers per transaction at most.
    pub sequencer_round: u32,
}

impl Default for FeedSettings {
    fn default() -> Self {
        FeedSettings {
            retention_days: 0,
            prune_every_secs: 3600,
            sequencer_round: 10_000,
        }
    }
}

impl FeedSettings {
    /// How long events are kept, when retention is on.
    pub fn retention(&self) -> Option<Duration> {
        (self.retention_days > 0)
            .then(|| Duration::from_secs(u64::from(self.retention_days) * 86_400))
    }
}

/// The `[relay]` section: where `payout-registry relay` publishes the change feed.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RelaySettings {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`. May hold credentials, so it is a
    /// secret and never logged.
    pub nats_url: Secret,
    /// The JetStream stream (created when missing, file storage).
    pub stream: String,
    /// Events go to `<subject_prefix>.<event type in lower case>`; the stream holds
    /// `<subject_prefix>.>`.
    pub subject_prefix: String,
    /// The relay's durable named consumer of the feed (client `system:relay`): its
    /// position is what was published, and retention never prunes past it.
    pub consumer: String,
    /// Publish account numbers in clear. Only for a stream whose subscribers all hold
    /// the right to them (`resolve.full`); masked (last 4 visible) otherwise.
    pub full_account_numbers: bool,
    /// Events read from the database per query.
    pub page_size: u32,
    /// Publishes awaiting JetStream's acknowledgement at once.
    pub max_in_flight: usize,
    /// Publish the feed again into a stream that lost what this relay had published
    /// (`relay --refill`; never from the configuration: refilling is a deliberate act).
    #[serde(skip)]
    pub refill: bool,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            nats_url: Secret::new("nats://127.0.0.1:4222"),
            stream: "PAYOUT_EVENTS".into(),
            subject_prefix: "payoutregistry.v1.events".into(),
            consumer: "jetstream-relay".into(),
            full_account_numbers: false,
            page_size: 1000,
            max_in_flight: 256,
            refill: false,
        }
    }
}

impl RelaySettings {
    /// Refuses names JetStream would refuse later, with a message that names the setting.
    pub fn validate(&self) -> Result<(), String> {
        let plain = |s: &str| {
            !s.is_empty()
                && !s
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '>'))
        };
        if !plain(&self.stream) || self.stream.contains(['.', '/', '\\']) {
            return Err(format!(
                "[relay] stream {:?} must be a name without spaces, dots, slashes or wildcards",
                self.stream
            ));
        }
        if !plain(&self.subject_prefix) || self.subject_prefix.split('.').any(str::is_empty) {
            return Err(format!(
                "[relay] subject_prefix {:?} must be dot-separated tokens without spaces or \
                 wildcards, e.g. payoutregistry.v1.events",
                self.subject_prefix
            ));
        }
        if self.consumer.trim().is_empty() || self.consumer.chars().count() > 128 {
            return Err("[relay] consumer must be a name of 1 to 128 characters".into());
        }
        if self.page_size == 0 || self.max_in_flight == 0 {
            return Err("[relay] page_size and max_in_flight must be positive".into());
        }
        Ok(())
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            database_url: Secret::new("sqlite://data/registry.db"),
            read_database_urls: Vec::new(),
            replica_max_lag: 10_000,
            resolution_cache_entries: 250_000,
            resolution_model_format: 2,
            data_dir: PathBuf::from("data"),
            allow_plaintext_non_loopback: false,
            tls: None,
            cooling_off_hours: 72,
            db_max_connections: 16,
            db_acquire_timeout_ms: 2_000,
            db_statement_timeout_ms: 5_000,
            sync_batches_in_flight: 2,
            sync_batch_records: 1000,
            sync_yield_window_ms: 1_000,
            dev_client: true,
            clients: Vec::new(),
            shutdown_grace_secs: 30,
            shutdown_notice_secs: 2,
            max_connection_age_secs: 1800,
            health_listen: None,
            metrics_listen: None,
            max_message_bytes: 4 * 1024 * 1024,
            request_timeout_secs: 60,
            rate_limits: RateLimitConfig::default(),
            access_log: AccessLogSettings::default(),
            feed: FeedSettings::default(),
            log_format: LogFormat::Json,
            log_level: "info".into(),
            relay: RelaySettings::default(),
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
        if let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
            builder = builder.set_override("database_url", url)?;
        }
        if let Ok(urls) = std::env::var("READ_DATABASE_URLS") {
            let urls: Vec<String> = urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
            builder = builder.set_override("read_database_urls", urls)?;
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), config::ConfigError> {
        let bad = |m: String| Err(config::ConfigError::Message(m));
        validate_clients(&self.clients).map_err(config::ConfigError::Message)?;
        self.relay
            .validate()
            .map_err(config::ConfigError::Message)?;
        if self.max_message_bytes == 0 {
            return bad("max_message_bytes must be positive".into());
        }
        if self.db_acquire_timeout_ms == 0 || self.db_statement_timeout_ms == 0 {
            return bad(
                "db_acquire_timeout_ms and db_statement_timeout_ms must be positive".into(),
            );
        }
        if !self.read_database_urls.is_empty() && self.is_embedded() {
            return bad("read_database_urls needs a PostgreSQL database_url".into());
        }
        if let Some(url) = self
            .read_database_urls
            .iter()
            .find(|u| !u.expose().starts_with("postgres"))
        {
            let scheme = url.expose().split(':').next().unwrap_or("");
            return bad(format!(
                "read_database_urls takes postgres:// URLs, not {scheme}:"
            ));
        }
        if !(1..=16).contains(&self.sync_batches_in_flight) {
            return bad(format!(
                "sync_batches_in_flight must be between 1 and 16, not {}",
                self.sync_batches_in_flight
            ));
        }
        if !(1..=2).contains(&self.resolution_model_format) {
            return bad(format!(
                "resolution_model_format must be 1 or 2, not {}",
                self.resolution_model_format
            ));
        }
        if !(250..=10_000).contains(&self.sync_batch_records) {
            return bad(format!(
                "sync_batch_records must be between 250 and 10000, not {}",
                self.sync_batch_records
            ));
        }
        if self.sync_yield_window_ms > 60_000 {
            return bad(format!(
                "sync_yield_window_ms must be at most 60000, not {}",
                self.sync_yield_window_ms
            ));
        }
        if self.request_timeout_secs == 0 {
            return bad("request_timeout_secs must be positive".into());
        }
        if self.db_statement_timeout_ms >= self.request_timeout_secs * 1000 {
            return bad(format!(
                "db_statement_timeout_ms ({}) must be shorter than request_timeout_secs ({} s): \
                 a stalled statement must end before the call's deadline",
                self.db_statement_timeout_ms, self.request_timeout_secs
            ));
        }
        if self.access_log.queue == 0
            || self.access_log.max_batch == 0
            || self.access_log.writers == 0
            || self.access_log.spool_max_bytes == 0
            || self.access_log.ship_every_ms == 0
        {
            return bad(
                "[access_log] queue, max_batch, writers, spool_max_bytes and ship_every_ms \
                 must be positive"
                    .into(),
            );
        }
        if self.feed.sequencer_round == 0 || self.feed.prune_every_secs == 0 {
            return bad("[feed] sequencer_round and prune_every_secs must be positive".into());
        }
        if let Some(tls) = &self.tls {
            if tls.require_client_cert && tls.client_ca_file.is_none() {
                return bad(
                    "[tls] require_client_cert needs client_ca_file (the CA that issues client \
                     certificates), or set require_client_cert = false"
                        .into(),
                );
            }
            if tls.handshake_timeout_secs == 0 {
                return bad("[tls] handshake_timeout_secs must be positive".into());
            }
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
    fn sync_batches_in_flight_outside_one_to_sixteen_is_refused_at_start_up() {
        for bad in [0, 17] {
            assert_refused_naming(
                &format!("sync_batches_in_flight = {bad}\n"),
                "sync_batches_in_flight",
            );
        }
        assert!(load_toml("sync_batches_in_flight = 1\n").is_ok());
    }

    #[test]
    fn a_resolution_model_format_other_than_1_or_2_is_refused_at_start_up() {
        for bad in [0, 3] {
            assert_refused_naming(
                &format!("resolution_model_format = {bad}\n"),
                "resolution_model_format",
            );
        }
        assert_eq!(Settings::default().resolution_model_format, 2);
        assert!(load_toml("resolution_model_format = 1\n").is_ok());
    }

    #[test]
    fn sync_batch_records_outside_250_to_10000_is_refused_at_start_up() {
        for bad in [0, 249, 10_001] {
            assert_refused_naming(
                &format!("sync_batch_records = {bad}\n"),
                "sync_batch_records",
            );
        }
        for good in [250, 4000, 10_000] {
            assert!(load_toml(&format!("sync_batch_records = {good}\n")).is_ok());
        }
    }

    #[test]
    fn a_sync_yield_window_over_a_minute_is_refused_and_zero_turns_it_off() {
        assert_refused_naming("sync_yield_window_ms = 60001\n", "sync_yield_window_ms");
        assert_eq!(
            load_toml("sync_yield_window_ms = 0\n")
                .unwrap()
                .sync_yield_window_ms,
            0
        );
        assert_eq!(Settings::default().sync_yield_window_ms, 1_000);
    }

    #[test]
    fn read_replicas_must_be_postgres_standbys_of_a_postgres_database() {
        assert_refused_naming(
            "read_database_urls = [\"mysql://replica/db\"]\n",
            "read_database_urls",
        );
        let ok = load_toml(
            "database_url = \"postgres://u@primary/db\"\n\
             read_database_urls = [\"postgres://u@replica-1/db\", \"postgres://u@replica-2/db\"]\n",
        )
        .unwrap();
        assert_eq!(ok.read_database_urls.len(), 2);
        assert!(
            !format!("{ok:?}").contains("replica-1"),
            "replica URLs are secrets"
        );
    }

    #[test]
    fn the_example_configuration_in_deploy_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/registry.example.toml");
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.clients.len(), 4);
        assert!(!s.dev_client);
        let bank = s.clients.iter().find(|c| c.id == "vietcombank").unwrap();
        assert_eq!(bank.providers, ["970436"]);
    }

    #[test]
    fn a_provider_binding_must_look_like_a_provider_code() {
        for bad in ["", "momo", "970 436", "*"] {
            let err = load_toml(&format!(
                "[[clients]]\nid = \"b\"\ncert_subject = \"b\"\nscopes = []\n\
                 providers = [{bad:?}]\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains("providers"), "{bad:?}: {err}");
        }
        let ok = load_toml(
            "[[clients]]\nid = \"b\"\ncert_subject = \"b\"\nscopes = []\n\
             providers = [\"970436\", \"MOMO\"]\n",
        )
        .unwrap();
        assert_eq!(ok.clients[0].providers, ["970436", "MOMO"]);
    }

    /// `toml` is refused at start-up with an error that names `key`.
    fn assert_refused_naming(toml: &str, key: &str) {
        let err = load_toml(toml).unwrap_err().to_string();
        assert!(err.contains(key), "{err}");
    }

    fn load_toml(toml: &str) -> Result<Settings, config::ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        Settings::load(Some(&path))
    }

    #[test]
    fn a_client_may_be_identified_by_certificate_alone() {
        let s = load_toml(
            "[[clients]]\nid = \"vss-payroll\"\ncert_subject = \"vss-payroll\"\n\
             scopes = [\"resolve\"]\n",
        )
        .unwrap();
        assert_eq!(s.clients[0].cert_subject.as_deref(), Some("vss-payroll"));
        assert_eq!(s.clients[0].token_sha256, None);
    }

    #[test]
    fn a_client_without_a_token_or_a_certificate_is_refused() {
        let err = load_toml("[[clients]]\nid = \"x\"\nscopes = [\"resolve\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("token_sha256, a cert_subject"), "{err}");
    }

    #[test]
    fn two_clients_cannot_share_a_certificate_subject_or_a_token() {
        let digest = "ab".repeat(32);
        let err = load_toml(
            "[[clients]]\nid = \"a\"\ncert_subject = \"same\"\nscopes = []\n\
             [[clients]]\nid = \"b\"\ncert_subject = \"same\"\nscopes = []\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("cert_subject"), "{err}");
        let err = load_toml(&format!(
            "[[clients]]\nid = \"a\"\ntoken_sha256 = \"{digest}\"\nscopes = []\n\
             [[clients]]\nid = \"b\"\ntoken_sha256 = \"{}\"\nscopes = []\n",
            digest.to_uppercase()
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("same token_sha256"), "{err}");
    }

    #[test]
    fn a_misspelt_client_key_is_refused() {
        let err = load_toml(
            &("[[clients]]\nid = \"a\"\ncert_subjet = \"a\"\ntoken_sha256 = \"".to_owned()
                + &"ab".repeat(32)
                + "\"\nscopes = []\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("cert_subjet"), "{err}");
    }

    #[test]
    fn the_tls_section_requires_client_certificates_by_default() {
        let s = load_toml(
            "[tls]\ncert_file = \"s.pem\"\nkey_file = \"s.key\"\nclient_ca_file = \"ca.pem\"\n",
        )
        .unwrap();
        let tls = s.tls.unwrap();
        assert!(tls.require_client_cert);
        assert_eq!(tls.client_ca_file, Some(PathBuf::from("ca.pem")));
        assert_eq!(tls.handshake_timeout_secs, 10);
        assert!(Settings::default().tls.is_none());
    }

    #[test]
    fn the_relay_section_has_defaults_and_refuses_wildcard_subjects() {
        let s = load_toml("[relay]\nstream = \"EV_TEST\"\n").unwrap();
        assert_eq!(s.relay.stream, "EV_TEST");
        assert_eq!(s.relay.subject_prefix, "payoutregistry.v1.events");
        assert_eq!(s.relay.nats_url.expose(), "nats://127.0.0.1:4222");
        assert!(!s.relay.full_account_numbers);
        for bad in ["a.>", "a..b", "a b", ".a"] {
            let err = load_toml(&format!("[relay]\nsubject_prefix = {bad:?}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("subject_prefix"), "{bad}: {err}");
        }
        let err = load_toml("[relay]\nstream = \"A.B\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("stream"), "{err}");
    }

    #[test]
    fn requiring_client_certificates_without_a_client_ca_is_refused() {
        let err = load_toml("[tls]\ncert_file = \"s.pem\"\nkey_file = \"s.key\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("client_ca_file"), "{err}");
        let s = load_toml(
            "[tls]\ncert_file = \"s.pem\"\nkey_file = \"s.key\"\nrequire_client_cert = false\n",
        )
        .unwrap();
        assert!(!s.tls.unwrap().require_client_cert);
    }
}
