//! The webhook end to end (SPEC sections 1 to 6): the real API server calls
//! sm-injector, which reads moto through the AWS SDK and writes backing Secrets.
//! Denials are checked by the message the API server returns to the client.

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use support::injector::{self, Injector, Options};
use support::{TestBed, eventually, namespace, namespace_with, testbed};

const INJECT: (&str, &str) = ("sm-injector.io/inject", "enabled");
const MANAGED: &str = "app.kubernetes.io/managed-by=sm-injector";

fn pod(name: &str, annotations: Value, containers: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": containers}
    }))
    .unwrap()
}

/// Creates a pod with one container and these annotations.
async fn create_one(
    client: &kube::Client,
    ns: &str,
    name: &str,
    annotations: Value,
) -> Result<Pod, String> {
    create(client, ns, &pod(name, annotations, one_container())).await
}

fn one_container() -> Value {
    json!([{"name": "app", "image": "registry.invalid/app:1"}])
}

async fn create(client: &kube::Client, ns: &str, p: &Pod) -> Result<Pod, String> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), p)
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) => s.message,
            other => other.to_string(),
        })
}

/// `kubectl create -f -` with a pod: (success, stdout, stderr). kubectl prints
/// admission warnings on stderr as `Warning: ...`. Run without blocking the
/// runtime, which also serves the in-process webhook.
async fn kubectl_create(
    bed: &TestBed,
    ns: &str,
    p: &Pod,
    extra: &[&str],
) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::from(bed.kubectl())
        .args(["-n", ns, "create", "-f", "-"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(serde_json::to_string(p).unwrap().as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// What each env var of `c` resolves to, following `secretKeyRef` and
/// `envFrom.secretRef` into the Secrets; also returns whether any of them is a
/// plaintext `value`.
async fn resolve_env(client: &kube::Client, ns: &str, c: &Container) -> BTreeMap<String, Vec<u8>> {
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let mut env = BTreeMap::new();
    for ef in c.env_from.iter().flatten() {
        let r = ef.secret_ref.as_ref().expect("only secretRef");
        let s = secrets.get(&r.name).await.unwrap();
        for (k, v) in s.data.unwrap_or_default() {
            env.insert(format!("{}{k}", ef.prefix.as_deref().unwrap_or("")), v.0);
        }
    }
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone().into_bytes(),
            (None, Some(vf)) => {
                let r = vf.secret_key_ref.as_ref().expect("secretKeyRef");
                let s = secrets.get(&r.name).await.unwrap();
                s.data.unwrap()[&r.key].0.clone()
            }
            _ => panic!("env var {} has neither value nor valueFrom", e.name),
        };
        env.insert(e.name.clone(), value);
    }
    env
}

fn all_containers(p: &Pod) -> Vec<Container> {
    let spec = p.spec.clone().unwrap();
    spec.init_containers
        .into_iter()
        .flatten()
        .chain(spec.containers)
        .collect()
}

async fn managed_secrets(client: &kube::Client, ns: &str) -> Vec<Secret> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(MANAGED))
        .await
        .unwrap()
        .items
}

