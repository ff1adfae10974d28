//! One call's identity and the one place a failure becomes a `tonic::Status`.
//!
//! [`Call`] is what every handler starts with: who is calling (from the auth layer),
//! under which request id, and why (the purpose of a read). It admits the call under the
//! rate limits, records reads in the access log, builds write contexts with their
//! idempotency keys, and turns refusals and storage failures into statuses with
//! `google.rpc` details ([`Call::reject`], [`Call::fail`]).

use std::collections::HashMap;
use std::time::Duration;

use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt};
use uuid::Uuid;

use super::{convert, AppState};
use crate::domain::assertion::Authority;
use crate::domain::{bounded_text, Category, CitizenId, CitizenLookup, Reason, Rejection};
use crate::security::auth::{Caller, Credential, RequestId};
use crate::security::limits::{Admission, Refused, RpcClass};
use crate::security::Scope;
use crate::store::{AccessEntry, Idempotency, StoreError, WriteContext};

/// The `google.rpc.ErrorInfo.domain` of every error this service sends.
pub const ERROR_DOMAIN: &str = "payoutregistry.gov.vn";

/// Longest purpose accepted.
const MAX_PURPOSE_LEN: usize = 200;

/// One call's identity: who is calling, under which request id, and why.
pub struct Call {
    pub caller: Caller,
    pub request_id: Uuid,
    /// The `x-purpose` metadata, if sent.
    purpose_header: Option<String>,
    /// The `x-acting-citizen-id` metadata, if sent: the citizen a `citizen.self` client
    /// (VNeID) acts for on this call.
    acting_citizen_header: Option<String>,
}

