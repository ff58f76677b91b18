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
