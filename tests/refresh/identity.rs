//! The refresher with workload identities (SPEC section 4): rotations read
//! with the workload's own role, and a role that loses access is a
//! revocation, against moto with IAM enforced (tests/support/iam.rs).

use super::*;

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn a_rotation_is_read_with_the_workloads_own_role_and_its_loss_is_a_revocation_once_no_role_may_read()
 {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use sm_injector::credentials::WorkloadCredentials;
    use sm_injector::identity::Mode;
    use sm_injector::service_accounts::ServiceAccounts;
    let _serial = SERIAL.lock().await;
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace_with(
        &client,
        "identity-rot",
        &[INJECT],
        &[("sm-injector.io/aws-identity", "serviceaccount")],
    )
    .await;
    let own = namespace(&client, "identity-rot-own", &[]).await;
    let secret = format!("{ns}/db");
    let aws = support::iam::IamAws::start(bed, &[(&secret, r#"{"pw":"p1"}"#)]).await;
    // Two workloads whose roles may read the secret share its copy.
    for name in ["reader", "zeta"] {
        let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name,
            "annotations": {"eks.amazonaws.com/role-arn": aws.role_arn("secret-reader")}}}))
        .unwrap();
        Api::<ServiceAccount>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &sa)
            .await
            .unwrap();
    }
    let inj = injector::start(
        bed,
        &[&ns],
        Options {
            aws_endpoint: Some(aws.url.clone()),
            sts_endpoint: Some(aws.url.clone()),
            aws_credentials: Some(aws.own.clone()),
            min_refresh: Duration::from_secs(1),
            inventory: Some(own.clone()),
            ..Default::default()
        },
    )
    .await;
    for (name, account) in [("app", "reader"), ("other", "zeta")] {
        let mut p = pod(
            name,
            json!({"sm-injector.io/env.PW": format!("{secret}#pw"), "sm-injector.io/refresh-interval": "1s"}),
        );
        p.spec.as_mut().unwrap().service_account_name = Some(account.into());
        Api::<Pod>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &p)
            .await
            .expect("admitted, read with the workload's role");
    }
    let pw = |s: &Secret| {
        s.data
            .as_ref()
            .and_then(|d| d.get("pw"))
            .map(|v| v.0.clone())
    };
    assert_eq!(
        pw(&backing_secrets(&client, &ns).await[0]),
        Some(b"p1".to_vec())
    );

    // Rotated; the refresher, whose own user may read nothing, reads it with
    // the role of the ServiceAccount the pod recorded.
    aws.secrets_manager(&aws.admin)
        .put_secret_value()
        .secret_id(&secret)
        .secret_string(r#"{"pw":"p2"}"#)
        .send()
        .await
        .unwrap();
    let metrics = Metrics::new();
    let source = AwsSource::new(aws.secrets_manager(&aws.own), metrics.clone()).with_workloads(
        WorkloadCredentials::new(
            client.clone(),
            aws.sts(),
            aws.secrets_manager_config(&aws.own),
        ),
    );
    let r = refresher_with(
        &client,
        Arc::new(source),
        &metrics,
        &own,
        Some(Duration::from_secs(3)),
    )
    .with_identities(
        ServiceAccounts::new(client.clone(), Duration::from_secs(1)),
        Mode::Own,
    );
    let (tx, rx) = tokio::sync::watch::channel(true);
    let running = Running {
        task: tokio::spawn(r.run(rx)),
        metrics,
        _leader: tx,
    };
    eventually(
        Duration::from_secs(30),
        "the rotation to reach the copy",
        || async {
            let s = backing_secrets(&client, &ns).await;
            (pw(&s[0]) == Some(b"p2".to_vec())).then_some(())
        },
    )
    .await;
    let audit = aws.audit();
    let reader = format!("role/secret-reader/{ns}.reader");
    let zeta = format!("role/secret-reader/{ns}.zeta");
    assert!(
        audit
            .reads
            .iter()
            .filter(|r| r.principal == reader && r.status == 200)
            .count()
            >= 2,
        "the admission's read and the refresher's: {:?}",
        audit.reads
    );
    assert!(
        audit
            .reads
            .iter()
            .filter(|r| r.action.ends_with("GetSecretValue"))
            .all(|r| r.principal == reader || r.principal == zeta),
        "nothing read as sm-injector's own user or an unknown key: {:?}",
        audit.reads
    );

    // One ServiceAccount now names a role that may not read it: the copy is
    // read with the other workload's role, and kept.
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), &ns);
    let deny = |name: &'static str| {
        let sas = sas.clone();
        let role = aws.role_arn("no-secrets");
        async move {
            sas.patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"metadata": {"annotations": {
                    "eks.amazonaws.com/role-arn": role}}})),
            )
            .await
            .unwrap();
        }
    };
    let seen = aws.audit().reads.len();
    deny("reader").await;
    let refused = format!("role/no-secrets/{ns}.reader");
    eventually(
        Duration::from_secs(30),
        "a refusal to the reader's new role, then a read with zeta's",
        || async {
            let reads = aws.audit().reads.split_off(seen);
            let at = reads
                .iter()
                .position(|r| r.principal == refused && r.status == 403)?;
            reads[at..]
                .iter()
                .any(|r| r.principal == zeta && r.status == 200)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        backing_secrets(&client, &ns).await.len(),
        1,
        "kept: zeta's role may read it"
    );
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        !events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("SecretAccessRevoked")),
        "not revoked while one role may read it"
    );

    // Neither role may read it now: a revocation, reported on the
    // workloads, the copy deleted after the grace.
    deny("zeta").await;
    let e = warning_event(&client, &ns, "SecretAccessRevoked").await;
    let note = e.note.unwrap_or_default();
    assert!(
        note.contains(&format!(
            "role {} (session {ns}.zeta) may not read {secret}",
            aws.role_arn("no-secrets")
        )),
        "{note}"
    );
    eventually(
        Duration::from_secs(30),
        "the revoked copy to be deleted",
        || async { backing_secrets(&client, &ns).await.is_empty().then_some(()) },
    )
    .await;
    assert!(running.metric("sm_injector_refresh_refused_total{reason=\"aws-denied\"}") >= 1.0);
    drop(running);
    inj.stop(&client).await;
    cleanup(&client, &[&ns, &own]).await;
}
