//! A cap on concurrent connections: an [`Accept`] layer that holds one permit
//! per open connection and closes a connection at once when none is left, so
//! that idle or slow clients cannot exhaust file descriptors or memory. The
//! API server needs few connections; the cap is for everyone else.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct Limit<A> {
    inner: A,
    permits: Arc<Semaphore>,
    max: usize,
    metrics: Metrics,
}

impl<A> Limit<A> {
    pub fn new(inner: A, max: usize, metrics: Metrics) -> Self {
        Limit {
            inner,
            permits: Arc::new(Semaphore::new(max)),
            max,
            metrics,
        }
    }
}

/// A connection that gives its permit back when it closes.
pub struct Held<S> {
    stream: S,
    _permit: OwnedSemaphorePermit,
}

impl<A, I, S> Accept<I, S> for Limit<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
{
    type Stream = Held<A::Stream>;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.metrics.connection_refused();
            let max = self.max;
            // Dropping the stream closes the connection.
            drop(stream);
            return Box::pin(async move {
                Err(io::Error::other(format!(
                    "connection refused: {max} connections are open (--max-connections)"
                )))
            });
        };
        let inner = self.inner.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = inner.await?;
            Ok((
                Held {
                    stream,
                    _permit: permit,
                },
                service,
            ))
        })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Held<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Held<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
