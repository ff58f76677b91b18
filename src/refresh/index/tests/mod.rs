//! The index, without an API server.

use super::*;
use serde_json::json;

mod shared;
mod workloads;

const LIMITS: Limits = Limits {
    max_entries: 3,
    min_interval: Duration::from_secs(60),
    max_calls: 10,
    max_records_per_namespace: 1000,
    max_secrets_per_namespace: 1000,
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
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta})).unwrap()
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
    let forged = good.replace(
        r#"{"secret""#,
        r#"{"backing":"sm-someone-else-db-1a2b3c4d5e6f7a8b","secret""#,
    );
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

fn want_backing(ix: &Index) -> String {
    ix.in_use().into_keys().next().unwrap().backing
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
    // The same entry claiming another account: as earlier builds wrote it,
    // its backing Secret's name no longer matches; as written now, it is
    // that account's own backing Secret (a pod may name it as well).
    let in_full = record_in_full("1h", &[("n/db", cur(), Form::Keys, Some(arn))]);
    let other = in_full.replace("999999999999", "111111111111");
    assert!(ix.apply(&pod("n", "q", Some(other), json!({}))).is_some());
    let other = rec.replace("999999999999", "111111111111");
    let mut elsewhere = Index::new(LIMITS);
    assert_eq!(
        elsewhere.apply(&pod("n", "q", Some(other), json!({}))),
        None
    );
    assert_ne!(
        elsewhere.in_use().into_keys().next().unwrap().backing,
        want_backing(&ix)
    );
    // An ARN of another tenant's secret under this namespace's name: the
    // backing name matches (it hashes the name and the scope), the ARN's own
    // name does not, and the reason does not quote the ARN.
    let theirs = "arn:aws:secretsmanager:eu-west-1:999999999999:secret:victim/db-XyZ123";
    let forged = record_for("1h", &[("n/db", cur(), Form::Keys, Some(theirs))]);
    let why = ix.apply(&pod("n", "r", Some(forged), json!({}))).unwrap();
    assert!(
        why.contains("does not name its secret") && !why.contains("victim"),
        "{why}"
    );
    assert!(backing::arn_names(
        "arn:aws:secretsmanager:r:1:secret:n/db",
        "n/db"
    ));
    assert!(!backing::arn_names(
        "arn:aws:secretsmanager:r:1:secret:n/db-AbCdE",
        "n/db"
    ));
    assert!(!backing::arn_names(
        "arn:aws:secretsmanager:r:1:secret:n/dbx-AbCdEf",
        "n/db"
    ));
    assert!(!backing::arn_names(
        "arn:aws:s3:r:1:secret:n/db-AbCdEf",
        "n/db"
    ));
    assert_eq!(ix.in_use().len(), 1);
}

#[test]
fn records_of_earlier_releases_keep_their_backing_secrets() {
    let mut ix = Index::new(LIMITS);
    let now = record_in_full("1h", &[("n/db", cur(), Form::Keys, None)]);
    let new_name = backing::name("n/db", &cur(), Form::Keys);
    let old_name = backing::legacy_name_scoped("n/db", None, &cur(), Form::Keys);
    assert_eq!(new_name.len(), old_name.len() + 8);
    let before = now.replace(&new_name, &old_name);
    assert_eq!(ix.apply(&pod("n", "old", Some(before), json!({}))), None);
    assert_eq!(ix.apply(&pod("n", "new", Some(now), json!({}))), None);
    let names: Vec<_> = ix.in_use().into_keys().map(|k| k.backing).collect();
    assert_eq!(names, [old_name.clone(), new_name]);
    // Any other length or hash is still refused.
    let forged = record_in_full("1h", &[("n/db", cur(), Form::Keys, None)]).replace(
        &backing::name("n/db", &cur(), Form::Keys),
        &format!("{old_name}00"),
    );
    assert!(
        ix.apply(&pod("n", "forged", Some(forged), json!({})))
            .is_some()
    );
}

