//! Decisions kept for pods that ask for the same thing, through the real API
//! server: replicas share one while the namespace's rule and the values it
//! read hold, and record the versions a pod decided afresh records.

use super::*;

/// Pods that ask for the same thing (a ReplicaSet's replicas) share a
/// decision: the one made for the first is used again, but only while the
/// namespace's rule and the secret values it read are unchanged
/// (`src/decisions/`).
#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn identical_pods_reuse_a_decision_only_while_its_rule_and_values_hold() {
    let (bed, client, ns, inj) = setup("replicas").await;
    let sm = bed.aws().await;
    bed.put_secret(&format!("{ns}/db"), r#"{"url":"one"}"#)
        .await;
    let replica: Pod = serde_json::from_value(json!({
        "metadata": {
            "generateName": "web-",
            "labels": {"app": "web"},
            "annotations": {"sm-injector.io/env.DB_URL": format!("{ns}/db#url")}
        },
        "spec": {"containers": one_container()}
    }))
    .unwrap();
    let reused = || inj.metric("sm_injector_decisions_reused_total");
    let db_url = |p: Pod| {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let c = &p.spec.unwrap().containers[0];
            resolve_env(&client, &ns, c).await["DB_URL"].clone()
        }
    };

    // Three replicas (each given its own token volume by the API server): the
    // first is decided, the next two reuse its decision, and each gets the
    // same, working patch. So does a pod named otherwise (a StatefulSet's).
    let record =
        |p: &Pod| p.metadata.annotations.as_ref().unwrap()["sm-injector.io/versions"].clone();
    let mut names = vec![];
    let mut records = vec![];
    for _ in 0..3 {
        let p = create(&client, &ns, &replica).await.unwrap();
        names.push(p.metadata.name.clone().unwrap());
        records.push(record(&p));
        assert_eq!(db_url(p).await, b"one");
    }
    names.dedup();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(reused().await, 2.0);
    // The third's review is recalled (src/recall.rs): its body is the
    // second's but for the uid, the managed fields' time and the token
    // volume's name.
    let recalled = || inj.metric("sm_injector_reviews_recalled_total");
    assert_eq!(recalled().await, 1.0);
    let mut named = replica.clone();
    named.metadata.generate_name = None;
    named.metadata.name = Some("db-0".into());
    assert_eq!(
        db_url(create(&client, &ns, &named).await.unwrap()).await,
        b"one"
    );
    assert_eq!(reused().await, 3.0);
    assert_eq!(
        recalled().await,
        1.0,
        "a pod named otherwise is read afresh"
    );
    // A pod whose containers differ is decided afresh.
    let mut other = replica.clone();
    other.spec.as_mut().unwrap().containers[0].name = "api".into();
    let afresh = create(&client, &ns, &other).await.unwrap();
    // The kept decision's patch (written out as kept, with its record of
    // versions) records what one made afresh records.
    records.push(record(&afresh));
    records.dedup();
    assert_eq!(records.len(), 1, "{records:?}");
    let current = sm
        .get_secret_value()
        .secret_id(format!("{ns}/db"))
        .send()
        .await
        .unwrap();
    let recorded: Vec<Option<String>> = serde_json::from_str(&records[0]).unwrap();
    assert_eq!(
        recorded,
        [Some(current.version_id().unwrap().to_string())],
        "{records:?}"
    );
    assert_eq!(db_url(afresh).await, b"one");
    assert_eq!(reused().await, 3.0);

    // A new value: once the cache holds it, the kept decision no longer
    // applies. Admissions never move a backing Secret to another version
    // (only the refresher's leader does): the replica is admitted against
    // what its Secret holds, and the cached value is dropped as stale.
    let rotated = sm
        .put_secret_value()
        .secret_id(format!("{ns}/db"))
        .secret_string(r#"{"url":"two"}"#)
        .send()
        .await
        .unwrap();
    let key = sm_injector::fetch::FetchKey {
        id: format!("{ns}/db"),
        version: sm_injector::reference::Version::Stage("AWSCURRENT".into()),
    };
    assert!(
        inj.webhook
            .source
            .cached(&sm_injector::identity::Identity::Own, &key)
            .await
            .is_some()
    );
    inj.webhook
        .source
        .invalidate(
            &ns,
            &sm_injector::identity::Identity::Own,
            std::slice::from_ref(&key),
        )
        .await;
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&dry, &other)
        .await
        .unwrap();
    assert!(
        inj.webhook
            .source
            .cached(&sm_injector::identity::Identity::Own, &key)
            .await
            .is_some()
    );
    let p = create(&client, &ns, &replica).await.unwrap();
    let versions = p.metadata.annotations.clone().unwrap()["sm-injector.io/versions"].clone();
    assert_eq!(db_url(p).await, b"one", "the Secret keeps its version");
    assert!(
        !versions.contains(rotated.version_id().unwrap()),
        "the pod records what its Secret holds: {versions}"
    );
    assert!(
        inj.webhook
            .source
            .cached(&sm_injector::identity::Identity::Own, &key)
            .await
            .is_none()
    );
    assert_eq!(reused().await, 3.0);
    // The leader's write (the same one the refresher makes) moves it; then
    // replicas are admitted on the new version, and decided once again.
    let written = support::leader_write(
        &client,
        &ns,
        &format!("{ns}/db"),
        rotated.arn().unwrap(),
        rotated.version_id().unwrap(),
        r#"{"url":"two"}"#,
    )
    .await;
    assert!(matches!(
        written,
        sm_injector::store::Written::Rotated { .. }
    ));
    let p = create(&client, &ns, &replica).await.unwrap();
    assert_eq!(db_url(p).await, b"two");
    assert_eq!(reused().await, 3.0);
    create(&client, &ns, &replica).await.unwrap();
    assert_eq!(reused().await, 4.0);

    // A narrower rule: the same replica is now denied, however often it
    // was admitted before; widened again, it is admitted.
    // (Each change is awaited in the webhook's Namespace cache first.)
    let annotate = |value: &'static str| {
        let (client, ns, webhook) = (client.clone(), ns.clone(), inj.webhook.clone());
        async move {
            let patch =
                json!({"metadata": {"annotations": {"sm-injector.io/allowed-secrets": value}}});
            Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
                .patch(
                    &ns,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
                .unwrap();
            eventually(Duration::from_secs(10), "the Namespace cache", || async {
                let seen = webhook
                    .namespaces
                    .annotation(&ns, "sm-injector.io/allowed-secrets");
                (seen.as_deref() == Some(value)).then_some(())
            })
            .await;
        }
    };
    annotate("nothing-here/*").await;
    let msg = create(&client, &ns, &replica).await.unwrap_err();
    assert!(msg.contains("nothing-here/*"), "{msg}");
    assert_eq!(reused().await, 4.0);
    annotate("replicas-*/*").await;
    let p = create(&client, &ns, &replica).await.unwrap();
    assert_eq!(db_url(p).await, b"two");
    inj.stop(&client).await;
}
