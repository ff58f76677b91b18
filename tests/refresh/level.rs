//! Rotation that cannot be skipped, against the real API server and moto:
//! rollouts follow what the pods run, not who wrote a version; a namespace
//! made again gets its backing Secrets; hand edits and deletions are
//! repaired; a replica whose clock is ahead cannot roll a version back.

use super::*;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Namespace;
use sm_injector::backing::{self, Form};
use sm_injector::reference::Version;
use std::collections::BTreeMap;

fn deployment(ns: &str, name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"sm-injector.io/restart-on-rotation": "true"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {
                    "sm-injector.io/env.PW": format!("{ns}/db#pw"),
                    "sm-injector.io/refresh-interval": "1h"
                }},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
            }
        }
    }))
    .unwrap()
}

async fn replicasets(client: &kube::Client, ns: &str, app: &str) -> usize {
    Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .len()
}

/// The template's record of the versions it was rolled to.
async fn rolled_to(client: &kube::Client, ns: &str, name: &str) -> BTreeMap<String, String> {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap();
    d.spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap_or_default()
        .get("sm-injector.io/rotated-versions")
        .map(|t| serde_json::from_str(t).unwrap())
        .unwrap_or_default()
}

/// Waits `settle` and checks the count of ReplicaSets stayed `n`.
async fn stays(client: &kube::Client, ns: &str, app: &str, n: usize, settle: Duration) {
    let until = std::time::Instant::now() + settle;
    while std::time::Instant::now() < until {
        assert_eq!(replicasets(client, ns, app).await, n, "rolled again");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn an_admission_first_rotation_rolls_once_also_across_a_leader_change() {
    let _serial = SERIAL.lock().await;
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "first", &[INJECT]).await;
    let own = namespace(&client, "first-own", &[]).await;
    // The webhook's values last a second, so that an admission after the
    // rotation fetches the new version long before the refresher's interval
    // (an hour) would.
    let inj = injector::start(
        bed,
        &[&ns],
        Options {
            cache_ttl: Duration::from_secs(1),
            min_refresh: Duration::from_secs(1),
            inventory: Some(own.clone()),
            ..Default::default()
        },
    )
    .await;
    let secret = format!("{ns}/db");
    bed.put_secret(&secret, r#"{"pw":"v1"}"#).await;
    let v1 = bed
        .aws()
        .await
        .get_secret_value()
        .secret_id(&secret)
        .send()
        .await
        .unwrap()
        .version_id()
        .unwrap()
        .to_string();
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    deployments
        .create(&PostParams::default(), &deployment(&ns, "web", 2))
        .await
        .unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let listed = eventually(Duration::from_secs(60), "two pods", || async {
        let l = pods.list(&ListParams::default()).await.ok()?;
        (l.items.len() == 2).then_some(l.items)
    })
    .await;
    let b = backing::name(&secret, &Version::current(), Form::Keys);
    for p in &listed {
        // In the order of the record's entries (one here).
        let recorded: Vec<Option<String>> = serde_json::from_str(
            &p.metadata.annotations.as_ref().unwrap()["sm-injector.io/versions"],
        )
        .unwrap();
        assert_eq!(
            recorded,
            [Some(v1.clone())],
            "each pod records what its Secret held"
        );
    }
    let r1 = start_refresher(bed, &client, None, &own, None).await;
    // The leader's first pass verifies what exists (spread over 30 s).
    eventually(Duration::from_secs(45), "the first check", || async {
        (r1.metric("sm_injector_secretsmanager_calls_total{operation=\"BatchGetSecretValue\"}")
            >= 1.0)
            .then_some(())
    })
    .await;

    // The secret rotates; before the leader looks again (an hour), the
    // Deployment scales up and an admission fetches v2 first. It leaves the
    // Secret at v1 and tells the leader, which moves it and rolls: once.
    let v2 = bed.rotate(&secret, r#"{"pw":"v2"}"#).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    deployments
        .patch(
            "web",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the rollout", || async {
        (replicasets(&client, &ns, "web").await == 2).then_some(())
    })
    .await;
    assert_eq!(holds(&client, &ns, "pw").await, "v2");
    assert_eq!(rolled_to(&client, &ns, "web").await[&b], v2);
    stays(&client, &ns, "web", 2, Duration::from_secs(8)).await;

    // A leader that moved the Secret to v3 and died before rolling (its
    // write is made here): the next leader rolls, once.
    drop(r1);
    let v3 = bed.rotate(&secret, r#"{"pw":"v3"}"#).await;
    let arn =
        backing(&client, &ns).await.metadata.annotations.unwrap()["sm-injector.io/source-arn"]
            .clone();
    let written = support::leader_write(&client, &ns, &secret, &arn, &v3, r#"{"pw":"v3"}"#).await;
    assert!(matches!(
        written,
        sm_injector::store::Written::Rotated { .. }
    ));
    let r2 = start_refresher(bed, &client, None, &own, None).await;
    eventually(
        Duration::from_secs(60),
        "the next leader's rollout",
        || async { (replicasets(&client, &ns, "web").await == 3).then_some(()) },
    )
    .await;
    assert_eq!(rolled_to(&client, &ns, "web").await[&b], v3);
    stays(&client, &ns, "web", 3, Duration::from_secs(8)).await;
    drop(r2);
    inj.stop(&client).await;
    cleanup(&client, &[&ns, &own]).await;
}

async fn make_namespace(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name,
        "labels": {INJECT.0: INJECT.1}}}))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let sas = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), name);
    eventually(
        Duration::from_secs(30),
        "the default ServiceAccount",
        || async { sas.get_opt("default").await.ok().flatten() },
    )
    .await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn a_namespace_made_again_gets_its_backing_secrets_and_hand_deletions_are_repaired() {
    let _serial = SERIAL.lock().await;
    let bed = testbed();
    let client = bed.client().await;
    let (ns, own, inj) = tenant_with_inventory(bed, &client, "again").await;
    bed.put_secret(&format!("{ns}/db"), r#"{"pw":"one"}"#).await;
    let uses = json!({"sm-injector.io/env.PW": format!("{ns}/db#pw"),
        "sm-injector.io/refresh-interval": "3s"});
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &pod("first", uses.clone()))
        .await
        .unwrap();
    assert_eq!(holds(&client, &ns, "pw").await, "one");
    let r = start_refresher(bed, &client, None, &own, None).await;
    eventually(Duration::from_secs(45), "the first check", || async {
        (r.metric("sm_injector_refresh_backing_secrets ") >= 1.0
            && r.metric(
                "sm_injector_secretsmanager_calls_total{operation=\"BatchGetSecretValue\"}",
            ) >= 1.0)
            .then_some(())
    })
    .await;

    // Deleted and made again while the webhook still remembers writing the
    // Secret: the pod's admission writes it again.
    let t = std::time::Instant::now();
    let namespaces = Api::<Namespace>::all(client.clone());
    namespaces.delete(&ns, &Default::default()).await.unwrap();
    eventually(Duration::from_secs(90), "the namespace to go", || async {
        namespaces.get_opt(&ns).await.ok()?.is_none().then_some(())
    })
    .await;
    make_namespace(&client, &ns).await;
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &pod("second", uses.clone()))
        .await
        .unwrap();
    assert_eq!(
        holds(&client, &ns, "pw").await,
        "one",
        "the backing Secret exists when the pod is admitted"
    );
    println!("namespace deleted and made again in {:?}", t.elapsed());

    // Deleted by hand: written again within an interval (3 s).
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let name = backing(&client, &ns).await.metadata.name.unwrap();
    secrets.delete(&name, &Default::default()).await.unwrap();
    eventually(
        Duration::from_secs(20),
        "the Secret written again",
        || async { secrets.get_opt(&name).await.ok()?.map(|_| ()) },
    )
    .await;
    // Edited by hand, the version unchanged: restored within an interval.
    let mut edited = secrets.get(&name).await.unwrap();
    edited
        .data
        .as_mut()
        .unwrap()
        .insert("pw".into(), k8s_openapi::ByteString(b"mine".to_vec()));
    edited.metadata.managed_fields = None;
    secrets
        .replace(&name, &PostParams::default(), &edited)
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the edit undone", || async {
        (holds(&client, &ns, "pw").await == "one").then_some(())
    })
    .await;
    drop(r);
    inj.stop(&client).await;
    cleanup(&client, &[&ns, &own]).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn a_replica_whose_clock_is_ahead_cannot_roll_a_version_back() {
    let _serial = SERIAL.lock().await;
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "skew", &[INJECT]).await;
    let own = namespace(&client, "skew-own", &[]).await;
    // A replica 90 s ahead (libfaketime), which never leads (its Lease's
    // namespace does not exist) and keeps values for 5 minutes.
    let faketime = support::component("SM_INJECTOR_LIBFAKETIME", "libfaketime");
    let faketime = faketime.display().to_string();
    let lease_ns = format!("--lease-namespace={own}-none");
    let skewed = support::serve_process_env(
        bed,
        std::path::Path::new(env!("CARGO_BIN_EXE_sm-injector")),
        &format!("skewed-{ns}"),
        &bed.kubeconfig,
        &[&lease_ns, "--cache-ttl=5m", "--min-refresh-interval=1s"],
        &bed.moto,
        &[
            ("LD_PRELOAD", &faketime),
            ("FAKETIME", "+90s"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )
    .await;
    support::register_webhook(
        bed,
        &client,
        &format!("skewed-{ns}"),
        &format!("127.0.0.1:{}", skewed.port),
        &[&ns],
    )
    .await;
    let secret = format!("{ns}/db");
    bed.put_secret(&secret, r#"{"pw":"v1"}"#).await;
    let uses = json!({"sm-injector.io/env.PW": format!("{secret}#pw"),
        "sm-injector.io/refresh-interval": "1s"});
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    // Once the API server calls the skewed replica (a dry-run canary).
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    eventually(
        Duration::from_secs(30),
        "the skewed replica's admissions",
        || async {
            match pods.create(&dry, &pod("canary", uses.clone())).await {
                Ok(p) => p.spec?.containers.first()?.env.is_some().then_some(()),
                Err(e) => {
                    eprintln!("not yet: {e}");
                    None
                }
            }
        },
    )
    .await;
    pods.create(&PostParams::default(), &pod("p0", uses.clone()))
        .await
        .unwrap();
    assert_eq!(holds(&client, &ns, "pw").await, "v1");
    // The leader (a true clock) moves the Secret to v2.
    let r = start_refresher(bed, &client, None, &own, None).await;
    bed.rotate(&secret, r#"{"pw":"v2"}"#).await;
    eventually(Duration::from_secs(45), "the rotation", || async {
        (holds(&client, &ns, "pw").await == "v2").then_some(())
    })
    .await;
    // The skewed replica, whose cache says v1 and whose clock says it asked
    // Secrets Manager after the leader did, admits more pods: v2 stays.
    for i in 1..=3 {
        pods.create(&PostParams::default(), &pod(&format!("p{i}"), uses.clone()))
            .await
            .unwrap();
        assert_eq!(holds(&client, &ns, "pw").await, "v2", "pod {i}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(holds(&client, &ns, "pw").await, "v2");
    drop(r);
    support::signal(skewed.pid as i32, libc::SIGTERM);
    let _ = Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
        client.clone(),
    )
    .delete(&format!("skewed-{ns}"), &Default::default())
    .await;
    cleanup(&client, &[&ns, &own]).await;
}
