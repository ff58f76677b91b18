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
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::core::PartialObjectMeta;

use crate::annotations::{INJECTED, VERSIONS};
use crate::backing::{self, Form};
use crate::fetch::FetchKey;
use crate::record::Record;
use crate::reference;
#[cfg(test)]
use crate::reference::Version;

pub use crate::backing::Key;

/// What a workload's pods are behind on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Behind {
    /// Every backing Secret its pods use whose held version is known, with it.
    pub wanted: BTreeMap<String, String>,
    /// Those some pod runs another version of.
    pub stale: BTreeSet<String>,
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

/// What the refresher keeps of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodUse {
    entries: Vec<Entry>,
    interval: Duration,
    workload: Option<Workload>,
    /// The version of each backing Secret the pod's admission saw it hold
    /// ([`VERSIONS`]): what its containers read. Empty for pods admitted
    /// before sm-injector recorded it. One per entry, in the same order
    /// (no second copy of the backing names: this is kept for every pod).
    versions: Vec<Option<Box<str>>>,
}

/// One backing Secret in use, over every pod that uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub secret: String,
    pub fetch: FetchKey,
    pub form: Form,
    /// The shortest refresh interval among its pods.
    pub interval: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Entries a record may have (the webhook writes at most
    /// [`crate::plan::MAX_BACKING_PER_POD`]).
    pub max_entries: usize,
    /// Shorter intervals are raised to this.
    pub min_interval: Duration,
}

