//! The test harness: a fresh database per test on either backend, and the real server on
//! `127.0.0.1:0` with real tonic clients.
//!
//! [`TestApp::spawn`] builds the server with `App::build` from test settings, exactly as
//! `serve` does, over TLS with certificates made by `generate_dev_certs` in a temp dir of
//! the test's own; [`TestApp::builder`] adjusts it first (plain text, mutual TLS only,
//! limits, any setting).
//!
//! PostgreSQL: `DATABASE_URL` (an admin connection; each test creates and drops its own
//! database) when set; otherwise a throw-away cluster is started from the system's
//! PostgreSQL binaries, once per test binary; if there are none, the tests fail with a
//! message saying what to install. They never skip.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use payout_registry::app::{App, Reloader};
use payout_registry::config::{Secret, Settings};
use payout_registry::domain::Timestamp;
use payout_registry::proto::account_registry_service_client::AccountRegistryServiceClient;
use payout_registry::proto::oversight_service_client::OversightServiceClient;
use payout_registry::proto::payout_resolver_service_client::PayoutResolverServiceClient;
use payout_registry::proto::SyncBatchResult;
use payout_registry::security::auth::{hash_token, ClientConfig};
use payout_registry::security::limits::RateLimitConfig;
use payout_registry::security::tls::{generate_dev_certs, DevCertFiles, TlsSettings};
use payout_registry::store::{connect, ModelCheck, Store, StoreOptions};
use sqlx::Connection;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use uuid::Uuid;

pub const COOLING_OFF: Duration = Duration::from_secs(72 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// How every PostgreSQL test database is created: under the Vietnamese locale (ICU vi-VN)
/// a ministry's database may well have, not the test machine's C.UTF-8. The registry must
/// not depend on it: its identifiers sort and compare byte by byte (migration 0019).
pub const PRODUCTION_LOCALE: &str =
    "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'vi-VN' LOCALE 'C.UTF-8'";

/// One test's own database, dropped when the test ends (pass or fail).
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => TestDb::sqlite(),
            Backend::Postgres => TestDb::postgres().await,
        }
    }

    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("registry.db").display());
        TestDb {
            backend: Backend::Sqlite,
            url,
            name: None,
            _dir: Some(dir),
        }
    }

    pub async fn postgres() -> TestDb {
        let admin = pg_admin_url();
        let name = format!("payout_test_{}", Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL for tests ({e}); {PG_HELP}"));
        sqlx::query(&format!("CREATE DATABASE {name} {PRODUCTION_LOCALE}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let _ = conn.close().await;
        let url = with_database(&admin, &name);
        TestDb {
            backend: Backend::Postgres,
            url,
            name: Some(name),
            _dir: None,
        }
    }

    /// A PostgreSQL database the test made itself (on a [`Cluster`] of its own, which
    /// takes the database with it).
    pub fn at(url: String) -> TestDb {
        TestDb {
            backend: Backend::Postgres,
            url,
            name: None,
            _dir: None,
        }
    }

    /// The PostgreSQL database's name (`None` on SQLite).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// A migrated store on this database.
    pub async fn store(&self) -> Arc<dyn Store> {
        self.store_with(StoreOptions {
            cooling_off: COOLING_OFF,
            max_connections: 8,
            ..StoreOptions::default()
        })
        .await
    }

    pub async fn store_with(&self, options: StoreOptions) -> Arc<dyn Store> {
        let store = connect(&self.url, options).await.expect("connect store");
        store.migrate().await.expect("migrate");
        store
    }

    /// Runs raw SQL against the test database, bypassing the store (to prove what the
    /// schema itself refuses, or to break the database on purpose).
    pub async fn execute_raw(&self, sql: &str) -> Result<u64, String> {
        match self.backend {
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::query(sql)
                    .execute(&mut c)
                    .await
                    .map(|r| r.rows_affected())
                    .map_err(|e| e.to_string())
            }
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::query(sql)
                    .execute(&mut c)
                    .await
                    .map(|r| r.rows_affected())
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Holds `LOCK TABLE` on `tables` (PostgreSQL) in an open transaction on a connection
    /// of its own, until the connection is dropped or its transaction ends.
    pub async fn lock(&self, tables: &str) -> sqlx::PgConnection {
        self.holding(&format!("LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE"))
            .await
    }

    /// Runs `sql` (PostgreSQL) in a transaction left open on a connection of its own:
    /// the locks it took are held until the connection is dropped (and the transaction
    /// rolled back) or its transaction ends.
    pub async fn holding(&self, sql: &str) -> sqlx::PgConnection {
        let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut c).await.unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
        c
    }

    /// The one text column of every row `sql` returns (raw SQL, bypassing the store).
    pub async fn texts(&self, sql: &str) -> Vec<String> {
        match self.backend {
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("connect");
                sqlx::query_scalar(sql).fetch_all(&mut c).await.expect(sql)
            }
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("connect");
                sqlx::query_scalar(sql).fetch_all(&mut c).await.expect(sql)
            }
        }
    }

    /// Backends of this (PostgreSQL) database waiting for a lock right now, running a
    /// statement whose text is `LIKE` `query`.
    pub async fn lock_waiters(&self, query: &str) -> i64 {
        let mut c = sqlx::PgConnection::connect(&self.url)
            .await
            .expect("connect");
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query LIKE $1",
        )
        .bind(query)
        .fetch_one(&mut c)
        .await
        .expect("pg_stat_activity")
    }

    /// Counts rows with raw SQL (`SELECT COUNT(*) ...`).
    pub async fn count(&self, sql: &str) -> i64 {
        match self.backend {
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("connect");
                sqlx::query_scalar(sql)
                    .fetch_one(&mut c)
                    .await
                    .expect("count")
            }
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("connect");
                sqlx::query_scalar(sql)
                    .fetch_one(&mut c)
                    .await
                    .expect("count")
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else { return };
        let admin = pg_admin_url();
        cleanup_in_drop(async move {
            let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await
                .ok()
        });
    }
}

