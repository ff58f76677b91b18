//! The collector's I/O: writes the planner's inventory marks and deletes the
//! backing Secrets that stayed unused (or revoked) for the grace period.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::planner::Planner;
use crate::backing::Key;
use crate::kube_error::kube_reason;
use crate::metrics::Metrics;
use crate::store::inventory::Inventory;

/// The collector: inventory marks, then deletions of what stayed unused
/// (or revoked) for the grace period.
pub async fn collect(
    client: &kube::Client,
    inventory: &Inventory,
    metrics: &Metrics,
    planner: &mut Planner,
    marks: BTreeMap<Key, Option<String>>,
    delete: Vec<Key>,
) {
    let mut by_ns: BTreeMap<String, BTreeMap<String, Option<String>>> = BTreeMap::new();
    for (k, m) in marks {
        by_ns.entry(k.namespace).or_default().insert(k.backing, m);
    }
    for key in delete {
        let api: Api<Secret> = Api::namespaced(client.clone(), &key.namespace);
        match api.delete(&key.backing, &Default::default()).await {
            Ok(_) => {
                metrics.secret_write("delete");
                tracing::info!(namespace = %key.namespace, backing = %key.backing, "deleted a backing Secret no pod has used (or may use) for the grace period");
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(namespace = %key.namespace, backing = %key.backing, error = %kube_reason(&e), "could not delete an unused backing Secret");
                continue;
            }
        }
        planner.deleted(&key);
        by_ns
            .entry(key.namespace)
            .or_default()
            .insert(key.backing, None);
    }
    for (ns, marks) in by_ns {
        if let Err(e) = inventory.mark(&ns, &marks).await {
            tracing::warn!(namespace = %ns, error = %e, "garbage collection skipped");
        }
    }
}
