//! What the refresher does to workloads: rolls those that ask for it when
//! their pods run another version of a secret than its backing Secret holds, and records Warning Events on those whose secrets
//! fail to refresh or lose their access. Workloads come from the index (the
//! pods' own metadata), so nothing is read per pod.

use std::collections::{BTreeMap, BTreeSet};

use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};

use super::index::{Behind, Index, Key, Workload};
use super::rollout::{Rollouts, roll_to, template_uses};
use crate::annotations::{RESTART_ON_ROTATION, ROTATED_VERSIONS};
use crate::backing;
use crate::kube_error::kube_reason;

/// The API of a workload kind (`Deployment`, `StatefulSet`, else `DaemonSet`).
pub fn api(client: &kube::Client, ns: &str, kind: &str) -> Api<kube::core::DynamicObject> {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
    use kube::core::ApiResource;
    let resource = match kind {
        "Deployment" => ApiResource::erase::<Deployment>(&()),
        "StatefulSet" => ApiResource::erase::<StatefulSet>(&()),
        _ => ApiResource::erase::<DaemonSet>(&()),
    };
    Api::namespaced_with(client.clone(), ns, &resource)
}

/// Rolls, among `candidates` (workloads whose pods are behind, not yet
/// settled), those that carry `sm-injector.io/restart-on-rotation: "true"`
/// and whose template does not already name the versions they are behind on
/// ([`roll_to`]): their pod template gets the versions in
/// [`ROTATED_VERSIONS`], under the `resourceVersion` that was read, so their
/// own controller rolls them, once. `leading` is asked right before each
/// write. Returns how many were rolled.
pub async fn roll(
    client: &kube::Client,
    rollouts: &mut Rollouts,
    candidates: Vec<((String, Workload), Behind)>,
    leading: &(dyn Fn() -> bool + Sync),
) -> usize {
    let mut rolled = 0;
    for ((ns, w), behind) in candidates {
        let api = api(client, &ns, w.kind);
        let obj = match api.get(&w.name).await {
            Ok(o) => o,
            Err(kube::Error::Api(e)) if e.code == 404 => {
                rollouts.settled((ns, w), behind.wanted);
                continue;
            }
            Err(e) => {
                tracing::warn!(namespace = %ns, kind = w.kind, name = %w.name, error = %kube_reason(&e), "could not read the workload to roll it; trying again next pass");
                continue;
            }
        };
        let opted_in = obj
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(RESTART_ON_ROTATION))
            .is_some_and(|v| v == "true");
        let template: BTreeMap<String, String> = obj
            .data
            .pointer("/spec/template/metadata/annotations")
            .and_then(|a| a.get(ROTATED_VERSIONS))
            .and_then(|v| v.as_str())
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default();
        let Some(to) = roll_to(&template, &behind).filter(|_| opted_in) else {
            rollouts.settled((ns, w), behind.wanted);
            continue;
        };
        let annotations: BTreeMap<String, String> = obj
            .data
            .pointer("/spec/template/metadata/annotations")
            .and_then(|a| serde_json::from_value(a.clone()).ok())
            .unwrap_or_default();
        if !template_uses(&annotations, &behind.secrets) {
            tracing::info!(namespace = %ns, kind = w.kind, name = %w.name, secrets = ?behind.secrets, "not rolled: its pod template does not name the rotated secret");
            rollouts.settled((ns, w), behind.wanted);
            continue;
        }
        if !leading() {
            return rolled;
        }
        match owns(client, &ns, &w, &obj, &behind).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(namespace = %ns, kind = w.kind, name = %w.name, "not rolled: pods name it as their owner, but it owns none of them");
                rollouts.settled((ns, w), behind.wanted);
                continue;
            }
            Err(e) => {
                tracing::warn!(namespace = %ns, kind = w.kind, name = %w.name, error = %kube_reason(&e), "could not check what the workload owns; trying again next pass");
                continue;
            }
        }
        if !leading() {
            return rolled;
        }
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": obj.metadata.resource_version},
            "spec": {"template": {"metadata": {"annotations": {
                ROTATED_VERSIONS: serde_json::to_string(&to).expect("a map serializes")
            }}}}
        });
        let pp = PatchParams {
            field_manager: Some(backing::FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api.patch(&w.name, &pp, &Patch::Merge(&patch)).await {
            Ok(_) => {
                rolled += 1;
                tracing::info!(namespace = %ns, kind = w.kind, name = %w.name, secrets = ?behind.stale, "rolling the workload: its pods run another version of a secret than its backing Secret holds");
                rollouts.settled((ns, w), behind.wanted);
            }
            Err(e) => {
                tracing::warn!(namespace = %ns, kind = w.kind, name = %w.name, error = %kube_reason(&e), "could not roll the workload; trying again next pass")
            }
        }
    }
    rolled
}

/// Whether `obj` (the workload `w`, just read) owns the pods that named it:
/// a StatefulSet or DaemonSet is their owner by uid; a Deployment owns the
/// ReplicaSet they name (read here: its uid and its controller's uid).
async fn owns(
    client: &kube::Client,
    ns: &str,
    w: &Workload,
    obj: &kube::core::DynamicObject,
    behind: &Behind,
) -> Result<bool, kube::Error> {
    let Some(uid) = obj.metadata.uid.as_deref() else {
        return Ok(false);
    };
    if w.kind != "Deployment" {
        return Ok(behind.owners.contains_key(uid));
    }
    let sets: Api<k8s_openapi::api::apps::v1::ReplicaSet> = Api::namespaced(client.clone(), ns);
    for (rs_uid, rs_name) in &behind.owners {
        let Some(rs) = sets.get_opt(rs_name).await? else {
            continue;
        };
        let controlled_by_it = rs
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && o.uid == uid && o.kind == "Deployment");
        if rs.metadata.uid.as_deref() == Some(rs_uid.as_str()) && controlled_by_it {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A Warning Event `reason` on each workload using one of `items` (backing
/// Secret → what happened to it).
pub async fn warn(
    recorder: &Recorder,
    index: &Index,
    items: &BTreeMap<Key, String>,
    reason: &str,
    action: &str,
) {
    let keys: BTreeSet<Key> = items.keys().cloned().collect();
    for ((ns, w), uses) in index.workloads_using(&keys) {
        let what: Vec<&str> = uses
            .iter()
            .filter_map(|b| {
                items
                    .get(&Key {
                        namespace: ns.clone(),
                        backing: b.clone(),
                    })
                    .map(String::as_str)
            })
            .collect();
        let event = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(what.join("; ")),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference(&ns, &w)).await {
            tracing::warn!(namespace = %ns, kind = w.kind, name = %w.name, error = %kube_reason(&e), "could not record an Event");
        }
    }
}

fn reference(ns: &str, w: &Workload) -> k8s_openapi::api::core::v1::ObjectReference {
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(if w.kind == "Pod" { "v1" } else { "apps/v1" }.into()),
        kind: Some(w.kind.into()),
        name: Some(w.name.clone()),
        namespace: Some(ns.to_string()),
        ..Default::default()
    }
}
