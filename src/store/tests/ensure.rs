//! [`Syncer::ensure`], an admission's writer, against a mocked API server:
//! the inventory mark first, the warm path without a request, what a kept
//! decision trusts ([`Vouched`]).

use super::*;
use std::sync::Arc;
use std::time::Instant;

pub(super) fn plan_for(version: &str) -> Plan {
    use crate::plan::{Backing, Content, EnvVar};
    Plan {
        backing: vec![Backing {
            name: "sm-n-db-1".into(),
            secret_name: "n/db".into(),
            version: Version::current(),
            form: Form::Keys,
            fetch: FetchKey {
                id: "n/db".into(),
                version: Version::current(),
            },
            arn: None,
            content: Content::Fresh {
                value: std::sync::Arc::new(value(version)),
            },
        }],
        // The key a Secret at another version must hold.
        env: vec![EnvVar {
            var: "PW".into(),
            secret: "sm-n-db-1".into(),
            key: "pw".into(),
        }],
        env_from: vec![],
        mounts: vec![],
        refresh_interval: Duration::from_secs(3600),
        service_account: None,
    }
}

fn syncer() -> (H, Syncer) {
    let (h, client) = mock_api::client();
    let syncer =
        Syncer::new(client.clone(), Duration::from_secs(60), Metrics::new()).with_inventory(
            Inventory::new(client, "own", "inventory", Duration::from_secs(60)),
        );
    (h, syncer)
}

pub(super) fn config_map() -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "inventory-n", "namespace": "own"}})
}

#[tokio::test]
async fn an_inventory_failure_is_a_warning_not_a_denial() {
    let (mut h, syncer) = syncer();
    let plan = plan_for("v1");
    let t =
        tokio::spawn(async move { syncer.ensure("n", Some("uid-1"), &plan, false, None).await });
    answer(&mut h, 500, status(500, "InternalError")).await;
    answer(&mut h, 404, status(404, "NotFound")).await;
    let (method, _, _, _) = answer(&mut h, 201, held("v1", true)).await;
    assert_eq!(method, "POST");
    let ensured = done(t).await.unwrap();
    assert!(ensured.warnings[0].contains("inventory"), "{ensured:?}");
    assert!(ensured.held.is_empty(), "it holds what was fetched");
}

#[tokio::test]
async fn an_admission_that_reads_a_backing_secret_counts_the_read() {
    let (mut h, client) = mock_api::client();
    let metrics = Metrics::new();
    let syncer =
        Syncer::new(client.clone(), Duration::from_secs(60), metrics.clone()).with_inventory(
            Inventory::new(client, "own", "inventory", Duration::from_secs(60)),
        );
    let plan = plan_for("v1");
    let (s, p) = (syncer.clone(), plan.clone());
    let t = tokio::spawn(async move { s.ensure("n", Some("uid-1"), &p, false, None).await });
    // The inventory was made before: the Secret is read, and holds v1.
    answer(&mut h, 200, config_map()).await;
    let (method, _, _, _) = answer(&mut h, 200, held("v1", true)).await;
    assert_eq!(method, "PATCH", "read with an empty merge patch");
    done(t).await.unwrap();
    let reads = r#"sm_injector_backing_secret_reads_total{operation="admission"}"#;
    assert!(metrics.encode().contains(&format!("{reads} 1")));
    // Known now: the next admission answers without a request or a read.
    let again = syncer.ensure("n", Some("uid-1"), &plan, false, None);
    tokio::time::timeout(Duration::from_secs(5), again)
        .await
        .expect("answered without a request")
        .unwrap();
    assert!(metrics.encode().contains(&format!("{reads} 1")));
}

/// An admission's ensure of version v2, the inventory already made, finding
/// the backing Secret as `found`; the API server's handle (for what follows
/// in the background) and what ensure returned.
async fn ensure_v2_finding(found: Value) -> (H, Result<Ensured, Vec<String>>) {
    let (mut h, syncer) = syncer();
    let plan = plan_for("v2");
    let t =
        tokio::spawn(async move { syncer.ensure("n", Some("uid-1"), &plan, false, None).await });
    answer(&mut h, 200, config_map()).await;
    answer(&mut h, 200, found).await;
    (h, done(t).await)
}