/// Reads and checks a pod's record: its entries and its interval (clamped), or
/// why it is refused.
pub fn read_record(
    annotations: &BTreeMap<String, String>,
    limits: Limits,
) -> Option<Result<(Vec<Entry>, Duration), String>> {
    let text = annotations.get(INJECTED)?;
    let record: Record = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(_) => return Some(Err("the record is not sm-injector's JSON".into())),
    };
    if record.secrets.len() > limits.max_entries {
        return Some(Err(format!(
            "the record has {} entries; at most {}",
            record.secrets.len(),
            limits.max_entries
        )));
    }
    let interval = match humantime::parse_duration(&record.refresh_interval) {
        Ok(d) => d.max(limits.min_interval),
        Err(_) => return Some(Err("the record's refresh interval is not a duration".into())),
    };
    let mut entries = Vec::with_capacity(record.secrets.len());
    for e in record.secrets {
        let Ok(r) = reference::parse(&format!("{}?{}", e.secret, e.version)) else {
            return Some(Err(format!("the entry {:?} is malformed", e.backing)));
        };
        let Some(form) = Form::parse(&e.form) else {
            return Some(Err(format!("the entry {:?} has no form", e.backing)));
        };
        let scope = match &e.arn {
            None => None,
            Some(arn) => match backing::arn_scope(arn) {
                Some(s) => Some(s),
                None => return Some(Err(format!("the entry {:?} has a bad ARN", e.backing))),
            },
        };
        if r.is_arn()
            || backing::name_scoped(&r.id, scope.as_deref(), &r.version, form) != e.backing
        {
            return Some(Err(format!(
                "the entry {:?} is not the backing Secret sm-injector derives for {:?}",
                e.backing, e.secret
            )));
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
    Some(Ok((entries, interval)))
}

/// The versions a pod recorded ([`VERSIONS`]), one per record entry (`None`
/// where it recorded none, or the annotation is absent or unreadable).
fn read_versions(
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

pub struct Index {
    limits: Limits,
    pods: HashMap<(String, String), PodUse>,
    /// Pods whose record was refused, so that each is reported once.
    refused: HashSet<(String, String)>,
}

impl Index {
    pub fn new(limits: Limits) -> Self {
        Index {
            limits,
            pods: HashMap::new(),
            refused: HashSet::new(),
        }
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
        match read_record(m.annotations.as_ref().unwrap_or(&empty), self.limits) {
            None => {
                self.pods.remove(&key);
                None
            }
            Some(Ok((entries, interval))) => {
                self.refused.remove(&key);
                let workload = workload(m);
                let annotations = m.annotations.as_ref().unwrap_or(&empty);
                let versions = read_versions(annotations, &entries);
                self.pods.insert(
                    key,
                    PodUse {
                        entries,
                        interval,
                        workload,
                        versions,
                    },
                );
                None
            }
            Some(Err(reason)) => {
                self.pods.remove(&key);
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
        self.pods.remove(&key);
        self.refused.remove(&key);
    }

    /// A watch restarted: the pods come again; which were refused is kept,
    /// so that each is still reported once.
    pub fn restart(&mut self) {
        self.pods.clear();
    }

    /// Every backing Secret in use, with the shortest interval among its pods.
    pub fn in_use(&self) -> BTreeMap<Key, Want> {
        let mut out: BTreeMap<Key, Want> = BTreeMap::new();
        for ((ns, _), p) in &self.pods {
            for e in &p.entries {
                let key = Key {
                    namespace: ns.clone(),
                    backing: e.backing.clone(),
                };
                let want = out.entry(key).or_insert_with(|| Want {
                    secret: e.secret.clone(),
                    fetch: e.fetch.clone(),
                    form: e.form,
                    interval: p.interval,
                });
                want.interval = want.interval.min(p.interval);
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
        let mut out: BTreeMap<(String, Workload), Behind> = BTreeMap::new();
        for ((ns, _), p) in &self.pods {
            let Some(w) = p.workload.as_ref().filter(|w| w.kind != "Pod") else {
                continue;
            };
            let mut stale = BTreeSet::new();
            let mut wanted = BTreeMap::new();
            for (i, e) in p.entries.iter().enumerate() {
                let key = Key {
                    namespace: ns.clone(),
                    backing: e.backing.clone(),
                };
                let Some(held) = holds.get(&key) else {
                    continue;
                };
                wanted.insert(e.backing.clone(), held.to_string());
                let behind = match p.versions.get(i).and_then(Option::as_deref) {
                    Some(ran) => ran != *held,
                    None => rotated.contains(&key),
                };
                if behind {
                    stale.insert(e.backing.clone());
                }
            }
            // Every pod's backing Secrets, so that the template's record names
            // them all; only pods that are behind make it a candidate.
            let b = out.entry((ns.clone(), w.clone())).or_default();
            b.wanted.extend(wanted);
            b.stale.extend(stale);
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
            for e in &p.entries {
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

/// A record as the webhook writes it, for tests.
#[cfg(test)]
pub fn record_for(interval: &str, entries: &[(&str, Version, Form, Option<&str>)]) -> String {
    use crate::record::RecordEntry;
    let r = Record {
        refresh_interval: interval.into(),
        secrets: entries
            .iter()
            .map(|(secret, v, form, arn)| {
                let scope = arn.and_then(backing::arn_scope);
                RecordEntry {
                    backing: backing::name_scoped(secret, scope.as_deref(), v, *form),
                    secret: secret.to_string(),
                    version: v.to_string(),
                    form: form.as_str().into(),
                    arn: arn.map(str::to_string),
                }
            })
            .collect(),
    };
    serde_json::to_string(&r).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: Limits = Limits {
        max_entries: 3,
        min_interval: Duration::from_secs(60),
    };

    fn pod(
        ns: &str,
        name: &str,
        record: Option<String>,
        extra: serde_json::Value,
    ) -> PartialObjectMeta<Pod> {
        let mut meta = json!({"namespace": ns, "name": name, "annotations": {}});
        if let Some(r) = record {
            meta["annotations"][INJECTED] = json!(r);
        }
        if let serde_json::Value::Object(o) = extra {
            for (k, v) in o {
                meta[k] = v;
            }
        }
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta}))
            .unwrap()
    }

    fn cur() -> Version {
        Version::current()
    }

    #[test]
    fn shortest_interval_wins_and_intervals_are_clamped() {
        let mut ix = Index::new(LIMITS);
        let a = record_for("1h", &[("n/db", cur(), Form::Keys, None)]);
        let b = record_for(
            "1s",
            &[
                ("n/db", cur(), Form::Keys, None),
                ("n/x", Version::Id("v1".into()), Form::Raw, None),
            ],
        );
        assert_eq!(ix.apply(&pod("n", "a", Some(a), json!({}))), None);
        assert_eq!(ix.apply(&pod("n", "b", Some(b), json!({}))), None);
        let w = ix.in_use();
        assert_eq!(w.len(), 2);
        let db = &w[&Key {
            namespace: "n".into(),
            backing: backing::name("n/db", &cur(), Form::Keys),
        }];
        assert_eq!(
            db.interval,
            Duration::from_secs(60),
            "1s is raised to the minimum"
        );
        ix.delete(&pod("n", "b", None, json!({})));
        assert_eq!(ix.in_use().len(), 1);
        assert_eq!(
            ix.in_use().values().next().unwrap().interval,
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn forged_oversized_and_garbled_records_are_refused_once_per_pod() {
        let mut ix = Index::new(LIMITS);
        let good = record_for("1h", &[("n/db", cur(), Form::Keys, None)]);
        let forged = good.replace("sm-n-db-", "sm-someone-else-");
        let big = record_for(
            "1h",
            &[
                ("n/a", cur(), Form::Keys, None),
                ("n/b", cur(), Form::Keys, None),
                ("n/c", cur(), Form::Keys, None),
                ("n/d", cur(), Form::Keys, None),
            ],
        );
        let r1 = ix.apply(&pod("n", "forged", Some(forged.clone()), json!({})));
        assert!(
            r1.unwrap()
                .contains("is not the backing Secret sm-injector derives")
        );
        assert_eq!(
            ix.apply(&pod("n", "forged", Some(forged), json!({}))),
            None,
            "once per pod"
        );
        assert_eq!(
            ix.apply(&pod("n", "big", Some(big), json!({}))).unwrap(),
            "the record has 4 entries; at most 3"
        );
        assert!(
            ix.apply(&pod("n", "junk", Some("{no".into()), json!({})))
                .is_some()
        );
        assert!(ix.in_use().is_empty());
        // A refused pod that later carries a good record is taken.
        assert_eq!(ix.apply(&pod("n", "forged", Some(good), json!({}))), None);
        assert_eq!(ix.in_use().len(), 1);
        // A watch re-list (restart, then every pod again) reports nothing again.
        ix.restart();
        assert_eq!(
            ix.apply(&pod("n", "junk", Some("{no".into()), json!({}))),
            None,
            "a re-list reports nothing again"
        );
        assert!(ix.in_use().is_empty());
    }

    #[test]
    fn arn_entries_fetch_by_arn_and_must_match_their_scope() {
        let mut ix = Index::new(LIMITS);
        let arn = "arn:aws:secretsmanager:eu-west-1:999999999999:secret:n/db-AbCdEf";
        let rec = record_for("1h", &[("n/db", cur(), Form::Keys, Some(arn))]);
        assert_eq!(ix.apply(&pod("n", "p", Some(rec.clone()), json!({}))), None);
        let w = ix.in_use();
        let want = w.values().next().unwrap();
        assert_eq!(
            want.fetch.id, arn,
            "fetched from the account and region the pod named"
        );
        assert_eq!(want.secret, "n/db");
        // The same entry claiming another account does not match its name.
        let other = rec.replace("999999999999", "111111111111");
        assert!(ix.apply(&pod("n", "q", Some(other), json!({}))).is_some());
    }

    #[test]
    fn workloads_come_from_the_pods_own_metadata() {
        let owned = |kind: &str, name: &str| json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u", "controller": true}]});
        let rs = pod("n", "web-7d9f-abcde", None, owned("ReplicaSet", "web-7d9f"));
        let mut meta = rs.metadata.clone();
        meta.labels = Some(BTreeMap::from([(
            "pod-template-hash".into(),
            "7d9f".into(),
        )]));
        assert_eq!(
            workload(&meta),
            Some(Workload {
                kind: "Deployment",
                name: "web".into()
            })
        );
        meta.labels = None;
        assert_eq!(workload(&meta), None, "a bare ReplicaSet rolls nothing");
        let ss = pod("n", "db-0", None, owned("StatefulSet", "db"));
        assert_eq!(workload(&ss.metadata).unwrap().kind, "StatefulSet");
        let job = pod("n", "j", None, owned("Job", "j"));
        assert_eq!(workload(&job.metadata), None);
        let bare = pod("n", "solo", None, json!({}));
        assert_eq!(
            workload(&bare.metadata),
            Some(Workload {
                kind: "Pod",
                name: "solo".into()
            })
        );

        let mut ix = Index::new(LIMITS);
        let rec = record_for("1h", &[("n/db", cur(), Form::Keys, None)]);
        ix.apply(&pod("n", "solo", Some(rec), json!({})));
        let key = Key {
            namespace: "n".into(),
            backing: backing::name("n/db", &cur(), Form::Keys),
        };
        let w = ix.workloads_using(&BTreeSet::from([key]));
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn workloads_are_behind_when_their_pods_ran_another_version() {
        use crate::annotations::VERSIONS;
        let mut ix = Index::new(LIMITS);
        let rec = record_for(
            "1h",
            &[
                ("n/db", cur(), Form::Keys, None),
                ("n/x", cur(), Form::Raw, None),
            ],
        );
        let (db, x) = (
            backing::name("n/db", &cur(), Form::Keys),
            backing::name("n/x", &cur(), Form::Raw),
        );
        let owned = |name: &str, versions: Option<String>| {
            let mut extra = json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u", "controller": true}]});
            if let Some(v) = versions {
                extra["annotations"] = json!({INJECTED: rec, VERSIONS: v});
            }
            pod("n", name, Some(rec.clone()), extra)
        };
        let v = |d: &str| Some(format!(r#"{{"{db}":"{d}","{x}":"x1"}}"#));
        ix.apply(&owned("db-0", v("v1")));
        ix.apply(&owned("db-1", v("v2")));
        let k = |b: &str| Key {
            namespace: "n".into(),
            backing: b.into(),
        };
        let (kdb, kx) = (k(&db), k(&x));
        let holds = HashMap::from([(&kdb, "v2"), (&kx, "x1")]);
        let none = BTreeSet::new();
        let b = ix.behind(&holds, &none);
        assert_eq!(b.len(), 1);
        let behind = b.values().next().unwrap();
        assert_eq!(behind.stale, BTreeSet::from([db.clone()]));
        assert_eq!(behind.wanted[&db], "v2");
        assert_eq!(behind.wanted[&x], "x1");
        // Caught up: nothing behind.
        ix.apply(&owned("db-0", v("v2")));
        assert!(ix.behind(&holds, &none).is_empty());
        // A pod from before versions were recorded counts only when the
        // leader has just moved its Secret.
        ix.apply(&owned("db-0", None));
        assert!(ix.behind(&holds, &none).is_empty());
        assert_eq!(ix.behind(&holds, &BTreeSet::from([kdb.clone()])).len(), 1);
        // A version the leader has not verified yet is not compared.
        let unknown = HashMap::from([(&kx, "x2")]);
        let b = ix.behind(&unknown, &none);
        assert_eq!(
            b.values().next().unwrap().stale,
            BTreeSet::from([x.clone()])
        );
    }
}
