//! Accepted connections, guarded before HTTP/2 takes over.
//!
//! tonic's call timeout and HTTP/2 keepalives start only once a connection has completed
//! its handshake. A client that connects and then sends nothing (or a byte now and then)
//! would otherwise hold a socket forever, and enough of them exhaust the server's file
//! descriptors. Every accepted connection must therefore deliver its first bytes (the
//! HTTP/2 preface, or a TLS ClientHello) within a deadline, or it is closed.
//!
//! Over TLS the server does the handshake here, not in tonic: [`tls_guarded`] takes the
//! rustls configuration current when a connection arrives (see [`super::live`]), so a
//! reload changes what new handshakes see and nothing else. Handshakes run side by side,
//! each within `handshake_timeout_secs`; one that fails or times out closes its own
//! connection and is logged, and the accept loop goes on.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::live::Live;

/// The HTTP/2 client preface is 24 bytes; a TLS ClientHello is longer.
const FIRST_BYTES: usize = 24;

/// A TCP connection that must send its first bytes before a deadline.
pub struct Guarded {
    inner: TcpStream,
    deadline: Option<Pin<Box<Sleep>>>,
    still_needed: usize,
}

impl Guarded {
    fn new(inner: TcpStream, handshake: Duration) -> Guarded {
        Guarded {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(handshake))),
            still_needed: FIRST_BYTES,
        }
    }
}

/// The listener's connections, each guarded by `handshake`, with Nagle's algorithm off
/// (small unary answers must not wait for a delayed ACK).
pub fn guarded(
    listener: TcpListener,
    handshake: Duration,
) -> impl Stream<Item = io::Result<Guarded>> {
    TcpListenerStream::new(listener).map(move |accepted| {
        let stream = accepted?;
        let _ = stream.set_nodelay(true);
        Ok(Guarded::new(stream, handshake))
    })
}

/// The listener's connections after their TLS handshake, made with the configuration
/// [`Live`] holds when each connection arrives. Each connection is first [`guarded`] by
/// `first_bytes`; its handshake must then finish within the configuration's
/// `handshake_timeout`. A refused or unfinished handshake is logged (the peer's address
/// and rustls's reason: no personal data exists at that stage) and skipped.
///
/// tonic's `Connected` for the rustls stream gives each request a `TlsConnectInfo` with
/// the peer's verified certificates, which `super::tls` reads.
pub fn tls_guarded(
    listener: TcpListener,
    first_bytes: Duration,
    live: Arc<Live>,
) -> impl Stream<Item = io::Result<TlsStream<Guarded>>> {
    let accepted = Box::pin(guarded(listener, first_bytes));
    futures::stream::unfold(
        (accepted, JoinSet::new()),
        move |(mut accepted, mut handshakes)| {
            let live = live.clone();
            async move {
                loop {
                    tokio::select! {
                        next = accepted.next() => match next {
                            Some(Ok(connection)) => {
                                handshakes.spawn(handshake(connection, live.clone()));
                            }
                            // tonic decides whether an accept error is worth going on for.
                            Some(Err(e)) => return Some((Err(e), (accepted, handshakes))),
                            None => return None,
                        },
                        Some(done) = handshakes.join_next(), if !handshakes.is_empty() => {
                            if let Ok(Some(stream)) = done {
                                return Some((Ok(stream), (accepted, handshakes)));
                            }
                        }
                    }
                }
            }
        },
    )
}

/// One TLS handshake with the current configuration; `None` when it failed (logged).
async fn handshake(connection: Guarded, live: Arc<Live>) -> Option<TlsStream<Guarded>> {
    let remote = connection.inner.peer_addr().ok();
    let Some(tls) = live.tls() else {
        tracing::error!("a TLS connection arrived on a server without TLS material");
        return None;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
    match tokio::time::timeout(tls.handshake_timeout(), acceptor.accept(connection)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            let refused_certificate = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|e| {
                    matches!(
                        e,
                        rustls::Error::InvalidCertificate(_)
                            | rustls::Error::NoCertificatesPresented
                    )
                });
            if refused_certificate {
                tracing::info!(?remote, error = %e, "TLS handshake refused the client certificate");
            } else {
                tracing::debug!(?remote, error = %e, "TLS handshake failed");
            }
            None
        }
        Err(_) => {
            tracing::debug!(?remote, "TLS handshake timed out");
            None
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                this.still_needed = this.still_needed.saturating_sub(read);
                if this.still_needed == 0 {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent no handshake in time",
                    )));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}
