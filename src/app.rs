//! The composition root: the one place that wires the registry together.
//!
//! [`App::build`] reads the [`Settings`] and makes everything the server runs: the store
//! (migrated), the background tasks (the change-feed sequencer, the pruner, the
//! access-log writers), the rate limits, the authenticator, the TLS configuration and the
//! handlers' shared state. [`App::serve`] then serves the gRPC services on a listener the
//! caller bound, until a shutdown future resolves. `payout-registry serve` and the
//! integration tests both go through these two functions, so the tests run the wiring
//! that production runs. [`FeedHost::build`] is the smaller wiring of the JetStream relay.
//!
//! `serve` takes a bound listener, so tests bind `127.0.0.1:0`, read the port, and never
//! sleep waiting for the server to come up.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::background::access_log::AccessLog;
use crate::background::access_spool::SpoolSettings;
use crate::background::readiness::{self, Readiness, Signals};
use crate::background::{follower, pruner, sequencer, BackgroundTask};
use crate::config::Settings;
use crate::domain::Timestamp;
use crate::grpc::{
    AccountRegistryHandler, AppState, ChangeFeedHandler, OversightHandler, PayoutResolverHandler,
    PopulationSyncHandler,
};
use crate::proto::account_registry_service_server::AccountRegistryServiceServer;
use crate::proto::change_feed_service_server::ChangeFeedServiceServer;
use crate::proto::oversight_service_server::OversightServiceServer;
use crate::proto::payout_resolver_service_server::PayoutResolverServiceServer;
use crate::proto::population_sync_service_server::PopulationSyncServiceServer;
use crate::security::auth::{hash_token, AuthLayer, ClientConfig};
use crate::security::limits::Limits;
use crate::security::live::{Live, ReloadSummary};
use crate::security::{handshake, tls, Scope};
use crate::store::{Store, StoreOptions};
use crate::telemetry::calls::{CallLayer, CallType, Methods};
use crate::telemetry::metrics as m;

/// The registry's gRPC services by their full names, and `""` (the server as a whole),
/// as the health service reports them.
const HEALTH_SERVICES: [&str; 6] = [
    "",
    <AccountRegistryServiceServer<AccountRegistryHandler> as NamedService>::NAME,
    <PayoutResolverServiceServer<PayoutResolverHandler> as NamedService>::NAME,
    <OversightServiceServer<OversightHandler> as NamedService>::NAME,
    <PopulationSyncServiceServer<PopulationSyncHandler> as NamedService>::NAME,
    <ChangeFeedServiceServer<ChangeFeedHandler> as NamedService>::NAME,
];

/// The health service name that reports liveness: SERVING while the process runs, a
/// database outage and a drain included. The other names report readiness.
pub const LIVENESS: &str = "liveness";

/// The registry, wired and ready to serve.
pub struct App {
    state: AppState,
    /// The TLS material and the clients in force; see [`App::reloader`].
    live: Arc<Live>,
    allow_plaintext_non_loopback: bool,
    max_message_bytes: usize,
    request_timeout: Duration,
    shutdown_grace: Duration,
    shutdown_notice: Duration,
    max_connection_age: Option<Duration>,
    health_listen: Option<std::net::SocketAddr>,
    metrics_listen: Option<std::net::SocketAddr>,
    /// What the readiness monitor last found.
    readiness: tokio::sync::watch::Receiver<Readiness>,
    /// Stopped when the app is dropped.
    _tasks: Vec<BackgroundTask>,
}

