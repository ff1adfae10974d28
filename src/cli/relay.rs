//! `relay`: publishes the change feed to NATS JetStream (the engine is
//! `crate::tools::relay`); flags here override the `[relay]` settings.

use std::path::Path;

use clap::Args;

use crate::app::{shutdown_signal, FeedHost};
use crate::config::{RelaySettings, Secret, Settings};

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
        settings.validate().map_err(anyhow::Error::msg)?;
        Ok(settings)
    }
}

/// `relay`: opens the configured store and relays until SIGTERM or Ctrl-C.
pub async fn run(config: Option<&Path>, args: RelayArgs) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    crate::telemetry::init(settings.log_format, &settings.log_level);
    let relay = args.apply(settings.relay.clone())?;
    let host = FeedHost::build(&settings).await?;
    let stats = crate::tools::relay::run(host.store.clone(), relay, shutdown_signal()).await?;
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
