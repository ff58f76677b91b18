//! sm-injector's promises checked where they end: in running containers.
//! The test bed's node (a kubelet, containerd and runc, `support::node`) runs
//! the pods the webhook mutated; each container reports what its own process
//! reads, as SHA-256 hashes, never values.

#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams, PostParams};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::node::{self, BUSYBOX};
use support::testbed;

const INJECT: (&str, &str) = ("sm-injector.io/inject", "enabled");

/// A container that prints `NAME=<sha256 of its value>` for each variable in
/// `names`, then `files:` and the same for each file, every `every` seconds.
fn reporter(name: &str, annotations: Value, names: &[&str]) -> Pod {
    let script = format!(
        "while true; do for v in {}; do printf '%s=' \"$v\"; eval \"printf %s \\\"\\${{$v}}\\\"\" | sha256sum | cut -c1-64; done; echo ---; sleep 2; done",
        names.join(" ")
    );
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": BUSYBOX, "command": ["/bin/sh", "-c", script]}]
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

#[tokio::test]
#[ignore = "needs the test bed and its node: run ./tests/run"]
async fn the_process_reads_every_injected_variable() {
    let bed = testbed();
    bed.node();
    let client = bed.client().await;
    let ns = support::namespace(&client, "run", &[INJECT]).await;
    let secret = format!("{ns}/db");
    bed.put_secret(&secret, r#"{"user":"app","password":"s3cr3t"}"#)
        .await;
    let injector =
        support::injector::start(bed, &[&ns], support::injector::Options::default()).await;
    let p = reporter(
        "app",
        json!({"sm-injector.io/env.DB_USER": format!("{secret}#user"),
               "sm-injector.io/env.DB_PASSWORD": format!("{secret}#password")}),
        &["DB_USER", "DB_PASSWORD"],
    );
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
    node::running(&client, &ns, "app").await;
    let seen = support::eventually(
        Duration::from_secs(30),
        "the container's report",
        || async { report(&client, &ns, "app").await.filter(|r| r.len() == 2) },
    )
    .await;
    assert_eq!(seen["DB_USER"], sha("app"));
    assert_eq!(seen["DB_PASSWORD"], sha("s3cr3t"));
    injector.stop(&client).await;
}
