//! The background room: work that runs beside the calls, started by the composition
//! root (`App::build`, in the app room above this one), never by a constructor.
//!
//! - [`sequencer`]: gives committed change-feed events their gapless feed positions.
//! - [`pruner`]: deletes events past the retention horizon.
//! - [`access_log`]: the writers that record every read before it is answered (group
//!   commit), and the handle handlers record through.
//! - [`access_spool`]: with `[access_log] spool_dir`, the instance's local spool that
//!   reads are recorded in instead, and its shipper to the database.
//! - [`follower`]: follows the change feed (the resolution cache drops what it names)
//!   and polls the read replicas' positions.
//! - [`readiness`]: whether the instance may be sent calls (database, sequencer, access
//!   log), for the health service.
//!
//! These tasks talk to the store only; the gRPC layer holds their handles.

pub mod access_log;
pub mod access_spool;
pub mod follower;
pub mod pruner;
pub mod readiness;
pub mod sequencer;

/// A background task, aborted when this handle is dropped: the app holds its tasks for
/// as long as it runs, and a test's app takes its tasks with it.
pub struct BackgroundTask(tokio::task::JoinHandle<()>);

impl BackgroundTask {
    /// Spawns `task` on the current Tokio runtime.
    pub fn spawn(task: impl std::future::Future<Output = ()> + Send + 'static) -> BackgroundTask {
        BackgroundTask(tokio::spawn(task))
    }
}

impl BackgroundTask {
    /// Takes charge of a task already spawned.
    pub fn from_handle(handle: tokio::task::JoinHandle<()>) -> BackgroundTask {
        BackgroundTask(handle)
    }
}

impl Drop for BackgroundTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
