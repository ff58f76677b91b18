//! The webhooks the tests and benchmarks start: `sm-injector serve` as in a
//! cluster and the minimal no-op floor as processes, their registration with
//! the API server by URL, and an in-process marker webhook.

use super::*;

/// `examples/noop_webhook` of the same profile as the running bench (the
/// minimal no-op webhook the benchmarks compare against).
pub fn noop_webhook_binary() -> PathBuf {
    // target/release/deps/<bench>-... -> target/release/examples/noop_webhook
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples/noop_webhook");
    assert!(
        p.is_file(),
        "{} is missing: cargo build --release --example noop_webhook",
        p.display()
    );
    p
}

/// Starts the minimal no-op webhook on 127.0.0.1 with the bed's serving
/// certificate (written into `dir`); its port and pid.
pub fn start_noop_webhook(bed: &TestBed, dir: &Path) -> (u16, u32) {
    start_noop_webhook_answering(bed, dir, None)
}

/// [`start_noop_webhook`], answering the base64 patch in `patch` when given.
pub fn start_noop_webhook_answering(bed: &TestBed, dir: &Path, patch: Option<&Path>) -> (u16, u32) {
    let pem = bed.serving_cert();
    fs::write(dir.join("tls.crt"), &pem.cert).unwrap();
    fs::write(dir.join("tls.key"), &pem.key).unwrap();
    let port = free_port();
    let mut args = vec![
        format!("127.0.0.1:{port}"),
        dir.join("tls.crt").display().to_string(),
        dir.join("tls.key").display().to_string(),
    ];
    args.extend(patch.map(|p| p.display().to_string()));
    let name = format!("noop-webhook-{port}");
    let noop = spawn(&bed.dir, &name, &noop_webhook_binary(), &args);
    let pid = noop.id();
    // Stopped at exit with the other children (its pid is in CHILDREN).
    std::mem::forget(noop);
    (port, pid)
}

/// `sm-injector serve` (the binary of this package) as its own process against
/// the test bed, configured as in a cluster: KUBECONFIG, and the AWS chain with
/// AWS_ENDPOINT_URL_SECRETS_MANAGER pointing at moto.
pub struct ServeProcess {
    pub port: u16,
    pub probe: u16,
    pub pid: u32,
}

pub async fn serve_process(
    bed: &TestBed,
    binary: &Path,
    name: &str,
    extra_args: &[&str],
) -> ServeProcess {
    serve_process_as(bed, binary, name, &bed.kubeconfig, extra_args).await
}

/// [`serve_process`] with the Kubernetes identity of `kubeconfig`.
pub async fn serve_process_as(
    bed: &TestBed,
    binary: &Path,
    name: &str,
    kubeconfig: &Path,
    extra_args: &[&str],
) -> ServeProcess {
    serve_process_at(bed, binary, name, kubeconfig, extra_args, &bed.moto).await
}

/// [`serve_process_as`] with Secrets Manager at `aws_endpoint`.
pub async fn serve_process_at(
    bed: &TestBed,
    binary: &Path,
    name: &str,
    kubeconfig: &Path,
    extra_args: &[&str],
    aws_endpoint: &str,
) -> ServeProcess {
    serve_process_env(bed, binary, name, kubeconfig, extra_args, aws_endpoint, &[]).await
}

/// Starts `sm-injector serve` as its own process like [`serve_process_at`],
/// with more environment variables (`LD_PRELOAD`, ...), and does not wait.
pub fn start_serve_process(
    bed: &TestBed,
    binary: &Path,
    name: &str,
    kubeconfig: &Path,
    extra_args: &[&str],
    aws_endpoint: &str,
    extra_env: &[(&str, &str)],
) -> ServeProcess {
    let dir = bed.dir.join(name);
    fs::create_dir_all(&dir).unwrap();
    let pem = bed.serving_cert();
    write(&dir.join("tls.crt"), &pem.cert);
    write(&dir.join("tls.key"), &pem.key);
    let (port, probe) = (free_port(), free_port());
    let kubeconfig = kubeconfig.display().to_string();
    let mut args = vec![
        "serve".to_string(),
        format!("--listen=127.0.0.1:{port}"),
        format!("--probe-listen=127.0.0.1:{probe}"),
        format!("--tls-cert={}", dir.join("tls.crt").display()),
        format!("--tls-key={}", dir.join("tls.key").display()),
    ];
    args.extend(extra_args.iter().map(|a| a.to_string()));
    let mut env = vec![
        ("KUBECONFIG", kubeconfig.as_str()),
        ("AWS_ENDPOINT_URL_SECRETS_MANAGER", aws_endpoint),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("RUST_LOG", "warn"),
    ];
    env.extend_from_slice(extra_env);
    let child = spawn_env(&bed.dir, name, binary, &args, &env);
    let pid = child.id();
    // Stopped at exit with the other children (its pid is in CHILDREN).
    std::mem::forget(child);
    ServeProcess { port, probe, pid }
}

