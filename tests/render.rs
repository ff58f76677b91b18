//! `sm-injector render`, run as a user would: manifests in, mutated manifests
//! and backing Secrets out, with --secrets-file standing in for AWS (these
//! tests need no test bed). The same engine as the webhook; `tests/webhook/injection.rs`
//! checks that both give the same pod.

use std::io::Write;
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::Value;

const SECRETS: &str = r#"{"team/db": {"url": "postgres://u:pw@db/app", "port": 5432}, "team/token": "plain-token", "shared/smtp": {"password": "smtp-pw"}}"#;

const POD: &str = "metadata:
  annotations:
    sm-injector.io/env.DATABASE_URL: team/db#url
    sm-injector.io/env.TOKEN: team/token
spec:
  containers:
  - name: app
    image: registry.invalid/app:1
";

fn indent(text: &str, n: usize) -> String {
    text.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(n)))
        .collect()
}

/// A manifest of `kind` in namespace "team" whose pod template asks for two secrets.
fn template(kind: &str) -> String {
    let head = |api: &str, name: &str| {
        format!("apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: team\n")
    };
    match kind {
        "Pod" => {
            head("v1", "p")
                + POD
                    .strip_prefix(
                        "metadata:
",
                    )
                    .unwrap()
        }
        "CronJob" => {
            head("batch/v1", "c")
                + "spec:\n  schedule: '0 * * * *'\n  jobTemplate:\n    spec:\n      template:\n"
                + &indent(POD, 8)
        }
        "Job" => head("batch/v1", "j") + "spec:\n  template:\n" + &indent(POD, 4),
        _ => {
            head("apps/v1", &kind.to_lowercase())
                + "spec:\n  selector: {matchLabels: {app: x}}\n  template:\n"
                + &indent(POD, 4)
        }
    }
}

/// Runs `sm-injector render` with `args`, feeding `input` on stdin:
/// (exit success, stdout, stderr).
fn render(input: &str, args: &[&str]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.json");
    std::fs::write(&secrets, SECRETS).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sm-injector"))
        .args(["render", "-f", "-", "--secrets-file"])
        .arg(&secrets)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn every_kind_is_rendered_and_other_documents_pass_through() {
    let kinds = [
        "Pod",
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "Job",
        "CronJob",
    ];
    let mut input = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg, namespace: team}\ndata: {a: b}\n",
    );
    for k in kinds {
        input.push_str("---\n");
        input.push_str(&template(k));
    }
    let (ok, out, err) = render(&input, &[]);
    assert!(ok, "{err}");
    let out = docs(&out);
    assert_eq!(out[0]["kind"], "ConfigMap");
    assert_eq!(out[0]["data"]["a"], "b");
    for (i, k) in kinds.iter().enumerate() {
        let d = &out[i + 1];
        assert_eq!(d["kind"], *k);
        let ptr = match *k {
            "Pod" => "",
            "CronJob" => "/spec/jobTemplate/spec/template",
            _ => "/spec/template",
        };
        let env = d
            .pointer(&format!("{ptr}/spec/containers/0/env"))
            .unwrap_or_else(|| panic!("{k}: no env in {d}"));
        let db = env
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "DATABASE_URL")
            .unwrap();
        assert_eq!(db["valueFrom"]["secretKeyRef"]["key"], "url", "{k}");
        assert!(
            db["valueFrom"]["secretKeyRef"]["name"]
                .as_str()
                .unwrap()
                .starts_with("sm-team-db-")
        );
        assert!(
            d.pointer(&format!(
                "{ptr}/metadata/annotations/sm-injector.io~1injected"
            ))
            .is_some(),
            "{k}"
        );
    }
    // One backing Secret per secret, shared by all seven, values masked.
    let secrets: Vec<&Value> = out.iter().filter(|d| d["kind"] == "Secret").collect();
    assert_eq!(secrets.len(), 2);
    let db = secrets
        .iter()
        .find(|s| {
            s["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("sm-team-db-")
        })
        .unwrap();
    assert_eq!(db["metadata"]["namespace"], "team");
    assert_eq!(
        db["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "sm-injector"
    );
    assert!(db.get("data").is_none());
    assert_eq!(
        db["stringData"]["url"],
        "<masked: 22 bytes; --show-values shows it>"
    );
    let text = serde_json::to_string(&out).unwrap();
    assert!(
        !text.contains("postgres://u:pw@db/app") && !text.contains("plain-token"),
        "values leaked: {text}"
    );
}

#[test]
fn json_output_and_show_values() {
    let (ok, out, err) = render(&template("Deployment"), &["-o", "json", "--show-values"]);
    assert!(ok, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["kind"], "List");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "the Deployment and two backing Secrets");
    let token = items
        .iter()
        .find(|i| {
            i["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.contains("-raw-"))
        })
        .unwrap();
    use base64::Engine;
    let v = base64::engine::general_purpose::STANDARD
        .decode(token["data"]["value"].as_str().unwrap())
        .unwrap();
    assert_eq!(v, b"plain-token");
}

#[test]
fn bad_input_fails_with_a_clear_error() {
    let cases = [
        ("kind: [unclosed\n", "not valid YAML"),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
            "no pod template in the input",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {}\n",
            "Deployment/d: no pod template at spec.template",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: team\n  annotations: {sm-injector.io/env.1X: team/db#url}\nspec: {containers: [{name: a}]}\n",
            "Pod/p in namespace team: sm-injector: annotation sm-injector.io/env.1X: \"1X\" is not a valid environment variable name",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: team\n  annotations: {sm-injector.io/env.X: shared/smtp#password}\nspec: {containers: [{name: a}]}\n",
            "reference \"shared/smtp#password\" is not allowed in namespace \"team\"",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {sm-injector.io/env.X: team/db#url}\nspec: {containers: [{name: a}]}\n",
            "not allowed in namespace \"default\"",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: team\n  annotations: {sm-injector.io/env.X: team/missing#k}\nspec: {containers: [{name: a}]}\n",
            "secret \"team/missing\" not found",
        ),
    ];
    for (input, needle) in cases {
        let (ok, out, err) = render(input, &[]);
        assert!(!ok, "{input} must fail");
        assert!(out.is_empty(), "no partial output: {out}");
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
}

#[test]
fn a_namespace_in_the_input_carries_its_access_rule() {
    let input = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n  annotations: {sm-injector.io/allowed-secrets: 'team/*,shared/*'}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: team\n  annotations: {sm-injector.io/env.SMTP: shared/smtp#password}\nspec: {containers: [{name: a, env: [{name: SMTP, value: mine}]}]}\n";
    let (ok, out, err) = render(input, &[]);
    assert!(ok, "{err}");
    assert!(
        err.contains("warning: Pod/p: container \"a\" already sets SMTP"),
        "{err}"
    );
    let out = docs(&out);
    assert_eq!(
        out[1]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
