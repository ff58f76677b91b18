//! What the refresher does to workloads: rolls those that ask for it when a
//! secret they use rotates, and records Warning Events on those whose secrets
//! fail to refresh or lose their access. Workloads come from the index (the
//! pods' own metadata), so nothing is read per pod.

use std::collections::{BTreeMap, BTreeSet};

use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};

use super::index::{Index, Key, Workload};
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

/// Rolls the Deployments, StatefulSets and DaemonSets that carry
/// `sm-injector.io/restart-on-rotation: "true"` and whose pods use a backing
/// Secret in `rotated` (→ its new version): their pod template gets the new
/// versions in [`ROTATED_VERSIONS`], so their own controller rolls them.
pub async fn roll(client: &kube::Client, index: &Index, rotated: &BTreeMap<Key, String>) -> usize {
    let keys: BTreeSet<Key> = rotated.keys().cloned().collect();
    let mut rolled = 0;
    for ((ns, w), uses) in index.workloads_using(&keys) {
        if w.kind == "Pod" {
            continue;
        }
        let api = api(client, &ns, w.kind);
        let opted_in = api
            .get_metadata(&w.name)
            .await
            .ok()
            .and_then(|o| o.metadata.annotations)
            .and_then(|a| a.get(RESTART_ON_ROTATION).cloned())
            .is_some_and(|v| v == "true");
        if !opted_in {
            continue;
        }
        let versions: BTreeMap<&String, &String> = uses
            .iter()
            .filter_map(|b| {
                let key = Key {
                    namespace: ns.clone(),
                    backing: b.clone(),
                };
                rotated.get_key_value(&key).map(|(k, v)| (&k.backing, v))
            })
            .collect();
        let patch = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
            ROTATED_VERSIONS: serde_json::to_string(&versions).expect("a map serializes")
        }}}}});
        let pp = PatchParams {
            field_manager: Some(backing::FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api.patch(&w.name, &pp, &Patch::Merge(&patch)).await {
            Ok(_) => {
                rolled += 1;
                tracing::info!(namespace = %ns, kind = w.kind, name = %w.name, "rolling the workload: a secret it injects has a new version");
            }
            Err(e) => {
                tracing::warn!(namespace = %ns, kind = w.kind, name = %w.name, error = %kube_reason(&e), "could not roll the workload")
            }
        }
    }
    rolled
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
