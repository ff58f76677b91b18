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

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
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

/// Minutes a phase is carried forward.
const MINUTES: u64 = 70;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn promtool() -> PathBuf {
    support::component(
        "SM_INJECTOR_PROMTOOL",
        "promtool (tests/tools/build.sh promtool)",
    )
}

/// `promtool <command> rules <file>`: its output when it fails.
fn promtool_on(command: &str, file: &Path) -> Result<(), String> {
    let out = Command::new(promtool())
        .args([command, "rules"])
        .arg(file)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "promtool {command} rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// One scrape: when, and each sample with whether it is a counter.
struct Scrape {
    at: f64,
    samples: BTreeMap<String, (f64, bool)>,
}

async fn scrape(probe: u16) -> Scrape {
    let (status, text) = http_get(probe, "/metrics").await;
    assert_eq!(status, 200);
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let mut p = t.split(' ');
            types.insert(p.next().unwrap().to_string(), p.next().unwrap().to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let name = series.split('{').next().unwrap();
        let counter = ["", "_total", "_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| {
                name.strip_suffix(suffix)
                    .and_then(|family| types.get(family))
                    .is_some_and(|t| t == "counter" || t == "histogram")
            });
        samples.insert(series.to_string(), (value.parse().unwrap(), counter));
    }
    Scrape { at, samples }
}

/// promtool input series carrying the phase from `a` to `b` forward.
fn series(a: &Scrape, b: &Scrape) -> Vec<serde_json::Value> {
    let secs = b.at - a.at;
    b.samples
        .iter()
        .map(|(name, (v, counter))| {
            let values = if *counter {
                let before = a.samples.get(name).map_or(0.0, |s| s.0);
                let per_minute = (v - before).max(0.0) / secs * 60.0;
                format!("{v}+{per_minute}x{MINUTES}")
            } else {
                format!("{v}x{MINUTES}")
            };
            json!({"series": name, "values": values})
        })
        .collect()
}

/// Runs promtool on the shipped rules: in `phase`, the alerts `firing` fire
/// (each once, with its severity) and the alerts `quiet` do not.
fn check(phase: &str, input: Vec<serde_json::Value>, start: f64, firing: &[&str], quiet: &[&str]) {
    let rules: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("monitoring/alerts.rules.yaml")).unwrap(),
    )
    .unwrap();
    let severity = |alert: &str| {
        rules["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["alert"] == alert)
            .unwrap_or_else(|| panic!("no alert {alert}"))["labels"]["severity"]
            .clone()
    };
    let mut tests = vec![];
    for a in firing {
        tests.push(json!({"eval_time": format!("{MINUTES}m"), "alertname": a,
            "exp_alerts": [{"exp_labels": {"severity": severity(a)}}]}));
    }
    for a in quiet {
        tests.push(json!({"eval_time": format!("{MINUTES}m"), "alertname": a, "exp_alerts": []}));
    }
    // The shipped rules without their annotations: promtool compares those
    // too, and they quote each alert's value; `promtool check rules` checks
    // their templates (below).
    let dir = tempfile::tempdir().unwrap();
    let mut bare = rules.clone();
    for r in bare["groups"][0]["rules"].as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("annotations");
    }
    let rule_file = dir.path().join("alerts.rules.yaml");
    std::fs::write(&rule_file, serde_yaml_ng::to_string(&bare).unwrap()).unwrap();
    let file = json!({
        "rule_files": [rule_file],
        "evaluation_interval": "1m",
        "tests": [{
            "name": phase,
            "interval": "1m",
            "start_timestamp": start as i64,
            "input_series": input,
            "alert_rule_test": tests,
        }]
    });
    let path = dir.path().join(format!("{}.yaml", phase.replace(' ', "-")));
    std::fs::write(&path, serde_yaml_ng::to_string(&file).unwrap()).unwrap();
    if let Err(e) = promtool_on("test", &path) {
        panic!("{phase}: {e}\n{}", std::fs::read_to_string(&path).unwrap());
    }
}

fn others<'a>(firing: &[&str], unasserted: &[&str]) -> Vec<&'a str> {
    ALERTS
        .iter()
        .copied()
        .filter(|a| !firing.contains(a) && !unasserted.contains(a))
        .collect()
}

/// Waits until the refresher has `n` backing Secrets in use and none due:
/// a newly used one is due at once (its first refresh), after which the next
/// is an interval away.
async fn settled(probe: u16, n: f64) {
    // A refresh through the slow proxy takes 2 s a call, and the refresher
    // plans once a tick: generous, since the machine is shared.
    support::eventually(
        Duration::from_secs(90),
        "the refresher to settle",
        || async {
            let used =
                support::injector::metric_sum(probe, "sm_injector_refresh_backing_secrets").await;
            let due = support::injector::metric_sum(
                probe,
                "sm_injector_refresh_oldest_due_timestamp_seconds",
            )
            .await;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            (used >= n && due > now + 60.0).then_some(())
        },
    )
    .await;
}

/// `input`'s series with the label `instance` = `name`, as Prometheus
/// scraping several replicas sees them.
fn labelled(input: Vec<serde_json::Value>, name: &str) -> Vec<serde_json::Value> {
    input
        .into_iter()
        .map(|mut v| {
            let series = v["series"].as_str().unwrap().to_string();
            v["series"] = json!(match series.split_once('{') {
                Some((metric, rest)) => format!("{metric}{{instance=\"{name}\",{rest}"),
                None => format!("{series}{{instance=\"{name}\"}}"),
            });
            v
        })
        .collect()
}

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
