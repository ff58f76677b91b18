//! What the index holds per namespace and shares between pods: the bounds
//! on a namespace's records, one copy per distinct record, and whose
//! identities read each copy.

use super::*;

#[test]
fn one_namespace_holds_a_bounded_number_of_records_and_secrets() {
    let mut ix = Index::new(Limits {
        max_records_per_namespace: 2,
        max_secrets_per_namespace: 3,
        ..LIMITS
    });
    let r = |secrets: &[&str]| {
        let e: Vec<_> = secrets
            .iter()
            .map(|s| (*s, cur(), Form::Keys, None))
            .collect();
        record_for("1h", &e)
    };
    assert_eq!(
        ix.apply(&pod("n", "a", Some(r(&["n/a", "n/b"])), json!({}))),
        None
    );
    // A changed record of the same pod replaces its own count.
    assert_eq!(
        ix.apply(&pod("n", "a", Some(r(&["n/a", "n/c"])), json!({}))),
        None
    );
    assert_eq!(
        ix.apply(&pod("n", "b", Some(r(&["n/a", "n/b"])), json!({}))),
        None
    );
    let why = ix
        .apply(&pod("n", "c", Some(r(&["n/a"])), json!({})))
        .unwrap();
    assert!(why.contains("--max-records-per-namespace"), "{why}");
    // Another namespace has its own bounds.
    assert_eq!(ix.apply(&pod("m", "c", Some(r(&["m/a"])), json!({}))), None);
    // Room comes back as pods go; then a fourth secret is one too many.
    ix.delete(&pod("n", "b", None, json!({})));
    let why = ix
        .apply(&pod("n", "d", Some(r(&["n/d", "n/e"])), json!({})))
        .unwrap();
    assert!(
        why.contains("would name 4 secret versions; at most 3"),
        "{why}"
    );
    assert_eq!(
        ix.apply(&pod("n", "d", Some(r(&["n/c", "n/d"])), json!({}))),
        None
    );
    assert_eq!(ix.in_use().keys().filter(|k| k.namespace == "n").count(), 3);
}

#[test]
fn pods_with_the_same_record_share_one_copy_until_the_last_goes() {
    let mut ix = Index::new(LIMITS);
    let r = record_for("1h", &[("n/db", cur(), Form::Keys, None)]);
    let versions = json!({"annotations": {
        INJECTED: r.clone(),
        VERSIONS: r#"["v1"]"#
    }});
    for name in ["a", "b"] {
        let mut p = pod("n", name, None, json!({}));
        p.metadata.annotations = serde_json::from_value(versions["annotations"].clone()).unwrap();
        assert_eq!(ix.apply(&p), None);
    }
    let (a, b) = (
        &ix.pods[&("n".into(), "a".into())],
        &ix.pods[&("n".into(), "b".into())],
    );
    assert!(
        Arc::ptr_eq(&a.record, &b.record),
        "one record for both pods"
    );
    assert!(
        Arc::ptr_eq(&a.versions, &b.versions),
        "one versions list for both pods"
    );
    assert_eq!(a.versions.first().cloned().flatten().as_deref(), Some("v1"));
    // Another namespace with the same text shares it too.
    assert_eq!(ix.apply(&pod("m", "c", Some(r.clone()), json!({}))), None);
    assert_eq!(ix.records.len(), 1);
    // Once no pod carries a text, pruning forgets it.
    for (ns, name) in [("n", "a"), ("n", "b"), ("m", "c")] {
        ix.delete(&pod(ns, name, None, json!({})));
    }
    ix.records.prune();
    ix.versions.prune();
    assert_eq!((ix.records.len(), ix.versions.len()), (0, 0));
    assert!(ix.in_use().is_empty());
}

#[test]
fn each_copy_knows_whose_identities_read_it() {
    let as_account = |sa: &str| {
        let mut r: serde_json::Value =
            serde_json::from_str(&record_for("1h", &[("n/db", cur(), Form::Keys, None)])).unwrap();
        r["serviceAccount"] = json!(sa);
        r.to_string()
    };
    let mut ix = Index::new(LIMITS);
    let own = record_for("1h", &[("n/db", cur(), Form::Keys, None)]);
    assert_eq!(
        ix.apply(&pod("n", "a", Some(as_account("reader")), json!({}))),
        None
    );
    assert_eq!(
        ix.apply(&pod("n", "b", Some(as_account("other")), json!({}))),
        None
    );
    assert_eq!(ix.apply(&pod("n", "c", Some(own), json!({}))), None);
    let w = ix.in_use();
    let db = &w[&Key {
        namespace: "n".into(),
        backing: backing::name("n/db", &cur(), Form::Keys),
    }];
    assert_eq!(
        db.readers,
        BTreeSet::from([None, Some("other".into()), Some("reader".into())])
    );
    // Not a ServiceAccount name: the record is refused whole.
    let refused = ix.apply(&pod(
        "n",
        "d",
        Some(as_account("Not/An Account")),
        json!({}),
    ));
    assert!(
        refused.is_some_and(|r| r.contains("not a ServiceAccount name")),
        "refused"
    );
}
