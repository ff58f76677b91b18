//! `sm-injector status`, the report: which backing Secrets exist, at which
//! version and last refresh, which pods and workloads use them, which
//! workloads restart when they rotate, and what failed. Pure: metadata in,
//! rows out. It never sees Secret data: the command lists metadata only.

use std::collections::{BTreeMap, BTreeSet};

use kube::api::ObjectMeta;
use serde::Serialize;

use crate::annotations::RESTART_ON_ROTATION;
use crate::backing::{ANN_NAME, ANN_REFRESHED, ANN_SELECTOR, ANN_VERSION_ID};
use crate::refresh::index::{Limits, read_record, workload};

/// What the report is made of, as listed from the API server.
#[derive(Default)]
pub struct Inputs {
    /// The managed Secrets' metadata.
    pub backing: Vec<ObjectMeta>,
    /// The metadata of the pods sm-injector injected.
    pub pods: Vec<ObjectMeta>,
    /// Workloads by (namespace, "Kind/name") with their annotations.
    pub workloads: BTreeMap<(String, String), BTreeMap<String, String>>,
    /// The latest Warning Event sm-injector recorded on each workload
    /// (namespace, "Kind/name").
    pub failures: BTreeMap<(String, String), Warning>,
}

/// A Warning Event: its reason and note. The note joins, with "; ", one
/// sentence per backing Secret concerned, each naming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub reason: String,
    pub note: String,
}

impl Warning {
    /// What of this Warning concerns the backing Secret `backing`: the
    /// note's sentences that name it. A note that names no backing Secret
    /// at all (written by an older version) concerns every one.
    fn about(&self, backing: &str, all: &BTreeSet<&str>) -> Option<String> {
        let parts: Vec<&str> = self.note.split("; ").collect();
        let named = |p: &&str| all.iter().any(|b| p.contains(b));
        let mine: Vec<&str> = if parts.iter().any(named) {
            parts.into_iter().filter(|p| p.contains(backing)).collect()
        } else {
            parts
        };
        (!mine.is_empty()).then(|| format!("{}: {}", self.reason, mine.join("; ")))
    }
}

/// One backing Secret.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub namespace: String,
    pub backing_secret: String,
    /// The Secrets Manager secret and version selector it holds.
    pub secret: String,
    pub version_selector: String,
    pub version_id: String,
    pub refreshed_at: String,
    pub pods: Vec<String>,
    /// "Kind/name" of the workloads whose pods use it.
    pub workloads: Vec<String>,
    /// Whose AWS identity its pods' admissions read it with:
    /// `serviceaccount/<name>` (the role that ServiceAccount names), or
    /// `sm-injector` (its own credentials).
    pub read_by: Vec<String>,
    /// The workloads rolled when it rotates (`restart-on-rotation: "true"`).
    pub restarts_on_rotation: Vec<String>,
    /// sm-injector's latest Warning on those workloads, if any.
    pub failures: Vec<String>,
}

fn ann<'a>(m: &'a ObjectMeta, key: &str) -> &'a str {
    m.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map_or("", String::as_str)
}

