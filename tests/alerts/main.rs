//! Each alert of monitoring/alerts.rules.yaml fires in the failure it names,
//! and none fires in a healthy run: real `sm-injector serve` processes on the
//! test bed, Secrets Manager behind a fault proxy, their /metrics scraped at
//! the start and end of each phase, and `promtool test rules` (built from the
//! Prometheus module, tests/tools/) evaluating the shipped rules over series
//! made from those scrapes.
//!
//! A phase lasts seconds, the alerts' windows minutes to an hour: each phase
//! is carried forward for 70 minutes as it ended (each counter growing at the
//! rate it grew during the phase, each gauge holding its last value), from
//! the time of the last scrape. The dashboard's expressions are checked to
//! parse (`promtool check rules`).

#[path = "../support/mod.rs"]
mod support;

mod series;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use series::*;
use support::faults::{FaultyEndpoint, Mode};
use support::injector::http_get;
use support::{namespace, testbed};

const ALERTS: [&str; 8] = [
    "SmInjectorDown",
    "SmInjectorAdmissionsDenied",
    "SmInjectorSlowAdmissions",
    "SmInjectorSecretsManagerErrors",
    "SmInjectorRefreshFailing",
    "SmInjectorRefreshOverdue",
    "SmInjectorNoRefresher",
    "SmInjectorCertificateExpiring",
];

/// A ServiceAccount `blind` in `ns` with what the refresher needs there and
/// Namespaces, but not pods: its pod watch never syncs.
fn blind_rbac(ns: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: blind, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: blind, namespace: {ns}}}
rules:
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "list", "watch", "create", "update", "patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["list", "watch", "create", "patch", "delete"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: blind, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: blind}}
subjects: [{{kind: ServiceAccount, name: blind, namespace: {ns}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {ns}-blind}}
rules:
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {ns}-blind}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {ns}-blind}}
subjects: [{{kind: ServiceAccount, name: blind, namespace: {ns}}}]
"#
    )
}

fn pod(name: &str, annotations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    }))
    .unwrap()
}

