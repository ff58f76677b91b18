//! What the pods sm-injector mutated use, from their records
//! ([`crate::annotations::INJECTED`]). Pure: fed by a pod metadata watch with
//! [`Index::apply`], [`Index::delete`] and [`Index::restart`], and tested without
//! an API server (in the manner of linkerd's policy-controller indexes).
//!
//! A record is on a pod, and any tenant who can create pods can write one. So
//! a record is taken only when every entry is exactly what the webhook writes:
//! the backing name derived from the secret, scope, version and form, at most
//! [`Limits::max_entries`] entries, an interval no shorter than the minimum.
//! Anything else refuses the whole record. Whether the namespace may read the
//! secret is decided later, against its current rule ([`super::planner`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::core::PartialObjectMeta;

use crate::annotations::{INJECTED, VERSIONS};
#[cfg(test)]
use crate::backing;
use crate::backing::Form;
use crate::fetch::FetchKey;
#[cfg(test)]
use crate::reference::Version;

pub use crate::backing::Key;
use read::{check_record, read_versions};
pub use read::{owner, read_record, workload};

mod bounds;
mod groups;
mod read;
mod shared;
#[cfg(test)]
mod written;
#[cfg(test)]
pub use written::{record_for, record_in_full};

use shared::Shared;

/// What a workload's pods are behind on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Behind {
    /// Every backing Secret its pods use whose held version is known, with it.
    pub wanted: BTreeMap<String, String>,
    /// Those some pod runs another version of.
    pub stale: BTreeSet<String>,
    /// The secrets of those, by name: the workload's template must still
    /// name one of them to be rolled.
    pub secrets: BTreeSet<String>,
    /// The controlling owners (uid → name) its pods name: the workload must
    /// own one of them to be rolled.
    pub owners: BTreeMap<String, String>,
}

/// One entry of a record, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub backing: String,
    /// The canonical secret name (what the access rule is checked against).
    pub secret: String,
    /// What to ask Secrets Manager: the ARN when the pod named one, else the name.
    pub fetch: FetchKey,
    pub form: Form,
}

/// A workload that pods belong to: `Deployment`, `StatefulSet`, `DaemonSet`,
/// or `Pod` for a pod no controller owns.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload {
    pub kind: &'static str,
    pub name: String,
}

/// A record, checked: its entries and its interval (clamped).
#[derive(Debug, PartialEq, Eq)]
struct Checked {
    entries: Vec<Entry>,
    interval: Duration,
    /// The ServiceAccount whose role read the secrets, if not sm-injector's own.
    account: Option<String>,
}

/// The versions a pod recorded, one per record entry.
type Versions = [Option<Box<str>>];

/// What the refresher keeps of a pod. The record and the versions are
/// shared by every pod that carries the same text (a workload's replicas, a
/// Deployment applied in many namespaces): at 10,000 pods the index holds
/// one copy per distinct record, not one per pod.
#[derive(Debug, Clone)]
struct PodUse {
    record: Arc<Checked>,
    workload: Option<Workload>,
    /// Its controlling owner's uid and name ([`read::owner`]).
    owner: Option<(String, String)>,
    /// The version of each backing Secret the pod's admission saw it hold
    /// ([`VERSIONS`]): what its containers read. Empty for pods admitted
    /// before sm-injector recorded it. One per entry, in the same order.
    versions: Arc<Versions>,
}

/// One backing Secret in use, over every pod that uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub secret: String,
    pub fetch: FetchKey,
    pub form: Form,
    /// The shortest refresh interval among its pods.
    pub interval: Duration,
    /// Whose identities its pods read it with: a ServiceAccount of the
    /// namespace, or `None` for sm-injector's own.
    pub readers: BTreeSet<Option<String>>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Entries a record may have (the webhook writes at most
    /// [`crate::plan::MAX_BACKING_PER_POD`]).
    pub max_entries: usize,
    /// Shorter intervals are raised to this.
    pub min_interval: Duration,
    /// Secrets Manager calls a record's entries may need (the webhook's
    /// `--max-secretsmanager-calls-per-pod`).
    pub max_calls: usize,
    /// Pods with records, and distinct secret versions they name, one
    /// namespace may have; records past either are refused.
    pub max_records_per_namespace: usize,
    pub max_secrets_per_namespace: usize,
}

