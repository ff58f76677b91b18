//! Building the JSON patch for a pod from a [`Plan`]. Pure. Running it again on
//! its own output adds nothing (re-invocation), and a container's own env values
//! are kept with a warning.

mod json;

use k8s_openapi::api::core::v1::{EnvFromSource, EnvVar};

use crate::pod::{Container, Pod};

use crate::annotations::{CONTAINERS, INJECTED, INJECTED_LABEL};
use crate::plan::{self, Plan};
pub(crate) use json::plain;
use json::{Item, Ops};

/// A container the pod's annotations select: its list and index in the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub list: &'static str,
    pub index: usize,
}

fn all_containers(pod: &Pod) -> Vec<(Target, &Container)> {
    let Some(spec) = &pod.spec else {
        return vec![];
    };
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| {
            (
                Target {
                    list: "initContainers",
                    index: i,
                },
                c,
            )
        });
    let main = spec.containers.iter().enumerate().map(|(i, c)| {
        (
            Target {
                list: "containers",
                index: i,
            },
            c,
        )
    });
    init.chain(main).collect()
}

/// The containers to inject into: those named by `sm-injector.io/containers`,
/// or every container and init container. An unknown name is an error.
pub fn select(pod: &Pod, wanted: Option<&[String]>) -> Result<Vec<Target>, String> {
    // The API server always sends one; a forged review may not, and a patch
    // adding under /spec would not apply.
    if pod.spec.is_none() {
        return Err("the pod has no spec".into());
    }
    let all = all_containers(pod);
    let Some(wanted) = wanted else {
        return Ok(all.into_iter().map(|(t, _)| t).collect());
    };
    let unknown: Vec<&String> = wanted
        .iter()
        .filter(|w| !all.iter().any(|(_, c)| &c.name == *w))
        .collect();
    if !unknown.is_empty() {
        let known: Vec<&str> = all.iter().map(|(_, c)| c.name.as_str()).collect();
        return Err(format!(
            "annotation {CONTAINERS}: no container named {} in this pod (it has: {})",
            unknown
                .iter()
                .map(|u| format!("{u:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            known.join(", ")
        ));
    }
    Ok(all
        .into_iter()
        .filter(|(_, c)| wanted.contains(&c.name))
        .map(|(t, _)| t)
        .collect())
}

/// Appends `items` to the array at `base/field`, adding the array when absent.
fn append(ops: &mut Ops, base: &[&str], field: &str, exists: bool, items: &[Item]) {
    if items.is_empty() {
        return;
    }
    let mut path: Vec<&str> = base.to_vec();
    path.push(field);
    if exists {
        path.push("-");
        for item in items {
            ops.item(&path, *item);
        }
    } else {
        ops.list(&path, items);
    }
}

/// Like [`append`], but `items` go before what the list holds.
fn prepend(ops: &mut Ops, base: &[&str], field: &str, exists: bool, items: &[Item]) {
    if !exists {
        return append(ops, base, field, exists, items);
    }
    for (i, item) in items.iter().enumerate() {
        let index = i.to_string();
        let mut path: Vec<&str> = base.to_vec();
        path.extend([field, index.as_str()]);
        ops.item(&path, *item);
    }
}

/// Whether `x` is the env entry sm-injector injects for `e`.
fn is_ours(x: &EnvVar, e: &plan::EnvVar) -> bool {
    let Some(from) = &x.value_from else {
        return false;
    };
    let Some(r) = &from.secret_key_ref else {
        return false;
    };
    x.value.is_none()
        && from.config_map_key_ref.is_none()
        && from.field_ref.is_none()
        && from.resource_field_ref.is_none()
        && r.name == e.secret
        && r.key == e.key
        && r.optional.is_none()
}

/// Whether `x` is the envFrom source sm-injector injects for `e`.
fn is_our_source(x: &EnvFromSource, e: &plan::EnvFrom) -> bool {
    x.prefix == e.prefix
        && x.config_map_ref.is_none()
        && x.secret_ref
            .as_ref()
            .is_some_and(|r| r.name == e.secret && r.optional.is_none())
}

/// The patch (JSON) and the admission warnings for `pod`.
pub fn build(pod: &Pod, plan: &Plan, targets: &[Target]) -> (Vec<u8>, Vec<String>) {
    // About what the operations below write, so that the buffer is sized once.
    let per_container =
        plan.env.len() * 170 + plan.env_from.len() * 100 + plan.mounts.len() * 120 + 150;
    let estimate = 512 + targets.len() * per_container + plan.backing.len() * 200;
    let mut ops = Ops::with_capacity(estimate.min(1 << 20));
    let mut warnings = vec![];
    let all = all_containers(pod);
    let mut items = Vec::with_capacity(plan.env.len().max(plan.env_from.len()));

    for t in targets {
        let c = all
            .iter()
            .find(|(ct, _)| ct == t)
            .map(|(_, c)| *c)
            .expect("targets come from select() on the same pod");
        let index = t.index.to_string();
        let base = ["spec", t.list, index.as_str()];

        let existing_env = c.env.as_deref().unwrap_or_default();
        items.clear();
        for e in &plan.env {
            match existing_env.iter().find(|x| x.name == e.var) {
                Some(x) if is_ours(x, e) => {}
                Some(_) => warnings.push(format!(
                    "container {:?} already sets {}; its own value is kept and sm-injector's is not injected",
                    c.name, e.var
                )),
                None => items.push(Item::Env(e)),
            }
        }
        append(&mut ops, &base, "env", c.env.is_some(), &items);

        let existing_from = c.env_from.as_deref().unwrap_or_default();
        items.clear();
        for e in &plan.env_from {
            if !existing_from.iter().any(|x| is_our_source(x, e)) {
                items.push(Item::EnvFrom(e));
            }
        }
        // Of two envFrom sources with the same key, the later wins: ours go
        // first, so that the container's own sources keep their keys (as its
        // own env values are kept).
        if !items.is_empty() && !existing_from.is_empty() {
            warnings.push(format!(
                "container {:?} has envFrom sources of its own; a key they share with the injected secrets keeps the container's value",
                c.name
            ));
        }
        prepend(&mut ops, &base, "envFrom", c.env_from.is_some(), &items);

        let existing_mounts = c.volume_mounts.as_deref().unwrap_or_default();
        items.clear();
        for m in &plan.mounts {
            if existing_mounts.iter().any(|x| x.name == m.secret) {
                continue;
            }
            if existing_mounts.iter().any(|x| x.mount_path == m.path) {
                warnings.push(format!(
                    "container {:?} already mounts something at {}; the secret is not mounted there",
                    c.name, m.path
                ));
                continue;
            }
            items.push(Item::Mount(m));
        }
        append(
            &mut ops,
            &base,
            "volumeMounts",
            c.volume_mounts.is_some(),
            &items,
        );
    }

    if !plan.mounts.is_empty() {
        let spec = pod.spec.as_ref();
        let existing = spec.and_then(|s| s.volumes.as_deref()).unwrap_or_default();
        items.clear();
        items.extend(
            plan.mounts
                .iter()
                .filter(|m| !existing.iter().any(|v| v.name == m.secret))
                .map(Item::Volume),
        );
        let has_volumes = spec.is_some_and(|s| s.volumes.is_some());
        append(&mut ops, &["spec"], "volumes", has_volumes, &items);
    }

    // The label lets the refresher watch only the pods sm-injector mutated.
    if pod.metadata.labels.is_some() {
        ops.string(&["metadata", "labels", INJECTED_LABEL], "true");
    } else {
        ops.map(&["metadata", "labels"], INJECTED_LABEL, "true");
    }
    // The record goes straight into the patch as a JSON string.
    let record = |out: &mut Vec<u8>| plan.record_string(out);
    if pod.metadata.annotations.is_some() {
        ops.string_with(&["metadata", "annotations", INJECTED], record);
    } else {
        ops.map_with(&["metadata", "annotations"], INJECTED, record);
    }
    (ops.finish(), warnings)
}

/// Adds to a patch made by [`build`] (whose ops make sure the pod has an
/// annotations map) the record of the version each backing Secret holds
/// ([`crate::annotations::VERSIONS`]): known only once the backing Secrets are ensured, so kept
/// decisions share the rest of the patch.
pub fn record_versions<'a>(
    patch: &mut Vec<u8>,
    versions: impl IntoIterator<Item = (&'a str, &'a str)>,
) {
    // The object's JSON text, then that text as a JSON string.
    let mut text = vec![b'{'];
    for (backing, version) in versions {
        if text.len() > 1 {
            text.push(b',');
        }
        serde_json::to_writer(&mut text, backing).expect("a string serializes");
        text.push(b':');
        serde_json::to_writer(&mut text, version).expect("a string serializes");
    }
    if text.len() == 1 || patch.last() != Some(&b']') {
        return;
    }
    text.push(b'}');
    let text = std::str::from_utf8(&text).expect("JSON is UTF-8");
    patch.pop();
    patch.extend_from_slice(
        br#",{"op":"add","path":"/metadata/annotations/sm-injector.io~1versions","value":"#,
    );
    serde_json::to_writer(&mut *patch, text).expect("a string serializes");
    patch.extend_from_slice(b"}]");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{self, EnvFrom, Mount};
    use serde_json::{Value, json};
    use std::time::Duration;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn plan() -> Plan {
        Plan {
            backing: vec![],
            env: vec![plan::EnvVar {
                var: "DB".into(),
                secret: "sm-n-db-1".into(),
                key: "url".into(),
            }],
            env_from: vec![EnvFrom {
                prefix: Some("REDIS_".into()),
                secret: "sm-n-redis-2".into(),
            }],
            mounts: vec![Mount {
                secret: "sm-n-db-1".into(),
                path: "/s/n/db".into(),
            }],
            refresh_interval: Duration::from_secs(3600),
            service_account: None,
        }
    }

    fn ops(patch: &[u8]) -> json_patch::Patch {
        serde_json::from_slice(patch).expect("the patch is a JSON patch")
    }

    /// The patched pod as JSON: what the API server stores.
    fn apply_json(p: &Pod, patch: &[u8]) -> Value {
        let mut v = serde_json::to_value(p).unwrap();
        json_patch::patch(&mut v, &ops(patch)).unwrap();
        v
    }

    fn apply(p: &Pod, patch: &[u8]) -> Pod {
        serde_json::from_value(apply_json(p, patch)).unwrap()
    }

    fn sample() -> Pod {
        pod(json!({
            "metadata": {"annotations": {"sm-injector.io/env.DB": "n/db#url"}},
            "spec": {
                "initContainers": [{"name": "init", "image": "x"}],
                "containers": [
                    {"name": "app", "image": "x", "env": [{"name": "DB", "value": "mine"}, {"name": "OTHER", "value": "1"}]},
                    {"name": "side", "image": "x", "volumeMounts": [{"name": "v", "mountPath": "/data"}]}
                ],
                "volumes": [{"name": "v", "emptyDir": {}}]
            }
        }))
    }

    #[test]
    fn a_pod_without_spec_is_refused_rather_than_given_a_patch_that_cannot_apply() {
        // Found by fuzz/fuzz_targets/review.rs: /spec/volumes was added to a
        // pod that had no /spec.
        let p = pod(json!({"metadata": {"name": "p"}}));
        assert_eq!(select(&p, None), Err("the pod has no spec".to_string()));
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}));
        assert_eq!(select(&p, None), Ok(vec![]));
    }

    #[test]
    fn injects_everywhere_keeps_explicit_values_and_warns() {
        let p = sample();
        let targets = select(&p, None).unwrap();
        assert_eq!(targets.len(), 3);
        let (patch, warnings) = build(&p, &plan(), &targets);
        let out = apply(&p, &patch);
        let spec = out.spec.unwrap();
        let init = &spec.init_containers.as_ref().unwrap()[0];
        let db = init
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "DB")
            .unwrap();
        let r = db
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((r.name.as_str(), r.key.as_str()), ("sm-n-db-1", "url"));
        assert!(db.value.is_none(), "never plaintext");
        let app = &spec.containers[0];
        let app_db = app
            .env
            .as_ref()
            .unwrap()
            .iter()
            .filter(|e| e.name == "DB")
            .collect::<Vec<_>>();
        assert_eq!(app_db.len(), 1);
        assert_eq!(app_db[0].value.as_deref(), Some("mine"));
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("\"app\" already sets DB"),
            "{warnings:?}"
        );
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            let ef = c.env_from.as_ref().unwrap();
            assert_eq!(ef[0].prefix.as_deref(), Some("REDIS_"));
            assert!(
                c.volume_mounts
                    .as_ref()
                    .unwrap()
                    .iter()
                    .any(|m| m.mount_path == "/s/n/db" && m.read_only == Some(true))
            );
        }
        let vols = spec.volumes.unwrap();
        assert_eq!(vols.len(), 2);
        assert_eq!(
            apply_json(&p, &patch)["spec"]["volumes"][1]["secret"]["secretName"],
            "sm-n-db-1"
        );
        assert!(out.metadata.annotations.unwrap().contains_key(INJECTED));
        assert_eq!(out.metadata.labels.unwrap()[INJECTED_LABEL], "true");
    }

    #[test]
    fn reinvocation_adds_nothing_new() {
        let p = sample();
        let targets = select(&p, None).unwrap();
        let (patch, _) = build(&p, &plan(), &targets);
        let once = apply(&p, &patch);
        let (patch2, _) = build(&once, &plan(), &select(&once, None).unwrap());
        let twice = apply(&once, &patch2);
        assert_eq!(
            serde_json::to_value(&once).unwrap(),
            serde_json::to_value(&twice).unwrap()
        );
        assert_eq!(
            ops(&patch2).0.len(),
            2,
            "only the label and the record annotation are set again: {:?}",
            ops(&patch2)
        );
    }

    #[test]
    fn container_selection() {
        let p = sample();
        let t = select(&p, Some(&["side".to_string()])).unwrap();
        assert_eq!(
            t,
            vec![Target {
                list: "containers",
                index: 1
            }]
        );
        let (patch, _) = build(&p, &plan(), &t);
        let out = apply(&p, &patch).spec.unwrap();
        assert!(out.containers[0].env_from.is_none());
        assert!(out.init_containers.unwrap()[0].env.is_none());
        let e = select(&p, Some(&["nope".to_string()])).unwrap_err();
        assert!(
            e.contains("sm-injector.io/containers")
                && e.contains("\"nope\"")
                && e.contains("init, app, side"),
            "{e}"
        );
    }

    #[test]
    fn pod_without_annotations_map_gets_one() {
        let p = pod(json!({"metadata": {}, "spec": {"containers": [{"name": "a"}]}}));
        let (patch, _) = build(&p, &plan(), &select(&p, None).unwrap());
        let out = apply(&p, &patch);
        assert!(out.metadata.annotations.unwrap().contains_key(INJECTED));
    }

    #[test]
    fn the_containers_own_env_from_sources_keep_their_keys() {
        let mut p = sample();
        let own = EnvFromSource {
            config_map_ref: Some(k8s_openapi::api::core::v1::ConfigMapEnvSource {
                name: "app-config".into(),
                optional: None,
            }),
            ..Default::default()
        };
        p.spec.as_mut().unwrap().containers[0].env_from = Some(vec![own.clone()]);
        let targets = select(&p, None).unwrap();
        let (patch, warnings) = build(&p, &plan(), &targets);
        let out = apply(&p, &patch);
        let from = out.spec.as_ref().unwrap().containers[0]
            .env_from
            .clone()
            .unwrap();
        assert_eq!(
            from.last(),
            Some(&own),
            "the container's own source comes last, so it wins"
        );
        assert!(from[0].secret_ref.is_some());
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("has envFrom sources of its own")),
            "{warnings:?}"
        );
        // Reinvocation adds nothing.
        let (again, _) = build(&out, &plan(), &select(&out, None).unwrap());
        assert_eq!(
            apply(&out, &again).spec.unwrap().containers[0]
                .env_from
                .as_ref()
                .unwrap()
                .len(),
            from.len()
        );
    }

    #[test]
    fn the_versions_held_are_recorded_after_the_rest_of_the_patch() {
        use crate::annotations::VERSIONS;
        use std::collections::BTreeMap;
        let p = pod(
            json!({"metadata": {"annotations": {"sm-injector.io/env.DB": "n/db#url"}},
            "spec": {"containers": [{"name": "app"}]}}),
        );
        let (mut bytes, _) = build(&p, &plan(), &select(&p, None).unwrap());
        record_versions(&mut bytes, [("sm-n-db-1", "v\"2"), ("sm-x", "v9")]);
        let patched = apply(&p, &bytes);
        let recorded: BTreeMap<String, String> =
            serde_json::from_str(&patched.metadata.annotations.unwrap()[VERSIONS]).unwrap();
        assert_eq!(recorded["sm-n-db-1"], "v\"2");
        assert_eq!(recorded["sm-x"], "v9");
        // Without an annotations map on the pod, and with nothing to record.
        let bare = pod(json!({"spec": {"containers": [{"name": "app"}]}}));
        let (mut bytes, _) = build(&bare, &plan(), &select(&bare, None).unwrap());
        let before = bytes.clone();
        record_versions(&mut bytes, []);
        assert_eq!(bytes, before);
        record_versions(&mut bytes, [("sm-n-db-1", "v1")]);
        assert!(
            apply(&bare, &bytes)
                .metadata
                .annotations
                .unwrap()
                .contains_key(VERSIONS)
        );
    }
}