#[tokio::test]
async fn another_version_without_a_key_an_env_entry_reads_is_a_denial_naming_it() {
    let mut v1 = held("v1", true);
    v1["data"] = json!({"user": "eA=="});
    let (_h, ensured) = ensure_v2_finding(v1).await;
    let errors = ensured.unwrap_err();
    assert!(
        errors[0].contains("holds version v1") && errors[0].contains(r#"has no key "pw""#),
        "{errors:?}"
    );
}

#[tokio::test]
async fn an_admission_that_finds_another_version_records_it_and_tells_the_refresher() {
    let (mut h, ensured) = ensure_v2_finding(held("v1", true)).await;
    let ensured = ensured.unwrap();
    assert_eq!(
        ensured.versions(&plan_for("v2")).collect::<Vec<_>>(),
        [Some("v1")],
        "the pod reads what the Secret holds"
    );
    assert_eq!(ensured.stale.len(), 1, "the cached value is dropped");
    // In the background: the inventory mark that makes the leader look now.
    let (method, _, ct, body) = answer(&mut h, 200, config_map()).await;
    assert_eq!(
        (method.as_str(), ct.as_str()),
        ("PATCH", "application/merge-patch+json")
    );
    assert_eq!(body, json!({"data": {"sm-n-db-1": "due:v2"}}));
}

#[tokio::test]
async fn a_namespace_made_again_is_not_taken_for_the_one_written_before() {
    let (mut h, syncer) = syncer();
    let plan = plan_for("v1");
    let (s, p) = (syncer.clone(), plan.clone());
    let t = tokio::spawn(async move { s.ensure("n", Some("uid-1"), &p, false, None).await });
    answer(&mut h, 200, config_map()).await;
    answer(&mut h, 404, status(404, "NotFound")).await;
    answer(&mut h, 201, held("v1", true)).await;
    done(t).await.unwrap();
    // The same namespace: known, no request at all.
    let (s, p) = (syncer.clone(), plan.clone());
    let t = tokio::spawn(async move { s.ensure("n", Some("uid-1"), &p, false, None).await });
    let warm = done(t).await.unwrap();
    assert_eq!(warm.versions(&plan).collect::<Vec<_>>(), [Some("v1")]);
    // Same name, new UID: read, and created again.
    let t =
        tokio::spawn(async move { syncer.ensure("n", Some("uid-2"), &plan, false, None).await });
    answer(&mut h, 404, status(404, "NotFound")).await;
    let (method, _, _, _) = answer(&mut h, 201, held("v1", true)).await;
    assert_eq!(method, "POST");
    done(t).await.unwrap();
}

#[tokio::test]
async fn a_kept_decision_trusts_what_its_warm_path_found_in_that_namespace_only() {
    let (mut h, syncer) = syncer();
    let plan = Arc::new(plan_for("v1"));
    let vouched = Arc::new(Vouched::default());
    let ensure = |uid: &'static str, dry_run: bool, v: Option<Arc<Vouched>>| {
        let (s, p) = (syncer.clone(), plan.clone());
        tokio::spawn(async move { s.ensure("n", Some(uid), &p, dry_run, v.as_deref()).await })
    };
    // Written: not vouched for (only the warm path vouches).
    let t = ensure("uid-1", false, Some(vouched.clone()));
    answer(&mut h, 200, config_map()).await;
    answer(&mut h, 404, status(404, "NotFound")).await;
    answer(&mut h, 201, held("v1", true)).await;
    done(t).await.unwrap();
    assert!(!vouched.holds("uid-1", syncer.moves.generation("n"), Instant::now()));
    // A dry run finds nothing: it does not vouch either.
    done(ensure("uid-1", true, Some(vouched.clone())))
        .await
        .unwrap();
    assert!(!vouched.holds("uid-1", syncer.moves.generation("n"), Instant::now()));
    // Warm, no request: vouched for.
    done(ensure("uid-1", false, Some(vouched.clone())))
        .await
        .unwrap();
    assert!(vouched.holds("uid-1", syncer.moves.generation("n"), Instant::now()));
    // What the process knew is forgotten: without the memo, read again...
    syncer.known.invalidate_all();
    let t = ensure("uid-1", false, None);
    let (method, _, _, body) = answer(&mut h, 200, held("v1", true)).await;
    assert_eq!((method.as_str(), body), ("PATCH", json!({})), "the read");
    done(t).await.unwrap();
    // ...with it, no request at all, and no warning.
    syncer.known.invalidate_all();
    let e = done(ensure("uid-1", false, Some(vouched.clone())))
        .await
        .unwrap();
    assert!(e.warnings.is_empty() && e.held.is_empty() && e.stale.is_empty());
    // The same name with another UID (made again) is asked afresh.
    let t = ensure("uid-2", false, Some(vouched.clone()));
    let (method, _, _, body) = answer(&mut h, 404, status(404, "NotFound")).await;
    assert_eq!((method.as_str(), body), ("PATCH", json!({})), "the read");
    let (method, _, _, _) = answer(&mut h, 201, held("v1", true)).await;
    assert_eq!(method, "POST");
    done(t).await.unwrap();
}

#[tokio::test]
async fn a_kept_decision_trusts_a_tenth_of_what_an_admission_remembers_at_most() {
    let (_h, client) = mock_api::client();
    let at = |ttl| Syncer::new(client.clone(), ttl, Metrics::new()).vouch_for;
    assert_eq!(
        at(Duration::from_secs(3600)),
        VOUCHED_FOR,
        "KNOWN_TTL / 10 is longer"
    );
    assert_eq!(
        at(Duration::from_secs(1)),
        Duration::from_millis(100),
        "--cache-ttl=1s"
    );
}
