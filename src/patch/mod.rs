//! Building the JSON patch for a pod from a [`Plan`]. Pure. Running it again on
//! its own output adds nothing (re-invocation), and a container's own env values
//! are kept with a warning.

mod json;

use std::io::Write as _;

use k8s_openapi::api::core::v1::{EnvFromSource, EnvVar};

use crate::pod::{Container, Pod};

use crate::annotations::{CONTAINERS, INJECTED, INJECTED_LABEL};
use crate::plan::{self, Plan};
pub(crate) use json::plain;
use json::{Item, Ops, Texts};

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

/// Appends the items whose JSON are `items` to the array at `base/field`,
/// adding the array when absent.
fn append(ops: &mut Ops, base: &[&str], field: &str, exists: bool, items: &[&[u8]]) {
    if items.is_empty() {
        return;
    }
    let mut path: Vec<&str> = base.to_vec();
    path.push(field);
    if exists {
        path.push("-");
        // The same pointer for each item: written once.
        let at = json::pointer(&path);
        for item in items {
            ops.item(&at, item);
        }
    } else {
        ops.list(&path, items);
    }
}

/// Like [`append`], but `items` go before what the list holds.
fn prepend(ops: &mut Ops, base: &[&str], field: &str, exists: bool, items: &[&[u8]]) {
    if !exists {
        return append(ops, base, field, exists, items);
    }
    let mut path: Vec<&str> = base.to_vec();
    path.push(field);
    let list = json::pointer(&path);
    let mut at = list.clone();
    for (i, item) in items.iter().enumerate() {
        // An index needs no escaping.
        at.truncate(list.len());
        write!(at, "/{i}").expect("writing to a Vec");
        ops.item(&at, item);
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
    // Each entry's JSON is written once, and copied into each container.
    let env = Texts::new(plan.env.iter().map(Item::Env));
    let env_from = Texts::new(plan.env_from.iter().map(Item::EnvFrom));
    let mounts = Texts::new(plan.mounts.iter().map(Item::Mount));
    let mut items: Vec<&[u8]> = Vec::with_capacity(plan.env.len().max(plan.env_from.len()));

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
        for (i, e) in plan.env.iter().enumerate() {
            match existing_env.iter().find(|x| x.name == e.var) {
                Some(x) if is_ours(x, e) => {}
                Some(_) => warnings.push(format!(
                    "container {:?} already sets {}; its own value is kept and sm-injector's is not injected",
                    c.name, e.var
                )),
                None => items.push(env.get(i)),
            }
        }
        append(&mut ops, &base, "env", c.env.is_some(), &items);

        let existing_from = c.env_from.as_deref().unwrap_or_default();
        items.clear();
        for (i, e) in plan.env_from.iter().enumerate() {
            if !existing_from.iter().any(|x| is_our_source(x, e)) {
                items.push(env_from.get(i));
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
        for (i, m) in plan.mounts.iter().enumerate() {
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
            items.push(mounts.get(i));
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
        let volumes = Texts::new(
            plan.mounts
                .iter()
                .filter(|m| !existing.iter().any(|v| v.name == m.secret))
                .map(Item::Volume),
        );
        let has_volumes = spec.is_some_and(|s| s.volumes.is_some());
        append(&mut ops, &["spec"], "volumes", has_volumes, &volumes.all());
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
/// ([`crate::annotations::VERSIONS`]): a JSON array in the order of the
/// record's entries, `null` where a version is not known, and no annotation
/// when none is. Known only once the backing Secrets are ensured, so kept
/// decisions share the rest of the patch.
pub fn record_versions<'a>(
    patch: &mut Vec<u8>,
    versions: impl IntoIterator<Item = Option<&'a str>>,
) {
    // The array's JSON text, then that text as a JSON string.
    let mut text = vec![b'['];
    let mut known = false;
    for version in versions {
        if text.len() > 1 {
            text.push(b',');
        }
        match version {
            Some(v) => {
                known = true;
                serde_json::to_writer(&mut text, v).expect("a string serializes");
            }
            None => text.extend_from_slice(b"null"),
        }
    }
    if !known || patch.last() != Some(&b']') {
        return;
    }
    text.push(b']');
    let text = std::str::from_utf8(&text).expect("JSON is UTF-8");
    patch.pop();
    patch.extend_from_slice(
        br#",{"op":"add","path":"/metadata/annotations/sm-injector.io~1versions","value":"#,
    );
    serde_json::to_writer(&mut *patch, text).expect("a string serializes");
    patch.extend_from_slice(b"}]");
}

#[cfg(test)]
mod tests;
