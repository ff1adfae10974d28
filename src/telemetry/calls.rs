//! Every call, seen once from outside: its span, its metrics and its "call finished" line.
//!
//! [`CallLayer`] is the outermost layer of the gRPC server. It gives each call its
//! request id and its `rpc` span (request id, method, the caller's W3C trace; the auth
//! layer adds the client), counts it started, and wraps both bodies: the request's to
//! count messages received, the response's to count messages sent and to read the
//! status where gRPC puts it, in the trailers (or in the headers of a trailers-only
//! answer). So a stream is recorded, and its "call finished" line written, when it
//! really ends, with the code it ended with; a stream the client abandons is recorded
//! CANCELLED. Labels come from a table of the methods the server serves: a request for
//! an unknown path is counted under `unknown`, so clients cannot grow the series.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use prost::Message as _;
use tower::{Layer, Service};
use tracing::Instrument as _;

use super::metrics as m;
use crate::security::auth::{trace_parent, RequestId};

/// How a method exchanges messages, as the `grpc_type` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallType {
    Unary,
    ClientStream,
    ServerStream,
    BidiStream,
}

impl CallType {
    fn as_str(self) -> &'static str {
        match self {
            CallType::Unary => "unary",
            CallType::ClientStream => "client_stream",
            CallType::ServerStream => "server_stream",
            CallType::BidiStream => "bidi_stream",
        }
    }

    /// True for every shape but unary.
    pub fn is_stream(self) -> bool {
        self != CallType::Unary
    }
}

/// One method's labels.
#[derive(Debug, Clone)]
pub struct MethodInfo {
    pub service: String,
    pub method: String,
    pub kind: CallType,
}

/// The methods the server serves, by request path (`/package.Service/Method`).
#[derive(Debug, Default)]
pub struct Methods {
    by_path: HashMap<String, MethodInfo>,
}

impl Methods {
    /// Reads the methods of encoded `FileDescriptorSet`s (what reflection serves).
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> Methods {
        let mut by_path = HashMap::new();
        for set in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name = match (package.as_str(), service.name.as_deref()) {
                        ("", Some(name)) => name.to_owned(),
                        (pkg, Some(name)) => format!("{pkg}.{name}"),
                        (_, None) => continue,
                    };
                    for method in service.method {
                        let Some(name) = method.name else { continue };
                        let kind = match (
                            method.client_streaming.unwrap_or(false),
                            method.server_streaming.unwrap_or(false),
                        ) {
                            (false, false) => CallType::Unary,
                            (true, false) => CallType::ClientStream,
                            (false, true) => CallType::ServerStream,
                            (true, true) => CallType::BidiStream,
                        };
                        by_path.insert(
                            format!("/{service_name}/{name}"),
                            MethodInfo {
                                service: service_name.clone(),
                                method: name,
                                kind,
                            },
                        );
                    }
                }
            }
        }
        Methods { by_path }
    }

    /// Adds a method by hand (one whose descriptors are not at hand, such as reflection).
    pub fn with(mut self, service: &str, method: &str, kind: CallType) -> Methods {
        self.by_path.insert(
            format!("/{service}/{method}"),
            MethodInfo {
                service: service.to_owned(),
                method: method.to_owned(),
                kind,
            },
        );
        self
    }

    /// The labels of `path`; `unknown` for a path the server does not serve.
    pub fn get(&self, path: &str) -> MethodInfo {
        self.by_path.get(path).cloned().unwrap_or(MethodInfo {
            service: "unknown".into(),
            method: "unknown".into(),
            kind: CallType::Unary,
        })
    }
}

/// The outermost layer: spans, request ids, metrics and the "call finished" line.
#[derive(Clone)]
pub struct CallLayer {
    methods: Arc<Methods>,
}

impl CallLayer {
    pub fn new(methods: Methods) -> CallLayer {
        CallLayer {
            methods: Arc::new(methods),
        }
    }
}

impl<S> Layer<S> for CallLayer {
    type Service = CallService<S>;

