use super::*;
use crate::plan::{self, EnvFrom, Mount};
use serde_json::{Value, json};
use std::time::Duration;

fn pod(v: Value) -> Pod {
    serde_json::from_value(v).unwrap()
}

fn plan() -> Plan {
    Plan {
        backing: vec![],
        env: vec![plan::EnvVar {
            var: "DB".into(),
            secret: "sm-n-db-1".into(),
            key: "url".into(),
        }],
        env_from: vec![EnvFrom {
            prefix: Some("REDIS_".into()),
            secret: "sm-n-redis-2".into(),
        }],
        mounts: vec![Mount {
            secret: "sm-n-db-1".into(),
            path: "/s/n/db".into(),
        }],
        refresh_interval: Duration::from_secs(3600),
        service_account: None,
    }
}

fn ops(patch: &[u8]) -> json_patch::Patch {
    serde_json::from_slice(patch).expect("the patch is a JSON patch")
}

/// The patched pod as JSON: what the API server stores.
fn apply_json(p: &Pod, patch: &[u8]) -> Value {
    let mut v = serde_json::to_value(p).unwrap();
    json_patch::patch(&mut v, &ops(patch)).unwrap();
    v
}

fn apply(p: &Pod, patch: &[u8]) -> Pod {
    serde_json::from_value(apply_json(p, patch)).unwrap()
}

fn sample() -> Pod {
    pod(json!({
        "metadata": {"annotations": {"sm-injector.io/env.DB": "n/db#url"}},
        "spec": {
            "initContainers": [{"name": "init", "image": "x"}],
            "containers": [
                {"name": "app", "image": "x", "env": [{"name": "DB", "value": "mine"}, {"name": "OTHER", "value": "1"}]},
                {"name": "side", "image": "x", "volumeMounts": [{"name": "v", "mountPath": "/data"}]}
            ],
            "volumes": [{"name": "v", "emptyDir": {}}]
        }
    }))
}

#[test]
fn a_pod_without_spec_is_refused_rather_than_given_a_patch_that_cannot_apply() {
    // Found by fuzz/fuzz_targets/review.rs: /spec/volumes was added to a
    // pod that had no /spec.
    let p = pod(json!({"metadata": {"name": "p"}}));
    assert_eq!(select(&p, None), Err("the pod has no spec".to_string()));
    let p = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}));
    assert_eq!(select(&p, None), Ok(vec![]));
}

#[test]
fn injects_everywhere_keeps_explicit_values_and_warns() {
    let p = sample();
    let targets = select(&p, None).unwrap();
    assert_eq!(targets.len(), 3);
    let (patch, warnings) = build(&p, &plan(), &targets);
    let out = apply(&p, &patch);
    let spec = out.spec.unwrap();
    let init = &spec.init_containers.as_ref().unwrap()[0];
    let db = init
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "DB")
        .unwrap();
    let r = db
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!((r.name.as_str(), r.key.as_str()), ("sm-n-db-1", "url"));
    assert!(db.value.is_none(), "never plaintext");
    let app = &spec.containers[0];
    let app_db = app
        .env
        .as_ref()
        .unwrap()
        .iter()
        .filter(|e| e.name == "DB")
        .collect::<Vec<_>>();
    assert_eq!(app_db.len(), 1);
    assert_eq!(app_db[0].value.as_deref(), Some("mine"));
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].contains("\"app\" already sets DB"),
        "{warnings:?}"
    );
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let ef = c.env_from.as_ref().unwrap();
        assert_eq!(ef[0].prefix.as_deref(), Some("REDIS_"));
        assert!(
            c.volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.mount_path == "/s/n/db" && m.read_only == Some(true))
        );
    }
    let vols = spec.volumes.unwrap();
    assert_eq!(vols.len(), 2);
    assert_eq!(
        apply_json(&p, &patch)["spec"]["volumes"][1]["secret"]["secretName"],
        "sm-n-db-1"
    );
    assert!(out.metadata.annotations.unwrap().contains_key(INJECTED));
    assert_eq!(out.metadata.labels.unwrap()[INJECTED_LABEL], "true");
}

#[test]
fn reinvocation_adds_nothing_new() {
    let p = sample();
    let targets = select(&p, None).unwrap();
    let (patch, _) = build(&p, &plan(), &targets);
    let once = apply(&p, &patch);
    let (patch2, _) = build(&once, &plan(), &select(&once, None).unwrap());
    let twice = apply(&once, &patch2);
    assert_eq!(
        serde_json::to_value(&once).unwrap(),
        serde_json::to_value(&twice).unwrap()
    );
    assert_eq!(
        ops(&patch2).0.len(),
        2,
        "only the label and the record annotation are set again: {:?}",
        ops(&patch2)
    );
}

