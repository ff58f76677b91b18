//! `sm-injector convert`: External Secrets Operator manifests to sm-injector
//! annotations. The ExternalSecrets ([`eso`]) say what each key of their
//! target Secret holds; the workloads that read the target through a
//! container's `env` (`secretKeyRef`) or `envFrom` get the equivalent
//! `sm-injector.io/` annotations on their pod template instead, and the
//! converted ExternalSecrets leave the output. What sm-injector cannot
//! express is refused by name, and that workload is left as it was. Pure:
//! documents in, documents out.

pub mod eso;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::annotations::{CONTAINERS, ENV, ENV_FROM, PREFIX, valid_env_name};
use crate::render::template_pointer;
use eso::{Target, namespace_of};

/// The output, what was assumed, and what could not be converted.
#[derive(Debug, Default)]
pub struct Converted {
    pub docs: Vec<Value>,
    pub notes: Vec<String>,
    pub errors: Vec<String>,
}

/// Converts `docs` (ExternalSecrets, SecretStores and workloads, in any order).
pub fn convert(docs: Vec<Value>) -> Converted {
    let mut out = Converted::default();
    let mut targets: BTreeMap<(String, String), Target> = BTreeMap::new();
    // The documents of the ExternalSecrets converted, by their target.
    let mut converted: BTreeMap<usize, (String, String)> = BTreeMap::new();
    let mut blocked: BTreeSet<(String, String)> = BTreeSet::new();
    for (i, d) in docs.iter().enumerate() {
        if !eso::is_external_secret(d) {
            continue;
        }
        match eso::target(d, &docs, &mut out.notes) {
            Ok(t) => {
                let key = (t.namespace.clone(), t.secret.clone());
                converted.insert(i, key.clone());
                targets.insert(key, t);
            }
            Err(e) => {
                let name = d
                    .pointer("/spec/target/name")
                    .or_else(|| d.pointer("/metadata/name"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                blocked.insert((namespace_of(d), name.to_string()));
                out.errors.extend(e);
            }
        }
    }
    let mut namespaces = BTreeSet::new();
    // Targets a workload still reads as a Secret: their ExternalSecret stays.
    let mut still_read: BTreeSet<(String, String)> = BTreeSet::new();
    let mut kept = vec![];
    for (i, mut doc) in docs.into_iter().enumerate() {
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
        if let Some(ptr) = template_pointer(kind) {
            let what = format!(
                "{kind}/{}/{}",
                namespace_of(&doc),
                doc.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
            );
            let ns = namespace_of(&doc);
            if let Some(template) = doc.pointer_mut(ptr) {
                match workload(template, &ns, &targets, &blocked) {
                    Ok(Some(t)) => {
                        *template = t;
                        namespaces.insert(ns);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        out.errors
                            .extend(e.into_iter().map(|e| format!("{what}: {e}")));
                        still_read.extend(
                            secret_uses(template)
                                .into_iter()
                                .map(|(s, _)| (ns.clone(), s)),
                        );
                    }
                }
            }
        }
        kept.push((i, doc));
    }
    out.docs = kept
        .into_iter()
        .filter(|(i, _)| converted.get(i).is_none_or(|t| still_read.contains(t)))
        .map(|(_, d)| d)
        .collect();
    for ns in namespaces {
        out.notes.push(format!(
            "namespace {ns} must be labelled sm-injector.io/inject=enabled for the annotations to take effect (kubectl label namespace {ns} sm-injector.io/inject=enabled)"
        ));
    }
    out
}

/// Each Secret a pod template reads, by name, with how: env, envFrom
/// (`None`: sm-injector can take those over), or a volume, a projected
/// volume or an image pull secret (what that use is).
fn secret_uses(template: &Value) -> Vec<(String, Option<String>)> {
    let spec = &template["spec"];
    let mut uses = vec![];
    let mut add = |v: Option<&Value>, how: Option<String>| {
        if let Some(n) = v.and_then(Value::as_str) {
            uses.push((n.to_string(), how));
        }
    };
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            for e in c["env"].as_array().into_iter().flatten() {
                add(e.pointer("/valueFrom/secretKeyRef/name"), None);
            }
            for e in c["envFrom"].as_array().into_iter().flatten() {
                add(e.pointer("/secretRef/name"), None);
            }
        }
    }
    for v in spec["volumes"].as_array().into_iter().flatten() {
        add(
            v.pointer("/secret/secretName"),
            Some(format!("volume {}", v["name"])),
        );
        for s in v
            .pointer("/projected/sources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            add(
                s.pointer("/secret/name"),
                Some(format!("projected volume {}", v["name"])),
            );
        }
    }
    for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
        add(s.get("name"), Some("imagePullSecrets".into()));
    }
    uses
}

