//! The Helm chart as an admin drives it: a real `helm` built from its Go
//! module (tests/tools/build.sh), its output read back as objects.

use std::process::Command;

pub fn helm() -> Command {
    let mut c = Command::new(super::component(
        "SM_INJECTOR_HELM",
        "helm (tests/tools/build.sh helm)",
    ));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

pub fn run(mut c: Command) -> Result<String, String> {
    let out = c.output().expect("run");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into())
    } else {
        Err(format!(
            "{:?}: {}{}",
            c,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Objects of a multi-document YAML stream by "Kind/name".
pub fn objects(yaml: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(yaml)
        .filter_map(|d| serde_json::Value::deserialize(d).ok())
        .filter(|v| v.is_object())
        .map(|v| {
            let key = format!(
                "{}/{}",
                v["kind"].as_str().unwrap(),
                v["metadata"]["name"].as_str().unwrap()
            );
            (key, v)
        })
        .collect()
}

/// Copies `from` into `to`, folders included.
/// `helm template` of the chart in namespace sm-injector, with `extra` flags.
pub fn template(extra: &[&str]) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut c = helm();
    c.args([
        "template",
        "sm-injector",
        "charts/sm-injector",
        "--namespace",
        "sm-injector",
        "--kube-version",
        "1.33.0",
    ]);
    c.args(extra);
    objects(&run(c).unwrap())
}

/// `kubectl kustomize` of `dir` (in this repository), as objects.
pub fn kustomize(dir: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut k = Command::new("kubectl");
    k.arg("kustomize")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir));
    objects(&run(k).unwrap())
}

/// Asserts that the chart renders the objects of the kustomize render, apart
/// from what differs by design: Helm creates the namespace
/// (--create-namespace) and adds its own labels, and kustomize's namespace
/// transformer stamps kinds it does not know to be cluster-scoped (the
/// admission policies and their bindings), where the API server ignores it.
pub fn assert_same_objects(
    mut chart: std::collections::BTreeMap<String, serde_json::Value>,
    mut kustomized: std::collections::BTreeMap<String, serde_json::Value>,
    what: &str,
) {
    assert!(kustomized.remove("Namespace/sm-injector").is_some());
    for o in chart.values_mut() {
        let labels = o["metadata"]["labels"].as_object_mut().unwrap();
        for k in [
            "helm.sh/chart",
            "app.kubernetes.io/managed-by",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
        ] {
            assert!(labels.remove(k).is_some(), "{k}");
        }
    }
    for (k, o) in kustomized.iter_mut() {
        if chart
            .get(k)
            .is_some_and(|c| c["metadata"].get("namespace").is_none())
        {
            o["metadata"].as_object_mut().unwrap().remove("namespace");
        }
    }
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        kustomized.keys().collect::<Vec<_>>(),
        "the same objects as {what}"
    );
    for (k, o) in &kustomized {
        assert_eq!(&chart[k], o, "{k} differs between the chart and {what}");
    }
}
