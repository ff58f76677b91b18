//! The demo (`./examples/demo.sh`, also run by `./tests/run`): sm-injector doing its
//! main job end to end on a local control plane, with moto as Secrets Manager.
//!
//! It creates the seed's secrets, installs sm-injector from `manifests/` with
//! kubectl and runs the binary on this host as its ServiceAccount (configured as
//! in a cluster: a kubeconfig, and the AWS chain with
//! AWS_ENDPOINT_URL_SECRETS_MANAGER), reached by URL; applies
//! `examples/deployment.yaml` with kubectl (its images swapped for the local
//! busybox, since no registry is reachable), waits for its pods to run on the
//! test bed's node, and prints the environment each container's own process
//! reads, as SHA-256 hashes its process logs, never a value. It fails if a
//! value differs from what Secrets Manager holds or appears in a pod spec.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams};
use sha2::{Digest, Sha256};

fn sha(v: &[u8]) -> String {
    Sha256::digest(v)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Logs `NAME <sha256 of its value>` for every variable of its own process.
const PRINT_ENV: &str = "env | sort | while IFS= read -r line; do printf '%s %s\\n' \"${line%%=*}\" \"$(printf %s \"${line#*=}\" | sha256sum | cut -c1-64)\"; done; echo ---";

/// The seed's Deployment as a user applies it, with each image replaced by the
/// test node's busybox, whose shell logs what its process reads.
fn runnable(yaml: &str) -> String {
    let mut d: serde_json::Value = serde_yaml_ng::from_str(yaml).unwrap();
    let spec = &mut d["spec"]["template"]["spec"];
    for (list, command) in [
        ("initContainers", PRINT_ENV.to_string()),
        (
            "containers",
            format!("while true; do {PRINT_ENV}; sleep 5; done"),
        ),
    ] {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            c["image"] = support::node::BUSYBOX.into();
            c["command"] = serde_json::json!(["/bin/sh", "-c", command]);
        }
    }
    spec["terminationGracePeriodSeconds"] = 1.into();
    serde_json::to_string(&d).unwrap()
}

