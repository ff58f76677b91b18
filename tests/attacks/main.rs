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

/// The resident set of `pid` now and at its peak, in MiB, from /proc.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Waits `d`, as attacks run for a while.
async fn during(d: Duration) {
    tokio::time::sleep(d).await
}
