//! The gRPC layer: thin handlers that convert, call the store, and convert back.
//!
//! Incoming messages become validated domain commands in `convert.rs`; storage results
//! become messages there too. The one mapping from errors to `tonic::Status` is
//! [`Call::fail`]. Handlers hold no SQL and no rules.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt};
use uuid::Uuid;

use crate::auth::{Caller, RequestId, Scope};
use crate::domain::{Category, Reason, Rejection, Timestamp};
use crate::store::{Idempotency, Store, StoreError, WriteContext};

pub mod convert;
mod registry;
mod resolver;

pub use registry::AccountRegistryService;
pub use resolver::PayoutResolverService;

/// The `google.rpc.ErrorInfo.domain` of every error this service sends.
pub const ERROR_DOMAIN: &str = "payoutregistry.gov.vn";

/// What every handler needs.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub cooling_off: Duration,
    /// The clock; tests inject a fixed one to exercise cooling-off without sleeping.
    pub clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, cooling_off: Duration) -> AppState {
        AppState {
            store,
            cooling_off,
            clock: Arc::new(Timestamp::now),
        }
    }

    pub fn now(&self) -> Timestamp {
        (self.clock)()
    }
}

/// One call's identity: who is calling and under which request id.
pub struct Call {
    pub caller: Caller,
    pub request_id: Uuid,
}

impl Call {
    /// Reads the caller the auth layer attached. A call without one never passed the
    /// layer, which is a wiring bug: refuse it rather than run it anonymously.
    pub fn of<T>(request: &Request<T>) -> Result<Call, Status> {
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0)
            .unwrap_or_else(Uuid::new_v4);
        let caller = request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("missing credentials"))?;
        Ok(Call { caller, request_id })
    }

    pub fn require(&self, scope: Scope) -> Result<(), Status> {
        if self.caller.has(scope) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "client {} lacks the scope {scope} for this request",
                self.caller.client_id
            )))
        }
    }

    /// The write context for a write carrying `idempotency_key`: the key must be a UUID.
    /// `request` is hashed without its key, together with `operation`, so that the same
    /// key sent with another request or to another operation is detected.
    pub fn write_context<M: Message + Clone>(
        &self,
        state: &AppState,
        operation: &str,
        idempotency_key: &str,
        request: &M,
        clear_key: impl FnOnce(&mut M),
    ) -> Result<WriteContext, Status> {
        let key = Uuid::parse_str(idempotency_key.trim()).map_err(|_| {
            self.reject(Rejection::field(
                Reason::IdempotencyKeyInvalid,
                "idempotency_key",
                "idempotency_key must be a UUID chosen by the caller for this write",
            ))
        })?;
        let mut without_key = request.clone();
        clear_key(&mut without_key);
        let mut hasher = Sha256::new();
        hasher.update(operation.as_bytes());
        hasher.update([0]);
        hasher.update(without_key.encode_to_vec());
        Ok(WriteContext {
            actor: self.caller.client_id.clone(),
            idempotency: Some(Idempotency {
                key,
                request_hash: hasher.finalize().to_vec(),
            }),
            now: state.now(),
        })
    }

    /// A refused request as the client sees it: the status code of its category, an
    /// ErrorInfo with the stable reason, and a BadRequest field violation when a field
    /// is at fault.
    pub fn reject(&self, r: Rejection) -> Status {
        let code = match r.category() {
            Category::InvalidArgument => Code::InvalidArgument,
            Category::FailedPrecondition => Code::FailedPrecondition,
            Category::NotFound => Code::NotFound,
            Category::Aborted => Code::Aborted,
            Category::AlreadyExists => Code::AlreadyExists,
        };
        let mut details = ErrorDetails::new();
        details.set_error_info(r.reason.as_str(), ERROR_DOMAIN, HashMap::new());
        if let (Category::InvalidArgument, Some(field)) = (r.category(), &r.field) {
            details.add_bad_request_violation(field.clone(), r.message.clone());
        }
        details.set_request_info(self.request_id.to_string(), "");
        tracing::info!(
            reason = r.reason.as_str(),
            field = r.field.as_deref(),
            "request refused"
        );
        Status::with_error_details(code, r.message, details)
    }

    /// The one mapping from a storage failure to what the client sees. Internal errors
    /// are logged with their whole source chain and reach the client only as a request id.
    pub fn fail(&self, e: StoreError) -> Status {
        match e {
            StoreError::Rejected(r) => self.reject(r),
            StoreError::Database(
                ref db @ (sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed),
            ) => {
                tracing::error!(error = %db, "database unavailable");
                self.internal(
                    Code::Unavailable,
                    "SERVICE_UNAVAILABLE",
                    "the registry is temporarily unavailable; retry with backoff",
                )
            }
            other => {
                tracing::error!(error = %other, source = ?std::error::Error::source(&other), "internal error");
                self.internal(Code::Internal, "INTERNAL", "internal error")
            }
        }
    }

    fn internal(&self, code: Code, reason: &str, message: &str) -> Status {
        let mut details = ErrorDetails::new();
        details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
        details.set_request_info(self.request_id.to_string(), "");
        Status::with_error_details(
            code,
            format!("{message} (request id {})", self.request_id),
            details,
        )
    }
}
