//! The refresher (SPEC sections 5 and 7) against the real API server and moto:
//! rotations reach the backing Secrets and versions never go backwards; forged,
//! oversized and revoked records are refused; an outage leaves every Secret as
//! it was and shows in the alerting gauge; the Lease moves when a replica's
//! refresher stops.

#[path = "../support/mod.rs"]
mod support;

mod identity;
mod level;

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

/// POSTs an AdmissionReview for a real (not dry-run) pod in `ns` straight to
/// a replica, as the API server would: true when admitted.
async fn admit_directly(
    bed: &TestBed,
    port: u16,
    ns: &str,
    annotations: serde_json::Value,
) -> bool {
    let body = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE", "userInfo": {}, "namespace": ns, "dryRun": false,
            "object": {"metadata": {"name": "direct", "annotations": annotations},
                       "spec": {"containers": [{"name": "c"}]}}
        }
    });
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(bed.dir.join("pki/ca.crt"))
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(body.to_string())
        .arg(format!("https://127.0.0.1:{port}/mutate"))
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("\"allowed\":true")
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn a_replica_with_a_stale_cache_never_rolls_a_rotation_back() {
    let _serial = SERIAL.lock().await;
    let bed = testbed();
    let client = bed.client().await;
    // `a` is where the race happens; `b` shares `a`'s secrets (allowed-secrets).
    let a = namespace(&client, "race-a", &[INJECT]).await;
    let shared = format!("{a}/*");
    let b = namespace_with(
        &client,
        "race-b",
        &[INJECT],
        &[("sm-injector.io/allowed-secrets", &shared)],
    )
    .await;
    let other = namespace(&client, "race-y", &[INJECT]).await;
    // Replica X serves `a` and `b` through the API server; replica Y (a fresh
    // cache) is posted to directly.
    let x = injector::start(bed, &[&a, &b], Options::default()).await;
    let y = injector::start(bed, &[&other], Options::default()).await;
    let (dry_warmed, shared_warmed) = (format!("{a}/dry"), format!("{a}/shared"));
    for s in [&dry_warmed, &shared_warmed] {
        bed.put_secret(s, r#"{"pw":"v1"}"#).await;
    }
    let uses = |s: &str| json!({"sm-injector.io/env.PW": format!("{s}#pw")});
    // X's cache learns v1: by a server-side dry run in `a` (nothing written
    // there), and by a pod in `b` using the same secret.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    Api::<Pod>::namespaced(client.clone(), &a)
        .create(&dry, &pod("warm", uses(&dry_warmed)))
        .await
        .unwrap();
    Api::<Pod>::namespaced(client.clone(), &b)
        .create(&PostParams::default(), &pod("warm", uses(&shared_warmed)))
        .await
        .unwrap();
    assert!(backing_secrets(&client, &a).await.is_empty());
    // Both rotate; replica Y writes the new versions into `a`.
    for s in [&dry_warmed, &shared_warmed] {
        bed.rotate(s, r#"{"pw":"v2"}"#).await;
        assert!(admit_directly(bed, y.port, &a, uses(s)).await);
    }
    let held = |s: String| {
        let client = client.clone();
        let a = a.clone();
        async move {
            let name = sm_injector::backing::name(
                &s,
                &sm_injector::reference::Version::current(),
                sm_injector::backing::Form::Keys,
            );
            let sec = Api::<Secret>::namespaced(client, &a)
                .get(&name)
                .await
                .unwrap();
            String::from_utf8(sec.data.unwrap()["pw"].0.clone()).unwrap()
        }
    };
    assert_eq!(held(dry_warmed.clone()).await, "v2");
    // Pods in `a` admitted by X, whose cache still says v1: the Secrets keep v2.
    let x_calls = x.metric("sm_injector_secretsmanager_calls_total").await;
    for (i, s) in [&dry_warmed, &shared_warmed].into_iter().enumerate() {
        Api::<Pod>::namespaced(client.clone(), &a)
            .create(&PostParams::default(), &pod(&format!("app-{i}"), uses(s)))
            .await
            .unwrap();
        assert_eq!(
            held(s.clone()).await,
            "v2",
            "{s}: the rotation was not rolled back"
        );
    }
    // X dropped its stale values: the next admission asks Secrets Manager again.
    Api::<Pod>::namespaced(client.clone(), &a)
        .create(&dry, &pod("again", uses(&dry_warmed)))
        .await
        .unwrap();
    assert!(x.metric("sm_injector_secretsmanager_calls_total").await > x_calls);
    x.stop(&client).await;
    y.stop(&client).await;
    cleanup(&client, &[&a, &b, &other]).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn forged_and_oversized_records_are_refused_once_with_no_secrets_manager_call() {
    let _serial = SERIAL.lock().await;
    let bed = testbed();
    let client = bed.client().await;
    let victim = namespace(&client, "victim", &[INJECT]).await;
    // Not opted in: a tenant there labels and annotates its own pod as the
    // webhook would have.
    let attacker = namespace(&client, "attacker", &[]).await;
    let labelled = namespace(&client, "oversized", &[INJECT]).await;
    let own = namespace(&client, "forged-own", &[]).await;
    bed.put_secret(&format!("{victim}/db"), r#"{"pw":"victims"}"#)
        .await;
    let current = sm_injector::reference::Version::current();
    let entry = |secret: &str| {
        let backing =
            sm_injector::backing::name(secret, &current, sm_injector::backing::Form::Keys);
        (
            backing.clone(),
            json!({"backing": backing, "secret": secret, "version": current.to_string(), "form": "keys"}),
        )
    };
    let (victim_backing, e) = entry(&format!("{victim}/db"));
    let forged = json!({"refreshInterval": "1s", "secrets": [e]});
    let big: Vec<serde_json::Value> = (0..=MAX_BACKING_PER_POD)
        .map(|i| entry(&format!("{labelled}/s{i}")).1)
        .collect();
    let oversized = json!({"refreshInterval": "1s", "secrets": big});
    let forged_pod = |name: &str, record: &serde_json::Value| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"sm-injector.io/injected": "true"},
                         "annotations": {"sm-injector.io/injected": record.to_string()}},
            "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
        }))
        .unwrap()
    };
    Api::<Pod>::namespaced(client.clone(), &attacker)
        .create(&PostParams::default(), &forged_pod("forged", &forged))
        .await
        .unwrap();
    Api::<Pod>::namespaced(client.clone(), &labelled)
        .create(&PostParams::default(), &forged_pod("oversized", &oversized))
        .await
        .unwrap();
    let r = start_refresher(bed, &client, None, &own, Some(Duration::from_secs(1))).await;
    eventually(Duration::from_secs(20), "both refusals", || async {
        (r.metric("sm_injector_refresh_refused_total{reason=\"not-opted-in\"}") >= 1.0
            && r.metric("sm_injector_refresh_refused_total{reason=\"record\"}") >= 1.0)
            .then_some(())
    })
    .await;
    // Many ticks later: each still counted (and logged) once, nothing fetched
    // for them, nothing written where the namespace did not opt in.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        r.metric("sm_injector_refresh_refused_total{reason=\"not-opted-in\"}"),
        1.0
    );
    assert_eq!(
        r.metric("sm_injector_refresh_refused_total{reason=\"record\"}"),
        1.0
    );
    assert!(
        r.metric("sm_injector_secretsmanager_secrets_requested_total") < 5.0,
        "a forged or oversized record makes no fetch: {}",
        r.metrics.encode()
    );
    let attackers = Api::<Secret>::namespaced(client.clone(), &attacker)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        attackers
            .items
            .iter()
            .all(|s| s.metadata.name.as_deref() != Some(&victim_backing))
    );
    assert!(backing_secrets(&client, &labelled).await.is_empty());
    drop(r);
    cleanup(&client, &[&victim, &attacker, &labelled, &own]).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn an_outage_leaves_backing_secrets_as_they_are_and_the_alert_fires() {
    let _serial = SERIAL.lock().await;
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "refresh-outage", &[INJECT]).await;
    let own = namespace(&client, "outage-own", &[]).await;
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
            &pod("app", json!({"sm-injector.io/env.PW": format!("{ns}/db#pw"), "sm-injector.io/refresh-interval": "1s"})),
        )
        .await
        .unwrap();
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let down = start_refresher(bed, &client, Some(&dead), &own, None).await;
    // The README's alert: time() - sm_injector_refresh_oldest_due_timestamp_seconds > threshold.
    let overdue = |r: &Running| {
        let due = r.metric("sm_injector_refresh_oldest_due_timestamp_seconds ");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        (due > 0.0).then_some(now - due)
    };
    eventually(
        Duration::from_secs(30),
        "the overdue age to pass 5 s during the outage",
        || async { overdue(&down).filter(|o| *o > 5.0) },
    )
    .await;
    assert_eq!(holds(&client, &ns, "pw").await, "kept", "never emptied");
    assert!(
        down.metric("sm_injector_refresh_failures_total{reason=\"secretsmanager\"}") >= 1.0,
        "{}",
        down.metrics.encode()
    );
    assert!(down.metric("sm_injector_refresh_failing_secrets ") >= 1.0);
    assert_eq!(down.metric("sm_injector_refresh_leader "), 1.0);
    // A Warning Event on the affected workload (here the pod itself: nothing owns it).
    let ev = warning_event(&client, &ns, "SecretRefreshFailed").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(ev.regarding.as_ref().unwrap().name.as_deref(), Some("app"));
    let note = ev.note.unwrap_or_default();
    assert!(
        note.contains(&format!("{ns}/db")) && !note.contains("kept"),
        "{note}"
    );
    drop(down);

    bed.rotate(&format!("{ns}/db"), r#"{"pw":"new"}"#).await;
    let up = start_refresher(bed, &client, None, &own, None).await;
    eventually(Duration::from_secs(30), "refreshing to resume", || async {
        (holds(&client, &ns, "pw").await == "new").then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "the alert to clear", || async {
        overdue(&up).filter(|o| *o < 5.0)
    })
    .await;
    drop(up);
    inj.stop(&client).await;
    cleanup(&client, &[&ns, &own]).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn narrowing_allowed_secrets_stops_refreshing_and_deletes_the_copy() {
    let _serial = SERIAL.lock().await;
    let bed = testbed();
    let client = bed.client().await;
    let lib = namespace(&client, "lib", &[]).await;
    let shared = format!("{lib}/*");
    let ns = namespace_with(
        &client,
        "revoke",
        &[INJECT],
        &[("sm-injector.io/allowed-secrets", &shared)],
    )
    .await;
    let own = namespace(&client, "revoke-own", &[]).await;
    let inj = injector::start(bed, &[&ns], Options::default()).await;
    bed.put_secret(&format!("{lib}/smtp"), r#"{"pw":"p"}"#)
        .await;
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &pod(
                "app",
                json!({"sm-injector.io/env.PW": format!("{lib}/smtp#pw")}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(backing_secrets(&client, &ns).await.len(), 1);
    let r = start_refresher(bed, &client, None, &own, Some(Duration::from_secs(2))).await;
    eventually(
        Duration::from_secs(20),
        "the refresher to see it",
        || async { (r.metric("sm_injector_refresh_backing_secrets ") >= 1.0).then_some(()) },
    )
    .await;
    // The admin narrows the rule back to the namespace's own secrets.
    bed.kubectl_run(
        &[
            "annotate",
            "namespace",
            &ns,
            "--overwrite",
            &format!("sm-injector.io/allowed-secrets={ns}/*"),
        ],
        None,
    )
    .unwrap();
    eventually(
        Duration::from_secs(30),
        "the copy to be deleted",
        || async { backing_secrets(&client, &ns).await.is_empty().then_some(()) },
    )
    .await;
    assert_eq!(
        r.metric("sm_injector_refresh_refused_total{reason=\"not-allowed\"}"),
        1.0
    );
    let ev = warning_event(&client, &ns, "SecretAccessRevoked").await;
    let note = ev.note.unwrap_or_default();
    // It names the backing Secret and the rule, not the secret now outside it.
    let backing = sm_injector::backing::name(
        &format!("{lib}/smtp"),
        &sm_injector::reference::Version::current(),
        sm_injector::backing::Form::Keys,
    );
    assert!(
        note.contains(&backing)
            && note.contains(&format!("{ns}/*"))
            && !note.contains(&format!("{lib}/smtp")),
        "{note}"
    );
    drop(r);
    inj.stop(&client).await;
    cleanup(&client, &[&ns, &lib, &own]).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn the_lease_is_handed_over_at_once_and_joining_is_retried() {
    let _serial = SERIAL.lock().await;
    let bed = testbed();
    let client = bed.client().await;
    let lease_ns = namespace(&client, "handover", &[]).await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &lease_ns);
    let holder = |leases: Api<k8s_openapi::api::coordination::v1::Lease>| async move {
        leases
            .get_opt("handover")
            .await
            .ok()
            .flatten()?
            .spec?
            .holder_identity
    };
    let metrics = Metrics::new();
    let replica = |id: &'static str, stop: tokio::sync::watch::Receiver<bool>| {
        let (client, metrics, lease_ns) = (client.clone(), metrics.clone(), lease_ns.clone());
        async move {
            let aws = aws_at(bed, None).await;
            let r = refresher_for(&client, aws, &metrics, &lease_ns, None);
            let lease = refresh::lease::LeaseSettings {
                namespace: lease_ns,
                name: "handover".into(),
                identity: id.into(),
                seconds: 15,
            };
            r.run_with_lease(lease, stop).await
        }
    };
    let (_keep, never) = tokio::sync::watch::channel(false);
    let a = tokio::spawn(replica("a", never.clone()));
    eventually(Duration::from_secs(20), "a to lead", || async {
        (holder(leases.clone()).await? == "a").then_some(())
    })
    .await;
    // The gauge is set just after the Lease is taken: a moment later.
    eventually(Duration::from_secs(10), "a's leader gauge", || async {
        (metric(&metrics, "sm_injector_refresh_leader ") == 1.0).then_some(())
    })
    .await;
    let b = tokio::spawn(replica("b", never.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // a's refresher dies: its Lease is released, and b, which watches the
    // Lease, takes it at once rather than when the 15 s Lease would expire.
    a.abort();
    let t = std::time::Instant::now();
    eventually(Duration::from_secs(20), "b to lead", || async {
        (holder(leases.clone()).await? == "b").then_some(())
    })
    .await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // A real replica whose Lease cannot be had yet (its namespace does not
    // exist) keeps trying instead of crash-looping, and takes the Lease when
    // it can; SIGTERM then hands it over to b within 2 s.
    b.abort();
    let late_ns = format!("{lease_ns}-late");
    let late: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &late_ns);
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_sm-injector"));
    let mut process = tokio::process::Command::new(binary)
        .args([
            "serve",
            "--listen=127.0.0.1:0",
            "--probe-listen=127.0.0.1:0",
            "--lease-name=handover",
            "--lease-seconds=15",
            "--shutdown-delay=0s",
            "--identity=process",
        ])
        .arg(format!("--lease-namespace={late_ns}"))
        .arg(format!(
            "--tls-cert={}",
            bed.dir.join("pki/apiserver.crt").display()
        ))
        .arg(format!(
            "--tls-key={}",
            bed.dir.join("pki/apiserver.key").display()
        ))
        .env("KUBECONFIG", &bed.kubeconfig)
        .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", &bed.moto)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        process.try_wait().unwrap().is_none(),
        "the replica keeps running while it cannot join"
    );
    namespace_with_name(&client, &late_ns).await;
    eventually(Duration::from_secs(45), "the process to lead", || async {
        (holder(late.clone()).await? == "process").then_some(())
    })
    .await;
    let late_metrics = Metrics::new();
    let (client2, late_ns2) = (client.clone(), late_ns.clone());
    let b2 = tokio::spawn(async move {
        let aws = aws_at(bed, None).await;
        let r = refresher_for(&client2, aws, &late_metrics, &late_ns2, None);
        let lease = refresh::lease::LeaseSettings {
            namespace: late_ns2,
            name: "handover".into(),
            identity: "b".into(),
            seconds: 15,
        };
        r.run_with_lease(lease, never).await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = process.id().unwrap() as i32;
    support::signal(pid as i32, libc::SIGTERM);
    let t = std::time::Instant::now();
    eventually(
        Duration::from_secs(20),
        "b to lead after SIGTERM",
        || async { (holder(late.clone()).await? == "b").then_some(()) },
    )
    .await;
    let handover = t.elapsed();
    assert!(handover < Duration::from_secs(2), "{handover:?}");
    let status = tokio::time::timeout(Duration::from_secs(30), process.wait())
        .await
        .expect("the process exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
    b2.abort();
    cleanup(&client, &[&lease_ns, &late_ns]).await;
}

/// Creates the namespace `name` (unlabelled).
async fn namespace_with_name(client: &kube::Client, name: &str) {
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
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
            support::signal(leader.pid as i32, libc::SIGKILL);
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
        support::signal(p as i32, libc::SIGKILL);
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
