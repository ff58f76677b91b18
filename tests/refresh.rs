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

/// The refresher works on every namespace, so tests that watch who refreshed
/// what run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _serial = SERIAL.lock().await;
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
    let _serial = SERIAL.lock().await;
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
    let _serial = SERIAL.lock().await;
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
    let text = metrics.encode();
    let gauge = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        gauge("sm_injector_refresh_failures_total ") >= 1.0,
        "{text}"
    );
    assert!(
        gauge("sm_injector_refresh_failing_secrets ") >= 1.0,
        "{text}"
    );
    // A Warning Event on the affected workload (here the pod itself: nothing owns it).
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns);
    let ev = support::eventually(
        Duration::from_secs(10),
        "a SecretRefreshFailed Event",
        || async {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("SecretRefreshFailed"))
        },
    )
    .await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(ev.regarding.as_ref().unwrap().name.as_deref(), Some("app"));
    let note = ev.note.unwrap_or_default();
    assert!(
        note.contains(&format!("{ns}/db")) && !note.contains("kept"),
        "{note}"
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

/// An AdmissionReview for a pod in `ns` asking for `reference` as PW.
fn review(ns: &str, reference: &str) -> String {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE", "userInfo": {}, "namespace": ns, "dryRun": true,
            "object": {"metadata": {"name": "p", "annotations": {"sm-injector.io/env.PW": reference}},
                       "spec": {"containers": [{"name": "c"}]}}
        }
    })
    .to_string()
}

