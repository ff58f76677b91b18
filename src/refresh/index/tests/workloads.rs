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
