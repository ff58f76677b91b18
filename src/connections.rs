//! Who may hold a connection: an [`Accept`] layer in front of the TLS
//! handshake (or of plain HTTP on the probe port) with three budgets, so that
//! no number of silent, half-open or slow sockets shuts the API server out.
//!
//! - **Per source address:** one address holds at most `per_source`
//!   connections, handshaking or established. An attacking pod fills its own
//!   share, not the replica's.
//! - **Handshakes:** at most `handshakes` connections may be in their TLS
//!   handshake at once, each for at most the acceptor's handshake timeout.
//!   When the budget is full, the *oldest* handshake is dropped to make room:
//!   a fresh connection (the API server's handshake takes milliseconds) always
//!   gets its turn, however many silent sockets are opened.
//! - **Established:** at most `established` connections past their handshake;
//!   one more is closed at once. HTTP-level timeouts (first request, headers,
//!   keep-alive) free these (see [`crate::server`]).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// The three budgets of one listening port.
#[derive(Debug, Clone, Copy)]
pub struct Budgets {
    pub established: usize,
    pub handshakes: usize,
    pub per_source: usize,
}

#[derive(Clone)]
pub struct Limit<A> {
    inner: A,
    shared: Arc<Shared>,
}

struct Shared {
    budgets: Budgets,
    established: Arc<Semaphore>,
    sources: Mutex<HashMap<IpAddr, usize>>,
    handshaking: Mutex<Handshaking>,
    metrics: Metrics,
}

#[derive(Default)]
struct Handshaking {
    next: u64,
    /// Oldest first.
    queue: VecDeque<(u64, Arc<Notify>)>,
}

impl<A> Limit<A> {
    pub fn new(inner: A, budgets: Budgets, metrics: Metrics) -> Self {
        Limit {
            inner,
            shared: Arc::new(Shared {
                budgets,
                established: Arc::new(Semaphore::new(budgets.established)),
                sources: Mutex::default(),
                handshaking: Mutex::default(),
                metrics,
            }),
        }
    }
}

impl Shared {
    fn refuse(&self, reason: &'static str, why: String) -> io::Error {
        self.metrics.connection_refused(reason);
        io::Error::other(why)
    }

    /// A place for one more connection from `ip`, if it has fewer than its share.
    fn source(self: &Arc<Self>, ip: IpAddr) -> Option<Source> {
        let mut sources = self.sources.lock().expect("not poisoned");
        let n = sources.entry(ip).or_default();
        if *n >= self.budgets.per_source {
            return None;
        }
        *n += 1;
        Some(Source {
            ip,
            shared: self.clone(),
        })
    }

    /// A place in the handshake budget, dropping the oldest handshake when it is full.
    fn handshake(self: &Arc<Self>) -> Ticket {
        let mut h = self.handshaking.lock().expect("not poisoned");
        while h.queue.len() >= self.budgets.handshakes.max(1) {
            let (_, oldest) = h.queue.pop_front().expect("not empty");
            oldest.notify_one();
            self.metrics.connection_refused("handshake-dropped");
        }
        let id = h.next;
        h.next += 1;
        let shed = Arc::new(Notify::new());
        h.queue.push_back((id, shed.clone()));
        Ticket {
            id,
            shed,
            shared: self.clone(),
        }
    }
}

/// One connection's count against its source address.
struct Source {
    ip: IpAddr,
    shared: Arc<Shared>,
}

impl Drop for Source {
    fn drop(&mut self) {
        let mut sources = self.shared.sources.lock().expect("not poisoned");
        if let Some(n) = sources.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                sources.remove(&self.ip);
            }
        }
    }
}

/// A connection in its handshake; notified when dropped for a newer one.
struct Ticket {
    id: u64,
    shed: Arc<Notify>,
    shared: Arc<Shared>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut h = self.shared.handshaking.lock().expect("not poisoned");
        if let Some(i) = h.queue.iter().position(|(id, _)| *id == self.id) {
            h.queue.remove(i);
        }
    }
}

/// A connection that gives its places back when it closes.
pub struct Held<S> {
    stream: S,
    _permit: OwnedSemaphorePermit,
    _source: Source,
}