/// POSTs an AdmissionReview to a replica: true when it answered with an allowed patch.
async fn admits(bed: &TestBed, port: u16, body: &str) -> bool {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(bed.dir.join("pki/ca.crt"))
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ])
        .arg(format!("https://127.0.0.1:{port}/mutate"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.contains("\"allowed\":true") && text.contains("\"patch\"")
}

async fn refresh_writes(probe: u16) -> f64 {
    support::injector::http_get(probe, "/metrics")
        .await
        .1
        .lines()
        .find_map(|l| {
            l.strip_prefix("sm_injector_backing_secret_writes_total{operation=\"refresh\"} ")?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn two_replicas_one_refreshes_and_the_other_takes_over() {
    let _serial = SERIAL.lock().await;
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "ha", &[INJECT]).await;
    // The Lease lives in a namespace of the test's own.
    let lease_ns = namespace(&client, "ha-lease", &[]).await;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_sm-injector"));
    let args = |id: &'static str| {
        vec![
            format!("--identity={id}"),
            format!("--lease-namespace={lease_ns}"),
            "--lease-name=ha-test".to_string(),
            "--lease-seconds=3".to_string(),
            "--refresh-tick=500ms".to_string(),
            "--min-refresh-interval=1s".to_string(),
        ]
    };
    let a_args = args("replica-a");
    let b_args = args("replica-b");
    let a = support::serve_process(
        bed,
        binary,
        "replica-a",
        &a_args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let b = support::serve_process(
        bed,
        binary,
        "replica-b",
        &b_args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;

    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &lease_ns);
    let holder = || async {
        leases
            .get_opt("ha-test")
            .await
            .ok()
            .flatten()?
            .spec?
            .holder_identity
    };
    let first = support::eventually(Duration::from_secs(20), "a leader", holder).await;
    let (leader, follower) = if first == "replica-a" {
        (&a, &b)
    } else {
        (&b, &a)
    };

    // A pod whose backing Secret is refreshed every second, admitted by the leader.
    bed.put_secret(&format!("{ns}/db"), r#"{"pw":"v1"}"#).await;
    let record_pod = |name: &str| {
        pod(
            name,
            json!({"sm-injector.io/env.PW": format!("{ns}/db#pw"), "sm-injector.io/refresh-interval": "1s"}),
        )
    };
    support::start_url_webhook(bed, &client, &format!("ha-{ns}"), leader.port, &[&ns]).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    support::eventually(
        Duration::from_secs(30),
        "the webhook to take effect",
        || async {
            let p = pods.create(&dry, &record_pod("canary")).await.ok()?;
            p.metadata
                .annotations?
                .contains_key("sm-injector.io/injected")
                .then_some(())
        },
    )
    .await;
    pods.create(&PostParams::default(), &record_pod("app"))
        .await
        .unwrap();

    let sm = bed.aws().await;
    let body = review(&ns, &format!("{ns}/db#pw"));
    for (round, value) in ["v2", "v3"].into_iter().enumerate() {
        let (refresher, other) = if round == 0 {
            (leader, follower)
        } else {
            (follower, leader)
        };
        if round == 1 {
            // The leader dies without letting go; the other takes over once the Lease runs out.
            unsafe { libc::kill(leader.pid as i32, libc::SIGKILL) };
            let next = support::eventually(Duration::from_secs(20), "a new leader", || async {
                let h = holder().await?;
                (h != first).then_some(h)
            })
            .await;
            assert_ne!(next, first);
        }
        let before = refresh_writes(refresher.probe).await;
        let other_before = if round == 0 {
            refresh_writes(other.probe).await
        } else {
            0.0
        };
        sm.put_secret_value()
            .secret_id(format!("{ns}/db"))
            .secret_string(format!(r#"{{"pw":"{value}"}}"#))
            .send()
            .await
            .unwrap();
        support::eventually(
            Duration::from_secs(20),
            "the rotation to reach the backing Secret",
            || async {
                let s = backing(&client, &ns).await;
                (s.data?["pw"].0 == value.as_bytes()).then_some(())
            },
        )
        .await;
        assert!(
            refresh_writes(refresher.probe).await > before,
            "round {round}: the leader refreshed"
        );
        if round == 0 {
            assert_eq!(
                refresh_writes(other.probe).await,
                other_before,
                "the follower did not"
            );
        }
        // Admissions are answered throughout, by every live replica.
        assert!(admits(bed, refresher.port, &body).await, "round {round}");
        if round == 0 {
            assert!(admits(bed, other.port, &body).await);
        }
    }
    // Stop the survivor too: it would refresh other tests' Secrets.
    for p in [a.pid, b.pid] {
        unsafe { libc::kill(p as i32, libc::SIGKILL) };
    }
}

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
    let metrics = Metrics::new();
    let mut r = refresher(bed, &client, None, &metrics).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut rolled = 0;
    for _ in 0..50 {
        rolled += r.refresh_once().await.unwrap().rolled;
        if backing(&client, &ns).await.data.unwrap()["pw"].0 == b"v2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(rolled >= 1, "the opted-in Deployment was rolled");

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
    inj.stop(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn unused_backing_secrets_are_deleted_after_the_grace_period_and_used_ones_never() {
    let _serial = SERIAL.lock().await;
    use sm_injector::refresher::Gc;
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
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let names = || async {
        let mut n: Vec<String> = secrets
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=sm-injector"))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|s| s.metadata.name)
            .collect();
        n.sort();
        n
    };
    assert_eq!(names().await.len(), 2);
    let gc = Gc {
        namespace: own.clone(),
        configmap: "inventory".into(),
        grace: Duration::from_secs(2),
    };
    let metrics = Metrics::new();
    let mut r = refresher(bed, &client, None, &metrics)
        .await
        .with_gc(gc.clone());
    r.refresh_once().await.unwrap();
    let inventory = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &own)
        .get("inventory")
        .await
        .unwrap();
    assert!(inventory.data.unwrap()["last-used.json"].contains(&format!("{ns}/sm-")));

    pods.delete("uses-gone", &Default::default()).await.unwrap();
    support::eventually(Duration::from_secs(10), "the pod to go", || async {
        pods.get_opt("uses-gone")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    r.refresh_once().await.unwrap();
    assert_eq!(names().await.len(), 2, "not before the grace period");

    // A new leader knows it from the inventory. (Stamps are whole seconds, and
    // the grace must be exceeded: wait well past it.)
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut next = refresher(bed, &client, None, &metrics).await.with_gc(gc);
    let rep = next.refresh_once().await.unwrap();
    assert_eq!(rep.deleted, 1, "{rep:?}");
    let left = names().await;
    assert_eq!(left.len(), 1);
    assert!(left[0].starts_with(&format!("sm-{ns}-kept-")), "{left:?}");
    inj.stop(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn an_admin_forces_an_immediate_refresh_with_a_namespace_annotation() {
    let _serial = SERIAL.lock().await;
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "forced", &[INJECT]).await;
    let inj = injector::start(bed, &[&ns], Options::default()).await;
    bed.put_secret(&format!("{ns}/db"), r#"{"pw":"old"}"#).await;
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
    let metrics = Metrics::new();
    let mut r = refresher(bed, &client, None, &metrics).await;
    r.refresh_once().await.unwrap();
    bed.aws()
        .await
        .put_secret_value()
        .secret_id(format!("{ns}/db"))
        .secret_string(r#"{"pw":"new"}"#)
        .send()
        .await
        .unwrap();
    r.refresh_once().await.unwrap();
    assert_eq!(
        backing(&client, &ns).await.data.unwrap()["pw"].0,
        b"old",
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
    let mut refreshed = false;
    for _ in 0..50 {
        r.refresh_once().await.unwrap();
        if backing(&client, &ns).await.data.unwrap()["pw"].0 == b"new" {
            refreshed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(refreshed, "the forced refresh wrote the new version");
    inj.stop(&client).await;
}
