//! The webhook end to end (SPEC sections 1 to 6): the real API server calls
//! sm-injector, which reads moto through the AWS SDK and writes backing Secrets.
//! Denials are checked by the message the API server returns to the client.

#[path = "../support/mod.rs"]
mod support;

mod availability;
mod decisions;
mod decode;
mod denials;
mod identity;
mod injection;
mod render;
mod serving;
mod shutdown;
mod status;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use support::injector::{self, Injector, Options};
use support::{TestBed, eventually, kubectl_create, namespace, namespace_with, testbed};

const INJECT: (&str, &str) = ("sm-injector.io/inject", "enabled");
const MANAGED: &str = "app.kubernetes.io/managed-by=sm-injector";

fn pod(name: &str, annotations: Value, containers: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": containers}
    }))
    .unwrap()
}

/// Creates a pod with one container and these annotations.
async fn create_one(
    client: &kube::Client,
    ns: &str,
    name: &str,
    annotations: Value,
) -> Result<Pod, String> {
    create(client, ns, &pod(name, annotations, one_container())).await
}

fn one_container() -> Value {
    json!([{"name": "app", "image": "registry.invalid/app:1"}])
}

async fn create(client: &kube::Client, ns: &str, p: &Pod) -> Result<Pod, String> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), p)
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) => s.message,
            other => other.to_string(),
        })
}

/// What each env var of `c` resolves to, following `secretKeyRef` and
/// `envFrom.secretRef` into the Secrets; also returns whether any of them is a
/// plaintext `value`.
async fn resolve_env(client: &kube::Client, ns: &str, c: &Container) -> BTreeMap<String, Vec<u8>> {
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let mut env = BTreeMap::new();
    for ef in c.env_from.iter().flatten() {
        let r = ef.secret_ref.as_ref().expect("only secretRef");
        let s = secrets.get(&r.name).await.unwrap();
        for (k, v) in s.data.unwrap_or_default() {
            env.insert(format!("{}{k}", ef.prefix.as_deref().unwrap_or("")), v.0);
        }
    }
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone().into_bytes(),
            (None, Some(vf)) => {
                let r = vf.secret_key_ref.as_ref().expect("secretKeyRef");
                let s = secrets.get(&r.name).await.unwrap();
                s.data.unwrap()[&r.key].0.clone()
            }
            _ => panic!("env var {} has neither value nor valueFrom", e.name),
        };
        env.insert(e.name.clone(), value);
    }
    env
}

fn all_containers(p: &Pod) -> Vec<Container> {
    let spec = p.spec.clone().unwrap();
    spec.init_containers
        .into_iter()
        .flatten()
        .chain(spec.containers)
        .collect()
}

async fn managed_secrets(client: &kube::Client, ns: &str) -> Vec<Secret> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(MANAGED))
        .await
        .unwrap()
        .items
}

async fn setup(prefix: &str) -> (&'static TestBed, kube::Client, String, Injector) {
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, prefix, &[INJECT]).await;
    let inj = injector::start(bed, &[&ns], Options::default()).await;
    (bed, client, ns, inj)
}
