//! The chart's default certificate mode (`managed`) on the test bed: the
//! chart installed with `helm`, two replicas run out of process with only the
//! chart's ServiceAccount rights (the test bed's node pulls no image) behind
//! a loopback Service, and CA and certificate lifetimes shortened to seconds.
//! Admissions through the API server succeed at every moment through a CA
//! rotation and many certificate renewals, and each replica's certificate
//! verifies against the caBundle the API server holds at that moment.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, PostParams};
use serde_json::json;
use support::balancer::{Backend, Balancer};
use support::chart::{assert_same_objects, helm, kustomize, run, template};
use support::{namespace, testbed};

const HOME: &str = "certs-home";

/// kustomize users get the same as the chart's default:
/// examples/kustomize/managed renders the chart's objects, with no
/// certificate and the same rights.
#[test]
#[ignore = "needs helm: run ./tests/run"]
fn the_managed_overlay_renders_the_charts_default_objects() {
    let mut overlay = kustomize("examples/kustomize/managed");
    // The deleted mount and volume leave empty lists.
    let pod = &mut overlay.get_mut("Deployment/sm-injector").unwrap()["spec"]["template"]["spec"];
    assert_eq!(
        pod.as_object_mut().unwrap().remove("volumes"),
        Some(json!([]))
    );
    let container = &mut pod["containers"][0];
    assert_eq!(
        container.as_object_mut().unwrap().remove("volumeMounts"),
        Some(json!([]))
    );
    assert_same_objects(template(&[]), overlay, "examples/kustomize/managed");
}

async fn ca_bundle(webhooks: &Api<MutatingWebhookConfiguration>) -> Vec<u8> {
    let w = webhooks.get("sm-injector").await.unwrap();
    let hooks = w.webhooks.unwrap();
    hooks[0]
        .client_config
        .ca_bundle
        .as_ref()
        .map(|b| b.0.clone())
        .unwrap_or_default()
}

fn cas(bundle: &[u8]) -> usize {
    String::from_utf8_lossy(bundle)
        .matches("BEGIN CERTIFICATE")
        .count()
}

/// A TLS handshake with 127.0.0.1:`port` that trusts only `bundle`, as the
/// API server does: the server's certificate (DER), or why it is refused.
async fn handshake(port: u16, bundle: &[u8]) -> Result<Vec<u8>, String> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(bundle) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
    Ok(certs[0].to_vec())
}

