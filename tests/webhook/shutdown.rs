//! Shutting down without losing an admission: unready first while still
//! serving for the delay, then in-flight admissions drained.

use super::*;

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn on_shutdown_it_turns_unready_first_and_keeps_serving_for_the_delay() {
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "restart", &[INJECT]).await;
    let mut inj = injector::start(
        bed,
        &[&ns],
        Options {
            shutdown_delay: Duration::from_secs(4),
            ..Default::default()
        },
    )
    .await;
    bed.put_secret(&format!("{ns}/s"), r#"{"k":"v"}"#).await;
    let probe = inj.probe_port;
    let ready = || async move { injector::http_get(probe, "/readyz").await.0 };
    assert_eq!(ready().await, 200);
    inj.begin_shutdown();
    let t = std::time::Instant::now();
    eventually(
        Duration::from_secs(2),
        "readiness to turn false",
        || async { (ready().await == 503).then_some(()) },
    )
    .await;
    // The API server may still route here: admissions are still answered.
    for i in 0..3 {
        let p = create_one(
            &client,
            &ns,
            &format!("during-{i}"),
            json!({"sm-injector.io/env.K": format!("{ns}/s#k")}),
        )
        .await
        .expect("admitted during the shutdown delay");
        assert!(p.spec.unwrap().containers[0].env.is_some());
    }
    // Each HTTP/1.1 answer now closes its connection, so that the API
    // server's keep-alive connections move to other replicas meanwhile.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-i", "--http1.1", "--cacert"])
        .arg(bed.dir.join("pki/ca.crt"))
        .args(["-d", "{}"])
        .arg(format!("https://127.0.0.1:{}/mutate", inj.port))
        .output()
        .await
        .expect("curl");
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    assert!(!inj.finished() && t.elapsed() < Duration::from_secs(4));
    eventually(
        Duration::from_secs(15),
        "the server to stop after the delay",
        || async { inj.finished().then_some(()) },
    )
    .await;
    assert!(t.elapsed() >= Duration::from_secs(4), "{:?}", t.elapsed());
    inj.stop(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn shutdown_drains_in_flight_admissions() {
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "drain", &[INJECT]).await;
    // A Secrets Manager that accepts connections and never answers keeps an
    // admission in flight until the AWS deadline (2 s).
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_port = hole.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let mut inj = injector::start(
        bed,
        &[&ns],
        Options {
            aws_endpoint: Some(format!("http://127.0.0.1:{hole_port}")),
            aws_deadline: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await;
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "drain-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE", "userInfo": {}, "namespace": ns,
            "object": {"metadata": {"name": "p", "annotations": {"sm-injector.io/env.X": format!("{ns}/x#k")}},
                       "spec": {"containers": [{"name": "c"}]}}
        }
    });
    let started = std::time::Instant::now();
    let curl = tokio::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(bed.dir.join("pki/ca.crt"))
        .args([
            "-H",
            "Content-Type: application/json",
            "-w",
            "\n%{http_code}",
            "--data-binary",
        ])
        .arg(review.to_string())
        .arg(format!("https://127.0.0.1:{}/mutate", inj.port))
        .output();
    let (out, _) = tokio::join!(curl, async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        inj.begin_shutdown();
    });
    let out = String::from_utf8_lossy(&out.unwrap().stdout).to_string();
    assert!(
        out.ends_with("\n200"),
        "the in-flight admission was answered: {out}"
    );
    assert!(
        out.contains("Secrets Manager could not be reached"),
        "{out}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it waited for the AWS deadline"
    );
    eventually(Duration::from_secs(10), "the server to stop", || async {
        inj.finished().then_some(())
    })
    .await;
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", inj.port)).await;
    assert!(refused.is_err(), "no new connections after shutdown");
    inj.stop(&client).await;
}
