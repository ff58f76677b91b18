//! Installing as a cluster admin would, beyond the plain base: the install
//! overlay that carries the `caBundle` through every re-apply, an overlay that
//! moves sm-injector to another namespace (examples/kustomize/), and the Helm
//! chart (charts/sm-injector) with a real `helm` built from its Go module
//! (tests/tools/). Its own test bed: these install cluster-scoped objects of
//! the same names as tests/install/, one test at a time (INSTALLS).

#[path = "../support/mod.rs"]
mod support;

mod chart;
mod image;

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, PostParams};
use serde_json::json;
use support::chart::{assert_same_objects, helm, kustomize, objects, run, template};
use support::{TestBed, namespace, testbed};

/// One install on the test bed at a time: they share cluster-scoped names.
static INSTALLS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A copy of the repository's layout (manifests/, examples/kustomize/) with
/// `sm-injector certs --namespace <namespace>` written to certs/generated, as
/// a user's checkout would be after the documented steps.
fn checkout(bed: &TestBed, name: &str, namespace: &str) -> std::path::PathBuf {
    let root = bed.dir.join(name);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    copy_dir(&repo.join("manifests"), &root.join("manifests"));
    copy_dir(
        &repo.join("examples/kustomize"),
        &root.join("examples/kustomize"),
    );
    let status = Command::new(env!("CARGO_BIN_EXE_sm-injector"))
        .args(["certs", "--namespace", namespace, "--out-dir"])
        .arg(root.join("certs/generated"))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "sm-injector certs");
    root
}

fn webhook(bed: &TestBed) -> serde_json::Value {
    let out = bed
        .kubectl_run(
            &[
                "get",
                "mutatingwebhookconfiguration",
                "sm-injector",
                "-o",
                "json",
            ],
            None,
        )
        .unwrap();
    serde_json::from_str(&out).unwrap()
}

fn ca_bundle(bed: &TestBed) -> Option<String> {
    webhook(bed)["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .map(String::from)
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn the_relocated_overlay_keeps_its_ca_bundle_and_admits_pods() {
    use base64::Engine;
    let _one = INSTALLS.lock().await;
    let bed = testbed();
    let home = "platform-secrets";
    let root = checkout(bed, "relocated-checkout", home);
    let overlay = root.join("examples/kustomize/relocated");
    let overlay = overlay.to_str().unwrap();
    let applied = bed.kubectl_run(&["apply", "-k", overlay], None).unwrap();
    assert!(applied.contains(&format!("namespace/{home}")), "{applied}");
    assert!(applied.contains("secret/sm-injector-tls"), "{applied}");
    let ca = std::fs::read(root.join("certs/generated/ca.crt")).unwrap();
    let want = base64::engine::general_purpose::STANDARD.encode(&ca);
    assert_eq!(ca_bundle(bed).as_deref(), Some(want.as_str()));

    // Everything that named the namespace names the new one.
    let w = webhook(bed);
    assert_eq!(
        w["webhooks"][0]["clientConfig"]["service"]["namespace"],
        home
    );
    assert_eq!(
        w["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"],
        json!(["kube-system", home])
    );
    for policy in [
        "sm-injector-managed-secrets",
        "sm-injector-token-requests",
        "sm-injector-workload-rolls",
    ] {
        let vap = bed
            .kubectl_run(
                &["get", "validatingadmissionpolicy", policy, "-o", "json"],
                None,
            )
            .unwrap();
        assert!(
            vap.contains(&format!("system:serviceaccount:{home}:sm-injector"))
                && !vap.contains("system:serviceaccount:sm-injector:"),
            "{policy}: {vap}"
        );
    }
    let binding = bed
        .kubectl_run(
            &["get", "clusterrolebinding", "sm-injector", "-o", "json"],
            None,
        )
        .unwrap();
    let binding: serde_json::Value = serde_json::from_str(&binding).unwrap();
    assert_eq!(binding["subjects"][0]["namespace"], home);

    // An upgrade re-applies the overlay: the caBundle stays.
    let again = bed.kubectl_run(&["apply", "-k", overlay], None).unwrap();
    assert!(
        again.contains("mutatingwebhookconfiguration.admissionregistration.k8s.io/sm-injector"),
        "{again}"
    );
    assert_eq!(ca_bundle(bed).as_deref(), Some(want.as_str()));

    // Running with only the relocated ServiceAccount's rights, pods are
    // admitted and injected: its role bindings and the admission policy's
    // user name follow the namespace (the backing Secret's write passes it).
    let inst = support::install::run_installed(bed, home).await;
    let _ = inst.port;
    let client = bed.client().await;
    let ns = namespace(&client, "moved", &[("sm-injector.io/inject", "enabled")]).await;
    bed.put_secret(&format!("{ns}/db"), r#"{"url":"postgres://moved"}"#)
        .await;
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "app", "annotations": {"sm-injector.io/env.DATABASE_URL": format!("{ns}/db#url")}},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    }))
    .unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let created = support::eventually(
        std::time::Duration::from_secs(30),
        "the pod to be admitted through the relocated install",
        || async { pods.create(&PostParams::default(), &p).await.ok() },
    )
    .await;
    let r = created.spec.unwrap().containers[0].env.as_ref().unwrap()[0]
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .clone()
        .unwrap();
    let backing = Api::<Secret>::namespaced(client.clone(), &ns)
        .get(&r.name)
        .await
        .unwrap();
    assert_eq!(backing.data.unwrap()[&r.key].0, b"postgres://moved");

    // Uninstalled with the overlay, the cluster-scoped objects go too.
    bed.kubectl_run(&["delete", "-k", overlay, "--wait=false"], None)
        .unwrap();
    let err = bed
        .kubectl_run(
            &["get", "mutatingwebhookconfiguration", "sm-injector"],
            None,
        )
        .unwrap_err();
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
}
