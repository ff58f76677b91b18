use super::*;
use crate::glance;
use kube::core::admission::AdmissionReview;
use serde_json::{Value, json};

fn review(request: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request
    }))
    .unwrap()
}

fn request(object: Value) -> Value {
    json!({
        "uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE", "userInfo": {"username": "system:serviceaccount:kube-system:rs"},
        "namespace": "n", "name": "from-request", "object": object
    })
}

fn pod() -> Value {
    json!({
        "metadata": {"generateName": "web-", "namespace": "n", "labels": {"a": "b"},
                     "annotations": {"sm-injector.io/env.A": "n/s#k", "other": "x"}},
        "spec": {"serviceAccountName": "bot", "containers": [{"name": "c",
            "env": [{"name": "X", "value": "1"}], "volumeMounts": [{"name": "v", "mountPath": "/v"}]}]}
    })
}

/// `body` read both ways: what kube's decoding asks, and the glance's.
fn both(body: &[u8]) {
    let review: AdmissionReview<Pod> = serde_json::from_slice(body).unwrap();
    let req: AdmissionRequest<Pod> = review.try_into().unwrap();
    let g = glance::read(body, 4096).expect("a glance wherever kube decodes");
    assert_eq!(
        Asked::of_request(&req),
        Asked::of_glance(&g),
        "{}",
        String::from_utf8_lossy(body)
    );
    // Copied out of the body, it asks the same.
    if let Some(asked) = Asked::of_glance(&g) {
        assert_eq!(asked.owned().asked(), asked);
    }
}

#[test]
fn the_glance_asks_what_kubes_decoding_asks() {
    type Change = Box<dyn Fn(&mut Value)>;
    let variants: Vec<Change> = vec![
        Box::new(|_| {}),
        Box::new(|r| r["operation"] = json!("UPDATE")),
        Box::new(|r| r["kind"]["kind"] = json!("Deployment")),
        Box::new(|r| r["subResource"] = json!("status")),
        Box::new(|r| r["object"] = Value::Null),
        Box::new(|r| drop(r.as_object_mut().unwrap().remove("object"))),
        Box::new(|r| r["dryRun"] = json!(true)),
        Box::new(|r| r["userInfo"] = json!({})),
        Box::new(|r| r["uid"] = json!("u-\u{e9}\"quoted\"")),
        // The namespace: the request's, else the pod's, else none.
        Box::new(|r| drop(r.as_object_mut().unwrap().remove("namespace"))),
        Box::new(|r| {
            r.as_object_mut().unwrap().remove("namespace");
            r["object"]["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("namespace");
        }),
        Box::new(|r| r["namespace"] = json!("other")),
        // The pod's name: its name, else generateName, else the request's.
        Box::new(|r| r["object"]["metadata"]["name"] = json!("web-1")),
        Box::new(|r| {
            drop(
                r["object"]["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("generateName"),
            )
        }),
        // Asking: an input annotation, not only sm-injector's own outputs.
        Box::new(|r| r["object"]["metadata"]["annotations"] = json!({"other": "x"})),
        Box::new(|r| {
            r["object"]["metadata"]["annotations"] =
                json!({"sm-injector.io/versions": "x", "sm-injector.io/injected": "true"})
        }),
        Box::new(|r| {
            drop(
                r["object"]["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("annotations"),
            )
        }),
        Box::new(|r| r["object"]["metadata"]["annotations"] = Value::Null),
        // The ServiceAccount: its name, else the deprecated alias, else default.
        Box::new(|r| {
            r["object"]["spec"]
                .as_object_mut()
                .unwrap()
                .remove("serviceAccountName");
            r["object"]["spec"]["serviceAccount"] = json!("old");
        }),
        Box::new(|r| {
            drop(
                r["object"]["spec"]
                    .as_object_mut()
                    .unwrap()
                    .remove("serviceAccountName"),
            )
        }),
        Box::new(|r| drop(r["object"].as_object_mut().unwrap().remove("spec"))),
    ];
    for (i, change) in variants.iter().enumerate() {
        let mut r = request(pod());
        change(&mut r);
        let body = review(r);
        both(&body);
        // Escaped strings read the same as plain ones.
        let escaped = String::from_utf8(body)
            .unwrap()
            .replace("web-", "w\\u0065b-")
            .replace("\"n\"", "\"\\u006e\"");
        assert!(i != 0 || escaped.contains("\\u0065") && escaped.contains("\\u006e"));
        both(escaped.as_bytes());
    }
}

#[test]
fn what_a_glance_reads_borrows_the_body_where_it_holds_no_escape() {
    let body = review(request(pod()));
    let g = glance::read(&body, 4096).unwrap();
    let pod = g.created_pod().unwrap();
    let (k, v) = &pod.metadata.annotations.as_ref().unwrap().0[0];
    assert!(matches!(
        (&k.0, &v.0),
        (std::borrow::Cow::Borrowed(_), std::borrow::Cow::Borrowed(_))
    ));
    // Only sm-injector's own annotations are kept.
    assert_eq!(pod.metadata.annotations.as_ref().unwrap().0.len(), 1);
}
