//! External Secrets Operator's `ExternalSecret` (v1beta1 and v1) read as
//! sm-injector references: what each key of its target Secret would hold,
//! or why sm-injector cannot express it. Pure: documents in, targets out.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::reference::{self, SecretRef, Version};

/// What one ExternalSecret's target Secret holds, as references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    /// The target Secret's name (`spec.target.name`, else the ExternalSecret's).
    pub secret: String,
    /// The ExternalSecret, for messages: `ExternalSecret/<ns>/<name>`.
    pub from: String,
    /// Each `spec.data` entry: the Secret key and the reference giving it.
    pub keys: BTreeMap<String, String>,
    /// Each `spec.dataFrom.extract`: every top-level key of the secret.
    pub extracts: Vec<String>,
}

/// Where a document says it lives (`default` when it does not).
pub fn namespace_of(doc: &Value) -> String {
    doc.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string()
}

pub fn is_external_secret(doc: &Value) -> bool {
    doc.get("kind").and_then(Value::as_str) == Some("ExternalSecret")
        && doc
            .get("apiVersion")
            .and_then(Value::as_str)
            .is_some_and(|v| v == "external-secrets.io/v1" || v == "external-secrets.io/v1beta1")
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// What the input says of the store an ExternalSecret names.
enum Store {
    /// Not in the input.
    Unknown,
    /// AWS Secrets Manager; with the ServiceAccount whose token it exchanges
    /// for a role (`auth.jwt.serviceAccountRef`), if any.
    SecretsManager { service_account: Option<String> },
}

/// The store a document names is AWS Secrets Manager, as far as the input
/// shows: `Err` names the provider when a SecretStore or ClusterSecretStore
/// of that name in the input is something else.
fn store_is_secrets_manager(es: &Value, docs: &[Value]) -> Result<Store, String> {
    let name = str_at(es, "/spec/secretStoreRef/name").unwrap_or_default();
    let kind = str_at(es, "/spec/secretStoreRef/kind").unwrap_or("SecretStore");
    let ns = namespace_of(es);
    let Some(store) = docs.iter().find(|d| {
        d.get("kind").and_then(Value::as_str) == Some(kind)
            && str_at(d, "/metadata/name") == Some(name)
            && (kind == "ClusterSecretStore" || namespace_of(d) == ns)
    }) else {
        return Ok(Store::Unknown);
    };
    let provider = store
        .pointer("/spec/provider")
        .and_then(Value::as_object)
        .and_then(|p| p.keys().next().cloned())
        .unwrap_or_default();
    let service = str_at(store, "/spec/provider/aws/service").unwrap_or_default();
    if provider == "aws" && service == "SecretsManager" {
        Ok(Store::SecretsManager {
            service_account: str_at(store, "/spec/provider/aws/auth/jwt/serviceAccountRef/name")
                .map(String::from),
        })
    } else {
        Err(format!(
            "its store {kind}/{name} is {} (provider {provider:?}), not AWS Secrets Manager",
            if provider == "aws" {
                service
            } else {
                "another provider"
            }
        ))
    }
}

/// One remote reference (`remoteRef` or `extract`) as an sm-injector
/// reference: the key a secret name or ARN, `version` a stage or
/// `uuid/<id>`, `decodingStrategy` None or Base64.
fn reference(r: &Value, with_property: bool) -> Result<String, String> {
    let key = str_at(r, "/key").ok_or("it names no remote key")?;
    for unsupported in ["conversionStrategy", "metadataPolicy"] {
        if let Some(v) = str_at(r, &format!("/{unsupported}"))
            && v != "Default"
            && v != "None"
        {
            return Err(format!("{unsupported}: {v} has no sm-injector equivalent"));
        }
    }
    let version = match str_at(r, "/version") {
        None => Version::current(),
        Some(v) => match v.strip_prefix("uuid/") {
            Some(id) => Version::Id(id.to_owned().into()),
            None => Version::Stage(v.to_owned().into()),
        },
    };
    let decode = match str_at(r, "/decodingStrategy").unwrap_or("None") {
        "None" => false,
        "Base64" => true,
        other => {
            return Err(format!(
                "decodingStrategy: {other} has no sm-injector equivalent (decode=base64 is the standard alphabet)"
            ));
        }
    };
    let property = str_at(r, "/property");
    if let Some(p) = property {
        if !with_property {
            return Err(format!(
                "extract with property {p:?}: sm-injector's env-from takes every top-level key"
            ));
        }
        if p.contains('.') {
            return Err(format!(
                "property {p:?} is a path; sm-injector reads top-level keys only"
            ));
        }
    }
    let r = SecretRef {
        id: key,
        version,
        key: property,
        decode,
    };
    let text = r.to_string();
    // Only what the webhook will accept.
    reference::parse(&text).map_err(|e| format!("{text:?}: {e}"))?;
    Ok(text)
}

/// The target of the ExternalSecret `es`, or every reason it cannot be
/// expressed; `notes` gets what is assumed.
pub fn target(es: &Value, docs: &[Value], notes: &mut Vec<String>) -> Result<Target, Vec<String>> {
    let name = str_at(es, "/metadata/name").unwrap_or("?");
    let namespace = namespace_of(es);
    let from = format!("ExternalSecret/{namespace}/{name}");
    let mut errors = vec![];
    match store_is_secrets_manager(es, docs) {
        Ok(Store::SecretsManager {
            service_account: Some(sa),
        }) => notes.push(format!(
            "{from}: its store reads with ServiceAccount {sa}'s role; for sm-injector to read with the pods' own ServiceAccount role instead of its own, annotate namespace {namespace} sm-injector.io/aws-identity=serviceaccount (README, workload identity)"
        )),
        Ok(Store::SecretsManager {
            service_account: None,
        }) => {}
        Ok(Store::Unknown) => notes.push(format!(
            "{from}: its store {} is not in the input; assumed to be AWS Secrets Manager in the account and region sm-injector reads",
            str_at(es, "/spec/secretStoreRef/name").unwrap_or("?")
        )),
        Err(e) => errors.push(e),
    }
    if es.pointer("/spec/target/template").is_some() {
        errors.push("spec.target.template: templated values have no sm-injector equivalent".into());
    }
    let mut keys = BTreeMap::new();
    for (i, d) in es
        .pointer("/spec/data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let secret_key = str_at(d, "/secretKey").unwrap_or_default();
        if d.pointer("/sourceRef").is_some() {
            errors.push(format!("spec.data[{i}] ({secret_key}): sourceRef (a generator or another store) has no sm-injector equivalent"));
            continue;
        }
        match d
            .get("remoteRef")
            .ok_or_else(|| "it has no remoteRef".to_string())
            .and_then(|r| reference(r, true))
        {
            Ok(r) => {
                keys.insert(secret_key.to_string(), r);
            }
            Err(e) => errors.push(format!("spec.data[{i}] ({secret_key}): {e}")),
        }
    }
    let mut extracts = vec![];
    for (i, d) in es
        .pointer("/spec/dataFrom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let unsupported = ["find", "sourceRef", "rewrite"]
            .into_iter()
            .find(|k| d.get(*k).is_some());
        match (d.get("extract"), unsupported) {
            (_, Some(k)) => errors.push(format!(
                "spec.dataFrom[{i}]: {k} has no sm-injector equivalent (it reads named secrets)"
            )),
            (Some(x), None) => match reference(x, false) {
                Ok(r) => extracts.push(r),
                Err(e) => errors.push(format!("spec.dataFrom[{i}]: {e}")),
            },
            (None, None) => errors.push(format!("spec.dataFrom[{i}]: no extract")),
        }
    }
    if !errors.is_empty() {
        return Err(errors.into_iter().map(|e| format!("{from}: {e}")).collect());
    }
    Ok(Target {
        secret: str_at(es, "/spec/target/name").unwrap_or(name).to_string(),
        namespace,
        from,
        keys,
        extracts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn es(spec: Value) -> Value {
        json!({"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
               "metadata": {"name": "app-secrets", "namespace": "app"}, "spec": spec})
    }

    fn store(provider: Value) -> Value {
        json!({"apiVersion": "external-secrets.io/v1", "kind": "SecretStore",
               "metadata": {"name": "aws", "namespace": "app"}, "spec": {"provider": provider}})
    }

    #[test]
    fn data_and_extracts_become_references() {
        let e = es(json!({
            "secretStoreRef": {"name": "aws", "kind": "SecretStore"},
            "target": {"name": "app-env"},
            "data": [
                {"secretKey": "DB_URL", "remoteRef": {"key": "app/postgres", "property": "url"}},
                {"secretKey": "OLD", "remoteRef": {"key": "app/postgres", "property": "url", "version": "AWSPREVIOUS"}},
                {"secretKey": "PINNED", "remoteRef": {"key": "app/token", "version": "uuid/0b5e"}},
                {"secretKey": "BUNDLE", "remoteRef": {"key": "app/scylladb", "property": "bundle", "decodingStrategy": "Base64"}}
            ],
            "dataFrom": [{"extract": {"key": "app/redis"}}]
        }));
        let docs = vec![
            e.clone(),
            store(json!({"aws": {"service": "SecretsManager", "region": "eu-west-1"}})),
        ];
        let mut notes = vec![];
        let t = target(&e, &docs, &mut notes).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(
            (t.namespace.as_str(), t.secret.as_str()),
            ("app", "app-env")
        );
        assert_eq!(t.keys["DB_URL"], "app/postgres#url");
        assert_eq!(t.keys["OLD"], "app/postgres?versionStage=AWSPREVIOUS#url");
        assert_eq!(t.keys["PINNED"], "app/token?versionId=0b5e");
        assert_eq!(t.keys["BUNDLE"], "app/scylladb?decode=base64#bundle");
        assert_eq!(t.extracts, ["app/redis"]);
    }

    #[test]
    fn what_has_no_equivalent_is_refused_by_name() {
        let e = es(json!({
            "secretStoreRef": {"name": "vault"},
            "target": {"template": {"data": {"x": "{{ .a }}"}}},
            "data": [
                {"secretKey": "A", "remoteRef": {"key": "app/a", "property": "nested.path"}},
                {"secretKey": "B", "remoteRef": {"key": "app/b", "decodingStrategy": "Auto"}},
                {"secretKey": "C", "sourceRef": {"generatorRef": {"kind": "Password", "name": "p"}}}
            ],
            "dataFrom": [{"find": {"name": {"regexp": ".*"}}}, {"extract": {"key": "app/c", "property": "x"}}]
        }));
        let vault = json!({"apiVersion": "external-secrets.io/v1beta1", "kind": "SecretStore",
            "metadata": {"name": "vault", "namespace": "app"}, "spec": {"provider": {"vault": {}}}});
        let errors = target(&e, &[e.clone(), vault], &mut vec![]).unwrap_err();
        let all = errors.join("\n");
        for said in [
            "ExternalSecret/app/app-secrets: its store SecretStore/vault is another provider (provider \"vault\")",
            "spec.target.template: templated values",
            "spec.data[0] (A): property \"nested.path\" is a path",
            "spec.data[1] (B): decodingStrategy: Auto",
            "spec.data[2] (C): sourceRef",
            "spec.dataFrom[0]: find has no sm-injector equivalent",
            "spec.dataFrom[1]: extract with property \"x\"",
        ] {
            assert!(all.contains(said), "{said}\n{all}");
        }
    }

    #[test]
    fn a_store_not_in_the_input_is_assumed_with_a_note() {
        let e = es(json!({"secretStoreRef": {"name": "elsewhere"}, "data": [
            {"secretKey": "K", "remoteRef": {"key": "app/k"}}]}));
        let mut notes = vec![];
        let t = target(&e, std::slice::from_ref(&e), &mut notes).unwrap();
        assert_eq!(
            t.secret, "app-secrets",
            "the ExternalSecret's name by default"
        );
        assert_eq!(t.keys["K"], "app/k");
        assert!(
            notes[0].contains("store elsewhere is not in the input"),
            "{notes:?}"
        );
    }
}
