//! Collecting backing Secrets, against the real API server and moto: unused
//! ones are deleted after the grace period and used ones never; a Secret
//! written for a pod that was rejected later is collected.

use super::*;

async fn secret_names(client: &kube::Client, ns: &str) -> Vec<String> {
    let mut n: Vec<String> = backing_secrets(client, ns)
        .await
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    n.sort();
    n
}

async fn inventory_of(
    client: &kube::Client,
    own: &str,
    ns: &str,
) -> std::collections::BTreeMap<String, String> {
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), own)
        .get_opt(&format!("inventory-{ns}"))
        .await
        .unwrap()
        .and_then(|cm| cm.data)
        .unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn unused_backing_secrets_are_deleted_after_the_grace_period_and_used_ones_never() {
    let _serial = SERIAL.lock().await;
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "gc", &[INJECT]).await;
    let own = namespace(&client, "gc-inventory", &[]).await;
    let inj = injector::start(bed, &[&ns], Options::default()).await;
    bed.put_secret(&format!("{ns}/gone"), r#"{"k":"1"}"#).await;
    bed.put_secret(&format!("{ns}/kept"), r#"{"k":"2"}"#).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    for (name, secret) in [("uses-gone", "gone"), ("uses-kept", "kept")] {
        pods.create(
            &PostParams::default(),
            &pod(
                name,
                json!({"sm-injector.io/env.K": format!("{ns}/{secret}#k")}),
            ),
        )
        .await
        .unwrap();
    }
    assert_eq!(secret_names(&client, &ns).await.len(), 2);
    let grace = Some(Duration::from_secs(3));
    let r = start_refresher(bed, &client, None, &own, grace).await;
    eventually(Duration::from_secs(20), "both in the inventory", || async {
        let inv = inventory_of(&client, &own, &ns).await;
        (inv.len() == 2 && inv.values().all(String::is_empty)).then_some(())
    })
    .await;
    pods.delete("uses-gone", &Default::default()).await.unwrap();
    // Marked unused; a new leader takes over and knows it from the inventory.
    eventually(
        Duration::from_secs(20),
        "the unused one to be stamped",
        || async {
            inventory_of(&client, &own, &ns)
                .await
                .values()
                .any(|m| !m.is_empty())
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        secret_names(&client, &ns).await.len(),
        2,
        "not before the grace period"
    );
    drop(r);
    let next = start_refresher(bed, &client, None, &own, grace).await;
    eventually(
        Duration::from_secs(30),
        "the unused one to be deleted",
        || async { (secret_names(&client, &ns).await.len() == 1).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let left = secret_names(&client, &ns).await;
    assert_eq!(left.len(), 1, "the one in use is never deleted");
    assert!(left[0].starts_with(&format!("sm-{ns}-kept-")), "{left:?}");
    assert_eq!(inventory_of(&client, &own, &ns).await.len(), 1);
    drop(next);
    inj.stop(&client).await;
    cleanup(&client, &[&ns, &own]).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn a_secret_written_for_a_pod_rejected_later_is_collected() {
    let _serial = SERIAL.lock().await;
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "rejected", &[INJECT]).await;
    let own = namespace(&client, "rejected-own", &[]).await;
    let inj = injector::start(
        bed,
        &[&ns],
        Options {
            inventory: Some(own.clone()),
            ..Default::default()
        },
    )
    .await;
    // A later admission stage (validation runs after mutation) refuses the pod.
    let name = format!("reject-{ns}");
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]},
            "validations": [{"expression": "!has(object.metadata.labels) || !('reject-me' in object.metadata.labels)", "message": "rejected by a later stage"}]
        }
    }))
    .unwrap();
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}}
    }))
    .unwrap();
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    bed.put_secret(&format!("{ns}/db"), r#"{"pw":"p"}"#).await;
    let mut p = pod(
        "doomed",
        json!({"sm-injector.io/env.PW": format!("{ns}/db#pw")}),
    );
    p.metadata.labels = Some([("reject-me".to_string(), "yes".to_string())].into());
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    eventually(
        Duration::from_secs(30),
        "the later stage to reject the pod",
        || async {
            match pods.create(&PostParams::default(), &p).await {
                Err(kube::Error::Api(e)) if e.message.contains("rejected by a later stage") => {
                    Some(())
                }
                Ok(_) => {
                    let _ = pods.delete("doomed", &Default::default()).await;
                    None
                }
                Err(_) => None,
            }
        },
    )
    .await;
    assert_eq!(
        secret_names(&client, &ns).await.len(),
        1,
        "written before the rejection"
    );
    assert_eq!(
        inventory_of(&client, &own, &ns).await.len(),
        1,
        "and recorded first"
    );
    let r = start_refresher(bed, &client, None, &own, Some(Duration::from_secs(2))).await;
    eventually(
        Duration::from_secs(30),
        "the orphan to be collected",
        || async { secret_names(&client, &ns).await.is_empty().then_some(()) },
    )
    .await;
    drop(r);
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .delete(&name, &Default::default())
        .await
        .unwrap();
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .delete(&name, &Default::default())
        .await
        .unwrap();
    inj.stop(&client).await;
    cleanup(&client, &[&ns, &own]).await;
}