impl App {
    /// Wires the registry from `settings`: loads the TLS files (a wrong path stops the
    /// server now rather than failing every handshake), opens and migrates the store,
    /// starts the background tasks, and builds the limits and the authenticator. With no
    /// clients configured on the embedded default, a development client is made (see
    /// [`dev_client`]). Call inside a Tokio runtime.
    pub async fn build(settings: &Settings) -> anyhow::Result<App> {
        let tls = match &settings.tls {
            Some(t) => Some(tls::ServerTls::load(t).context("loading the [tls] files")?),
            None => None,
        };
        let clients = client_table(settings)?;
        if clients.is_empty() {
            tracing::warn!("no clients configured: every call will be refused");
        }
        let store = open_store(settings).await?;
        m::install();

        let signals = Arc::new(Signals::default());
        let (readiness_tx, readiness_rx) = tokio::sync::watch::channel(Readiness::UNKNOWN);
        let mut tasks = vec![
            BackgroundTask::spawn(sequencer::run(
                store.clone(),
                settings.feed.sequencer_round,
                signals.clone(),
            )),
            BackgroundTask::spawn(readiness::monitor(
                store.clone(),
                signals.clone(),
                readiness_tx,
            )),
            BackgroundTask::spawn(follower::follow(store.clone())),
        ];
        if !settings.read_database_urls.is_empty() {
            tasks.push(BackgroundTask::spawn(follower::poll_replicas(
                store.clone(),
            )));
        }
        if let Some(retention) = settings.feed.retention() {
            tasks.push(BackgroundTask::spawn(pruner::run(
                store.clone(),
                retention,
                Duration::from_secs(settings.feed.prune_every_secs),
            )));
        }
        let log = &settings.access_log;
        let access = if let (true, Some(dir)) = (log.enabled, &log.spool_dir) {
            let spool = SpoolSettings {
                dir: dir.clone(),
                sync: log.spool_sync,
                max_bytes: log.spool_max_bytes,
                ship_every: Duration::from_millis(log.ship_every_ms),
                queue: log.queue,
                max_batch: log.max_batch,
            };
            AccessLog::spooled(&spool, store.clone(), signals.clone())?
        } else if log.enabled {
            AccessLog::start(
                store.clone(),
                signals.clone(),
                settings.access_log.queue,
                settings.access_log.max_batch,
                settings.access_log.writers,
            )
        } else {
            tracing::warn!("the access log is disabled: reads are not recorded (benchmarks only)");
            AccessLog::disabled()
        };

        let programs = crate::store::reference::programs().map_err(anyhow::Error::msg)?;

        let state = AppState {
            store,
            cooling_off: settings.cooling_off(),
            clock: Arc::new(Timestamp::now),
            access,
            sync_batches_in_flight: settings.sync_batches_in_flight,
            sync_batch_records: settings.sync_batch_records,
            unary_writes: Arc::new(crate::grpc::priority::UnaryWrites::new(
                std::time::Duration::from_millis(settings.sync_yield_window_ms),
            )),
            limits: Arc::new(Limits::new(settings.rate_limits.clone())),
            shutting_down: Arc::new(tokio::sync::watch::Sender::new(false)),
            programs: Arc::new(
                programs
                    .iter()
                    .map(|p| (p.code.clone(), p.reservable.then_some(p.reservation_scope)))
                    .collect(),
            ),
        };
        let live = Arc::new(Live::new(
            tls,
            clients,
            settings.allow_plaintext_non_loopback,
        ));
        Ok(App {
            state,
            live,
            allow_plaintext_non_loopback: settings.allow_plaintext_non_loopback,
            max_message_bytes: settings.max_message_bytes,
            request_timeout: Duration::from_secs(settings.request_timeout_secs),
            shutdown_grace: Duration::from_secs(settings.shutdown_grace_secs),
            shutdown_notice: Duration::from_secs(settings.shutdown_notice_secs),
            max_connection_age: (settings.max_connection_age_secs > 0)
                .then(|| Duration::from_secs(settings.max_connection_age_secs)),
            health_listen: settings.health_listen,
            metrics_listen: settings.metrics_listen,
            readiness: readiness_rx,
            _tasks: tasks,
        })
    }

