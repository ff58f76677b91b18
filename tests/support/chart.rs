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
