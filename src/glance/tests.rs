use super::*;
use serde_json::{Value, json};

fn review(object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE", "userInfo": {}, "namespace": "n", "object": object
        }
    }))
    .unwrap()
}

/// A pod of `env` env entries, one envFrom and `mounts` volume mounts, in an
/// init container and a container.
fn pod(env: usize, mounts: usize) -> Value {
    let env: Vec<Value> = (0..env).map(|i| json!({"name": format!("V{i}")})).collect();
    let mounts: Vec<Value> = (0..mounts)
        .map(|i| json!({"name": format!("m{i}"), "mountPath": format!("/m{i}")}))
        .collect();
    json!({
        "metadata": {"annotations": {"sm-injector.io/env.A": "n/s#k"}},
        "spec": {
            "initContainers": [{"name": "i", "env": env}],
            "containers": [{"name": "c", "envFrom": [{"secretRef": {"name": "s"}}], "volumeMounts": mounts}]
        }
    })
}

#[test]
fn a_pod_past_the_entry_bound_gets_no_glance_as_kubes_decoding_refuses_it() {
    // 3 env entries, 1 envFrom, 2 mounts: 6 in all, as `wire::decode` counts.
    let body = review(pod(3, 2));
    assert!(read(&body, 6).is_some());
    assert!(read(&body, 5).is_none());
    assert!(matches!(
        crate::wire::decode(&body, 5),
        Err(crate::wire::DecodeError::TooManyEntries { .. })
    ));
    // The entries are kept as their text, for the key.
    let g = read(&body, 6).unwrap();
    let spec = g.created_pod().unwrap().spec.as_ref().unwrap();
    let init = &spec.init_containers.as_ref().unwrap()[0];
    let env: Vec<&str> = init.env.as_ref().unwrap().iter().map(|e| e.get()).collect();
    assert_eq!(
        env,
        [r#"{"name":"V0"}"#, r#"{"name":"V1"}"#, r#"{"name":"V2"}"#]
    );
    assert!(spec.containers[0].env.is_none());
}

#[test]
fn what_is_not_a_review_with_a_request_gets_no_glance() {
    for body in [
        &b"not json"[..],
        b"{}",
        br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#,
        br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u"}}"#,
    ] {
        assert!(read(body, 10).is_none(), "{}", String::from_utf8_lossy(body));
    }
    // A review whose own annotation is not a string is refused, as kube's
    // decoding refuses it.
    let mut p = pod(0, 0);
    p["metadata"]["annotations"]["sm-injector.io/env.A"] = json!(1);
    assert!(read(&review(p.clone()), 10).is_none());
    assert!(crate::wire::decode(&review(p), 10).is_err());
}

#[test]
fn a_key_only_for_a_created_pod_that_has_sm_injector_annotations_and_a_spec() {
    assert!(crate::decisions::key_of(&read(&review(pod(1, 1)), 10).unwrap()).is_some());
    let mut p = pod(1, 1);
    p["metadata"]["annotations"] = json!({"other": "x"});
    assert_eq!(
        crate::decisions::key_of(&read(&review(p), 10).unwrap()),
        None
    );
    let mut p = pod(1, 1);
    p.as_object_mut().unwrap().remove("spec");
    assert_eq!(
        crate::decisions::key_of(&read(&review(p), 10).unwrap()),
        None
    );
    let mut body: Value = serde_json::from_slice(&review(pod(1, 1))).unwrap();
    body["request"]["operation"] = json!("UPDATE");
    let body = serde_json::to_vec(&body).unwrap();
    assert_eq!(crate::decisions::key_of(&read(&body, 10).unwrap()), None);
}

#[test]
fn a_pod_planned_from_the_glance_is_the_decoded_one_and_gets_the_same_patch() {
    let p = json!({
        "metadata": {
            "generateName": "bot-7d9f8c6b5-", "namespace": "n",
            "labels": {"app": "bot"},
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                "sm-injector.io/env.DB": "n/db#url",
                "sm-injector.io/env-from.R": "n/r",
                // Of a key given twice, the last value, as kube's decoding.
                "sm-injector.io/env.X": "n/x#first",
                "sm-injector.io/env.X": "n/x#k",
                "sm-injector.io/containers": "app,init"
            }
        },
        "spec": {
            "serviceAccountName": "bot",
            "initContainers": [{"name": "init", "image": "x", "env": []}],
            "containers": [
                {"name": "app", "image": "x",
                 "env": [{"name": "DB", "value": "mine"},
                         {"name": "P", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                         {"name": "Q\u{e9}\"", "value": "esc\\aped"}],
                 "envFrom": [{"prefix": "A_", "secretRef": {"name": "other"}}],
                 "volumeMounts": [{"name": "v", "mountPath": "/data"}]},
                {"name": "side", "image": "x", "env": null}
            ],
            "volumes": [{"name": "v", "emptyDir": {}}]
        }
    });
    // serde_json's `json!` keeps one of two equal keys: the body is written out.
    let body = String::from_utf8(review(p)).unwrap().replace(
        r#""sm-injector.io/env.X":"n/x#k""#,
        r#""sm-injector.io/env.X":"n/x#first","sm-injector.io/env.X":"n/x#k""#,
    );
    let g = read(body.as_bytes(), 100).unwrap();
    let planned = g.created_pod().unwrap().planning_pod().unwrap();
    let decoded = crate::wire::decode(body.as_bytes(), 100)
        .unwrap()
        .object
        .unwrap();
    assert_eq!(
        decoded.metadata.annotations.as_ref().unwrap()["sm-injector.io/env.X"],
        "n/x#k"
    );
    assert_eq!(planned, decoded.clone().as_planning_reads());

    // The patch of a plan without mounts reads nothing else.
    let plan = crate::plan::Plan {
        backing: vec![],
        env: vec![
            crate::plan::EnvVar {
                var: "DB".into(),
                secret: "sm-db".into(),
                key: "url".into(),
            },
            crate::plan::EnvVar {
                var: "X".into(),
                secret: "sm-x".into(),
                key: "k".into(),
            },
        ],
        env_from: vec![crate::plan::EnvFrom {
            prefix: None,
            secret: "sm-r".into(),
        }],
        mounts: vec![],
        refresh_interval: std::time::Duration::from_secs(3600),
        service_account: None,
    };
    let targets = crate::patch::select(&decoded, None).unwrap();
    assert_eq!(crate::patch::select(&planned, None).unwrap(), targets);
    assert_eq!(
        crate::patch::build(&planned, &plan, &targets),
        crate::patch::build(&decoded, &plan, &targets)
    );
}

/// The pod planned from the glance at `body`.
fn planned(body: &[u8]) -> Option<crate::pod::Pod> {
    read(body, 10)
        .unwrap()
        .created_pod()
        .unwrap()
        .planning_pod()
}

#[test]
fn a_pod_that_mounts_a_file_or_whose_entries_do_not_read_is_decoded_instead() {
    let mut p = pod(1, 1);
    p["metadata"]["annotations"]["sm-injector.io/mount-path"] = json!("/s");
    let body = review(p);
    assert!(planned(&body).is_none());
    assert!(crate::wire::decode(&body, 10).is_ok());
    // An env entry that is not one: the decoding says what is wrong.
    let mut p = pod(1, 0);
    p["spec"]["initContainers"][0]["env"][0] = json!({"name": 5});
    let body = review(p);
    assert!(planned(&body).is_none());
    assert!(crate::wire::decode(&body, 10).is_err());
    // Without a spec there is nothing to plan from.
    let mut p = pod(1, 1);
    p.as_object_mut().unwrap().remove("spec");
    assert!(planned(&review(p)).is_none());
    // And the pod of an ordinary review is planned from the glance.
    assert!(planned(&review(pod(2, 1))).is_some());
}

#[test]
fn the_second_reading_finds_the_uid_the_managed_times_and_the_volume_names() {
    let mut object = pod(1, 2);
    object["metadata"]["managedFields"] = json!([{"manager": "m", "time": "2026-12-05T08:00:00Z"}]);
    object["spec"]["volumes"] =
        json!([{"name": "kube-api-access-abcde", "configMap": {"name": "cm"}}]);
    let body = review(object);
    let v = volatile(&body, 100).unwrap();
    let text = |(s, e): (usize, usize)| std::str::from_utf8(&body[s..e]).unwrap();
    assert_eq!(text(v.uid), "u-1");
    let others: Vec<&str> = v.others.iter().copied().map(text).collect();
    // In the body's order; the config map's name, inside a volume's source, is not one.
    assert_eq!(
        others,
        ["2026-12-05T08:00:00Z", "m0", "m1", "kube-api-access-abcde"]
    );
    // The glance itself notes nothing, and reads as before.
    assert!(read(&body, 100).is_some());
}

#[test]
fn a_mount_that_is_not_an_object_is_glanced_past_but_gives_no_places() {
    let mut object = pod(1, 0);
    object["spec"]["containers"][0]["volumeMounts"] = json!(["odd"]);
    let body = review(object);
    assert!(read(&body, 100).is_some());
    assert_eq!(volatile(&body, 100), None);
}
