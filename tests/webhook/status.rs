//! `sm-injector status` as kubectl users expect it, against the real API
//! server: the context's namespace by default, `-A`, `--kubeconfig`,
//! `--context`, `--no-headers`, `-o wide`; sm-injector's Warnings selected by
//! the API server and shown on the backing Secret they name; a user who may
//! not list Events told so, with a non-zero exit.

use super::*;
use k8s_openapi::api::core::v1::{Event, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};

/// `sm-injector status` with `args`: (exit success, stdout, stderr).
fn status(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sm-injector"))
        .arg("status")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// The test bed's kubeconfig with a second context, `tenant`, whose
/// namespace is `ns`; its current context stays the admin's.
fn with_tenant_context(bed: &TestBed, ns: &str) -> std::path::PathBuf {
    let mut kc: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&bed.kubeconfig).unwrap()).unwrap();
    let current = kc["current-context"].as_str().unwrap().to_string();
    let mut tenant = kc["contexts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == current.as_str())
        .unwrap()
        .clone();
    tenant["name"] = json!("tenant");
    tenant["context"]["namespace"] = json!(ns);
    kc["contexts"].as_array_mut().unwrap().push(tenant);
    let path = bed.dir.join(format!("{ns}-contexts.kubeconfig"));
    std::fs::write(&path, serde_yaml_ng::to_string(&kc).unwrap()).unwrap();
    path
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn status_reads_like_kubectl_and_says_what_it_may_not_see() {
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "status", &[INJECT]).await;
    let other = namespace(&client, "status-other", &[INJECT]).await;
    for n in [&ns, &other] {
        bed.put_secret(&format!("{n}/db"), r#"{"url":"u","user":"a"}"#)
            .await;
        bed.put_secret(&format!("{n}/api"), r#"{"token":"t"}"#)
            .await;
    }
    let inj = injector::start(bed, &[&ns, &other], Options::default()).await;
    for n in [&ns, &other] {
        create_one(
            &client,
            n,
            "web",
            json!({"sm-injector.io/env.DB": format!("{n}/db#url"),
                   "sm-injector.io/env.TOKEN": format!("{n}/api#token")}),
        )
        .await
        .unwrap();
    }
    let kubeconfig = with_tenant_context(bed, &ns);

    // The context's namespace by default: its two backing Secrets, no
    // NAMESPACE column.
    let (ok, out, err) = status(&kubeconfig, &["--context", "tenant"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("SECRET "), "{out}");
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        out.contains(&format!("{ns}/db")) && !out.contains(&other),
        "{out}"
    );
    // --kubeconfig says which file, whatever KUBECONFIG says.
    let (ok, out2, err) = status(
        std::path::Path::new("/nonexistent"),
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--context",
            "tenant",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out2, out);
    // -A: every namespace, with the column; --no-headers; -o wide names the pods.
    let (ok, out, err) = status(&kubeconfig, &["-A", "--no-headers", "-o", "wide"]);
    assert!(ok, "{err}");
    let mine: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with(&format!("{ns} ")) || l.starts_with(&format!("{other} ")))
        .collect();
    assert_eq!(mine.len(), 4, "{out}");
    assert!(!out.contains("SECRET"), "{out}");
    assert!(mine.iter().all(|l| l.contains(" web ")), "{out}");
    // -n and -A together are refused.
    let (ok, _, err) = status(&kubeconfig, &["-A", "-n", &ns]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");

    // sm-injector's Warning on the pod names one of its backing Secrets:
    // shown on that one only (the API server selects sm-injector's Warnings;
    // another component's Warning is not sm-injector's failure).
    let rows = |out: &str| -> Vec<Value> { serde_json::from_str(out).unwrap() };
    let (_, out, _) = status(&kubeconfig, &["-n", &ns, "-o", "json"]);
    let db = rows(&out)
        .into_iter()
        .find(|r| r["secret"] == format!("{ns}/db"))
        .unwrap();
    let db_backing = db["backingSecret"].as_str().unwrap().to_string();
    // The other component's Warning is the later one: were it listed, it
    // would be the workload's latest and shown on every row.
    let event = |name: &str, component: &str, message: &str, at: &str| -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "involvedObject": {"kind": "Pod", "name": "web", "namespace": ns, "apiVersion": "v1"},
            "reason": "SecretRefreshFailed", "type": "Warning", "message": message,
            "reportingComponent": component, "reportingInstance": "test",
            "source": {"component": component},
            "firstTimestamp": at, "lastTimestamp": at
        }))
        .unwrap()
    };
    let events = Api::<Event>::namespaced(client.clone(), &ns);
    let note = format!(
        "sm-injector could not refresh the backing Secret {db_backing} of {ns}/db: throttled"
    );
    events
        .create(
            &PostParams::default(),
            &event("e1", "sm-injector", &note, "2026-12-03T10:00:00Z"),
        )
        .await
        .unwrap();
    events
        .create(
            &PostParams::default(),
            &event(
                "e2",
                "kubelet",
                "Failed to pull image",
                "2026-12-03T10:05:00Z",
            ),
        )
        .await
        .unwrap();
    let (ok, out, err) = status(&kubeconfig, &["-n", &ns, "-o", "json"]);
    assert!(ok, "{err}");
    for r in rows(&out) {
        let failures = r["failures"].as_array().unwrap().clone();
        if r["backingSecret"] == db_backing.as_str() {
            assert_eq!(
                failures,
                [json!(format!("Pod/web: SecretRefreshFailed: {note}"))],
                "{r}"
            );
        } else {
            assert!(failures.is_empty(), "another secret's failure: {r}");
        }
    }

    // A user who may list Secrets' metadata and Pods but not Events is told
    // so, and the command fails: "no failures" would be a lie.
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "viewer"}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "viewer"},
        "rules": [{"apiGroups": [""], "resources": ["secrets", "pods"], "verbs": ["list"]}]
    }))
    .unwrap();
    Api::<Role>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "viewer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "viewer"},
        "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": ns}]
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let viewer = support::install::sa_kubeconfig(bed, &ns, "viewer");
    let (ok, out, err) = status(&viewer, &["-n", &ns]);
    assert!(!ok, "exit 0 without Events: {out}");
    assert!(err.contains("not allowed to list Events"), "{err}");
    inj.stop(&client).await;
}