    /// The handle that reloads the TLS material and the client table of this app while
    /// it serves (SIGHUP uses it; so can tests).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            live: self.live.clone(),
        }
    }

    /// The store the app serves from.
    pub fn store(&self) -> Arc<dyn Store> {
        self.state.store.clone()
    }

    /// Replaces the clock handlers read "now" from. Tests move a clock of their own to
    /// exercise cooling-off without sleeping; the server always runs on the real time.
    pub fn with_clock(mut self, clock: Arc<dyn Fn() -> Timestamp + Send + Sync>) -> App {
        self.state.clock = clock;
        self
    }

    /// Serves the registry on `listener` until `shutdown` resolves. Health reports
    /// readiness (see `background::readiness`) for the server and each service, and
    /// liveness under [`LIVENESS`]; with `health_listen` the health service is also
    /// served alone in plain text (for probes without a client certificate), and with
    /// `metrics_listen` Prometheus metrics are served on their own listener.
    ///
    /// Shutdown, in order: every service reports NOT_SERVING, new calls are answered
    /// UNAVAILABLE (SHUTTING_DOWN), sync streams apply what they hold, send a final
    /// acknowledgement and end UNAVAILABLE, subscriptions end; the listeners stay open
    /// for `shutdown_notice_secs` so that probes and load balancers see it; then the
    /// server stops accepting connections and waits, at most the grace period, for calls
    /// in flight. Health answers until the end. Plain text is refused on a non-loopback
    /// address unless TLS is configured or `allow_plaintext_non_loopback` is set.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = listener.local_addr()?;
        let serves_tls = self.live.serves_tls();
        if !serves_tls && !tls::is_loopback(addr.ip()) && !self.allow_plaintext_non_loopback {
            anyhow::bail!(
                "refusing to serve plain text on {addr}: listen on loopback, configure [tls], \
                 or set allow_plaintext_non_loopback = true behind a TLS-terminating proxy"
            );
        }
        // Side listeners are bound first, so a busy port stops the server at start-up.
        let health_listener = bind_side(self.health_listen, "health_listen").await?;
        let metrics_listener = bind_side(self.metrics_listen, "metrics_listen").await?;
        tracing::info!(%addr, tls = serves_tls, "payout-registry listening");

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        // Readiness as the monitor finds it (its first probe, at most a moment away),
        // until shutdown.
        let mut readiness = self.readiness.clone();
        let _ = tokio::time::timeout(
            readiness::PROBE_TIMEOUT * 2,
            readiness.wait_for(|r| *r != Readiness::UNKNOWN),
        )
        .await;
        let shutting_down = self.state.shutting_down.clone();
        let follow_readiness = {
            let reporter = health.clone();
            let mut stopping = shutting_down.subscribe();
            tokio::spawn(async move {
                loop {
                    let ready = readiness.borrow_and_update().ready();
                    let stopped = *stopping.borrow_and_update();
                    set_health(
                        &reporter,
                        if ready && !stopped {
                            ServingStatus::Serving
                        } else {
                            ServingStatus::NotServing
                        },
                    )
                    .await;
                    tokio::select! {
                        changed = readiness.changed() => if changed.is_err() { break },
                        _ = stopping.changed() => {}
                    }
                }
            })
        };
        let _follow_readiness = BackgroundTask::from_handle(follow_readiness);

        // Ends the side listeners once the server has stopped.
        let (stopped_tx, stopped_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stopped_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let mut side = Vec::new();
        if let Some(l) = health_listener {
            tracing::info!(addr = ?l.local_addr().ok(), "health listening (plain text, grpc.health.v1 only)");
            let health_only = Server::builder()
                .add_service(health_service.clone())
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(l),
                    stopped(),
                );
            side.push(tokio::spawn(async move {
                if let Err(e) = health_only.await {
                    tracing::error!(error = %e, "the health listener failed");
                }
            }));
        }
        if let Some(l) = metrics_listener {
            let refresh = gauges_of(self.state.store.clone());
            let exporter = m::serve(l, refresh, stopped());
            side.push(tokio::spawn(async move {
                if let Err(e) = exporter.await {
                    tracing::error!(error = %e, "the metrics listener failed");
                }
            }));
        }

        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let max = self.max_message_bytes;
        let state = self.state.clone();
        let registry =
            AccountRegistryServiceServer::new(AccountRegistryHandler::new(state.clone()))
                .max_decoding_message_size(max);
        let resolver = PayoutResolverServiceServer::new(PayoutResolverHandler::new(state.clone()))
            .max_decoding_message_size(max);
        let feed = ChangeFeedServiceServer::new(ChangeFeedHandler::new(state.clone()))
            .max_decoding_message_size(max);
        let population =
            PopulationSyncServiceServer::new(PopulationSyncHandler::new(state.clone()))
                .max_decoding_message_size(max);
        let oversight = OversightServiceServer::new(OversightHandler::new(state.clone()))
            .max_decoding_message_size(max);

        // The shutdown sequence (see above). tonic's own drain starts when `drain`
        // resolves, after the notice.
        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let reporter = health.clone();
        let notice = self.shutdown_notice;
        let drain_started = Arc::new(std::sync::OnceLock::new());
        let started = drain_started.clone();
        let drain = async move {
            shutdown.await;
            tracing::info!(
                notice_secs = notice.as_secs_f64(),
                "shutdown requested: NOT_SERVING, new calls refused, streams ending"
            );
            shutting_down.send_replace(true);
            set_health(&reporter, ServingStatus::NotServing).await;
            tokio::time::sleep(notice).await;
            tracing::info!("draining calls in flight");
            let _ = started.set(tokio::time::Instant::now());
            let _ = draining_tx.send(());
        };
        let mut builder = Server::builder();
        if let Some(age) = self.max_connection_age {
            builder = builder
                .max_connection_age(age)
                .max_connection_age_grace(self.shutdown_grace);
        }
        let router = builder
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .layer(CallLayer::new(methods()))
            .layer(AuthLayer::new(
                self.live.clone(),
                Arc::new(crate::grpc::denied_status),
            ))
            .layer(crate::grpc::DecodeErrorLayer)
            .layer(crate::grpc::DeadlineLayer::new(self.request_timeout))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(registry)
            .add_service(resolver)
            .add_service(oversight)
            .add_service(population)
            .add_service(feed);
        // A connection must send its first bytes within the call timeout (at most 10 s),
        // or it is closed; over TLS its handshake is then done with the material in force
        // when it arrived: see `security::handshake`.
        let first_bytes = self.request_timeout.min(Duration::from_secs(10));
        let server: futures::future::BoxFuture<'static, Result<(), tonic::transport::Error>> =
            if serves_tls {
                let incoming = handshake::tls_guarded(listener, first_bytes, self.live.clone());
                Box::pin(router.serve_with_incoming_shutdown(incoming, drain))
            } else {
                let incoming = handshake::guarded(listener, first_bytes);
                Box::pin(router.serve_with_incoming_shutdown(incoming, drain))
            };
        tokio::pin!(server);
        let grace = self.shutdown_grace;
        let result = tokio::select! {
            result = &mut server => result.map_err(anyhow::Error::from),
            _ = async {
                let _ = draining_rx.await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!("grace period over: stopping with calls still in flight");
                Ok(())
            }
        };
        let _ = stopped_tx.send(true);
        for task in side {
            let _ = task.await;
        }
        // The reads answered are in the spool: ship them now, retrying until the grace
        // period (from the drain's start) is over (a database blip), rather than leave
        // them for the next start on this directory, which may never come (a deleted
        // pod's volume goes with it). At least one attempt of up to a second, so that
        // the whole stop stays within notice + grace + 1 s.
        let now = tokio::time::Instant::now();
        let deadline = drain_started
            .get()
            .map_or(now + grace, |at| *at + grace)
            .max(now + Duration::from_secs(1));
        loop {
            match tokio::time::timeout_at(deadline, self.state.access.flush()).await {
                Ok(Ok(())) => break,
                Ok(Err(_)) if tokio::time::Instant::now() + SHIP_RETRY < deadline => {
                    tokio::time::sleep(SHIP_RETRY).await
                }
                _ => {
                    tracing::warn!("the access-log spool was not shipped before stopping");
                    break;
                }
            }
        }
        tracing::info!("server stopped");
        result
    }
}

