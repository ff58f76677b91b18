//! A bad day, on the test bed through the real API server: Secrets Manager
//! healthy, then slow (2 s a call), throttling, refusing connections, and
//! flapping, each during a burst of 40 pods (200 in all, 16 clients at once)
//! while every secret is rotated. sm-injector (the release binary, as its own
//! process) reaches moto through a fault-injecting proxy.
//!
//! `./tests/chaos` prints, for each phase, pods admitted and denied, the
//! reasons of the denials, answers that were not sm-injector's (5xx, webhook
//! call failures), admitted pods whose environment does not resolve to a value
//! the secret has had, creation latency, Secrets Manager requests, and the
//! process's peak RSS against the Deployment's memory limit. It exits non-zero
//! when any pod was admitted with a wrong or missing value, a denial had no
//! reason, an answer was a 5xx, or the peak RSS passed the limit.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, PostParams};
use serde_json::json;
use support::faults::{FaultyEndpoint, Mode};

const PODS_PER_PHASE: usize = 40;
const CLIENTS: usize = 16;
const TENANTS: usize = 4;
const SECRETS: usize = 5;
/// manifests/deployment.yaml's `limits.memory`.
const MEMORY_LIMIT_MIB: f64 = 128.0;

/// Every value each secret has had: admitted pods must resolve to one of them.
type History = Arc<Mutex<HashMap<String, BTreeSet<String>>>>;

/// Records `value` as one `id` has held (before it is written), and returns
/// the secret's JSON.
fn remember(history: &History, id: &str, value: String) -> String {
    let json = json!({ "v": value }).to_string();
    history
        .lock()
        .unwrap()
        .entry(id.to_string())
        .or_default()
        .insert(value);
    json
}

#[derive(Default)]
struct Tally {
    admitted: usize,
    denied: BTreeMap<String, usize>,
    /// One message of each denial class, shortened.
    examples: BTreeMap<String, String>,
    denied_without_reason: usize,
    not_ours: Vec<String>,
    wrong: Vec<String>,
    latencies: Vec<Duration>,
}

fn reason_class(message: &str) -> String {
    let m = message.to_lowercase();
    for (needle, class) in [
        ("throttl", "throttled"),
        ("dispatch failure", "connection to Secrets Manager failed"),
        ("unreachable", "Secrets Manager unreachable"),
        ("no answer within", "Secrets Manager unreachable"),
        ("not found", "secret not found"),
        ("internalservice", "Secrets Manager error"),
        ("deadline", "admission deadline"),
    ] {
        if m.contains(needle) {
            return class.to_string();
        }
    }
    "other".to_string()
}