/// [`start_serve_process`], then waits until it is ready (45 s at most).
pub async fn serve_process_env(
    bed: &TestBed,
    binary: &Path,
    name: &str,
    kubeconfig: &Path,
    extra_args: &[&str],
    aws_endpoint: &str,
    extra_env: &[(&str, &str)],
) -> ServeProcess {
    let server = start_serve_process(
        bed,
        binary,
        name,
        kubeconfig,
        extra_args,
        aws_endpoint,
        extra_env,
    );
    let probe = server.probe;
    let start = std::time::Instant::now();
    loop {
        let (status, body) = injector::http_get(probe, "/readyz").await;
        if status == 200 {
            break;
        }
        if start.elapsed() > Duration::from_secs(45) {
            panic!(
                "sm-injector {name} not ready after 45 s (/readyz: {status} {body}); its log:\n{}",
                log_tail(&bed.dir, name)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server
}

/// Registers a URL MutatingWebhookConfiguration `name` for sm-injector on
/// 127.0.0.1:`port`, for pods in `namespaces` labelled for injection.
pub async fn start_url_webhook(
    bed: &TestBed,
    client: &kube::Client,
    name: &str,
    port: u16,
    namespaces: &[&str],
) {
    register_webhook(bed, client, name, &format!("127.0.0.1:{port}"), namespaces).await
}

/// [`start_url_webhook`] at `host_port`. (The API server would speak HTTP/2
/// to a loopback URL webhook that offered it; sm-injector offers HTTP/1.1
/// only, as the API server speaks to Service webhooks.)
pub async fn register_webhook(
    bed: &TestBed,
    client: &kube::Client,
    name: &str,
    host_port: &str,
    namespaces: &[&str],
) {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let config: MutatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "pods.sm-injector.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "NoneOnDryRun",
            "failurePolicy": "Fail",
            "reinvocationPolicy": "IfNeeded",
            "timeoutSeconds": 10,
            "clientConfig": {"url": format!("https://{host_port}/mutate"), "caBundle": bed.ca_bundle_b64()},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            // As shipped (manifests/mutatingwebhookconfiguration.yaml).
            "matchConditions": [{"name": "has-sm-injector-annotations", "expression":
                "has(object.metadata.annotations) && object.metadata.annotations.exists(k, k.startsWith('sm-injector.io/'))"}],
            "namespaceSelector": {
                "matchLabels": {"sm-injector.io/inject": "enabled"},
                "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}]
            }
        }]
    }))
    .unwrap();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
}

/// A webhook that labels every pod `testbed-mutated=yes`.
pub(super) async fn marker(
    body: axum::body::Bytes,
) -> axum::Json<kube::core::admission::AdmissionReview<kube::core::DynamicObject>> {
    use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
    let review: AdmissionReview<k8s_openapi::api::core::v1::Pod> =
        serde_json::from_slice(&body).unwrap();
    let req: AdmissionRequest<_> = review.try_into().unwrap();
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "add", "path": "/metadata/labels", "value": {"testbed-mutated": "yes"}}
    ]))
    .unwrap();
    axum::Json(
        AdmissionResponse::from(&req)
            .with_patch(patch)
            .unwrap()
            .into_review(),
    )
}

/// Serves the marker webhook over TLS on loopback and registers it as the
/// MutatingWebhookConfiguration `name` for pods in `namespaces`.
pub async fn start_marker(bed: &TestBed, client: &kube::Client, name: &str, namespaces: &[&str]) {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let pem = bed.serving_cert();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(pem.cert.into(), pem.key.into())
        .await
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let app = axum::Router::new().route("/mutate", axum::routing::post(marker));
    tokio::spawn(async move {
        axum_server::from_tcp_rustls(listener, tls)
            .unwrap()
            .serve(app.into_make_service())
            .await
    });
    let config: MutatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "marker.testbed.sm-injector.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 10,
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate"), "caBundle": bed.ca_bundle_b64()},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}]}
        }]
    }))
    .unwrap();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
}
