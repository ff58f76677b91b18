//! The AdmissionReviews the benchmarks post: the seed pod, and a pod with
//! many references. Shared by `benches/admission.rs` (over TLS) and
//! `benches/review.rs` (in one thread, without I/O).

use serde_json::json;

/// The seed pod (`refs == 0`: its 3 env references and 1 env-from), or a pod
/// with `refs` env references to the keys of 5 secrets; its ServiceAccount is
/// `bot`.
pub(crate) fn review(ns: &str, refs: usize) -> Vec<u8> {
    let mut annotations = json!({
        "sm-injector.io/env.DISCORD_BOT_TOKEN": format!("{ns}/discord#bot_token"),
        "sm-injector.io/env.DISCORD_APPLICATION_ID": format!("{ns}/discord#application_id"),
        "sm-injector.io/env.DATABASE_URL": format!("{ns}/postgres#url"),
        "sm-injector.io/env-from.REDIS": format!("{ns}/redis")
    });
    if refs > 0 {
        annotations = (0..refs)
            .map(|i| {
                (
                    format!("sm-injector.io/env.V{i}"),
                    json!(format!("{ns}/wide{}#k{}", i % 5, i)),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    let object = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "bot-7d9f8c6b5-",
            "namespace": ns,
            "labels": {"app": "bot", "pod-template-hash": "7d9f8c6b5"},
            "annotations": annotations
        },
        "spec": {
            "initContainers": [{"name": "migrate", "image": "registry.example/bot:1.4.2", "args": ["migrate"]}],
            "containers": [
                {"name": "bot", "image": "registry.example/bot:1.4.2", "env": [{"name": "LOG_LEVEL", "value": "info"}],
                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                 "volumeMounts": [{"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]},
                {"name": "sidecar", "image": "registry.example/sidecar:2"}
            ],
            "serviceAccountName": "bot",
            "volumes": [{"name": "kube-api-access-x", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}]
        }
    });
    envelope(
        ns,
        "system:serviceaccount:kube-system:replicaset-controller",
        object,
    )
}

/// The AdmissionReview of the creation of `object` (a Pod) in `ns` by `user`.
pub(crate) fn envelope(ns: &str, user: &str, object: serde_json::Value) -> Vec<u8> {
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
            "userInfo": {"username": user},
            "object": object,
            "dryRun": false
        }
    }))
    .unwrap()
}
