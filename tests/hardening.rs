//! A bad day, end to end: only the API server may call /mutate, and a rolling
//! restart of two replicas loses no admission. Attacks on connections, memory
//! and the AWS quota are in `tests/attacks`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use support::injector::{self, Options};
use support::{TestBed, namespace, testbed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const INJECT: (&str, &str) = ("sm-injector.io/inject", "enabled");

fn pod(name: &str, reference: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"sm-injector.io/env.K": reference}},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    }))
    .unwrap()
}

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_sm-injector"))
}

/// A TLS client trusting the test bed's CA, presenting `cert` if given.
fn tls_client(bed: &TestBed, cert: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(bed.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder().with_root_certificates(roots);
    Arc::new(match cert {
        None => b.with_no_client_auth(),
        Some((c, k)) => b
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(c.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(k.as_bytes()).unwrap(),
            )
            .unwrap(),
    })
}

/// Posts an AdmissionReview for a pod in `ns` straight to the webhook: the
/// HTTP status line, or the error that ended the exchange.
async fn direct_post(
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    ns: &str,
) -> Result<String, String> {
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "forged", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE", "userInfo": {"username": "system:admin"}, "namespace": ns,
            "object": serde_json::to_value(pod("forged", &format!("{ns}/s#k"))).unwrap()
        }
    })
    .to_string();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut c = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let req = format!(
        "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{review}",
        review.len()
    );
    c.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    match c.read_to_end(&mut out).await {
        Ok(_) if !out.is_empty() => Ok(String::from_utf8_lossy(&out)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()),
        Ok(_) => Err("closed without an answer".into()),
        Err(e) => Err(format!("read: {e}")),
    }
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn with_a_client_ca_only_the_api_server_may_call_mutate() {
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "mtls", &[INJECT]).await;
    // sm-injector's own namespace is never one it injects into.
    let own = namespace(&client, "mtls-own", &[]).await;
    bed.put_secret(&format!("{ns}/s"), r#"{"k":"v"}"#).await;
    let ca = format!("--client-ca-file={}", bed.webhook_client_ca.display());
    let server = support::serve_process(
        bed,
        binary(),
        &format!("mtls-{ns}"),
        &[&ca, &format!("--lease-namespace={own}")],
    )
    .await;
    support::start_url_webhook(bed, &client, &format!("mtls-{ns}"), server.port, &[&ns]).await;

    // The API server presents its webhook client certificate: admitted and injected.
    support::until_injected(&client, &ns, &pod("canary", &format!("{ns}/s#k"))).await;
    let p = Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &pod("app", &format!("{ns}/s#k")))
        .await
        .unwrap();
    assert!(p.spec.unwrap().containers[0].env.is_some());
    let admitted = injector::metric_sum(server.probe, "sm_injector_admissions_total").await;
    assert!(admitted >= 1.0);

    // Anyone else is refused before a byte of HTTP: no certificate, or one
    // from another CA (here the cluster's own, which the API server trusts).
    let none = direct_post(server.port, tls_client(bed, None), &ns).await;
    assert!(none.is_err(), "{none:?}");
    let admin = std::fs::read_to_string(bed.dir.join("pki/admin.crt")).unwrap();
    let admin_key = std::fs::read_to_string(bed.dir.join("pki/admin.key")).unwrap();
    let other = direct_post(
        server.port,
        tls_client(bed, Some((&admin, &admin_key))),
        &ns,
    )
    .await;
    assert!(other.is_err(), "{other:?}");
    // The API server's certificate does get an answer (the check is the CA, not the port).
    let ok_cert = std::fs::read_to_string(bed.dir.join("pki/webhook-client.crt")).unwrap();
    let ok_key = std::fs::read_to_string(bed.dir.join("pki/webhook-client.key")).unwrap();
    let answered = direct_post(server.port, tls_client(bed, Some((&ok_cert, &ok_key))), &ns).await;
    assert_eq!(answered.as_deref(), Ok("HTTP/1.1 200 OK"), "{answered:?}");
    // The refused posts reached no admission.
    assert_eq!(
        injector::metric_sum(server.probe, "sm_injector_admissions_total").await,
        admitted + 1.0
    );
    support::signal(server.pid as i32, libc::SIGKILL);
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn a_rolling_restart_of_two_replicas_loses_no_admission() {
    use support::balancer::{Backend, Balancer};
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "rolling", &[INJECT]).await;
    let own = namespace(&client, "rolling-own", &[]).await;
    bed.put_secret(&format!("{ns}/s"), r#"{"k":"v"}"#).await;
    let lease = format!("--lease-namespace={own}");
    let replica = |id: &str| {
        let name = format!("{id}-{ns}");
        let lease = lease.clone();
        async move {
            support::serve_process(
                bed,
                binary(),
                &name,
                &[&lease, "--shutdown-delay=2s", "--drain=10s"],
            )
            .await
        }
    };
    let (a, b) = (replica("a").await, replica("b").await);
    let service = Balancer::start(
        vec![
            Backend {
                port: a.port,
                probe: a.probe,
            },
            Backend {
                port: b.port,
                probe: b.probe,
            },
        ],
        Duration::from_secs(1),
    )
    .await;
    // Through 0.0.0.0 the API server speaks HTTP/1.1, as to a Service.
    support::register_webhook(
        bed,
        &client,
        &format!("rolling-{ns}"),
        &format!("0.0.0.0:{}", service.port),
        &[&ns],
    )
    .await;
    support::until_injected(&client, &ns, &pod("canary", &format!("{ns}/s#k"))).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);

    // 200 pods in five waves of 40 at once, 0.8 s apart (wider than the API
    // server's 25 idle connections, so that each wave opens new ones through
    // the Service); replica a gets SIGTERM after the first wave, as in a
    // rolling update or a node drain. The Service follows readiness within
    // 1 s, as endpoints do within a second or two.
    let created = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients = (0..40).map(|c| {
        let (pods, created, ns) = (pods.clone(), created.clone(), ns.clone());
        async move {
            let mut failures = vec![];
            for i in 0..5 {
                tokio::time::sleep(Duration::from_millis(800)).await;
                let name = format!("p-{c}-{i}");
                match pods
                    .create(&PostParams::default(), &pod(&name, &format!("{ns}/s#k")))
                    .await
                {
                    Ok(p) if p.spec.as_ref().unwrap().containers[0].env.is_some() => {}
                    Ok(_) => failures.push(format!("{name}: admitted without injection")),
                    Err(e) => failures.push(format!("{name}: {e}")),
                }
                created.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            failures
        }
    });
    let stop_a = async {
        while created.load(std::sync::atomic::Ordering::SeqCst) < 40 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        support::signal(a.pid as i32, libc::SIGTERM);
        std::time::Instant::now()
    };
    let (failures, stopped_at) = futures::join!(futures::future::join_all(clients), stop_a);
    let failures: Vec<String> = failures.into_iter().flatten().collect();
    eprintln!(
        "routed: a {} b {}",
        service.routed[0].load(std::sync::atomic::Ordering::SeqCst),
        service.routed[1].load(std::sync::atomic::Ordering::SeqCst)
    );
    assert!(failures.is_empty(), "lost admissions: {failures:#?}");
    // Replica a did stop during the burst (its probe port is closed), and b
    // took the rest.
    assert!(stopped_at.elapsed() > Duration::from_secs(3));
    assert_eq!(
        injector::http_get(a.probe, "/healthz").await.0,
        0,
        "a still up"
    );
    let b_served = injector::metric_sum(b.probe, "sm_injector_admissions_total").await;
    assert!(b_served > 0.0);
    support::signal(b.pid as i32, libc::SIGKILL);
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn over_cap_pods_are_denied_quickly_while_another_tenant_is_admitted() {
    let bed = testbed();
    let client = bed.client().await;
    let hostile = namespace(&client, "hostile", &[INJECT]).await;
    let normal = namespace(&client, "normal", &[INJECT]).await;
    bed.put_secret(&format!("{normal}/s"), r#"{"k":"v"}"#).await;
    let inj = injector::start(bed, &[&hostile, &normal], Options::default()).await;
    // 300 containers, and 300 or 20 references.
    let big = |name: &str, refs: usize| -> Pod {
        let annotations: serde_json::Map<String, serde_json::Value> = (0..refs)
            .map(|i| {
                (
                    format!("sm-injector.io/env.V{i}"),
                    json!(format!("{hostile}/s#k{i}")),
                )
            })
            .collect();
        let containers: Vec<serde_json::Value> = (0..300)
            .map(|i| json!({"name": format!("c{i}"), "image": "registry.invalid/app:1"}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"containers": containers}
        }))
        .unwrap()
    };
    let hostile_api = Api::<Pod>::namespaced(client.clone(), &hostile);
    let normal_api = Api::<Pod>::namespaced(client.clone(), &normal);
    let denied = |name: String, refs: usize| {
        let api = hostile_api.clone();
        let p = big(&name, refs);
        async move {
            let t = std::time::Instant::now();
            let e = api.create(&PostParams::default(), &p).await.unwrap_err();
            (e.to_string(), t.elapsed())
        }
    };
    let attacks = futures::future::join_all(
        (0..6).map(|i| denied(format!("big-{i}"), if i % 2 == 0 { 300 } else { 20 })),
    );
    let meanwhile = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = std::time::Instant::now();
        let p = normal_api
            .create(
                &PostParams::default(),
                &pod("meanwhile", &format!("{normal}/s#k")),
            )
            .await
            .unwrap();
        (p, t.elapsed())
    };
    let (attacks, (p, took)) = futures::join!(attacks, meanwhile);
    assert!(p.spec.unwrap().containers[0].env.is_some());
    assert!(
        took < Duration::from_secs(2),
        "the normal pod took {took:?}"
    );
    for (i, (e, t)) in attacks.iter().enumerate() {
        let expected = if i % 2 == 0 {
            "the pod has 300 secret references; at most 250 (--max-references)"
        } else {
            "300 containers x 20 references = 6000 injections; at most 2500 (--max-injections"
        };
        assert!(e.contains(expected), "{e}");
        assert!(*t < Duration::from_secs(2), "denied after {t:?}");
    }
    // Nothing was asked of Secrets Manager for them: the one call is the
    // normal pod's.
    let calls =
        injector::metric_sum(inj.probe_port, "sm_injector_secretsmanager_calls_total").await;
    assert_eq!(calls, 1.0);
    inj.stop(&client).await;
}
