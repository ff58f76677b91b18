//! What the refresher refuses and what it leaves alone, against the real API
//! server and moto: forged and oversized records are refused once with no
//! Secrets Manager call; an outage leaves every backing Secret as it is and
//! fires the alert; a narrowed `allowed-secrets` stops the refresh and
//! deletes the copy.

use super::*;

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn forged_and_oversized_records_are_refused_once_with_no_secrets_manager_call() {
    let _serial = SERIAL.lock().await;
    let bed = testbed();
    let client = bed.client().await;
    let victim = namespace(&client, "victim", &[INJECT]).await;
    // Not opted in: a tenant there labels and annotates its own pod as the
    // webhook would have.
    let attacker = namespace(&client, "attacker", &[]).await;
    let labelled = namespace(&client, "oversized", &[INJECT]).await;
    let own = namespace(&client, "forged-own", &[]).await;
    bed.put_secret(&format!("{victim}/db"), r#"{"pw":"victims"}"#)
        .await;
    let current = sm_injector::reference::Version::current();
    let entry = |secret: &str| {
        let backing =
            sm_injector::backing::name(secret, &current, sm_injector::backing::Form::Keys);
        (
            backing.clone(),
            json!({"backing": backing, "secret": secret, "version": current.to_string(), "form": "keys"}),
        )
    };
    let (victim_backing, e) = entry(&format!("{victim}/db"));
    let forged = json!({"refreshInterval": "1s", "secrets": [e]});
    let big: Vec<serde_json::Value> = (0..=MAX_BACKING_PER_POD)
        .map(|i| entry(&format!("{labelled}/s{i}")).1)
        .collect();
    let oversized = json!({"refreshInterval": "1s", "secrets": big});
    let forged_pod = |name: &str, record: &serde_json::Value| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"sm-injector.io/injected": "true"},
                         "annotations": {"sm-injector.io/injected": record.to_string()}},
            "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
        }))
        .unwrap()
    };
    Api::<Pod>::namespaced(client.clone(), &attacker)
        .create(&PostParams::default(), &forged_pod("forged", &forged))
        .await
        .unwrap();
    Api::<Pod>::namespaced(client.clone(), &labelled)
        .create(&PostParams::default(), &forged_pod("oversized", &oversized))
        .await
        .unwrap();
    let r = start_refresher(bed, &client, None, &own, Some(Duration::from_secs(1))).await;
    eventually(Duration::from_secs(20), "both refusals", || async {
        (r.metric("sm_injector_refresh_refused_total{reason=\"not-opted-in\"}") >= 1.0
            && r.metric("sm_injector_refresh_refused_total{reason=\"record\"}") >= 1.0)
            .then_some(())
    })
    .await;
    // Many ticks later: each still counted (and logged) once, nothing fetched
    // for them, nothing written where the namespace did not opt in.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        r.metric("sm_injector_refresh_refused_total{reason=\"not-opted-in\"}"),
        1.0
    );
    assert_eq!(
        r.metric("sm_injector_refresh_refused_total{reason=\"record\"}"),
        1.0
    );
    assert!(
        r.metric("sm_injector_secretsmanager_secrets_requested_total") < 5.0,
        "a forged or oversized record makes no fetch: {}",
        r.metrics.encode()
    );
    let attackers = Api::<Secret>::namespaced(client.clone(), &attacker)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        attackers
            .items
            .iter()
            .all(|s| s.metadata.name.as_deref() != Some(&victim_backing))
    );
    assert!(backing_secrets(&client, &labelled).await.is_empty());
    drop(r);
    cleanup(&client, &[&victim, &attacker, &labelled, &own]).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn an_outage_leaves_backing_secrets_as_they_are_and_the_alert_fires() {
    let _serial = SERIAL.lock().await;
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "refresh-outage", &[INJECT]).await;
    let own = namespace(&client, "outage-own", &[]).await;
    let inj = injector::start(
        bed,
        &[&ns],
        Options {
            min_refresh: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .await;
    bed.put_secret(&format!("{ns}/db"), r#"{"pw":"kept"}"#)
        .await;
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &pod("app", json!({"sm-injector.io/env.PW": format!("{ns}/db#pw"), "sm-injector.io/refresh-interval": "1s"})),
        )
        .await
        .unwrap();
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let down = start_refresher(bed, &client, Some(&dead), &own, None).await;
    // The README's alert: time() - sm_injector_refresh_oldest_due_timestamp_seconds > threshold.
    let overdue = |r: &Running| {
        let due = r.metric("sm_injector_refresh_oldest_due_timestamp_seconds ");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        (due > 0.0).then_some(now - due)
    };
    eventually(
        Duration::from_secs(30),
        "the overdue age to pass 5 s during the outage",
        || async { overdue(&down).filter(|o| *o > 5.0) },
    )
    .await;
    assert_eq!(holds(&client, &ns, "pw").await, "kept", "never emptied");
    assert!(
        down.metric("sm_injector_refresh_failures_total{reason=\"secretsmanager\"}") >= 1.0,
        "{}",
        down.metrics.encode()
    );
    assert!(down.metric("sm_injector_refresh_failing_secrets ") >= 1.0);
    assert_eq!(down.metric("sm_injector_refresh_leader "), 1.0);
    // A Warning Event on the affected workload (here the pod itself: nothing owns it).
    let ev = warning_event(&client, &ns, "SecretRefreshFailed").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(ev.regarding.as_ref().unwrap().name.as_deref(), Some("app"));
    let note = ev.note.unwrap_or_default();
    assert!(
        note.contains(&format!("{ns}/db")) && !note.contains("kept"),
        "{note}"
    );
    drop(down);

    bed.rotate(&format!("{ns}/db"), r#"{"pw":"new"}"#).await;
    let up = start_refresher(bed, &client, None, &own, None).await;
    eventually(Duration::from_secs(30), "refreshing to resume", || async {
        (holds(&client, &ns, "pw").await == "new").then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "the alert to clear", || async {
        overdue(&up).filter(|o| *o < 5.0)
    })
    .await;
    drop(up);
    inj.stop(&client).await;
    cleanup(&client, &[&ns, &own]).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn narrowing_allowed_secrets_stops_refreshing_and_deletes_the_copy() {
    let _serial = SERIAL.lock().await;
    let bed = testbed();
    let client = bed.client().await;
    let lib = namespace(&client, "lib", &[]).await;
    let shared = format!("{lib}/*");
    let ns = namespace_with(
        &client,
        "revoke",
        &[INJECT],
        &[("sm-injector.io/allowed-secrets", &shared)],
    )
    .await;
    let own = namespace(&client, "revoke-own", &[]).await;
    let inj = injector::start(bed, &[&ns], Options::default()).await;
    bed.put_secret(&format!("{lib}/smtp"), r#"{"pw":"p"}"#)
        .await;
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &pod(
                "app",
                json!({"sm-injector.io/env.PW": format!("{lib}/smtp#pw")}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(backing_secrets(&client, &ns).await.len(), 1);
    let r = start_refresher(bed, &client, None, &own, Some(Duration::from_secs(2))).await;
    eventually(
        Duration::from_secs(20),
        "the refresher to see it",
        || async { (r.metric("sm_injector_refresh_backing_secrets ") >= 1.0).then_some(()) },
    )
    .await;
    // The admin narrows the rule back to the namespace's own secrets.
    bed.kubectl_run(
        &[
            "annotate",
            "namespace",
            &ns,
            "--overwrite",
            &format!("sm-injector.io/allowed-secrets={ns}/*"),
        ],
        None,
    )
    .unwrap();
    eventually(
        Duration::from_secs(30),
        "the copy to be deleted",
        || async { backing_secrets(&client, &ns).await.is_empty().then_some(()) },
    )
    .await;
    assert_eq!(
        r.metric("sm_injector_refresh_refused_total{reason=\"not-allowed\"}"),
        1.0
    );
    let ev = warning_event(&client, &ns, "SecretAccessRevoked").await;
    let note = ev.note.unwrap_or_default();
    // It names the backing Secret and the rule, not the secret now outside it.
    let backing = sm_injector::backing::name(
        &format!("{lib}/smtp"),
        &sm_injector::reference::Version::current(),
        sm_injector::backing::Form::Keys,
    );
    assert!(
        note.contains(&backing)
            && note.contains(&format!("{ns}/*"))
            && !note.contains(&format!("{lib}/smtp")),
        "{note}"
    );
    drop(r);
    inj.stop(&client).await;
    cleanup(&client, &[&ns, &lib, &own]).await;
}
