//! Requests the transport could not decode, answered as the client's fault they are.
//!
//! tonic decodes a unary request before any handler runs and answers a failure itself:
//! INTERNAL with the decoder's text, or OUT_OF_RANGE for a message over the size limit,
//! with no error details. This layer (inside the auth layer, which gives every call its
//! request id) rewrites such answers through [`transport_status`]: INVALID_ARGUMENT
//! (REQUEST_MALFORMED) or RESOURCE_EXHAUSTED (REQUEST_TOO_LARGE) with ErrorInfo and
//! RequestInfo, like every other refusal. Streams meet the same errors while a handler
//! reads them, and map them with the same function there.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::{Layer, Service};

use super::call::transport_status;
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
