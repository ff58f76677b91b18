//! `sm-injector convert` as an ESO user runs it: the seed's ExternalSecrets
//! and Deployment (examples/eso/arrakis.yaml) in, the Deployment with
//! sm-injector.io/ annotations out; then `sm-injector render` of the
//! converted Deployment gives the reading container the same variables, with
//! the same values, as External Secrets Operator's target Secrets would
//! (worked out here from the ExternalSecrets, as ESO fills them). Needs no
//! test bed; `--secrets-file` stands in for AWS.

use std::collections::BTreeMap;
use std::process::Command;

use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/eso/arrakis.yaml");

fn sm_injector(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sm-injector"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| v.is_object())
        .collect()
}

/// What ESO writes into the target Secret of `es`, from `secrets`.
fn eso_target(es: &Value, secrets: &Value) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for d in es["spec"]["data"].as_array().into_iter().flatten() {
        let r = &d["remoteRef"];
        let secret = &secrets[r["key"].as_str().unwrap()];
        let v = text(&secret[r["property"].as_str().unwrap()]);
        let v = match r["decodingStrategy"].as_str() {
            Some("Base64") => base64::engine::general_purpose::STANDARD.decode(v).unwrap(),
            _ => v.into_bytes(),
        };
        out.insert(d["secretKey"].as_str().unwrap().to_string(), v);
    }
    for d in es["spec"]["dataFrom"].as_array().into_iter().flatten() {
        let secret = &secrets[d["extract"]["key"].as_str().unwrap()];
        for (k, v) in secret.as_object().unwrap() {
            out.insert(k.clone(), text(v).into_bytes());
        }
    }
    out
}

/// The env of the container `name` in the pod template of `workload`, its
/// Secrets looked up among `objects` (data in base64, as the API has it).
fn env_of(workload: &Value, name: &str, objects: &[Value]) -> BTreeMap<String, Vec<u8>> {
    let secret = |n: &str| -> BTreeMap<String, Vec<u8>> {
        let s = objects
            .iter()
            .find(|o| o["kind"] == "Secret" && o["metadata"]["name"] == n)
            .unwrap_or_else(|| panic!("Secret {n}"));
        s["data"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let b = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap())
                    .unwrap();
                (k.clone(), b)
            })
            .collect()
    };
    let c = workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap();
    let mut env = BTreeMap::new();
    for e in c["envFrom"].as_array().into_iter().flatten() {
        let prefix = e["prefix"].as_str().unwrap_or_default();
        for (k, v) in secret(e["secretRef"]["name"].as_str().unwrap()) {
            env.insert(format!("{prefix}{k}"), v);
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let v = match e.pointer("/valueFrom/secretKeyRef") {
            Some(r) => secret(r["name"].as_str().unwrap())[r["key"].as_str().unwrap()].clone(),
            None => e["value"].as_str().unwrap().as_bytes().to_vec(),
        };
        env.insert(e["name"].as_str().unwrap().to_string(), v);
    }
    env
}

#[test]
fn the_seeds_external_secrets_convert_to_the_same_variables_and_values() {
    let bundle: Vec<u8> = vec![0x00, 0xfe, 0x42, 0x80];
    let secrets = json!({
        "arrakis/discord": {"bot_token": "discord-token", "application_id": 1234567890},
        "arrakis/postgres": {"url": "postgres://bot:pw@db:5432/arrakis"},
        "arrakis/redis": {"HOST": "redis.arrakis", "PORT": 6379},
        "arrakis/scylladb": {"bundle": base64::engine::general_purpose::STANDARD.encode(&bundle)}
    });
    let seed = docs(&std::fs::read_to_string(SEED).unwrap());
    let deployment = seed.iter().find(|d| d["kind"] == "Deployment").unwrap();

    // What the bot container reads under ESO: its envFrom of both targets.
    let mut eso_env: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let by_target = |name: &str| {
        let es = seed
            .iter()
            .find(|d| d["kind"] == "ExternalSecret" && d["metadata"]["name"] == name)
            .unwrap();
        eso_target(es, &secrets)
    };
    for (k, v) in by_target("arrakis-secrets") {
        eso_env.insert(k, v);
    }
    for (k, v) in by_target("arrakis-redis") {
        eso_env.insert(format!("REDIS_{k}"), v);
    }
    eso_env.insert("LOG_LEVEL".into(), b"info".to_vec());
    assert_eq!(eso_env["SCYLLA_BUNDLE"], bundle);

    // Converted, then rendered as the webhook would admit it.
    let (ok, converted, err) = sm_injector(&["convert", "-f", SEED]);
    assert!(ok, "{err}");
    assert!(err.contains("namespace arrakis must be labelled"), "{err}");
    let out = docs(&converted);
    assert!(
        !out.iter().any(|d| d["kind"] == "ExternalSecret"),
        "the converted ExternalSecrets leave the output"
    );
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("converted.yaml");
    std::fs::write(&manifest, &converted).unwrap();
    let values = dir.path().join("secrets.json");
    std::fs::write(&values, secrets.to_string()).unwrap();
    let (ok, rendered, err) = sm_injector(&[
        "render",
        "-f",
        manifest.to_str().unwrap(),
        "--secrets-file",
        values.to_str().unwrap(),
        "--show-values",
        "-o",
        "json",
    ]);
    assert!(ok, "{err}");
    let objects: Vec<Value> = serde_json::from_str::<Value>(&rendered)
        .map(|v| match v {
            Value::Array(a) => a,
            Value::Object(o) if o.get("items").is_some() => o["items"].as_array().unwrap().clone(),
            other => vec![other],
        })
        .unwrap();
    let admitted = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    assert_eq!(env_of(admitted, "bot", &objects), eso_env);
    // The init container read nothing under ESO, and still reads nothing.
    let migrate = &admitted["spec"]["template"]["spec"]["initContainers"][0];
    assert!(
        migrate.get("env").is_none() && migrate.get("envFrom").is_none(),
        "{migrate}"
    );
    // The original read them by envFrom; the converted template does not.
    assert!(deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"].is_array());
}

#[test]
fn what_cannot_be_converted_fails_naming_it_and_is_printed_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("vault.yaml");
    std::fs::write(
        &input,
        r#"
apiVersion: external-secrets.io/v1
kind: SecretStore
metadata: {name: vault, namespace: app}
spec: {provider: {vault: {server: "https://vault"}}}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: db, namespace: app}
spec:
  secretStoreRef: {name: vault}
  data: [{secretKey: PW, remoteRef: {key: app/db, property: pw}}]
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: app}
spec:
  containers: [{name: a, envFrom: [{secretRef: {name: db}}]}]
"#,
    )
    .unwrap();
    let (ok, out, err) = sm_injector(&["convert", "-f", input.to_str().unwrap()]);
    assert!(!ok, "exit 0: {out}");
    assert!(
        err.contains(
            "error: ExternalSecret/app/db: its store SecretStore/vault is another provider"
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "error: Pod/app/p: it reads Secret db, whose ExternalSecret cannot be converted"
        ),
        "{err}"
    );
    let out = docs(&out);
    let pod = out.iter().find(|d| d["kind"] == "Pod").unwrap();
    assert_eq!(
        pod["spec"]["containers"][0]["envFrom"][0]["secretRef"]["name"],
        "db"
    );
    assert!(pod["metadata"].get("annotations").is_none());
}
