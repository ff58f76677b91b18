//! sm-injector's promises checked where they end: in running containers.
//! The test bed's node (a kubelet, containerd and runc, `support::node`) runs
//! the pods the webhook mutated; each container reports what its own process
//! reads, as SHA-256 hashes, never values.

#[path = "../support/mod.rs"]
mod support;

mod rotation;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::node::{self, BUSYBOX};
use support::testbed;

const INJECT: (&str, &str) = ("sm-injector.io/inject", "enabled");

/// A container that prints `NAME=<sha256 of its value>` for each variable in
/// `names` (a name starting with `/` is a file: its content), then `---`,
/// every 2 seconds: what its own process reads, never a value.
fn report_script(names: &[&str]) -> String {
    format!(
        "while true; do for v in {}; do printf '%s=' \"$v\"; case \"$v\" in /*) cat \"$v\" 2>/dev/null;; *) eval \"printf %s \\\"\\${{$v}}\\\"\";; esac | sha256sum | cut -c1-64; done; echo ---; sleep 2; done",
        names.join(" ")
    )
}

fn reporter(name: &str, annotations: Value, names: &[&str]) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": BUSYBOX, "command": ["/bin/sh", "-c", report_script(names)]}]
        }
    }))
    .unwrap()
}

fn sha(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The last complete report of a pod's container: variable name to hash.
async fn report(
    client: &kube::Client,
    ns: &str,
    pod: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    let logs = Api::<Pod>::namespaced(client.clone(), ns)
        .logs(
            pod,
            &LogParams {
                tail_lines: Some(200),
                ..Default::default()
            },
        )
        .await
        .ok()?;
    let blocks: Vec<&str> = logs.split("---\n").collect();
    let last = blocks
        .iter()
        .rev()
        .find(|b| !b.trim().is_empty() && logs.contains(&format!("{b}---")))?;
    Some(
        last.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// sm-injector itself (the binary, webhook and refresher) for pods in `ns`,
/// with its Lease and inventory in `own` and these `flags`.
async fn serve(
    bed: &support::TestBed,
    client: &kube::Client,
    ns: &str,
    own: &str,
    flags: &[&str],
) -> support::ServeProcess {
    let lease = format!("--lease-namespace={own}");
    let mut args = vec![lease.as_str()];
    args.extend_from_slice(flags);
    let server = support::serve_process(
        bed,
        std::path::Path::new(env!("CARGO_BIN_EXE_sm-injector")),
        &format!("sm-injector-{ns}"),
        &args,
    )
    .await;
    support::start_url_webhook(bed, client, &format!("pods-{ns}"), server.port, &[ns]).await;
    server
}

#[tokio::test]
#[ignore = "needs the test bed and its node: run ./tests/run"]
async fn the_process_reads_every_variable_prefix_and_pinned_version() {
    let bed = testbed();
    bed.node();
    let client = bed.client().await;
    let ns = support::namespace(&client, "run", &[INJECT]).await;
    let secret = format!("{ns}/db");
    bed.put_secret(&secret, r#"{"user":"app","password":"s3cr3t"}"#)
        .await;
    let old = bed
        .aws()
        .await
        .describe_secret()
        .secret_id(&secret)
        .send()
        .await
        .unwrap();
    let v1 = old
        .version_ids_to_stages()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    bed.rotate(&secret, r#"{"user":"app","password":"n3w"}"#)
        .await;
    let redis = format!("{ns}/redis");
    bed.put_secret(&redis, r#"{"host":"cache","port":6379}"#)
        .await;
    let injector =
        support::injector::start(bed, &[&ns], support::injector::Options::default()).await;
    let p = reporter(
        "app",
        json!({"sm-injector.io/env.DB_USER": format!("{secret}#user"),
               "sm-injector.io/env.DB_PASSWORD": format!("{secret}#password"),
               "sm-injector.io/env.OLD_PASSWORD": format!("{secret}?versionId={v1}#password"),
               "sm-injector.io/env-from.REDIS": redis}),
        &[
            "DB_USER",
            "DB_PASSWORD",
            "OLD_PASSWORD",
            "REDIS_host",
            "REDIS_port",
        ],
    );
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
    node::running(&client, &ns, "app").await;
    let seen = support::eventually(
        Duration::from_secs(30),
        "the container's report",
        || async { report(&client, &ns, "app").await.filter(|r| r.len() == 5) },
    )
    .await;
    assert_eq!(seen["DB_USER"], sha("app"));
    assert_eq!(seen["DB_PASSWORD"], sha("n3w"), "AWSCURRENT");
    assert_eq!(seen["OLD_PASSWORD"], sha("s3cr3t"), "the pinned version");
    assert_eq!(seen["REDIS_host"], sha("cache"), "env-from with its prefix");
    assert_eq!(
        seen["REDIS_port"],
        sha("6379"),
        "a number as compact JSON text"
    );
    injector.stop(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed and its node: run ./tests/run"]
async fn a_namespace_made_again_within_the_cache_ttl_runs_its_pods() {
    let bed = testbed();
    bed.node();
    let client = bed.client().await;
    let own = support::namespace(&client, "again-own", &[]).await;
    let name = format!("again-{}", std::process::id());
    let make = || async {
        let n: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"sm-injector.io/inject": "enabled"}}
        }))
        .unwrap();
        support::eventually(Duration::from_secs(120), "the namespace made", || async {
            Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
                .create(&PostParams::default(), &n)
                .await
                .ok()
        })
        .await;
    };
    make().await;
    let secret = format!("{name}/db");
    bed.put_secret(&secret, r#"{"pw":"v1"}"#).await;
    // Values and what was written are remembered for 5 minutes, as shipped.
    let server = serve(bed, &client, &name, &own, &["--cache-ttl=5m"]).await;
    let p = reporter(
        "app",
        json!({"sm-injector.io/env.PW": format!("{secret}#pw")}),
        &["PW"],
    );
    let pods = Api::<Pod>::namespaced(client.clone(), &name);
    support::eventually(Duration::from_secs(30), "the pod admitted", || async {
        pods.create(&PostParams::default(), &p).await.ok()
    })
    .await;
    node::running(&client, &name, "app").await;
    // Deleted with its backing Secrets, made again at once, the same pod applied.
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .delete(&name, &Default::default())
        .await
        .unwrap();
    support::eventually(Duration::from_secs(120), "the namespace gone", || async {
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .get_opt(&name)
            .await
            .ok()
            .filter(Option::is_none)
    })
    .await;
    make().await;
    support::eventually(
        Duration::from_secs(30),
        "the pod admitted again",
        || async { pods.create(&PostParams::default(), &p).await.ok() },
    )
    .await;
    node::running(&client, &name, "app").await;
    let seen = support::eventually(Duration::from_secs(30), "its report", || async {
        report(&client, &name, "app")
            .await
            .filter(|r| r.contains_key("PW"))
    })
    .await;
    assert_eq!(seen["PW"], sha("v1"));
    support::signal(server.pid as i32, libc::SIGTERM);
}

#[tokio::test]
#[ignore = "needs the test bed and its node: run ./tests/run"]
async fn the_collector_keeps_what_pending_and_running_pods_use_and_then_deletes_it() {
    let bed = testbed();
    bed.node();
    let client = bed.client().await;
    let ns = support::namespace(&client, "gc", &[INJECT]).await;
    let own = support::namespace(&client, "gc-own", &[]).await;
    let (run, wait) = (format!("{ns}/run"), format!("{ns}/wait"));
    bed.put_secret(&run, r#"{"pw":"r"}"#).await;
    bed.put_secret(&wait, r#"{"pw":"w"}"#).await;
    let flags = [
        "--gc-grace=3s",
        "--refresh-tick=1s",
        "--min-refresh-interval=1s",
    ];
    let server = serve(bed, &client, &ns, &own, &flags).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let running = reporter(
        "running",
        json!({"sm-injector.io/env.PW": format!("{run}#pw"), "sm-injector.io/refresh-interval": "1s"}),
        &["PW"],
    );
    pods.create(&PostParams::default(), &running).await.unwrap();
    // A pod that no node can take: Pending for good.
    let mut pending = reporter(
        "pending",
        json!({"sm-injector.io/env.PW": format!("{wait}#pw"), "sm-injector.io/refresh-interval": "1s"}),
        &["PW"],
    );
    pending.spec.as_mut().unwrap().node_selector =
        Some([("sm-injector.test/none".to_string(), "x".to_string())].into());
    pods.create(&PostParams::default(), &pending).await.unwrap();
    node::running(&client, &ns, "running").await;
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns);
    let backing = |secret: &str| {
        sm_injector::backing::name(
            secret,
            &sm_injector::reference::Version::current(),
            sm_injector::backing::Form::Keys,
        )
    };
    // Many times the grace, with a check every second: both stay.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for s in [&run, &wait] {
            assert!(
                secrets.get_opt(&backing(s)).await.unwrap().is_some(),
                "{s}'s backing Secret kept"
            );
        }
    }
    let p = pods.get("pending").await.unwrap();
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Pending"));
    assert_eq!(
        report(&client, &ns, "running").await.unwrap()["PW"],
        sha("r"),
        "the running pod still reads its value"
    );
    // Once no pod uses them, they go after the grace.
    pods.delete("running", &Default::default()).await.unwrap();
    pods.delete("pending", &Default::default()).await.unwrap();
    support::eventually(Duration::from_secs(60), "both deleted", || async {
        let mut gone = 0;
        for s in [&run, &wait] {
            gone += usize::from(secrets.get_opt(&backing(s)).await.ok()?.is_none());
        }
        (gone == 2).then_some(())
    })
    .await;
    support::signal(server.pid as i32, libc::SIGTERM);
}

#[tokio::test]
#[ignore = "needs the test bed and its node: run ./tests/run"]
async fn in_an_outage_a_pod_starts_from_the_last_known_good_secret_with_a_warning() {
    let bed = testbed();
    bed.node();
    let client = bed.client().await;
    let ns = support::namespace(&client, "outage", &[INJECT]).await;
    let secret = format!("{ns}/db");
    bed.put_secret(&secret, r#"{"pw":"good"}"#).await;
    let annotations = json!({"sm-injector.io/env.PW": format!("{secret}#pw")});
    // While Secrets Manager answers: the backing Secret is written.
    let up = support::injector::start(bed, &[&ns], support::injector::Options::default()).await;
    let first = reporter("first", annotations.clone(), &["PW"]);
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &first)
        .await
        .unwrap();
    up.stop(&client).await;
    // Secrets Manager unreachable: a port where nothing listens.
    let down = support::injector::start(
        bed,
        &[&ns],
        support::injector::Options {
            aws_endpoint: Some(format!("http://127.0.0.1:{}", support::free_port())),
            aws_deadline: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .await;
    let second = reporter("second", annotations, &["PW"]);
    let (ok, _, stderr) = support::kubectl_create(bed, &ns, &second, &[]).await;
    assert!(ok, "admitted: {stderr}");
    assert!(
        stderr.contains("Warning:") && stderr.contains("could not be refreshed")
            || stderr.contains("Warning:"),
        "{stderr}"
    );
    node::running(&client, &ns, "second").await;
    let seen = support::eventually(Duration::from_secs(30), "its report", || async {
        report(&client, &ns, "second")
            .await
            .filter(|r| r.contains_key("PW"))
    })
    .await;
    assert_eq!(seen["PW"], sha("good"));
    down.stop(&client).await;
}