pub struct Index {
    limits: Limits,
    pods: HashMap<(String, String), PodUse>,
    /// Pods whose record was refused, so that each is reported once.
    refused: HashSet<(String, String)>,
    records: Shared<Checked>,
    /// Keyed by the record's text and the versions' text together.
    versions: Shared<Versions>,
    /// Pods removed or changed since the shared texts were last pruned.
    dropped: usize,
    /// What each namespace's records hold, to bound it.
    namespaces: bounds::Namespaces,
    /// The pods as a planning reads them.
    groups: groups::Groups,
}

impl Index {
    pub fn new(limits: Limits) -> Self {
        Index {
            limits,
            pods: HashMap::new(),
            refused: HashSet::new(),
            records: Shared::default(),
            versions: Shared::default(),
            dropped: 0,
            namespaces: bounds::Namespaces::default(),
            groups: groups::Groups::default(),
        }
    }

    /// Removes a pod; the shared texts are pruned once as many pods went as
    /// texts are kept (amortised: a pod costs O(1)).
    fn remove(&mut self, key: &(String, String)) {
        if let Some(p) = self.pods.remove(key) {
            self.namespaces.count(&key.0, &p.record.entries, false);
            self.groups.remove(&key.0, &p);
            self.forget_one();
        }
    }

    fn forget_one(&mut self) {
        self.dropped += 1;
        if self.dropped > self.records.len() + self.versions.len() + 64 {
            self.records.prune();
            self.versions.prune();
            self.dropped = 0;
        }
    }

    /// The pod's record, checked once per distinct text.
    fn checked(&mut self, text: &str) -> Result<Arc<Checked>, String> {
        if let Some(c) = self.records.get(text) {
            return Ok(c);
        }
        let (entries, interval, account) = check_record(text, self.limits)?;
        Ok(self.records.insert(
            text,
            Arc::new(Checked {
                entries,
                interval,
                account,
            }),
        ))
    }

    fn shared_versions(
        &mut self,
        record: &str,
        annotations: &BTreeMap<String, String>,
        entries: &[Entry],
    ) -> Arc<Versions> {
        let Some(text) = annotations.get(VERSIONS) else {
            return Arc::from(Vec::new());
        };
        let key = format!("{record}\n{text}");
        if let Some(v) = self.versions.get(&key) {
            return v;
        }
        let v: Arc<Versions> = Arc::from(read_versions(annotations, entries));
        self.versions.insert(&key, v)
    }

    /// A pod was added or changed. Returns the reason when its record is
    /// refused for the first time (to log and count once per pod).
    pub fn apply(&mut self, pod: &PartialObjectMeta<Pod>) -> Option<String> {
        let m = &pod.metadata;
        let key = (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        );
        let empty = BTreeMap::new();
        let annotations = m.annotations.as_ref().unwrap_or(&empty);
        let Some(text) = annotations.get(INJECTED) else {
            self.remove(&key);
            return None;
        };
        // The pod's own earlier record does not count against it.
        if let Some(old) = self.pods.remove(&key) {
            self.namespaces.count(&key.0, &old.record.entries, false);
            self.groups.remove(&key.0, &old);
            self.forget_one();
        }
        let checked = self.checked(text).and_then(|record| {
            match self.namespaces.over(&key.0, &record.entries, &self.limits) {
                Some(why) => Err(why),
                None => Ok(record),
            }
        });
        match checked {
            Ok(record) => {
                self.refused.remove(&key);
                let versions = self.shared_versions(text, annotations, &record.entries);
                self.namespaces.count(&key.0, &record.entries, true);
                let pod = PodUse {
                    record,
                    workload: workload(m),
                    owner: read::owner(m),
                    versions,
                };
                self.groups.add(&key.0, &pod);
                self.pods.insert(key, pod);
                None
            }
            Err(reason) => {
                self.remove(&key);
                self.refused.insert(key).then_some(reason)
            }
        }
    }

