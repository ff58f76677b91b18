//! The refresher's Lease against the real API server: handed over at once
//! when its holder stops, and joining is retried.

use super::*;

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn the_lease_is_handed_over_at_once_and_joining_is_retried() {
    let _serial = SERIAL.lock().await;
    let bed = testbed();
    let client = bed.client().await;
    let lease_ns = namespace(&client, "handover", &[]).await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &lease_ns);
    let holder = |leases: Api<k8s_openapi::api::coordination::v1::Lease>| async move {
        leases
            .get_opt("handover")
            .await
            .ok()
            .flatten()?
            .spec?
            .holder_identity
    };
    let metrics = Metrics::new();
    let replica = |id: &'static str, stop: tokio::sync::watch::Receiver<bool>| {
        let (client, metrics, lease_ns) = (client.clone(), metrics.clone(), lease_ns.clone());
        async move {
            let aws = aws_at(bed, None).await;
            let r = refresher_for(&client, aws, &metrics, &lease_ns, None);
            let lease = refresh::lease::LeaseSettings {
                namespace: lease_ns,
                name: "handover".into(),
                identity: id.into(),
                seconds: 15,
            };
            r.run_with_lease(lease, stop).await
        }
    };
    let (_keep, never) = tokio::sync::watch::channel(false);
    let a = tokio::spawn(replica("a", never.clone()));
    eventually(Duration::from_secs(20), "a to lead", || async {
        (holder(leases.clone()).await? == "a").then_some(())
    })
    .await;
    // The gauge is set just after the Lease is taken: a moment later.
    eventually(Duration::from_secs(10), "a's leader gauge", || async {
        (metric(&metrics, "sm_injector_refresh_leader ") == 1.0).then_some(())
    })
    .await;
    let b = tokio::spawn(replica("b", never.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // a's refresher dies: its Lease is released, and b, which watches the
    // Lease, takes it at once rather than when the 15 s Lease would expire.
    a.abort();
    let t = std::time::Instant::now();
    eventually(Duration::from_secs(20), "b to lead", || async {
        (holder(leases.clone()).await? == "b").then_some(())
    })
    .await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // A real replica whose Lease cannot be had yet (its namespace does not
    // exist) keeps trying instead of crash-looping, and takes the Lease when
    // it can; SIGTERM then hands it over to b within 2 s.
    b.abort();
    let late_ns = format!("{lease_ns}-late");
    let late: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &late_ns);
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_sm-injector"));
    let mut process = tokio::process::Command::new(binary)
        .args([
            "serve",
            "--listen=127.0.0.1:0",
            "--probe-listen=127.0.0.1:0",
            "--lease-name=handover",
            "--lease-seconds=15",
            "--shutdown-delay=0s",
            "--identity=process",
        ])
        .arg(format!("--lease-namespace={late_ns}"))
        .arg(format!(
            "--tls-cert={}",
            bed.dir.join("pki/apiserver.crt").display()
        ))
        .arg(format!(
            "--tls-key={}",
            bed.dir.join("pki/apiserver.key").display()
        ))
        .env("KUBECONFIG", &bed.kubeconfig)
        .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", &bed.moto)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        process.try_wait().unwrap().is_none(),
        "the replica keeps running while it cannot join"
    );
    namespace_with_name(&client, &late_ns).await;
    eventually(Duration::from_secs(45), "the process to lead", || async {
        (holder(late.clone()).await? == "process").then_some(())
    })
    .await;
    let late_metrics = Metrics::new();
    let (client2, late_ns2) = (client.clone(), late_ns.clone());
    let b2 = tokio::spawn(async move {
        let aws = aws_at(bed, None).await;
        let r = refresher_for(&client2, aws, &late_metrics, &late_ns2, None);
        let lease = refresh::lease::LeaseSettings {
            namespace: late_ns2,
            name: "handover".into(),
            identity: "b".into(),
            seconds: 15,
        };
        r.run_with_lease(lease, never).await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = process.id().unwrap() as i32;
    support::signal(pid as i32, libc::SIGTERM);
    let t = std::time::Instant::now();
    eventually(
        Duration::from_secs(20),
        "b to lead after SIGTERM",
        || async { (holder(late.clone()).await? == "b").then_some(()) },
    )
    .await;
    let handover = t.elapsed();
    assert!(handover < Duration::from_secs(2), "{handover:?}");
    let status = tokio::time::timeout(Duration::from_secs(30), process.wait())
        .await
        .expect("the process exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
    b2.abort();
    cleanup(&client, &[&lease_ns, &late_ns]).await;
}

/// Creates the namespace `name` (unlabelled).
async fn namespace_with_name(client: &kube::Client, name: &str) {
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}
