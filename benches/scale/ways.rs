//! The ways a pod is created, each in its own namespaces (the label
//! `scale-way` picks the webhook): with no webhook, the minimal no-op
//! webhook, the no-op answering sm-injector's patch (`sized.rs`), and
//! sm-injector; each webhook registered as sm-injector ships.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;

use super::support::{self, TestBed};

/// In the order each round of chunks starts from ([`super::order::turns`]).
pub const WAYS: [&str; 4] = ["none", "no-op", "sm-size", "sm-injector"];

/// Registers the webhook on `port` for `way`'s namespaces of this `run`.
pub async fn register(client: &kube::Client, bed: &TestBed, run: u32, way: &str, port: u16) {
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": format!("scale-{run}-{way}")},
        "webhooks": [{
            "name": "pods.sm-injector.io", "admissionReviewVersions": ["v1"], "sideEffects": "NoneOnDryRun",
            "failurePolicy": "Fail", "reinvocationPolicy": "IfNeeded", "timeoutSeconds": 10,
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate"), "caBundle": bed.ca_bundle_b64()},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            // As shipped (manifests/mutatingwebhookconfiguration.yaml).
            "matchConditions": [{"name": "has-sm-injector-annotations", "expression":
                "has(object.metadata.annotations) && object.metadata.annotations.exists(k, k.startsWith('sm-injector.io/'))"}],
            "namespaceSelector": {"matchLabels": {"sm-injector.io/inject": "enabled", "scale-bench": run.to_string(), "scale-way": way}}
        }]
    }))
    .unwrap();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
}

/// Waits until a dry-run creation of `pod` in `ns` comes back with `label`:
/// `way`'s webhook is called.
pub async fn take_effect(client: &kube::Client, way: &str, ns: &str, label: &str, pod: &Pod) {
    support::eventually(
        Duration::from_secs(30),
        &format!("the {way} webhook to take effect"),
        || async {
            let dry = PostParams {
                dry_run: true,
                ..Default::default()
            };
            match Api::<Pod>::namespaced(client.clone(), ns)
                .create(&dry, pod)
                .await
            {
                Ok(out) => out.metadata.labels?.contains_key(label).then_some(()),
                Err(e) => {
                    eprintln!("{way}: {e}");
                    None
                }
            }
        },
    )
    .await;
}
