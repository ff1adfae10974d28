//! Accepted connections, guarded before HTTP/2 takes over.
//!
//! tonic's call timeout and HTTP/2 keepalives start only once a connection has completed
//! its handshake. A client that connects and then sends nothing (or a byte now and then)
//! would otherwise hold a socket forever, and enough of them exhaust the server's file
//! descriptors. Every accepted connection must therefore deliver its first bytes (the
//! HTTP/2 preface, or a TLS ClientHello) within a deadline, or it is closed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

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
