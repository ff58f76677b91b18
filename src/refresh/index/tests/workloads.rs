//! The workloads the index finds behind a rotation, from the pods' own
//! metadata and the versions their pods ran.

use super::*;

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
    let v = |d: &str| Some(format!(r#"["{d}","x1"]"#));
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

#[test]
fn replicas_that_share_a_record_are_looked_at_once_and_still_each_counted() {
    use crate::annotations::VERSIONS;
    let mut ix = Index::new(LIMITS);
    let rec = record_for("1h", &[("shared/db", cur(), Form::Keys, None)]);
    let db = backing::name("shared/db", &cur(), Form::Keys);
    // Two ReplicaSets of one Deployment in n, their pods with the same record
    // and versions text (so sharing one copy of each), and a namespace m
    // whose pods carry the same record text too.
    let replica = |ns: &str, name: &str, rs: &str, version: &str| {
        let extra = json!({
            "labels": {"pod-template-hash": rs},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("web-{rs}"), "uid": format!("uid-{rs}"), "controller": true}],
            "annotations": {INJECTED: rec, VERSIONS: format!(r#"["{version}"]"#)},
        });
        pod(ns, name, Some(rec.clone()), extra)
    };
    for (ns, name, rs, version) in [
        ("n", "web-a-1", "a", "v1"),
        ("n", "web-a-2", "a", "v1"),
        ("n", "web-b-1", "b", "v1"),
        ("n", "web-b-2", "b", "v2"),
        ("m", "web-a-1", "a", "v2"),
    ] {
        ix.apply(&replica(ns, name, rs, version));
    }
    let k = |ns: &str| Key {
        namespace: ns.into(),
        backing: db.clone(),
    };
    let in_use = ix.in_use();
    assert_eq!(in_use.keys().cloned().collect::<Vec<_>>(), [k("m"), k("n")]);
    let (kn, km) = (k("n"), k("m"));
    let holds = HashMap::from([(&kn, "v2"), (&km, "v2")]);
    let b = ix.behind(&holds, &BTreeSet::new());
    // m's pod runs what its Secret holds; in n both ReplicaSets have a pod
    // behind, and the Deployment is named with both as owners.
    let web = Workload {
        kind: "Deployment",
        name: "web".into(),
    };
    assert_eq!(b.keys().collect::<Vec<_>>(), [&("n".to_string(), web)]);
    let behind = b.values().next().unwrap();
    assert_eq!(behind.stale, BTreeSet::from([db.clone()]));
    assert_eq!(
        behind.owners,
        BTreeMap::from([
            ("uid-a".to_string(), "web-a".to_string()),
            ("uid-b".to_string(), "web-b".to_string())
        ])
    );
    // The last pod behind in n goes: nothing is.
    for name in ["web-a-1", "web-a-2", "web-b-1"] {
        ix.delete(&replica("n", name, "a", "v1"));
    }
    assert!(ix.behind(&holds, &BTreeSet::new()).is_empty());
    assert_eq!(ix.in_use().len(), 2, "web-b-2 and m's pod still use theirs");
    // A pod whose versions change moves to the pods that recorded those.
    ix.apply(&replica("n", "web-b-2", "b", "v1"));
    let b = ix.behind(&holds, &BTreeSet::new());
    assert_eq!(
        b.values().next().unwrap().owners,
        BTreeMap::from([("uid-b".to_string(), "web-b".to_string())])
    );
    // The watch starts over: nothing until the pods come again.
    ix.restart();
    assert!(ix.in_use().is_empty() && ix.behind(&holds, &BTreeSet::new()).is_empty());
    ix.apply(&replica("m", "web-a-1", "a", "v1"));
    assert_eq!(ix.in_use().keys().cloned().collect::<Vec<_>>(), [k("m")]);
    assert_eq!(ix.behind(&holds, &BTreeSet::new()).len(), 1);
}
