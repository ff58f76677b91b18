//! The refresher (SPEC sections 5 and 7) against the real API server and moto:
//! rotations reach the backing Secrets, unchanged versions are not rewritten,
//! forged records are refused, and an outage leaves every Secret as it was.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use sm_injector::metrics::Metrics;
use sm_injector::namespaces::Namespaces;
use sm_injector::refresher::{Refresher, Report};
use sm_injector::source::AwsSource;
use support::injector::{self, Options};
use support::{TestBed, namespace, testbed};

const INJECT: (&str, &str) = ("sm-injector.io/inject", "enabled");

async fn refresher(
    bed: &TestBed,
    client: &kube::Client,
    endpoint: Option<&str>,
    metrics: &Metrics,
) -> Refresher {
    let mut conf = bed.aws_config().await.into_builder();
    if let Some(ep) = endpoint {
        conf.set_endpoint_url(Some(ep.to_string()));
    }
    let aws = aws_sdk_secretsmanager::Client::new(&conf.build());
    Refresher::new(
        client.clone(),
        Arc::new(AwsSource::new(aws, metrics.clone())),
        Namespaces::start(client.clone()),
        metrics.clone(),
    )
}

async fn backing(client: &kube::Client, ns: &str) -> Secret {
    let l = Api::<Secret>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=sm-injector"))
        .await
        .unwrap();
    assert_eq!(l.items.len(), 1);
    l.items[0].clone()
}

/// Runs passes until one satisfies `ok` (10 s at most).
async fn pass_until(r: &mut Refresher, what: &str, ok: impl Fn(&Report) -> bool) -> Report {
    for _ in 0..100 {
        let rep = r.refresh_once().await.unwrap();
        if ok(&rep) {
            return rep;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no refresh pass {what} within 10 s");
}

fn pod(name: &str, annotations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    }))
    .unwrap()
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn rotation_reaches_the_backing_secret_and_unchanged_versions_are_not_rewritten() {
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "rotate", &[INJECT]).await;
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
    Api::<Pod>::namespaced(client.clone(), &ns)
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
    let before = backing(&client, &ns).await;
    assert_eq!(before.data.as_ref().unwrap()["pw"].0, b"one");

    // Counts in a pass's report cover the whole cluster (other tests' pods
    // too), so this test watches its own backing Secret.
    let metrics = Metrics::new();
    let mut r = refresher(bed, &client, None, &metrics).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    r.refresh_once().await.unwrap();
    let checked = backing(&client, &ns).await;
    assert_eq!(
        checked.metadata.resource_version, before.metadata.resource_version,
        "same version: not rewritten"
    );

    let put = bed
        .aws()
        .await
        .put_secret_value()
        .secret_id(format!("{ns}/db"))
        .secret_string(r#"{"pw":"two"}"#)
        .send()
        .await
        .unwrap();
    r.refresh_once().await.unwrap();
    assert_eq!(
        backing(&client, &ns).await.data.unwrap()["pw"].0,
        b"one",
        "not before its interval"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    r.refresh_once().await.unwrap();
    let after = backing(&client, &ns).await;
    assert_eq!(after.data.as_ref().unwrap()["pw"].0, b"two");
    let a = after.metadata.annotations.clone().unwrap();
    assert_eq!(a["sm-injector.io/version-id"], put.version_id().unwrap());

    tokio::time::sleep(Duration::from_millis(1100)).await;
    r.refresh_once().await.unwrap();
    let same = backing(&client, &ns).await;
    assert_eq!(
        same.metadata.resource_version, after.metadata.resource_version,
        "not rewritten"
    );
    inj.stop(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn a_forged_record_cannot_make_it_copy_another_tenants_secret() {
    let bed = testbed();
    let client = bed.client().await;
    let victim = namespace(&client, "victim", &[]).await;
    let attacker = namespace(&client, "attacker", &[]).await;
    bed.put_secret(&format!("{victim}/db"), r#"{"pw":"victims"}"#)
        .await;
    // A pod the webhook never saw, carrying a record in sm-injector's format.
    let version = sm_injector::reference::Version::current();
    let name = sm_injector::backing::name(
        &format!("{victim}/db"),
        &version,
        sm_injector::backing::Form::Keys,
    );
    let record = json!({"refreshInterval": "1s", "secrets": [
        {"backing": name, "secret": format!("{victim}/db"), "version": version.to_string(), "form": "keys"}
    ]});
    Api::<Pod>::namespaced(client.clone(), &attacker)
        .create(
            &PostParams::default(),
            &pod(
                "forged",
                json!({"sm-injector.io/injected": record.to_string()}),
            ),
        )
        .await
        .unwrap();
    let metrics = Metrics::new();
    let mut r = refresher(bed, &client, None, &metrics).await;
    let report = pass_until(&mut r, "that sees the pod", |rep| rep.refused > 0).await;
    assert_eq!(report.written, 0, "{report:?}");
    let l = Api::<Secret>::namespaced(client.clone(), &attacker)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        l.items
            .iter()
            .all(|s| s.metadata.name.as_deref() != Some(&name)),
        "nothing written in the attacker's namespace"
    );
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn an_outage_leaves_backing_secrets_as_they_are_and_refreshing_resumes() {
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "refresh-outage", &[INJECT]).await;
    let inj = injector::start(
        bed,
        &[&ns],
        Options {
            min_refresh: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .await;
    bed.put_secret(&format!("{ns}/db"), r#"{"pw":"kept"}"#)
        .await;
    Api::<Pod>::namespaced(client.clone(), &ns)
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
    let metrics = Metrics::new();
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let mut down = refresher(bed, &client, Some(&dead), &metrics).await;
    pass_until(&mut down, "that fails", |rep| rep.failed > 0).await;
    assert_eq!(
        backing(&client, &ns).await.data.unwrap()["pw"].0,
        b"kept",
        "never emptied"
    );
    assert!(
        metrics
            .encode()
            .contains("sm_injector_refresh_failures_total 1"),
        "{}",
        metrics.encode()
    );

    bed.aws()
        .await
        .put_secret_value()
        .secret_id(format!("{ns}/db"))
        .secret_string(r#"{"pw":"new"}"#)
        .send()
        .await
        .unwrap();
    let mut up = refresher(bed, &client, None, &metrics).await;
    up.refresh_once().await.unwrap();
    assert_eq!(backing(&client, &ns).await.data.unwrap()["pw"].0, b"new");
    inj.stop(&client).await;
}
