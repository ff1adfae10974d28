//! One call's identity and the one place a failure becomes a `tonic::Status`.
//!
//! [`Call`] is what every handler starts with: who is calling (from the auth layer),
//! under which request id, and why (the purpose of a read). It admits the call under the
//! rate limits, records reads in the access log, builds write contexts with their
//! idempotency keys, and turns refusals and storage failures into statuses with
//! `google.rpc` details ([`Call::reject`], [`Call::fail`]).

use std::collections::HashMap;
use std::time::Duration;

use foldhash::HashSetExt;
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt};
use uuid::Uuid;

use super::{convert, AppState};
use crate::domain::assertion::Authority;
use crate::domain::{bounded_text, Category, CitizenId, CitizenLookup, Reason, Rejection};
use crate::security::auth::{Caller, Credential, Denied, Forbidden, RequestId, Unauthenticated};
use crate::security::limits::{Admission, Refused, RpcClass, Shape};
use crate::security::Scope;
use crate::store::{AccessRead, Fault, Idempotency, StoreError, WriteContext};
use crate::telemetry::metrics as m;

/// The `google.rpc.ErrorInfo.domain` of every error this service sends.
pub const ERROR_DOMAIN: &str = "payoutregistry.gov.vn";

/// Longest purpose accepted.
const MAX_PURPOSE_LEN: usize = 200;

/// One call's identity: who is calling, under which request id, and why.
pub struct Call {
    pub caller: Caller,
    pub request_id: RequestId,
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
            .cloned()
            .unwrap_or_else(RequestId::new);
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

    /// Admits a unary call under the caller's rate limit for `class` and the in-flight
    /// limit. Keep the admission until the call is answered.
    pub fn admit(&self, state: &AppState, class: RpcClass) -> Result<Admission, Status> {
        self.admit_as(state, class, Shape::Unary)
    }

    /// Admits a stream of `method`, in the streams' own pool (so that open streams
    /// cannot starve unary calls), counted in the open-streams gauge. Keep the admission
    /// for the stream's life.
    pub fn admit_stream(
        &self,
        state: &AppState,
        class: RpcClass,
        method: &'static str,
    ) -> Result<StreamAdmission, Status> {
        let admission = self.admit_as(state, class, Shape::Stream)?;
        metrics::gauge!(m::STREAMS_ACTIVE, "grpc_method" => method).increment(1.0);
        Ok(StreamAdmission {
            _admission: admission,
            method,
        })
    }

    fn admit_as(
        &self,
        state: &AppState,
        class: RpcClass,
        shape: Shape,
    ) -> Result<Admission, Status> {
        if *state.shutting_down.borrow() {
            return Err(shutting_down(&self.request_id));
        }
        let admission = state
            .limits
            .admit(
                &self.caller.client_id,
                class,
                shape,
                std::time::Instant::now(),
            )
            .map_err(|refused| {
                let labels = [
                    ("client", self.caller.client_id.clone()),
                    ("class", class.as_str().to_owned()),
                ];
                let (refusal, retry) = match refused {
                    Refused::RateLimited(wait) => {
                        metrics::counter!(m::RATE_LIMITED, &labels).increment(1);
                        (
                            Rejection::new(
                                Reason::RateLimited,
                                "rate limit exceeded for this client; retry after the delay in \
                                 RetryInfo",
                            )
                            .with("class", class.as_str()),
                            wait,
                        )
                    }
                    Refused::Overloaded => {
                        metrics::counter!(m::SHED, &labels).increment(1);
                        let what = match shape {
                            Shape::Unary => "calls",
                            Shape::Stream => "streams",
                        };
                        (
                            Rejection::new(
                                Reason::Overloaded,
                                format!(
                                    "the registry is at its limit of {what} in flight; retry \
                                     shortly"
                                ),
                            ),
                            Duration::from_millis(100),
                        )
                    }
                };
                tracing::warn!(
                    reason = refusal.reason.as_str(),
                    retry_ms = retry.as_millis() as u64,
                    "call not admitted"
                );
                status_of(&refusal, &self.request_id, Some(retry))
            })?;
        if class == RpcClass::Write && shape == Shape::Unary {
            // Sync streams run one batch at a time while unary writes arrive.
            state.unary_writes.admitted();
        }
        Ok(admission)
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
        // Each citizen once, in the call's order: the log writes the read as one row.
        let all: Vec<CitizenId> = citizens.into_iter().collect();
        let first: Vec<bool> = {
            let mut seen = foldhash::HashSet::with_capacity(all.len());
            all.iter().map(|c| seen.insert(c.as_str())).collect()
        };
        let citizens: Vec<CitizenId> = all
            .into_iter()
            .zip(first)
            .filter_map(|(c, first)| first.then_some(c))
            .collect();
        let read = AccessRead {
            citizens,
            client_id: self.caller.client_id.clone(),
            method: method.to_owned(),
            purpose: purpose.to_owned(),
            accessed_at: state.now(),
            request_id: self.request_id.id,
        };
        state
            .access
            .record(read)
            .await
            .map_err(|_| self.access_log_unavailable())
    }