/// The report's rows, by namespace and backing Secret.
pub fn rows(inputs: &Inputs) -> Vec<Row> {
    // (namespace, backing) → (pods, workloads, readers)
    type Uses = (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>);
    let mut uses: BTreeMap<(String, String), Uses> = BTreeMap::new();
    let limits = Limits {
        max_entries: usize::MAX,
        min_interval: std::time::Duration::ZERO,
        max_calls: usize::MAX,
        max_records_per_namespace: usize::MAX,
        max_secrets_per_namespace: usize::MAX,
    };
    for p in &inputs.pods {
        let (Some(ns), Some(name), Some(annotations)) = (&p.namespace, &p.name, &p.annotations)
        else {
            continue;
        };
        let Some(Ok((entries, _, account))) = read_record(annotations, limits) else {
            continue;
        };
        let w = workload(p).map(|w| format!("{}/{}", w.kind, w.name));
        let reader = account.map_or("sm-injector".to_string(), |a| format!("serviceaccount/{a}"));
        for e in entries {
            let slot = uses.entry((ns.clone(), e.backing)).or_default();
            slot.0.insert(name.clone());
            slot.1.extend(w.clone());
            slot.2.insert(reader.clone());
        }
    }
    let names: BTreeSet<&str> = inputs
        .backing
        .iter()
        .filter_map(|s| s.name.as_deref())
        .collect();
    let mut rows: Vec<Row> = inputs
        .backing
        .iter()
        .filter_map(|s| {
            let ns = s.namespace.clone()?;
            let name = s.name.clone()?;
            let (pods, workloads, readers) =
                uses.remove(&(ns.clone(), name.clone())).unwrap_or_default();
            let restarts = workloads
                .iter()
                .filter(|w| {
                    inputs
                        .workloads
                        .get(&(ns.clone(), (*w).clone()))
                        .and_then(|a| a.get(RESTART_ON_ROTATION))
                        .is_some_and(|v| v == "true")
                })
                .cloned()
                .collect();
            let failures = workloads
                .iter()
                .filter_map(|w| {
                    let f = inputs.failures.get(&(ns.clone(), w.clone()))?;
                    Some(format!("{w}: {}", f.about(&name, &names)?))
                })
                .collect();
            Some(Row {
                backing_secret: name,
                secret: ann(s, ANN_NAME).to_string(),
                version_selector: ann(s, ANN_SELECTOR).to_string(),
                version_id: ann(s, ANN_VERSION_ID).to_string(),
                refreshed_at: ann(s, ANN_REFRESHED).to_string(),
                pods: pods.into_iter().collect(),
                workloads: workloads.into_iter().collect(),
                read_by: readers.into_iter().collect(),
                restarts_on_rotation: restarts,
                failures,
                namespace: ns,
            })
        })
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.backing_secret).cmp(&(&b.namespace, &b.backing_secret)));
    rows
}

/// How the table is printed, as kubectl prints: a NAMESPACE column only
/// across namespaces, `wide` adding the pods' names, no header line if asked.
#[derive(Debug, Clone, Copy, Default)]
pub struct Layout {
    pub all_namespaces: bool,
    pub wide: bool,
    pub no_headers: bool,
}

