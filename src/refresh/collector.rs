//! The collector's I/O: writes the planner's inventory marks and deletes the
//! backing Secrets that stayed unused (or revoked) for the grace period.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::planner::Planner;
use crate::backing::Key;
use crate::metrics::Metrics;
use crate::store::delete_backing;
use crate::store::inventory::Inventory;

/// What the planner decided for the collector.
#[derive(Debug, Default)]
pub struct Work {
    /// Inventory changes: `Some(mark)` to set, `None` to remove.
    pub marks: BTreeMap<Key, Option<String>>,
    /// Unused (or revoked) for the grace period: to delete.
    pub delete: Vec<Key>,
    /// Namespaces that are gone: their inventory ConfigMaps are dropped.
    pub vanished: Vec<String>,
}

/// The collector: deletions of what stayed unused (or revoked) for the grace
/// period, each under the `resourceVersion` just read, so that a Secret an
/// admission wrote again meanwhile stays; then the inventory marks; then the
/// inventories of namespaces that are gone. Nothing is deleted once `leading`
/// says the Lease is lost.
pub async fn collect(
    client: &kube::Client,
    inventory: &Inventory,
    metrics: &Metrics,
    planner: &mut Planner,
    work: Work,
    leading: &(dyn Fn() -> bool + Sync),
) {
    let mut by_ns: BTreeMap<String, BTreeMap<String, Option<String>>> = BTreeMap::new();
    for (k, m) in work.marks {
        by_ns.entry(k.namespace).or_default().insert(k.backing, m);
    }
    for key in work.delete {
        if !leading() {
            return;
        }
        let api: Api<Secret> = Api::namespaced(client.clone(), &key.namespace);
        metrics.secret_read("collect");
        match delete_backing(&api, &key.backing).await {
            Ok(true) => {
                metrics.secret_write("delete");
                tracing::info!(namespace = %key.namespace, backing = %key.backing, "deleted a backing Secret no pod has used (or may use) for the grace period");
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(namespace = %key.namespace, backing = %key.backing, error = %e, "could not delete an unused backing Secret");
                continue;
            }
        }
        planner.deleted(&key, std::time::SystemTime::now());
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
    for ns in work.vanished {
        if !leading() {
            return;
        }
        match inventory.drop_namespace(&ns).await {
            Ok(()) => {
                tracing::info!(namespace = %ns, "dropped the inventory of a namespace that was deleted")
            }
            Err(e) => {
                tracing::warn!(namespace = %ns, error = %e, "could not drop the inventory of a deleted namespace")
            }
        }
    }
}