/// The metadata naming the citizen a `citizen.self` client acts for.
pub const ACTING_CITIZEN_HEADER: &str = "x-acting-citizen-id";

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
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok(Call {
            caller,
            request_id,
            purpose_header: header("x-purpose"),
            acting_citizen_header: header(ACTING_CITIZEN_HEADER),
        })
    }

    /// Admits the call under the caller's rate limit for `class` and the in-flight
    /// limit. Keep the admission until the call is answered.
    pub fn admit(&self, state: &AppState, class: RpcClass) -> Result<Admission, Status> {
        state
            .limits
            .admit(&self.caller.client_id, class, std::time::Instant::now())
            .map_err(|refused| {
                let (code, reason, message, retry) = match refused {
                    Refused::RateLimited(wait) => (
                        Code::ResourceExhausted,
                        "RATE_LIMITED",
                        "rate limit exceeded for this client; retry after the delay in RetryInfo",
                        wait,
                    ),
                    Refused::Overloaded => (
                        Code::Unavailable,
                        "OVERLOADED",
                        "the registry is at its limit of calls in flight; retry shortly",
                        Duration::from_millis(100),
                    ),
                };
                tracing::warn!(
                    reason,
                    retry_ms = retry.as_millis() as u64,
                    "call not admitted"
                );
                let mut details = ErrorDetails::new();
                details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
                details.set_retry_info(Some(retry));
                details.set_request_info(self.request_id.to_string(), "");
                Status::with_error_details(code, message, details)
            })
    }

    /// Charges `records` to the caller's bulk rate and waits as long as it asks: a bulk
    /// stream over its rate is slowed down, not cut.
    pub async fn pace(&self, state: &AppState, records: usize) {
        let wait = state.limits.pace(
            &self.caller.client_id,
            RpcClass::Bulk,
            records as f64,
            std::time::Instant::now(),
        );
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// The purpose of a read: the request's `purpose` field, else `x-purpose` metadata.
    /// Reads of citizens' data without one are refused.
    pub fn purpose(&self, field: &str) -> Result<String, Status> {
        let raw = if field.trim().is_empty() {
            self.purpose_header.as_deref().unwrap_or("")
        } else {
            field
        };
        let purpose = bounded_text("purpose", raw, MAX_PURPOSE_LEN).map_err(|r| self.reject(r))?;
        if purpose.is_empty() {
            return Err(self.reject(Rejection::field(
                Reason::PurposeRequired,
                "purpose",
                "state why you read this citizen's data: the `purpose` field or `x-purpose` metadata",
            )));
        }
        Ok(purpose)
    }

    /// Records that this call read these citizens' data, and waits until the record is
    /// committed: no answer leaves without its access-log entry.
    pub async fn log_reads(
        &self,
        state: &AppState,
        method: &str,
        purpose: &str,
        citizens: impl IntoIterator<Item = CitizenId>,
    ) -> Result<(), Status> {
        let mut seen = std::collections::HashSet::new();
        let entries: Vec<AccessEntry> = citizens
            .into_iter()
            .filter(|c| seen.insert(c.clone()))
            .map(|citizen_id| AccessEntry {
                citizen_id,
                client_id: self.caller.client_id.clone(),
                method: method.to_owned(),
                purpose: purpose.to_owned(),
                accessed_at: state.now(),
                request_id: self.request_id,
            })
            .collect();
        state.access.record(entries).await.map_err(|_| {
            self.internal(
                Code::Unavailable,
                "ACCESS_LOG_UNAVAILABLE",
                "the access log cannot be written, so the read is refused; retry shortly",
            )
        })
    }

    /// The citizen a lookup names: a citizen id as sent, or the citizen a legacy CMND
    /// number belongs to (`None` when no citizen has that number).
    pub async fn find_citizen(
        &self,
        state: &AppState,
        field: &str,
        raw: &str,
    ) -> Result<Option<CitizenId>, Status> {
        match convert::citizen_lookup(field, raw).map_err(|r| self.reject(r))? {
            CitizenLookup::Id(id) => Ok(Some(id)),
            CitizenLookup::Legacy(legacy) => Ok(state
                .store
                .citizens_by_legacy_id(std::slice::from_ref(&legacy))
                .await
                .map_err(|e| self.fail(e))?
                .remove(&legacy)),
        }
    }

    /// What the caller is entitled to assert about accounts (see `domain::assertion`).
    pub fn authority(&self) -> Authority {
        Authority {
            providers: self.caller.providers.clone(),
            in_person: self.caller.has(Scope::VerifyInPerson),
            payer: self.caller.has(Scope::PayoutsReport),
        }
    }

    /// Refuses a read of `raw_citizen` (the request's citizen id, as sent) unless the
    /// caller holds `broad`, or holds `citizen.self` and acts on this call for exactly
    /// that citizen: a certificate-authenticated client (VNeID) naming the citizen in
    /// `x-acting-citizen-id`. Checked before any lookup, so a refusal reveals nothing
    /// about the citizen asked for.
    pub fn may_read_citizen(&self, broad: Scope, raw_citizen: &str) -> Result<(), Status> {
        if self.caller.has(broad) {
            return Ok(());
        }
        let denied = |message: &str| {
            self.reject(Rejection::new(
                Reason::NotActingForCitizen,
                message.to_owned(),
            ))
        };
        if !self.caller.has(Scope::CitizenSelf) {
            return Err(Status::permission_denied(format!(
                "client {} lacks the scope {broad} for this request",
                self.caller.client_id
            )));
        }
        if self.caller.credential != Credential::Certificate {
            return Err(denied(
                "acting for a citizen needs a client certificate (the citizen's identity is \
                 asserted by the certificate's holder)",
            ));
        }
        let Some(acting) = self.acting_citizen_header.as_deref() else {
            return Err(denied(
                "citizen.self reads name the citizen the call acts for in x-acting-citizen-id",
            ));
        };
        let acting = CitizenId::parse(acting.trim())
            .map_err(|r| self.reject(r.at(ACTING_CITIZEN_HEADER)))?;
        if raw_citizen.trim() != acting.as_str() {
            return Err(denied(
                "a citizen.self client may read only the citizen it acts for on this call",
            ));
        }
        Ok(())
    }

    /// Refuses the call unless the caller holds `scope` (for requirements finer than
    /// the per-method table in `auth`).
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
            authority: self.authority(),
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
            Category::OutOfRange => Code::OutOfRange,
            Category::Unavailable => Code::Unavailable,
            Category::PermissionDenied => Code::PermissionDenied,
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
