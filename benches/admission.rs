//! The warm admission path against its floor, and pod creation end to end.
//!
//! `./tests/bench` starts the test bed and the servers below, each pinned to CPU 0:
//! the release `sm-injector serve` (as in a cluster: KUBECONFIG,
//! AWS_ENDPOINT_URL_SECRETS_MANAGER to moto) and `examples/noop_webhook.rs`,
//! the minimal floor: the same stack, finding only the request's uid
//! (borrowed from the body) and answering a fixed one-operation patch; for
//! each pod shape, that floor again answering sm-injector's own patch for the
//! pod (`floor sm-size`: the answer's size without the review's work). `wrk`
//! (Debian's), pinned to CPU 1, posts
//! AdmissionReviews over TLS with HTTP/1.1 keep-alive (what kube-apiserver
//! speaks to webhooks) for 3 s (3 runs each, the servers alternating) at 1
//! and 8 connections, flat out, and at 8
//! connections paced (4 ms between an answer and the next request, the same
//! rate for both servers: flat out, a server that answers more slowly also
//! pays for waking the idle load generator on each answer, since loopback
//! TCP delivers in the sender's context). For each server and
//! pod shape it prints admissions/s, CPU time per admission (the server's
//! utime+stime from /proc/<pid>/stat over the run, divided by the admissions),
//! latency percentiles, denials and errors (counted from the answers), and
//! RSS; then the ratio of sm-injector's CPU per admission to each floor's.
//! Last, pod creation through the real API server, sequentially and from 16
//! clients, with sm-injector registered and with the no-op webhook registered.
//! The header names how long the machine's idle vCPUs poll before they halt
//! (`admission/halt_poll.rs`), which moves the rows of an idle server.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "admission/load.rs"]
mod load;

#[path = "admission/reviews.rs"]
mod reviews;

#[path = "admission/halt_poll.rs"]
mod halt_poll;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use load::*;
use reviews::review;
use serde_json::json;
use support::injector::metric_sum as metric;

