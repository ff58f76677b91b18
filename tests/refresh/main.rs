//! The refresher (SPEC sections 5 and 7) against the real API server and moto.
//! Here: rotations reach the backing Secrets and unchanged versions are not
//! rewritten; an admin forces a refresh; and the helpers the modules share.
//! Replicas and the Lease (`replicas`, `lease`), refused records, an outage
//! and a narrowed rule (`failures`), restarts on rotation (`restarts`),
//! collecting backing Secrets (`collection`), rollouts that follow what pods
//! run (`level`), the workload's own identity (`identity`).

#[path = "../support/mod.rs"]
mod support;

mod collection;
mod failures;
mod identity;
mod lease;
mod level;
mod moves;
mod replicas;
mod restarts;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use sm_injector::metrics::Metrics;
use sm_injector::namespaces::Namespaces;
use sm_injector::plan::MAX_BACKING_PER_POD;
use sm_injector::refresh::{self, Refresher, index::Limits};
use sm_injector::source::AwsSource;
use sm_injector::store::inventory::Inventory;
use support::injector::{self, Options};
use support::{TestBed, eventually, namespace, namespace_with, testbed};

const INJECT: (&str, &str) = ("sm-injector.io/inject", "enabled");
const MANAGED: &str = "app.kubernetes.io/managed-by=sm-injector";

/// The refresher works on every namespace, so tests that watch who refreshed
/// what run one at a time, and each deletes its namespaces at the end.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A refresher leading in-process (no Lease), stopped when dropped.
struct Running {
    task: tokio::task::JoinHandle<refresh::Error>,
    metrics: Metrics,
    _leader: tokio::sync::watch::Sender<bool>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Running {
    /// The value of the metric line starting with `prefix` (0 when absent).
    fn metric(&self, prefix: &str) -> f64 {
        metric(&self.metrics, prefix)
    }
}

fn metric(metrics: &Metrics, prefix: &str) -> f64 {
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn refresher_for(
    client: &kube::Client,
    aws: aws_sdk_secretsmanager::Client,
    metrics: &Metrics,
    inventory_ns: &str,
    grace: Option<Duration>,
) -> Refresher {
    let source = Arc::new(AwsSource::new(aws, metrics.clone()));
    refresher_with(client, source, metrics, inventory_ns, grace)
}

/// [`refresher_for`] reading from `source`.
fn refresher_with(
    client: &kube::Client,
    source: Arc<dyn sm_injector::source::SecretSource>,
    metrics: &Metrics,
    inventory_ns: &str,
    grace: Option<Duration>,
) -> Refresher {
    Refresher::new(
        client.clone(),
        source,
        Namespaces::start(client.clone()),
        metrics.clone(),
        Inventory::new(
            client.clone(),
            inventory_ns,
            "inventory",
            Duration::from_secs(300),
        ),
        refresh::Settings {
            tick: Duration::from_millis(500),
            limits: Limits {
                max_entries: MAX_BACKING_PER_POD,
                min_interval: Duration::from_secs(1),
                max_calls: sm_injector::admission::MAX_AWS_CALLS,
                max_records_per_namespace: 5000,
                max_secrets_per_namespace: 1000,
            },
            aws_deadline: Duration::from_secs(3),
            gc_grace: grace,
            concurrency: 8,
        },
    )
}

async fn aws_at(bed: &TestBed, endpoint: Option<&str>) -> aws_sdk_secretsmanager::Client {
    let mut conf = bed.aws_config().await.into_builder();
    if let Some(ep) = endpoint {
        conf.set_endpoint_url(Some(ep.to_string()));
    }
    aws_sdk_secretsmanager::Client::new(&conf.build())
}

/// Starts a refresher that leads at once; its inventory lives in `inventory_ns`.
async fn start_refresher(
    bed: &TestBed,
    client: &kube::Client,
    endpoint: Option<&str>,
    inventory_ns: &str,
    grace: Option<Duration>,
) -> Running {
    let metrics = Metrics::new();
    let aws = aws_at(bed, endpoint).await;
    let r = refresher_for(client, aws, &metrics, inventory_ns, grace);
    let (tx, rx) = tokio::sync::watch::channel(true);
    Running {
        task: tokio::spawn(r.run(rx)),
        metrics,
        _leader: tx,
    }
}

/// Deletes the test's namespaces and waits until their pods are gone, so
/// that the next test's refresher does not see them.
async fn cleanup(client: &kube::Client, namespaces: &[&str]) {
    for ns in namespaces {
        let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .delete(ns, &Default::default())
            .await;
    }
    for ns in namespaces {
        let pods = Api::<Pod>::namespaced(client.clone(), ns);
        eventually(Duration::from_secs(60), "the test's pods to go", || async {
            pods.list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        })
        .await;
    }
}

async fn backing_secrets(client: &kube::Client, ns: &str) -> Vec<Secret> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(MANAGED))
        .await
        .unwrap()
        .items
}

async fn backing(client: &kube::Client, ns: &str) -> Secret {
    let l = backing_secrets(client, ns).await;
    assert_eq!(l.len(), 1);
    l[0].clone()
}

async fn holds(client: &kube::Client, ns: &str, key: &str) -> String {
    String::from_utf8(backing(client, ns).await.data.unwrap()[key].0.clone()).unwrap()
}

