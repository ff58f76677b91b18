//! Installing from `manifests/` as a cluster admin would, then running
//! sm-injector with nothing but its ServiceAccount's rights.
//!
//! `kubectl apply -k manifests/` validates every object on the server. The
//! webhook's `clientConfig` is then pointed at a loopback URL (as envtest does:
//! there is no kubelet to run the Deployment's pods), and the binary runs out
//! of process with a kubeconfig holding a TokenRequest token for
//! `system:serviceaccount:sm-injector:sm-injector`.

#[path = "../support/mod.rs"]
mod support;

// The admission policies that confine its own rights.
mod policies;
// What it may do with Secrets, and what tenants may do with its Secrets.
mod secrets;

use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{TestBed, eventually, namespace, testbed};

fn kubectl(bed: &TestBed, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    bed.kubectl_run(args, stdin)
}

const SA: &str = "system:serviceaccount:sm-injector:sm-injector";

static INSTALLED: OnceLock<support::install::Installed> = OnceLock::new();
/// Held while installing, so that concurrent tests install once.
static INSTALLING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Applies manifests/ once for this test binary and starts sm-injector as its
/// ServiceAccount. Blocking calls are fine here: the webhook runs out of process.
async fn installed() -> &'static support::install::Installed {
    let _guard = INSTALLING.lock().await;
    if let Some(i) = INSTALLED.get() {
        return i;
    }
    let installed = support::install::from_manifests(testbed()).await;
    let _ = INSTALLED.set(installed);
    INSTALLED.get().unwrap()
}

fn pod(name: &str, annotations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    }))
    .unwrap()
}

/// Creates a pod, retrying while the API server has not yet picked up the
/// patched webhook configuration (it answers from an informer).
async fn create_pod(client: &kube::Client, ns: &str, p: &Pod) -> Result<Pod, String> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let start = std::time::Instant::now();
    loop {
        match pods.create(&PostParams::default(), p).await {
            Ok(p) => return Ok(p),
            Err(kube::Error::Api(e))
                if e.message.contains("sm-injector.sm-injector.svc")
                    && start.elapsed() < Duration::from_secs(30) =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(kube::Error::Api(e)) => return Err(e.message),
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn installed_from_manifests_it_works_with_only_its_serviceaccount_rights() {
    let inst = installed().await;
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(
        &client,
        "installed",
        &[("sm-injector.io/inject", "enabled")],
    )
    .await;
    bed.put_secret(
        &format!("{ns}/db"),
        r#"{"url":"postgres://x","password":"pw"}"#,
    )
    .await;
    bed.put_secret(&format!("{ns}/redis"), r#"{"HOST":"r"}"#)
        .await;

    // The main scenarios, with sm-injector holding only the ClusterRole's rights.
    let p = create_pod(
        &client,
        &ns,
        &pod(
            "app",
            json!({
                "sm-injector.io/env.DATABASE_URL": format!("{ns}/db#url"),
                "sm-injector.io/env-from.REDIS": format!("{ns}/redis"),
            }),
        ),
    )
    .await
    .expect("pod admitted");
    let c = &p.spec.unwrap().containers[0];
    let r = c.env.as_ref().unwrap()[0]
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .clone()
        .unwrap();
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let backing = secrets.get(&r.name).await.unwrap();
    assert_eq!(backing.data.unwrap()[&r.key].0, b"postgres://x");
    let managers: Vec<_> = backing
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, ["sm-injector"]);
    assert_eq!(
        c.env_from.as_ref().unwrap()[0].prefix.as_deref(),
        Some("REDIS_")
    );

    let msg = create_pod(
        &client,
        &ns,
        &pod("other", json!({"sm-injector.io/env.X": "elsewhere/db#url"})),
    )
    .await
    .unwrap_err();
    assert!(msg.contains("is not allowed in namespace"), "{msg}");
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    bed.put_secret(&format!("{ns}/dry"), r#"{"k":"v"}"#).await;
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(
            &dry,
            &pod(
                "dry",
                json!({"sm-injector.io/env.K": format!("{ns}/dry#k")}),
            ),
        )
        .await
        .unwrap();
    let managed = secrets
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=sm-injector"))
        .await
        .unwrap();
    assert_eq!(managed.items.len(), 2, "the dry run wrote nothing");

    // `sm-injector certs` writes a TLS Secret and a webhook configuration that
    // the API server accepts (server-side dry run).
    let out = bed.dir.join("certs-out");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_sm-injector"))
        .args(["certs", "--out-dir"])
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    for f in ["ca.key", "tls.key", "tls-secret.yaml"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f} holds a private key: owner only");
    }
    let applied = kubectl(
        bed,
        &[
            "apply",
            "--dry-run=server",
            "-f",
            &out.join("tls-secret.yaml").display().to_string(),
        ],
        None,
    )
    .expect("the generated Secret validates");
    assert!(
        applied.contains("secret/sm-injector-tls created (server dry run)"),
        "{applied}"
    );
    // The live configuration was pointed at a URL above: check the generated one
    // as a dry-run create under another name.
    let mut generated: k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration =
        serde_yaml_ng::from_str(
            &std::fs::read_to_string(out.join("mutatingwebhookconfiguration.yaml")).unwrap(),
        )
        .unwrap();
    generated.metadata.name = Some("sm-injector-generated".into());
    let created = Api::all(client.clone())
        .create(&dry, &generated)
        .await
        .expect("the generated webhook configuration validates");
    let cc = &created.webhooks.unwrap()[0].client_config;
    assert_eq!(
        cc.ca_bundle.as_ref().unwrap().0,
        std::fs::read(out.join("ca.crt")).unwrap()
    );
    assert_eq!(cc.service.as_ref().unwrap().name, "sm-injector");

    // The refresher runs under its Lease with the ServiceAccount's rights.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "sm-injector");
    eventually(
        Duration::from_secs(30),
        "the refresher to hold its Lease",
        || async {
            let l = leases.get_opt("sm-injector-refresher").await.ok()??;
            l.spec?.holder_identity
        },
    )
    .await;

    // The Deployment's pods pass the namespace's restricted Pod Security level.
    eventually(
        Duration::from_secs(60),
        "a sm-injector pod object",
        || async {
            let l = Api::<Pod>::namespaced(client.clone(), "sm-injector")
                .list(&ListParams::default())
                .await
                .ok()?;
            l.items.into_iter().next()
        },
    )
    .await;
    let _ = inst.port;
}