const SECONDS: u32 = 3;
/// Each row is run this many times, the two servers alternating, and the
/// median reported: the machine is shared, and a single run of a row can
/// land on a noisy moment for one server and not the other.
const REPS: usize = 3;
/// The pause of a paced connection between an answer and its next request.
const PACE_MS: u32 = 4;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("admission benchmark: run it with ./tests/bench");
        return;
    }
    let bed = support::testbed();
    let client = bed.client().await;
    let ns = support::namespace(&client, "bench", &[("sm-injector.io/inject", "enabled")]).await;
    let sm = bed.aws().await;
    let mut secrets = vec![
        (
            "discord".to_string(),
            r#"{"bot_token":"tok","application_id":123}"#.to_string(),
        ),
        (
            "postgres".into(),
            r#"{"url":"postgres://app:pw@db:5432/app"}"#.into(),
        ),
        ("redis".into(), r#"{"HOST":"redis","PORT":6379}"#.into()),
    ];
    for w in 0..5 {
        let keys: serde_json::Map<String, serde_json::Value> = (0..20)
            .filter(|i| i % 5 == w)
            .map(|i| (format!("k{i}"), json!(format!("v{i}"))))
            .collect();
        secrets.push((
            format!("wide{w}"),
            serde_json::Value::Object(keys).to_string(),
        ));
    }
    for (name, value) in &secrets {
        sm.create_secret()
            .name(format!("{ns}/{name}"))
            .secret_string(value)
            .send()
            .await
            .unwrap();
    }
    // The same secrets in a namespace read with the workload's own AWS
    // identity (SPEC section 4): its pods' ServiceAccount `bot` names a role,
    // and sm-injector's own user has no Secrets Manager permission.
    let wl_ns = support::namespace_with(
        &client,
        "bench-wl",
        &[("sm-injector.io/inject", "enabled")],
        &[("sm-injector.io/aws-identity", "serviceaccount")],
    )
    .await;
    let wl_secrets: Vec<(String, &str)> = secrets
        .iter()
        .map(|(n, v)| (format!("{wl_ns}/{n}"), v.as_str()))
        .collect();
    let wl_secrets: Vec<(&str, &str)> = wl_secrets.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let iam = support::iam::IamAws::start(bed, &wl_secrets).await;
    let bot: k8s_openapi::api::core::v1::ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": "bot", "annotations": {"eks.amazonaws.com/role-arn": iam.role_arn("secret-reader")}}
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &wl_ns)
        .create(&PostParams::default(), &bot)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("post.lua");
    std::fs::write(&script, WRK_SCRIPT).unwrap();
    // The same load at a fixed pace: each connection waits PACE_MS between
    // an answer and its next request, so both servers get about the same
    // rate, well below either's capacity.
    let paced = dir.path().join("paced.lua");
    std::fs::write(
        &paced,
        format!("{WRK_SCRIPT}\nfunction delay() return {PACE_MS} end\n"),
    )
    .unwrap();

    // sm-injector's own namespace, which it never injects into.
    let own = support::namespace(&client, "bench-own", &[]).await;
    let lease = format!("--lease-namespace={own}");
    let server = support::serve_process(
        bed,
        Path::new(env!("CARGO_BIN_EXE_sm-injector")),
        "sm-injector",
        &[&lease],
    )
    .await;
    // The same binary, deciding every admission afresh: the figures for pods
    // that do not share a decision (src/decisions.rs).
    let afresh = support::serve_process(
        bed,
        Path::new(env!("CARGO_BIN_EXE_sm-injector")),
        "sm-injector-afresh",
        &[&lease, "--decision-cache-bytes=0"],
    )
    .await;
    // The same binary, reading the workload namespace's secrets with the
    // pods' own role.
    let workload = support::serve_process_env(
        bed,
        Path::new(env!("CARGO_BIN_EXE_sm-injector")),
        "sm-injector-workload",
        &bed.kubeconfig,
        &[&lease],
        &iam.url,
        &[
            ("AWS_ENDPOINT_URL_STS", &iam.url),
            ("AWS_ACCESS_KEY_ID", &iam.own.0),
            ("AWS_SECRET_ACCESS_KEY", &iam.own.1),
        ],
    )
    .await;
    let (noop_port, noop_pid) = support::start_noop_webhook(bed, dir.path());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_mib(server.pid);
    // Of it, what the process itself holds, and the binary's and libraries'
    // pages mapped from the page cache (shared, and dropped under pressure).
    let idle_anon = proc_field(server.pid, "status", "RssAnon:") as f64 / 1024.0;
    let idle_file = proc_field(server.pid, "status", "RssFile:") as f64 / 1024.0;
    pin(server.pid, 0);
    pin(afresh.pid, 0);
    pin(workload.pid, 0);
    pin(noop_pid, 0);

    // Set before the rows, put back when main returns (the pod creation
    // after them runs under it too).
    let halt_poll = halt_poll::HaltPoll::from_env();
    println!("{}", halt_poll.describe());
    println!(
        "warm admissions over TLS, HTTP/1.1 keep-alive; each server pinned to CPU 0, wrk (1 thread) to CPU 1; each row the median of {REPS} runs of {SECONDS} s, the servers alternating; paced: each connection waits {PACE_MS} ms between an answer and its next request; sm-inj afresh: sm-injector with --decision-cache-bytes=0, every admission decided afresh (pods that share no decision); sm-inj SA role: sm-injector reading with the pod's ServiceAccount's role (aws-identity: serviceaccount, IAM enforced), the same pod in a namespace of that mode; floor sm-size: the minimal floor answering sm-injector's own patch for the pod (what the answer's size costs, whoever answers it)"
    );
    println!(
        "{:<14} {:<9} {:>9} {:>12} {:>10} {:>8} {:>8} {:>7} {:>7} {:>8}",
        "server",
        "pod",
        "conns",
        "admissions/s",
        "CPU us/adm",
        "p50 us",
        "p99 us",
        "denied",
        "errors",
        "RSS MiB"
    );
    let mut ratios = vec![];
    let mut sized_ratios = vec![];
    for (shape, refs) in [("seed", 0usize), ("20 refs", 20)] {
        let body = dir.path().join(format!("review-{refs}.json"));
        std::fs::write(&body, review(&ns, refs)).unwrap();
        let wl_body = dir.path().join(format!("review-wl-{refs}.json"));
        std::fs::write(&wl_body, review(&wl_ns, refs)).unwrap();
        // Warm the sm-injectors: the first admission fetches and writes (and
        // in the workload's mode, requests a token and exchanges it).
        let mut before = vec![];
        for (sm, body) in [(&server, &body), (&afresh, &body), (&workload, &wl_body)] {
            let warm = wrk(sm.port, sm.pid, body, &script, 1, "warm-up");
            assert_eq!(warm.denied + warm.errors, 0, "warm-up denied or failed");
            before.push((
                metric(sm.probe, "sm_injector_secretsmanager_calls_total").await,
                metric(sm.probe, "sm_injector_backing_secret_writes_total").await,
            ));
        }
        // The minimal floor again, answering sm-injector's own patch for
        // this pod: what the answer's size costs, whoever answers it.
        let (sm_answer, sm_patch) = answer(server.port, &body);
        let (floor_answer, floor_patch) = answer(noop_port, &body);
        let patch_file = dir.path().join(format!("patch-{refs}.b64"));
        std::fs::write(&patch_file, &sm_patch).unwrap();
        let (sized_port, sized_pid) =
            support::start_noop_webhook_answering(bed, dir.path(), Some(&patch_file));
        tokio::time::sleep(Duration::from_millis(300)).await;
        pin(sized_pid, 0);
        let (sized_answer, sized_patch) = answer(sized_port, &body);
        assert_eq!(
            sized_patch, sm_patch,
            "the sized floor answers sm-injector's patch"
        );
        let audited = |a: support::iam::Audit| (a.exchanges.len(), a.reads.len());
        let audit_before = audited(iam.audit());
        for (load, conns, script) in [
            ("1", 1usize, &script),
            ("8", 8, &script),
            ("8 paced", 8, &paced),
        ] {
            let servers = [
                ("no-op floor", noop_port, noop_pid, &body),
                ("floor sm-size", sized_port, sized_pid, &body),
                ("sm-injector", server.port, server.pid, &body),
                ("sm-inj afresh", afresh.port, afresh.pid, &body),
                ("sm-inj SA role", workload.port, workload.pid, &wl_body),
            ];
            let mut runs: [Vec<Run>; 5] = Default::default();
            for _ in 0..REPS {
                for (i, (_, port, pid, body)) in servers.iter().enumerate() {
                    let row = format!("{shape}-{load}");
                    runs[i].push(wrk(*port, *pid, body, script, conns, &row));
                }
            }
            // Each run's ratio is taken against the floor's run next to it.
            let ratio = |i: usize, floor: usize| {
                let mut r: Vec<f64> = (0..REPS)
                    .map(|r| runs[i][r].cpu_us / runs[floor][r].cpu_us)
                    .collect();
                r.sort_by(f64::total_cmp);
                [r[REPS / 2], r[0], r[REPS - 1]]
            };
            let (kept, fresh, role) = (ratio(2, 0), ratio(3, 0), ratio(4, 0));
            let (kept_sized, fresh_sized) = (ratio(2, 1), ratio(3, 1));
            for (i, (name, ..)) in servers.iter().enumerate() {
                let runs = &mut runs[i];
                runs.sort_by(|a, b| a.cpu_us.total_cmp(&b.cpu_us));
                let r = &runs[REPS / 2];
                // Denials and errors of every run count.
                let denied: u64 = runs.iter().map(|r| r.denied).sum();
                let errors: u64 = runs.iter().map(|r| r.errors).sum();
                println!(
                    "{:<14} {:<9} {:>9} {:>12.0} {:>10.1} {:>8.0} {:>8.0} {:>7} {:>7} {:>8.1}",
                    name, shape, load, r.rate, r.cpu_us, r.p50_us, r.p99_us, denied, errors, r.rss
                );
            }
            ratios.push(format!(
                "{shape}, {load} conns: {:.2}x ({:.2}-{:.2}), afresh {:.2}x ({:.2}-{:.2}), SA role {:.2}x ({:.2}-{:.2})",
                kept[0], kept[1], kept[2], fresh[0], fresh[1], fresh[2], role[0], role[1], role[2]
            ));
            sized_ratios.push(format!(
                "{shape}, {load} conns: {:.2}x ({:.2}-{:.2}), afresh {:.2}x ({:.2}-{:.2})",
                kept_sized[0],
                kept_sized[1],
                kept_sized[2],
                fresh_sized[0],
                fresh_sized[1],
                fresh_sized[2]
            ));
        }
        let mut aws = 0.0;
        let mut writes = 0.0;
        for (sm, (a, w)) in [&server, &afresh, &workload].into_iter().zip(before) {
            aws += metric(sm.probe, "sm_injector_secretsmanager_calls_total").await - a;
            writes += metric(sm.probe, "sm_injector_backing_secret_writes_total").await - w;
        }
        let audit = audited(iam.audit());
        println!(
            "  ({shape}: Secrets Manager calls during the load: {aws}, backing Secret writes: {writes}, all three sm-injectors; in the SA role's mode, STS exchanges during the load: {}, Secrets Manager calls signed with the role: {}; the answer: {sm_answer} bytes with a {}-byte base64 patch, the floor's {floor_answer} with {}, the sm-size floor's {sized_answer} with {})",
            audit.0 - audit_before.0,
            audit.1 - audit_before.1,
            sm_patch.len(),
            floor_patch.len(),
            sized_patch.len(),
        );
    }
    println!(
        "sm-injector CPU per admission / floor's (median of the runs' ratios, and their range): {}",
        ratios.join("; ")
    );
    println!(
        "sm-injector CPU per admission / the sm-size floor's (the same minimal work answering sm-injector's patch): {}",
        sized_ratios.join("; ")
    );
    println!(
        "sm-injector RSS: {idle_rss:.1} MiB idle (after start: {idle_anon:.1} anonymous, {idle_file:.1} file pages), {:.1} MiB peak",
        proc_field(server.pid, "status", "VmHWM:") as f64 / 1024.0
    );

    // End to end: pod creation through the API server, the webhook
    // registered by a non-loopback URL so that the API server speaks
    // HTTP/1.1, as to a Service.
    let seed_refs = json!({
        "sm-injector.io/env.DISCORD_BOT_TOKEN": format!("{ns}/discord#bot_token"),
        "sm-injector.io/env.DATABASE_URL": format!("{ns}/postgres#url"),
        "sm-injector.io/env-from.REDIS": format!("{ns}/redis")
    });
    println!("\npod creation through the API server (seed references), p50 / p99 ms");
    println!(
        "{:<22} {:>22} {:>22}",
        "webhook", "sequential (100)", "16 clients (320)"
    );
    let counts = async || {
        let m = async |name: &str| metric(server.probe, name).await;
        [
            m("sm_injector_admissions_total").await,
            m("sm_injector_decisions_reused_total").await,
            m("sm_injector_reviews_recalled_total").await,
        ]
    };
    let mut counted = None;
    for (name, port) in [("no-op webhook", noop_port), ("sm-injector", server.port)] {
        let config = format!("bench-{name}").replace(' ', "-");
        support::register_webhook(bed, &client, &config, &format!("0.0.0.0:{port}"), &[&ns]).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        create_pods(&client, &ns, seed_refs.clone(), 20, 4).await; // warm
        let before = counts().await;
        let (s50, s99, sf) = create_pods(&client, &ns, seed_refs.clone(), 100, 1).await;
        let (c50, c99, cf) = create_pods(&client, &ns, seed_refs.clone(), 320, 16).await;
        if port == server.port {
            let after = counts().await;
            counted = Some([0, 1, 2].map(|i| after[i] - before[i]));
        }
        println!(
            "{:<22} {:>14.1} / {:>5.1} {:>14.1} / {:>5.1}{}",
            name,
            s50,
            s99,
            c50,
            c99,
            if sf + cf > 0 {
                format!("  ({} failed)", sf + cf)
            } else {
                String::new()
            }
        );
        use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .delete(&config, &Default::default())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if let Some([admissions, kept, recalled]) = counted {
        println!(
            "  (sm-injector's admissions of those pods: {admissions}, answered from a kept decision: {kept}, of them recalled by their bytes: {recalled}; the pods are created with generateName, as a ReplicaSet's are)"
        );
    }
}