#[tokio::test]
#[ignore = "needs the test bed and promtool: run ./tests/run"]
async fn each_alert_fires_in_its_failure_and_none_when_healthy() {
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "alerts", &[("sm-injector.io/inject", "enabled")]).await;
    for s in ["a", "b", "fast", "slow1", "slow2", "slow3"] {
        bed.put_secret(&format!("{ns}/{s}"), r#"{"k":"v"}"#).await;
    }
    let proxy = FaultyEndpoint::start(bed.moto.trim_start_matches("http://").to_string()).await;
    let binary = Path::new(env!("CARGO_BIN_EXE_sm-injector"));
    // sm-injector's own namespace is never one it injects into.
    let own = namespace(&client, "alerts-own", &[]).await;
    let lease = format!("--lease-namespace={own}");
    let server = support::serve_process_at(
        bed,
        binary,
        "alerts",
        &bed.kubeconfig,
        &[
            &lease,
            "--refresh-tick=1s",
            "--min-refresh-interval=2s",
            "--cache-ttl=1h",
        ],
        &proxy.url,
    )
    .await;
    support::start_url_webhook(bed, &client, "alerts", server.port, &[&ns]).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let hourly = |name: &str, secret: &str| {
        pod(
            name,
            json!({"sm-injector.io/env.K": format!("{ns}/{secret}#k"),
                         "sm-injector.io/refresh-interval": "1h"}),
        )
    };
    support::until_injected(&client, &ns, &hourly("canary", "a")).await;
    support::eventually(Duration::from_secs(30), "the refresher's Lease", || async {
        (support::injector::metric_sum(server.probe, "sm_injector_refresh_leader").await == 1.0)
            .then_some(())
    })
    .await;

    // Healthy: pods admitted, refreshed hourly.
    let a = scrape(server.probe).await;
    for i in 0..4 {
        pods.create(&PostParams::default(), &hourly(&format!("ok-{i}"), "b"))
            .await
            .unwrap();
    }
    settled(server.probe, 1.0).await;
    let b = scrape(server.probe).await;
    check("healthy", series(&a, &b), b.at, &[], &ALERTS);

    // Secrets Manager slow (2 s a call): admissions that miss the cache wait.
    proxy.set(Mode::Slow);
    let a = scrape(server.probe).await;
    for (i, s) in ["slow1", "slow2", "slow3"].iter().enumerate() {
        pods.create(&PostParams::default(), &hourly(&format!("slow-{i}"), s))
            .await
            .unwrap();
    }
    settled(server.probe, 4.0).await;
    let b = scrape(server.probe).await;
    let firing = ["SmInjectorSlowAdmissions"];
    check("slow", series(&a, &b), b.at, &firing, &others(&firing, &[]));

    // Secrets Manager unreachable: new references are denied, and a secret
    // refreshed every 2 s stops being refreshed.
    proxy.set(Mode::Healthy);
    pods.create(
        &PostParams::default(),
        &pod(
            "fast",
            json!({"sm-injector.io/env.K": format!("{ns}/fast#k"),
                            "sm-injector.io/refresh-interval": "2s"}),
        ),
    )
    .await
    .unwrap();
    proxy.set(Mode::Refusing);
    let a = scrape(server.probe).await;
    let start = Instant::now();
    for i in 0..4 {
        let denied = pods
            .create(
                &PostParams::default(),
                &hourly(&format!("down-{i}"), &format!("new{i}")),
            )
            .await;
        assert!(denied.is_err(), "admitted without Secrets Manager");
    }
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(start.elapsed())).await;
    let b = scrape(server.probe).await;
    let firing = [
        "SmInjectorAdmissionsDenied",
        "SmInjectorSecretsManagerErrors",
        "SmInjectorRefreshFailing",
        "SmInjectorRefreshOverdue",
    ];
    // The SDK's retries can make the denials slow too: not asserted.
    let unasserted = ["SmInjectorSlowAdmissions"];
    check(
        "secrets manager down",
        series(&a, &b),
        b.at,
        &firing,
        &others(&firing, &unasserted),
    );
    proxy.set(Mode::Healthy);

    // A replica that cannot take the Lease (another holder) and serves a
    // certificate that expires tomorrow.
    let held = "held-refresher";
    bed.kubectl_run(
        &["-n", &own, "apply", "-f", "-"],
        Some(&format!(
            "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: {held}}}\nspec: {{holderIdentity: elsewhere, leaseDurationSeconds: 3600, renewTime: \"{}\"}}\n",
            k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.000000Z")
        )),
    )
    .unwrap();
    let lease_name = format!("--lease-name={held}");
    let lonely = support::serve_process_at(
        bed,
        binary,
        "alerts-lonely",
        &bed.kubeconfig,
        &[&lease, &lease_name],
        &proxy.url,
    )
    .await;
    let ca = sm_injector::certs::Ca::new("short", Duration::from_secs(86400)).unwrap();
    let pem = ca.server("webhook", &["127.0.0.1"]).unwrap();
    let dir = bed.dir.join("alerts-lonely");
    std::fs::write(dir.join("tls.key"), &pem.key).unwrap();
    std::fs::write(dir.join("tls.crt"), &pem.cert).unwrap();
    let tomorrow = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        + 86400.0;
    support::eventually(
        Duration::from_secs(30),
        "the short certificate to be loaded",
        || async {
            let t = support::injector::metric_sum(
                lonely.probe,
                "sm_injector_serving_certificate_expiry_timestamp_seconds",
            )
            .await;
            ((t - tomorrow).abs() < 120.0).then_some(())
        },
    )
    .await;
    let a = scrape(lonely.probe).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = scrape(lonely.probe).await;
    let firing = ["SmInjectorNoRefresher", "SmInjectorCertificateExpiring"];
    check(
        "no leader, certificate expiring",
        series(&a, &b),
        b.at,
        &firing,
        &others(&firing, &[]),
    );

    // A hand-over: the leader pauses past its Lease and a successor takes
    // over; the old leader, resumed, exports none of the leader-only gauges,
    // so nothing fires over both replicas' series.
    pods.delete("fast", &Default::default()).await.unwrap();
    let successor = support::serve_process_at(
        bed,
        binary,
        "alerts-successor",
        &bed.kubeconfig,
        &[
            &lease,
            "--refresh-tick=1s",
            "--min-refresh-interval=2s",
            "--cache-ttl=1h",
        ],
        &proxy.url,
    )
    .await;
    let leads = |probe: u16| async move {
        support::injector::metric_sum(probe, "sm_injector_refresh_leader").await
    };
    support::signal(server.pid as i32, libc::SIGSTOP);
    support::eventually(Duration::from_secs(60), "the successor to lead", || async {
        (leads(successor.probe).await == 1.0).then_some(())
    })
    .await;
    support::signal(server.pid as i32, libc::SIGCONT);
    support::eventually(
        Duration::from_secs(60),
        "the old leader to step down",
        || async {
            let due = support::injector::metric_sum(
                server.probe,
                "sm_injector_refresh_oldest_due_timestamp_seconds",
            )
            .await;
            (leads(server.probe).await == 0.0 && due == 0.0).then_some(())
        },
    )
    .await;
    // In use: b (ok-*) and slow1..3; fast was deleted, the down-* pods denied.
    settled(successor.probe, 4.0).await;
    let (a1, a2) = (scrape(server.probe).await, scrape(successor.probe).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (b1, b2) = (scrape(server.probe).await, scrape(successor.probe).await);
    let mut input = labelled(series(&a1, &b1), "old");
    input.extend(labelled(series(&a2, &b2), "new"));
    check("after a hand-over", input, b2.at, &[], &ALERTS);

    // A leader whose pod watch never syncs (its identity may not list pods):
    // overdue from the start of its leadership, not "due now" forever.
    bed.kubectl_run(&["apply", "-f", "-"], Some(&blind_rbac(&own)))
        .unwrap();
    let kubeconfig = support::install::sa_kubeconfig(bed, &own, "blind");
    let blind = support::serve_process_at(
        bed,
        binary,
        "alerts-blind",
        &kubeconfig,
        &[&lease, "--lease-name=blind"],
        &proxy.url,
    )
    .await;
    support::eventually(
        Duration::from_secs(30),
        "the blind replica to lead",
        || async { (leads(blind.probe).await == 1.0).then_some(()) },
    )
    .await;
    let a = scrape(blind.probe).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = scrape(blind.probe).await;
    let firing = ["SmInjectorRefreshOverdue"];
    check(
        "a leader whose watches never sync",
        series(&a, &b),
        b.at,
        &firing,
        &others(&firing, &[]),
    );

    // No replica scraped at all.
    let firing = ["SmInjectorDown"];
    check("down", vec![], b.at, &firing, &others(&firing, &[]));
}

#[test]
#[ignore = "needs promtool: run ./tests/run"]
fn the_rules_and_the_dashboard_expressions_are_valid_promql() {
    promtool_on("check", &repo().join("monitoring/alerts.rules.yaml")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("monitoring/dashboard.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "5m")
        })
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let rules = json!({"groups": [{"name": "dashboard", "rules": exprs.iter().enumerate()
        .map(|(i, e)| json!({"record": format!("dashboard:expr{i}"), "expr": e}))
        .collect::<Vec<_>>()}]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard.rules.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&rules).unwrap()).unwrap();
    promtool_on("check", &path).unwrap();
}