fn pod(name: &str, annotations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    }))
    .unwrap()
}

/// The first Event with `reason` in `ns` (waits up to 10 s).
async fn warning_event(
    client: &kube::Client,
    ns: &str,
    reason: &str,
) -> k8s_openapi::api::events::v1::Event {
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns);
    eventually(
        Duration::from_secs(10),
        &format!("a {reason} Event"),
        || async {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason))
        },
    )
    .await
}

/// A tenant namespace `<prefix>-…` opted in, sm-injector's own
/// `<prefix>-own-…` for its inventory, and a replica serving the tenant that
/// records there (refresh intervals down to 1 s): (tenant, own, replica).
async fn tenant_with_inventory(
    bed: &TestBed,
    client: &kube::Client,
    prefix: &str,
) -> (String, String, injector::Injector) {
    let ns = namespace(client, prefix, &[INJECT]).await;
    let own = namespace(client, &format!("{prefix}-own"), &[]).await;
    let inj = injector::start(
        bed,
        &[&ns],
        Options {
            inventory: Some(own.clone()),
            min_refresh: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .await;
    (ns, own, inj)
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn rotation_reaches_the_backing_secret_and_unchanged_versions_are_not_rewritten() {
    let _serial = SERIAL.lock().await;
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "rotate", &[INJECT]).await;
    let own = namespace(&client, "rotate-own", &[]).await;
    let inj = injector::start(
        bed,
        &[&ns],
        Options {
            min_refresh: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .await;
    bed.put_secret(&format!("{ns}/db"), r#"{"pw":"one"}"#).await;
    let created = Api::<Pod>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &pod(
                "app",
                json!({
                    "sm-injector.io/env.PW": format!("{ns}/db#pw"),
                    "sm-injector.io/refresh-interval": "1s",
                }),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        created.metadata.labels.unwrap()["sm-injector.io/injected"],
        "true",
        "the webhook labels the pods it mutates, for the refresher's watch"
    );
    let before = backing(&client, &ns).await;
    assert_eq!(holds(&client, &ns, "pw").await, "one");

    let r = start_refresher(bed, &client, None, &own, None).await;
    // Several intervals pass: checked, never rewritten while the version is the same.
    eventually(Duration::from_secs(20), "a refresh check", || async {
        (r.metric("sm_injector_refresh_backing_secrets ") >= 1.0
            && r.metric(
                "sm_injector_secretsmanager_calls_total{operation=\"BatchGetSecretValue\"}",
            ) >= 2.0)
            .then_some(())
    })
    .await;
    assert_eq!(
        backing(&client, &ns).await.metadata.resource_version,
        before.metadata.resource_version,
        "same version: not rewritten"
    );

    let v2 = bed.rotate(&format!("{ns}/db"), r#"{"pw":"two"}"#).await;
    eventually(Duration::from_secs(10), "the rotation", || async {
        (holds(&client, &ns, "pw").await == "two").then_some(())
    })
    .await;
    let after = backing(&client, &ns).await;
    let a = after.metadata.annotations.clone().unwrap();
    assert_eq!(a["sm-injector.io/version-id"], v2);
    assert!(
        !a.contains_key("sm-injector.io/observed-at"),
        "no clock orders versions"
    );

    let calls =
        r.metric("sm_injector_secretsmanager_calls_total{operation=\"BatchGetSecretValue\"}");
    eventually(Duration::from_secs(10), "more checks", || async {
        (r.metric("sm_injector_secretsmanager_calls_total{operation=\"BatchGetSecretValue\"}")
            >= calls + 2.0)
            .then_some(())
    })
    .await;
    assert_eq!(
        backing(&client, &ns).await.metadata.resource_version,
        after.metadata.resource_version,
        "not rewritten"
    );
    drop(r);
    inj.stop(&client).await;
    cleanup(&client, &[&ns, &own]).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn an_admin_forces_an_immediate_refresh_with_a_namespace_annotation() {
    let _serial = SERIAL.lock().await;
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "forced", &[INJECT]).await;
    let own = namespace(&client, "forced-own", &[]).await;
    let inj = injector::start(bed, &[&ns], Options::default()).await;
    bed.put_secret(&format!("{ns}/db"), r#"{"pw":"old"}"#).await;
    // Leading before the pod exists: its Secret, just written, is next due in an hour.
    let r = start_refresher(bed, &client, None, &own, None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &pod(
                "app",
                json!({"sm-injector.io/env.PW": format!("{ns}/db#pw")}),
            ),
        )
        .await
        .unwrap();
    bed.rotate(&format!("{ns}/db"), r#"{"pw":"new"}"#).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        holds(&client, &ns, "pw").await,
        "old",
        "its interval (1h) has not passed"
    );
    bed.kubectl_run(
        &[
            "annotate",
            "namespace",
            &ns,
            &format!("sm-injector.io/refresh-now={ns}/db@1"),
        ],
        None,
    )
    .unwrap();
    eventually(Duration::from_secs(20), "the forced refresh", || async {
        (holds(&client, &ns, "pw").await == "new").then_some(())
    })
    .await;
    drop(r);
    inj.stop(&client).await;
    cleanup(&client, &[&ns, &own]).await;
}