    /// The refusal of a read whose access-log entries cannot be written (or, for the
    /// log's own listing, shipped), with a retry delay.
    pub fn access_log_unavailable(&self) -> Status {
        let refusal = Rejection::new(
            Reason::AccessLogUnavailable,
            "the access log cannot be written, so the read is refused; retry shortly",
        );
        status_of(&refusal, &self.request_id, Some(Duration::from_secs(1)))
    }

    /// The citizen a lookup names: a citizen id as sent, or the citizen a legacy CMND
    /// number belongs to (`None` when no citizen has that number).
    pub async fn find_citizen(
        &self,
        state: &AppState,
        field: &str,
        raw: &str,
    ) -> Result<Option<CitizenId>, Status> {
        let year = state.now().date().year();
        match convert::citizen_lookup(field, raw, year).map_err(|r| self.reject(r))? {
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
            return Err(self.reject(scope_missing(
                &self.caller.client_id,
                &[broad, Scope::CitizenSelf],
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
            Err(self.reject(scope_missing(&self.caller.client_id, &[scope])))
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

    /// A refused request as the client sees it (see [`status_of`]), logged with its
    /// reason.
    pub fn reject(&self, r: Rejection) -> Status {
        tracing::info!(
            reason = r.reason.as_str(),
            field = r.field.as_deref(),
            "request refused"
        );
        status_of(&r, &self.request_id, None)
    }

    /// The one mapping from a storage failure to what the client sees (see
    /// [`failure_status`]).
    pub fn fail(&self, e: StoreError) -> Status {
        failure_status(&self.request_id, e)
    }
}

/// A storage failure as the client sees it. A refusal keeps its reason. The database's
/// own failures are UNAVAILABLE with RetryInfo, so that clients' retry policies retry
/// them: DATABASE_UNAVAILABLE, DATABASE_TIMEOUT or DATABASE_CONTENTION. Anything else is a bug: INTERNAL, logged with its whole source
/// chain, and the client sees only a request id.
pub fn failure_status(request_id: &RequestId, e: StoreError) -> Status {
    let fault = match e {
        StoreError::Rejected(r) => {
            tracing::info!(
                reason = r.reason.as_str(),
                field = r.field.as_deref(),
                "request refused"
            );
            return status_of(&r, request_id, None);
        }
        ref other => other.fault(),
    };
    let Some(fault) = fault else {
        tracing::error!(error = %e, source = ?std::error::Error::source(&e), "internal error");
        return status_of(
            &Rejection::new(Reason::Internal, "internal error"),
            request_id,
            None,
        );
    };
    if matches!(fault, Fault::Timeout) && crate::store::deadline_passed() {
        // The statement timeout was the call's own deadline (the store lowers it to the
        // time left): the client's deadline ran out, the database is fine. Answered as
        // the deadline layer answers, whichever of the two timers fired first.
        tracing::info!("the call's deadline stopped its database statement");
        let refusal = Rejection::new(
            Reason::DeadlineExceeded,
            "the call did not finish within its deadline; its database statement was \
             stopped and nothing was written: retry with the same idempotency key",
        );
        return status_of(&refusal, request_id, None);
    }
    metrics::counter!(m::DATABASE_ERRORS, "kind" => fault.as_str()).increment(1);
    tracing::warn!(error = %e, source = ?std::error::Error::source(&e), kind = fault.as_str(), "database failure answered UNAVAILABLE");
    let (reason, message, retry) = match fault {
        Fault::Unavailable => (
            Reason::DatabaseUnavailable,
            "the registry's database cannot be reached; retry with backoff",
            Duration::from_secs(1),
        ),
        Fault::Timeout => (
            Reason::DatabaseTimeout,
            "a database statement took longer than the registry allows; nothing was written; \
             retry with backoff",
            Duration::from_secs(1),
        ),
        Fault::Contention => (
            Reason::DatabaseContention,
            "concurrent writes kept conflicting; nothing was written; retry with the same \
             idempotency key",
            Duration::from_millis(100),
        ),
    };
    status_of(&Rejection::new(reason, message), request_id, Some(retry))
}

/// An open stream's admission: its slot in the streams' pool and its place in the
/// open-streams gauge, both given back when it is dropped.
pub struct StreamAdmission {
    _admission: Admission,
    method: &'static str,
}

impl Drop for StreamAdmission {
    fn drop(&mut self) {
        metrics::gauge!(m::STREAMS_ACTIVE, "grpc_method" => self.method).decrement(1.0);
    }
}

/// A call that arrives while the server shuts down: UNAVAILABLE, SHUTTING_DOWN, to be
/// retried (a load balancer sends it to another instance).
pub fn shutting_down(request_id: &RequestId) -> Status {
    status_of(
        &Rejection::new(
            Reason::ShuttingDown,
            "this instance is shutting down; retry (another instance will answer)",
        ),
        request_id,
        Some(Duration::from_millis(200)),
    )
}

/// The refusal of a caller without any of `scopes` (ErrorInfo metadata `required_scopes`).
pub fn scope_missing(client: &str, scopes: &[Scope]) -> Rejection {
    let names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    Rejection::new(
        Reason::ScopeMissing,
        format!(
            "client {client} lacks the scope for this call (needs {})",
            names.join(" or ")
        ),
    )
    .with("required_scopes", names.join(","))
}

/// A call refused by the auth layer, as the client sees it: UNAUTHENTICATED or
/// PERMISSION_DENIED with the reason (and, for a missing scope, the scopes required) in
/// its ErrorInfo, like every other refusal.
pub fn denied_status(denied: &Denied, request_id: &RequestId) -> Status {
    let refusal = match denied {
        Denied::Unauthenticated(why) => Rejection::new(
            match why {
                Unauthenticated::Missing => Reason::CredentialsMissing,
                Unauthenticated::Invalid(_) => Reason::CredentialsInvalid,
                Unauthenticated::Conflict => Reason::CredentialsConflict,
                Unauthenticated::TokenRequiresTls => Reason::TokenRequiresTls,
            },
            denied.message(),
        ),
        Denied::PermissionDenied(Forbidden::ScopeMissing { client, required }) => {
            scope_missing(client, required)
        }
        Denied::PermissionDenied(Forbidden::MethodNotOpen) => {
            Rejection::new(Reason::MethodNotOpen, denied.message())
        }
    };
    status_of(&refusal, request_id, None)
}

/// A status the transport made while decoding a request, as the client's fault it is:
/// an undecodable message (tonic answers INTERNAL with the decoder's text) becomes
/// INVALID_ARGUMENT with reason REQUEST_MALFORMED, and a message over the size limit
/// (OUT_OF_RANGE) becomes RESOURCE_EXHAUSTED with reason REQUEST_TOO_LARGE and the limit
/// in the ErrorInfo metadata. Statuses the registry made itself carry details and are
/// returned unchanged, and so is anything else.
pub fn transport_status(status: Status, request_id: &RequestId) -> Status {
    if !status.details().is_empty() {
        return status;
    }
    let refusal = match status.code() {
        Code::Internal => {
            tracing::info!(cause = status.message(), "undecodable request");
            Rejection::new(
                Reason::RequestMalformed,
                format!("the request could not be decoded: {}", status.message()),
            )
        }
        Code::OutOfRange if status.message().contains("message length too large") => {
            let limit = status
                .message()
                .rsplit("the limit is: ")
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or("")
                .to_owned();
            tracing::info!(cause = status.message(), "request over the size limit");
            Rejection::new(
                Reason::RequestTooLarge,
                format!("the request message is larger than the server accepts ({limit} bytes)"),
            )
            .with("limit_bytes", limit)
        }
        _ => return status,
    };
    status_of(&refusal, request_id, None)
}

/// The gRPC status code of each category of refusal.
fn code_of(category: Category) -> Code {
    match category {
        Category::InvalidArgument => Code::InvalidArgument,
        Category::FailedPrecondition => Code::FailedPrecondition,
        Category::NotFound => Code::NotFound,
        Category::Aborted => Code::Aborted,
        Category::AlreadyExists => Code::AlreadyExists,
        Category::OutOfRange => Code::OutOfRange,
        Category::Unavailable => Code::Unavailable,
        Category::PermissionDenied => Code::PermissionDenied,
        Category::Unauthenticated => Code::Unauthenticated,
        Category::ResourceExhausted => Code::ResourceExhausted,
        Category::DeadlineExceeded => Code::DeadlineExceeded,
        Category::Internal => Code::Internal,
    }
}

/// The one mapping from a refusal to the status a client receives: the code of its
/// category; an ErrorInfo with the stable reason and its metadata (the field, a limit,
/// the scopes required); a BadRequest field violation when a field is at fault; the
/// request id (RequestInfo); a RetryInfo delay when retrying helps. Internal errors and
/// unavailability name the request id in the message too, for a human to report.
pub fn status_of(r: &Rejection, request_id: &RequestId, retry: Option<Duration>) -> Status {
    let code = code_of(r.category());
    let mut metadata: HashMap<String, String> = r
        .metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    if let Some(field) = &r.field {
        metadata.insert("field".to_owned(), field.clone());
    }
    let mut details = ErrorDetails::new();
    details.set_error_info(r.reason.as_str(), ERROR_DOMAIN, metadata);
    if let (Category::InvalidArgument, Some(field)) = (r.category(), &r.field) {
        details.add_bad_request_violation(field.clone(), r.message.clone());
    }
    details.set_request_info(request_id.shown(), "");
    if let Some(retry) = retry {
        details.set_retry_info(Some(retry));
    }
    let message = match code {
        Code::Internal | Code::Unavailable => {
            format!("{} (request id {})", r.message, request_id.shown())
        }
        _ => r.message.clone(),
    };
    Status::with_error_details(code, message, details)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::{ConnectOptions, Connection};
    use tonic::Code;

    use super::*;
    use crate::store::with_deadline;

    /// A real SQLite "database is locked": the second writer gives up at once.
    async fn busy_error() -> StoreError {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("busy.db"))
            .create_if_missing(true)
            .busy_timeout(Duration::ZERO);
        let mut first = options.connect().await.unwrap();
        let mut second = options.connect().await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut first)
            .await
            .unwrap();
        let e = sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut second)
            .await
            .expect_err("the first writer holds the lock");
        let _ = first.close().await;
        StoreError::Database(e)
    }

    #[tokio::test]
    async fn a_statement_stopped_by_the_calls_own_deadline_is_answered_deadline_exceeded() {
        let id = RequestId::default();
        // No deadline, or one still ahead: the database was too slow.
        let slow = failure_status(&id, busy_error().await);
        assert_eq!(slow.code(), Code::Unavailable);
        assert!(slow.message().contains("database statement took longer"));
        let ahead = Instant::now() + Duration::from_secs(60);
        let slow = with_deadline(ahead, async { failure_status(&id, busy_error().await) }).await;
        assert_eq!(slow.code(), Code::Unavailable);
        // The deadline has passed: the client's deadline stopped it, whichever timer fired
        // first, and the answer says so.
        let passed = Instant::now();
        let late = with_deadline(passed, async {
            let e = busy_error().await;
            failure_status(&id, e)
        })
        .await;
        assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");
        assert!(late.message().contains("nothing was written"));
    }
}
