//! The refresher at scale, on the test bed through the real API server:
//! N namespaces x P pods, each namespace using 5 of S secrets.
//!
//! `./tests/scale N P S` (default 100 10 50) runs the release `sm-injector
//! serve` as its own process and prints: what a pod creation costs the
//! cluster with no webhook, with the minimal no-op webhook, with the no-op
//! answering sm-injector's patch and with sm-injector (`scale/ways.rs`,
//! `scale/cost.rs`: latency, CPU by process, API requests, etcd
//! bytes, watch events, Secrets Manager calls; first pods of a namespace
//! apart), each way against the no-op round by round (`scale/paired.rs`),
//! the latencies of (P-1)/2 more warm pods a namespace with every way's pods
//! in one stream (`scale/mixed.rs`), Secrets Manager calls per refresh interval, the time a rotation of every secret
//! takes to reach every backing Secret, the API requests on pods, secrets,
//! configmaps and namespaces during an idle minute (from the API server's own
//! `apiserver_request_total`), and sm-injector's RSS. The first line names how
//! long the machine's idle vCPUs poll before they halt; `BENCH_HALT_POLL_NS`
//! sets it for the run (`admission/halt_poll.rs`). `SCALE_ORDER=interleaved`
//! creates the pods with the namespaces taking turns instead of namespace by
//! namespace (`scale/order.rs`); `SCALE_PPROF=<dir>` saves the API server's
//! CPU profile of each chunk (`scale/pprof.rs`); `SCALE_SIZED=no-annotations`
//! has the `sm-size` way answer sm-injector's patch without its annotations
//! (`scale/sized.rs`).

#[path = "scale/cost.rs"]
mod cost;
#[path = "admission/halt_poll.rs"]
mod halt_poll;
#[path = "scale/mixed.rs"]
mod mixed;
#[path = "scale/order.rs"]
mod order;
#[path = "scale/own.rs"]
mod own;
#[path = "scale/paired.rs"]
mod paired;
#[path = "scale/pprof.rs"]
mod pprof;
// Only the review's envelope is used here.
#[allow(dead_code)]
#[path = "admission/reviews.rs"]
mod reviews;
#[path = "scale/sized.rs"]
mod sized;
#[path = "../tests/support/mod.rs"]
mod support;
#[path = "scale/ways.rs"]
mod ways;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use support::injector::metric_sum as metric;

const PER_NS: usize = 5;
const CLIENTS: usize = 16;
const INTERVAL: &str = "1m";
/// How long the API server's `LimitRanger` trusts its live list of a
/// namespace's LimitRanges (when its informer knows of none there): a pod
/// created after that waits on `LIST limitranges` (`liveTTL`, Kubernetes'
/// `plugin/pkg/admission/limitranger`).
const LIMIT_RANGER_LIVE_TTL: Duration = Duration::from_secs(30);

/// apiserver_request_total by (verb, resource) for the resources sm-injector
/// uses, and the LimitRanges the API server looks up as it admits a pod.
async fn api_requests(client: &kube::Client) -> BTreeMap<(String, String), f64> {
    let req = http::Request::get("/metrics").body(vec![]).unwrap();
    let text = client.request_text(req).await.unwrap();
    cost::samples(&text, "apiserver_request_total", &["verb", "resource"])
        .into_iter()
        .filter(|(k, _)| {
            ["pods", "secrets", "configmaps", "namespaces", "limitranges"].contains(&k[1].as_str())
        })
        .map(|(k, v)| ((k[0].clone(), k[1].clone()), v))
        .collect()
}