async fn setup(prefix: &str) -> (&'static TestBed, kube::Client, String, Injector) {
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, prefix, &[INJECT]).await;
    let inj = injector::start(bed, &[&ns], Options::default()).await;
    (bed, client, ns, inj)
}

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
async fn bad_annotations_are_denied_naming_the_annotation() {
    let (_bed, client, ns, inj) = setup("bad-input").await;
    let cases: Vec<(Value, Value, &[&str])> = vec![
        (
            json!({"sm-injector.io/env.1BAD": format!("{ns}/x#k")}),
            one_container(),
            &[
                "sm-injector.io/env.1BAD",
                "not a valid environment variable name",
            ],
        ),
        (
            json!({"sm-injector.io/envv.TOKEN": format!("{ns}/x#k")}),
            one_container(),
            &[
                "sm-injector.io/envv.TOKEN",
                "unknown sm-injector annotation",
            ],
        ),
        (
            json!({"sm-injector.io/env.A": format!("{ns}/x?stage=AWSPREVIOUS")}),
            one_container(),
            &["sm-injector.io/env.A", "versionStage"],
        ),
        (
            json!({"sm-injector.io/env.A": format!("{ns}/x#k"), "sm-injector.io/refresh-interval": "soon"}),
            one_container(),
            &["sm-injector.io/refresh-interval", "not a duration"],
        ),
        (
            json!({"sm-injector.io/env.A": format!("{ns}/x#k"), "sm-injector.io/refresh-interval": "30s"}),
            one_container(),
            &[
                "sm-injector.io/refresh-interval",
                "shorter than the minimum of 1m",
            ],
        ),
        (
            json!({"sm-injector.io/env.A": format!("{ns}/x#k"), "sm-injector.io/containers": "app,nope"}),
            one_container(),
            &[
                "sm-injector.io/containers",
                "no container named \"nope\"",
                "it has: app",
            ],
        ),
        (
            json!({"sm-injector.io/env.A": "has space"}),
            one_container(),
            &["sm-injector.io/env.A", "cannot contain"],
        ),
    ];
    for (i, (anns, containers, needles)) in cases.into_iter().enumerate() {
        let msg = create(
            &client,
            &ns,
            &pod(&format!("bad-{i}"), anns.clone(), containers),
        )
        .await
        .expect_err(&format!("{anns} must be denied"));
        assert!(msg.contains("denied the request: sm-injector:"), "{msg}");
        for n in needles {
            assert!(msg.contains(n), "{anns}: {n:?} not in {msg:?}");
        }
    }
    assert!(managed_secrets(&client, &ns).await.is_empty());
    inj.stop(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn secret_problems_are_denied_with_the_reason() {
    let (bed, client, ns, inj) = setup("bad-secret").await;
    bed.put_secret(&format!("{ns}/json"), r#"{"k":"v"}"#).await;
    bed.put_secret(&format!("{ns}/plain"), "not json").await;
    let nope = format!("secret \"{ns}/nope\" not found in Secrets Manager");
    let nokey = format!("secret \"{ns}/json\" has no top-level key \"other\"");
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (
            json!({"sm-injector.io/env.A": format!("{ns}/nope#k")}),
            vec!["sm-injector.io/env.A", &nope],
        ),
        (
            json!({"sm-injector.io/env.A": format!("{ns}/json#other")}),
            vec![&nokey],
        ),
        (
            json!({"sm-injector.io/env-from": format!("{ns}/plain")}),
            vec![
                "sm-injector.io/env-from",
                "is not a JSON object, which env-from needs",
            ],
        ),
        (
            json!({"sm-injector.io/env.A": format!("{ns}/plain#k")}),
            vec!["is not a JSON object, so"],
        ),
    ];
    for (i, (anns, needles)) in cases.into_iter().enumerate() {
        let msg = create(
            &client,
            &ns,
            &pod(&format!("p-{i}"), anns.clone(), one_container()),
        )
        .await
        .expect_err(&format!("{anns} must be denied"));
        for n in needles {
            assert!(msg.contains(n), "{anns}: {n:?} not in {msg:?}");
        }
    }
    assert!(managed_secrets(&client, &ns).await.is_empty());
    inj.stop(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn access_rule_denies_other_namespaces_secrets_by_name_and_by_arn() {
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "tenant-a", &[INJECT]).await;
    let other = namespace(&client, "tenant-b", &[INJECT]).await;
    let inj = injector::start(bed, &[&ns, &other], Options::default()).await;
    let arn = bed
        .put_secret(&format!("{other}/db"), r#"{"password":"b-secret"}"#)
        .await;

    let msg = create_one(
        &client,
        &ns,
        "by-name",
        json!({"sm-injector.io/env.PW": format!("{other}/db#password")}),
    )
    .await
    .unwrap_err();
    for n in [
        "sm-injector.io/env.PW",
        &format!("reference \"{other}/db#password\" is not allowed in namespace \"{ns}\""),
        &format!("\"{ns}/*\" (the default rule"),
    ] {
        assert!(msg.contains(n), "{n:?} not in {msg:?}");
    }
    let msg = create_one(
        &client,
        &ns,
        "by-arn",
        json!({"sm-injector.io/env.PW": format!("{arn}#password")}),
    )
    .await
    .unwrap_err();
    assert!(
        msg.contains(&format!(
            "(secret \"{other}/db\") is not allowed in namespace \"{ns}\""
        )),
        "{msg}"
    );
    assert!(!msg.contains("b-secret"));
    // The owner may use it, by ARN too.
    let p = create_one(
        &client,
        &other,
        "owner",
        json!({"sm-injector.io/env.PW": format!("{arn}#password")}),
    )
    .await
    .unwrap();
    let env = resolve_env(&client, &other, &p.spec.unwrap().containers[0]).await;
    assert_eq!(env["PW"], b"b-secret");
    assert!(
        managed_secrets(&client, &ns).await.is_empty(),
        "nothing written for the denied tenant"
    );
    inj.stop(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn namespace_annotation_widens_and_narrows_access() {
    let bed = testbed();
    let client = bed.client().await;
    let shared = format!("shared-{}", std::process::id());
    let wide = namespace_with(
        &client,
        "wide",
        &[INJECT],
        &[(
            "sm-injector.io/allowed-secrets",
            &format!("wide-*/*, {shared}/*"),
        )],
    )
    .await;
    let narrow = namespace_with(
        &client,
        "narrow",
        &[INJECT],
        &[("sm-injector.io/allowed-secrets", "narrow-*/only")],
    )
    .await;
    let inj = injector::start(bed, &[&wide, &narrow], Options::default()).await;
    bed.put_secret(&format!("{shared}/smtp"), r#"{"password":"smtp-pw"}"#)
        .await;
    bed.put_secret(&format!("{narrow}/only"), r#"{"k":"only-v"}"#)
        .await;
    bed.put_secret(&format!("{narrow}/other"), r#"{"k":"other-v"}"#)
        .await;

    let p = create_one(
        &client,
        &wide,
        "w",
        json!({"sm-injector.io/env.SMTP": format!("{shared}/smtp#password")}),
    )
    .await
    .unwrap();
    assert_eq!(
        resolve_env(&client, &wide, &p.spec.unwrap().containers[0]).await["SMTP"],
        b"smtp-pw"
    );

    create_one(
        &client,
        &narrow,
        "n1",
        json!({"sm-injector.io/env.K": format!("{narrow}/only#k")}),
    )
    .await
    .unwrap();
    let msg = create_one(
        &client,
        &narrow,
        "n2",
        json!({"sm-injector.io/env.K": format!("{narrow}/other#k")}),
    )
    .await
    .unwrap_err();
    assert!(
        msg.contains("\"narrow-*/only\" (its Namespace annotation sm-injector.io/allowed-secrets)"),
        "{msg}"
    );
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
async fn on_shutdown_it_turns_unready_first_and_keeps_serving_for_the_delay() {
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "restart", &[INJECT]).await;
    let mut inj = injector::start(
        bed,
        &[&ns],
        Options {
            shutdown_delay: Duration::from_secs(4),
            ..Default::default()
        },
    )
    .await;
    bed.put_secret(&format!("{ns}/s"), r#"{"k":"v"}"#).await;
    let probe = inj.probe_port;
    let ready = || async move { injector::http_get(probe, "/readyz").await.0 };
    assert_eq!(ready().await, 200);
    inj.begin_shutdown();
    let t = std::time::Instant::now();
    eventually(
        Duration::from_secs(2),
        "readiness to turn false",
        || async { (ready().await == 503).then_some(()) },
    )
    .await;
    // The API server may still route here: admissions are still answered.
    for i in 0..3 {
        let p = create_one(
            &client,
            &ns,
            &format!("during-{i}"),
            json!({"sm-injector.io/env.K": format!("{ns}/s#k")}),
        )
        .await
        .expect("admitted during the shutdown delay");
        assert!(p.spec.unwrap().containers[0].env.is_some());
    }
    // Each HTTP/1.1 answer now closes its connection, so that the API
    // server's keep-alive connections move to other replicas meanwhile.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-i", "--http1.1", "--cacert"])
        .arg(bed.dir.join("pki/ca.crt"))
        .args(["-d", "{}"])
        .arg(format!("https://127.0.0.1:{}/mutate", inj.port))
        .output()
        .await
        .expect("curl");
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    assert!(!inj.finished() && t.elapsed() < Duration::from_secs(4));
    eventually(
        Duration::from_secs(15),
        "the server to stop after the delay",
        || async { inj.finished().then_some(()) },
    )
    .await;
    assert!(t.elapsed() >= Duration::from_secs(4), "{:?}", t.elapsed());
    inj.stop(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn slow_and_half_sent_requests_are_cut_off_and_do_not_delay_admissions() {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "slow", &[INJECT]).await;
    let inj = injector::start(
        bed,
        &[&ns],
        Options {
            header_read_timeout: Duration::from_secs(1),
            body_read_timeout: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .await;
    bed.put_secret(&format!("{ns}/s"), r#"{"k":"v"}"#).await;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(bed.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = std::sync::Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    // 400 connections: half stop in the middle of the headers, half in the
    // middle of the body.
    let mut conns = vec![];
    for i in 0..400 {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", inj.port))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut c = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .unwrap();
        let part = if i % 2 == 0 {
            "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Ty"
        } else {
            "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"apiVersion\""
        };
        c.write_all(part.as_bytes()).await.unwrap();
        c.flush().await.unwrap();
        conns.push(c);
    }
    // An admission through the API server is not delayed by them.
    let t = std::time::Instant::now();
    let p = create_one(
        &client,
        &ns,
        "meanwhile",
        json!({"sm-injector.io/env.K": format!("{ns}/s#k")}),
    )
    .await
    .unwrap();
    assert!(p.spec.unwrap().containers[0].env.is_some());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Every one is cut off by the timeouts: closed, or answered 408.
    for (i, mut c) in conns.into_iter().enumerate() {
        let mut buf = vec![0u8; 4096];
        let mut seen = String::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(n) => {
                        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                        if seen.contains(" 408 ") {
                            return true;
                        }
                    }
                }
            }
        })
        .await;
        assert_eq!(closed, Ok(true), "connection {i} still open: {seen:?}");
    }
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
    let before = inj
        .metric("sm_injector_admissions_total{outcome=\"mutated\"}")
        .await;
    let created = eventually(Duration::from_secs(30), "the marker webhook", || async {
        let p = create(&client, &ns, &p).await.ok()?;
        p.metadata
            .labels
            .as_ref()?
            .contains_key("testbed-mutated")
            .then_some(p)
    })
    .await;
    let after = inj
        .metric("sm_injector_admissions_total{outcome=\"mutated\"}")
        .await;
    assert_eq!(
        after - before,
        2.0,
        "sm-injector was invoked twice for the pod"
    );
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

/// Pods that ask for the same thing (a ReplicaSet's replicas) share a
/// decision: the one made for the first is used again, but only while the
/// namespace's rule and the secret values it read are unchanged
/// (`src/decisions.rs`).
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
    let mut names = vec![];
    for _ in 0..3 {
        let p = create(&client, &ns, &replica).await.unwrap();
        names.push(p.metadata.name.clone().unwrap());
        assert_eq!(db_url(p).await, b"one");
    }
    names.dedup();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(reused().await, 2.0);
    let mut named = replica.clone();
    named.metadata.generate_name = None;
    named.metadata.name = Some("db-0".into());
    assert_eq!(
        db_url(create(&client, &ns, &named).await.unwrap()).await,
        b"one"
    );
    assert_eq!(reused().await, 3.0);
    // A pod whose containers differ is decided afresh.
    let mut other = replica.clone();
    other.spec.as_mut().unwrap().containers[0].name = "api".into();
    assert_eq!(
        db_url(create(&client, &ns, &other).await.unwrap()).await,
        b"one"
    );
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
    assert!(inj.webhook.source.cached(&ns, &key).await.is_some());
    inj.webhook
        .source
        .invalidate(&ns, std::slice::from_ref(&key))
        .await;
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&dry, &other)
        .await
        .unwrap();
    assert!(inj.webhook.source.cached(&ns, &key).await.is_some());
    let p = create(&client, &ns, &replica).await.unwrap();
    let versions = p.metadata.annotations.clone().unwrap()["sm-injector.io/versions"].clone();
    assert_eq!(db_url(p).await, b"one", "the Secret keeps its version");
    assert!(
        !versions.contains(rotated.version_id().unwrap()),
        "the pod records what its Secret holds: {versions}"
    );
    assert!(inj.webhook.source.cached(&ns, &key).await.is_none());
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

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn malformed_and_oversized_bodies_get_400_and_the_server_keeps_serving() {
    let (bed, client, ns, inj) = setup("body").await;
    let url = format!("https://127.0.0.1:{}/mutate", inj.port);
    let ca = bed.dir.join("pki/ca.crt");
    let post = async |body_file: &std::path::Path| {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--http1.1", "--cacert"])
            .arg(&ca)
            .args([
                "-H",
                "Content-Type: application/json",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                "--data-binary",
            ])
            .arg(format!("@{}", body_file.display()))
            .arg(&url)
            .output()
            .await
            .expect("curl");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, "{not json").unwrap();
    let out = post(&garbage).await;
    assert!(out.ends_with("\n400"), "{out}");
    assert!(
        out.contains("not an admission.k8s.io/v1 AdmissionReview"),
        "{out}"
    );

    let no_request = dir.path().join("empty-review");
    std::fs::write(
        &no_request,
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
    )
    .unwrap();
    let out = post(&no_request).await;
    assert!(
        out.ends_with("\n400") && out.contains("has no request"),
        "{out}"
    );

    let big = dir.path().join("big");
    std::fs::write(&big, vec![b' '; 5 * 1024 * 1024]).unwrap();
    let out = post(&big).await;
    assert!(out.ends_with("\n400"), "{out}");
    assert!(out.contains("length limit"), "{out}");

    // Still serving: a pod goes through.
    bed.put_secret(&format!("{ns}/s"), r#"{"k":"v"}"#).await;
    create_one(
        &client,
        &ns,
        "after",
        json!({"sm-injector.io/env.K": format!("{ns}/s#k")}),
    )
    .await
    .unwrap();
    assert_eq!(
        inj.metric("sm_injector_admissions_total{outcome=\"invalid\"}")
            .await,
        3.0
    );
    inj.stop(&client).await;
}

/// The certificate the webhook serves now (DER).
async fn served_certificate(bed: &TestBed, port: u16) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(bed.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn rotated_certificate_files_are_served_without_a_restart() {
    let (bed, client, ns, inj) = setup("rotate-tls").await;
    let before = served_certificate(bed, inj.port).await;
    // A half-written pair (new certificate, old key) is not loaded.
    let next = bed.serving_cert();
    std::fs::write(inj.dir.join("tls.crt"), &next.cert).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(served_certificate(bed, inj.port).await, before);
    std::fs::write(inj.dir.join("tls.key"), &next.key).unwrap();
    let after = eventually(
        Duration::from_secs(10),
        "the new certificate to be served",
        || async {
            let now = served_certificate(bed, inj.port).await;
            (now != before).then_some(now)
        },
    )
    .await;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let expected = CertificateDer::from_pem_slice(next.cert.as_bytes()).unwrap();
    assert_eq!(after, expected.to_vec());
    // The API server still reaches it.
    bed.put_secret(&format!("{ns}/s"), r#"{"k":"v"}"#).await;
    create_one(
        &client,
        &ns,
        "after-rotation",
        json!({"sm-injector.io/env.K": format!("{ns}/s#k")}),
    )
    .await
    .unwrap();
    inj.stop(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn render_gives_the_same_pod_as_the_webhook() {
    let (bed, client, ns, inj) = setup("render-same").await;
    bed.put_secret(&format!("{ns}/db"), r#"{"url":"postgres://x","port":5432}"#)
        .await;
    bed.put_secret(&format!("{ns}/whole"), "plain").await;
    let p = pod(
        "same",
        json!({
            "sm-injector.io/env.DATABASE_URL": format!("{ns}/db#url"),
            "sm-injector.io/env.WHOLE": format!("{ns}/whole"),
            "sm-injector.io/env-from.DB": format!("{ns}/db"),
            "sm-injector.io/mount-path": "/var/run/secrets/sm",
            "sm-injector.io/containers": "app",
        }),
        json!([
            {"name": "app", "image": "registry.invalid/app:1", "env": [{"name": "A", "value": "1"}]},
            {"name": "other", "image": "registry.invalid/other:1"}
        ]),
    );
    let stored = create(&client, &ns, &p).await.unwrap();

    let mut doc = serde_json::to_value(&p).unwrap();
    doc["apiVersion"] = json!("v1");
    doc["kind"] = json!("Pod");
    doc["metadata"]["namespace"] = json!(ns);
    let metrics = sm_injector::metrics::Metrics::new();
    let aws = aws_sdk_secretsmanager::Client::new(&bed.aws_config().await);
    let source = sm_injector::cache::CachedSource::new(
        std::sync::Arc::new(sm_injector::source::AwsSource::new(aws, metrics.clone())),
        Duration::from_secs(60),
        metrics,
    );
    let settings = sm_injector::admission::Settings {
        min_refresh: Duration::from_secs(60),
        aws_deadline: Duration::from_secs(5),
        max_aws_calls: sm_injector::admission::MAX_AWS_CALLS,
        caps: Default::default(),
    };
    let rendered = sm_injector::render::render(vec![doc], &source, &settings, false)
        .await
        .unwrap();
    let rendered: Pod = serde_json::from_value(rendered.objects[0].clone()).unwrap();

    // What sm-injector contributed: env, envFrom, its mounts and volumes, its record.
    let ours = |p: &Pod| {
        let spec = p.spec.clone().unwrap();
        let containers: Vec<Value> = spec
            .containers
            .iter()
            .map(|c| {
                let mounts: Vec<_> = c
                    .volume_mounts
                    .iter()
                    .flatten()
                    .filter(|m| m.name.starts_with("sm-"))
                    .cloned()
                    .collect();
                json!({"name": c.name, "env": c.env, "envFrom": c.env_from, "mounts": mounts})
            })
            .collect();
        // The API server defaults defaultMode (420) on secret volumes.
        let volumes: Vec<_> = spec
            .volumes
            .iter()
            .flatten()
            .filter(|v| v.name.starts_with("sm-"))
            .cloned()
            .map(|mut v| {
                if let Some(s) = v.secret.as_mut() {
                    s.default_mode = None;
                }
                v
            })
            .collect();
        let record = p.metadata.annotations.as_ref().unwrap()["sm-injector.io/injected"].clone();
        json!({"containers": containers, "volumes": volumes, "record": record})
    };
    assert_eq!(
        serde_json::to_string_pretty(&ours(&rendered)).unwrap(),
        serde_json::to_string_pretty(&ours(&stored)).unwrap()
    );
    assert_eq!(ours(&stored)["volumes"].as_array().unwrap().len(), 2);
    inj.stop(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn shutdown_drains_in_flight_admissions() {
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "drain", &[INJECT]).await;
    // A Secrets Manager that accepts connections and never answers keeps an
    // admission in flight until the AWS deadline (2 s).
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_port = hole.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let mut inj = injector::start(
        bed,
        &[&ns],
        Options {
            aws_endpoint: Some(format!("http://127.0.0.1:{hole_port}")),
            aws_deadline: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await;
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "drain-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE", "userInfo": {}, "namespace": ns,
            "object": {"metadata": {"name": "p", "annotations": {"sm-injector.io/env.X": format!("{ns}/x#k")}},
                       "spec": {"containers": [{"name": "c"}]}}
        }
    });
    let started = std::time::Instant::now();
    let curl = tokio::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(bed.dir.join("pki/ca.crt"))
        .args([
            "-H",
            "Content-Type: application/json",
            "-w",
            "\n%{http_code}",
            "--data-binary",
        ])
        .arg(review.to_string())
        .arg(format!("https://127.0.0.1:{}/mutate", inj.port))
        .output();
    let (out, _) = tokio::join!(curl, async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        inj.begin_shutdown();
    });
    let out = String::from_utf8_lossy(&out.unwrap().stdout).to_string();
    assert!(
        out.ends_with("\n200"),
        "the in-flight admission was answered: {out}"
    );
    assert!(
        out.contains("Secrets Manager could not be reached"),
        "{out}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it waited for the AWS deadline"
    );
    eventually(Duration::from_secs(10), "the server to stop", || async {
        inj.finished().then_some(())
    })
    .await;
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", inj.port)).await;
    assert!(refused.is_err(), "no new connections after shutdown");
    inj.stop(&client).await;
}