/// Runs a clean-up from `Drop`, which may not block the test's runtime: on a thread with
/// a runtime of its own, waiting for it (failures are ignored).
pub fn cleanup_in_drop<T>(work: impl std::future::Future<Output = Option<T>> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(work).map(|_| ())
    })
    .join();
}

const PG_HELP: &str =
    "the PostgreSQL tests need a server: set DATABASE_URL=postgres://user@host:port/db \
     (a role that may CREATE DATABASE), or install the PostgreSQL server binaries \
     (Debian/Ubuntu: apt-get install postgresql) so the tests can start a throw-away cluster";

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].rfind('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// The admin URL for PostgreSQL tests: `DATABASE_URL`, or a throw-away cluster.
pub fn pg_admin_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => url,
        _ => start_throwaway_cluster(),
    })
    .clone()
}

fn find_pg_bin(name: &str) -> Option<PathBuf> {
    if let Ok(out) = Command::new("which").arg(name).output() {
        if out.status.success() {
            return Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    candidates.sort();
    candidates.pop()
}

/// Starts a private PostgreSQL on a free loopback port in a temp dir, stopped by a
/// watchdog when this test process exits.
fn start_throwaway_cluster() -> String {
    let cluster = Cluster::start();
    let url = cluster.url("postgres");
    // Kept for the whole test process; the watchdog stops it.
    std::mem::forget(cluster);
    url
}

/// A PostgreSQL cluster of a test's own, from the system's binaries, on a free loopback
/// port in a temp dir: a primary ([`Cluster::start`]) or a streaming replica of one
/// ([`Cluster::replica`]). Stopped and removed when dropped, and by a watchdog when the
/// test process exits.
pub struct Cluster {
    pub port: u16,
    dir: PathBuf,
    data: PathBuf,
    pg_ctl: PathBuf,
}

impl Cluster {
    /// initdb and start a new cluster (trust authentication, replication allowed from
    /// loopback, as initdb sets it up).
    pub fn start() -> Cluster {
        let cluster = Cluster::initialised();
        cluster.start_postmaster();
        cluster
    }

    /// Like [`Cluster::start`], but serving TLS with the PEM certificate `cert` and key
    /// `key`, and refusing every TCP connection without it (`hostssl` lines only in
    /// `pg_hba.conf`).
    pub fn start_tls_only(cert: &Path, key: &Path) -> Cluster {
        Cluster::start_tls(cert, key, "hostssl all all 127.0.0.1/32 trust\n")
    }

    /// Like [`Cluster::start_tls_only`], but also taking plain TCP connections: TLS is
    /// offered, as by a server with `ssl = on` and `host` lines in `pg_hba.conf`.
    pub fn start_tls_offered(cert: &Path, key: &Path) -> Cluster {
        Cluster::start_tls(cert, key, "host all all 127.0.0.1/32 trust\n")
    }

    /// A cluster serving TLS with `cert` and `key`, TCP connections as `hba` says.
    fn start_tls(cert: &Path, key: &Path, hba: &str) -> Cluster {
        let cluster = Cluster::initialised();
        let crt = cluster.data.join("server.crt");
        let pem_key = cluster.data.join("server.key");
        std::fs::copy(cert, &crt).expect("copy the server certificate");
        std::fs::copy(key, &pem_key).expect("copy the server key");
        give_to_postgres(&crt);
        give_to_postgres(&pem_key);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pem_key, std::fs::Permissions::from_mode(0o600))
            .expect("key mode");
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(cluster.data.join("postgresql.conf"))
            .expect("postgresql.conf");
        std::io::Write::write_all(&mut conf, b"\nssl = on\n").expect("postgresql.conf");
        std::fs::write(
            cluster.data.join("pg_hba.conf"),
            format!("local all all trust\n{hba}"),
        )
        .expect("pg_hba.conf");
        cluster.start_postmaster();
        cluster
    }

    /// A new cluster's data directory, made by initdb; not started.
    fn initialised() -> Cluster {
        let (Some(initdb), Some(_)) = (find_pg_bin("initdb"), find_pg_bin("pg_ctl")) else {
            panic!("no initdb/pg_ctl found: {PG_HELP}");
        };
        let cluster = Cluster::new_dir();
        let data = cluster.data.to_string_lossy().to_string();
        pg_run(
            &initdb,
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        cluster
    }

    /// A streaming replica of this cluster: `pg_basebackup -R` (a hot standby that
    /// follows the primary over a replication connection), started on a port of its own.
    pub fn replica(&self) -> Cluster {
        let basebackup = find_pg_bin("pg_basebackup")
            .unwrap_or_else(|| panic!("no pg_basebackup found: {PG_HELP}"));
        let replica = Cluster::new_dir();
        let port = self.port.to_string();
        let data = replica.data.to_string_lossy().to_string();
        pg_run(
            &basebackup,
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
                "--no-sync",
                "--checkpoint=fast",
            ],
        );
        replica.start_postmaster();
        replica
    }

    fn new_dir() -> Cluster {
        let pg_ctl = find_pg_bin("pg_ctl").unwrap_or_else(|| panic!("no pg_ctl: {PG_HELP}"));
        let dir = tempfile::Builder::new()
            .prefix("payout-pg-")
            .tempdir()
            .expect("temp dir")
            .keep();
        give_to_postgres(&dir);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Cluster {
            port,
            data: dir.join("data"),
            dir,
            pg_ctl,
        };
        let watchdog = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} -D {data} stop -m immediate; rm -rf {dir}",
            pid = std::process::id(),
            stop = if unsafe_is_root() {
                format!("runuser -u postgres -- {}", cluster.pg_ctl.display())
            } else {
                cluster.pg_ctl.display().to_string()
            },
            data = cluster.data.display(),
            dir = cluster.dir.display(),
        );
        let _ = Command::new("sh")
            .args(["-c", &watchdog])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        cluster
    }

    fn start_postmaster(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let data = self.data.to_string_lossy().to_string();
        let log = format!("{}/log", self.dir.display());
        pg_run(
            &self.pg_ctl,
            &["-D", &data, "-o", &opts, "-l", &log, "-w", "start"],
        );
    }

    /// Stops the postmaster at once (as a crash would).
    pub fn stop(&self) {
        let data = self.data.to_string_lossy().to_string();
        pg_run(
            &self.pg_ctl,
            &["-D", &data, "-m", "immediate", "-w", "stop"],
        );
    }

    /// Starts it again after [`Cluster::stop`].
    pub fn restart(&self) {
        self.start_postmaster();
    }

    /// The URL of one of its databases.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data.to_string_lossy().to_string();
        let _ = pg_command(&self.pg_ctl)
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Creates the database `registry`, in the production locale, over `admin` (a connection
/// to a [`Cluster`] of the test's own).
pub async fn create_registry_database(admin: &mut sqlx::PgConnection) {
    sqlx::query(&format!("CREATE DATABASE registry {PRODUCTION_LOCALE}"))
        .execute(admin)
        .await
        .expect("CREATE DATABASE registry");
}

/// Hands `path` (and all below it) to `postgres` when the tests run as root: PostgreSQL
/// refuses to run as root, and runs as `postgres` then.
fn give_to_postgres(path: &Path) {
    if unsafe_is_root() {
        let _ = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(path)
            .status();
    }
}

/// A PostgreSQL binary, run as `postgres` when the tests run as root.
fn pg_command(program: &Path) -> Command {
    if unsafe_is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Runs a PostgreSQL binary to completion; fails the test with its output otherwise.
fn pg_run(program: &Path, args: &[&str]) {
    let out = pg_command(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn unsafe_is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    })
}

/// A test clock: starts at the real time and moves only when told.
#[derive(Clone)]
pub struct TestClock(Arc<Mutex<Timestamp>>);

impl TestClock {
    pub fn new() -> TestClock {
        TestClock(Arc::new(Mutex::new(Timestamp::now())))
    }
    pub fn now(&self) -> Timestamp {
        *self.0.lock().unwrap()
    }
    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap();
        *t = t.plus(d);
    }
}

