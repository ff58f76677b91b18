//! A Service on loopback: a TCP balancer in front of sm-injector replicas that
//! routes each new connection to a replica whose `/readyz` answered 200 at the
//! last poll, as kube-proxy does with a Service's ready endpoints (the test
//! bed has no kube-proxy). Open connections stay where they are.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::injector::http_get;

pub struct Backend {
    pub port: u16,
    pub probe: u16,
}

pub struct Balancer {
    pub port: u16,
    /// Connections routed to each backend, in the order given.
    pub routed: Arc<Vec<AtomicUsize>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Balancer {
    /// Listens on a free loopback port; readiness is polled every `poll`.
    pub async fn start(backends: Vec<Backend>, poll: Duration) -> Balancer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let backends = Arc::new(backends);
        let ready = Arc::new(Mutex::new(vec![false; backends.len()]));
        let routed: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let poller = {
            let (backends, ready) = (backends.clone(), ready.clone());
            tokio::spawn(async move {
                loop {
                    for (i, b) in backends.iter().enumerate() {
                        let ok = http_get(b.probe, "/readyz").await.0 == 200;
                        ready.lock().unwrap()[i] = ok;
                    }
                    tokio::time::sleep(poll).await;
                }
            })
        };
        // Wait for the first full poll.
        tokio::time::sleep(poll * 2).await;
        let acceptor = {
            let routed = routed.clone();
            tokio::spawn(async move {
                let next = AtomicUsize::new(0);
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        continue;
                    };
                    let candidates: Vec<usize> = ready
                        .lock()
                        .unwrap()
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| **r)
                        .map(|(i, _)| i)
                        .collect();
                    if candidates.is_empty() {
                        continue; // no ready endpoint: the connection is dropped
                    }
                    let i = candidates[next.fetch_add(1, Ordering::Relaxed) % candidates.len()];
                    routed[i].fetch_add(1, Ordering::Relaxed);
                    let port = backends[i].port;
                    tokio::spawn(async move {
                        if let Ok(mut server) =
                            tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                        {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
            })
        };
        Balancer {
            port,
            routed,
            tasks: vec![poller, acceptor],
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
