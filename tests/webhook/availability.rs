//! Staying available and cheap: sm-injector down, dry runs and the quota,
//! a Secrets Manager outage, bursts of pods (kept decisions: `decisions`).

use super::*;

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn with_sm_injector_down_pods_without_its_annotations_are_still_admitted() {
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "down", &[INJECT]).await;
    // The shipped configuration (matchConditions included), pointing at a
    // port where nothing answers: sm-injector is down.
    let dead = support::free_port();
    support::start_url_webhook(bed, &client, &format!("down-{ns}"), dead, &[&ns]).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let refused = |e: &kube::Error| match e {
        kube::Error::Api(e) => e.message.contains("failed calling webhook"),
        _ => false,
    };
    // Wait until the API server applies the configuration (an annotated pod fails).
    support::eventually(
        Duration::from_secs(30),
        "the configuration to take effect",
        || async {
            let p = pod(
                "probe",
                json!({"sm-injector.io/env.X": format!("{ns}/s#k")}),
                one_container(),
            );
            let dry = PostParams {
                dry_run: true,
                ..Default::default()
            };
            match pods.create(&dry, &p).await {
                Err(e) if refused(&e) => Some(()),
                _ => None,
            }
        },
    )
    .await;
    let plain = create(
        &client,
        &ns,
        &pod("plain", json!({"other.io/x": "y"}), one_container()),
    )
    .await;
    assert!(
        plain.is_ok(),
        "no sm-injector.io/ annotation: admitted without calling it: {plain:?}"
    );
    let bare: Pod = serde_json::from_value(json!({
        "metadata": {"name": "bare"},
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/c:1"}]}
    }))
    .unwrap();
    assert!(
        pods.create(&PostParams::default(), &bare).await.is_ok(),
        "no annotations at all"
    );
    // A typo still has the prefix: it reaches the webhook (here: fails closed).
    let typo = pods
        .create(
            &PostParams::default(),
            &pod(
                "typo",
                json!({"sm-injector.io/envv.X": "x"}),
                one_container(),
            ),
        )
        .await;
    assert!(typo.as_ref().is_err_and(refused), "{typo:?}");
    Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
        client.clone(),
    )
    .delete(&format!("down-{ns}"), &Default::default())
    .await
    .unwrap();
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn dry_runs_cannot_spend_the_secrets_manager_quota() {
    let (_bed, client, ns, inj) = setup("fanout").await;
    let calls = || inj.metric("sm_injector_secretsmanager_calls_total");
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let before = calls().await;
    // Eleven pinned versions need eleven calls: denied before any is made.
    let mut pins = serde_json::Map::new();
    for i in 0..11 {
        pins.insert(
            format!("sm-injector.io/env.V{i}"),
            json!(format!("{ns}/s?versionId=v{i}#k")),
        );
    }
    let e = pods
        .create(
            &dry,
            &pod("fanout", serde_json::Value::Object(pins), one_container()),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("the pod's references need 11 Secrets Manager calls")
            && e.to_string().contains("at most 10 per pod"),
        "{e}"
    );
    assert_eq!(calls().await, before, "no call for a pod over the cap");
    // A missing secret, asked again and again: one call, then remembered.
    for _ in 0..5 {
        let e = pods
            .create(
                &dry,
                &pod(
                    "missing",
                    json!({"sm-injector.io/env.K": format!("{ns}/nope#k")}),
                    one_container(),
                ),
            )
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("not found in Secrets Manager"),
            "{e}"
        );
    }
    assert_eq!(calls().await, before + 1.0, "one call for five dry runs");
    inj.stop(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn secrets_manager_outage_serves_existing_secrets_with_a_warning_else_denies() {
    let (bed, client, ns, inj) = setup("outage").await;
    bed.put_secret(&format!("{ns}/db"), r#"{"pw":"before-outage"}"#)
        .await;
    bed.put_secret(&format!("{ns}/new"), r#"{"pw":"never-fetched"}"#)
        .await;
    create_one(
        &client,
        &ns,
        "before",
        json!({"sm-injector.io/env.PW": format!("{ns}/db#pw")}),
    )
    .await
    .unwrap();
    inj.stop(&client).await;

    // The same webhook with Secrets Manager unreachable (nothing listens there).
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let inj = injector::start(
        bed,
        &[&ns],
        Options {
            aws_endpoint: Some(dead),
            ..Default::default()
        },
    )
    .await;
    let p = pod(
        "during",
        json!({"sm-injector.io/env.PW": format!("{ns}/db#pw")}),
        one_container(),
    );
    let (ok, _, stderr) = kubectl_create(bed, &ns, &p, &[]).await;
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("Warning: Secrets Manager could not be reached"),
        "{stderr}"
    );
    assert!(
        stderr.contains("using the existing backing Secret"),
        "{stderr}"
    );
    let stored = Api::<Pod>::namespaced(client.clone(), &ns)
        .get("during")
        .await
        .unwrap();
    assert_eq!(
        resolve_env(&client, &ns, &stored.spec.unwrap().containers[0]).await["PW"],
        b"before-outage"
    );

    let msg = create_one(
        &client,
        &ns,
        "new",
        json!({"sm-injector.io/env.PW": format!("{ns}/new#pw")}),
    )
    .await
    .unwrap_err();
    assert!(
        msg.contains("Secrets Manager could not be reached"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("no backing Secret for \"{ns}/new\"")),
        "{msg}"
    );
    // A key the existing Secret does not hold cannot be served either.
    let msg = create_one(
        &client,
        &ns,
        "newkey",
        json!({"sm-injector.io/env.X": format!("{ns}/db#other")}),
    )
    .await
    .unwrap_err();
    assert!(msg.contains("has no key \"other\""), "{msg}");
    inj.stop(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn twenty_pods_at_once_cost_one_secrets_manager_read_and_one_write_per_secret() {
    let (bed, client, ns, inj) = setup("burst").await;
    bed.put_secret(&format!("{ns}/a"), r#"{"k":"a"}"#).await;
    bed.put_secret(&format!("{ns}/b"), r#"{"k":"b"}"#).await;
    bed.put_secret(&format!("{ns}/c"), "whole").await;
    let anns = json!({
        "sm-injector.io/env.A": format!("{ns}/a#k"),
        "sm-injector.io/env.B": format!("{ns}/b#k"),
        "sm-injector.io/env.C": format!("{ns}/c"),
    });
    let results = futures::future::join_all((0..20).map(|i| {
        let (client, ns, p) = (
            client.clone(),
            ns.clone(),
            pod(&format!("p{i}"), anns.clone(), one_container()),
        );
        async move { create(&client, &ns, &p).await }
    }))
    .await;
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    assert_eq!(
        inj.metric("sm_injector_secretsmanager_secrets_requested_total")
            .await,
        3.0
    );
    assert_eq!(
        inj.metric("sm_injector_secretsmanager_calls_total{operation=\"BatchGetSecretValue\"}")
            .await,
        1.0
    );
    assert_eq!(
        inj.metric("sm_injector_backing_secret_writes_total{operation=\"apply\"}")
            .await,
        3.0
    );
    assert_eq!(managed_secrets(&client, &ns).await.len(), 3);
    assert_eq!(
        inj.metric("sm_injector_admissions_total{outcome=\"mutated\"}")
            .await,
        20.0
    );

    // Warm: another pod makes no Secrets Manager call and no Kubernetes write.
    create(&client, &ns, &pod("warm", anns, one_container()))
        .await
        .unwrap();
    assert_eq!(
        inj.metric("sm_injector_secretsmanager_secrets_requested_total")
            .await,
        3.0
    );
    assert_eq!(
        inj.metric("sm_injector_backing_secret_writes_total{operation=\"apply\"}")
            .await,
        3.0
    );
    inj.stop(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn without_an_aws_region_the_replica_is_not_ready_and_says_why() {
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "noregion", &[INJECT]).await;
    let own = namespace(&client, "noregion-own", &[]).await;
    let home = bed.dir.join("noregion-home");
    std::fs::create_dir_all(&home).unwrap();
    let home = home.display().to_string();
    // No region anywhere: not in the environment, no profile.
    let server = support::start_serve_process(
        bed,
        std::path::Path::new(env!("CARGO_BIN_EXE_sm-injector")),
        "sm-injector-noregion",
        &bed.kubeconfig,
        &[&format!("--lease-namespace={own}")],
        &bed.moto,
        &[
            ("!AWS_REGION", ""),
            ("!AWS_DEFAULT_REGION", ""),
            ("!AWS_PROFILE", ""),
            ("HOME", &home),
            ("AWS_CONFIG_FILE", "/nonexistent/config"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials"),
        ],
    );
    // Not ready, with the reason, while alive (no crash loop).
    let why = eventually(
        Duration::from_secs(30),
        "/readyz naming the region",
        || async {
            let (status, body) = injector::http_get(server.probe, "/readyz").await;
            (status == 503 && body.contains("no AWS region")).then_some(body)
        },
    )
    .await;
    assert!(why.contains("AWS_REGION"), "{why}");
    assert_eq!(injector::http_get(server.probe, "/healthz").await.0, 200);
    let log = std::fs::read_to_string(bed.dir.join("logs/sm-injector-noregion.log")).unwrap();
    assert!(
        log.contains("cannot call AWS Secrets Manager") && log.contains("no AWS region"),
        "one clear log line: {log}"
    );
    // A pod that needs a secret is denied with the cause, not "unreachable".
    support::start_url_webhook(bed, &client, &format!("noregion-{ns}"), server.port, &[&ns]).await;
    let secret = format!("{ns}/db");
    bed.put_secret(&secret, r#"{"pw":"x"}"#).await;
    let denied = eventually(Duration::from_secs(30), "the denial", || async {
        create_one(
            &client,
            &ns,
            "p",
            json!({"sm-injector.io/env.PW": format!("{secret}#pw")}),
        )
        .await
        .err()
        .filter(|m| m.contains("sm-injector"))
    })
    .await;
    assert!(denied.contains("not configured for AWS"), "{denied}");
    support::signal(server.pid as i32, libc::SIGTERM);
}