fn pod(i: usize, annotations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("p{i}"), "labels": {"app": "scale"}, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    }))
    .unwrap()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().filter(|a| !a.starts_with("--")).collect();
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "scale benchmark: run it with ./tests/scale [namespaces] [pods per namespace] [secrets]"
        );
        return;
    }
    let num = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (n_ns, per_ns, n_secrets) = (num(1, 100), num(2, 10), num(3, 50));
    // Set for the whole run, put back when main returns.
    let halt_poll = halt_poll::HaltPoll::from_env();
    println!("{}", halt_poll.describe());
    let bed = support::testbed();
    let client = bed.client().await;
    let sm = bed.aws().await;
    let run = std::process::id() % 10000;
    let secret = |i: usize| format!("scale{run}/s{i}");
    for i in 0..n_secrets {
        sm.create_secret()
            .name(secret(i))
            .secret_string(r#"{"pw":"v1"}"#)
            .send()
            .await
            .unwrap();
    }
    // The same namespaces and pods for each way (`scale/ways.rs`).
    let ns_of = |way: &str, i: usize| match way {
        "sm-injector" => format!("scale{run}-{i}"),
        w => format!("scale{run}-{w}-{i}"),
    };
    let every_ns: Vec<(&str, String)> = ways::WAYS
        .iter()
        .flat_map(|w| (0..n_ns).map(move |i| (*w, ns_of(w, i))))
        .collect();
    let ns_api = Api::<Namespace>::all(client.clone());
    let allowed = format!("scale{run}/*");
    futures::stream::iter(every_ns.iter())
        .for_each_concurrent(CLIENTS, |(way, ns)| {
            let ns_api = ns_api.clone();
            let allowed = allowed.clone();
            async move {
                let n: Namespace = serde_json::from_value(json!({"metadata": {"name": ns,
                    "labels": {"sm-injector.io/inject": "enabled", "scale-bench": run.to_string(), "scale-way": way},
                    "annotations": {"sm-injector.io/allowed-secrets": allowed}}}))
                .unwrap();
                ns_api.create(&PostParams::default(), &n).await.unwrap();
            }
        })
        .await;
    let sas = Api::<ServiceAccount>::all(client.clone());
    support::eventually(
        Duration::from_secs(300),
        "every default ServiceAccount",
        || async {
            let l = sas
                .list(&ListParams::default().fields("metadata.name=default"))
                .await
                .ok()?;
            let have = l
                .items
                .iter()
                .filter(|s| {
                    s.metadata
                        .namespace
                        .as_deref()
                        .is_some_and(|n| n.starts_with(&format!("scale{run}-")))
                })
                .count();
            (have >= every_ns.len()).then_some(())
        },
    )
    .await;

    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_sm-injector"));
    let lease_ns = support::namespace(&client, "scale-lease", &[]).await;
    let lease_arg = format!("--lease-namespace={lease_ns}");
    // SM_INJECTOR_SCALE_PRELOAD: a library preloaded into sm-injector only,
    // e.g. heaptrack's libheaptrack_preload.so (with DUMP_HEAPTRACK_OUTPUT).
    let preload = std::env::var("SM_INJECTOR_SCALE_PRELOAD").unwrap_or_default();
    let env: Vec<(&str, &str)> = if preload.is_empty() {
        vec![]
    } else {
        vec![("LD_PRELOAD", preload.as_str())]
    };
    let server = support::serve_process_env(
        bed,
        binary,
        "sm-injector-scale",
        &bed.kubeconfig,
        &[&lease_arg, "--refresh-tick=5s", "--gc-grace=1h"],
        &bed.moto,
        &env,
    )
    .await;
    // Each namespace's pods reference 5 of the secrets.
    let annotations_of = |i: usize| {
        let mut ann = serde_json::Map::new();
        for j in 0..PER_NS {
            ann.insert(
                format!("sm-injector.io/env.V{j}"),
                json!(format!("{}#pw", secret((i * PER_NS + j) % n_secrets))),
            );
        }
        ann.insert("sm-injector.io/refresh-interval".into(), json!(INTERVAL));
        serde_json::Value::Object(ann)
    };
    // The minimal no-op webhook, and the no-op answering sm-injector's patch
    // for a warm pod (`scale/sized.rs`), registered as sm-injector is.
    let certs = tempfile::tempdir().unwrap();
    let (noop_port, noop_pid) = support::start_noop_webhook(bed, certs.path());
    let dry_pod = pod(
        999_999,
        json!({"sm-injector.io/env.X": format!("{}#pw", secret(0))}),
    );
    ways::register(&client, bed, run, "sm-injector", server.port).await;
    let label = "sm-injector.io/injected";
    ways::take_effect(
        &client,
        "sm-injector",
        &ns_of("sm-injector", 0),
        label,
        &dry_pod,
    )
    .await;
    ways::register(&client, bed, run, "no-op", noop_port).await;
    ways::take_effect(&client, "no-op", &ns_of("no-op", 0), "noop", &dry_pod).await;
    // Asked of sm-injector for a pod of the sm-size way's first namespace
    // (opted in as the others), so that none of sm-injector's own is warmed.
    let patch = certs.path().join("sm-patch.b64");
    let ns = ns_of("sm-size", 0);
    let warm = sized::warm_patch(server.port, &ns, &pod(0, annotations_of(0)));
    std::fs::write(&patch, warm).unwrap();
    let sized_dir = tempfile::tempdir().unwrap();
    let (sized_port, sized_pid) =
        support::start_noop_webhook_answering(bed, sized_dir.path(), Some(&patch));
    tokio::time::sleep(Duration::from_millis(300)).await;
    ways::register(&client, bed, run, "sm-size", sized_port).await;
    ways::take_effect(&client, "sm-size", &ns, sized::LABEL, &dry_pod).await;

    // The same pods in every way, in the order SCALE_ORDER gives.
    let order = order::Order::from_env();
    let pods_of = |way: &str, wave: std::ops::Range<usize>| -> Vec<(String, Pod)> {
        let mut pods = vec![];
        for i in 0..n_ns {
            for p in wave.clone() {
                pods.push((ns_of(way, i), pod(p, annotations_of(i))));
            }
        }
        order.arrange(pods, wave.len())
    };
    let procs = cost::Processes {
        columns: vec![
            (
                "kube-apiserver",
                support::child_pid("kube-apiserver").unwrap(),
            ),
            ("etcd", support::child_pid("etcd").unwrap()),
            ("sm-injector", server.pid),
            ("no-op", noop_pid),
            ("sm-size", sized_pid),
        ],
        sm_probe: server.probe,
        etcd_port: bed.etcd_port,
        pprof: pprof::Pprof::from_env(),
    };
    // Each wave in CHUNKS chunks per way, the ways taking turns (order::turns).
    const CHUNKS: usize = 4;
    use ways::WAYS;
    let mut rows: Vec<cost::Row> = vec![];
    for (wave, range) in [("first of namespace", 0..1), ("the others", 1..per_ns)] {
        let mut by_way: Vec<Vec<(String, Pod)>> =
            WAYS.iter().map(|w| pods_of(w, range.clone())).collect();
        let chunk = by_way[0].len().div_ceil(CHUNKS).max(1);
        let mut wave_rows: Vec<Option<cost::Row>> = WAYS.iter().map(|_| None).collect();
        let mut round = 0;
        while by_way.iter().any(|p| !p.is_empty()) {
            for i in order::turns(round, WAYS.len()) {
                let take = chunk.min(by_way[i].len());
                let pods: Vec<(String, Pod)> = by_way[i].drain(..take).collect();
                if pods.is_empty() {
                    continue;
                }
                let r = cost::wave(&client, &procs, (WAYS[i], wave), pods, CLIENTS).await;
                match &mut wave_rows[i] {
                    Some(row) => row.absorb(r),
                    None => wave_rows[i] = Some(r),
                }
            }
            round += 1;
        }
        rows.extend(wave_rows.into_iter().flatten());
    }
    // Then half as many warm pods again, every way's in one stream, once the
    // API server's live lookup of every namespace's LimitRanges has lapsed
    // (its LimitRanger keeps one 30 s): the ways' last chunks ended 0-45 s
    // apart, so without the wait the first pods of some ways' namespaces
    // wait on a list that the others' skip.
    tokio::time::sleep(LIMIT_RANGER_LIVE_TTL + Duration::from_secs(2)).await;
    let more = per_ns..per_ns + per_ns.saturating_sub(1) / 2;
    let mixed = mixed::wave(
        &client,
        WAYS.iter().map(|w| pods_of(w, more.clone())).collect(),
        CLIENTS,
        (server.probe, server.pid),
    )
    .await;
    let aws_admission: f64 = rows
        .iter()
        .filter(|r| r.way == "sm-injector")
        .map(|r| r.aws_calls)
        .sum();
    let backing_total = n_ns * PER_NS.min(n_secrets);

    // Idle: nothing due for a minute after the leader's first checks.
    support::eventually(
        Duration::from_secs(120),
        "the refresher to see every backing Secret",
        || async {
            (metric(server.probe, "sm_injector_refresh_backing_secrets").await as usize
                >= backing_total)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(35)).await;
    let (rss_idle, _) = cost::rss_mib(server.pid);
    // Two refresh intervals with nothing rotating: the first holds this
    // leader's one check per backing Secret, the second is the steady state.
    let mut minutes = vec![];
    for _ in 0..2 {
        let before = api_requests(&client).await;
        let aws = metric(server.probe, "sm_injector_secretsmanager_calls_total").await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        let after = api_requests(&client).await;
        let calls = metric(server.probe, "sm_injector_secretsmanager_calls_total").await - aws;
        let delta: BTreeMap<(String, String), f64> = after
            .iter()
            .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, d)| *d > 0.0)
            .collect();
        minutes.push((calls, delta));
    }

    // Rotate every secret; time until every backing Secret holds the new version.
    let mut expected: HashMap<String, String> = HashMap::new();
    let t = Instant::now();
    for i in 0..n_secrets {
        let out = sm
            .put_secret_value()
            .secret_id(secret(i))
            .secret_string(r#"{"pw":"v2"}"#)
            .send()
            .await
            .unwrap();
        expected.insert(secret(i), out.version_id().unwrap().to_string());
    }
    let secrets = Api::<Secret>::all(client.clone());
    let rotated = support::eventually(
        Duration::from_secs(600),
        "the rotation everywhere",
        || async {
            let mut done = 0;
            let mut lp = ListParams::default()
                .labels("app.kubernetes.io/managed-by=sm-injector")
                .limit(500);
            loop {
                let l = secrets.list_metadata(&lp).await.ok()?;
                for s in &l.items {
                    let a = s.metadata.annotations.as_ref()?;
                    if a.get("sm-injector.io/source-name")
                        .and_then(|n| expected.get(n))
                        == a.get("sm-injector.io/version-id")
                    {
                        done += 1;
                    }
                }
                match l.metadata.continue_ {
                    Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
                    _ => break,
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            (done >= backing_total).then(|| t.elapsed().as_secs_f64())
        },
    )
    .await;
    let (rss_now, rss_peak) = cost::rss_mib(server.pid);

    println!(
        "sm-injector scale benchmark: {n_ns} namespaces x {per_ns} pods = {} pods, then {} more a namespace in one stream of every way's, {n_secrets} secrets, {PER_NS} per namespace = {backing_total} backing Secrets, refresh-interval {INTERVAL}",
        n_ns * per_ns,
        more.len()
    );
    println!("{}", order.describe());
    println!("{}", sized::describe());
    cost::print(&procs, &rows, CLIENTS);
    paired::print(&rows);
    mixed::print(&ways::WAYS, &mixed, "no-op", CLIENTS);
    println!("Secrets Manager calls during admission: {aws_admission}");
    println!(
        "rotation of all {n_secrets} secrets reached all {backing_total} backing Secrets in {rotated:.1} s (interval 60 s)"
    );
    for (i, (calls, delta)) in minutes.iter().enumerate() {
        let fmt: Vec<String> = delta
            .iter()
            .map(|((v, r), d)| format!("{v} {r}: {d}"))
            .collect();
        println!(
            "refresh interval {} with nothing rotating: {calls} Secrets Manager calls; API requests on pods/secrets/configmaps/namespaces/limitranges (all clients): {}",
            i + 1,
            if fmt.is_empty() {
                "none".into()
            } else {
                fmt.join(", ")
            }
        );
    }
    println!(
        "sm-injector RSS: idle {rss_idle:.1} MiB, after rotation {rss_now:.1} MiB, peak {rss_peak:.1} MiB"
    );
}
