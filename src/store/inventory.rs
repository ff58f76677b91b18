//! The collector's inventory: every backing Secret sm-injector has written,
//! with a mark ([`crate::refresh::planner::Marks`]). One ConfigMap per tenant
//! namespace, in sm-injector's own namespace (`<prefix>-<namespace>`), so no
//! single object bounds it (1 MiB holds about 20,000 backing Secrets of one
//! namespace). Every writer records a Secret here *before* writing it, so a
//! Secret written for a pod that a later admission stage rejected is known and
//! collected.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;

use crate::backing::Key;
use crate::backing::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::kube_error::kube_reason;
use crate::lookup::{Hashing, Strs};

/// The label that names the tenant namespace an inventory ConfigMap is for.
pub const INVENTORY_OF: &str = "sm-injector.io/inventory-of";

/// The annotation the leader changes on a namespace's inventory ConfigMap
/// right after it moved one of the namespace's backing Secrets to another
/// version (read by every replica: [`super::moves`]).
pub const MOVED: &str = "sm-injector.io/moved";

/// The start of a mark that asks the refresher's leader to check a backing
/// Secret now: an admission fetched a version the Secret does not hold.
pub const NUDGE: &str = "due:";

/// The mark an admission leaves when it fetched `version` and the backing
/// Secret holds something else.
pub fn nudge_mark(version: &str) -> String {
    format!("{NUDGE}{version}")
}

#[derive(Clone)]
pub struct Inventory {
    api: Api<ConfigMap>,
    /// The same ConfigMaps' metadata only (what replicas watch).
    meta: Api<PartialObjectMeta<ConfigMap>>,
    prefix: String,
    /// Recorded by this process lately: not recorded again.
    recorded: moka::future::Cache<(String, String), (), Hashing>,
}

/// How [`Inventory::mark`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    /// The namespace's ConfigMap existed.
    Patched,
    /// It did not: this write made it.
    Made,
}

impl Inventory {
    /// ConfigMaps `<prefix>-<namespace>` in `namespace` (sm-injector's own).
    pub fn new(client: kube::Client, namespace: &str, prefix: &str, ttl: Duration) -> Self {
        Inventory {
            meta: Api::namespaced(client.clone(), namespace),
            api: Api::namespaced(client, namespace),
            prefix: prefix.to_string(),
            recorded: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build_with_hasher(Hashing::default()),
        }
    }

    pub fn api(&self) -> &Api<ConfigMap> {
        &self.api
    }

    /// [`Inventory::api`] for the ConfigMaps' metadata only.
    pub fn metadata_api(&self) -> &Api<PartialObjectMeta<ConfigMap>> {
        &self.meta
    }

    /// The start of every inventory ConfigMap's name.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Stamps `namespace`'s inventory with a new [`MOVED`]
    /// value: the leader has just moved one of its backing Secrets to another
    /// version, and every replica's admissions are to read them again. An
    /// inventory that does not exist needs no stamp (nothing was written).
    pub async fn stamp_moved(&self, namespace: &str) -> Result<(), String> {
        let name = format!("{}-{namespace}", self.prefix);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros()
            .to_string();
        let patch = serde_json::json!({"metadata": {"annotations": {MOVED: stamp}}});
        match self
            .api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(format!(
                "cannot stamp the inventory ConfigMap {name}: {}",
                kube_reason(&e)
            )),
        }
    }

    /// Records that `backings` in `namespace` are (about to be) written and
    /// used, in one write for those not recorded lately. True when that
    /// write made the namespace's inventory: sm-injector has written nothing
    /// in the namespace before, so its backing Secrets are most likely absent.
    /// `absent` (asked only when there is something to write): whether the
    /// inventory is believed not to exist yet
    /// ([`super::moves::Moves::has_inventory`]), so that it is created first
    /// rather than patched first (and patched after all if it exists).
    pub async fn record<'a>(
        &self,
        namespace: &str,
        backings: impl IntoIterator<Item = &'a str>,
        absent: impl FnOnce() -> bool,
    ) -> Result<bool, String> {
        let keys: Vec<(String, String)> = backings
            .into_iter()
            .filter(|b| !self.recorded.contains_key(&Strs([namespace, b])))
            .map(|b| (namespace.to_string(), b.to_string()))
            .collect();
        if keys.is_empty() {
            return Ok(false);
        }
        let marks = keys
            .iter()
            .map(|(_, b)| (b.clone(), Some(String::new())))
            .collect();
        let made = self.write(namespace, &marks, absent()).await?;
        for k in keys {
            self.recorded.insert(k, ()).await;
        }
        Ok(made == Marked::Made)
    }

    /// Sets (`Some`) or removes (`None`) marks in `namespace`'s ConfigMap, with
    /// a merge patch (so concurrent writers of other keys are not undone),
    /// creating it when absent.
    pub async fn mark(
        &self,
        namespace: &str,
        marks: &BTreeMap<String, Option<String>>,
    ) -> Result<Marked, String> {
        self.write(namespace, marks, false).await
    }

    /// [`Inventory::mark`], creating the ConfigMap first when `absent`.
    async fn write(
        &self,
        namespace: &str,
        marks: &BTreeMap<String, Option<String>>,
        absent: bool,
    ) -> Result<Marked, String> {
        let name = format!("{}-{namespace}", self.prefix);
        let patch = serde_json::json!({ "data": marks });
        let fail = |e: &kube::Error| {
            format!(
                "cannot write the inventory ConfigMap {name}: {}",
                kube_reason(e)
            )
        };
        for attempt in 0..3 {
            if attempt > 0 || !absent {
                match self
                    .api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => return Ok(Marked::Patched),
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(fail(&e)),
                }
            }
            let data: BTreeMap<String, String> = marks
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
                .collect();
            let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "labels": {
                    MANAGED_BY_LABEL: MANAGED_BY_VALUE,
                    INVENTORY_OF: namespace,
                }},
                "data": data,
            }))
            .expect("a ConfigMap");
            match self.api.create(&PostParams::default(), &cm).await {
                Ok(_) => return Ok(Marked::Made),
                // Created by another writer meanwhile: patch it.
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(fail(&e)),
            }
        }
        Err(format!(
            "cannot write the inventory ConfigMap {name}: it kept changing"
        ))
    }
}