/// How long a stopping instance waits between two attempts to ship its access-log spool.
const SHIP_RETRY: Duration = Duration::from_millis(250);

/// Binds a side listener (health, metrics) when its setting is given.
async fn bind_side(
    addr: Option<std::net::SocketAddr>,
    setting: &str,
) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    Ok(Some(
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {setting} {addr}"))?,
    ))
}

/// The methods the server serves, for the call layer's labels.
fn methods() -> Methods {
    let mut methods = Methods::from_descriptor_sets(&[
        crate::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ]);
    for service in [
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        methods = methods.with(service, "ServerReflectionInfo", CallType::BidiStream);
    }
    methods
}

/// Reads the database's gauges for a scrape: the feed's head, the sequencer's backlog
/// and lag, the digest's lag, the pool, the followed position, the resolution cache, and
/// the read model beside the database's buffer cache.
fn gauges_of(store: Arc<dyn Store>) -> m::Refresh {
    // The read model's block counts at the last scrape.
    let blocks = Arc::new(std::sync::Mutex::new(None::<(i64, i64)>));
    Arc::new(move || {
        let store = store.clone();
        let blocks = blocks.clone();
        Box::pin(async move {
            let reads = store.read_state();
            metrics::gauge!(m::FOLLOWED_POSITION).set(reads.position as f64);
            metrics::gauge!(m::RESOLUTION_CACHE_ENTRIES).set(reads.cache.entries as f64);
            metrics::counter!(m::RESOLUTION_CACHE_HITS).absolute(reads.cache.hits);
            metrics::counter!(m::RESOLUTION_CACHE_MISSES).absolute(reads.cache.misses);
            let pool = store.pool_gauges();
            metrics::gauge!(m::DB_POOL_CONNECTIONS, "state" => "in_use")
                .set(f64::from(pool.in_use));
            metrics::gauge!(m::DB_POOL_CONNECTIONS, "state" => "idle").set(f64::from(pool.idle));
            metrics::gauge!(m::DB_POOL_WAITING).set(pool.waiting as f64);
            match store.feed_gauges().await {
                Ok(feed) => {
                    metrics::gauge!(m::FEED_HEAD).set(feed.head as f64);
                    metrics::gauge!(m::FEED_SEQUENCER_BACKLOG).set(feed.backlog as f64);
                    let lag = feed.oldest_unsequenced.map_or(0.0, |oldest| {
                        (Timestamp::now().micros() - oldest.micros()).max(0) as f64 / 1e6
                    });
                    metrics::gauge!(m::FEED_LAG_SECONDS).set(lag);
                    let digest_lag = feed.head - feed.digest_through.unwrap_or(0);
                    metrics::gauge!(m::DIGEST_LAG_EVENTS).set(digest_lag.max(0) as f64);
                }
                Err(e) => tracing::warn!(error = %e, "reading the feed's gauges failed"),
            }
            match store.model_gauges().await {
                Ok(Some(model)) => {
                    metrics::gauge!(m::READ_MODEL_BYTES).set(model.bytes as f64);
                    metrics::gauge!(m::DATABASE_BUFFER_CACHE_BYTES).set(model.cache_bytes as f64);
                    // The database's counts grow from its last statistics reset: the
                    // counters take what they grew by since the last scrape, or all of
                    // them after a reset.
                    let counts = (model.blocks_hit.max(0), model.blocks_read.max(0));
                    let before = blocks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .replace(counts);
                    let grew = |now: i64, before: Option<i64>| match before {
                        Some(b) if now >= b => (now - b) as u64,
                        _ => now as u64,
                    };
                    metrics::counter!(m::READ_MODEL_BLOCKS_READ, "found" => "cache")
                        .increment(grew(counts.0, before.map(|b| b.0)));
                    metrics::counter!(m::READ_MODEL_BLOCKS_READ, "found" => "outside")
                        .increment(grew(counts.1, before.map(|b| b.1)));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "reading the read model's gauges failed"),
            }
        })
    })
}

