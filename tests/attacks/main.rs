//! Attacks on a replica, run as an in-cluster attacker or a hostile tenant
//! would (paced, topped up), against the real API server and moto: each is
//! refused or bounded while the API server's admissions go on, and the
//! replica's memory, read from /proc, stays under its shipped limit.

#[path = "../support/mod.rs"]
mod support;

mod connections;
mod memory;
mod quota;
mod records;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use support::{ServeProcess, TestBed};

const INJECT: (&str, &str) = ("sm-injector.io/inject", "enabled");

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_sm-injector"))
}

fn pod(name: &str, reference: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"sm-injector.io/env.K": reference}},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    }))
    .unwrap()
}

/// A replica as its own process, its own namespace `own`, registered as the
/// webhook `name` for `namespaces`; returns once the API server calls it.
async fn replica(
    bed: &TestBed,
    client: &kube::Client,
    name: &str,
    own: &str,
    namespaces: &[&str],
    extra_args: &[&str],
) -> ServeProcess {
    replica_at(bed, client, name, own, namespaces, extra_args, &bed.moto).await
}

/// [`replica`] with Secrets Manager at `aws_endpoint`.
async fn replica_at(
    bed: &TestBed,
    client: &kube::Client,
    name: &str,
    own: &str,
    namespaces: &[&str],
    extra_args: &[&str],
    aws_endpoint: &str,
) -> ServeProcess {
    let lease = format!("--lease-namespace={own}");
    let mut args = vec![lease.as_str()];
    args.extend_from_slice(extra_args);
    let server =
        support::serve_process_at(bed, binary(), name, &bed.kubeconfig, &args, aws_endpoint).await;
    support::register_webhook(
        bed,
        client,
        name,
        &format!("127.0.0.1:{}", server.port),
        namespaces,
    )
    .await;
    server
}

/// Creates `pod` in `ns` through the API server: the value of its first
/// container's first variable, or why there is none.
async fn create(client: &kube::Client, ns: &str, p: &Pod) -> Result<String, String> {
    let created = Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), p)
        .await
        .map_err(|e| e.to_string())?;
    let env = created.spec.unwrap().containers[0].env.clone();
    Ok(format!(
        "{:?}",
        env.and_then(|e| e.first().map(|v| v.name.clone()))
    ))
}

/// Creates `n` pods `<prefix>-<i>` in `ns` through the API server, `pause`
/// apart, the i-th referencing `reference(i)`; each must come back injected.
/// Returns the slowest creation.
async fn admitted_meanwhile(
    client: &kube::Client,
    ns: &str,
    prefix: &str,
    n: usize,
    pause: Duration,
    reference: impl Fn(usize) -> String,
) -> Duration {
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let start = std::time::Instant::now();
        let p = pod(&format!("{prefix}-{i}"), &reference(i));
        let created = create(client, ns, &p).await;
        assert_eq!(created.as_deref(), Ok(r#"Some("K")"#), "pod {prefix}-{i}");
        slowest = slowest.max(start.elapsed());
        tokio::time::sleep(pause).await;
    }
    slowest
}

/// A TLS client trusting the test bed's CA, without a client certificate.
fn tls_client(bed: &TestBed) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(bed.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TCP connection to 127.0.0.1:`port` from the loopback address `from`
/// (127.0.0.2, ...): another pod, as the replica sees it.
async fn connect_from(from: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(([127, 0, 0, 1], port).into()).await
}

/// [`connect_from`], then a TLS handshake.
async fn tls_from(
    from: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = connect_from(from, port).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
}

/// A field of `/proc/<pid>/status` (`VmRSS:`, `RssAnon:`, ...), in MiB.
fn status_mib(pid: u32, name: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
        / 1024.0
}

/// The resident set of `pid` now and at its peak, in MiB, from /proc.
fn rss_mib(pid: u32) -> (f64, f64) {
    (status_mib(pid, "VmRSS:"), status_mib(pid, "VmHWM:"))
}

/// The pages of its own binary a release replica holds, in MiB, on top of
/// its anonymous memory: `./tests/bench` measures its whole idle RSS at about
/// 20 MiB, 17 of them the binary's. The tests run the debug build, whose
/// binary alone keeps about 43 MiB resident, which the shipped image does not
/// have; so the limit is checked on what an attack can grow (anonymous
/// memory) plus this.
const SHIPPED_BINARY_MIB: f64 = 24.0;

/// The Deployment's memory limit, in MiB.
const LIMIT_MIB: f64 = 128.0;

/// Watches a replica's anonymous memory (`RssAnon`: its heap and stacks, not
/// the pages of its binary) while an attack runs.
struct AnonWatch {
    pid: u32,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<f64>,
}

impl AnonWatch {
    fn start(pid: u32) -> AnonWatch {
        use std::sync::atomic::Ordering;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            while !s.load(Ordering::Relaxed) {
                peak = peak.max(status_mib(pid, "RssAnon:"));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            peak
        });
        AnonWatch { pid, stop, task }
    }

    /// The most anonymous memory seen, in MiB: the largest sample, and at
    /// least the peak resident set less the file pages now (which counts a
    /// peak between two samples, unless the binary's pages grew after it).
    async fn peak(self) -> f64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sampled = self.task.await.unwrap();
        let (_, hwm) = rss_mib(self.pid);
        let file = status_mib(self.pid, "RssFile:") + status_mib(self.pid, "RssShmem:");
        sampled.max(hwm - file)
    }
}

/// Asserts that a replica whose anonymous memory peaked at `anon` MiB stays,
/// as shipped, under its limit.
fn assert_under_limit(anon: f64) {
    println!(
        "replica anonymous memory peak {anon:.1} MiB; as shipped, with its binary's \
         {SHIPPED_BINARY_MIB} MiB, {:.1} MiB of the {LIMIT_MIB} MiB limit",
        anon + SHIPPED_BINARY_MIB
    );
    assert!(
        anon + SHIPPED_BINARY_MIB < LIMIT_MIB,
        "anonymous memory peaked at {anon:.1} MiB: with the binary's {SHIPPED_BINARY_MIB} MiB, \
         past the {LIMIT_MIB} MiB limit"
    );
}

/// Waits `d`, as attacks run for a while.
async fn during(d: Duration) {
    tokio::time::sleep(d).await
}
