//! The gRPC server: services, health, reflection, auth, and graceful shutdown.
//!
//! [`serve`] takes a bound listener and a shutdown future, so tests bind `127.0.0.1:0`,
//! read the port, and never sleep waiting for the server to come up.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::{Server, ServerTlsConfig};

use crate::auth::{AuthLayer, Authenticator};
use crate::grpc::{
    AccountRegistryService, AppState, ChangeFeedService, OversightService, PayoutResolverService,
    PopulationSyncService,
};
use crate::proto::account_registry_server::AccountRegistryServer;
use crate::proto::change_feed_server::ChangeFeedServer;
use crate::proto::oversight_server::OversightServer;
use crate::proto::payout_resolver_server::PayoutResolverServer;
use crate::proto::population_sync_server::PopulationSyncServer;

/// How the server runs, beyond what handlers need.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Largest request message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Longest a graceful shutdown waits for in-flight calls before returning.
    pub shutdown_grace: Duration,
    /// Longest one call may take, body included: a client that opens a call and never
    /// finishes sending it is cut off after this.
    pub request_timeout: Duration,
    /// Serve over TLS (see [`crate::tls::server_tls_config`]); plain text when `None`.
    pub tls: Option<ServerTlsConfig>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_message_bytes: 4 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            tls: None,
        }
    }
}

/// Serves the registry on `listener` until `shutdown` resolves, then stops accepting
/// calls and waits (at most the grace period) for calls in flight.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    auth: Arc<Authenticator>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AccountRegistryServer<AccountRegistryService>>()
        .await;
    health_reporter
        .set_serving::<PayoutResolverServer<PayoutResolverService>>()
        .await;
    health_reporter
        .set_serving::<OversightServer<OversightService>>()
        .await;
    health_reporter
        .set_serving::<PopulationSyncServer<PopulationSyncService>>()
        .await;
    health_reporter
        .set_serving::<ChangeFeedServer<ChangeFeedService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let max = options.max_message_bytes;
    let state_shutdown = state.shutting_down.clone();
    let registry = AccountRegistryServer::new(AccountRegistryService::new(state.clone()))
        .max_decoding_message_size(max);
    let resolver = PayoutResolverServer::new(PayoutResolverService::new(state.clone()))
        .max_decoding_message_size(max);
    let feed =
        ChangeFeedServer::new(ChangeFeedService::new(state.clone())).max_decoding_message_size(max);
    let population = PopulationSyncServer::new(PopulationSyncService::new(state.clone()))
        .max_decoding_message_size(max);
    let oversight =
        OversightServer::new(OversightService::new(state)).max_decoding_message_size(max);

    // Once shutdown is signalled, mark the services NOT_SERVING so load balancers stop
    // sending work, then let tonic drain.
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let reporter = health_reporter.clone();
    let shutting_down = state_shutdown.clone();
    let drain = async move {
        shutdown.await;
        tracing::info!("shutdown requested: draining calls in flight");
        // Live subscriptions end now (clients resume from their last position elsewhere).
        shutting_down.send_replace(true);
        reporter
            .set_not_serving::<AccountRegistryServer<AccountRegistryService>>()
            .await;
        reporter
            .set_not_serving::<PayoutResolverServer<PayoutResolverService>>()
            .await;
        let _ = signalled_tx.send(());
    };
    let mut builder = Server::builder();
    if let Some(tls) = options.tls {
        builder = builder.tls_config(tls)?;
    }
    let server = builder
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .timeout(options.request_timeout)
        .layer(AuthLayer::new(auth))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(registry)
        .add_service(resolver)
        .add_service(oversight)
        .add_service(population)
        .add_service(feed)
        .serve_with_incoming_shutdown(
            // A connection must complete its handshake within the call timeout (at most
            // 10 s), or it is closed: see `transport`.
            crate::transport::guarded(
                listener,
                options.request_timeout.min(Duration::from_secs(10)),
            ),
            drain,
        );
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result?,
        _ = async {
            let _ = signalled_rx.await;
            tokio::time::sleep(options.shutdown_grace).await;
        } => tracing::warn!("grace period over: stopping with calls still in flight"),
    }
    tracing::info!("server stopped");
    Ok(())
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
