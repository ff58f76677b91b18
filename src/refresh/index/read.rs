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
pub fn read_record(
    annotations: &BTreeMap<String, String>,
    limits: Limits,
) -> Option<Result<(Vec<Entry>, Duration), String>> {
    Some(check_record(annotations.get(INJECTED)?, limits))
}

/// [`read_record`] of the record's text.
pub(super) fn check_record(text: &str, limits: Limits) -> Result<(Vec<Entry>, Duration), String> {
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
    let mut entries = Vec::with_capacity(record.secrets.len());
    for e in record.secrets {
        let Ok(r) = reference::parse(&format!("{}?{}", e.secret, e.version)) else {
            return Err(format!("the entry {:?} is malformed", e.backing));
        };
        let Some(form) = Form::parse(&e.form) else {
            return Err(format!("the entry {:?} has no form", e.backing));
        };
        let scope = match &e.arn {
            None => None,
            Some(arn) => match backing::arn_scope(arn) {
                Some(s) => Some(s),
                None => return Err(format!("the entry {:?} has a bad ARN", e.backing)),
            },
        };
        if r.is_arn()
            || backing::name_scoped(&r.id, scope.as_deref(), &r.version, form) != e.backing
        {
            return Err(format!(
                "the entry {:?} is not the backing Secret sm-injector derives for {:?}",
                e.backing, e.secret
            ));
        }
        entries.push(Entry {
            backing: e.backing,
            fetch: FetchKey {
                id: e.arn.unwrap_or_else(|| r.id.clone()),
                version: r.version,
            },
            secret: r.id,
            form,
        });
    }
    Ok((entries, interval))
}

/// The versions a pod recorded ([`VERSIONS`]), one per record entry (`None`
/// where it recorded none, or the annotation is absent or unreadable).
pub(super) fn read_versions(
    annotations: &BTreeMap<String, String>,
    entries: &[Entry],
) -> Vec<Option<Box<str>>> {
    let all = annotations
        .get(VERSIONS)
        .and_then(|text| serde_json::from_str::<HashMap<String, String>>(text).ok())
        .unwrap_or_default();
    if all.is_empty() {
        return vec![];
    }
    entries
        .iter()
        .map(|e| all.get(&e.backing).map(|v| v.as_str().into()))
        .collect()
}

/// The workload a pod belongs to, from its own metadata: a ReplicaSet's pod
/// belongs to the Deployment whose name the ReplicaSet's name carries before
/// the pod's `pod-template-hash` (the Deployment controller's naming); bare
/// ReplicaSets and other owners have none. No API call.
pub fn workload(meta: &kube::api::ObjectMeta) -> Option<Workload> {
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let (kind, name) = match owner {
        None => ("Pod", meta.name.clone()?),
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
