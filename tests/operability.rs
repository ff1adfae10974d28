//! Operating the registry, as an on-call engineer and a load balancer see it: the
//! database refusing connections or stalling (PostgreSQL's own database per test,
//! `ALLOW_CONNECTIONS false` with `pg_terminate_backend`, a lock held from another
//! connection: module `faults`), a graceful shutdown watched from outside, streams piling
//! up beside unary calls, and `/metrics` scraped after a run of calls (both backends).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{free_addr, sample, scrape, Backend, TestApp, ADMIN, FEED, PAYER, SYNC};
use payout_registry::proto::{
    BatchResolveRequest, CitizenRecord, CitizenStatus, ResolveRequest, SubscribeRequest,
    SyncCitizensRequest,
};
use sqlx::Connection;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt;

on_both_backends!(
    metrics_show_the_standard_grpc_series_with_the_codes_of_the_calls_made,
    shutdown_turns_health_first_refuses_new_calls_and_ends_open_streams_retryably,
    idle_streams_do_not_starve_unary_calls_and_have_a_limit_of_their_own,
);

/// PostgreSQL's failures, produced on the test's own database.
mod faults {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_refusing_connections_is_answered_unavailable_and_turns_health_not_serving()
    {
        database_outage().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backends_terminated_mid_import_end_it_unavailable_and_the_resumed_import_applies_each_record_once(
    ) {
        backends_killed_mid_import().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_locked_table_is_answered_database_timeout_within_the_statement_timeout() {
        stalled_database().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_deadline_stops_the_database_statement_waiting_for_it() {
        deadline_reaches_the_database().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn access_log_connections_cut_between_reads_fail_no_read_and_lose_no_entry() {
        access_log_connections_cut().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scrapes_behind_a_stalled_feed_answer_in_time_and_leave_one_gauge_query_running() {
        stalled_scrapes().await
    }
}

/// The access log through a spool (`[access_log] spool_dir`): reads are answered once
/// their entries are on the instance's disk, and reach the database when it takes them.
mod spool {
    use super::*;

    on_both_backends!(
        reads_are_answered_while_the_database_refuses_the_log_and_each_reaches_it_after,
        a_full_spool_refuses_reads_and_every_answered_read_reaches_the_database,
        a_second_instance_cannot_share_a_spool,
        a_stopping_instance_keeps_shipping_its_spool_until_the_database_takes_it,
    );

    async fn a_stopping_instance_keeps_shipping_its_spool_until_the_database_takes_it(
        backend: Backend,
    ) {
        let citizen = "001089300023";
        let mut app = refused_log(
            TestApp::builder(backend).spooled_access_log(60_000),
            citizen,
        )
        .await;
        answer(&app, citizen, 5).await;
        app.request_stop();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(resolves_logged(&app, citizen).await, 0);
        refuse_the_log(&app.db, false).await;
        app.stop_server().await;
        assert_eq!(
            resolves_logged(&app, citizen).await,
            5,
            "the stopping instance shipped its spool once the database took it"
        );
        assert_eq!(spooled_bytes(&app), 0);
        app.stop().await;
    }

    async fn a_second_instance_cannot_share_a_spool(backend: Backend) {
        let app = TestApp::builder(backend)
            .spooled_access_log(50)
            .spawn()
            .await;
        let refused = payout_registry::app::App::build(&app.settings)
            .await
            .err()
            .expect("a second app on the same spool is refused");
        assert!(
            format!("{refused:#}").contains("in use by another instance"),
            "{refused:#}"
        );
        app.stop().await;
    }

    /// Makes the database refuse (or take again) every access-log row.
    async fn refuse_the_log(db: &common::TestDb, refuse: bool) {
        let statements: &[&str] = match (db.backend, refuse) {
            (Backend::Postgres, true) => &[
                "CREATE FUNCTION refuse_log() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'the access log is refused'; END $$",
                "CREATE TRIGGER refuse_log BEFORE INSERT ON access_log \
                 FOR EACH ROW EXECUTE FUNCTION refuse_log()",
            ],
            (Backend::Postgres, false) => &["DROP TRIGGER refuse_log ON access_log"],
            (Backend::Sqlite, true) => &["CREATE TRIGGER refuse_log BEFORE INSERT ON access_log \
                 BEGIN SELECT RAISE(ABORT, 'the access log is refused'); END"],
            (Backend::Sqlite, false) => &["DROP TRIGGER refuse_log"],
        };
        for sql in statements {
            db.execute_raw(sql).await.expect(sql);
        }
    }

    /// The app `builder` makes, with `citizen` holding a verified account (number
    /// `00713000000` + the id's last two digits) and a database that refuses the access
    /// log.
    async fn refused_log(builder: common::AppBuilder, citizen: &str) -> TestApp {
        let app = builder.spawn().await;
        let number = format!("00713000000{}", &citizen[10..]);
        common::link_issuer_confirmed(&app, citizen, &number).await;
        refuse_the_log(&app.db, true).await;
        app
    }

    /// `n` Resolves of `citizen`, each answered.
    async fn answer(app: &TestApp, citizen: &str, n: usize) {
        let mut resolver = app.resolver(Some(PAYER));
        for _ in 0..n {
            resolver
                .resolve(resolve_request(citizen))
                .await
                .expect("a read is answered while the database refuses the log");
        }
    }

    /// Bytes waiting in the app's spool.
    fn spooled_bytes(app: &TestApp) -> u64 {
        spooled_bytes_in(app.settings.access_log.spool_dir.as_ref().expect("a spool"))
    }

    async fn resolves_logged(app: &TestApp, citizen: &str) -> i64 {
        app.db
            .count(&format!(
                "SELECT COUNT(*) FROM access_log WHERE citizen_id = '{citizen}' \
                 AND method LIKE '%/Resolve'"
            ))
            .await
    }

    /// Waits (at most 10 s) until `n` Resolves of `citizen` are in the database and the
    /// spool holds nothing.
    async fn shipped(app: &TestApp, citizen: &str, n: i64) {
        let started = Instant::now();
        loop {
            let (logged, left) = (resolves_logged(app, citizen).await, spooled_bytes(app));
            if logged == n && left == 0 {
                return;
            }
            assert!(
                logged <= n && started.elapsed() < Duration::from_secs(10),
                "{logged} of {n} reads in the database, {left} bytes still spooled"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn reads_are_answered_while_the_database_refuses_the_log_and_each_reaches_it_after(
        backend: Backend,
    ) {
        let citizen = "001089300021";
        let app = refused_log(TestApp::builder(backend).spooled_access_log(50), citizen).await;
        answer(&app, citizen, 20).await;
        // Several shipping rounds fail meanwhile.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(resolves_logged(&app, citizen).await, 0);
        assert!(spooled_bytes(&app) > 0, "the entries wait in the spool");
        // They name who read which citizen: for the service's user only.
        use std::os::unix::fs::PermissionsExt as _;
        let dir = app.settings.access_log.spool_dir.clone().unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for file in std::fs::read_dir(&dir).unwrap() {
            let path = file.unwrap().path();
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
        // An auditor is not shown a log that misses them.
        let listed = list_access_log(&app, citizen).await;
        common::refused(listed, Code::Unavailable, "ACCESS_LOG_UNAVAILABLE");
        refuse_the_log(&app.db, false).await;
        shipped(&app, citizen, 20).await;
        app.stop().await;
    }

    async fn a_full_spool_refuses_reads_and_every_answered_read_reaches_the_database(
        backend: Backend,
    ) {
        let citizen = "001089300022";
        let app = refused_log(
            TestApp::builder(backend)
                .spooled_access_log(50)
                .configure(|s| {
                    s.access_log.spool_max_bytes = 2_000;
                    // Each group of reads synced by the writer thread (the other tests
                    // append from the handlers).
                    s.access_log.spool_sync = true;
                }),
            citizen,
        )
        .await;
        let mut resolver = app.resolver(Some(PAYER));
        let mut answered = 0;
        let refusal = loop {
            match resolver.resolve(resolve_request(citizen)).await {
                Ok(_) => answered += 1,
                Err(status) => break status,
            }
            assert!(answered < 100, "2,000 bytes of spool never filled");
        };
        assert!(
            answered >= 3,
            "only {answered} reads before the spool was full"
        );
        common::refused(
            Err::<(), _>(refusal),
            Code::Unavailable,
            "ACCESS_LOG_UNAVAILABLE",
        );
        refuse_the_log(&app.db, false).await;
        shipped(&app, citizen, answered).await;
        resolver
            .resolve(resolve_request(citizen))
            .await
            .expect("shipped, the spool takes reads again");
        shipped(&app, citizen, answered + 1).await;
        app.stop().await;
    }
}

/// The real binary, stopped by a signal.
mod binary {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_answered_before_a_kill_9_are_shipped_from_the_spool_by_the_next_start() {
        killed_with_a_spool().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_during_an_import_acknowledges_what_was_committed_and_a_rerun_completes_it() {
        sigterm_mid_import().await
    }
}

const SERVICE: &str = "payoutregistry.v1.PayoutResolverService";

/// A loopback address nothing listens on (for `health_listen` and `metrics_listen`).
/// Writes `dir/registry.toml` for the binary: the main and health listeners, a data
/// directory in `dir`, no development client, JSON logs, `notice_secs` of shutdown notice,
/// then `rest` (sections and clients).
fn binary_config(
    dir: &std::path::Path,
    (listen, probe): (SocketAddr, SocketAddr),
    notice_secs: u32,
    rest: &str,
) -> std::path::PathBuf {
    let config = dir.join("registry.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{listen}\"\nhealth_listen = \"{probe}\"\ndata_dir = {data:?}\n\
             dev_client = false\nlog_format = \"json\"\nshutdown_notice_secs = {notice_secs}\n\n\
             {rest}",
            data = dir.join("data").display().to_string(),
        ),
    )
    .unwrap();
    config
}

async fn health(addr: SocketAddr, service: &str) -> Result<ServingStatus, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(answer.into_inner().status())
}

/// Waits until the health listener reports `want` for `service`; answers how long it
/// took. Fails after `within`.
async fn health_becomes(
    addr: SocketAddr,
    service: &str,
    want: ServingStatus,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let seen = health(addr, service).await;
        if seen.as_ref().ok() == Some(&want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "health of {service:?} is {seen:?}, not {want:?}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn resolve_request(citizen: &str) -> ResolveRequest {
    ResolveRequest {
        citizen_id: citizen.into(),
        purpose: "monthly payroll".into(),
        ..Default::default()
    }
}

/// The first page (100 entries) of a citizen's access log, as an auditor asks for it.
async fn list_access_log(
    app: &TestApp,
    citizen: &str,
) -> Result<tonic::Response<payout_registry::proto::ListAccessLogResponse>, tonic::Status> {
    app.oversight(Some(common::AUDITOR))
        .list_access_log(payout_registry::proto::ListAccessLogRequest {
            citizen_id: citizen.into(),
            page_size: 100,
            page_token: String::new(),
            purpose: "who read this citizen".into(),
        })
        .await
}

/// Bytes waiting in the access-log spool in `dir`. A file the drainer removes between the
/// listing and its size has nothing waiting any more.
fn spooled_bytes_in(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "spool"))
        .map(|p| match std::fs::metadata(&p) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => panic!("{}: {e}", p.display()),
        })
        .sum()
}

/// Runs SQL on the cluster's administrative connection (not the test database).
async fn admin(sql: &str) {
    let mut c = sqlx::PgConnection::connect(&common::pg_admin_url())
        .await
        .expect("admin connection");
    sqlx::query(sql).execute(&mut c).await.expect(sql);
}

#[track_caller]
fn assert_retry_info(status: &tonic::Status) {
    assert!(
        status.get_error_details().retry_info().is_some(),
        "no RetryInfo in {status:?}"
    );
}

async fn database_outage() {
    let probe = free_addr();
    let app = TestApp::builder(Backend::Postgres)
        .configure(move |s| {
            s.health_listen = Some(probe);
            s.db_acquire_timeout_ms = 1000;
        })
        .spawn()
        .await;
    let name = app.db.name().expect("a PostgreSQL database").to_owned();
    let citizen = "001089300001";
    common::link_issuer_confirmed(&app, citizen, "0071300000001").await;
    app.resolver(Some(PAYER))
        .resolve(resolve_request(citizen))
        .await
        .expect("resolves while the database is up");
    health_becomes(probe, "", ServingStatus::Serving, Duration::from_secs(5)).await;

    // The database stops accepting connections and its backends are terminated.
    admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await;
    admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .await;
    let took = health_becomes(probe, "", ServingStatus::NotServing, Duration::from_secs(5)).await;
    eprintln!("measured: database refusing connections -> health NOT_SERVING in {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "readiness turned NOT_SERVING only after {took:?}"
    );
    assert_eq!(
        health(probe, SERVICE).await.unwrap(),
        ServingStatus::NotServing,
        "every service follows readiness"
    );
    assert_eq!(
        health(probe, "liveness").await.unwrap(),
        ServingStatus::Serving,
        "the process itself is alive: liveness stays SERVING"
    );

    // Calls are answered as the database's failure, retryable, quickly.
    let started = Instant::now();
    // (The read is of a citizen the instance has not cached: a cached resolution needs no
    // database, and its read is refused by the access log instead, ACCESS_LOG_UNAVAILABLE.)
    read_and_write_refused(&app, "001089300003", "001089300002", "DATABASE_UNAVAILABLE").await;
    eprintln!(
        "measured: Resolve and LinkAccount refused DATABASE_UNAVAILABLE in {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered within the acquire timeout: {:?}",
        started.elapsed()
    );

    // Back: readiness follows, and calls work again.
    admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;
    let took = health_becomes(probe, "", ServingStatus::Serving, Duration::from_secs(5)).await;
    eprintln!("measured: database back -> health SERVING in {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "SERVING again after {took:?}"
    );
    app.resolver(Some(PAYER))
        .resolve(resolve_request(citizen))
        .await
        .expect("resolves after the database came back");
    app.registry(Some(ADMIN))
        .link_account(common::issuer_confirmed_link(
            "001089300002",
            "0071300000002",
        ))
        .await
        .expect("links after the database came back");
    app.stop().await;
}

/// A Resolve of `citizen` and a LinkAccount for `other` are both answered UNAVAILABLE
/// with `reason` and RetryInfo.
async fn read_and_write_refused(app: &TestApp, citizen: &str, other: &str, reason: &str) {
    let read = app
        .resolver(Some(PAYER))
        .resolve(resolve_request(citizen))
        .await;
    assert_retry_info(&common::refused(read, Code::Unavailable, reason));
    let write = app
        .registry(Some(ADMIN))
        .link_account(common::issuer_confirmed_link(other, "0071300000099"))
        .await;
    assert_retry_info(&common::refused(write, Code::Unavailable, reason));
}

/// The access log's writers hold their connections outside the pools (no liveness check
/// before each use). A connection cut while idle fails the next batch on it; the writers
/// write that batch's reads again on a new connection, so no read fails and none goes
/// unrecorded.
async fn access_log_connections_cut() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let name = app.db.name().expect("a PostgreSQL database").to_owned();
    let citizen = "001089300011";
    common::link_issuer_confirmed(&app, citizen, "0071300000011").await;
    let mut resolver = app.resolver(Some(PAYER));
    resolver
        .resolve(resolve_request(citizen))
        .await
        .expect("the first read opens the log's connections");
    for round in 0..3 {
        let mut c = sqlx::PgConnection::connect(&common::pg_admin_url())
            .await
            .expect("admin connection");
        let cut: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND query LIKE 'INSERT INTO access_log%'",
        )
        .bind(&name)
        .fetch_all(&mut c)
        .await
        .expect("terminate the log's connections");
        assert!(
            !cut.is_empty() && cut.iter().all(|(done,)| *done),
            "round {round}: the log's connections were found and cut: {cut:?}"
        );
        for _ in 0..4 {
            resolver
                .resolve(resolve_request(citizen))
                .await
                .expect("a read after the log's connection was cut is answered");
        }
    }
    let log = list_access_log(&app, citizen)
        .await
        .expect("list the access log")
        .into_inner();
    let resolves = log
        .entries
        .iter()
        .filter(|e| e.method.ends_with("/Resolve"))
        .count();
    assert_eq!(resolves, 1 + 3 * 4, "every answered read is in the log");
    app.stop().await;
}

async fn backends_killed_mid_import() {
    use payout_registry::tools::demo::DemoSpec;
    use payout_registry::tools::import::{self as bulk, FileKind};
    let app = TestApp::spawn(Backend::Postgres).await;
    let name = app.db.name().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let spec = DemoSpec {
        citizens: 20_000,
        seed: 5,
    };
    let (citizens, _) = bulk::demo_csv(&spec, dir.path()).unwrap();
    let run = || {
        let channel = app.new_channel();
        let path = citizens.clone();
        tokio::spawn(async move {
            let credentials =
                payout_registry::client::Credentials::new(Some(SYNC), "operability").unwrap();
            bulk::import_file(channel, credentials, FileKind::Citizens, &path, None).await
        })
    };
    let import = run();
    let checkpoint = bulk::checkpoint_path(&citizens);
    let started = Instant::now();
    while !checkpoint.exists() && !import.is_finished() {
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Every backend of the database terminated, again and again, until the import ends.
    let terminate = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    );
    while !import.is_finished() {
        admin(&terminate).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match import.await.unwrap() {
        Ok(report) => panic!("the import went through every termination: {report:?}"),
        Err(e) => {
            let said = format!("{e:#}");
            assert!(
                said.contains("DATABASE_UNAVAILABLE") || said.contains("DATABASE_CONTENTION"),
                "a terminated backend is the database's failure, not the server's: {said}"
            );
            assert!(!said.contains("INTERNAL"), "{said}");
            assert!(said.contains("run the same command again"), "{said}");
        }
    }
    // Resumed, the import completes; each record applied once.
    let report = run().await.unwrap().expect("the resumed import");
    assert!(
        report.complete && report.resumed_after_line > 0,
        "{report:?}"
    );
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM sync_records WHERE stream = 'CITIZENS'")
            .await,
        20_000
    );
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM citizen_history").await,
        app.db.count("SELECT COUNT(*) FROM citizens").await,
        "no citizen applied twice"
    );
    app.stop().await;
}

/// Holds `LOCK TABLE` on `accounts` (which a LinkAccount writes) and `resolution_inputs`
/// (which a Resolve reads) in an open transaction on a connection of its own.
async fn lock_tables(app: &TestApp) -> sqlx::PgConnection {
    app.db.lock("accounts, resolution_inputs").await
}

async fn stalled_database() {
    let app = TestApp::builder(Backend::Postgres)
        .configure(|s| s.db_statement_timeout_ms = 300)
        .spawn()
        .await;
    let citizen = "001089300011";
    common::link_issuer_confirmed(&app, citizen, "0071300000011").await;
    let lock = lock_tables(&app).await;

    let started = Instant::now();
    read_and_write_refused(&app, citizen, "001089300012", "DATABASE_TIMEOUT").await;
    eprintln!(
        "measured: Resolve and LinkAccount behind a lock refused DATABASE_TIMEOUT in {:?} \
         (statement timeout 300 ms)",
        started.elapsed()
    );
    // Two statements of 300 ms (each call's first on the locked table), with margin.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a stalled table held two calls {:?}",
        started.elapsed()
    );
    drop(lock);
    app.registry(Some(ADMIN))
        .link_account(common::issuer_confirmed_link(
            "001089300012",
            "0071300000012",
        ))
        .await
        .expect("the write goes through once the lock is gone");
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM accounts WHERE citizen_id = '001089300012'")
            .await,
        1,
        "the refused attempt wrote nothing; the retry wrote once"
    );
    app.stop().await;
}

async fn deadline_reaches_the_database() {
    // The statement timeout is long; the client's deadline is what must stop the wait.
    let app = TestApp::builder(Backend::Postgres)
        .configure(|s| s.db_statement_timeout_ms = 20_000)
        .spawn()
        .await;
    let lock = lock_tables(&app).await;
    let mut request = tonic::Request::new(common::issuer_confirmed_link(
        "001089300021",
        "0071300000021",
    ));
    request.set_timeout(Duration::from_millis(400));
    let started = Instant::now();
    let status = app
        .registry(Some(ADMIN))
        .link_account(request)
        .await
        .expect_err("the write cannot finish behind the lock");
    // The server answers DEADLINE_EXCEEDED at the deadline; the client's own timer fires
    // at the same moment, so either may be what the client sees.
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // What matters to the database: the statement waiting for the lock was stopped at
    // the call's deadline, not after the 20 s statement timeout.
    let mut waiting = app.db.lock_waiters("%").await;
    let watch = Instant::now();
    while waiting > 0 && watch.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waiting = app.db.lock_waiters("%").await;
    }
    assert_eq!(
        waiting,
        0,
        "a statement still waits for the lock {:?} after the call's deadline",
        started.elapsed()
    );
    drop(lock);
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM accounts WHERE citizen_id = '001089300021'")
            .await,
        0,
        "the abandoned write left nothing"
    );
    app.stop().await;
}

