//! Connection slots: silent TCP sockets, silent TLS connections and probe-port
//! sockets, opened from three addresses and topped up as the replica closes
//! them, never keep the API server from a slot.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use super::support::{injector, namespace, testbed, until_injected};
use super::*;

/// One attacker address: every 50 ms it opens `tcp` silent sockets and `tls`
/// silent TLS connections to `port` (and `probe` sockets to the probe port),
/// each held until the replica closes it or the attack ends. Returns how many
/// the replica closed before the end.
fn attacker(
    from: &'static str,
    port: u16,
    probe: u16,
    tls: Arc<rustls::ClientConfig>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let closed = Arc::new(AtomicUsize::new(0));
        let mut held = tokio::task::JoinSet::new();
        while !stop.load(Ordering::Relaxed) {
            for i in 0..50 {
                let (tls, stop, closed) = (tls.clone(), stop.clone(), closed.clone());
                held.spawn(async move {
                    let mut buf = [0u8; 64];
                    let read = async {
                        match i {
                            0..10 => match tls_from(from, port, tls).await {
                                Ok(mut s) => s.read(&mut buf).await.map(|_| ()),
                                Err(e) => Err(e),
                            },
                            10..15 => match connect_from(from, probe).await {
                                Ok(mut s) => s.read(&mut buf).await.map(|_| ()),
                                Err(e) => Err(e),
                            },
                            _ => match connect_from(from, port).await {
                                Ok(mut s) => s.read(&mut buf).await.map(|_| ()),
                                Err(e) => Err(e),
                            },
                        }
                    };
                    tokio::select! {
                        _ = read => { closed.fetch_add(1, Ordering::Relaxed); }
                        _ = async { while !stop.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(100)).await } } => {}
                    }
                });
            }
            while held.try_join_next().is_some() {}
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        held.join_all().await;
        closed.load(Ordering::Relaxed)
    })
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn silent_sockets_from_any_number_of_pods_never_shut_the_api_server_out() {
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "conns", &[INJECT]).await;
    let own = namespace(&client, "conns-own", &[]).await;
    bed.put_secret(&format!("{ns}/s"), r#"{"k":"v"}"#).await;
    let r = replica(bed, &client, "attack-conns", &own, &[&ns], &[]).await;
    until_injected(&client, &ns, &pod("first", &format!("{ns}/s#k"))).await;
    let anon = AnonWatch::start(r.pid);

    // Three attacking addresses, each opening 1,000 sockets a second and
    // keeping them open: far more than the replica's 1,024 slots.
    let stop = Arc::new(AtomicBool::new(false));
    let tls = tls_client(bed);
    let attackers: Vec<_> = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        .into_iter()
        .map(|from| attacker(from, r.port, r.probe, tls.clone(), stop.clone()))
        .collect();
    during(Duration::from_secs(4)).await;

    // Meanwhile the API server's admissions go on, and so do the probes.
    let mut slowest = Duration::ZERO;
    for i in 0..15 {
        let start = Instant::now();
        let p = pod(&format!("meanwhile-{i}"), &format!("{ns}/s#k"));
        let created = create(&client, &ns, &p).await;
        assert_eq!(created.as_deref(), Ok(r#"Some("K")"#), "pod {i}");
        slowest = slowest.max(start.elapsed());
        let (status, body) = injector::http_get(r.probe, "/readyz").await;
        assert_eq!((status, body.as_str()), (200, "ok"), "probe {i}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let refused =
        |reason: &str| format!("sm_injector_connections_refused_total{{reason=\"{reason}\"}}");
    let per_source = injector::metric_sum(r.probe, &refused("per-source")).await;
    stop.store(true, Ordering::Relaxed);
    let mut closed = 0;
    for a in attackers {
        closed += a.await.unwrap();
    }
    println!(
        "15 pods created under attack, the slowest in {slowest:?}; the replica closed {closed} \
         attacking connections and refused {per_source} over their source's share"
    );
    assert!(per_source > 0.0, "no connection was refused for its source");
    // Silent connections were closed by the replica, not held until the end.
    assert!(
        closed > 1000,
        "only {closed} attacking connections were closed"
    );
    let (rss, peak) = rss_mib(r.pid);
    let anon = anon.peak().await;
    println!("replica RSS {rss:.1} MiB, peak {peak:.1} MiB");
    assert_under_limit(anon);

    // A connection that completes its handshake and says nothing is closed
    // after the first-request timeout (5 s); it is not held.
    let mut silent = tls_from("127.0.0.2", r.port, tls.clone()).await.unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(
        read.is_ok(),
        "a silent TLS connection was still open after 10 s"
    );
    println!(
        "a silent TLS connection was closed after {:?}",
        start.elapsed()
    );
    support::signal(r.pid as i32, libc::SIGKILL);
}