    pub fn delete(&mut self, pod: &PartialObjectMeta<Pod>) {
        let m = &pod.metadata;
        let key = (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        );
        self.remove(&key);
        self.refused.remove(&key);
    }

    /// A watch restarted: the pods come again; which were refused is kept,
    /// so that each is still reported once.
    pub fn restart(&mut self) {
        self.pods.clear();
        self.namespaces.clear();
        self.groups.clear();
        self.records.prune();
        self.versions.prune();
    }

    /// Every backing Secret in use, with the shortest interval among its pods.
    /// Pods of one namespace that share a record (a workload's replicas) are
    /// looked at once (`groups.rs`): a planning costs a step per backing
    /// Secret and record of a namespace, not one per pod and entry.
    pub fn in_use(&self) -> BTreeMap<Key, Want> {
        let mut out: BTreeMap<Key, Want> = BTreeMap::new();
        for (ns, uses) in self.groups.uses() {
            let record = &uses.record;
            for e in &record.entries {
                let key = Key {
                    namespace: ns.to_string(),
                    backing: e.backing.clone(),
                };
                let want = out.entry(key).or_insert_with(|| Want {
                    secret: e.secret.clone(),
                    fetch: e.fetch.clone(),
                    form: e.form,
                    interval: record.interval,
                    readers: BTreeSet::new(),
                });
                want.interval = want.interval.min(record.interval);
                want.readers.insert(record.account.clone());
            }
        }
        out
    }

    /// The workloads (not bare pods) some of whose pods run another version
    /// of a backing Secret than it holds now (`holds`, as the leader verified
    /// it): a pod that recorded a version behind it, or one that recorded
    /// none when the leader has just rotated the Secret (`rotated`). Each
    /// with what a rollout brings it to ([`Behind`]).
    pub fn behind(
        &self,
        holds: &HashMap<&Key, &str>,
        rotated: &BTreeSet<Key>,
    ) -> BTreeMap<(String, Workload), Behind> {
        // Pods of one workload that share a record and versions (its
        // replicas) are behind on the same: looked at once (`groups.rs`), with
        // the owners they name.
        let mut out: BTreeMap<(String, Workload), Behind> = BTreeMap::new();
        for (ns, w, g) in self.groups.workloads() {
            let mut stale = BTreeSet::new();
            let mut secrets = BTreeSet::new();
            let mut wanted = BTreeMap::new();
            for (i, e) in g.record.entries.iter().enumerate() {
                let key = Key {
                    namespace: ns.to_string(),
                    backing: e.backing.clone(),
                };
                let Some(held) = holds.get(&key) else {
                    continue;
                };
                wanted.insert(e.backing.clone(), held.to_string());
                let behind = match g.versions.get(i).and_then(Option::as_deref) {
                    Some(ran) => ran != *held,
                    None => rotated.contains(&key),
                };
                if behind {
                    stale.insert(e.backing.clone());
                    secrets.insert(e.secret.clone());
                }
            }
            // Every pod's backing Secrets, so that the template's record names
            // them all; only pods that are behind make it a candidate.
            let b = out.entry((ns.to_string(), w.clone())).or_default();
            b.wanted.extend(wanted);
            b.stale.extend(stale);
            b.secrets.extend(secrets);
            b.owners.extend(g.owners().cloned());
        }
        out.retain(|_, b| !b.stale.is_empty());
        out
    }

    /// The workloads whose pods use any of `keys`, each with the backing
    /// Secrets it uses among them.
    pub fn workloads_using(
        &self,
        keys: &BTreeSet<Key>,
    ) -> BTreeMap<(String, Workload), BTreeSet<String>> {
        let mut out: BTreeMap<(String, Workload), BTreeSet<String>> = BTreeMap::new();
        for ((ns, _), p) in &self.pods {
            let Some(w) = &p.workload else { continue };
            for e in &p.record.entries {
                let key = Key {
                    namespace: ns.clone(),
                    backing: e.backing.clone(),
                };
                if keys.contains(&key) {
                    out.entry((ns.clone(), w.clone()))
                        .or_default()
                        .insert(e.backing.clone());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