/// The clients every test server knows, by token. Each also has a certificate subject
/// equal to its id, used only over mutual TLS (see [`TlsMaterial`]).
pub const ADMIN: &str = "admin-token";
pub const PAYER: &str = "payer-token";
pub const MASKED: &str = "masked-token";
pub const EXISTS: &str = "exists-token";
pub const NOSCOPE: &str = "noscope-token";
pub const AUDITOR: &str = "auditor-token";
pub const SYNC: &str = "sync-token";
/// Every citizen's events, account numbers masked.
pub const FEED: &str = "feed-token";
/// `events.subscribe` only: needs a watch list.
pub const WATCHER: &str = "watcher-token";

fn clients() -> Vec<ClientConfig> {
    let c = |id: &str, token: &str, scopes: &[&str]| ClientConfig {
        id: id.into(),
        token_sha256: Some(hash_token(token)),
        cert_subject: Some(id.into()),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        providers: vec![],
    };
    let bound = |id: &str, token: &str, scopes: &[&str], providers: &[&str]| ClientConfig {
        providers: providers.iter().map(|p| p.to_string()).collect(),
        ..c(id, token, scopes)
    };
    // The suites about other rules need someone entitled to vouch: the admin stands in
    // for every entitled party (bound to every provider, a verifier). Who may vouch is
    // tested with realistic clients: an office, banks, the commune police, VNeID.
    let every_provider: Vec<String> = entitled().providers.into_iter().collect();
    vec![
        ClientConfig {
            providers: every_provider,
            ..c(
                "welfare-admin",
                ADMIN,
                &[
                    "accounts.write",
                    "accounts.verify",
                    "verify.in_person",
                    "accounts.read",
                    "resolve",
                    "resolve.full",
                ],
            )
        },
        c(
            "vss-payroll",
            PAYER,
            &["resolve", "resolve.full", "payouts.report"],
        ),
        c("province-office", MASKED, &["resolve", "accounts.read"]),
        c("eligibility-check", EXISTS, &["resolve.exists"]),
        c("stranger", NOSCOPE, &[]),
        c("auditor", AUDITOR, &["oversight"]),
        c("population-platform", SYNC, &["sync.population"]),
        c("feed-reader", FEED, &["events.subscribe", "events.all"]),
        c("province-cache", WATCHER, &["events.subscribe"]),
        // A provincial welfare office: links and manages accounts, vouches for nothing.
        c(
            "office-hanoi",
            OFFICE,
            &["accounts.write", "accounts.verify", "accounts.read"],
        ),
        // Vietcombank's client, bound to its NAPAS BIN.
        bound(
            "vietcombank",
            VIETCOMBANK,
            &["accounts.write", "accounts.verify", "accounts.read"],
            &["970436"],
        ),
        // VietinBank's client: a bank, but not the bank of a Vietcombank account.
        bound(
            "vietinbank",
            VIETINBANK,
            &["accounts.write", "accounts.verify", "accounts.read"],
            &["970415"],
        ),
        // A commune police office: verifies citizens in person.
        c(
            "commune-police",
            POLICE,
            &["accounts.write", "verify.in_person", "accounts.read"],
        ),
        // VNeID, acting for one citizen per call.
        c("vneid", VNEID, &["citizen.self"]),
        // Investigators following every event, the holders behind refused claims included.
        c(
            "investigations-feed",
            INVESTIGATIONS_FEED,
            &["events.subscribe", "events.all", "oversight"],
        ),
    ]
}