/// Scrapes while the feed's head is locked: each answers within its refresh timeout (the
/// gauges as last read), and one gauge query waits in the database however many scrapes
/// came. A scrape that stopped waiting used to abandon its statement, left running in the
/// database on a pooled connection, and the next scrape started another. (The gauges'
/// values are not compared: the recorder is the process's, and other tests in this
/// binary scrape registries of their own.)
async fn stalled_scrapes() {
    let exporter = free_addr();
    let app = TestApp::builder(Backend::Postgres)
        .configure(move |s| {
            s.metrics_listen = Some(exporter);
            s.db_statement_timeout_ms = 20_000;
        })
        .spawn()
        .await;
    common::link_issuer_confirmed(&app, "001089300041", "0071300000041").await;
    scrape(exporter).await;

    let held = app.db.lock("feed_head").await;
    for _ in 0..4 {
        let started = Instant::now();
        scrape(exporter).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a scrape behind the lock took {:?}",
            started.elapsed()
        );
    }
    let waiting = app.db.lock_waiters("%feed_pending LIMIT%").await;
    assert_eq!(
        waiting, 1,
        "gauge queries waiting behind the lock after 4 scrapes"
    );
    held.close().await.unwrap();
    common::link_issuer_confirmed(&app, "001089300042", "0071300000042").await;
    app.stop().await;
}

