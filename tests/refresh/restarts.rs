//! Restart on rotation, against the real API server and moto: only the
//! workloads that ask for it are rolled.

use super::*;

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn restart_on_rotation_rolls_only_the_workloads_that_ask_for_it() {
    let _serial = SERIAL.lock().await;
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "roll", &[INJECT]).await;
    let inj = injector::start(
        bed,
        &[&ns],
        Options {
            min_refresh: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .await;
    bed.put_secret(&format!("{ns}/db"), r#"{"pw":"v1"}"#).await;
    let deployment = |name: &str, restart: bool| -> Deployment {
        let mut meta = json!({"name": name});
        if restart {
            meta["annotations"] = json!({"sm-injector.io/restart-on-rotation": "true"});
        }
        serde_json::from_value(json!({
            "metadata": meta,
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}, "annotations": {
                        "sm-injector.io/env.PW": format!("{ns}/db#pw"),
                        "sm-injector.io/refresh-interval": "1s"
                    }},
                    "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
                }
            }
        }))
        .unwrap()
    };
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    for (name, restart) in [("rolling", true), ("steady", false)] {
        deployments
            .create(&PostParams::default(), &deployment(name, restart))
            .await
            .unwrap();
    }
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    support::eventually(Duration::from_secs(60), "a pod of each", || async {
        let l = pods.list(&ListParams::default()).await.ok()?;
        (l.items.len() == 2).then_some(())
    })
    .await;

    bed.aws()
        .await
        .put_secret_value()
        .secret_id(format!("{ns}/db"))
        .secret_string(r#"{"pw":"v2"}"#)
        .send()
        .await
        .unwrap();
    let own = namespace(&client, "roll-own", &[]).await;
    let refresher = start_refresher(bed, &client, None, &own, None).await;

    let replicasets = Api::<ReplicaSet>::namespaced(client.clone(), &ns);
    let rs_of = |app: &'static str| {
        let replicasets = replicasets.clone();
        async move {
            replicasets
                .list(&ListParams::default().labels(&format!("app={app}")))
                .await
                .unwrap()
                .items
        }
    };
    support::eventually(
        Duration::from_secs(60),
        "a new ReplicaSet for the rolling Deployment",
        || async { (rs_of("rolling").await.len() == 2).then_some(()) },
    )
    .await;
    let rolled_tpl = deployments
        .get("rolling")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap();
    let versions: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&rolled_tpl["sm-injector.io/rotated-versions"]).unwrap();
    assert_eq!(versions.len(), 1);
    // Its new pods go through the webhook again and read the new value.
    let newest = support::eventually(
        Duration::from_secs(60),
        "a pod of the new ReplicaSet",
        || async {
            let l = pods
                .list(&ListParams::default().labels("app=rolling"))
                .await
                .ok()?;
            l.items.into_iter().find(|p| {
                p.metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key("sm-injector.io/rotated-versions"))
            })
        },
    )
    .await;
    let r = newest.spec.unwrap().containers[0].env.as_ref().unwrap()[0]
        .value_from
        .clone()
        .unwrap()
        .secret_key_ref
        .unwrap();
    let s = Api::<Secret>::namespaced(client.clone(), &ns)
        .get(&r.name)
        .await
        .unwrap();
    assert_eq!(s.data.unwrap()[&r.key].0, b"v2");
    // The other Deployment is untouched.
    assert_eq!(rs_of("steady").await.len(), 1);
    let steady_tpl = deployments
        .get("steady")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap();
    assert!(!steady_tpl.contains_key("sm-injector.io/rotated-versions"));
    drop(refresher);
    inj.stop(&client).await;
    cleanup(&client, &[&ns, &own]).await;
}