/// What a container's process logged: variable to hash.
async fn process_env(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
) -> Option<BTreeMap<String, String>> {
    let logs = pods
        .logs(
            pod,
            &kube::api::LogParams {
                container: Some(container.into()),
                ..Default::default()
            },
        )
        .await
        .ok()?;
    let block = logs
        .split("---\n")
        .next()
        .filter(|_| logs.contains("---\n"))?;
    Some(
        block
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

#[tokio::main]
async fn main() {
    // Like the #[ignore]d tests under a plain `cargo test`; tests/run and
    // examples/demo.sh prepare the test bed, and under CI=true a missing
    // component is a failure.
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if std::env::var_os("SM_INJECTOR_CLUSTER_BIN").is_none() && !ci {
        println!("demo: ignored, needs the test bed: run ./examples/demo.sh or ./tests/run");
        return;
    }
    let bed = support::testbed();
    bed.node();
    println!(
        "1. control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler), a node \
         (kubelet, containerd, runc) and moto are up in {}",
        bed.dir.display()
    );

    let secrets = [
        (
            "arrakis/discord",
            r#"{"bot_token":"MTIzNDU2Nzg5.demo-bot-token","application_id":"112233445566778899"}"#,
        ),
        (
            "arrakis/postgres",
            r#"{"url":"postgres://arrakis:s3cr3t@postgres.arrakis:5432/arrakis","username":"arrakis","password":"s3cr3t"}"#,
        ),
        (
            "arrakis/redis",
            r#"{"HOST":"redis.arrakis","PORT":6379,"PASSWORD":"r3d1s"}"#,
        ),
    ];
    let sm = bed.aws().await;
    for (name, value) in secrets {
        sm.create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await
            .unwrap();
    }
    println!(
        "2. created in Secrets Manager: {}",
        secrets.map(|s| s.0).join(", ")
    );

    let installed = support::install::from_manifests(bed).await;
    println!(
        "3. kubectl apply -k manifests/; sm-injector runs on this host as system:serviceaccount:sm-injector:sm-injector \
         (a TokenRequest token, so with only its ClusterRole's rights), and the webhook's clientConfig points at https://127.0.0.1:{}/mutate",
        installed.port
    );
    bed.kubectl_run(&["create", "namespace", "arrakis"], None)
        .unwrap();
    bed.kubectl_run(
        &[
            "label",
            "namespace",
            "arrakis",
            "sm-injector.io/inject=enabled",
        ],
        None,
    )
    .unwrap();

    // The API server picks the configuration up through an informer.
    let client = bed.client().await;
    let pods = Api::<Pod>::namespaced(client.clone(), "arrakis");
    let deployment = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/deployment.yaml"
    ))
    .unwrap();
    support::eventually(Duration::from_secs(30), "the webhook to take effect", || async {
        let out = bed
            .kubectl()
            .args(["create", "--dry-run=server", "-o", "json", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        let mut out = out;
        {
            use std::io::Write;
            let mut stdin = out.stdin.take()?;
            let canary = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"canary","namespace":"arrakis","annotations":{"sm-injector.io/env.X":"arrakis/redis#HOST"}},"spec":{"containers":[{"name":"c","image":"x"}]}}"#;
            stdin.write_all(canary.as_bytes()).ok()?;
        }
        let out = out.wait_with_output().ok()?;
        String::from_utf8_lossy(&out.stdout).contains("secretKeyRef").then_some(())
    })
    .await;
    print!(
        "4. kubectl apply -f examples/deployment.yaml (images: {}): {}",
        support::node::BUSYBOX,
        bed.kubectl_run(&["apply", "-f", "-"], Some(&runnable(&deployment)))
            .unwrap()
    );

    let names = support::eventually(Duration::from_secs(60), "two pods", || async {
        let l = pods
            .list(&ListParams::default().labels("app=arrakis-bot"))
            .await
            .ok()?;
        (l.items.len() == 2).then(|| {
            l.items
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect::<Vec<_>>()
        })
    })
    .await;
    let mut list = vec![];
    for name in &names {
        list.push(support::node::running(&client, "arrakis", name).await);
    }
    let expected: BTreeMap<&str, Vec<u8>> = BTreeMap::from([
        ("DISCORD_BOT_TOKEN", b"MTIzNDU2Nzg5.demo-bot-token".to_vec()),
        ("DISCORD_APPLICATION_ID", b"112233445566778899".to_vec()),
        (
            "DATABASE_URL",
            b"postgres://arrakis:s3cr3t@postgres.arrakis:5432/arrakis".to_vec(),
        ),
        ("REDIS_HOST", b"redis.arrakis".to_vec()),
        ("REDIS_PORT", b"6379".to_vec()),
        ("REDIS_PASSWORD", b"r3d1s".to_vec()),
    ]);
    let secrets_api = Api::<Secret>::namespaced(client.clone(), "arrakis");
    println!(
        "5. the pods run; the environment each container's own process reads (its log, hashed):"
    );
    for p in &list {
        let json = serde_json::to_string(p).unwrap();
        for v in expected.values() {
            assert!(
                !json.contains(&*String::from_utf8_lossy(v)),
                "a secret value is in the pod spec"
            );
        }
        let pod = p.metadata.name.as_deref().unwrap_or("?");
        let phase = p
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        let spec = p.spec.clone().unwrap();
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
        {
            let seen = support::eventually(Duration::from_secs(30), "the container's log", || {
                process_env(&pods, pod, &c.name)
            })
            .await;
            println!("   pod {pod} ({phase}) container {}:", c.name);
            for (k, v) in &expected {
                let got = seen.get(*k).map(String::as_str).unwrap_or("(absent)");
                assert_eq!(
                    got,
                    sha(v),
                    "{k} as container {} of pod {pod} reads it differs from Secrets Manager",
                    c.name
                );
                println!(
                    "     {k:<24} = <masked: sha256 {}>   matches Secrets Manager",
                    &got[..12]
                );
            }
            if let Some(v) = seen.get("LOG_LEVEL") {
                assert_eq!(v, &sha(b"info"));
                println!(
                    "     {:<24} = info   (the container's own value)",
                    "LOG_LEVEL"
                );
            }
        }
    }
    let backing = secrets_api
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=sm-injector"))
        .await
        .unwrap();
    println!("6. backing Secrets in namespace arrakis (shared by both pods):");
    for s in backing.items {
        let a = s.metadata.annotations.unwrap_or_default();
        println!(
            "     {:<36} from {}  version {}",
            s.metadata.name.unwrap_or_default(),
            a.get("sm-injector.io/source-arn")
                .cloned()
                .unwrap_or_default(),
            a.get("sm-injector.io/version-id")
                .cloned()
                .unwrap_or_default()
        );
    }
    // What an admin asks: which workloads use which secret, at which version.
    let status = |format: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sm-injector"))
            .args(["status", "--namespace", "arrakis", "-o", format])
            .env("KUBECONFIG", &bed.kubeconfig)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let rows: Vec<serde_json::Value> = serde_json::from_str(&status("json")).unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    for r in &rows {
        assert_eq!(r["pods"].as_array().unwrap().len(), 2, "{r}");
        assert_eq!(
            r["workloads"],
            serde_json::json!(["Deployment/arrakis-bot"]),
            "{r}"
        );
        assert!(
            r["versionId"].as_str().is_some_and(|v| !v.is_empty()),
            "{r}"
        );
    }
    println!("7. sm-injector status --namespace arrakis (metadata only, never Secret data):");
    for line in status("table").lines() {
        println!("     {line}");
    }
    println!(
        "every value each process reads matches Secrets Manager; no value is in any pod spec or log. Cleaning up."
    );
}
