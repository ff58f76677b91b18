//! The account's quota: one namespace's dry runs naming fresh secrets, as
//! fast as the API server takes them, against a stand-in for Secrets Manager
//! that throttles past AWS's 100 BatchGetSecretValue calls a second. The
//! namespace is held to its budget; AWS never throttles; another namespace's
//! pods, needing calls of their own, are admitted meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::api::{Api, PostParams};
use tokio::sync::Mutex;

use super::support::faults::{BATCH_QUOTA, FaultyEndpoint, Mode};
use super::support::{namespace, testbed, until_injected};
use super::*;

/// A pod naming 20 secrets nobody has asked for before: one batch call.
fn fresh_pod(ns: &str, tag: &str) -> Pod {
    let annotations: serde_json::Map<_, _> = (0..20)
        .map(|j| {
            (
                format!("sm-injector.io/env.V{j}"),
                json!(format!("{ns}/fresh-{tag}-{j}#k")),
            )
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("greedy-{tag}"), "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    }))
    .unwrap()
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn one_namespace_cannot_spend_the_accounts_quota() {
    let bed = testbed();
    let client = bed.client().await;
    let greedy = namespace(&client, "greedy", &[INJECT]).await;
    let calm = namespace(&client, "calm", &[INJECT]).await;
    let own = namespace(&client, "quota-own", &[]).await;
    for i in 0..10 {
        bed.put_secret(&format!("{calm}/s{i}"), r#"{"k":"v"}"#)
            .await;
    }
    bed.put_secret(&format!("{greedy}/s"), r#"{"k":"v"}"#).await;
    let proxy = FaultyEndpoint::start(bed.moto.trim_start_matches("http://").to_string()).await;
    proxy.set(Mode::Quota);
    let r = replica_at(
        bed,
        &client,
        "attack-quota",
        &own,
        &[&greedy, &calm],
        &[],
        &proxy.url,
    )
    .await;
    until_injected(&client, &greedy, &pod("first", &format!("{greedy}/s#k"))).await;

    // 16 loops of dry runs, each pod naming 20 fresh secrets.
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let mut attack = tokio::task::JoinSet::new();
    for l in 0..16 {
        let (stop, answers, client, ns) = (
            stop.clone(),
            answers.clone(),
            client.clone(),
            greedy.clone(),
        );
        attack.spawn(async move {
            let dry = PostParams {
                dry_run: true,
                ..Default::default()
            };
            let api = Api::<Pod>::namespaced(client, &ns);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let e = match api.create(&dry, &fresh_pod(&ns, &format!("{l}-{i}"))).await {
                    Ok(_) => "admitted".to_string(),
                    Err(e) if e.to_string().contains("over its Secrets Manager budget") => {
                        "over budget".into()
                    }
                    Err(e) if e.to_string().contains("not found in Secrets Manager") => {
                        "not found".into()
                    }
                    Err(e) => e.to_string().chars().take(200).collect(),
                };
                *answers.lock().await.entry(e).or_default() += 1;
                i += 1;
            }
        });
    }
    during(Duration::from_secs(3)).await;

    // The calm namespace's pods each need a call of their own meanwhile.
    let slowest = admitted_meanwhile(
        &client,
        &calm,
        "calm",
        10,
        Duration::from_millis(500),
        |i| format!("{calm}/s{i}#k"),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    while attack.join_next().await.is_some() {}
    let answers = answers.lock().await.clone();
    let calls = proxy.requests.load(Ordering::SeqCst);
    let throttled = proxy.throttled.load(Ordering::SeqCst);
    let busiest = proxy.busiest_second.load(Ordering::SeqCst);
    println!("greedy dry runs answered: {answers:?}");
    println!(
        "10 calm pods admitted meanwhile, the slowest in {slowest:?}; {calls} Secrets Manager \
         calls in all, at most {busiest} BatchGetSecretValue in one second, {throttled} throttled"
    );
    assert_eq!(throttled, 0, "AWS throttled the account");
    assert!(
        busiest < BATCH_QUOTA as u64,
        "{busiest} calls in one second"
    );
    assert!(
        answers.get("over budget").copied().unwrap_or(0) > 0,
        "{answers:?}"
    );
    support::signal(r.pid as i32, libc::SIGKILL);
}