    fn layer(&self, inner: S) -> CallService<S> {
        CallService {
            inner,
            methods: self.methods.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CallService<S> {
    inner: S,
    methods: Arc<Methods>,
}

impl<S> Service<http::Request<tonic::body::Body>> for CallService<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let started = Instant::now();
        let info = self.methods.get(req.uri().path());
        let request_id = RequestId::from_header(req.headers().get("x-request-id"));
        let span = tracing::info_span!(
            "rpc",
            request_id = %request_id.shown(),
            method = %req.uri().path(),
            client = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
        );
        if let Some((trace, parent)) = trace_parent(req.headers().get("traceparent")) {
            span.record("trace_id", trace.as_str());
            span.record("parent_span_id", parent.as_str());
        }
        let labels = [
            ("grpc_type", info.kind.as_str().to_owned()),
            ("grpc_service", info.service.clone()),
            ("grpc_method", info.method.clone()),
        ];
        metrics::counter!(m::GRPC_STARTED, &labels).increment(1);
        let record = Arc::new(Record {
            labels,
            started,
            span: span.clone(),
            stream: info.kind.is_stream(),
        });
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(request_id.clone());
        let req = http::Request::from_parts(
            parts,
            tonic::body::Body::new(Counted::received(body, record.clone())),
        );
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                match inner.call(req).await {
                    Ok(mut response) => {
                        if let Ok(v) = http::HeaderValue::from_str(&request_id.shown()) {
                            response.headers_mut().insert("x-request-id", v);
                        }
                        let header_code = grpc_status(response.headers());
                        let (parts, body) = response.into_parts();
                        let mut counted = Counted::sent(body, record);
                        counted.code = header_code;
                        Ok(http::Response::from_parts(
                            parts,
                            tonic::body::Body::new(counted),
                        ))
                    }
                    Err(e) => {
                        record.finish(tonic::Code::Unknown, 0);
                        Err(e)
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// The `grpc-status` in a header map, when there is one.
fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

/// What one call records when it ends.
struct Record {
    labels: [(&'static str, String); 3],
    started: Instant,
    span: tracing::Span,
    stream: bool,
}

impl Record {
    fn finish(&self, code: tonic::Code, sent: u64) {
        let elapsed = self.started.elapsed();
        let mut handled: Vec<(&'static str, String)> = self.labels.to_vec();
        handled.push(("grpc_code", code_name(code).to_owned()));
        metrics::counter!(m::GRPC_HANDLED, &handled).increment(1);
        metrics::histogram!(m::GRPC_HANDLING_SECONDS, &self.labels).record(elapsed.as_secs_f64());
        let _entered = self.span.enter();
        let ms = elapsed.as_secs_f64() * 1000.0;
        if self.stream {
            tracing::info!(
                grpc_status = code as i32,
                grpc_code = code_name(code),
                elapsed_ms = ms,
                messages_sent = sent,
                "call finished"
            );
        } else {
            tracing::info!(
                grpc_status = code as i32,
                grpc_code = code_name(code),
                elapsed_ms = ms,
                "call finished"
            );
        }
    }
}

/// The code's name as gRPC's own libraries label it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// Which way a counted body flows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Received,
    Sent,
}

/// A body whose gRPC messages are counted as they pass (by their 5-byte length
/// prefixes), and, for a response, whose status is read from its trailers.
struct Counted {
    inner: tonic::body::Body,
    record: Arc<Record>,
    direction: Direction,
    frames: FrameCounter,
    /// The status, once seen (headers of a trailers-only answer, or the trailers).
    code: Option<tonic::Code>,
    finished: bool,
}

impl Counted {
    fn received(inner: tonic::body::Body, record: Arc<Record>) -> Counted {
        Counted::new(inner, record, Direction::Received)
    }

    fn sent(inner: tonic::body::Body, record: Arc<Record>) -> Counted {
        Counted::new(inner, record, Direction::Sent)
    }

    fn new(inner: tonic::body::Body, record: Arc<Record>, direction: Direction) -> Counted {
        Counted {
            inner,
            record,
            direction,
            frames: FrameCounter::default(),
            code: None,
            finished: false,
        }
    }

    fn count(&mut self, data: &Bytes) {
        let messages = self.frames.feed(data);
        if messages == 0 {
            return;
        }
        let name = match self.direction {
            Direction::Received => m::GRPC_MSG_RECEIVED,
            Direction::Sent => m::GRPC_MSG_SENT,
        };
        metrics::counter!(name, &self.record.labels).increment(messages);
    }

    /// Records the call once: with the status seen, or `otherwise`.
    fn finish(&mut self, otherwise: tonic::Code) {
        if self.finished || self.direction == Direction::Received {
            return;
        }
        self.finished = true;
        self.record
            .finish(self.code.unwrap_or(otherwise), self.frames.messages);
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    self.count(&data);
                } else if let Some(trailers) = frame.trailers_ref() {
                    if let Some(code) = grpc_status(trailers) {
                        self.code = Some(code);
                    }
                    self.finish(tonic::Code::Ok);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                let code = status.code();
                self.code.get_or_insert(code);
                self.finish(code);
            }
            // The end without trailers: a trailers-only answer, whose status was in the
            // headers.
            Poll::Ready(None) => self.finish(tonic::Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    /// A response dropped before its end: the client went away (or the connection did).
    fn drop(&mut self) {
        if self.code.is_some() && !self.finished && self.inner.is_end_stream() {
            self.finish(tonic::Code::Ok);
        }
        self.finish(tonic::Code::Cancelled);
    }
}

/// Counts gRPC messages in a byte stream: each is a 5-byte prefix (a compression flag
/// and a big-endian length) and that many bytes, split across chunks anyhow.
#[derive(Default)]
struct FrameCounter {
    /// Bytes of the current prefix seen so far.
    header: [u8; 5],
    header_len: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
    messages: u64,
}

impl FrameCounter {
    /// Consumes `data`; answers how many messages began in it.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let before = self.messages;
        while !data.is_empty() {
            if self.remaining > 0 {
                let take = (self.remaining as usize).min(data.len());
                self.remaining -= take as u64;
                data = &data[take..];
                continue;
            }
            let take = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
            self.header_len += take;
            data = &data[take..];
            if self.header_len == 5 {
                self.messages += 1;
                self.remaining = u64::from(u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]));
                self.header_len = 0;
            }
        }
        self.messages - before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    #[test]
    fn messages_are_counted_however_the_bytes_are_split() {
        let mut stream = Vec::new();
        for len in [0, 3, 100, 1] {
            stream.extend(message(len));
        }
        for chunk in [1, 2, 3, 5, 7, 64, stream.len()] {
            let mut counter = FrameCounter::default();
            let total: u64 = stream.chunks(chunk).map(|c| counter.feed(c)).sum();
            assert_eq!(total, 4, "chunks of {chunk}");
        }
    }

    #[test]
    fn an_unknown_path_is_labelled_unknown_and_known_ones_by_their_descriptor() {
        let methods = Methods::from_descriptor_sets(&[tonic_health::pb::FILE_DESCRIPTOR_SET]);
        let check = methods.get("/grpc.health.v1.Health/Check");
        assert_eq!(check.service, "grpc.health.v1.Health");
        assert_eq!(check.kind, CallType::Unary);
        assert_eq!(
            methods.get("/grpc.health.v1.Health/Watch").kind,
            CallType::ServerStream
        );
        assert_eq!(methods.get("/evil/../path").method, "unknown");
    }
}