/// A writer entitled to every assertion (bound to every provider, a verifier and a payer),
/// for the suites that call the store directly to test the other rules; who may vouch is
/// tested end to end in `tests/assertions.rs`.
pub fn entitled() -> payout_registry::domain::assertion::Authority {
    payout_registry::domain::assertion::Authority {
        providers: payout_registry::store::reference::providers()
            .expect("reference providers")
            .into_iter()
            .map(|p| p.code)
            .collect(),
        in_person: true,
        payer: true,
    }
}

/// Clients of the assertion tests (see [`clients`]).
pub const OFFICE: &str = "office-token";
pub const VIETCOMBANK: &str = "vietcombank-token";
pub const VIETINBANK: &str = "vietinbank-token";
pub const POLICE: &str = "police-token";
pub const VNEID: &str = "vneid-token";
pub const INVESTIGATIONS_FEED: &str = "investigations-feed-token";

/// A running registry on its own database, built by `App::build` exactly as `serve`
/// builds it (see [`AppBuilder`]), with clients of every kind.
pub struct TestApp {
    pub db: TestDb,
    pub store: Arc<dyn Store>,
    pub addr: SocketAddr,
    pub clock: TestClock,
    /// The settings the app was built from.
    pub settings: Settings,
    channel: Channel,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// The certificates of a TLS server, kept as long as the app.
    tls: Option<TlsMaterial>,
    /// The data directory (`data_dir`), removed with the app.
    _data_dir: tempfile::TempDir,
    /// Reloads the running app's TLS files and clients, as SIGHUP does.
    pub reloader: Reloader,
}

pub type Registry =
    AccountRegistryServiceClient<tonic::service::interceptor::InterceptedService<Channel, Token>>;
pub type Resolver =
    PayoutResolverServiceClient<tonic::service::interceptor::InterceptedService<Channel, Token>>;
pub type Population =
    payout_registry::proto::population_sync_service_client::PopulationSyncServiceClient<
        tonic::service::interceptor::InterceptedService<Channel, Token>,
    >;
pub type Overseer =
    OversightServiceClient<tonic::service::interceptor::InterceptedService<Channel, Token>>;

/// The purpose test clients state in `x-purpose` unless a test says otherwise.
pub const TEST_PURPOSE: &str = "integration test";

/// Sends a bearer token (or none) and a purpose (or none).
#[derive(Clone)]
pub struct Token {
    token: Option<String>,
    purpose: Option<&'static str>,
}

impl Token {
    fn new(token: Option<&str>, purpose: Option<&'static str>) -> Token {
        Token {
            token: token.map(str::to_owned),
            purpose,
        }
    }
}

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        if let Some(p) = self.purpose {
            req.metadata_mut().insert("x-purpose", p.parse().unwrap());
        }
        Ok(req)
    }
}

/// How test clients reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain text on loopback.
    PlainText,
    /// TLS with the test CA. With `require_client_cert` every call needs a certificate
    /// from the test CA; without it, token clients get in too (the app's own clients
    /// speak TLS and present their bearer tokens).
    Tls { require_client_cert: bool },
}

/// A change to the test settings, applied before the app is built.
type Configure = Box<dyn FnOnce(&mut Settings) + Send>;

/// Builds a [`TestApp`]: a fresh database on the backend, the test [`Settings`]
/// (the clients of [`clients`], a data directory of its own, no development client),
/// then `App::build` and `App::serve` on `127.0.0.1:0`, the same two calls `serve` makes.
pub struct AppBuilder {
    backend: Backend,
    transport: Transport,
    tls_files: Option<(TlsSettings, ClientTlsConfig)>,
    configure: Vec<Configure>,
    ticking: bool,
    db: Option<TestDb>,
}

impl AppBuilder {
    /// Serve in plain text (on loopback).
    pub fn plain_text(mut self) -> AppBuilder {
        self.transport = Transport::PlainText;
        self
    }

    /// Serve over mutual TLS: every call needs a client certificate from the test CA
    /// ([`TestApp::tls`] issues them). The app's own clients speak TLS without one.
    pub fn requiring_client_certificates(mut self) -> AppBuilder {
        self.transport = Transport::Tls {
            require_client_cert: true,
        };
        self
    }

    /// Serve over TLS with these `[tls]` settings (files an operator made); the app's own
    /// channel connects with `channel_tls`.
    pub fn tls_files(mut self, settings: TlsSettings, channel_tls: ClientTlsConfig) -> AppBuilder {
        self.tls_files = Some((settings, channel_tls));
        self
    }

    /// Changes the test settings before the app is built.
    pub fn configure(mut self, f: impl FnOnce(&mut Settings) + Send + 'static) -> AppBuilder {
        self.configure.push(Box::new(f));
        self
    }

    /// A clock that moves a microsecond each time the server reads it (as a real one
    /// does between two reads), for behaviour that must not depend on two reads of the
    /// clock being equal.
    pub fn ticking_clock(mut self) -> AppBuilder {
        self.ticking = true;
        self
    }

    /// Reads recorded through a spool in the app's data directory
    /// (`[access_log] spool_dir`), shipped every `ship_every_ms`.
    pub fn spooled_access_log(self, ship_every_ms: u64) -> AppBuilder {
        self.configure(move |s| {
            s.access_log.spool_dir = Some(s.data_dir.join("access-log-spool"));
            s.access_log.ship_every_ms = ship_every_ms;
        })
    }

    /// With these rate limits and in-flight limit.
    pub fn limits(self, limits: RateLimitConfig) -> AppBuilder {
        self.configure(move |s| s.rate_limits = limits)
    }

    /// On this database instead of a fresh one.
    pub fn database(mut self, db: TestDb) -> AppBuilder {
        self.backend = db.backend;
        self.db = Some(db);
        self
    }

