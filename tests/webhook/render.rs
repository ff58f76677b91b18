//! `sm-injector render` gives the same pod as the webhook, through the real
//! API server.

use super::*;

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
        identity: sm_injector::identity::Mode::Own,
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