/// Reloads what a running server can take anew: the `[tls]` files (server certificate
/// and key, client CA, CRLs) and the `[[clients]]` table. Everything else in the
/// settings is read at start-up only. See `security::live` for what happens to
/// connections.
#[derive(Clone)]
pub struct Reloader {
    live: Arc<Live>,
}

impl Reloader {
    /// Applies `settings`' TLS files and clients, all or nothing, and logs the outcome:
    /// what changed (counts and client ids, never tokens), or why nothing did.
    pub async fn reload(&self, settings: &Settings) -> anyhow::Result<ReloadSummary> {
        let live = self.live.clone();
        let tls = settings.tls.clone();
        let clients = client_table(settings);
        let outcome = tokio::task::spawn_blocking(move || {
            live.reload(tls.as_ref(), clients?)
                .map_err(anyhow::Error::from)
        })
        .await
        .context("the reload task")
        .and_then(|outcome| outcome);
        match &outcome {
            Ok(summary) => tracing::info!(
                clients = summary.clients,
                added = summary.added.len(),
                removed = summary.removed.len(),
                changed = summary.changed.len(),
                server_certificate_replaced = summary.server_certificate_replaced,
                "configuration reloaded: {summary}"
            ),
            Err(e) => tracing::error!(
                "configuration reload failed, the previous configuration stays in force: {e:#}"
            ),
        }
        outcome
    }