    /// Builds and starts the app.
    pub async fn spawn(self) -> TestApp {
        let db = match self.db {
            Some(db) => db,
            None => TestDb::new(self.backend).await,
        };
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut settings = test_settings(&db, data_dir.path());
        let mut material = None;
        let mut channel_tls = None;
        match (self.tls_files, self.transport) {
            (Some((tls, client)), _) => {
                settings.tls = Some(tls);
                channel_tls = Some(client);
            }
            (
                None,
                Transport::Tls {
                    require_client_cert,
                },
            ) => {
                let generated = TlsMaterial::generate();
                settings.tls = Some(generated.settings(require_client_cert));
                channel_tls = Some(generated.client_tls(None));
                material = Some(generated);
            }
            (None, Transport::PlainText) => {}
        }
        for f in self.configure {
            f(&mut settings);
        }
        let clock = TestClock::new();
        let c = clock.clone();
        let app = App::build(&settings)
            .await
            .expect("the app builds from the test settings")
            .with_clock(if self.ticking {
                Arc::new(move || {
                    let now = c.now();
                    c.advance(Duration::from_micros(1));
                    now
                })
            } else {
                Arc::new(move || c.now())
            });
        let store = app.store();
        let reloader = app.reloader();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(app.serve(listener, async {
            let _ = rx.await;
        }));
        let channel = match channel_tls {
            Some(tls) => tls_channel(addr, tls),
            None => plaintext_channel(addr),
        };
        TestApp {
            db,
            store,
            addr,
            clock,
            settings,
            channel,
            shutdown: Some(tx),
            server: Some(server),
            tls: material,
            _data_dir: data_dir,
            reloader,
        }
    }
}

/// The settings every test app starts from.
fn test_settings(db: &TestDb, data_dir: &Path) -> Settings {
    Settings {
        database_url: Secret::new(db.url.clone()),
        data_dir: data_dir.to_path_buf(),
        dev_client: false,
        clients: clients(),
        db_max_connections: 8,
        // Tests that shut an app down see the drain at once; tests of the notice set it.
        shutdown_notice_secs: 0,
        ..Settings::default()
    }
}

impl TestApp {
    /// The registry over TLS, token clients admitted: what most tests run.
    pub async fn spawn(backend: Backend) -> TestApp {
        TestApp::builder(backend).spawn().await
    }

    /// A test app to adjust before it starts; over TLS with token clients by default.
    pub fn builder(backend: Backend) -> AppBuilder {
        AppBuilder {
            backend,
            transport: Transport::Tls {
                require_client_cert: false,
            },
            tls_files: None,
            configure: Vec::new(),
            ticking: false,
            db: None,
        }
    }

    /// The certificates of an app served over TLS with generated material.
    pub fn tls(&self) -> &TlsMaterial {
        self.tls
            .as_ref()
            .expect("this app was not served over TLS with generated certificates")
    }

    /// Another instance of the registry over the same database, built from the same
    /// settings (plain text on loopback), stopped when dropped.
    pub async fn another_instance(&self) -> Instance {
        self.another_instance_with(|_| {}).await
    }

    /// [`TestApp::another_instance`], its settings changed by `f` first.
    pub async fn another_instance_with(&self, f: impl FnOnce(&mut Settings)) -> Instance {
        let mut settings = self.settings.clone();
        settings.tls = None;
        f(&mut settings);
        let app = App::build(&settings)
            .await
            .expect("a second instance builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(app.serve(listener, async {
            let _ = rx.await;
        }));
        Instance {
            addr,
            shutdown: Some(tx),
        }
    }

    pub fn registry(&self, token: Option<&str>) -> Registry {
        AccountRegistryServiceClient::with_interceptor(
            self.channel.clone(),
            Token::new(token, Some(TEST_PURPOSE)),
        )
    }
    pub fn resolver(&self, token: Option<&str>) -> Resolver {
        PayoutResolverServiceClient::with_interceptor(
            self.channel.clone(),
            Token::new(token, Some(TEST_PURPOSE)),
        )
    }
    pub fn oversight(&self, token: Option<&str>) -> Overseer {
        OversightServiceClient::with_interceptor(
            self.channel.clone(),
            Token::new(token, Some(TEST_PURPOSE)),
        )
    }
    pub fn population(&self, token: Option<&str>) -> Population {
        population_on(self.channel.clone(), token)
    }
    /// A channel on a connection of its own (dropping it cuts that connection only).
    pub fn new_channel(&self) -> Channel {
        match &self.tls {
            Some(material) => tls_channel(self.addr, material.client_tls(None)),
            None => plaintext_channel(self.addr),
        }
    }
    /// Clients that send no `x-purpose`: the request's `purpose` field is all there is.
    pub fn registry_without_purpose(&self, token: Option<&str>) -> Registry {
        AccountRegistryServiceClient::with_interceptor(
            self.channel.clone(),
            Token::new(token, None),
        )
    }
    pub fn resolver_without_purpose(&self, token: Option<&str>) -> Resolver {
        PayoutResolverServiceClient::with_interceptor(self.channel.clone(), Token::new(token, None))
    }
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }
    /// Asks the server to shut down (as SIGTERM does) without waiting: the shutdown
    /// sequence can be watched from outside; [`TestApp::stop`] then waits for its end.
    pub fn request_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Stops the server gracefully and waits for it, keeping the database and the store
    /// (for a test that looks at what is left once no registry runs).
    pub async fn stop_server(&mut self) {
        self.request_stop();
        if let Some(h) = self.server.take() {
            h.await.expect("server task").expect("server result");
        }
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            h.await.expect("server task").expect("server result");
        }
        // Whatever the test wrote, the resolution read model must equal the tables it is
        // derived from, and those tables' references must be whole. (A database a test broke on purpose cannot be checked: skipped.)
        if let Ok(report) = self.store.check_resolution_model(None, false).await {
            assert_whole(&report);
        }
    }
}

