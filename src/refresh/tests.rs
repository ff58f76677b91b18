//! The refresher's I/O shell against a mocked API server (`tower-test`) and a
//! slow secret source: which requests a rollout makes, and that a slow batch
//! fails only its own secrets.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use serde_json::{Value, json};

use super::check::fetch_batches;
use super::index::{Behind, Workload};
use super::rollout::Rollouts;
use super::*;
use crate::annotations::{RESTART_ON_ROTATION, ROTATED_VERSIONS};
use crate::fetch::{FetchError, FetchKey, FetchResults};
use crate::mock_api::{self, done};
use crate::reference::Version;
use crate::secret::{Payload, SecretValue};

type H = mock_api::ApiHandle;

/// The method, path and body of the next request, answered.
async fn answer(h: &mut H, code: u16, body: Value) -> (String, String, Value) {
    let a = mock_api::answer(h, code, body).await;
    (a.method, a.path, a.body)
}

fn deployment(opted_in: bool, rotated: Option<&str>) -> Value {
    let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "n", "resourceVersion": "41", "uid": "d-uid", "annotations": {}},
        "spec": {"template": {"metadata": {"annotations": {"sm-injector.io/env.DB": "n/db#url"}}}}});
    if opted_in {
        d["metadata"]["annotations"][RESTART_ON_ROTATION] = json!("true");
    }
    if let Some(r) = rotated {
        d["spec"]["template"]["metadata"]["annotations"][ROTATED_VERSIONS] = json!(r);
    }
    d
}

fn web() -> (String, Workload) {
    (
        "n".into(),
        Workload {
            kind: "Deployment",
            name: "web".into(),
        },
    )
}

fn behind_on_db(version: &str) -> Behind {
    Behind {
        wanted: BTreeMap::from([("sm-db".into(), version.into())]),
        stale: ["sm-db".to_string()].into(),
        secrets: ["n/db".to_string()].into(),
        owners: BTreeMap::from([("rs-uid".into(), "web-7d9f".into())]),
    }
}

/// The ReplicaSet the pods name, controlled by the Deployment of `owner_uid`.
fn replica_set(owner_uid: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web-7d9f", "namespace": "n", "uid": "rs-uid",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                 "uid": owner_uid, "controller": true}]}})
}

/// Runs one `roll` over `web` behind on sm-db@`version`; returns the mock's
/// handle and the task (rolled count, the Rollouts after).
fn start_roll(version: &str, leading: bool) -> (H, tokio::task::JoinHandle<(usize, Rollouts)>) {
    let (h, client) = mock_api::client();
    let candidates = vec![(web(), behind_on_db(version))];
    let t = tokio::spawn(async move {
        let mut r = Rollouts::default();
        let leading = move || leading;
        let n = workloads::roll(&client, &mut r, candidates, &leading).await;
        (n, r)
    });
    (h, t)
}

#[tokio::test]
async fn a_workload_behind_is_rolled_once_under_its_resource_version() {
    let (mut h, t) = start_roll("v2", true);
    let (method, path, _) = answer(&mut h, 200, deployment(true, None)).await;
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("GET", "/apis/apps/v1/namespaces/n/deployments/web")
    );
    // The ReplicaSet the pods name is checked to be the Deployment's.
    let (method, path, _) = answer(&mut h, 200, replica_set("d-uid")).await;
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("GET", "/apis/apps/v1/namespaces/n/replicasets/web-7d9f")
    );
    let (method, _, body) = answer(&mut h, 200, deployment(true, Some("{}"))).await;
    assert_eq!(method, "PATCH");
    assert_eq!(body["metadata"]["resourceVersion"], "41");
    let record = body["spec"]["template"]["metadata"]["annotations"][ROTATED_VERSIONS]
        .as_str()
        .unwrap();
    assert_eq!(record, r#"{"sm-db":"v2"}"#);
    let (rolled, mut r) = done(t).await;
    assert_eq!(rolled, 1);
    assert!(
        r.to_check(BTreeMap::from([(web(), behind_on_db("v2"))]))
            .is_empty(),
        "settled: the old pods still running cost no further read"
    );
}

