//! The ValidatingAdmissionPolicies that hold sm-injector's own powerful
//! rights (TokenRequest, patching workloads) to what it needs, tested with
//! its ServiceAccount's credentials against the installed manifests/.

use super::*;

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn its_token_requests_are_held_to_what_sts_needs() {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let inst = installed().await;
    let bed = testbed();
    let admin = bed.client().await;
    let inject = ("sm-injector.io/inject", "enabled");
    let mode = ("sm-injector.io/aws-identity", "serviceaccount");
    let opted = support::namespace_with(&admin, "tokens", &[inject], &[mode]).await;
    let not_mode = support::namespace_with(&admin, "tokens-own", &[inject], &[]).await;
    let not_injected = support::namespace_with(&admin, "tokens-off", &[], &[mode]).await;
    for ns in [&opted, &not_mode, &not_injected] {
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "app"}})).unwrap();
        Api::<ServiceAccount>::namespaced(admin.clone(), ns)
            .create(&PostParams::default(), &sa)
            .await
            .unwrap();
    }
    let request = |audience: &str, seconds: i64| -> TokenRequest {
        serde_json::from_value(json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": [audience], "expirationSeconds": seconds}
        }))
        .unwrap()
    };
    let sa = support::client_for(&inst.sa_kubeconfig).await.unwrap();
    let ask = |ns: &str, r: TokenRequest| {
        let api = Api::<ServiceAccount>::namespaced(sa.clone(), ns);
        async move {
            api.create_token_request("app", &PostParams::default(), &r)
                .await
                .map(|t| t.status.map(|s| !s.token.is_empty()))
                .map_err(|e| match e {
                    kube::Error::Api(s) => (s.code, s.message),
                    other => (0, other.to_string()),
                })
        }
    };
    // The API server loads policies through an informer: wait until this one refuses.
    eventually(
        Duration::from_secs(30),
        "the token policy to be in force",
        || async {
            ask(&opted, request("https://kubernetes.default.svc", 600))
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    // What the exchange needs, where the namespace opted in: granted.
    assert_eq!(
        ask(&opted, request("sts.amazonaws.com", 600)).await,
        Ok(Some(true))
    );
    // Anything more is refused by the policy, naming what is wrong.
    for (ns, r, why) in [
        (
            &opted,
            request("https://kubernetes.default.svc", 600),
            "only for the audience sts.amazonaws.com",
        ),
        (
            &opted,
            request("sts.amazonaws.com", 86_400),
            "of at most 600 seconds",
        ),
        (
            &not_mode,
            request("sts.amazonaws.com", 600),
            "annotated sm-injector.io/aws-identity=serviceaccount",
        ),
        (
            &not_injected,
            request("sts.amazonaws.com", 600),
            "labelled sm-injector.io/inject=enabled",
        ),
    ] {
        match ask(ns, r).await {
            Err((403, m)) => assert!(m.contains(why), "{ns}: {m}"),
            other => panic!("{ns}: sm-injector got a token it should not: {other:?}"),
        }
    }
    // The policy concerns sm-injector's requests only.
    let r = Api::<ServiceAccount>::namespaced(admin.clone(), &not_mode)
        .create_token_request(
            "app",
            &PostParams::default(),
            &request("https://kubernetes.default.svc", 3600),
        )
        .await;
    assert!(r.is_ok(), "{r:?}");
}

/// A Deployment of one `registry.invalid/app:1` container, restart-on-rotation.
fn deployment(name: &str) -> k8s_openapi::api::apps::v1::Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name},
                     "annotations": {"sm-injector.io/restart-on-rotation": "true"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name},
                             "annotations": {"sm-injector.io/env.DB": "x/db#url"}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
            }
        }
    }))
    .unwrap()
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn its_workload_patches_are_held_to_the_roll_annotation() {
    use k8s_openapi::api::apps::v1::Deployment;
    let inst = installed().await;
    let bed = testbed();
    let admin = bed.client().await;
    let opted = namespace(&admin, "rolls", &[("sm-injector.io/inject", "enabled")]).await;
    let other = namespace(&admin, "rolls-off", &[]).await;
    for ns in [&opted, &other] {
        Api::<Deployment>::namespaced(admin.clone(), ns)
            .create(&PostParams::default(), &deployment("app"))
            .await
            .unwrap();
    }
    let sa = support::client_for(&inst.sa_kubeconfig).await.unwrap();
    let patch = |ns: &str, body: serde_json::Value| {
        let api = Api::<Deployment>::namespaced(sa.clone(), ns);
        async move {
            api.patch("app", &PatchParams::default(), &Patch::Merge(&body))
                .await
                .map(|_| ())
                .map_err(|e| match e {
                    kube::Error::Api(s) => (s.code, s.message),
                    other => (0, other.to_string()),
                })
        }
    };
    // The patch src/refresh/workloads.rs makes: the annotation, under the
    // resourceVersion just read.
    let roll = |v: &str, rv: Option<String>| {
        json!({"metadata": {"resourceVersion": rv},
               "spec": {"template": {"metadata": {"annotations": {
            "sm-injector.io/rotated-versions": format!("{{\"x/db\":\"{v}\"}}")
        }}}}})
    };
    let rv = |ns: &str| {
        let api = Api::<Deployment>::namespaced(admin.clone(), ns);
        async move { api.get("app").await.unwrap().metadata.resource_version }
    };
    // The API server loads policies through an informer: wait until this one
    // refuses, on a Deployment of its own (a try that lands before the
    // policy is in force must not change `app`). Each try changes the
    // replicas (0, 1, 0, ...): repeating one that landed changes nothing,
    // which the policy lets through.
    Api::<Deployment>::namespaced(admin.clone(), &opted)
        .create(&PostParams::default(), &deployment("probe"))
        .await
        .unwrap();
    let probe = Api::<Deployment>::namespaced(sa.clone(), &opted);
    let tries = std::sync::atomic::AtomicUsize::new(0);
    eventually(
        Duration::from_secs(30),
        "the workload policy to be in force",
        || async {
            let n = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let body = json!({"spec": {"replicas": n % 2}});
            probe
                .patch("probe", &PatchParams::default(), &Patch::Merge(&body))
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    // What a roll needs, in an opted-in namespace: allowed, and the
    // Deployment's controller sees a new template.
    // (The Deployment controller writes its status meanwhile: a conflict is
    // read again and retried, as the refresher does on its next pass.)
    let mut rolled = Err((0, String::new()));
    for _ in 0..20 {
        rolled = patch(&opted, roll("v2", rv(&opted).await)).await;
        if !matches!(rolled, Err((409, _))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(rolled, Ok(()));
    let d = Api::<Deployment>::namespaced(admin.clone(), &opted)
        .get("app")
        .await
        .unwrap();
    let t = d
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap();
    assert_eq!(t["sm-injector.io/rotated-versions"], r#"{"x/db":"v2"}"#);
    assert_eq!(t["sm-injector.io/env.DB"], "x/db#url");

    // Anything more is refused, naming what is wrong.
    let image = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "registry.invalid/evil:1"}]}}}});
    let only = "may change only the pod template annotation sm-injector.io/rotated-versions";
    for (ns, body, why) in [
        (&opted, image, only),
        (&opted, json!({"spec": {"replicas": 0}}), only),
        (
            &opted,
            json!({"spec": {"template": {"metadata": {"annotations": {
                "sm-injector.io/env.DB": "other/db#url"}}}}}),
            only,
        ),
        (
            &opted,
            json!({"spec": {"template": {"metadata": {"labels": {"app": "app", "extra": "1"}}}}}),
            only,
        ),
        (
            &opted,
            json!({"metadata": {"annotations": {"sm-injector.io/restart-on-rotation": "false"}}}),
            "may not change a workload's labels, annotations",
        ),
        (
            &other,
            roll("v3", None),
            "only in namespaces labelled sm-injector.io/inject=enabled",
        ),
    ] {
        match patch(ns, body.clone()).await {
            Err((403, m)) => assert!(m.contains(why), "{ns} {body}: {m}"),
            other => panic!("{ns} {body}: sm-injector's patch was not refused: {other:?}"),
        }
    }
    let d = Api::<Deployment>::namespaced(admin.clone(), &opted)
        .get("app")
        .await
        .unwrap();
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(
        spec.template.spec.unwrap().containers[0].image.as_deref(),
        Some("registry.invalid/app:1")
    );
    // The policy concerns sm-injector's changes only.
    Api::<Deployment>::namespaced(admin.clone(), &other)
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 0}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn a_misspelled_key_is_refused_when_the_workload_is_applied() {
    installed().await;
    let bed = testbed();
    let admin = bed.client().await;
    let opted = namespace(&admin, "keys", &[("sm-injector.io/inject", "enabled")]).await;
    let other = namespace(&admin, "keys-off", &[]).await;
    let manifest = |kind: &str, name: &str, annotations: serde_json::Value| {
        let template = json!({
            "metadata": {"labels": {"app": name}, "annotations": annotations},
            "spec": {"restartPolicy": if kind == "Deployment" { "Always" } else { "Never" },
                     "containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
        });
        let spec = match kind {
            "Deployment" => {
                json!({"replicas": 0, "selector": {"matchLabels": {"app": name}}, "template": template})
            }
            _ => json!({"schedule": "0 0 * * *", "jobTemplate": {"spec": {"template": template}}}),
        };
        json!({
            "apiVersion": if kind == "Deployment" { "apps/v1" } else { "batch/v1" },
            "kind": kind, "metadata": {"name": name}, "spec": spec
        })
        .to_string()
    };
    let apply = |ns: &str, m: String| bed.kubectl_run(&["-n", ns, "apply", "-f", "-"], Some(&m));
    let typo = json!({"sm-injector.io/evn.DB_URL": "x/db#url"});
    // The API server loads policies through an informer: wait until this one
    // refuses. Each try is a new Deployment: applying one that an earlier try
    // created (before the policy was in force) again changes no annotation,
    // which the policy lets through.
    let tries = std::sync::atomic::AtomicUsize::new(0);
    eventually(
        Duration::from_secs(30),
        "the annotation-key policy to be in force",
        || async {
            let n = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            apply(
                &opted,
                manifest("Deployment", &format!("probe-{n}"), typo.clone()),
            )
            .is_err()
            .then_some(())
        },
    )
    .await;
    let err = apply(&opted, manifest("Deployment", "typo", typo.clone())).unwrap_err();
    assert!(
        err.contains(
            "unknown sm-injector annotation on the pod template: sm-injector.io/evn.DB_URL"
        ) && err.contains("known: sm-injector.io/env.<VAR>"),
        "{err}"
    );
    let err = apply(
        &opted,
        manifest(
            "CronJob",
            "nightly",
            json!({"sm-injector.io/restart-on-rotation": "true"}),
        ),
    )
    .unwrap_err();
    assert!(
        err.contains("restart-on-rotation belongs on the workload's own metadata"),
        "{err}"
    );
    // Every key the webhook reads is accepted, and other prefixes are not its concern.
    let good = json!({
        "sm-injector.io/env.DB_URL": "x/db#url", "sm-injector.io/env-from": "x/a",
        "sm-injector.io/env-from.REDIS": "x/redis", "sm-injector.io/containers": "app",
        "sm-injector.io/mount-path": "/etc/s", "sm-injector.io/refresh-interval": "10m",
        "example.com/evn.X": "y"
    });
    apply(&opted, manifest("Deployment", "good", good)).unwrap();
    // Outside opted-in namespaces it is not the webhook's business.
    apply(&other, manifest("Deployment", "typo", typo)).unwrap();
}