/// Asserts that a full `check` found the resolution read model equal to the tables it is
/// derived from, and those tables' references whole.
pub fn assert_whole(report: &ModelCheck) {
    assert_eq!(
        report.differences,
        vec![],
        "the resolution read model differs from its source tables"
    );
    // Nor may a test have left a reference broken (PostgreSQL checks none with a foreign
    // key on the hot tables; the write path must keep them).
    assert_eq!(
        report.broken_references,
        vec![],
        "the source tables break their references"
    );
}

/// The certificate Common Names of the TLS test clients: the token clients' ids, so each
/// has the same scopes by certificate as by token.
pub const ADMIN_CERT: &str = "welfare-admin";
pub const PAYER_CERT: &str = "vss-payroll";
pub const MASKED_CERT: &str = "province-office";
pub const EXISTS_CERT: &str = "eligibility-check";
pub const NOSCOPE_CERT: &str = "stranger";
/// Issued by the test CA, but no configured client has this `cert_subject`.
pub const UNKNOWN_CERT: &str = "unknown-office";
/// The assertion tests' clients (see [`clients`]).
pub const OFFICE_CERT: &str = "office-hanoi";
pub const VIETCOMBANK_CERT: &str = "vietcombank";
pub const VIETINBANK_CERT: &str = "vietinbank";
pub const POLICE_CERT: &str = "commune-police";
pub const VNEID_CERT: &str = "vneid";
pub const AUDITOR_CERT: &str = "auditor";
pub const SYNC_CERT: &str = "population-platform";
pub const FEED_CERT: &str = "feed-reader";

/// Certificates for a TLS test server (a CA of its own, the server's, and one per client
/// above), in a temp dir that lives as long as this value.
pub struct TlsMaterial {
    pub files: DevCertFiles,
    dir: tempfile::TempDir,
}