#[tokio::test]
#[ignore = "needs the test bed and helm: run ./tests/run"]
async fn admissions_succeed_through_certificate_renewals_and_a_ca_rotation() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let bed = testbed();
    let helm_bed = |args: &[&str]| {
        let mut c = helm();
        c.env("KUBECONFIG", &bed.kubeconfig);
        c.args(args);
        run(c)
    };
    let chart = ["charts/sm-injector", "--namespace", HOME];
    let out = helm_bed(
        &[
            &["install", "sm-injector"],
            &chart[..],
            &["--create-namespace"],
        ]
        .concat(),
    )
    .unwrap();
    assert!(
        out.contains("keeps its serving certificate itself"),
        "{out}"
    );
    let client = bed.client().await;
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), HOME);
    assert!(
        ca_bundle(&webhooks).await.is_empty(),
        "rendered without a caBundle"
    );

    // Two replicas with the chart's rights only; lifetimes in seconds: the
    // CA rotates 60 s after it is made and expires at 90 s, certificates are
    // renewed every 13 s or so.
    let sa = support::install::sa_kubeconfig(bed, HOME, "sm-injector");
    let binary = Path::new(env!("CARGO_BIN_EXE_sm-injector"));
    let args = [
        "--lease-namespace=certs-home",
        "--certificates=managed",
        "--tls-names=127.0.0.1",
        "--ca-validity=90s",
        "--cert-validity=20s",
        "--ca-propagation=5s",
    ];
    // Started together, as a Deployment's replicas are (one loses the race
    // to make the CA); each is ready only once it serves a certificate that
    // the published caBundle verifies.
    let start = |name| support::start_serve_process(bed, binary, name, &sa, &args, &bed.moto, &[]);
    let (a, b) = (start("certs-a"), start("certs-b"));
    for (name, r) in [("a", &a), ("b", &b)] {
        support::eventually(
            Duration::from_secs(45),
            "the replica to be ready",
            || async {
                (support::injector::http_get(r.probe, "/readyz").await.0 == 200).then_some(())
            },
        )
        .await;
        let bundle = ca_bundle(&webhooks).await;
        if let Err(e) = handshake(r.port, &bundle).await {
            panic!("replica {name} is ready with a certificate the caBundle does not verify: {e}");
        }
    }
    let stored = secrets.get("sm-injector-webhook-ca").await.unwrap();
    let first_ca = stored.data.as_ref().unwrap()["ca.crt"].0.clone();
    let owner = &stored.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("MutatingWebhookConfiguration", "sm-injector")
    );
    assert_eq!(ca_bundle(&webhooks).await, first_ca, "the CA is published");

    // An upgrade renders no caBundle and keeps the one sm-injector wrote.
    let out = helm_bed(
        &[
            &["upgrade", "sm-injector"],
            &chart[..],
            &["--set", "replicas=3"],
        ]
        .concat(),
    )
    .unwrap();
    assert!(out.contains("REVISION: 2"), "{out}");
    assert_eq!(ca_bundle(&webhooks).await, first_ca, "kept by the upgrade");

    // Point the webhook at the replicas (the test bed has no kube-proxy).
    // Replacing clientConfig wipes the caBundle too: the replicas put it back.
    let balancer = Balancer::start(
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
        Duration::from_millis(200),
    )
    .await;
    let patch = json!([{"op": "replace", "path": "/webhooks/0/clientConfig",
        "value": {"url": format!("https://127.0.0.1:{}/mutate", balancer.port)}}]);
    bed.kubectl_run(
        &[
            "patch",
            "mutatingwebhookconfiguration",
            "sm-injector",
            "--type=json",
            "-p",
        ]
        .into_iter()
        .chain([patch.to_string().as_str()])
        .collect::<Vec<_>>(),
        None,
    )
    .unwrap();
    let ns = namespace(&client, "certs", &[("sm-injector.io/inject", "enabled")]).await;
    bed.put_secret(&format!("{ns}/db"), r#"{"url":"postgres://db"}"#)
        .await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "app", "annotations": {"sm-injector.io/env.DB_URL": format!("{ns}/db#url")}},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    support::eventually(
        Duration::from_secs(30),
        "the caBundle to be put back and the first admission",
        || {
            let (pods, pod, dry) = (pods.clone(), pod.clone(), dry.clone());
            async move { pods.create(&dry, &pod).await.ok() }
        },
    )
    .await;

    // For 100 s (past the rotation and the old CA's expiry), an admission
    // and a handshake with each replica every half second, none refused.
    let (mut leaves, mut bundles, mut most_cas) = (BTreeSet::new(), BTreeSet::new(), 0);
    let start = Instant::now();
    let mut admitted = 0;
    while start.elapsed() < Duration::from_secs(100) {
        let at = start.elapsed();
        let created = pods
            .create(&dry, &pod)
            .await
            .unwrap_or_else(|e| panic!("admission {admitted} refused at {at:?}: {e}"));
        let env = created.spec.unwrap().containers[0].env.clone().unwrap();
        assert_eq!(env[0].name, "DB_URL");
        admitted += 1;
        let bundle = ca_bundle(&webhooks).await;
        most_cas = most_cas.max(cas(&bundle));
        for (name, port) in [("a", a.port), ("b", b.port)] {
            let leaf = handshake(port, &bundle)
                .await
                .unwrap_or_else(|e| panic!("replica {name} at {at:?}: {e}"));
            leaves.insert(leaf);
        }
        bundles.insert(bundle);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let last = ca_bundle(&webhooks).await;
    assert!(admitted >= 100, "{admitted} admissions");
    assert_eq!(most_cas, 2, "the new CA was published beside the old one");
    assert_eq!(cas(&last), 1, "the old CA left once expired");
    assert_ne!(last, first_ca, "the CA was rotated");
    assert!(bundles.len() >= 3, "{} caBundles", bundles.len());
    assert!(leaves.len() >= 10, "{} serving certificates", leaves.len());
    let stored = secrets.get("sm-injector-webhook-ca").await.unwrap();
    assert!(!stored.data.unwrap().contains_key("previous-ca.crt"));
    // Woken by watches that the chart's by-name rights allow, and nothing
    // went wrong on the way.
    for name in ["certs-a", "certs-b"] {
        let log = support::log_tail(&bed.dir, name);
        assert!(
            !log.contains("WARN") && !log.contains("ERROR"),
            "{name}: {log}"
        );
    }

    // Uninstalled, the CA goes with the webhook configuration.
    for p in [a.pid, b.pid] {
        support::signal(p as i32, 9);
    }
    drop(balancer);
    helm_bed(&["uninstall", "sm-injector", "--namespace", HOME]).unwrap();
    support::eventually(
        Duration::from_secs(60),
        "the CA Secret to be collected",
        || {
            let secrets = secrets.clone();
            async move {
                secrets
                    .get_opt("sm-injector-webhook-ca")
                    .await
                    .unwrap()
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
}