impl Inventory {
    /// Deletes the inventory ConfigMap of `namespace` (a namespace that is
    /// gone, and its backing Secrets with it).
    pub async fn drop_namespace(&self, namespace: &str) -> Result<(), String> {
        let name = format!("{}-{namespace}", self.prefix);
        match self.api.delete(&name, &Default::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(format!(
                "cannot delete the inventory ConfigMap {name}: {}",
                kube_reason(&e)
            )),
        }
    }
}

impl Inventory {
    /// The marks one inventory ConfigMap holds. Its tenant namespace is the
    /// one its name (`<prefix>-<namespace>`) gives, which its label must
    /// repeat: a ConfigMap naming one namespace and labelled for another is
    /// read as holding nothing, so that no mark is taken for a namespace it
    /// was not written for.
    pub fn read(&self, cm: &ConfigMap) -> Vec<(Key, String)> {
        read_with_prefix(&self.prefix, cm)
    }
}

/// The tenant namespace of an inventory ConfigMap (`meta`): the one its name
/// (`<prefix>-<namespace>`) gives, which its label must repeat.
pub fn tenant<'a>(prefix: &str, meta: &'a ObjectMeta) -> Option<&'a str> {
    let ns = meta
        .name
        .as_deref()
        .and_then(|n| n.strip_prefix(prefix)?.strip_prefix('-'));
    let label = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(INVENTORY_OF))
        .map(String::as_str);
    ns.filter(|ns| !ns.is_empty() && Some(*ns) == label)
}

fn read_with_prefix(prefix: &str, cm: &ConfigMap) -> Vec<(Key, String)> {
    let Some(ns) = tenant(prefix, &cm.metadata) else {
        return vec![];
    };
    cm.data
        .iter()
        .flatten()
        .map(|(backing, mark)| {
            (
                Key {
                    namespace: ns.to_string(),
                    backing: backing.clone(),
                },
                mark.clone(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(name: &str, label: Option<&str>) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.into());
        c.metadata.labels = label.map(|l| [(INVENTORY_OF.to_string(), l.to_string())].into());
        c.data = Some([("sm-n-db-1".to_string(), "mark".to_string())].into());
        c
    }

    #[test]
    fn the_namespace_comes_from_the_name_and_the_label_must_agree() {
        let p = "sm-injector-refresher-inventory";
        let marks = read_with_prefix(p, &cm(&format!("{p}-team-a"), Some("team-a")));
        assert_eq!(marks.len(), 1);
        assert_eq!(marks[0].0.namespace, "team-a");
        // Labelled for another namespace, or not labelled, or not ours: nothing.
        assert!(read_with_prefix(p, &cm(&format!("{p}-team-a"), Some("kube-system"))).is_empty());
        assert!(read_with_prefix(p, &cm(&format!("{p}-team-a"), None)).is_empty());
        assert!(read_with_prefix(p, &cm("other-team-a", Some("team-a"))).is_empty());
        assert!(read_with_prefix(p, &cm(&format!("{p}-"), Some(""))).is_empty());
    }
}