/// The pod template with annotations instead of its reads of target
/// Secrets; `None` when it reads none.
fn workload(
    template: &Value,
    ns: &str,
    targets: &BTreeMap<(String, String), Target>,
    blocked: &BTreeSet<(String, String)>,
) -> Result<Option<Value>, Vec<String>> {
    let mut t = template.clone();
    let target = |name: &str| targets.get(&(ns.to_string(), name.to_string()));
    let mut errors = vec![];
    // Reads that are not env: sm-injector has nothing to put there.
    let other_uses = secret_uses(&t)
        .into_iter()
        .filter_map(|(name, how)| Some((name, how?)));
    for (name, how) in other_uses {
        if target(&name).is_some() {
            errors.push(format!(
                "it uses Secret {name} as {how}; sm-injector injects env (and mount-path files under its own layout), so convert that use by hand"
            ));
        }
    }
    // Each container's reads, as annotations.
    let mut per_container: Vec<(String, BTreeMap<String, String>)> = vec![];
    for list in ["initContainers", "containers"] {
        let Some(containers) = t["spec"][list].as_array_mut() else {
            continue;
        };
        for c in containers {
            let name = c["name"].as_str().unwrap_or("?").to_string();
            let mut wanted = BTreeMap::new();
            let mut put = |k: String, v: String, errors: &mut Vec<String>| match wanted.get(&k) {
                Some(old) if *old != v => errors.push(format!(
                    "container {name}: {k} would be both {old:?} and {v:?}"
                )),
                _ => {
                    wanted.insert(k, v);
                }
            };
            if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
                env.retain(|e| {
                    let Some(r) = e.pointer("/valueFrom/secretKeyRef") else {
                        return true;
                    };
                    let secret = r["name"].as_str().unwrap_or_default();
                    if blocked.contains(&(ns.to_string(), secret.to_string())) {
                        errors.push(format!("it reads Secret {secret}, whose ExternalSecret cannot be converted"));
                        return true;
                    }
                    let Some(t) = target(secret) else { return true };
                    let var = e["name"].as_str().unwrap_or_default();
                    let key = r["key"].as_str().unwrap_or_default();
                    let reference = match (t.keys.get(key), t.extracts.as_slice()) {
                        (Some(r), _) => r.clone(),
                        (None, [one]) => format!("{one}#{key}"),
                        (None, []) => {
                            errors.push(format!("env {var} reads key {key:?} of Secret {secret}, which {} does not make", t.from));
                            return true;
                        }
                        (None, _) => {
                            errors.push(format!("env {var} reads key {key:?} of Secret {secret}, which more than one dataFrom.extract of {} may make", t.from));
                            return true;
                        }
                    };
                    put(format!("{ENV}{var}"), reference, &mut errors);
                    false
                });
            }
            if let Some(env_from) = c.get_mut("envFrom").and_then(Value::as_array_mut) {
                env_from.retain(|e| {
                    let Some(secret) = e.pointer("/secretRef/name").and_then(Value::as_str) else {
                        return true;
                    };
                    if blocked.contains(&(ns.to_string(), secret.to_string())) {
                        errors.push(format!("it reads Secret {secret}, whose ExternalSecret cannot be converted"));
                        return true;
                    }
                    let Some(t) = target(secret) else { return true };
                    let prefix = e["prefix"].as_str().unwrap_or_default();
                    for (k, r) in &t.keys {
                        let var = format!("{prefix}{k}");
                        if !valid_env_name(&var) {
                            errors.push(format!("envFrom {secret}: {var:?} is not a valid environment variable name, which sm-injector.io/env.<VAR> needs"));
                            continue;
                        }
                        put(format!("{ENV}{var}"), r.clone(), &mut errors);
                    }
                    if !t.extracts.is_empty() {
                        match prefix.strip_suffix('_') {
                            _ if prefix.is_empty() => put(ENV_FROM.to_string(), t.extracts.join(","), &mut errors),
                            Some(p) if t.extracts.len() == 1 && valid_env_name(p) => {
                                put(format!("{ENV_FROM}.{p}"), t.extracts[0].clone(), &mut errors)
                            }
                            _ => errors.push(format!(
                                "envFrom {secret} with prefix {prefix:?}: sm-injector.io/env-from.<PREFIX> takes one secret and adds '_' to a valid name"
                            )),
                        }
                    }
                    false
                });
            }
            for k in ["env", "envFrom"] {
                if c.get(k)
                    .and_then(Value::as_array)
                    .is_some_and(Vec::is_empty)
                {
                    c.as_object_mut().unwrap().remove(k);
                }
            }
            per_container.push((name, wanted));
        }
    }
    let reading: Vec<&(String, BTreeMap<String, String>)> = per_container
        .iter()
        .filter(|(_, w)| !w.is_empty())
        .collect();
    let Some((_, first)) = reading.first() else {
        return if errors.is_empty() {
            Ok(None)
        } else {
            Err(errors)
        };
    };
    if reading.iter().any(|(_, w)| w != first) {
        errors.push(format!(
            "containers {} read different values; sm-injector injects the same references into every selected container",
            reading.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    let annotations = t["metadata"]["annotations"].take();
    let mut annotations = match annotations {
        Value::Object(m) => m,
        _ => Default::default(),
    };
    if annotations.keys().any(|k| k.starts_with(PREFIX)) {
        errors.push(
            "its pod template already has sm-injector.io/ annotations; merge them by hand".into(),
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    for (k, v) in first.iter() {
        annotations.insert(k.clone(), json!(v));
    }
    if reading.len() < per_container.len() {
        let names: Vec<&str> = reading.iter().map(|(n, _)| n.as_str()).collect();
        annotations.insert(CONTAINERS.into(), json!(names.join(",")));
    }
    if t.get("metadata").is_none_or(Value::is_null) {
        t["metadata"] = json!({});
    }
    t["metadata"]["annotations"] = Value::Object(annotations);
    Ok(Some(t))
}

#[cfg(test)]
mod tests;
