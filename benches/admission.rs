//! Admission throughput and latency on a warm cache, with the server's memory.
//!
//! `./tests/bench` (or `cargo bench --bench admission` with the test bed's
//! variables set) starts the test bed, runs the release `sm-injector serve` as
//! its own process (configured like in a cluster: KUBECONFIG and
//! AWS_ENDPOINT_URL_SECRETS_MANAGER), warms it with one pod, then drives
//! `POST /mutate` over TLS with N keep-alive HTTP/1.1 connections, each sending
//! requests back to back, for N in 1, 8, 32 and 64. The load generator shares
//! the machine's cores with the server. It prints admissions/s, latency
//! percentiles, the server's RSS, and the Secrets Manager calls it made.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::json;
use support::injector::metric_sum as metric;

const LEVELS: &[usize] = &[1, 8, 32, 64];
const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(5);

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn review(ns: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": ns,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "generateName": "bot-7d9f8c6b5-",
                    "namespace": ns,
                    "labels": {"app": "bot", "pod-template-hash": "7d9f8c6b5"},
                    "annotations": {
                        "sm-injector.io/env.DISCORD_BOT_TOKEN": format!("{ns}/discord#bot_token"),
                        "sm-injector.io/env.DISCORD_APPLICATION_ID": format!("{ns}/discord#application_id"),
                        "sm-injector.io/env.DATABASE_URL": format!("{ns}/postgres#url"),
                        "sm-injector.io/env-from.REDIS": format!("{ns}/redis")
                    }
                },
                "spec": {
                    "containers": [
                        {"name": "bot", "image": "registry.example/bot:1.4.2", "env": [{"name": "LOG_LEVEL", "value": "info"}],
                         "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                         "volumeMounts": [{"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]},
                        {"name": "sidecar", "image": "registry.example/sidecar:2"}
                    ],
                    "serviceAccountName": "default",
                    "volumes": [{"name": "kube-api-access-x", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}]
                }
            },
            "dryRun": false
        }
    }))
    .unwrap()
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(port: u16, tls: Arc<rustls::ClientConfig>) -> Sender {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

async fn post(sender: &mut Sender, body: &Bytes) -> Duration {
    let req = hyper::Request::post("/mutate")
        .header("content-type", "application/json")
        .header("host", "127.0.0.1")
        .body(Full::new(body.clone()))
        .unwrap();
    let start = Instant::now();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let took = start.elapsed();
    debug_assert!(bytes.windows(14).any(|w| w == b"\"allowed\":true"));
    took
}

/// N connections, each sending back to back: (admissions/s, sorted latencies).
async fn run_level(
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    body: Bytes,
    n: usize,
) -> (f64, Vec<Duration>) {
    let mut senders = Vec::new();
    for _ in 0..n {
        senders.push(connect(port, tls.clone()).await);
    }
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + MEASURE;
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut s| {
            let body = body.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(100_000);
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let d = post(&mut s, &body).await;
                    if sent >= measure_from {
                        lat.push(d);
                    }
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    (all.len() as f64 / MEASURE.as_secs_f64(), all)
}

fn pct(sorted: &[Duration], p: f64) -> String {
    if sorted.is_empty() {
        return "-".into();
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    format!("{:.3}", sorted[i].as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("admission benchmark: run it with ./tests/bench (cargo bench --bench admission)");
        return;
    }
    let bed = support::testbed();
    let client = bed.client().await;
    let ns = support::namespace(&client, "bench", &[("sm-injector.io/inject", "enabled")]).await;
    let sm = bed.aws().await;
    for (name, value) in [
        ("discord", r#"{"bot_token":"tok","application_id":123}"#),
        ("postgres", r#"{"url":"postgres://app:pw@db:5432/app"}"#),
        ("redis", r#"{"HOST":"redis","PORT":6379}"#),
    ] {
        sm.create_secret()
            .name(format!("{ns}/{name}"))
            .secret_string(value)
            .send()
            .await
            .unwrap();
    }

    let server = support::serve_process(
        bed,
        std::path::Path::new(env!("CARGO_BIN_EXE_sm-injector")),
        "sm-injector",
        &[],
    )
    .await;
    let (port, probe, pid) = (server.port, server.probe, server.pid);

    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile_certs(&bed.ca_pem) {
        roots.add(c).unwrap();
    }
    let tls = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let body = Bytes::from(review(&ns));

    // Warm the cache and the backing Secrets with one admission.
    let mut s = connect(port, tls.clone()).await;
    let first = post(&mut s, &body).await;
    let aws_after_warmup = metric(probe, "sm_injector_secretsmanager_calls_total").await;
    let (rss0, _) = rss_kib(pid);
    println!(
        "sm-injector admission benchmark (warm cache, TLS, HTTP/1.1 keep-alive, load generator on the same {} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "request body {} bytes; first (cold) admission {:.1} ms; RSS after warm-up {:.1} MiB",
        body.len(),
        first.as_secs_f64() * 1000.0,
        rss0 as f64 / 1024.0
    );
    println!(
        "{:>6} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "conns", "admissions/s", "p50 ms", "p99 ms", "p999 ms", "max ms", "RSS MiB"
    );
    for &n in LEVELS {
        let (rate, lat) = run_level(port, tls.clone(), body.clone(), n).await;
        let (rss, _) = rss_kib(pid);
        println!(
            "{:>6} {:>12.0} {:>9} {:>9} {:>9} {:>9} {:>9.1}",
            n,
            rate,
            pct(&lat, 0.50),
            pct(&lat, 0.99),
            pct(&lat, 0.999),
            pct(&lat, 1.0),
            rss as f64 / 1024.0
        );
    }
    let (_, peak) = rss_kib(pid);
    let aws_total = metric(probe, "sm_injector_secretsmanager_calls_total").await;
    let writes = metric(probe, "sm_injector_backing_secret_writes_total").await;
    println!(
        "peak RSS {:.1} MiB; Secrets Manager calls: {aws_after_warmup} during warm-up, {} during the load; backing Secret writes: {writes}",
        peak as f64 / 1024.0,
        aws_total - aws_after_warmup
    );
}

fn rustls_pemfile_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}
