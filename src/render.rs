//! `sm-injector render`: what the webhook would make of the pod templates in a
//! manifest, with the same engine ([`crate::admission::plan_pod`] and
//! [`crate::patch::build`]), plus the backing Secrets it would write.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::admission::{Planned, Settings, plan_pod};
use crate::annotations::ALLOWED_SECRETS;
use crate::backing;
use crate::cache::CachedSource;
use crate::plan::Content;
use crate::policy::AccessRule;
use crate::secret::Payload;
use crate::store::now_rfc3339;

/// Where the pod template of each supported kind is.
pub fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

pub struct Rendered {
    /// The documents (mutated where sm-injector acts) followed by the backing Secrets.
    pub objects: Vec<Value>,
    pub warnings: Vec<String>,
}

/// Reads multi-document YAML (or JSON); a `List` is taken item by item.
pub fn parse_documents(input: &str) -> Result<Vec<Value>, String> {
    let mut docs = vec![];
    for (i, de) in serde_yaml_ng::Deserializer::from_str(input).enumerate() {
        let v = Value::deserialize(de)
            .map_err(|e| format!("document {}: not valid YAML: {e}", i + 1))?;
        match v {
            Value::Null => {}
            Value::Object(ref o) if o.get("kind").and_then(Value::as_str) == Some("List") => {
                docs.extend(
                    o.get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                );
            }
            Value::Object(_) => docs.push(v),
            _ => {
                return Err(format!(
                    "document {}: not a Kubernetes object (a YAML mapping with a kind)",
                    i + 1
                ));
            }
        }
    }
    Ok(docs)
}

fn describe(doc: &Value) -> String {
    format!(
        "{}/{}",
        doc.get("kind").and_then(Value::as_str).unwrap_or("?"),
        doc.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?")
    )
}

