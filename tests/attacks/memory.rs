//! In-flight memory: large bodies sent slowly straight to the replica, and
//! huge dry-run pods through the API server, topped up for a while, keep the
//! replica under its 128 Mi limit while ordinary pods are admitted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::api::{Api, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

use super::support::{namespace, testbed, until_injected};
use super::*;

const BODY: usize = 4_000_000;

/// Posts a body of [`BODY`] bytes from `from`, 250 KiB every 250 ms: the
/// status line the replica answered, or the error that ended the exchange.
async fn slow_post(from: &str, port: u16, tls: Arc<rustls::ClientConfig>) -> String {
    let Ok(mut c) = tls_from(from, port, tls).await else {
        return "connect".into();
    };
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {BODY}\r\n\r\n"
    );
    if c.write_all(head.as_bytes()).await.is_err() {
        return "write".into();
    }
    let mut buf = vec![0u8; 256];
    // A replica over budget answers before the body.
    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), c.read(&mut buf)).await {
        return status_line(&buf[..n]);
    }
    let chunk = vec![b' '; 250 * 1024];
    let mut sent = 0;
    while sent < BODY {
        let n = chunk.len().min(BODY - sent);
        if c.write_all(&chunk[..n]).await.is_err() {
            break;
        }
        sent += n;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    match tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await {
        Ok(Ok(n)) => status_line(&buf[..n]),
        other => format!("{other:?}"),
    }
}

fn status_line(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .lines()
        .next()
        .unwrap_or("closed")
        .to_string()
}

/// A pod of about 1.4 MB: 32,000 env entries and a secret reference.
fn huge_pod(name: &str, reference: &str) -> Pod {
    let env: Vec<_> = (0..32_000)
        .map(|i| json!({"name": format!("V{i:05}"), "value": "abcdefghijklmnopqrstuv"}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"sm-injector.io/env.K": reference}},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1", "env": env}]}
    }))
    .unwrap()
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn large_bodies_and_huge_dry_runs_keep_the_replica_under_its_limit() {
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "memory", &[INJECT]).await;
    let own = namespace(&client, "memory-own", &[]).await;
    bed.put_secret(&format!("{ns}/s"), r#"{"k":"v"}"#).await;
    let r = replica(bed, &client, "attack-memory", &own, &[&ns], &[]).await;
    until_injected(&client, &ns, &pod("first", &format!("{ns}/s#k"))).await;
    let (_, before) = rss_mib(r.pid);
    let anon = AnonWatch::start(r.pid);

    let stop = Arc::new(AtomicBool::new(false));
    // 40 slow 4 MB bodies from one address, each replaced when it ends.
    let statuses = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let tls = tls_client(bed);
    let mut attack = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let (stop, statuses, tls) = (stop.clone(), statuses.clone(), tls.clone());
        attack.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let s = slow_post("127.0.0.2", r.port, tls.clone()).await;
                *statuses.lock().await.entry(s).or_default() += 1;
            }
        });
    }
    // 20 concurrent 1.4 MB dry-run pods through the API server, topped up.
    let denials = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    for i in 0..20 {
        let (stop, denials, client, ns) =
            (stop.clone(), denials.clone(), client.clone(), ns.clone());
        attack.spawn(async move {
            let dry = PostParams {
                dry_run: true,
                ..Default::default()
            };
            let p = huge_pod(&format!("huge-{i}"), &format!("{ns}/s#k"));
            let api = Api::<Pod>::namespaced(client, &ns);
            while !stop.load(Ordering::Relaxed) {
                let e = match api.create(&dry, &p).await {
                    Ok(_) => "admitted".to_string(),
                    Err(e) => e.to_string().chars().take(300).collect(),
                };
                *denials.lock().await.entry(e).or_default() += 1;
            }
        });
    }
    during(Duration::from_secs(3)).await;

    // Ordinary pods are admitted meanwhile.
    let slowest = admitted_meanwhile(
        &client,
        &ns,
        "meanwhile",
        15,
        Duration::from_millis(500),
        |_| format!("{ns}/s#k"),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    while attack.join_next().await.is_some() {}
    let (rss, peak) = rss_mib(r.pid);
    let anon = anon.peak().await;
    let statuses = statuses.lock().await.clone();
    let denials = denials.lock().await.clone();
    println!("slow 4 MB posts answered: {statuses:?}");
    println!("huge dry runs answered: {denials:?}");
    println!(
        "15 pods admitted meanwhile, the slowest in {slowest:?}; replica RSS before {before:.1} MiB, \
         after {rss:.1} MiB, peak {peak:.1} MiB"
    );
    assert_under_limit(anon);
    // Most large posts were turned away before their body was read...
    let refused: usize = statuses
        .iter()
        .filter(|(s, _)| s.contains(" 429 ") || s.contains(" 503 "))
        .map(|(_, n)| n)
        .sum();
    assert!(refused > 40, "{statuses:?}");
    // ...and each huge pod that reached sm-injector was denied by name.
    assert!(
        denials.keys().any(|e| e.contains("--max-pod-entries")),
        "{denials:?}"
    );
    assert!(!denials.contains_key("admitted"), "{denials:?}");
    support::signal(r.pid as i32, libc::SIGKILL);
}
