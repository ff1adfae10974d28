//! The bulk tools: programs that drive the registry from outside, as its users' systems
//! would. The server never imports this room.
//!
//! - [`demo`]: a realistic synthetic population, deterministic from a seed, at any scale.
//! - [`csv`]: the citizens and accounts CSV formats (what the population platform
//!   exports and `demo-data` writes).
//! - [`import`]: CSV files streamed through PopulationSync with a checkpoint to resume
//!   from, payroll files resolved through BatchResolve, demo populations written straight
//!   into a store.
//! - [`loadgen`]: the load generator behind `bench`, with its baselines.
//! - [`relay`]: the engine that publishes the change feed to NATS JetStream exactly once
//!   and in order.
//!
//! They talk to a running registry through [`crate::client`]; the relay and the direct
//! loaders are handed a store by the command line, which gets it from the app room.

pub mod csv;
pub mod demo;
pub mod import;
pub mod loadgen;
pub mod relay;