async fn metrics_show_the_standard_grpc_series_with_the_codes_of_the_calls_made(backend: Backend) {
    use payout_registry::telemetry::metrics as m;
    let exporter = free_addr();
    let app = TestApp::builder(backend)
        .configure(move |s| s.metrics_listen = Some(exporter))
        .spawn()
        .await;
    let citizen = "001089300031";
    common::link_issuer_confirmed(&app, citizen, "0071300000031").await;
    for _ in 0..3 {
        app.resolver(Some(PAYER))
            .resolve(resolve_request(citizen))
            .await
            .expect("resolves");
    }
    let malformed = app
        .resolver(Some(PAYER))
        .resolve(resolve_request("0010893"))
        .await
        .expect_err("a citizen id of 7 digits");
    assert_eq!(malformed.code(), Code::InvalidArgument);
    // A stream: counted when it ends, with the code it ended with.
    let mut feed = common::feed_on(app.channel(), Some(FEED));
    let mut events = feed
        .subscribe(SubscribeRequest::default())
        .await
        .expect("subscribed")
        .into_inner();
    events.message().await.expect("an event").expect("events");
    drop(events);

    let body = scrape(exporter).await;
    let resolve = [
        ("grpc_service", SERVICE),
        ("grpc_method", "Resolve"),
        ("grpc_type", "unary"),
    ];
    let with = |code: &'static str| {
        let mut l = resolve.to_vec();
        l.push(("grpc_code", code));
        l
    };
    assert!(sample(&body, m::GRPC_STARTED, &resolve).is_some_and(|v| v >= 4.0));
    assert!(
        sample(&body, m::GRPC_HANDLED, &with("OK")).is_some_and(|v| v >= 3.0),
        "Resolve OK counted:\n{body}"
    );
    assert!(
        sample(&body, m::GRPC_HANDLED, &with("InvalidArgument")).is_some_and(|v| v >= 1.0),
        "Resolve InvalidArgument counted"
    );
    assert!(
        sample(
            &body,
            &format!("{}_count", m::GRPC_HANDLING_SECONDS),
            &resolve
        )
        .is_some_and(|v| v >= 4.0),
        "Resolve's latency histogram"
    );
    assert!(sample(&body, m::GRPC_MSG_RECEIVED, &resolve).is_some_and(|v| v >= 4.0));
    assert!(sample(&body, m::GRPC_MSG_SENT, &resolve).is_some_and(|v| v >= 3.0));
    // The subscription is counted once it has ended (the client went away: Cancelled).
    let subscribe = [("grpc_method", "Subscribe"), ("grpc_type", "server_stream")];
    let ended = Instant::now();
    loop {
        let body = scrape(exporter).await;
        if sample(&body, m::GRPC_HANDLED, &subscribe).is_some() {
            assert!(
                sample(&body, m::GRPC_MSG_SENT, &subscribe).is_some_and(|v| v >= 1.0),
                "the event sent on the stream is counted"
            );
            break;
        }
        assert!(
            ended.elapsed() < Duration::from_secs(5),
            "a Subscribe that ended is not in {}",
            m::GRPC_HANDLED
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The registry's own series.
    for name in [
        m::READY,
        m::DATABASE_UP,
        m::FEED_HEAD,
        m::FEED_SEQUENCER_BACKLOG,
        m::DIGEST_LAG_EVENTS,
        m::ACCESS_LOG_QUEUE_DEPTH,
        m::DB_POOL_CONNECTIONS,
        m::DB_POOL_WAITING,
    ] {
        assert!(
            sample(&body, name, &[]).is_some(),
            "{name} is not exported:\n{body}"
        );
    }
    assert!(sample(&body, m::DB_POOL_CONNECTIONS, &[("state", "idle")]).is_some());
    app.stop().await;
}

fn citizen_record(n: u32) -> CitizenRecord {
    CitizenRecord {
        record_id: format!("shutdown-{n}"),
        version: 1,
        citizen_id: format!("0010893{n:05}"),
        full_name: "Nguyễn Văn An".into(),
        date_of_birth: common::date("1989-04-12"),
        status: CitizenStatus::Active.into(),
        ..Default::default()
    }
}

async fn shutdown_turns_health_first_refuses_new_calls_and_ends_open_streams_retryably(
    backend: Backend,
) {
    let probe = free_addr();
    let mut app = TestApp::builder(backend)
        .configure(move |s| {
            s.health_listen = Some(probe);
            s.shutdown_notice_secs = 2;
        })
        .spawn()
        .await;
    health_becomes(probe, "", ServingStatus::Serving, Duration::from_secs(5)).await;
    let (records, inbound) = tokio::sync::mpsc::channel::<SyncCitizensRequest>(64);
    let mut acks = app
        .population(Some(SYNC))
        .sync_citizens(tokio_stream::wrappers::ReceiverStream::new(inbound))
        .await
        .expect("stream accepted")
        .into_inner();
    for n in 0..5 {
        records
            .send(SyncCitizensRequest {
                record: Some(citizen_record(n)),
            })
            .await
            .unwrap();
    }
    let first = acks.message().await.expect("ack").expect("an ack");
    let first = first.result.unwrap();
    assert_eq!((first.applied, first.rejected), (5, 0), "{first:?}");
    let mut applied = first.applied;
    let mut last = first.last_record_id;
    // More records, then SIGTERM's equivalent while the stream is open.
    for n in 5..8 {
        records
            .send(SyncCitizensRequest {
                record: Some(citizen_record(n)),
            })
            .await
            .unwrap();
    }
    let mut resolver = app.resolver(Some(PAYER));
    // A BatchResolve stream open at the same time, its first request answered.
    let (lookups, lookups_in) = tokio::sync::mpsc::channel::<BatchResolveRequest>(8);
    let mut answers = resolver
        .batch_resolve(tokio_stream::wrappers::ReceiverStream::new(lookups_in))
        .await
        .expect("stream accepted")
        .into_inner();
    lookups
        .send(BatchResolveRequest {
            correlation_id: "before".into(),
            citizen_id: "001089300001".into(),
            purpose: "monthly payroll".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let answered = answers.message().await.expect("answer").expect("an answer");
    assert_eq!(answered.correlation_id, "before");
    app.request_stop();
    let asked = Instant::now();

    // Health says so at once, and keeps answering during the notice.
    let took = health_becomes(probe, "", ServingStatus::NotServing, Duration::from_secs(2)).await;
    eprintln!("measured: shutdown requested -> health NOT_SERVING in {took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    // New calls are refused, retryably, pointing elsewhere.
    let status = common::refused(
        resolver.resolve(resolve_request("001089300001")).await,
        Code::Unavailable,
        "SHUTTING_DOWN",
    );
    assert_retry_info(&status);
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "still in the notice"
    );
    assert_eq!(
        health(probe, "")
            .await
            .expect("the health listener still answers"),
        ServingStatus::NotServing
    );

    // The sync stream: what it held is applied and acknowledged, then it ends
    // UNAVAILABLE (SHUTTING_DOWN), not with a cut connection.
    let end = loop {
        match acks.message().await {
            // The counts are the stream's totals so far.
            Ok(Some(ack)) => {
                let ack = ack.result.unwrap();
                applied = ack.applied;
                last = ack.last_record_id;
            }
            Ok(None) => panic!("the stream ended OK; expected UNAVAILABLE (SHUTTING_DOWN)"),
            Err(status) => break status,
        }
    };
    let end = common::refused::<()>(Err(end), Code::Unavailable, "SHUTTING_DOWN");
    assert_retry_info(&end);
    // Records still on the wire when the stream stopped reading are neither applied nor
    // acknowledged (the client sends them again on resume); everything acknowledged is
    // applied, and nothing else is.
    assert!((5..=8).contains(&applied), "{applied}");
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM citizens").await,
        applied as i64,
        "the acknowledgements and the database agree"
    );
    assert_eq!(last, format!("shutdown-{}", applied - 1), "where to resume");
    drop(records);

    // The BatchResolve stream, its client still sending nothing, ends the same way.
    let end = match answers.message().await {
        Ok(Some(answer)) => panic!("no request was pending: {answer:?}"),
        Ok(None) => panic!("the stream ended OK; expected UNAVAILABLE (SHUTTING_DOWN)"),
        Err(status) => status,
    };
    common::refused::<()>(Err(end), Code::Unavailable, "SHUTTING_DOWN");
    drop(lookups);
    app.stop().await;
}

async fn idle_streams_do_not_starve_unary_calls_and_have_a_limit_of_their_own(backend: Backend) {
    let limits = payout_registry::security::limits::RateLimitConfig {
        max_concurrent_calls: 2,
        max_concurrent_streams: 3,
        ..Default::default()
    };
    let app = TestApp::builder(backend).limits(limits).spawn().await;
    let citizen = "001089300041";
    common::link_issuer_confirmed(&app, citizen, "0071300000041").await;
    let subscribe = || {
        let mut feed = common::feed_on(app.new_channel(), Some(FEED));
        async move {
            feed.subscribe(SubscribeRequest {
                after_position: 1_000_000,
                ..Default::default()
            })
            .await
        }
    };
    // Three idle subscriptions: more than the two unary calls allowed in flight.
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(subscribe().await.expect("a subscription within the limit"));
    }
    for _ in 0..5 {
        app.resolver(Some(PAYER))
            .resolve(resolve_request(citizen))
            .await
            .expect("unary calls are not shed for idle streams");
    }
    // A fourth stream is over the streams' own limit.
    let status = common::refused(subscribe().await, Code::Unavailable, "OVERLOADED");
    assert_retry_info(&status);
    assert!(status.message().contains("streams"), "{status:?}");
    // One ends: a new one is admitted.
    drop(open.pop());
    let freed = Instant::now();
    loop {
        match subscribe().await {
            Ok(s) => {
                open.push(s);
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(
                    freed.elapsed() < Duration::from_secs(5),
                    "the ended stream's place was not given back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(open);
    app.stop().await;
}

/// A child process, killed if the test ends without it having exited.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    /// `payout-registry <args>`, its stderr appended to `log`.
    fn start(args: &[&str], env: &[(&str, &str)], log: &std::path::Path) -> Process {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_payout-registry"));
        command
            .args(args)
            .env_remove("PAYOUT_REGISTRY_CONFIG")
            .env_remove("PAYOUT_REGISTRY_TOKEN")
            .env_remove("PAYOUT_REGISTRY_ADDR")
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log);
        for (k, v) in env {
            command.env(k, v);
        }
        Process(command.spawn().expect("start payout-registry"))
    }

    fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (at most a minute).
    async fn exit(&mut self) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "still running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Reads answered by a registry killed with SIGKILL, before any shipping round, are in
/// its spool; the next start on the same spool ships them. A SIGTERM ships at once.
async fn killed_with_a_spool() {
    use payout_registry::proto::account_registry_service_client::AccountRegistryServiceClient;
    use payout_registry::proto::payout_resolver_service_client::PayoutResolverServiceClient;
    let db = common::TestDb::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let (listen, probe) = (free_addr(), free_addr());
    let spool = dir.path().join("spool");
    let config = binary_config(
        dir.path(),
        (listen, probe),
        0,
        &format!(
            "[access_log]\nspool_dir = {spool:?}\nship_every_ms = 600000\n\n\
             [[clients]]\nid = \"payroll\"\ntoken_sha256 = {token:?}\n\
             providers = [\"970418\"]\n\
             scopes = [\"accounts.write\", \"accounts.verify\", \"resolve\"]\n",
            spool = spool.display().to_string(),
            token = payout_registry::security::auth::hash_token("payroll-secret"),
        ),
    );
    let server_log = dir.path().join("server.log");
    let serve = || {
        Process::start(
            &["--config", &config.display().to_string(), "serve"],
            &[("DATABASE_URL", db.url.as_str())],
            &server_log,
        )
    };
    let channel = || {
        tonic::transport::Endpoint::from_shared(format!("http://{listen}"))
            .unwrap()
            .connect_lazy()
    };
    let resolves = "SELECT COUNT(*) FROM access_log WHERE method LIKE '%/Resolve'";
    let read = |citizen: String| async move {
        let mut request = tonic::Request::new(resolve_request(&citizen));
        request
            .metadata_mut()
            .insert("authorization", "Bearer payroll-secret".parse().unwrap());
        PayoutResolverServiceClient::new(channel())
            .resolve(request)
            .await
            .expect("resolve")
    };

    let server = serve();
    health_becomes(probe, "", ServingStatus::Serving, Duration::from_secs(60)).await;
    let mut registry = AccountRegistryServiceClient::new(channel());
    let citizens = payout_registry::tools::loadgen::seed(&mut registry, "payroll-secret", 3, 0)
        .await
        .expect("seed three citizens");
    for citizen in &citizens {
        for _ in 0..5 {
            read(citizen.clone()).await;
        }
    }
    assert_eq!(db.count(resolves).await, 0, "no round has shipped yet");
    drop(server); // SIGKILL
    assert!(
        spooled_bytes_in(&spool) > 0,
        "the answered reads are in the spool"
    );

    let mut server = serve();
    health_becomes(probe, "", ServingStatus::Serving, Duration::from_secs(60)).await;
    let started = Instant::now();
    while db.count(resolves).await < 15 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the next start shipped {} of 15 reads",
            db.count(resolves).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(db.count(resolves).await, 15, "each read once");
    read(citizens[0].clone()).await;
    server.terminate();
    assert!(server.exit().await.success(), "a clean exit on SIGTERM");
    assert_eq!(db.count(resolves).await, 16, "SIGTERM ships the spool");
}

async fn sigterm_mid_import() {
    use payout_registry::tools::demo::DemoSpec;
    use payout_registry::tools::import as bulk;
    let db = common::TestDb::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let spec = DemoSpec {
        citizens: 30_000,
        seed: 11,
    };
    let (citizens, _) = bulk::demo_csv(&spec, &dir.path().join("files")).unwrap();
    let listen = free_addr();
    let probe = free_addr();
    let config = binary_config(
        dir.path(),
        (listen, probe),
        1,
        &format!(
            "[[clients]]\nid = \"population-platform\"\ntoken_sha256 = {token:?}\n\
             scopes = [\"sync.population\"]\n",
            token = payout_registry::security::auth::hash_token("sync-secret"),
        ),
    );
    let server_log = dir.path().join("server.log");
    let import_log = dir.path().join("import.log");
    let serve = || {
        Process::start(
            &["--config", &config.display().to_string(), "serve"],
            &[("DATABASE_URL", db.url.as_str())],
            &server_log,
        )
    };
    let addr = format!("http://{listen}");
    let citizens_arg = citizens.display().to_string();
    let import = || {
        Process::start(
            &[
                "import",
                "--addr",
                &addr,
                "--token",
                "sync-secret",
                "--citizens",
                &citizens_arg,
            ],
            &[],
            &import_log,
        )
    };

    let mut server = serve();
    health_becomes(probe, "", ServingStatus::Serving, Duration::from_secs(60)).await;
    let mut importing = import();
    // SIGTERM once the import has committed something.
    let checkpoint = bulk::checkpoint_path(&citizens);
    let started = Instant::now();
    while !checkpoint.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the import made no progress"
        );
        assert!(
            importing.0.try_wait().unwrap().is_none(),
            "the import ended already"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.terminate();
    let took = health_becomes(probe, "", ServingStatus::NotServing, Duration::from_secs(2)).await;
    eprintln!("measured: binary SIGTERM -> health NOT_SERVING in {took:?}");
    assert!(took < Duration::from_secs(1), "NOT_SERVING after {took:?}");

    let status = importing.exit().await;
    let said = std::fs::read_to_string(&import_log).unwrap();
    assert!(!status.success(), "the import cannot have finished: {said}");
    assert!(
        said.contains("SHUTTING_DOWN") && said.contains("run the same command again"),
        "the import says why it stopped and how to resume:\n{said}"
    );
    assert!(server.exit().await.success(), "a clean exit on SIGTERM");
    // What the server committed is exactly what the import recorded as acknowledged.
    let line: u64 = std::fs::read_to_string(&checkpoint)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("line=")?.parse().ok())
        .expect("a checkpoint");
    assert!(line < 30_000, "interrupted midway: {line}");
    let ledger = "SELECT COUNT(*) FROM sync_records WHERE stream = 'CITIZENS'";
    assert_eq!(
        db.count(ledger).await,
        line as i64,
        "committed == acknowledged"
    );

    // Started again, the same command finishes the file: every record once.
    let _server = serve();
    health_becomes(probe, "", ServingStatus::Serving, Duration::from_secs(60)).await;
    let status = import().exit().await;
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&import_log).unwrap()
    );
    assert_eq!(db.count(ledger).await, 30_000);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM citizen_history").await,
        db.count("SELECT COUNT(*) FROM citizens").await,
        "no citizen applied twice"
    );
    let logs = std::fs::read_to_string(&server_log).unwrap();
    assert!(logs.contains("shutdown requested"), "{logs}");
}
