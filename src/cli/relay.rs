//! `relay`: publishes the change feed to NATS JetStream (the engine is
//! `crate::tools::relay`); flags here override the `[relay]` settings.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;

use crate::app::{shutdown_signal, FeedHost};
use crate::config::{RelaySettings, Secret, Settings};
use crate::telemetry::metrics as m;

/// `relay`: flags that override the `[relay]` settings.
#[derive(Args, Debug, Default)]
pub struct RelayArgs {
    /// NATS server URL (default nats://127.0.0.1:4222).
    #[arg(long, env = "PAYOUT_REGISTRY_NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,
    /// JetStream stream (default PAYOUT_EVENTS; created when missing).
    #[arg(long)]
    pub stream: Option<String>,
    /// Subject prefix (default payoutregistry.v1.events).
    #[arg(long)]
    pub subject_prefix: Option<String>,
    /// Name of the relay's durable feed position (default jetstream-relay).
    #[arg(long)]
    pub consumer: Option<String>,
    /// Publish account numbers in clear (only for a stream whose readers may see them).
    #[arg(long)]
    pub full_account_numbers: bool,
    /// Publish the feed again into a stream that lost what this relay had published
    /// (deleted and recreated, purged): from the stream's last relayed position, as far
    /// as retention has kept the feed. Without it such a stream is refused.
    #[arg(long)]
    pub refill: bool,
}

impl RelayArgs {
    /// The settings with these flags applied.
    pub fn apply(self, mut settings: RelaySettings) -> anyhow::Result<RelaySettings> {
        if let Some(url) = self.nats_url {
            settings.nats_url = Secret::new(url);
        }
        if let Some(stream) = self.stream {
            settings.stream = stream;
        }
        if let Some(prefix) = self.subject_prefix {
            settings.subject_prefix = prefix;
        }
        if let Some(consumer) = self.consumer {
            settings.consumer = consumer;
        }
        settings.full_account_numbers |= self.full_account_numbers;
        settings.refill = self.refill;
        settings.validate().map_err(anyhow::Error::msg)?;
        Ok(settings)
    }
}

/// `relay`: opens the configured store and relays until SIGTERM or Ctrl-C, with its
/// metrics on `metrics_listen` when set.
pub async fn run(config: Option<&Path>, args: RelayArgs) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    crate::telemetry::init(settings.log_format, &settings.log_level);
    let relay = args.apply(settings.relay.clone())?;
    let host = FeedHost::build(&settings).await?;
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = settings.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding metrics_listen {addr}"))?;
        let store = host.store.clone();
        let refresh: m::Refresh = Arc::new(move || {
            let store = store.clone();
            Box::pin(async move {
                // The lag is the feed's head beyond the relay's position (both as this
                // process sees them); a database that does not answer leaves it as it was.
                if let Ok(head) = store.feed_head().await {
                    let position = crate::tools::relay::position_gauge();
                    metrics::gauge!(m::RELAY_LAG_EVENTS).set((head as f64 - position).max(0.0));
                }
            })
        });
        tokio::spawn(m::serve(listener, refresh, async {
            let _ = metrics_stopped.await;
        }));
    }
    let stats = crate::tools::relay::run(host.store.clone(), relay, shutdown_signal()).await;
    drop(stop_metrics);
    let stats = stats?;
    tracing::info!(
        published = stats.published,
        skipped = stats.skipped,
        restarts = stats.restarts,
        position = stats.position,
        "relay stopped"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_relay_settings_and_are_checked() {
        let args = RelayArgs {
            stream: Some("S1".into()),
            full_account_numbers: true,
            ..Default::default()
        };
        let s = args.apply(RelaySettings::default()).unwrap();
        assert_eq!(s.stream, "S1");
        assert!(s.full_account_numbers);
        assert_eq!(s.consumer, "jetstream-relay");
        let bad = RelayArgs {
            subject_prefix: Some("a.*".into()),
            ..Default::default()
        };
        assert!(bad.apply(RelaySettings::default()).is_err());
    }
}