/// The rows as a table, one line per backing Secret.
pub fn table(rows: &[Row], layout: Layout) -> String {
    let mut head = vec![
        "NAMESPACE",
        "SECRET",
        "VERSION",
        "BACKING SECRET",
        "VERSION ID",
        "REFRESHED",
        "PODS",
        "WORKLOADS",
        "READ BY",
        "RESTARTS ON ROTATION",
        "FAILURES",
    ];
    if layout.wide {
        head.insert(7, "POD NAMES");
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(",")
        }
    };
    let mut cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut c = vec![
                r.namespace.clone(),
                r.secret.clone(),
                r.version_selector.clone(),
                r.backing_secret.clone(),
                r.version_id.clone(),
                r.refreshed_at.clone(),
                r.pods.len().to_string(),
                list(&r.workloads),
                list(&r.read_by),
                list(&r.restarts_on_rotation),
                list(&r.failures),
            ];
            if layout.wide {
                c.insert(7, list(&r.pods));
            }
            c
        })
        .collect();
    if !layout.all_namespaces {
        head.remove(0);
        for c in &mut cells {
            c.remove(0);
        }
    }
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for c in &cells {
        for (w, v) in widths.iter_mut().zip(c) {
            *w = (*w).max(v.chars().count());
        }
    }
    let line = |vals: Vec<&str>| {
        let mut out = String::new();
        for (i, (v, w)) in vals.iter().zip(&widths).enumerate() {
            if i + 1 == vals.len() {
                out.push_str(v);
            } else {
                out.push_str(&format!("{v:<w$}  "));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = if layout.no_headers {
        String::new()
    } else {
        line(head.to_vec())
    };
    for c in &cells {
        out.push_str(&line(c.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backing;
    use crate::reference::Version;
    use serde_json::json;

    fn meta(v: serde_json::Value) -> ObjectMeta {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn joins_backing_secrets_pods_workloads_and_failures() {
        let name = backing::name("app/db", &Version::current(), backing::Form::Keys);
        let record = crate::refresh::index::record_for(
            "1h",
            &[("app/db", Version::current(), backing::Form::Keys, None)],
        );
        let pod = |n: &str, rs: Option<&str>| {
            let mut m = json!({"name": n, "namespace": "app",
                "annotations": {"sm-injector.io/injected": record},
                "labels": {"pod-template-hash": "abc12"}});
            if let Some(rs) = rs {
                m["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": rs, "uid": "u", "controller": true}]);
            }
            meta(m)
        };
        let inputs = Inputs {
            backing: vec![
                meta(json!({"name": name, "namespace": "app", "annotations": {
                    "sm-injector.io/source-name": "app/db",
                    "sm-injector.io/version-selector": "versionStage=AWSCURRENT",
                    "sm-injector.io/version-id": "v-1",
                    "sm-injector.io/refreshed-at": "2026-11-30T00:00:00Z"}})),
                meta(json!({"name": "sm-unused-1234abcd", "namespace": "app"})),
            ],
            pods: vec![
                pod("web-abc12-x", Some("web-abc12")),
                pod("web-abc12-y", Some("web-abc12")),
                pod("bare", None),
                {
                    // Read with its workload's identity.
                    let mut m = pod("reader", None);
                    let mut r: serde_json::Value = serde_json::from_str(&record).unwrap();
                    r["serviceAccount"] = json!("reader");
                    m.annotations
                        .as_mut()
                        .unwrap()
                        .insert("sm-injector.io/injected".into(), r.to_string());
                    m
                },
            ],
            workloads: [(
                ("app".to_string(), "Deployment/web".to_string()),
                [(RESTART_ON_ROTATION.to_string(), "true".to_string())].into(),
            )]
            .into(),
            failures: [(
                ("app".to_string(), "Deployment/web".to_string()),
                Warning {
                    reason: "SecretRefreshFailed".into(),
                    note: format!("could not refresh the backing Secret {name}: throttled"),
                },
            )]
            .into(),
        };
        let r = rows(&inputs);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].backing_secret, name);
        assert_eq!(r[0].secret, "app/db");
        assert_eq!(r[0].version_id, "v-1");
        assert_eq!(r[0].pods, ["bare", "reader", "web-abc12-x", "web-abc12-y"]);
        assert_eq!(r[0].workloads, ["Deployment/web", "Pod/bare", "Pod/reader"]);
        assert_eq!(r[0].read_by, ["serviceaccount/reader", "sm-injector"]);
        assert_eq!(r[0].restarts_on_rotation, ["Deployment/web"]);
        assert_eq!(
            r[0].failures,
            [format!(
                "Deployment/web: SecretRefreshFailed: could not refresh the backing Secret {name}: throttled"
            )]
        );
        assert!(r[1].pods.is_empty(), "a Secret no pod uses is listed too");
        let all = Layout {
            all_namespaces: true,
            ..Default::default()
        };
        let t = table(&r, all);
        assert!(t.starts_with("NAMESPACE"), "{t}");
        assert!(t.contains("Deployment/web,Pod/bare,Pod/reader"), "{t}");
        assert!(
            t.contains("READ BY") && t.contains("serviceaccount/reader,sm-injector"),
            "{t}"
        );
        assert_eq!(t.lines().count(), 3);
        // One namespace: no NAMESPACE column; wide: the pods' names; and
        // without the header line.
        let t = table(&r, Layout::default());
        assert!(t.starts_with("SECRET"), "{t}");
        let t = table(
            &r,
            Layout {
                wide: true,
                no_headers: true,
                ..all
            },
        );
        assert!(t.starts_with("app "), "{t}");
        assert!(t.contains("bare,reader,web-abc12-x,web-abc12-y"), "{t}");
        assert_eq!(t.lines().count(), 2);
    }

    #[test]
    fn a_failure_is_shown_on_the_backing_secrets_it_names() {
        let all: BTreeSet<&str> = ["sm-a-1", "sm-b-2"].into();
        let w = Warning {
            reason: "SecretRefreshFailed".into(),
            note: "could not refresh the backing Secret sm-a-1 (secret \"a\"): throttled; could not refresh the backing Secret sm-b-2 (secret \"b\"): denied".into(),
        };
        assert_eq!(
            w.about("sm-a-1", &all).as_deref(),
            Some(
                "SecretRefreshFailed: could not refresh the backing Secret sm-a-1 (secret \"a\"): throttled"
            )
        );
        assert!(
            w.about("sm-c-3", &all).is_none(),
            "not named: not its failure"
        );
        // A note naming no backing Secret concerns all of the workload's.
        let old = Warning {
            reason: "SecretRefreshFailed".into(),
            note: "throttled".into(),
        };
        assert_eq!(
            old.about("sm-c-3", &all).as_deref(),
            Some("SecretRefreshFailed: throttled")
        );
    }
}
