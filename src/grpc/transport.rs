//! Two layers around the handlers: requests the transport could not decode, answered as
//! the client's fault they are ([`DecodeErrorLayer`]), and each call's deadline
//! ([`DeadlineLayer`]).
//!
//! tonic decodes a unary request before any handler runs and answers a failure itself:
//! INTERNAL with the decoder's text, or OUT_OF_RANGE for a message over the size limit,
//! with no error details. This layer (inside the auth layer, which gives every call its
//! request id) rewrites such answers through [`transport_status`]: INVALID_ARGUMENT
//! (REQUEST_MALFORMED) or RESOURCE_EXHAUSTED (REQUEST_TOO_LARGE) with ErrorInfo and
//! RequestInfo, like every other refusal. Streams meet the same errors while a handler
//! reads them, and map them with the same function there.

use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tower::{Layer, Service};

use super::call::{status_of, transport_status};
use crate::domain::{Reason, Rejection};
use crate::security::auth::RequestId;

/// Rewrites the transport's decoding failures (see the module's documentation).
#[derive(Clone, Copy, Default)]
pub struct DecodeErrorLayer;

impl<S> Layer<S> for DecodeErrorLayer {
    type Service = DecodeErrors<S>;

    fn layer(&self, inner: S) -> DecodeErrors<S> {
        DecodeErrors { inner }
    }
}

#[derive(Clone)]
pub struct DecodeErrors<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for DecodeErrors<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let request_id = req.extensions().get::<RequestId>().cloned();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(req).await?;
            // A trailers-only answer (no body) carries its status in the headers.
            let made_by_transport = response.headers().contains_key("grpc-status")
                && !response.headers().contains_key("grpc-status-details-bin");
            if !made_by_transport {
                return Ok(response);
            }
            let Some(status) = tonic::Status::from_header_map(response.headers()) else {
                return Ok(response);
            };
            let request_id = request_id.unwrap_or_default();
            let rewritten = transport_status(status.clone(), &request_id);
            if rewritten.code() == status.code() {
                return Ok(response);
            }
            Ok(rewritten.into_http())
        })
    }
}

/// Each call's deadline: the client's `grpc-timeout`, capped by the server's own limit
/// (`request_timeout_secs`). The deadline is handed to the store (a write's statements
/// get no more than the time left; see `store::with_deadline`), and a call still running
/// when it passes is answered DEADLINE_EXCEEDED (reason DEADLINE_EXCEEDED) and dropped.
/// tonic's own timeout would answer CANCELLED, which says the client gave up.
#[derive(Clone, Copy)]
pub struct DeadlineLayer {
    limit: Duration,
}

impl DeadlineLayer {
    pub fn new(limit: Duration) -> DeadlineLayer {
        DeadlineLayer { limit }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadlines<S>;

    fn layer(&self, inner: S) -> Deadlines<S> {
        Deadlines {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Clone)]
pub struct Deadlines<S> {
    inner: S,
    limit: Duration,
}

impl<S, B> Service<http::Request<B>> for Deadlines<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let allowed = grpc_timeout(req.headers().get("grpc-timeout"))
            .map_or(self.limit, |t| t.min(self.limit));
        let deadline = Instant::now() + allowed;
        let request_id = req.extensions().get::<RequestId>().cloned();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let call = crate::store::with_deadline(deadline, inner.call(req));
            match tokio::time::timeout_at(deadline.into(), call).await {
                Ok(answered) => answered,
                Err(_) => {
                    let request_id = request_id.unwrap_or_default();
                    tracing::warn!(
                        deadline_ms = allowed.as_millis() as u64,
                        "deadline passed before the call finished"
                    );
                    let refusal = Rejection::new(
                        Reason::DeadlineExceeded,
                        format!(
                            "the call did not finish within its deadline ({} ms); a write may \
                             have been applied: retry with the same idempotency key",
                            allowed.as_millis()
                        ),
                    );
                    Ok(status_of(&refusal, &request_id, None).into_http())
                }
            }
        })
    }
}

/// A `grpc-timeout` header's duration: up to 8 digits and a unit (H, M, S, m, u, n).
/// Anything else is ignored (the server's own limit applies).
fn grpc_timeout(value: Option<&http::HeaderValue>) -> Option<Duration> {
    let v = value?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Option<Duration> {
        grpc_timeout(Some(&http::HeaderValue::from_str(s).unwrap()))
    }

    #[test]
    fn grpc_timeouts_are_read_in_every_unit_and_nonsense_is_ignored() {
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("250u"), Some(Duration::from_micros(250)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse("123456789S"), None, "at most 8 digits");
        assert_eq!(parse("10x"), None);
        assert_eq!(parse("S"), None);
        assert_eq!(parse("-1S"), None);
    }
}