#[test]
fn records_needing_more_calls_than_the_webhook_allows_are_refused() {
    let mut ix = Index::new(Limits {
        max_entries: 100,
        ..LIMITS
    });
    // Eleven pinned versions: eleven GetSecretValue calls, one over the cap.
    let pinned = |n: usize| -> Vec<(String, Version)> {
        (0..n)
            .map(|i| ("n/db".to_string(), Version::Id(format!("v{i}").into())))
            .collect()
    };
    let rec = |n: usize| {
        let p = pinned(n);
        let entries: Vec<_> = p
            .iter()
            .map(|(s, v)| (s.as_str(), v.clone(), Form::Keys, None))
            .collect();
        record_for("1h", &entries)
    };
    let why = ix.apply(&pod("n", "a", Some(rec(11)), json!({}))).unwrap();
    assert!(
        why.contains("needs 11 Secrets Manager calls; the webhook allows at most 10"),
        "{why}"
    );
    assert_eq!(ix.apply(&pod("n", "b", Some(rec(10)), json!({}))), None);
    // Forty current versions are two batch calls.
    let many: Vec<String> = (0..40).map(|i| format!("n/s{i}")).collect();
    let entries: Vec<_> = many
        .iter()
        .map(|s| (s.as_str(), cur(), Form::Keys, None))
        .collect();
    assert_eq!(
        ix.apply(&pod("n", "c", Some(record_for("1h", &entries)), json!({}))),
        None
    );
}

#[test]
fn records_and_versions_of_earlier_builds_read_as_the_compact_ones() {
    let entries = [
        ("n/db", cur(), Form::Keys, None),
        ("n/x", Version::Id("v7".into()), Form::Raw, None),
        (
            "n/s",
            cur(),
            Form::Keys,
            Some("arn:aws:secretsmanager:eu-west-1:123456789012:secret:n/s-AbCdEf"),
        ),
    ];
    let compact = record_for("1h", &entries);
    let full = record_in_full("1h", &entries);
    assert!(!compact.contains("backing") && !compact.contains("AWSCURRENT"));
    assert_eq!(compact.matches("\"form\"").count(), 1, "{compact}");
    assert!(compact.len() * 2 < full.len(), "{compact} against {full}");
    let names = [
        backing::name("n/db", &cur(), Form::Keys),
        backing::name("n/x", &Version::Id("v7".into()), Form::Raw),
        backing::name_scoped("n/s", Some("eu-west-1:123456789012"), &cur(), Form::Keys),
    ];
    let by_backing = json!({&names[0]: "d1", &names[2]: "s1"}).to_string();
    let in_order = r#"["d1",null,"s1"]"#.to_string();
    let mut ix = Index::new(LIMITS);
    for (name, record, versions) in [("new", compact, in_order), ("old", full, by_backing)] {
        let mut p = pod("n", name, Some(record.clone()), json!({}));
        p.metadata.annotations =
            Some([(INJECTED.into(), record), (VERSIONS.into(), versions)].into());
        assert_eq!(ix.apply(&p), None, "{name}");
    }
    let (new, old) = (
        &ix.pods[&("n".into(), "new".into())],
        &ix.pods[&("n".into(), "old".into())],
    );
    assert_eq!(new.record.entries, old.record.entries);
    let read: Vec<&str> = new
        .record
        .entries
        .iter()
        .map(|e| e.backing.as_str())
        .collect();
    assert_eq!(read, names);
    let d1 = |v: &Versions| {
        v.iter()
            .map(|v| v.as_deref().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    assert_eq!(d1(&new.versions), d1(&old.versions));
    assert_eq!(
        d1(&new.versions),
        [Some("d1".into()), None, Some("s1".into())]
    );
    // An array that does not line up with the record is not taken.
    let mut p = pod("n", "short", Some(record_for("1h", &entries)), json!({}));
    let a = p.metadata.annotations.as_mut().unwrap();
    a.insert(VERSIONS.into(), r#"["d1"]"#.into());
    ix.apply(&p);
    assert!(ix.pods[&("n".into(), "short".into())].versions.is_empty());
}
