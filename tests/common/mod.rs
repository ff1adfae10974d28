//! The test harness: a fresh database per test on either backend, and the real server on
//! `127.0.0.1:0` with real tonic clients.
//!
//! PostgreSQL: `DATABASE_URL` (an admin connection; each test creates and drops its own
//! database) when set; otherwise a throw-away cluster is started from the system's
//! PostgreSQL binaries, once per test binary; if there are none, the tests fail with a
//! message saying what to install. They never skip.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use payout_registry::auth::{hash_token, Authenticator};
use payout_registry::config::ClientConfig;
use payout_registry::domain::Timestamp;
use payout_registry::grpc::AppState;
use payout_registry::proto::account_registry_client::AccountRegistryClient;
use payout_registry::proto::payout_resolver_client::PayoutResolverClient;
use payout_registry::server::{serve, ServerOptions};
use payout_registry::store::{connect, Store, StoreOptions};
use sqlx::Connection;
use tonic::transport::Channel;
use uuid::Uuid;

pub const COOLING_OFF: Duration = Duration::from_secs(72 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

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
        sqlx::query(&format!("CREATE DATABASE {name}"))
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

    /// A migrated store on this database.
    pub async fn store(&self) -> Arc<dyn Store> {
        self.store_with(StoreOptions {
            cooling_off: COOLING_OFF,
            max_connections: 8,
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
        // Drop runs outside any runtime we may block; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
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
    let (Some(initdb), Some(pg_ctl)) = (find_pg_bin("initdb"), find_pg_bin("pg_ctl")) else {
        panic!("no DATABASE_URL and no initdb/pg_ctl found: {PG_HELP}");
    };
    let dir = tempfile::Builder::new()
        .prefix("payout-pg-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let data = dir.join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // PostgreSQL refuses to run as root; run it as the `postgres` user then.
    let as_root = unsafe_is_root();
    let run = |program: &PathBuf, args: &[&str]| {
        let mut cmd = if as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        let out = cmd
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
    };
    if as_root {
        let _ = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(&dir)
            .status();
    }
    let data_s = data.to_string_lossy().to_string();
    run(
        &initdb,
        &[
            "-D",
            &data_s,
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        ],
    );
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
        dir.display()
    );
    run(
        &pg_ctl,
        &[
            "-D",
            &data_s,
            "-o",
            &opts,
            "-l",
            &format!("{}/log", dir.display()),
            "-w",
            "start",
        ],
    );
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} -D {data} stop -m immediate; rm -rf {dir}",
        pid = std::process::id(),
        stop = if as_root { format!("runuser -u postgres -- {}", pg_ctl.display()) } else { pg_ctl.display().to_string() },
        data = data_s,
        dir = dir.display(),
    );
    let _ = Command::new("sh")
        .args(["-c", &watchdog])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

fn unsafe_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
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

/// The clients every test server knows, by token.
pub const ADMIN: &str = "admin-token";
pub const PAYER: &str = "payer-token";
pub const MASKED: &str = "masked-token";
pub const EXISTS: &str = "exists-token";
pub const NOSCOPE: &str = "noscope-token";

fn clients() -> Vec<ClientConfig> {
    let c = |id: &str, token: &str, scopes: &[&str]| ClientConfig {
        id: id.into(),
        token_sha256: hash_token(token),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
    };
    vec![
        c(
            "welfare-admin",
            ADMIN,
            &[
                "accounts.write",
                "accounts.verify",
                "accounts.read",
                "resolve",
                "resolve.full",
            ],
        ),
        c("vss-payroll", PAYER, &["resolve", "resolve.full"]),
        c("province-office", MASKED, &["resolve", "accounts.read"]),
        c("eligibility-check", EXISTS, &["resolve.exists"]),
        c("stranger", NOSCOPE, &[]),
    ]
}

/// A running server on its own database.
pub struct TestApp {
    pub db: TestDb,
    pub store: Arc<dyn Store>,
    pub addr: SocketAddr,
    pub clock: TestClock,
    channel: Channel,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub type Registry =
    AccountRegistryClient<tonic::service::interceptor::InterceptedService<Channel, Token>>;
pub type Resolver =
    PayoutResolverClient<tonic::service::interceptor::InterceptedService<Channel, Token>>;

/// Sends a bearer token (or none).
#[derive(Clone)]
pub struct Token(Option<String>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        Ok(req)
    }
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let clock = TestClock::new();
    let mut state = AppState::new(store.clone(), COOLING_OFF);
    let c = clock.clone();
    state.clock = Arc::new(move || c.now());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let auth = Arc::new(Authenticator::new(&clients()));
    let server = tokio::spawn(serve(
        listener,
        state,
        auth,
        ServerOptions::default(),
        async {
            let _ = rx.await;
        },
    ));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    TestApp {
        db,
        store,
        addr,
        clock,
        channel,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    pub fn registry(&self, token: Option<&str>) -> Registry {
        AccountRegistryClient::with_interceptor(
            self.channel.clone(),
            Token(token.map(str::to_owned)),
        )
    }
    pub fn resolver(&self, token: Option<&str>) -> Resolver {
        PayoutResolverClient::with_interceptor(
            self.channel.clone(),
            Token(token.map(str::to_owned)),
        )
    }
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }
    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            h.await.expect("server task").expect("server result");
        }
    }
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
