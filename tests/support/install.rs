//! Installing sm-injector from `manifests/` as a cluster admin would, for the
//! install tests and the demo: `kubectl apply -k manifests/` (server-side
//! validation of every object), a TokenRequest token for the ServiceAccount,
//! the binary running out of process with only that identity, and the
//! webhook's `clientConfig` pointed at it by URL (there is no kubelet to run the
//! Deployment's pods), as envtest does.

use std::path::PathBuf;

use serde_json::json;

use super::TestBed;

pub struct Installed {
    /// A kubeconfig with sm-injector's ServiceAccount token.
    pub sa_kubeconfig: PathBuf,
    pub port: u16,
}

pub async fn from_manifests(bed: &TestBed) -> Installed {
    let manifests = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests");
    let applied = bed
        .kubectl_run(&["apply", "-k", manifests], None)
        .expect("kubectl apply -k manifests/");
    for kind in [
        "namespace/sm-injector",
        "serviceaccount/sm-injector",
        "priorityclass.scheduling.k8s.io/sm-injector",
        "clusterrole.rbac.authorization.k8s.io/sm-injector",
        "clusterrolebinding.rbac.authorization.k8s.io/sm-injector",
        "deployment.apps/sm-injector",
        "poddisruptionbudget.policy/sm-injector",
        "service/sm-injector",
        "networkpolicy.networking.k8s.io/sm-injector",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/sm-injector",
        "validatingadmissionpolicy.admissionregistration.k8s.io/sm-injector-managed-secrets",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/sm-injector-managed-secrets",
        "validatingadmissionpolicy.admissionregistration.k8s.io/sm-injector-token-requests",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/sm-injector-token-requests",
        "validatingadmissionpolicy.admissionregistration.k8s.io/sm-injector-workload-rolls",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/sm-injector-workload-rolls",
        "validatingadmissionpolicy.admissionregistration.k8s.io/sm-injector-annotation-keys",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/sm-injector-annotation-keys",
    ] {
        assert!(applied.contains(kind), "{kind} not in {applied}");
    }
    run_installed(bed, "sm-injector").await
}

/// Runs the binary as the ServiceAccount `sm-injector` of `namespace` (its
/// Lease there), out of process, and points the webhook at it by URL.
pub async fn run_installed(bed: &TestBed, namespace: &str) -> Installed {
    let sa_kubeconfig = sa_kubeconfig(bed, namespace, "sm-injector");
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_sm-injector"));
    let lease = format!("--lease-namespace={namespace}");
    let name = format!("{namespace}-sa");
    let server = super::serve_process_as(bed, binary, &name, &sa_kubeconfig, &[&lease]).await;
    let patch = json!([{"op": "replace", "path": "/webhooks/0/clientConfig", "value": {
        "url": format!("https://127.0.0.1:{}/mutate", server.port),
        "caBundle": bed.ca_bundle_b64()
    }}]);
    bed.kubectl_run(
        &[
            "patch",
            "mutatingwebhookconfiguration",
            "sm-injector",
            "--type=json",
            "-p",
            &patch.to_string(),
        ],
        None,
    )
    .unwrap();
    Installed {
        sa_kubeconfig,
        port: server.port,
    }
}

/// A kubeconfig holding a TokenRequest token (2 hours) for the
/// ServiceAccount `sa` of `namespace`: that identity's rights only.
pub fn sa_kubeconfig(bed: &TestBed, namespace: &str, sa: &str) -> PathBuf {
    let token = bed
        .kubectl_run(
            &["-n", namespace, "create", "token", sa, "--duration=2h"],
            None,
        )
        .expect("TokenRequest for the ServiceAccount");
    let path = bed.dir.join(format!("{namespace}-{sa}.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: sa\n  user:\n    token: {}\ncontexts:\n- name: test\n  context: {{cluster: test, user: sa}}\ncurrent-context: test\n",
            bed.apiserver,
            bed.dir.join("pki/ca.crt").display(),
            token.trim()
        ),
    )
    .unwrap();
    path
}
