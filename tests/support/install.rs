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
        "clusterrole.rbac.authorization.k8s.io/sm-injector",
        "clusterrolebinding.rbac.authorization.k8s.io/sm-injector",
        "deployment.apps/sm-injector",
        "poddisruptionbudget.policy/sm-injector",
        "service/sm-injector",
        "networkpolicy.networking.k8s.io/sm-injector",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/sm-injector",
        "validatingadmissionpolicy.admissionregistration.k8s.io/sm-injector-managed-secrets",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/sm-injector-managed-secrets",
    ] {
        assert!(applied.contains(kind), "{kind} not in {applied}");
    }

    let token = bed
        .kubectl_run(
            &[
                "-n",
                "sm-injector",
                "create",
                "token",
                "sm-injector",
                "--duration=2h",
            ],
            None,
        )
        .expect("TokenRequest for the ServiceAccount");
    let sa_kubeconfig = bed.dir.join("sm-injector-sa.kubeconfig");
    std::fs::write(
        &sa_kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: sa\n  user:\n    token: {}\ncontexts:\n- name: test\n  context: {{cluster: test, user: sa}}\ncurrent-context: test\n",
            bed.apiserver,
            bed.dir.join("pki/ca.crt").display(),
            token.trim()
        ),
    )
    .unwrap();
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_sm-injector"));
    let server = super::serve_process_as(bed, binary, "sm-injector-sa", &sa_kubeconfig, &[]).await;
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
