//! The index's pods grouped as a planning reads them, kept up to date as
//! pods come and go: the pods of a namespace that share a record (for
//! [`super::Index::in_use`]), and the pods of a workload that share a record
//! and versions, with the owners they name (for [`super::Index::behind`]).
//! A workload's replicas share both, so a planning costs a step per group,
//! not per pod.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{Checked, PodUse, Versions, Workload};

/// A shared text's address, which names it while a group holds it.
fn at<T: ?Sized>(a: &Arc<T>) -> usize {
    Arc::as_ptr(a).cast::<()>() as usize
}

/// Pods of one namespace with one record.
pub struct Uses {
    pub record: Arc<Checked>,
    pods: usize,
}

/// Pods of one workload with one record and one versions text.
pub struct Group {
    pub record: Arc<Checked>,
    pub versions: Arc<Versions>,
    /// The controlling owners (uid, name) they name, each with its pods.
    owners: BTreeMap<(String, String), usize>,
    pods: usize,
}

impl Group {
    pub fn owners(&self) -> impl Iterator<Item = &(String, String)> {
        self.owners.keys()
    }
}

/// A namespace and a record's address.
type UsesKey = (String, usize);
/// A namespace, a workload, and its pods' record's and versions' addresses.
type GroupKey = (String, Workload, usize, usize);

#[derive(Default)]
pub struct Groups {
    uses: HashMap<UsesKey, Uses>,
    groups: HashMap<GroupKey, Group>,
}

impl Groups {
    /// The pod's keys: its namespace's and record's, and its workload's
    /// (none for a bare pod, which no rollout concerns).
    fn keys(ns: &str, p: &PodUse) -> (UsesKey, Option<GroupKey>) {
        let w = p.workload.as_ref().filter(|w| w.kind != "Pod");
        (
            (ns.to_string(), at(&p.record)),
            w.map(|w| (ns.to_string(), w.clone(), at(&p.record), at(&p.versions))),
        )
    }

    pub fn add(&mut self, ns: &str, p: &PodUse) {
        let (uses, group) = Self::keys(ns, p);
        let uses = self.uses.entry(uses).or_insert_with(|| Uses {
            record: p.record.clone(),
            pods: 0,
        });
        uses.pods += 1;
        let Some(key) = group else { return };
        let g = self.groups.entry(key).or_insert_with(|| Group {
            record: p.record.clone(),
            versions: p.versions.clone(),
            owners: BTreeMap::new(),
            pods: 0,
        });
        g.pods += 1;
        if let Some(owner) = &p.owner {
            *g.owners.entry(owner.clone()).or_default() += 1;
        }
    }

    pub fn remove(&mut self, ns: &str, p: &PodUse) {
        let (uses, group) = Self::keys(ns, p);
        if let Some(u) = self.uses.get_mut(&uses) {
            u.pods -= 1;
            if u.pods == 0 {
                self.uses.remove(&uses);
            }
        }
        let Some(key) = group else { return };
        let Some(g) = self.groups.get_mut(&key) else {
            return;
        };
        if let Some(owner) = &p.owner
            && let Some(n) = g.owners.get_mut(owner)
        {
            *n -= 1;
            if *n == 0 {
                g.owners.remove(owner);
            }
        }
        g.pods -= 1;
        if g.pods == 0 {
            self.groups.remove(&key);
        }
    }

    pub fn clear(&mut self) {
        self.uses.clear();
        self.groups.clear();
    }

    /// Each namespace with each record its pods carry.
    pub fn uses(&self) -> impl Iterator<Item = (&str, &Uses)> {
        self.uses.iter().map(|((ns, _), u)| (ns.as_str(), u))
    }

    /// Each workload's groups of pods.
    pub fn workloads(&self) -> impl Iterator<Item = (&str, &Workload, &Group)> {
        self.groups
            .iter()
            .map(|((ns, w, ..), g)| (ns.as_str(), w, g))
    }
}
