//! Secrets: sm-injector's ServiceAccount reads none and writes only those it
//! manages (and its own CA, in its own namespace); tenants cannot change the
//! Secrets it manages, and deleting a namespace still deletes them.

use super::*;

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn its_serviceaccount_cannot_read_or_touch_secrets_it_does_not_manage() {
    let inst = installed().await;
    let bed = testbed();
    let admin = bed.client().await;
    let ns = namespace(&admin, "bystander", &[]).await;
    let theirs: Secret = serde_json::from_value(json!({
        "metadata": {"name": "app-credentials"},
        "stringData": {"password": "not-for-sm-injector"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();

    // No verb that reads Secrets; patch (the empty-merge-patch read of its own
    // Secrets) and update (replace under a resourceVersion) to write them.
    for (verb, allowed) in [
        ("get", "no"),
        ("list", "no"),
        ("watch", "no"),
        ("patch", "yes"),
        ("update", "yes"),
    ] {
        // `kubectl auth can-i` prints yes or no (and exits 1 on no).
        let out = bed
            .kubectl()
            .args(["auth", "can-i", verb, "secrets", "-n", &ns, "--as", SA])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            allowed,
            "may sm-injector {verb} Secrets?"
        );
    }

    let sa = support::client_for(&inst.sa_kubeconfig).await.unwrap();
    let as_sa = Api::<Secret>::namespaced(sa.clone(), &ns);
    let err = as_sa.get("app-credentials").await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(e) if e.code == 403),
        "{err:?}"
    );
    // PATCH and DELETE would answer with the whole object: the policy refuses them.
    for result in [
        as_sa.patch("app-credentials", &PatchParams::default(), &Patch::Merge(json!({}))).await.map(|_| ()),
        as_sa
            .patch("app-credentials", &PatchParams::apply("sm-injector").force(), &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "app-credentials", "labels": {"app.kubernetes.io/managed-by": "sm-injector"}}
            })))
            .await
            .map(|_| ()),
        as_sa
            .replace("app-credentials", &PostParams::default(), &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "app-credentials", "labels": {"app.kubernetes.io/managed-by": "sm-injector"}}
            })).unwrap())
            .await
            .map(|_| ()),
    ] {
        match result {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 403, "{e:?}");
                assert!(e.message.contains("sm-injector may create, change or delete only Secrets labelled"), "{}", e.message);
                assert!(!e.message.contains("not-for-sm-injector"));
            }
            other => panic!("sm-injector touched a Secret it does not manage: {other:?}"),
        }
    }
    // DELETE: refused by RBAC today (no delete verb yet), by the policy once
    // garbage collection needs the verb.
    match as_sa
        .delete("app-credentials", &DeleteParams::default())
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("sm-injector deleted a Secret it does not manage: {other:?}"),
    }
    // Nor may it create an unlabelled Secret.
    let err = as_sa
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(e) if e.code == 403),
        "{err:?}"
    );
    // The one unlabelled Secret it may write is its managed CA
    // (certificates.mode=managed), in its own namespace only, and it may not
    // delete it (an admin may, to have a new CA made).
    let ca: Secret =
        serde_json::from_value(json!({"metadata": {"name": "sm-injector-webhook-ca"}})).unwrap();
    let err = as_sa.create(&PostParams::default(), &ca).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(e) if e.code == 403 && e.message.contains("only Secrets labelled")),
        "{err:?}"
    );
    let own = Api::<Secret>::namespaced(sa, "sm-injector");
    own.create(&PostParams::default(), &ca).await.unwrap();
    let err = own
        .delete("sm-injector-webhook-ca", &DeleteParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(e) if e.code == 403 && e.message.contains("only Secrets labelled")),
        "{err:?}"
    );
    Api::<Secret>::namespaced(admin.clone(), "sm-injector")
        .delete("sm-injector-webhook-ca", &DeleteParams::default())
        .await
        .unwrap();
    let untouched = Api::<Secret>::namespaced(admin, &ns)
        .get("app-credentials")
        .await
        .unwrap();
    assert_eq!(
        untouched.data.unwrap()["password"].0,
        b"not-for-sm-injector"
    );
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn tenants_cannot_change_managed_secrets_but_namespaces_still_delete() {
    let _ = installed().await;
    let bed = testbed();
    let admin = bed.client().await;
    let ns = namespace(&admin, "tenant", &[("sm-injector.io/inject", "enabled")]).await;
    bed.put_secret(&format!("{ns}/db"), r#"{"pw":"real"}"#)
        .await;
    create_pod(
        &admin,
        &ns,
        &pod(
            "app",
            json!({"sm-injector.io/env.PW": format!("{ns}/db#pw")}),
        ),
    )
    .await
    .unwrap();
    let managed = Api::<Secret>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=sm-injector"))
        .await
        .unwrap();
    let name = managed.items[0].metadata.name.clone().unwrap();

    // A tenant with full rights on Secrets in its namespace.
    kubectl(
        bed,
        &[
            "-n",
            &ns,
            "create",
            "rolebinding",
            "alice-edit",
            "--clusterrole=edit",
            "--user=alice",
        ],
        None,
    )
    .unwrap();
    let swap = r#"{"data":{"pw":"c3dhcHBlZA=="}}"#;
    let err = kubectl(
        bed,
        &[
            "-n",
            &ns,
            "--as=alice",
            "patch",
            "secret",
            &name,
            "--type=merge",
            "-p",
            swap,
        ],
        None,
    )
    .unwrap_err();
    assert!(
        err.contains("only sm-injector may create, change or delete Secrets labelled"),
        "{err}"
    );
    let err = kubectl(
        bed,
        &["-n", &ns, "--as=alice", "delete", "secret", &name],
        None,
    )
    .unwrap_err();
    assert!(err.contains("only sm-injector may"), "{err}");
    let forged = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"sm-forged","labels":{"app.kubernetes.io/managed-by":"sm-injector"}},"stringData":{"pw":"x"}}"#;
    let err = kubectl(
        bed,
        &["-n", &ns, "--as=alice", "create", "-f", "-"],
        Some(forged),
    )
    .unwrap_err();
    assert!(err.contains("only sm-injector may"), "{err}");
    // Even a cluster admin goes through the policy.
    let err = kubectl(
        bed,
        &[
            "-n",
            &ns,
            "patch",
            "secret",
            &name,
            "--type=merge",
            "-p",
            swap,
        ],
        None,
    )
    .unwrap_err();
    assert!(err.contains("only sm-injector may"), "{err}");
    let still = Api::<Secret>::namespaced(admin.clone(), &ns)
        .get(&name)
        .await
        .unwrap();
    assert_eq!(still.data.unwrap()["pw"].0, b"real");

    // Deleting the namespace removes its managed Secrets with it.
    Api::<Namespace>::all(admin.clone())
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(90),
        "the namespace to be deleted",
        || async {
            Api::<Namespace>::all(admin.clone())
                .get_opt(&ns)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
}
