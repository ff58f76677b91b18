//! Smoke tests of the test bed itself, through the real components: the
//! controller-manager acts on a Deployment, the API server calls a URL webhook,
//! and moto answers the real AWS SDK.

mod support;

use std::time::Duration;

use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use support::{eventually, namespace, testbed};

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn deployment_leads_to_replicaset_and_pod() {
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "smoke-deploy", &[]).await;
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]}
            }
        }
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deploy)
        .await
        .unwrap();
    let rs = eventually(Duration::from_secs(60), "a ReplicaSet", || async {
        let list = Api::<ReplicaSet>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .ok()?;
        list.items.into_iter().next()
    })
    .await;
    let pod = eventually(Duration::from_secs(60), "a Pod", || async {
        let list = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .ok()?;
        list.items.into_iter().next()
    })
    .await;
    let owner = &pod.metadata.owner_references.unwrap()[0];
    assert_eq!(owner.kind, "ReplicaSet");
    assert_eq!(Some(&owner.name), rs.metadata.name.as_ref());
    assert_eq!(pod.status.unwrap().phase.as_deref(), Some("Pending"));
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn apiserver_calls_a_url_webhook_over_tls() {
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "smoke-webhook", &[]).await;

    let name = format!("smoke-{ns}");
    support::start_marker(bed, &client, &name, &[&ns]).await;

    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let pod = |n: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": n},
            "spec": {"containers": [{"name": "c", "image": "registry.invalid/c:1"}]}
        }))
        .unwrap()
    };
    // The API server picks configurations up through an informer: wait until
    // a server-side dry run shows the mutation.
    eventually(
        Duration::from_secs(30),
        "the webhook to take effect",
        || async {
            let created = pods
                .create(
                    &PostParams {
                        dry_run: true,
                        ..Default::default()
                    },
                    &pod("canary"),
                )
                .await
                .ok()?;
            created.metadata.labels?.get("testbed-mutated").cloned()
        },
    )
    .await;
    pods.create(&PostParams::default(), &pod("real"))
        .await
        .unwrap();
    let stored = pods.get("real").await.unwrap();
    assert_eq!(stored.metadata.labels.unwrap()["testbed-mutated"], "yes");
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(&name, &Default::default())
        .await
        .unwrap();
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn moto_answers_the_aws_sdk_including_batch_get() {
    let bed = testbed();
    let sm = bed.aws().await;
    sm.create_secret()
        .name("smoke/db")
        .secret_string(r#"{"user":"u","password":"p"}"#)
        .send()
        .await
        .unwrap();
    let got = sm
        .get_secret_value()
        .secret_id("smoke/db")
        .send()
        .await
        .unwrap();
    assert_eq!(got.secret_string(), Some(r#"{"user":"u","password":"p"}"#));
    assert!(got.arn().unwrap().contains(":secret:smoke/db-"));

    let batch = sm
        .batch_get_secret_value()
        .secret_id_list("smoke/db")
        .secret_id_list("smoke/missing")
        .send()
        .await
        .unwrap();
    assert_eq!(batch.secret_values().len(), 1);
    assert_eq!(batch.secret_values()[0].name(), Some("smoke/db"));
    assert_eq!(batch.errors().len(), 1);
    assert_eq!(batch.errors()[0].secret_id(), Some("smoke/missing"));
    assert_eq!(
        batch.errors()[0].error_code(),
        Some("ResourceNotFoundException")
    );

    let missing = sm
        .get_secret_value()
        .secret_id("smoke/missing")
        .send()
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Some("ResourceNotFoundException"));
}