impl TlsMaterial {
    pub fn generate() -> TlsMaterial {
        let dir = tempfile::tempdir().expect("temp dir");
        let ids = [
            ADMIN_CERT,
            PAYER_CERT,
            MASKED_CERT,
            EXISTS_CERT,
            NOSCOPE_CERT,
            UNKNOWN_CERT,
            OFFICE_CERT,
            VIETCOMBANK_CERT,
            VIETINBANK_CERT,
            POLICE_CERT,
            VNEID_CERT,
            AUDITOR_CERT,
            SYNC_CERT,
            FEED_CERT,
        ];
        let files = generate_dev_certs(dir.path(), &ids).expect("generate test certificates");
        TlsMaterial { files, dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `[tls]` settings for these files, as an operator would write them.
    pub fn settings(&self, require_client_cert: bool) -> TlsSettings {
        tls_settings(self.dir(), require_client_cert)
    }

    /// The CA certificate, for clients to verify the server with.
    pub fn ca(&self) -> Certificate {
        Certificate::from_pem(std::fs::read(&self.files.ca_cert).expect("read ca.pem"))
    }

    /// A client's certificate and key.
    pub fn identity(&self, client_id: &str) -> Identity {
        client_identity(self.dir(), client_id)
    }

    /// TLS for a client that trusts this CA and presents `client_id`'s certificate, or
    /// no certificate.
    pub fn client_tls(&self, client_id: Option<&str>) -> ClientTlsConfig {
        let tls = ClientTlsConfig::new().ca_certificate(self.ca());
        match client_id {
            Some(id) => tls.identity(self.identity(id)),
            None => tls,
        }
    }

    /// A channel to `app` presenting `client_id`'s certificate (or none).
    pub fn channel(&self, app: &TestApp, client_id: Option<&str>) -> Channel {
        tls_channel(app.addr, self.client_tls(client_id))
    }
}

/// The `[tls]` settings for the files `dev-certs` writes in `dir`.
pub fn tls_settings(dir: &Path, require_client_cert: bool) -> TlsSettings {
    TlsSettings {
        cert_file: dir.join("server.pem"),
        key_file: dir.join("server.key"),
        client_ca_file: Some(dir.join("ca.pem")),
        require_client_cert,
        handshake_timeout_secs: 10,
        crl_files: Vec::new(),
    }
}

/// `<client>.pem` and `<client>.key` from a `dev-certs` directory.
pub fn client_identity(dir: &Path, client_id: &str) -> Identity {
    let read = |ext: &str| {
        let path = dir.join(format!("{client_id}.{ext}"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    };
    Identity::from_pem(read("pem"), read("key"))
}

/// A channel to a TLS server on `addr`, dialled by IP address (the test server's
/// certificate names 127.0.0.1).
pub fn tls_channel(addr: SocketAddr, tls: ClientTlsConfig) -> Channel {
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .expect("client TLS configuration")
        .connect_lazy()
}

/// A plain-text channel to `addr`.
pub fn plaintext_channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

/// A registry client on any channel, with a bearer token or none.
pub fn registry_on(channel: Channel, token: Option<&str>) -> Registry {
    AccountRegistryServiceClient::with_interceptor(channel, Token::new(token, Some(TEST_PURPOSE)))
}

pub type Feed = payout_registry::proto::change_feed_service_client::ChangeFeedServiceClient<
    tonic::service::interceptor::InterceptedService<Channel, Token>,
>;

/// A change-feed client on any channel.
pub fn feed_on(channel: Channel, token: Option<&str>) -> Feed {
    payout_registry::proto::change_feed_service_client::ChangeFeedServiceClient::with_interceptor(
        channel,
        Token::new(token, Some(TEST_PURPOSE)),
    )
}

/// Another server instance over the same database as an app (plain text on loopback),
/// stopped when dropped: see [`TestApp::another_instance`].
pub struct Instance {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Instance {
    pub fn channel(&self) -> Channel {
        plaintext_channel(self.addr)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A population-sync client on any channel.
pub fn population_on(channel: Channel, token: Option<&str>) -> Population {
    payout_registry::proto::population_sync_service_client::PopulationSyncServiceClient::with_interceptor(
        channel,
        Token::new(token, Some(TEST_PURPOSE)),
    )
}

/// An oversight client on any channel, with a bearer token or none.
pub fn oversight_on(channel: Channel, token: Option<&str>) -> Overseer {
    OversightServiceClient::with_interceptor(channel, Token::new(token, Some(TEST_PURPOSE)))
}

/// A resolver client on any channel, with a bearer token or none.
pub fn resolver_on(channel: Channel, token: Option<&str>) -> Resolver {
    PayoutResolverServiceClient::with_interceptor(channel, Token::new(token, Some(TEST_PURPOSE)))
}

/// Generates one test per backend for each listed case: `backends!(case_a, case_b)`
/// expects `async fn case_a(backend: Backend)` in scope.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::common::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::common::Backend::Postgres).await })*
        }
    };
}

/// Sends every record on one SyncCitizens stream and collects every acknowledgement.
pub async fn sync_citizens(
    app: &TestApp,
    records: Vec<payout_registry::proto::CitizenRecord>,
) -> Vec<SyncBatchResult> {
    let requests = records
        .into_iter()
        .map(|r| payout_registry::proto::SyncCitizensRequest { record: Some(r) });
    let acks = app
        .population(Some(SYNC))
        .sync_citizens(tokio_stream::iter(requests))
        .await
        .expect("stream accepted")
        .into_inner();
    all_acks(acks).await
}

/// Sends `requests` on one BatchResolve stream as the client of `token` and collects
/// every answer.
pub async fn batch_resolve_all(
    app: &TestApp,
    token: &str,
    requests: Vec<payout_registry::proto::BatchResolveRequest>,
) -> Vec<payout_registry::proto::BatchResolveResponse> {
    batch_resolve_on(&mut app.resolver(Some(token)), requests).await
}

/// Sends `requests` on one BatchResolve stream of `resolver` (any instance, any client)
/// and collects every answer.
pub async fn batch_resolve_on(
    resolver: &mut Resolver,
    requests: Vec<payout_registry::proto::BatchResolveRequest>,
) -> Vec<payout_registry::proto::BatchResolveResponse> {
    let mut answers = resolver
        .batch_resolve(tokio_stream::iter(requests))
        .await
        .expect("stream accepted")
        .into_inner();
    let mut out = Vec::new();
    while let Some(a) = answers.message().await.expect("answer") {
        out.push(a);
    }
    out
}

/// Sends every record on one SyncAccounts stream and collects every acknowledgement.
pub async fn sync_accounts(
    app: &TestApp,
    records: Vec<payout_registry::proto::AccountRecord>,
) -> Vec<SyncBatchResult> {
    let requests = records
        .into_iter()
        .map(|r| payout_registry::proto::SyncAccountsRequest { record: Some(r) });
    let acks = app
        .population(Some(SYNC))
        .sync_accounts(tokio_stream::iter(requests))
        .await
        .expect("stream accepted")
        .into_inner();
    all_acks(acks).await
}

/// A sync stream's answer: the result of one committed batch.
pub trait BatchAnswer {
    fn result(self) -> SyncBatchResult;
}

impl BatchAnswer for payout_registry::proto::SyncCitizensResponse {
    fn result(self) -> SyncBatchResult {
        self.result.expect("a batch result")
    }
}

impl BatchAnswer for payout_registry::proto::SyncAccountsResponse {
    fn result(self) -> SyncBatchResult {
        self.result.expect("a batch result")
    }
}

/// Every batch result a sync stream answers, until it ends.
pub async fn all_acks<R: BatchAnswer>(mut acks: tonic::Streaming<R>) -> Vec<SyncBatchResult> {
    let mut out = Vec::new();
    while let Some(ack) = acks.message().await.expect("ack") {
        out.push(ack.result());
    }
    out
}

/// A LinkAccount of a Vietcombank account, confirmed by its issuer, under a fresh
/// idempotency key.
pub fn issuer_confirmed_link(
    citizen: &str,
    number: &str,
) -> payout_registry::proto::LinkAccountRequest {
    use payout_registry::proto::{
        AccountKind, LinkAccountRequest, Verification, VerificationMethod,
    };
    LinkAccountRequest {
        idempotency_key: Uuid::new_v4().to_string(),
        citizen_id: citizen.into(),
        kind: AccountKind::BankAccount.into(),
        provider_code: "970436".into(),
        account_ref: number.into(),
        verification: Some(Verification {
            method: VerificationMethod::IssuerConfirmed.into(),
            evidence_ref: "integration test".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Links a Vietcombank account to `citizen`, confirmed by its issuer at link time (so no
/// cooling-off): ACCOUNT_LINKED, ACCOUNT_VERIFIED and, for a first account,
/// DEFAULT_CHANGED. Answers the account's id.
pub async fn link_issuer_confirmed(app: &TestApp, citizen: &str, number: &str) -> String {
    app.registry(Some(ADMIN))
        .link_account(issuer_confirmed_link(citizen, number))
        .await
        .expect("link")
        .into_inner()
        .account
        .expect("account")
        .account_id
}

/// Makes `account` the citizen's preference for `program` ("" is the default), as an
/// office does through SetDefaultAccount; answers the write's position.
pub async fn set_preference(app: &TestApp, citizen: &str, account: &str, program: &str) -> u64 {
    app.registry(Some(ADMIN))
        .set_default_account(payout_registry::proto::SetDefaultAccountRequest {
            idempotency_key: Uuid::new_v4().to_string(),
            citizen_id: citizen.into(),
            account_id: account.into(),
            program_code: program.into(),
            reason: "chosen by the citizen".into(),
            ..Default::default()
        })
        .await
        .expect("set preference")
        .into_inner()
        .position
}

/// Waits until `ready` holds, checking again each time the store signals a change (a
/// write committed, events sequenced, the sync digest brought up): no timer decides when
/// to look. Fails the test after 30 s, naming `what` it waited for.
pub async fn wait_until<F, Fut>(store: &Arc<dyn Store>, what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut changes = store.changes();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        changes.borrow_and_update();
        if ready().await {
            return;
        }
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            panic!("waited 30 s for {what}");
        }
    }
}

/// Waits until the sequencer has numbered every committed event; answers the head.
pub async fn sequenced_head(app: &TestApp) -> i64 {
    wait_until(&app.store, "every event to be sequenced", || async {
        app.store.feed_head().await.unwrap() == app.db.count("SELECT COUNT(*) FROM events").await
    })
    .await;
    app.store.feed_head().await.unwrap()
}

/// Waits until the sequencer has numbered every committed event and brought the sync
/// digest up to that head (pruning waits for the digest too); answers the head.
pub async fn digest_at_head(app: &TestApp) -> i64 {
    let head = sequenced_head(app).await;
    wait_until(&app.store, "the sync digest to reach the head", || async {
        let head = app.store.feed_head().await.unwrap();
        let digest = app.store.sync_digest(None).await.unwrap();
        digest.is_some_and(|d| d.position == head)
    })
    .await;
    head
}

/// The `google.rpc.ErrorInfo.domain` of the service's errors.
pub const ERROR_DOMAIN: &str = "payoutregistry.gov.vn";

/// Asserts that a call was refused with `code` and the stable `reason` in its ErrorInfo
/// (in the service's error domain), and returns the status for further checks.
#[track_caller]
pub fn refused<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    reason: &str,
) -> tonic::Status {
    use tonic_types::StatusExt;
    let status = result.expect_err("the call should have been refused");
    assert_eq!(status.code(), code, "{status:?}");
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, ERROR_DOMAIN);
    status
}

/// An event type's name without its `EVENT_TYPE_` prefix (`ACCOUNT_VERIFIED`, ...).
pub fn event_name(e: &payout_registry::proto::FeedEvent) -> &'static str {
    let name = e.event_type().as_str_name();
    name.strip_prefix("EVENT_TYPE_").unwrap_or(name)
}

/// The filter value of an event type named without its prefix.
pub fn event_type(name: &str) -> i32 {
    payout_registry::proto::EventType::from_str_name(&format!("EVENT_TYPE_{name}"))
        .unwrap_or_else(|| panic!("no event type {name}"))
        .into()
}

/// The account an event carries: the account of an ACCOUNT_* event, the account now
/// preferred (DEFAULT_CHANGED), the account of a failed credit.
pub fn event_account(
    e: &payout_registry::proto::FeedEvent,
) -> Option<&payout_registry::proto::Account> {
    use payout_registry::proto::feed_event::Payload;
    match e.payload.as_ref()? {
        Payload::AccountChanged(p) => p.account.as_ref(),
        Payload::PreferenceChanged(p) => p.account.as_ref(),
        Payload::PayoutFailureReported(p) => p.account.as_ref(),
        _ => None,
    }
}

/// The program an event is about ("" when none, or the default preference).
pub fn event_program(e: &payout_registry::proto::FeedEvent) -> &str {
    use payout_registry::proto::feed_event::Payload;
    match e.payload.as_ref() {
        Some(Payload::PreferenceChanged(p)) => &p.program_code,
        Some(Payload::PayoutFailureReported(p)) => &p.program_code,
        _ => "",
    }
}

/// The next event of a subscription (`None` when the stream ends).
pub async fn next_event(
    events: &mut tonic::Streaming<payout_registry::proto::SubscribeResponse>,
) -> Option<payout_registry::proto::FeedEvent> {
    events
        .message()
        .await
        .expect("event")
        .map(|r| r.event.expect("an event in every response"))
}

/// An ISO date (`YYYY-MM-DD`) as the API's `google.type.Date`; `None` for "".
pub fn date(iso: &str) -> Option<payout_registry::proto::google_type::Date> {
    if iso.is_empty() {
        return None;
    }
    Some(payout_registry::grpc::convert::date_out(iso).expect("an ISO date"))
}

/// A history entry's change named without its prefix (`LINKED`, `VERIFIED`, ...).
pub fn change_name(e: &payout_registry::proto::AccountHistoryEntry) -> &'static str {
    let name = e.change().as_str_name();
    name.strip_prefix("ACCOUNT_CHANGE_").unwrap_or(name)
}

/// Suspends or reinstates `account` (as a client with `accounts.write`); answers the
/// write's consistency token, its feed position.
pub async fn suspend_or_reinstate(registry: &mut Registry, account: &str, suspend: bool) -> u64 {
    let key = Uuid::new_v4().to_string();
    let position = if suspend {
        registry
            .suspend_account(payout_registry::proto::SuspendAccountRequest {
                idempotency_key: key,
                account_id: account.into(),
                reason: "payout failed twice".into(),
                ..Default::default()
            })
            .await
            .expect("suspended")
            .into_inner()
            .position
    } else {
        registry
            .reinstate_account(payout_registry::proto::ReinstateAccountRequest {
                idempotency_key: key,
                account_id: account.into(),
                reason: "provider confirmed the account".into(),
                ..Default::default()
            })
            .await
            .expect("reinstated")
            .into_inner()
            .position
    };
    assert!(position > 0, "a write answers its position");
    position
}

/// A population-sync record of an active citizen with no registered name or birth date.
pub fn active_citizen(
    record_id: &str,
    citizen_id: payout_registry::domain::CitizenId,
) -> payout_registry::domain::SyncCitizen {
    payout_registry::domain::SyncCitizen {
        record_id: record_id.into(),
        version: 1,
        citizen_id,
        full_name: None,
        date_of_birth: None,
        status: payout_registry::domain::CitizenStatus::Active,
        died_on: None,
        legacy_ids: Vec::new(),
    }
}

/// A loopback address free to listen on (a metrics or health listener of a test).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// `GET /metrics` on `addr`: the body.
pub async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The value of the sample of `name` whose labels include every one of `labels`.
pub fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