fn rss_peak_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// The value behind each of the pod's env vars and envFrom keys, checked
/// against what the secrets have held: (problems found).
async fn check_values(
    client: &kube::Client,
    ns: &str,
    pod: &Pod,
    history: &History,
) -> Vec<String> {
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let mut problems = vec![];
    let name = pod.metadata.name.clone().unwrap_or_default();
    let c = &pod.spec.as_ref().unwrap().containers[0];
    let source_of = |s: &Secret| {
        s.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("sm-injector.io/source-name").cloned())
            .unwrap_or_default()
    };
    for e in c.env.iter().flatten() {
        let Some(r) = e
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
        else {
            continue;
        };
        match secrets.get_opt(&r.name).await {
            Ok(Some(s)) => {
                let value = s.data.as_ref().and_then(|d| d.get(&r.key));
                let known = history.lock().unwrap().get(&source_of(&s)).cloned();
                match (value, known) {
                    (Some(v), Some(k))
                        if k.contains(&String::from_utf8_lossy(&v.0).to_string()) => {}
                    (None, _) => {
                        problems.push(format!("{ns}/{name}: {} has no key {}", r.name, r.key))
                    }
                    _ => problems.push(format!(
                        "{ns}/{name}: {}#{} holds a value its secret never had",
                        r.name, r.key
                    )),
                }
            }
            _ => problems.push(format!("{ns}/{name}: Secret {} is missing", r.name)),
        }
    }
    for f in c.env_from.iter().flatten() {
        let Some(r) = &f.secret_ref else { continue };
        match secrets.get_opt(&r.name).await {
            Ok(Some(s)) if s.data.as_ref().is_some_and(|d| d.contains_key("v")) => {
                let known = history
                    .lock()
                    .unwrap()
                    .get(&source_of(&s))
                    .cloned()
                    .unwrap_or_default();
                let v = String::from_utf8_lossy(&s.data.unwrap()["v"].0).to_string();
                if !known.contains(&v) {
                    problems.push(format!(
                        "{ns}/{name}: envFrom {} holds a value its secret never had",
                        r.name
                    ));
                }
            }
            _ => problems.push(format!(
                "{ns}/{name}: envFrom Secret {} is missing or empty",
                r.name
            )),
        }
    }
    problems
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --benches` builds it; ./tests/chaos runs it.
    }
    let bed = support::testbed();
    let client = bed.client().await;
    let sm = bed.aws().await;
    let upstream = bed.moto.trim_start_matches("http://").to_string();
    let proxy = FaultyEndpoint::start(upstream).await;
    let history: History = Arc::default();
    let mut tenants = vec![];
    for _ in 0..TENANTS {
        let ns =
            support::namespace(&client, "chaos", &[("sm-injector.io/inject", "enabled")]).await;
        for j in 0..SECRETS {
            let id = format!("{ns}/s{j}");
            let v = remember(&history, &id, format!("{id}-r0"));
            bed.put_secret(&id, &v).await;
        }
        tenants.push(ns);
    }
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_sm-injector"));
    // sm-injector's own namespace, which it never injects into.
    let own = support::namespace(&client, "chaos-own", &[]).await;
    let lease = format!("--lease-namespace={own}");
    let server = support::serve_process_at(
        bed,
        binary,
        "chaos",
        &bed.kubeconfig,
        &[
            &lease,
            "--cache-ttl=3s",
            "--negative-cache-ttl=3s",
            "--refresh-tick=2s",
            "--min-refresh-interval=5s",
        ],
        &proxy.url,
    )
    .await;
    let names: Vec<&str> = tenants.iter().map(String::as_str).collect();
    support::start_url_webhook(bed, &client, "chaos", server.port, &names).await;
    // Each pod: one env var and one envFrom from its tenant's secrets, and
    // every fifth one a secret first asked for in this phase (nothing to
    // fall back on when Secrets Manager fails), refreshed every 5 s.
    let pod = |name: &str, ns: &str, i: usize, phase: usize| -> Pod {
        let mut ann = json!({
            "sm-injector.io/env.A": format!("{ns}/s{}#v", i % SECRETS),
            "sm-injector.io/env-from.B": format!("{ns}/s{}", (i + 1) % SECRETS),
            "sm-injector.io/refresh-interval": "5s",
        });
        if i.is_multiple_of(5) {
            ann["sm-injector.io/env.F"] = json!(format!("{ns}/fresh-{phase}#v"));
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": ann},
            "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
        }))
        .unwrap()
    };
    support::until_injected(&client, &tenants[0], &pod("canary", &tenants[0], 1, 0)).await;

    let phases = [
        Mode::Healthy,
        Mode::Slow,
        Mode::Throttling,
        Mode::Refusing,
        Mode::Flapping,
    ];
    let mut rows = vec![];
    let mut failed = false;
    for (phase, mode) in phases.into_iter().enumerate() {
        // This phase's new secrets exist before it starts.
        for ns in &tenants {
            let id = format!("{ns}/fresh-{phase}");
            let v = remember(&history, &id, format!("{id}-r0"));
            bed.put_secret(&id, &v).await;
        }
        proxy.set(mode);
        let requests_before = proxy.requests.load(std::sync::atomic::Ordering::SeqCst);
        let tally = Arc::new(Mutex::new(Tally::default()));
        // Rotations: every secret once, midway through the burst.
        let rotate = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for ns in &tenants {
                for j in 0..SECRETS {
                    let id = format!("{ns}/s{j}");
                    let v = remember(&history, &id, format!("{id}-r{}", phase + 1));
                    sm.put_secret_value()
                        .secret_id(&id)
                        .secret_string(v)
                        .send()
                        .await
                        .unwrap();
                }
            }
        };
        let burst = futures::stream::iter(0..PODS_PER_PHASE)
            .map(|i| {
                let ns = tenants[i % TENANTS].clone();
                let (client, tally, history) = (client.clone(), tally.clone(), history.clone());
                let p = pod(&format!("p{phase}-{i}"), &ns, i, phase);
                async move {
                    let api = Api::<Pod>::namespaced(client.clone(), &ns);
                    let t = Instant::now();
                    let r = api.create(&PostParams::default(), &p).await;
                    let took = t.elapsed();
                    let problems = match &r {
                        Ok(created) => check_values(&client, &ns, created, &history).await,
                        Err(_) => vec![],
                    };
                    let mut t = tally.lock().unwrap();
                    t.latencies.push(took);
                    match r {
                        Ok(_) => {
                            t.admitted += 1;
                            t.wrong.extend(problems);
                        }
                        Err(kube::Error::Api(s))
                            if s.code < 500 && s.message.contains("sm-injector: ") =>
                        {
                            let reason =
                                s.message.split("sm-injector: ").nth(1).unwrap_or("").trim();
                            if reason.is_empty() {
                                t.denied_without_reason += 1;
                            }
                            let class = reason_class(reason);
                            *t.denied.entry(class.clone()).or_default() += 1;
                            t.examples
                                .entry(class)
                                .or_insert_with(|| reason.chars().take(200).collect());
                        }
                        Err(e) => t.not_ours.push(e.to_string()),
                    }
                }
            })
            .buffer_unordered(CLIENTS)
            .collect::<Vec<()>>();
        let started = Instant::now();
        futures::join!(burst, rotate);
        let wall = started.elapsed();
        let requests = proxy.requests.load(std::sync::atomic::Ordering::SeqCst) - requests_before;
        let mut t = Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap();
        t.latencies.sort();
        failed |= !t.wrong.is_empty() || !t.not_ours.is_empty() || t.denied_without_reason > 0;
        for w in t.wrong.iter().chain(&t.not_ours).take(5) {
            eprintln!("  {}: {w}", mode.name());
        }
        rows.push((mode, t, requests, wall));
    }
    proxy.set(Mode::Healthy);
    let peak = rss_peak_mib(server.pid);
    failed |= peak > MEMORY_LIMIT_MIB;

    println!(
        "\nchaos: {} pods in {} namespaces, {CLIENTS} clients at once; every secret rotated in each phase",
        PODS_PER_PHASE * phases.len(),
        TENANTS
    );
    println!(
        "{:<12} {:>8} {:>7} {:>9} {:>6} {:>9} {:>9} {:>8}  denial reasons",
        "Secrets Mgr", "admitted", "denied", "not ours", "wrong", "p50", "p99", "SM reqs"
    );
    let mut totals = (0, 0, 0, 0, 0);
    for (mode, t, requests, _) in &rows {
        let denied: usize = t.denied.values().sum();
        let reasons: Vec<String> = t.denied.iter().map(|(k, v)| format!("{v} {k}")).collect();
        println!(
            "{:<12} {:>8} {:>7} {:>9} {:>6} {:>7.0}ms {:>7.0}ms {:>8}  {}",
            mode.name(),
            t.admitted,
            denied,
            t.not_ours.len(),
            t.wrong.len(),
            percentile(&t.latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&t.latencies, 0.99).as_secs_f64() * 1e3,
            requests,
            reasons.join(", ")
        );
        totals.0 += t.admitted;
        totals.1 += denied;
        totals.2 += t.not_ours.len();
        totals.3 += t.wrong.len();
        totals.4 += t.denied_without_reason;
    }
    println!("one denial message of each kind:");
    let mut seen = BTreeSet::new();
    for (_, t, _, _) in &rows {
        for (class, m) in &t.examples {
            if seen.insert(class.clone()) {
                println!("  {class}: {m}");
            }
        }
    }
    println!(
        "total: {} admitted, {} denied ({} without a reason), {} answers not sm-injector's (5xx or failed calls), {} admitted with a wrong or missing value",
        totals.0, totals.1, totals.4, totals.2, totals.3
    );
    println!("sm-injector peak RSS: {peak:.1} MiB (limit {MEMORY_LIMIT_MIB} MiB)");
    if failed {
        eprintln!("chaos: FAILED");
        std::process::exit(1);
    }
}