#[test]
fn container_selection() {
    let p = sample();
    let t = select(&p, Some(&["side".to_string()])).unwrap();
    assert_eq!(
        t,
        vec![Target {
            list: "containers",
            index: 1
        }]
    );
    let (patch, _) = build(&p, &plan(), &t);
    let out = apply(&p, &patch).spec.unwrap();
    assert!(out.containers[0].env_from.is_none());
    assert!(out.init_containers.unwrap()[0].env.is_none());
    let e = select(&p, Some(&["nope".to_string()])).unwrap_err();
    assert!(
        e.contains("sm-injector.io/containers")
            && e.contains("\"nope\"")
            && e.contains("init, app, side"),
        "{e}"
    );
}

#[test]
fn pod_without_annotations_map_gets_one() {
    let p = pod(json!({"metadata": {}, "spec": {"containers": [{"name": "a"}]}}));
    let (patch, _) = build(&p, &plan(), &select(&p, None).unwrap());
    let out = apply(&p, &patch);
    assert!(out.metadata.annotations.unwrap().contains_key(INJECTED));
}

#[test]
fn the_containers_own_env_from_sources_keep_their_keys() {
    let mut p = sample();
    let own = EnvFromSource {
        config_map_ref: Some(k8s_openapi::api::core::v1::ConfigMapEnvSource {
            name: "app-config".into(),
            optional: None,
        }),
        ..Default::default()
    };
    p.spec.as_mut().unwrap().containers[0].env_from = Some(vec![own.clone()]);
    // Two sources of ours, each inserted at its own index before the container's.
    let mut plan = plan();
    plan.env_from.push(EnvFrom {
        prefix: None,
        secret: "sm-n-cache-3".into(),
    });
    let targets = select(&p, None).unwrap();
    let (patch, warnings) = build(&p, &plan, &targets);
    let out = apply(&p, &patch);
    let from = out.spec.as_ref().unwrap().containers[0]
        .env_from
        .clone()
        .unwrap();
    assert_eq!(
        from.last(),
        Some(&own),
        "the container's own source comes last, so it wins"
    );
    let ours: Vec<_> = from[..2]
        .iter()
        .map(|f| f.secret_ref.as_ref().map(|r| r.name.as_str()))
        .collect();
    assert_eq!(ours, [Some("sm-n-redis-2"), Some("sm-n-cache-3")]);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("has envFrom sources of its own")),
        "{warnings:?}"
    );
    // Reinvocation adds nothing.
    let (again, _) = build(&out, &plan, &select(&out, None).unwrap());
    assert_eq!(
        apply(&out, &again).spec.unwrap().containers[0]
            .env_from
            .as_ref()
            .unwrap()
            .len(),
        from.len()
    );
}

#[test]
fn the_versions_held_are_recorded_after_the_rest_of_the_patch() {
    use crate::annotations::VERSIONS;
    let p = pod(
        json!({"metadata": {"annotations": {"sm-injector.io/env.DB": "n/db#url"}},
        "spec": {"containers": [{"name": "app"}]}}),
    );
    let (mut bytes, _) = build(&p, &plan(), &select(&p, None).unwrap());
    record_versions(&mut bytes, [Some("v\"2"), None, Some("v9")]);
    let patched = apply(&p, &bytes);
    let recorded: Vec<Option<String>> =
        serde_json::from_str(&patched.metadata.annotations.unwrap()[VERSIONS]).unwrap();
    assert_eq!(recorded, [Some("v\"2".into()), None, Some("v9".into())]);
    // Without an annotations map on the pod, and with nothing to record.
    let bare = pod(json!({"spec": {"containers": [{"name": "app"}]}}));
    let (mut bytes, _) = build(&bare, &plan(), &select(&bare, None).unwrap());
    let before = bytes.clone();
    record_versions(&mut bytes, []);
    assert_eq!(bytes, before);
    record_versions(&mut bytes, [None, None]);
    assert_eq!(bytes, before, "no version known: nothing recorded");
    record_versions(&mut bytes, [Some("v1")]);
    assert!(
        apply(&bare, &bytes)
            .metadata
            .annotations
            .unwrap()
            .contains_key(VERSIONS)
    );
}
