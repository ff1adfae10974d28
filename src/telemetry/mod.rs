//! What the registry tells its operators: logs, metrics, and the layer that sees every
//! call.
//!
//! Logs: one JSON object per line by default, with the request id, method and client of
//! the call in every line (from the `rpc` span of [`calls::CallLayer`], which the auth
//! layer completes with the client). Metrics: Prometheus series (see [`metrics`]) on
//! their own listener.
//!
//! Personal data never reaches a log in clear: citizen ids and account references are
//! logged through their masked `Display` forms, and refusal messages never quote input.
//! `tests/log_masking.rs` runs calls with the logs captured and searches them for the
//! test data.

pub mod calls;
pub mod metrics;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Installs the global subscriber, writing to stderr. `RUST_LOG` overrides `level`.
pub fn init(format: LogFormat, level: &str) {
    init_with_writer(format, level, std::io::stderr);
}

/// Installs the global subscriber writing to `writer` (tests capture logs with it).
pub fn init_with_writer<W>(format: LogFormat, level: &str, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = fmt().with_env_filter(filter).with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