impl<A, S> Accept<TcpStream, S> for Limit<A>
where
    A: Accept<TcpStream, S>,
    A::Future: Send + 'static,
{
    type Stream = Held<A::Stream>;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let shared = self.shared.clone();
        let source = match stream.peer_addr() {
            Ok(addr) => shared.source(addr.ip()),
            Err(_) => None,
        };
        // Dropping the stream closes the connection.
        let Some(source) = source else {
            let e = shared.refuse(
                "per-source",
                format!(
                    "connection refused: its source has {} connections open (--max-connections-per-source)",
                    shared.budgets.per_source
                ),
            );
            return Box::pin(async move { Err(e) });
        };
        let ticket = shared.handshake();
        let inner = self.inner.accept(stream, service);
        Box::pin(async move {
            let shed = ticket.shed.clone();
            let (stream, service) = tokio::select! {
                accepted = inner => accepted?,
                _ = shed.notified() => return Err(io::Error::other(
                    "connection dropped in its handshake for a newer one (--max-handshakes)",
                )),
            };
            drop(ticket);
            let Ok(permit) = shared.established.clone().try_acquire_owned() else {
                return Err(shared.refuse(
                    "established",
                    format!(
                        "connection refused: {} connections are open (--max-connections)",
                        shared.budgets.established
                    ),
                ));
            };
            Ok((
                Held {
                    stream,
                    _permit: permit,
                    _source: source,
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum_server::accept::DefaultAcceptor;
    use std::time::Duration;

    /// An acceptor whose "handshake" never ends, like a silent client's.
    #[derive(Clone)]
    struct Silent;

    impl<S: Send + 'static> Accept<TcpStream, S> for Silent {
        type Stream = TcpStream;
        type Service = S;
        type Future = Pin<Box<dyn Future<Output = io::Result<(TcpStream, S)>> + Send>>;
        fn accept(&self, _: TcpStream, _: S) -> Self::Future {
            Box::pin(std::future::pending())
        }
    }

    async fn pair(listener: &tokio::net::TcpListener, from: &str) -> (TcpStream, TcpStream) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let client = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    fn budgets(established: usize, handshakes: usize, per_source: usize) -> Budgets {
        Budgets {
            established,
            handshakes,
            per_source,
        }
    }

    #[tokio::test]
    async fn a_full_handshake_budget_drops_its_oldest_for_a_newcomer() {
        let metrics = Metrics::new();
        let limit = Limit::new(Silent, budgets(10, 2, 10), metrics.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut pending = vec![];
        for _ in 0..3 {
            let (_c, s) = pair(&l, "127.0.0.1").await;
            pending.push(tokio::spawn(limit.accept(s, ())));
            tokio::task::yield_now().await;
        }
        let first = tokio::time::timeout(Duration::from_secs(2), pending.remove(0))
            .await
            .expect("the oldest handshake is dropped")
            .unwrap();
        let e = first.err().expect("dropped").to_string();
        assert!(e.contains("--max-handshakes"), "{e}");
        // The two newer ones are still in their handshake.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pending.iter().all(|p| !p.is_finished()));
        assert!(
            metrics
                .encode()
                .contains(r#"connections_refused_total{reason="handshake-dropped"} 1"#)
        );
    }

    #[tokio::test]
    async fn one_source_gets_its_share_and_others_still_get_through() {
        let metrics = Metrics::new();
        let limit = Limit::new(DefaultAcceptor, budgets(3, 10, 2), metrics.clone());
        let l = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let mut held = vec![];
        for _ in 0..2 {
            let (c, s) = pair(&l, "127.0.0.2").await;
            held.push((c, limit.accept(s, ()).await.unwrap()));
        }
        let (_c, s) = pair(&l, "127.0.0.2").await;
        let e = limit.accept(s, ()).await.err().unwrap().to_string();
        assert!(e.contains("--max-connections-per-source"), "{e}");
        // Another address gets the last place; then the replica is full.
        let (_c1, s) = pair(&l, "127.0.0.1").await;
        let kept = limit.accept(s, ()).await.unwrap();
        let (_c2, s) = pair(&l, "127.0.0.3").await;
        let e = limit.accept(s, ()).await.err().unwrap().to_string();
        assert!(e.contains("--max-connections"), "{e}");
        // Places come back when connections close.
        drop(held);
        let (_c3, s) = pair(&l, "127.0.0.2").await;
        limit.accept(s, ()).await.unwrap();
        drop(kept);
        let text = metrics.encode();
        assert!(
            text.contains(r#"connections_refused_total{reason="per-source"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"connections_refused_total{reason="established"} 1"#),
            "{text}"
        );
    }
}
