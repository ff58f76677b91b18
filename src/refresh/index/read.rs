//! Reading what a pod's metadata says: its record (checked against what the
//! webhook writes), the versions it ran, and the workload it belongs to.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::annotations::{INJECTED, VERSIONS};
use crate::backing::{self, Form};
use crate::fetch::FetchKey;
use crate::record::Record;
use crate::reference;

use super::{Entry, Limits, Workload};

/// Reads and checks a pod's record: its entries and its interval (clamped), or
/// why it is refused.
/// A record, checked: its entries, its interval, and the ServiceAccount
/// whose role read them (if not sm-injector's own).
pub type Read = (Vec<Entry>, Duration, Option<String>);

pub fn read_record(
    annotations: &BTreeMap<String, String>,
    limits: Limits,
) -> Option<Result<Read, String>> {
    Some(check_record(annotations.get(INJECTED)?, limits))
}

/// [`read_record`] of the record's text.
pub(super) fn check_record(text: &str, limits: Limits) -> Result<Read, String> {
    let record: Record = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(_) => return Err("the record is not sm-injector's JSON".into()),
    };
    if record.secrets.len() > limits.max_entries {
        return Err(format!(
            "the record has {} entries; at most {}",
            record.secrets.len(),
            limits.max_entries
        ));
    }
    let interval = match humantime::parse_duration(&record.refresh_interval) {
        Ok(d) => d.max(limits.min_interval),
        Err(_) => return Err("the record's refresh interval is not a duration".into()),
    };
    // A ServiceAccount name (DNS-1123 subdomain). Naming another account of
    // the namespace gains nothing: whoever may create pods there may run as it.
    if let Some(sa) = &record.service_account
        && (sa.is_empty()
            || sa.len() > 253
            || !sa
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'))
    {
        return Err("the record's ServiceAccount is not a ServiceAccount name".into());
    }
    let mut entries = Vec::with_capacity(record.secrets.len());
    for e in record.secrets {
        // What names the entry in a message: its backing Secret where the
        // record gives one (earlier builds), else its secret.
        let label = e.backing.as_deref().unwrap_or(&e.secret);
        let text = format!("{}?{}", e.secret, e.version);
        let Ok(r) = reference::parse(&text) else {
            return Err(format!("the entry {label:?} is malformed"));
        };
        let Some(form) = Form::parse(&e.form) else {
            return Err(format!("the entry {label:?} has no form"));
        };
        let scope = match &e.arn {
            None => None,
            // The ARN is what is fetched, the name what the rule is checked
            // against: they must name the same secret. (The ARN is not
            // quoted back: it may be another tenant's.)
            Some(arn) if !backing::arn_names(arn, &e.secret) => {
                return Err(format!(
                    "the entry {label:?} has an ARN that does not name its secret"
                ));
            }
            Some(arn) => match backing::arn_scope(arn) {
                Some(s) => Some(s),
                None => return Err(format!("the entry {label:?} has a bad ARN")),
            },
        };
        if r.is_arn() {
            return Err(format!(
                "the entry {label:?} names its secret by ARN where a name belongs"
            ));
        }
        let derived = backing::name_scoped(r.id, scope.as_deref(), &r.version, form);
        // Records of earlier releases name the backing Secret, some with a
        // 32-bit hash; theirs are still refreshed until their pods are gone.
        let backing = match e.backing {
            None => derived,
            Some(b) if b == derived => derived,
            Some(b)
                if b == backing::legacy_name_scoped(r.id, scope.as_deref(), &r.version, form) =>
            {
                b
            }
            Some(b) => {
                return Err(format!(
                    "the entry {b:?} is not the backing Secret sm-injector derives for {:?}",
                    e.secret
                ));
            }
        };
        entries.push(Entry {
            backing,
            fetch: FetchKey {
                id: e.arn.unwrap_or_else(|| r.id.to_string()),
                version: r.version,
            },
            secret: r.id.to_string(),
            form,
        });
    }
    // The webhook denies a pod whose references need more calls than this.
    let calls =
        crate::quota::calls_for(&entries.iter().map(|e| e.fetch.clone()).collect::<Vec<_>>());
    if calls as usize > limits.max_calls {
        return Err(format!(
            "the record needs {calls} Secrets Manager calls; the webhook allows at most {} a pod",
            limits.max_calls
        ));
    }
    Ok((entries, interval, record.service_account))
}

/// The versions a pod recorded ([`VERSIONS`]), one per record entry (`None`
/// where it recorded none, or the annotation is absent or unreadable): an
/// array in the record's order, or (earlier builds) an object by backing
/// Secret.
pub(super) fn read_versions(
    annotations: &BTreeMap<String, String>,
    entries: &[Entry],
) -> Vec<Option<Box<str>>> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Recorded {
        InOrder(Vec<Option<String>>),
        ByBacking(HashMap<String, String>),
    }
    let Some(recorded) = annotations
        .get(VERSIONS)
        .and_then(|text| serde_json::from_str::<Recorded>(text).ok())
    else {
        return vec![];
    };
    match recorded {
        Recorded::InOrder(v) if v.len() == entries.len() && v.iter().any(Option::is_some) => {
            v.into_iter().map(|v| v.map(Into::into)).collect()
        }
        Recorded::ByBacking(all) if !all.is_empty() => entries
            .iter()
            .map(|e| all.get(&e.backing).map(|v| v.as_str().into()))
            .collect(),
        _ => vec![],
    }
}

/// The workload a pod belongs to, from its own metadata: a ReplicaSet's pod
/// belongs to the Deployment whose name the ReplicaSet's name carries before
/// the pod's `pod-template-hash` (the Deployment controller's naming); bare
/// ReplicaSets and other owners have none. No API call.
pub fn workload(meta: &kube::api::ObjectMeta) -> Option<Workload> {
    let owner = controller(meta);
    let (kind, name) = match owner {
        None => ("Pod", meta.name.clone()?),
        Some(o) if o.api_version != "apps/v1" => return None,
        Some(o) if o.kind == "StatefulSet" => ("StatefulSet", o.name.clone()),
        Some(o) if o.kind == "DaemonSet" => ("DaemonSet", o.name.clone()),
        Some(o) if o.kind == "ReplicaSet" => {
            let hash = meta.labels.as_ref()?.get("pod-template-hash")?;
            let name = o.name.strip_suffix(&format!("-{hash}"))?;
            ("Deployment", name.to_string())
        }
        Some(_) => return None,
    };
    Some(Workload { kind, name })
}

fn controller(
    meta: &kube::api::ObjectMeta,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

/// The uid and name of the pod's controlling owner of `apps/v1` (its
/// ReplicaSet, StatefulSet or DaemonSet), which a rollout checks against the
/// workload it reads before writing: a pod's ownerReferences are written by
/// whoever created it.
pub fn owner(meta: &kube::api::ObjectMeta) -> Option<(String, String)> {
    controller(meta)
        .filter(|o| o.api_version == "apps/v1")
        .map(|o| (o.uid.clone(), o.name.clone()))
}