#[tokio::test]
async fn a_template_that_names_the_version_is_not_rolled_again_by_another_leader() {
    let (mut h, t) = start_roll("v2", true);
    answer(&mut h, 200, deployment(true, Some(r#"{"sm-db":"v2"}"#))).await;
    assert_eq!(done(t).await.0, 0, "no PATCH");
    // Rolled for an earlier version: rolled now.
    let (mut h, t) = start_roll("v3", true);
    answer(&mut h, 200, deployment(true, Some(r#"{"sm-db":"v2"}"#))).await;
    answer(&mut h, 200, replica_set("d-uid")).await;
    let (method, _, _) = answer(&mut h, 200, deployment(true, None)).await;
    assert_eq!(method, "PATCH");
    assert_eq!(done(t).await.0, 1);
}

#[tokio::test]
async fn a_workload_that_does_not_ask_or_a_lost_lease_rolls_nothing() {
    let (mut h, t) = start_roll("v2", true);
    answer(&mut h, 200, deployment(false, None)).await;
    assert_eq!(done(t).await.0, 0);
    let (mut h, t) = start_roll("v2", false);
    answer(&mut h, 200, deployment(true, None)).await;
    let (rolled, mut r) = done(t).await;
    assert_eq!(rolled, 0, "read, not written");
    assert_eq!(
        r.to_check(BTreeMap::from([(web(), behind_on_db("v2"))]))
            .len(),
        1,
        "not settled: the next leader looks again"
    );
}

#[tokio::test]
async fn pods_that_only_claim_a_workload_or_a_template_without_the_secret_roll_nothing() {
    // The ReplicaSet the pods name belongs to another Deployment.
    let (mut h, t) = start_roll("v2", true);
    answer(&mut h, 200, deployment(true, None)).await;
    answer(&mut h, 200, replica_set("someone-elses-uid")).await;
    let (rolled, mut r) = done(t).await;
    assert_eq!(rolled, 0, "no PATCH");
    assert!(
        r.to_check(BTreeMap::from([(web(), behind_on_db("v2"))]))
            .is_empty(),
        "settled: not looked at again until it falls behind on another version"
    );
    // The template does not name the rotated secret: no further read.
    let (mut h, t) = start_roll("v2", true);
    let mut d = deployment(true, None);
    d["spec"]["template"]["metadata"]["annotations"] = json!({"sm-injector.io/env.X": "n/other#k"});
    answer(&mut h, 200, d).await;
    assert_eq!(done(t).await.0, 0);
}

/// Answers each key after `delay` when its id starts with "slow".
struct Slow;

impl SecretSource for Slow {
    fn fetch<'a>(
        &'a self,
        _: &'a crate::identity::Identity,
        keys: &'a [FetchKey],
    ) -> BoxFuture<'a, FetchResults> {
        async move {
            if keys.iter().any(|k| k.id.starts_with("slow")) {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            keys.iter()
                .map(|k| {
                    let v = SecretValue::new(
                        format!("arn:{}", k.id),
                        k.id.clone(),
                        "v1".into(),
                        Payload::String("x".into()),
                    );
                    (k.clone(), Ok(v))
                })
                .collect()
        }
        .boxed()
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_batch_fails_only_its_own_secrets() {
    let key = |id: String| FetchKey {
        id,
        version: Version::current(),
    };
    // Batches are cut in order: the first 20 (one slow) and the next 20.
    let mut keys: Vec<FetchKey> = (0..40).map(|i| key(format!("n/s{i:02}"))).collect();
    keys[3] = key("slow/one".into());
    let out = fetch_batches(
        &Slow,
        &crate::identity::Identity::Own,
        &keys,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(out.len(), 40);
    let failed: Vec<&FetchKey> = out
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(k, _)| k)
        .collect();
    assert_eq!(failed.len(), 20, "the slow call's batch only");
    assert!(keys[20..].iter().all(|k| out[k].is_ok()));
    assert!(
        matches!(&out[&keys[3]], Err(FetchError::Unreachable(m)) if m.contains("no answer within 5s"))
    );
}

#[tokio::test]
async fn the_pod_watch_asks_for_the_labelled_pods_metadata_only() {
    let (mut h, client) = mock_api::client();
    let t = tokio::spawn(async move {
        let mut pods = std::pin::pin!(pod_watch(client));
        let mut seen = vec![];
        while let Some(Ok(e)) = pods.next().await {
            let done = matches!(e, watcher::Event::InitDone);
            seen.push(e);
            if done {
                return seen;
            }
        }
        seen
    });
    let pod = json!({"name": "p", "namespace": "n", "annotations": {"a": "b"}});
    let selector = "sm-injector.io%2Finjected";
    mock_api::answer_metadata_list(&mut h, "/api/v1/pods", selector, &[pod]).await;
    let seen = done(t).await;
    let applied: Vec<_> = seen
        .iter()
        .filter_map(|e| match e {
            watcher::Event::InitApply(p) => Some(p.metadata.annotations.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(applied, [Some([("a".to_string(), "b".to_string())].into())]);
}

#[tokio::test]
async fn a_stamp_that_fails_is_made_at_the_next_pass_until_it_is_made() {
    let (mut h, client) = mock_api::client();
    // The Namespace watch asks another API server, which never answers.
    let (_quiet, other) = mock_api::client();
    let r = Refresher::new(
        client.clone(),
        std::sync::Arc::new(Slow),
        Namespaces::start(other),
        Metrics::new(),
        Inventory::new(client, "own", "inventory", Duration::from_secs(60)),
        Settings {
            tick: Duration::from_secs(30),
            limits: Limits {
                max_entries: 10,
                min_interval: Duration::from_secs(60),
                max_calls: 10,
                max_records_per_namespace: 10,
                max_secrets_per_namespace: 10,
            },
            aws_deadline: Duration::from_secs(3),
            gc_grace: None,
            concurrency: 4,
        },
    );
    let r = std::sync::Arc::new(r);
    let pass = |rotated: &[&str]| {
        let (r, rotated): (_, BTreeSet<Key>) = (
            r.clone(),
            rotated
                .iter()
                .map(|ns| Key {
                    namespace: ns.to_string(),
                    backing: "sm-db".into(),
                })
                .collect(),
        );
        tokio::spawn(async move { r.stamp_moved(&rotated).await })
    };
    let stamp = |a: &mock_api::Asked| {
        assert_eq!(a.method, "PATCH");
        a.path.clone()
    };
    // The API server refuses the stamp of a rotation in n.
    let t = pass(&["n"]);
    let a = mock_api::answer(&mut h, 500, json!({"kind": "Status", "code": 500})).await;
    assert_eq!(stamp(&a), "/api/v1/namespaces/own/configmaps/inventory-n");
    done(t).await;
    // The next pass, with nothing rotated, stamps n again; then nothing is owed.
    let t = pass(&[]);
    let a = mock_api::answer(&mut h, 200, json!({})).await;
    assert_eq!(stamp(&a), "/api/v1/namespaces/own/configmaps/inventory-n");
    assert!(
        a.body["metadata"]["annotations"]["sm-injector.io/moved"].is_string(),
        "{:?}",
        a.body
    );
    done(t).await;
    done(pass(&[])).await;
}
