use super::*;
use serde_json::json;

fn pod(v: serde_json::Value) -> serde_json::Value {
    v
}

/// The decision key of `pod` created in `namespace`, as the server reads it
/// (the first look at the review's body).
fn key(namespace: &str, pod: &serde_json::Value) -> Option<Vec<u8>> {
    let body = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE", "userInfo": {}, "namespace": namespace, "object": pod
        }
    }))
    .unwrap();
    key_of(&crate::glance::read(&body, 4096)?)
}

fn replica(name: &str, token_volume: &str) -> serde_json::Value {
    pod(json!({
        "metadata": {
            "name": name, "generateName": "web-", "labels": {"app": "web"},
            "annotations": {"sm-injector.io/env.DB": "n/db#url", "other": name},
            "managedFields": [{"manager": "m", "operation": name}]
        },
        "spec": {
            "containers": [{"name": "app", "image": "x",
                "env": [{"name": "X", "value": "1"}],
                "volumeMounts": [{"name": token_volume, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
            "volumes": [{"name": token_volume, "projected": {"sources": []}}]
        }
    }))
}

#[test]
fn replicas_share_a_key_and_anything_the_decision_reads_changes_it() {
    let a = key("n", &replica("web-1", "kube-api-access-abcde")).unwrap();
    // Name, other annotations, managed fields and the token volume differ.
    assert_eq!(
        a,
        key("n", &replica("web-2", "kube-api-access-fghij")).unwrap()
    );

    let changed = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = replica("web-1", "kube-api-access-abcde");
        f(&mut v);
        key("n", &pod(v))
    };
    let differ = [
        changed(&|v| v["metadata"]["annotations"]["sm-injector.io/env.DB"] = json!("n/db#other")),
        changed(&|v| v["metadata"]["annotations"]["sm-injector.io/containers"] = json!("app")),
        changed(&|v| {
            v["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("labels")
                .map(drop)
                .unwrap()
        }),
        changed(&|v| v["spec"]["containers"][0]["name"] = json!("app2")),
        changed(&|v| v["spec"]["containers"][0]["env"][0]["value"] = json!("2")),
        changed(&|v| v["spec"]["containers"][0]["env"] = json!([])),
        changed(&|v| v["spec"]["containers"][0]["envFrom"] = json!([{"secretRef": {"name": "s"}}])),
        changed(&|v| {
            let c = v["spec"]["containers"][0].clone();
            v["spec"]["initContainers"] = json!([c]);
        }),
        changed(&|v| {
            let c = v["spec"]["containers"][0].clone();
            v["spec"]["containers"].as_array_mut().unwrap().push(c);
        }),
    ];
    for (i, k) in differ.iter().enumerate() {
        assert_ne!(k.as_ref(), Some(&a), "change {i} kept the key");
    }
    assert_ne!(
        key("m", &replica("web-1", "t")).unwrap(),
        a,
        "the namespace"
    );
    // Nothing asked for: no key.
    assert_eq!(
        key(
            "n",
            &pod(json!({"metadata": {"annotations": {"a": "b"}}, "spec": {"containers": []}}))
        ),
        None
    );
    assert_eq!(
        key(
            "n",
            &pod(json!({"metadata": {}, "spec": {"containers": []}}))
        ),
        None
    );
}

#[test]
fn field_boundaries_are_part_of_the_key() {
    let two = |k1: &str, v1: &str| {
        pod(json!({"metadata": {"annotations": {k1: v1}}, "spec": {"containers": []}}))
    };
    assert_ne!(
        key("n", &two("sm-injector.io/env.AB", "c")),
        key("n", &two("sm-injector.io/env.A", "Bc"))
    );
    // Where the annotations end and the containers begin, and where one
    // list ends and the next begins.
    let p = |anns: serde_json::Value, init: serde_json::Value, cs: serde_json::Value| {
        key(
            "n",
            &pod(
                json!({"metadata": {"annotations": anns}, "spec": {"initContainers": init, "containers": cs}}),
            ),
        )
    };
    let a = json!({"sm-injector.io/env.A": "n/s#k"});
    let ab = json!({"sm-injector.io/env.A": "n/s#k", "sm-injector.io/env.B": "n/s#k"});
    let c = |name: &str| json!([{"name": name}]);
    let keys = [
        p(a.clone(), json!([]), c("x")),
        p(a.clone(), c("x"), json!([])),
        p(a.clone(), json!(null), c("x")),
        p(ab.clone(), json!([]), c("x")),
        p(a.clone(), json!([]), json!([{"name": "x"}, {"name": "y"}])),
        p(
            a,
            json!([]),
            json!([{"name": "x"}, {"name": "y", "env": []}]),
        ),
    ];
    for (i, k) in keys.iter().enumerate() {
        for (j, l) in keys.iter().enumerate().skip(i + 1) {
            assert_ne!(k, l, "pods {i} and {j} share a key");
        }
    }
}

/// A plan reading `n/db`'s key `url` into `DB`, fetched at version `v1`.
fn fetched_plan() -> (Plan, Arc<SecretValue>) {
    use crate::plan::{Backing, EnvVar};
    use crate::reference::Version;
    let value = Arc::new(SecretValue::new(
        "arn:aws:secretsmanager:us-east-1:1:secret:n/db-AbCdEf".into(),
        "n/db".into(),
        "v1".into(),
        crate::secret::Payload::String(r#"{"url":"x"}"#.into()),
    ));
    let fetch = FetchKey {
        id: "n/db".into(),
        version: Version::current(),
    };
    let plan = Plan {
        backing: vec![Backing {
            name: "sm-n-db-1".into(),
            secret_name: "n/db".into(),
            version: Version::current(),
            form: crate::backing::Form::Keys,
            fetch,
            arn: None,
            content: Content::Fresh {
                value: value.clone(),
            },
        }],
        env: vec![EnvVar {
            var: "DB".into(),
            secret: "sm-n-db-1".into(),
            key: "url".into(),
        }],
        env_from: vec![],
        mounts: vec![],
        refresh_interval: Duration::from_secs(3600),
        service_account: None,
    };
    (plan, value)
}

#[test]
fn a_kept_decision_gives_back_its_patch_with_and_without_the_versions() {
    let (plan, value) = fetched_plan();
    let p: crate::pod::Pod =
        serde_json::from_value(replica("web-1", "kube-api-access-abcde")).unwrap();
    let targets = crate::patch::select(&p, None).unwrap();
    let (patch, warnings) = crate::patch::build(&p, &plan, &targets);
    assert!(warnings.is_empty());
    let values = vec![(plan.backing[0].fetch.clone(), value)];
    assert!(Decision::keepable(&values, &plan, &warnings));
    let d = Decision::new(
        crate::identity::Identity::Own,
        Arc::new(AccessRule::for_namespace("n", None)),
        values,
        plan,
        patch.clone(),
    );
    // The rare path: the patch as built, to record other versions on.
    assert_eq!(d.patch(), patch);
    // The warm path: the same patch with the versions fetched recorded.
    let mut whole = patch;
    crate::patch::record_versions(&mut whole, [Some("v1")]);
    let warm = base64_simd::STANDARD
        .decode_to_vec(d.warm_patch.as_bytes())
        .unwrap();
    assert_eq!(warm, whole);
}