    /// On each SIGHUP, loads the settings again as `serve` did at start-up (`config`,
    /// else `PAYOUT_REGISTRY_CONFIG`, then the environment) and [`reload`](Self::reload)s
    /// them. The signal handler is installed now, before the returned future runs, so a
    /// SIGHUP that arrives once this returns never kills the process.
    #[cfg(unix)]
    pub fn on_hangup(
        self,
        config: Option<std::path::PathBuf>,
    ) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        Ok(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration");
                match Settings::load(config.as_deref()) {
                    Ok(settings) => {
                        let _ = self.reload(&settings).await;
                    }
                    Err(e) => tracing::error!(
                        "configuration reload failed, the previous configuration stays in force: {e}"
                    ),
                }
            }
        })
    }
}

/// The clients to serve: the configured ones, or the development client on the embedded
/// default when none are configured (see [`dev_client`]).
fn client_table(settings: &Settings) -> anyhow::Result<Vec<ClientConfig>> {
    let mut clients = settings.clients.clone();
    if clients.is_empty() && settings.dev_client && settings.is_embedded() {
        clients.push(dev_client(&settings.data_dir)?);
    }
    Ok(clients)
}

/// Reports `status` for the server as a whole and for each of its services (readiness;
/// liveness is reported apart).
async fn set_health(reporter: &tonic_health::server::HealthReporter, status: ServingStatus) {
    for service in HEALTH_SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Opens the configured store (creating the embedded database's directory) and applies
/// pending migrations and the reference data. Used by the server and by the commands
/// that work on the database without serving (`migrate`, `demo-data --into-store`).
pub async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    if settings.is_embedded() {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating {}", settings.data_dir.display()))?;
    }
    let options = StoreOptions {
        cooling_off: settings.cooling_off(),
        max_connections: settings.db_max_connections,
        acquire_timeout: Duration::from_millis(settings.db_acquire_timeout_ms),
        statement_timeout: Some(Duration::from_millis(settings.db_statement_timeout_ms)),
        resolution_cache_entries: settings.resolution_cache_entries,
        read_urls: settings
            .read_database_urls
            .iter()
            .map(|u| u.expose().to_owned())
            .collect(),
        replica_max_lag: settings.replica_max_lag,
        model_format: match settings.resolution_model_format {
            1 => crate::store::ModelFormat::First,
            _ => crate::store::ModelFormat::Compact,
        },
    };
    let store = crate::store::connect(settings.database_url.expose(), options).await?;
    store.migrate().await?;
    Ok(store)
}

/// What a process that reads the change feed outside the server (the JetStream relay)
/// needs: the store and, on PostgreSQL, a sequencer of its own, so that a database
/// written without a server running (demo-data, say) is still numbered. An embedded
/// SQLite file has one writing process, the server, which sequences it.
pub struct FeedHost {
    pub store: Arc<dyn Store>,
    _sequencer: Option<BackgroundTask>,
}

impl FeedHost {
    pub async fn build(settings: &Settings) -> anyhow::Result<FeedHost> {
        let store = open_store(settings).await?;
        let sequencer = (!settings.is_embedded()).then(|| {
            BackgroundTask::spawn(sequencer::run(
                store.clone(),
                settings.feed.sequencer_round,
                Arc::new(Signals::default()),
            ))
        });
        Ok(FeedHost {
            store,
            _sequencer: sequencer,
        })
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// The development client: every scope, bound to every provider of the reference data (so
/// that one client can walk through every assertion on a laptop), its token in
/// `<data_dir>/dev-token` (mode 0600), printed once when created. Over mutual TLS it is
/// the `dev` certificate that `dev-certs` makes. Never created when clients are
/// configured.
fn dev_client(data_dir: &Path) -> anyhow::Result<ClientConfig> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join("dev-token");
    let token = match std::fs::read_to_string(&path) {
        Ok(t) => {
            println!("development client: token in {}", path.display());
            t.trim().to_owned()
        }
        Err(_) => {
            let token = crate::security::auth::new_token();
            tls::write_new_file(&path, &token, true)
                .with_context(|| format!("creating {}", path.display()))?;
            println!(
                "development client created with every scope; token (also in {}):\n{token}",
                path.display()
            );
            token
        }
    };
    Ok(ClientConfig {
        id: "dev".into(),
        token_sha256: Some(hash_token(&token)),
        cert_subject: Some("dev".into()),
        scopes: Scope::ALL.iter().map(|s| s.as_str().to_owned()).collect(),
        providers: crate::store::reference::providers()
            .map_err(anyhow::Error::msg)?
            .into_iter()
            .map(|p| p.code)
            .collect(),
    })
}