/// Renders `docs`. Errors name the object; any error fails the whole render.
pub async fn render(
    docs: Vec<Value>,
    source: &CachedSource,
    settings: &Settings,
    show_values: bool,
) -> Result<Rendered, Vec<String>> {
    // A Namespace in the input carries its access rule.
    let rules: HashMap<String, Option<String>> = docs
        .iter()
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some("Namespace"))
        .filter_map(|d| {
            let name = d.pointer("/metadata/name")?.as_str()?.to_string();
            let ann = d
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(ALLOWED_SECRETS))
                .and_then(Value::as_str)
                .map(String::from);
            Some((name, ann))
        })
        .collect();

    let mut out = vec![];
    let mut secrets = vec![];
    let mut seen = HashSet::new();
    let mut warnings = vec![];
    let mut errors = vec![];
    let mut templates = 0;
    for mut doc in docs {
        let kind = doc
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let Some(ptr) = template_pointer(&kind) else {
            out.push(doc);
            continue;
        };
        templates += 1;
        let what = describe(&doc);
        let ns = doc
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let Some(template) = doc.pointer(ptr).cloned() else {
            errors.push(format!(
                "{what}: no pod template at {}",
                ptr.trim_start_matches('/').replace('/', ".")
            ));
            continue;
        };
        // Checked as a whole pod, read as sm-injector reads one.
        let pod = match serde_json::from_value::<Pod>(template.clone()) {
            Ok(p) => crate::pod::Pod::from(&p),
            Err(e) => {
                errors.push(format!("{what}: the pod template is not a valid pod: {e}"));
                continue;
            }
        };
        let rule = AccessRule::for_namespace(&ns, rules.get(&ns).cloned().flatten().as_deref());
        let (plan, targets) = match plan_pod(
            &pod,
            &ns,
            std::sync::Arc::new(rule),
            // `render` reads with the credentials of whoever runs it.
            &crate::identity::Identity::Own,
            source,
            settings,
        )
        .await
        {
            Planned::Nothing => {
                out.push(doc);
                continue;
            }
            Planned::Denied(reasons) => {
                errors.push(format!(
                    "{what} in namespace {ns}: sm-injector: {}",
                    reasons.0.join("; ")
                ));
                continue;
            }
            Planned::Plan { plan, targets, .. } => (plan, targets),
        };
        let (patch, w) = crate::patch::build(&pod, &plan, &targets);
        warnings.extend(w.into_iter().map(|w| format!("{what}: {w}")));
        let mut template = template;
        let applied = serde_json::from_slice::<json_patch::Patch>(&patch)
            .map_err(|e| e.to_string())
            .and_then(|p| json_patch::patch(&mut template, &p).map_err(|e| e.to_string()));
        if let Err(e) = applied {
            errors.push(format!("{what}: internal error applying the patch: {e}"));
            continue;
        }
        if ptr.is_empty() {
            doc = template;
        } else if let Some(slot) = doc.pointer_mut(ptr) {
            *slot = template;
        }
        out.push(doc);
        for b in &plan.backing {
            let Content::Fresh { value } = &b.content else {
                if let Content::Unreachable { reason, .. } = &b.content {
                    errors.push(format!("{what}: {reason}"));
                }
                continue;
            };
            if !seen.insert((ns.clone(), b.name.clone())) {
                continue;
            }
            let secret =
                match backing::object(&ns, &b.name, value, &b.version, b.form, &now_rfc3339()) {
                    Ok(s) => s,
                    Err(e) => {
                        errors.push(format!("{what}: {e}"));
                        continue;
                    }
                };
            let mut v = serde_json::to_value(&secret).expect("a Secret serializes");
            if !show_values {
                mask(&mut v);
            }
            secrets.push(v);
        }
    }
    if templates == 0 && errors.is_empty() {
        errors.push(
            "no pod template in the input: expected a Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or CronJob"
                .into(),
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    out.extend(secrets);
    Ok(Rendered {
        objects: out,
        warnings,
    })
}

/// Replaces a Secret's `data` with `stringData` placeholders that give only sizes.
fn mask(secret: &mut Value) {
    let Some(data) = secret.get("data").and_then(Value::as_object).cloned() else {
        return;
    };
    let masked: BTreeMap<String, String> = data
        .iter()
        .map(|(k, v)| {
            let len = v
                .as_str()
                .and_then(|b| {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD.decode(b).ok()
                })
                .map_or(0, |b| b.len());
            (
                k.clone(),
                format!("<masked: {len} bytes; --show-values shows it>"),
            )
        })
        .collect();
    let o = secret.as_object_mut().expect("a Secret is an object");
    o.remove("data");
    o.insert("stringData".into(), json!(masked));
}

/// Parses a `--secrets-file`: one JSON object mapping secret names to values; a
/// JSON object stands for a JSON SecretString, a string for a plain one.
pub fn parse_secrets_file(text: &str) -> Result<HashMap<String, Payload>, String> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("the secrets file is not JSON: {e}"))?;
    let Value::Object(map) = v else {
        return Err(
            "the secrets file must be one JSON object mapping secret names to values".into(),
        );
    };
    map.into_iter()
        .map(|(name, value)| match value {
            Value::String(s) => Ok((name, Payload::String(s))),
            Value::Object(_) => Ok((name, Payload::String(value.to_string()))),
            _ => Err(format!(
                "the secrets file: the value of {name:?} must be a JSON object (a JSON secret) or a string"
            )),
        })
        .collect()
}

/// Multi-document YAML, or a JSON `List`.
pub fn format(objects: &[Value], json_list: bool) -> Result<String, String> {
    if json_list {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
        return serde_json::to_string_pretty(&list).map_err(|e| e.to_string());
    }
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(o).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_lists_and_bad_input() {
        let docs =
            parse_documents("a: 1\nkind: X\n---\n---\nkind: List\nitems: [{kind: Y}, {kind: Z}]\n")
                .unwrap();
        assert_eq!(docs.len(), 3);
        assert!(
            parse_documents("kind: [unclosed")
                .unwrap_err()
                .contains("not valid YAML")
        );
        assert!(
            parse_documents("- just\n- a list\n")
                .unwrap_err()
                .contains("not a Kubernetes object")
        );
    }

    #[test]
    fn secrets_file_shapes() {
        let m = parse_secrets_file(r#"{"a/json": {"k": 1}, "a/plain": "text"}"#).unwrap();
        assert_eq!(m["a/json"], Payload::String(r#"{"k":1}"#.into()));
        assert_eq!(m["a/plain"], Payload::String("text".into()));
        assert!(
            parse_secrets_file(r#"{"a": 5}"#)
                .unwrap_err()
                .contains("\"a\"")
        );
        assert!(parse_secrets_file("[]").is_err());
    }

    #[test]
    fn masking_keeps_only_sizes() {
        let mut s = json!({"kind": "Secret", "data": {"k": "aHVudGVyMg=="}});
        mask(&mut s);
        assert!(s.get("data").is_none());
        assert_eq!(
            s["stringData"]["k"],
            "<masked: 7 bytes; --show-values shows it>"
        );
    }
}
