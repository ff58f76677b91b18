//! Forged records: pods a tenant creates with its own `sm-injector.io/injected`
//! record and label (the webhook leaves a pod that asks for nothing as it is).
//! A record the webhook could not have written is refused before any fetch;
//! one namespace's records are bounded; an entry pairing this namespace's
//! name with another tenant's ARN is never fetched, and no Event names it.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams, PostParams};
use sm_injector::backing::{self, Form};
use sm_injector::reference::Version;

use super::support::injector::metric_sum;
use super::support::{eventually, namespace, testbed, until_injected};
use super::*;

/// A record as the webhook writes it, for `(secret, version, arn)` entries.
fn record(entries: &[(String, Version, Option<String>)]) -> String {
    let secrets: Vec<_> = entries
        .iter()
        .map(|(secret, v, arn)| {
            let scope = arn.as_deref().and_then(backing::arn_scope);
            json!({
                "backing": backing::name_scoped(secret, scope.as_deref(), v, Form::Keys),
                "secret": secret, "version": v.to_string(), "form": "keys", "arn": arn,
            })
        })
        .collect();
    json!({"refreshInterval": "1s", "secrets": secrets}).to_string()
}

/// A pod carrying `record` and the label the refresher watches.
fn forged(name: &str, record: String) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"sm-injector.io/injected": "true"},
                     "annotations": {"sm-injector.io/injected": record}},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    }))
    .unwrap()
}

fn pinned(ns: &str, tag: &str, n: usize) -> Vec<(String, Version, Option<String>)> {
    (0..n)
        .map(|i| {
            (
                format!("{ns}/db"),
                Version::Id(format!("{tag}-{i}").into()),
                None,
            )
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn forged_records_are_held_to_what_the_webhook_writes() {
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "records", &[INJECT]).await;
    let own = namespace(&client, "records-own", &[]).await;
    bed.put_secret(&format!("{ns}/db"), r#"{"k":"v1"}"#).await;
    let victim_arn = bed
        .put_secret("victim-tenant/db", r#"{"k":"theirs"}"#)
        .await;
    let r = replica(
        bed,
        &client,
        "attack-records",
        &own,
        &[&ns],
        &[
            "--refresh-tick=1s",
            "--min-refresh-interval=2s",
            "--max-secrets-per-namespace=50",
        ],
    )
    .await;
    let legit = {
        let mut p = pod("legit", &format!("{ns}/db#k"));
        p.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("sm-injector.io/refresh-interval".into(), "2s".into());
        p
    };
    until_injected(&client, &ns, &legit).await;
    create(&client, &ns, &legit).await.unwrap();
    eventually(Duration::from_secs(30), "the refresher's Lease", || async {
        (metric_sum(r.probe, "sm_injector_refresh_leader").await == 1.0).then_some(())
    })
    .await;

    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let post = PostParams::default();
    // Five pods of 100 entries pinned to versions that do not exist: 100
    // GetSecretValue calls each per interval; the webhook allows 10 a pod.
    for i in 0..5 {
        pods.create(
            &post,
            &forged(
                &format!("hundred-{i}"),
                record(&pinned(&ns, &format!("h{i}"), 100)),
            ),
        )
        .await
        .unwrap();
    }
    // This namespace's name with another tenant's ARN.
    let theirs = vec![(
        format!("{ns}/db"),
        Version::current(),
        Some(victim_arn.clone()),
    )];
    pods.create(&post, &forged("arn", record(&theirs)))
        .await
        .unwrap();
    // Ten pods of ten pinned versions each: each within the per-pod cap,
    // together past --max-secrets-per-namespace=50 (the legit pod names one).
    for i in 0..10 {
        pods.create(
            &post,
            &forged(
                &format!("ten-{i}"),
                record(&pinned(&ns, &format!("t{i}"), 10)),
            ),
        )
        .await
        .unwrap();
    }
    let refused = eventually(
        Duration::from_secs(20),
        "the forged records refused",
        || async {
            let n = metric_sum(
                r.probe,
                "sm_injector_refresh_refused_total{reason=\"record\"}",
            )
            .await;
            (n >= 12.0).then_some(n)
        },
    )
    .await;
    let calls = |op: &'static str| async move {
        metric_sum(
            r.probe,
            &format!("sm_injector_secretsmanager_calls_total{{operation=\"{op}\"}}"),
        )
        .await
    };
    let before = calls("GetSecretValue").await;
    during(Duration::from_secs(10)).await;
    let pinned_calls = calls("GetSecretValue").await - before;
    println!(
        "{refused} records refused (5 over the call cap, 1 with another tenant's ARN, 6 past the \
         namespace's 50 secret versions); {pinned_calls} GetSecretValue calls in 10 s for the 40 \
         accepted pinned versions at a 2 s interval"
    );
    assert_eq!(refused, 12.0);
    // The four accepted pods' 40 versions, each at most once per 2 s.
    assert!(pinned_calls <= 40.0 * 6.0, "{pinned_calls}");

    // The legit pod's backing Secret still follows a rotation.
    let rotated = bed.rotate(&format!("{ns}/db"), r#"{"k":"v2"}"#).await;
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let name = backing::name(&format!("{ns}/db"), &Version::current(), Form::Keys);
    eventually(
        Duration::from_secs(20),
        "the rotation to reach the backing Secret",
        || async {
            let s = secrets.get(&name).await.ok()?;
            (s.metadata.annotations?.values().any(|v| *v == rotated)).then_some(())
        },
    )
    .await;
    // No Event in the attacker's namespace names the other tenant's secret.
    let events = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    for e in &events.items {
        let m = e.message.as_deref().unwrap_or_default();
        assert!(
            !m.contains("victim-tenant") && !m.contains(&victim_arn),
            "{m}"
        );
    }
    support::signal(r.pid as i32, libc::SIGKILL);
}
