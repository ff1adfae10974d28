//! The gRPC layer: thin handlers that convert, call the store, and convert back.
//!
//! Incoming messages become validated domain commands in `convert.rs`; storage results
//! become messages there too. The one mapping from errors to `tonic::Status` is
//! [`Call::fail`]. Handlers hold no SQL and no rules.

use std::sync::Arc;
use std::time::Duration;

use crate::background::access_log::AccessLog;
use crate::domain::Timestamp;
use crate::security::limits::Limits;
use crate::store::Store;

mod call;
mod change_feed;
pub mod convert;
mod oversight;
pub mod page;
mod population;
pub mod priority;
mod registry;
mod resolver;
mod transport;

pub use call::{denied_status, Call, ERROR_DOMAIN};
/// A feed event as subscribers see it; the JetStream relay publishes the same form.
pub use change_feed::event_out;
pub use change_feed::ChangeFeedHandler;
pub use oversight::OversightHandler;
pub use population::PopulationSyncHandler;
pub use registry::AccountRegistryHandler;
pub use resolver::PayoutResolverHandler;
pub use transport::{DeadlineLayer, DecodeErrorLayer};

/// What every handler needs. Built by the composition root (`App::build`), which also
/// starts the background tasks whose handles it holds; building one starts nothing.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub cooling_off: Duration,
    /// The clock; tests inject a fixed one to exercise cooling-off without sleeping.
    pub clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    /// Where reads of citizens' data are recorded.
    pub access: AccessLog,
    /// Batch transactions of one sync stream running at once (one while unary writes
    /// arrive: `unary_writes`).
    pub sync_batches_in_flight: usize,
    /// Most records of a sync stream per transaction (`sync_batch_records`).
    pub sync_batch_records: usize,
    /// When this instance last admitted a unary write: sync streams yield to them.
    pub unary_writes: Arc<priority::UnaryWrites>,
    /// Rate limits and the in-flight limit.
    pub limits: Arc<Limits>,
    /// Set when the server begins a graceful shutdown: open-ended streams (change-feed
    /// subscriptions) end so that the drain does not wait on them.
    pub shutting_down: Arc<tokio::sync::watch::Sender<bool>>,
    /// The program codes of the reference data this server migrated with (so that a
    /// BatchResolve request naming an unknown program is answered in place), each with
    /// its reservation scope when its payments may be reserved.
    pub programs: Arc<
        std::collections::HashMap<String, Option<crate::domain::reservation::ReservationScope>>,
    >,
}

impl AppState {
    pub fn now(&self) -> Timestamp {
        (self.clock)()
    }
}
