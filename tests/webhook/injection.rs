//! What a pod gets: the seed's Deployment, pinned versions, binary secrets,
//! env-from, selected containers, explicit env kept, reinvocation (`render`
//! giving the same pod as the webhook: `render`).

use super::*;

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn seed_example_deployment_resolves_to_the_values_in_secrets_manager() {
    let (bed, client, ns, inj) = setup("arrakis").await;
    bed.put_secret(
        &format!("{ns}/discord"),
        r#"{"bot_token":"tok-123","application_id":987654321}"#,
    )
    .await;
    bed.put_secret(
        &format!("{ns}/postgres"),
        r#"{"url":"postgres://app:pw@db:5432/app"}"#,
    )
    .await;
    bed.put_secret(
        &format!("{ns}/redis"),
        r#"{"HOST":"redis.internal","PORT":6379}"#,
    )
    .await;

    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "bot"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "bot"}},
            "template": {
                "metadata": {
                    "labels": {"app": "bot"},
                    "annotations": {
                        "sm-injector.io/env.DISCORD_BOT_TOKEN": format!("{ns}/discord#bot_token"),
                        "sm-injector.io/env.DISCORD_APPLICATION_ID": format!("{ns}/discord#application_id"),
                        "sm-injector.io/env.DATABASE_URL": format!("{ns}/postgres#url"),
                        "sm-injector.io/env-from.REDIS": format!("{ns}/redis")
                    }
                },
                "spec": {
                    "initContainers": [{"name": "migrate", "image": "registry.invalid/migrate:1"}],
                    "containers": [
                        {"name": "bot", "image": "registry.invalid/bot:1", "env": [{"name": "LOG_LEVEL", "value": "info"}]},
                        {"name": "sidecar", "image": "registry.invalid/sidecar:1"}
                    ]
                }
            }
        }
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deploy)
        .await
        .unwrap();
    let pods = eventually(Duration::from_secs(60), "two pods", || async {
        let l = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels("app=bot"))
            .await
            .ok()?;
        (l.items.len() == 2).then_some(l.items)
    })
    .await;

    let secret_values = [
        "tok-123",
        "987654321",
        "postgres://app:pw@db:5432/app",
        "redis.internal",
    ];
    for p in &pods {
        let json = serde_json::to_string(p).unwrap();
        for v in secret_values {
            assert!(
                !json.contains(v),
                "the pod spec holds the plaintext value {v:?}"
            );
        }
        let containers = all_containers(p);
        assert_eq!(containers.len(), 3);
        for c in &containers {
            let env = resolve_env(&client, &ns, c).await;
            let s = |k: &str| String::from_utf8(env[k].clone()).unwrap();
            assert_eq!(s("DISCORD_BOT_TOKEN"), "tok-123", "container {}", c.name);
            assert_eq!(s("DISCORD_APPLICATION_ID"), "987654321");
            assert_eq!(s("DATABASE_URL"), "postgres://app:pw@db:5432/app");
            assert_eq!(s("REDIS_HOST"), "redis.internal");
            assert_eq!(s("REDIS_PORT"), "6379");
        }
        let bot = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            bot.env.as_ref().unwrap()[0].value.as_deref(),
            Some("info"),
            "the container's own env stays first"
        );
    }
    // One backing Secret per secret, shared by both pods, labelled and annotated.
    let backing = managed_secrets(&client, &ns).await;
    assert_eq!(backing.len(), 3);
    for s in &backing {
        let a = s.metadata.annotations.as_ref().unwrap();
        assert!(a["sm-injector.io/source-arn"].starts_with("arn:aws:secretsmanager:"));
        assert!(!a["sm-injector.io/version-id"].is_empty());
        assert!(a.contains_key("sm-injector.io/refreshed-at"));
        let managers: Vec<_> = s
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|m| m.manager.clone())
            .collect();
        assert_eq!(
            managers,
            ["sm-injector"],
            "written by server-side apply as sm-injector only"
        );
    }
    inj.stop(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn pinned_stage_binary_secret_and_env_from_with_and_without_prefix() {
    let (bed, client, ns, inj) = setup("shapes").await;
    let sm = bed.aws().await;
    bed.put_secret(&format!("{ns}/rot"), r#"{"pw":"one"}"#)
        .await;
    sm.put_secret_value()
        .secret_id(format!("{ns}/rot"))
        .secret_string(r#"{"pw":"two"}"#)
        .send()
        .await
        .unwrap();
    let bin = vec![0u8, 1, 2, 254, 255];
    sm.create_secret()
        .name(format!("{ns}/bin"))
        .secret_binary(aws_sdk_secretsmanager::primitives::Blob::new(bin.clone()))
        .send()
        .await
        .unwrap();
    bed.put_secret(
        &format!("{ns}/app"),
        r#"{"HOST":"h","PORT":5432,"TLS":true}"#,
    )
    .await;
    bed.put_secret(&format!("{ns}/db"), r#"{"USER":"u","PASSWORD":"p"}"#)
        .await;
    bed.put_secret(&format!("{ns}/cfg"), r#"{"a":1}"#).await;

    let p = create_one(
        &client,
        &ns,
        "shapes",
        json!({
            "sm-injector.io/env.PW_NOW": format!("{ns}/rot#pw"),
            "sm-injector.io/env.PW_BEFORE": format!("{ns}/rot?versionStage=AWSPREVIOUS#pw"),
            "sm-injector.io/env.BLOB": format!("{ns}/bin"),
            "sm-injector.io/env.CFG": format!("{ns}/cfg"),
            "sm-injector.io/env-from": format!("{ns}/app"),
            "sm-injector.io/env-from.DB": format!("{ns}/db"),
        }),
    )
    .await
    .unwrap();
    let env = resolve_env(&client, &ns, &p.spec.unwrap().containers[0]).await;
    let keys: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "BLOB",
            "CFG",
            "DB_PASSWORD",
            "DB_USER",
            "HOST",
            "PORT",
            "PW_BEFORE",
            "PW_NOW",
            "TLS"
        ]
    );
    assert_eq!(env["PW_NOW"], b"two");
    assert_eq!(env["PW_BEFORE"], b"one");
    assert_eq!(env["BLOB"], bin, "raw bytes of SecretBinary");
    assert_eq!(env["CFG"], br#"{"a":1}"#, "the whole SecretString");
    assert_eq!(env["PORT"], b"5432");
    assert_eq!(env["TLS"], b"true");
    assert_eq!(env["DB_USER"], b"u");
    inj.stop(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn containers_annotation_restricts_injection() {
    let (bed, client, ns, inj) = setup("select").await;
    bed.put_secret(&format!("{ns}/s"), r#"{"k":"v"}"#).await;
    let p = create(
        &client,
        &ns,
        &pod(
            "sel",
            json!({
                "sm-injector.io/env.K": format!("{ns}/s#k"),
                "sm-injector.io/containers": "side",
            }),
            json!([
                {"name": "app", "image": "registry.invalid/app:1"},
                {"name": "side", "image": "registry.invalid/side:1"}
            ]),
        ),
    )
    .await
    .unwrap();
    let spec = p.spec.unwrap();
    assert!(spec.containers[0].env.is_none(), "app is not selected");
    assert_eq!(
        resolve_env(&client, &ns, &spec.containers[1]).await["K"],
        b"v"
    );
    inj.stop(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn pods_without_annotations_and_namespaces_without_the_label_are_untouched() {
    let bed = testbed();
    let client = bed.client().await;
    let on = namespace(&client, "labelled", &[INJECT]).await;
    let off = namespace(&client, "unlabelled", &[]).await;
    let inj = injector::start(bed, &[&on, &off], Options::default()).await;
    bed.put_secret(&format!("{off}/s"), r#"{"k":"v"}"#).await;

    let plain = create(
        &client,
        &on,
        &pod("plain", json!({"other.io/x": "y"}), one_container()),
    )
    .await
    .unwrap();
    assert!(plain.spec.unwrap().containers[0].env.is_none());
    assert!(
        !plain
            .metadata
            .annotations
            .unwrap()
            .contains_key("sm-injector.io/injected")
    );
    // Not even a bad annotation is looked at outside the labelled namespaces.
    let outside = create_one(
        &client,
        &off,
        "outside",
        json!({"sm-injector.io/env.K": format!("{off}/s#k"), "sm-injector.io/typo": "x"}),
    )
    .await
    .unwrap();
    assert!(outside.spec.unwrap().containers[0].env.is_none());
    assert!(managed_secrets(&client, &off).await.is_empty());
    assert_eq!(
        inj.metric("sm_injector_secretsmanager_calls_total").await,
        0.0
    );
    inj.stop(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn explicit_env_is_kept_with_a_warning_and_dry_run_writes_nothing() {
    let (bed, client, ns, inj) = setup("warn").await;
    bed.put_secret(&format!("{ns}/s"), r#"{"k":"from-sm","j":"jj"}"#)
        .await;
    let p = pod(
        "dry",
        json!({
            "sm-injector.io/env.K": format!("{ns}/s#k"),
            "sm-injector.io/env.J": format!("{ns}/s#j"),
        }),
        json!([{"name": "app", "image": "registry.invalid/app:1", "env": [{"name": "K", "value": "mine"}]}]),
    );

    let (ok, stdout, stderr) =
        kubectl_create(bed, &ns, &p, &["--dry-run=server", "-o", "json"]).await;
    assert!(ok, "{stderr}");
    let dry: Pod = serde_json::from_str(&stdout).unwrap();
    let env = dry.spec.unwrap().containers[0].env.clone().unwrap();
    assert_eq!(env.len(), 2);
    assert_eq!(env[0].value.as_deref(), Some("mine"));
    assert_eq!(env[1].name, "J");
    assert!(env[1].value_from.as_ref().unwrap().secret_key_ref.is_some());
    assert!(
        stderr.contains("Warning: container \"app\" already sets K; its own value is kept"),
        "{stderr}"
    );
    assert!(
        managed_secrets(&client, &ns).await.is_empty(),
        "a dry run writes no Secret"
    );

    let (ok, _, stderr) = kubectl_create(bed, &ns, &p, &[]).await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("already sets K"), "{stderr}");
    let stored = Api::<Pod>::namespaced(client.clone(), &ns)
        .get("dry")
        .await
        .unwrap();
    let env = resolve_env(&client, &ns, &stored.spec.unwrap().containers[0]).await;
    assert_eq!(env["K"], b"mine");
    assert_eq!(env["J"], b"jj");
    assert_eq!(managed_secrets(&client, &ns).await.len(), 1);
    inj.stop(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn reinvocation_on_its_own_output_adds_no_duplicates() {
    let (bed, client, ns, inj) = setup("reinvoke").await;
    bed.put_secret(&format!("{ns}/s"), r#"{"k":"v","HOST":"h"}"#)
        .await;
    // A second webhook that runs after sm-injector and changes the pod makes the
    // API server call sm-injector again (reinvocationPolicy: IfNeeded).
    let marker = format!("zz-marker-{ns}");
    support::start_marker(bed, &client, &marker, &[&ns]).await;
    let p = pod(
        "twice",
        json!({
            "sm-injector.io/env.K": format!("{ns}/s#k"),
            "sm-injector.io/env-from.X": format!("{ns}/s"),
            "sm-injector.io/mount-path": "/var/run/secrets/sm",
        }),
        one_container(),
    );
    // The API server loads webhook configurations through an informer: a pod
    // created before it sees the marker is deleted (a pod with no node goes
    // at once) and created again; the admissions of the try that saw it count.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let mutated = "sm_injector_admissions_total{outcome=\"mutated\"}";
    let start = std::time::Instant::now();
    let created = loop {
        let before = inj.metric(mutated).await;
        if let Ok(p) = create(&client, &ns, &p).await {
            if p.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key("testbed-mutated"))
            {
                let after = inj.metric(mutated).await;
                assert_eq!(
                    after - before,
                    2.0,
                    "sm-injector was invoked twice for the pod"
                );
                break p;
            }
            let _ = pods
                .delete("twice", &kube::api::DeleteParams::default().grace_period(0))
                .await;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the marker webhook was not called within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let spec = created.spec.unwrap();
    let c = &spec.containers[0];
    assert_eq!(c.env.as_ref().unwrap().len(), 1);
    assert_eq!(c.env_from.as_ref().unwrap().len(), 1);
    let ours: Vec<_> = c
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.mount_path.starts_with("/var/run/secrets/sm"))
        .collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].mount_path, format!("/var/run/secrets/sm/{ns}/s"));
    let vols: Vec<_> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.secret.is_some())
        .collect();
    assert_eq!(vols.len(), 1);
    Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
        client.clone(),
    )
    .delete(&marker, &Default::default())
    .await
    .unwrap();
    inj.stop(&client).await;
}
