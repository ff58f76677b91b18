//! Replicas against the real API server and moto: a replica whose cache is
//! stale never rolls a rotation back; of two replicas one refreshes, and the
//! other takes over when it stops.

use super::*;

/// POSTs an AdmissionReview for a real (not dry-run) pod in `ns` straight to
/// a replica, as the API server would: true when admitted.
async fn admit_directly(
    bed: &TestBed,
    port: u16,
    ns: &str,
    annotations: serde_json::Value,
) -> bool {
    let body = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE", "userInfo": {}, "namespace": ns, "dryRun": false,
            "object": {"metadata": {"name": "direct", "annotations": annotations},
                       "spec": {"containers": [{"name": "c"}]}}
        }
    });
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(bed.dir.join("pki/ca.crt"))
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(body.to_string())
        .arg(format!("https://127.0.0.1:{port}/mutate"))
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("\"allowed\":true")
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn a_replica_with_a_stale_cache_never_rolls_a_rotation_back() {
    let _serial = SERIAL.lock().await;
    let bed = testbed();
    let client = bed.client().await;
    // `a` is where the race happens; `b` shares `a`'s secrets (allowed-secrets).
    let a = namespace(&client, "race-a", &[INJECT]).await;
    let shared = format!("{a}/*");
    let b = namespace_with(
        &client,
        "race-b",
        &[INJECT],
        &[("sm-injector.io/allowed-secrets", &shared)],
    )
    .await;
    let other = namespace(&client, "race-y", &[INJECT]).await;
    // Replica X serves `a` and `b` through the API server; replica Y (a fresh
    // cache) is posted to directly.
    let x = injector::start(bed, &[&a, &b], Options::default()).await;
    let y = injector::start(bed, &[&other], Options::default()).await;
    let (dry_warmed, shared_warmed) = (format!("{a}/dry"), format!("{a}/shared"));
    for s in [&dry_warmed, &shared_warmed] {
        bed.put_secret(s, r#"{"pw":"v1"}"#).await;
    }
    let uses = |s: &str| json!({"sm-injector.io/env.PW": format!("{s}#pw")});
    // X's cache learns v1: by a server-side dry run in `a` (nothing written
    // there), and by a pod in `b` using the same secret.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    Api::<Pod>::namespaced(client.clone(), &a)
        .create(&dry, &pod("warm", uses(&dry_warmed)))
        .await
        .unwrap();
    Api::<Pod>::namespaced(client.clone(), &b)
        .create(&PostParams::default(), &pod("warm", uses(&shared_warmed)))
        .await
        .unwrap();
    assert!(backing_secrets(&client, &a).await.is_empty());
    // Both rotate; replica Y writes the new versions into `a`.
    for s in [&dry_warmed, &shared_warmed] {
        bed.rotate(s, r#"{"pw":"v2"}"#).await;
        assert!(admit_directly(bed, y.port, &a, uses(s)).await);
    }
    let held = |s: String| {
        let client = client.clone();
        let a = a.clone();
        async move {
            let name = sm_injector::backing::name(
                &s,
                &sm_injector::reference::Version::current(),
                sm_injector::backing::Form::Keys,
            );
            let sec = Api::<Secret>::namespaced(client, &a)
                .get(&name)
                .await
                .unwrap();
            String::from_utf8(sec.data.unwrap()["pw"].0.clone()).unwrap()
        }
    };
    assert_eq!(held(dry_warmed.clone()).await, "v2");
    // Pods in `a` admitted by X, whose cache still says v1: the Secrets keep v2.
    let x_calls = x.metric("sm_injector_secretsmanager_calls_total").await;
    for (i, s) in [&dry_warmed, &shared_warmed].into_iter().enumerate() {
        Api::<Pod>::namespaced(client.clone(), &a)
            .create(&PostParams::default(), &pod(&format!("app-{i}"), uses(s)))
            .await
            .unwrap();
        assert_eq!(
            held(s.clone()).await,
            "v2",
            "{s}: the rotation was not rolled back"
        );
    }
    // X dropped its stale values: the next admission asks Secrets Manager again.
    Api::<Pod>::namespaced(client.clone(), &a)
        .create(&dry, &pod("again", uses(&dry_warmed)))
        .await
        .unwrap();
    assert!(x.metric("sm_injector_secretsmanager_calls_total").await > x_calls);
    x.stop(&client).await;
    y.stop(&client).await;
    cleanup(&client, &[&a, &b, &other]).await;
}

/// An AdmissionReview for a pod in `ns` asking for `reference` as PW.
fn review(ns: &str, reference: &str) -> String {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE", "userInfo": {}, "namespace": ns, "dryRun": true,
            "object": {"metadata": {"name": "p", "annotations": {"sm-injector.io/env.PW": reference}},
                       "spec": {"containers": [{"name": "c"}]}}
        }
    })
    .to_string()
}

/// POSTs an AdmissionReview to a replica: true when it answered with an allowed patch.
async fn admits(bed: &TestBed, port: u16, body: &str) -> bool {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(bed.dir.join("pki/ca.crt"))
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ])
        .arg(format!("https://127.0.0.1:{port}/mutate"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.contains("\"allowed\":true") && text.contains("\"patch\"")
}

async fn refresh_writes(probe: u16) -> f64 {
    support::injector::http_get(probe, "/metrics")
        .await
        .1
        .lines()
        .find_map(|l| {
            l.strip_prefix("sm_injector_backing_secret_writes_total{operation=\"refresh\"} ")?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn two_replicas_one_refreshes_and_the_other_takes_over() {
    let _serial = SERIAL.lock().await;
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "ha", &[INJECT]).await;
    // The Lease lives in a namespace of the test's own.
    let lease_ns = namespace(&client, "ha-lease", &[]).await;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_sm-injector"));
    let args = |id: &'static str| {
        vec![
            format!("--identity={id}"),
            format!("--lease-namespace={lease_ns}"),
            "--lease-name=ha-test".to_string(),
            "--lease-seconds=3".to_string(),
            "--refresh-tick=500ms".to_string(),
            "--min-refresh-interval=1s".to_string(),
        ]
    };
    let a_args = args("replica-a");
    let b_args = args("replica-b");
    let a = support::serve_process(
        bed,
        binary,
        "replica-a",
        &a_args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let b = support::serve_process(
        bed,
        binary,
        "replica-b",
        &b_args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;

    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &lease_ns);
    let holder = || async {
        leases
            .get_opt("ha-test")
            .await
            .ok()
            .flatten()?
            .spec?
            .holder_identity
    };
    let first = support::eventually(Duration::from_secs(20), "a leader", holder).await;
    let (leader, follower) = if first == "replica-a" {
        (&a, &b)
    } else {
        (&b, &a)
    };

    // A pod whose backing Secret is refreshed every second, admitted by the leader.
    bed.put_secret(&format!("{ns}/db"), r#"{"pw":"v1"}"#).await;
    let record_pod = |name: &str| {
        pod(
            name,
            json!({"sm-injector.io/env.PW": format!("{ns}/db#pw"), "sm-injector.io/refresh-interval": "1s"}),
        )
    };
    support::start_url_webhook(bed, &client, &format!("ha-{ns}"), leader.port, &[&ns]).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    support::eventually(
        Duration::from_secs(30),
        "the webhook to take effect",
        || async {
            let p = pods.create(&dry, &record_pod("canary")).await.ok()?;
            p.metadata
                .annotations?
                .contains_key("sm-injector.io/injected")
                .then_some(())
        },
    )
    .await;
    pods.create(&PostParams::default(), &record_pod("app"))
        .await
        .unwrap();

    let sm = bed.aws().await;
    let body = review(&ns, &format!("{ns}/db#pw"));
    for (round, value) in ["v2", "v3"].into_iter().enumerate() {
        let (refresher, other) = if round == 0 {
            (leader, follower)
        } else {
            (follower, leader)
        };
        if round == 1 {
            // The leader dies without letting go; the other takes over once the Lease runs out.
            support::signal(leader.pid as i32, libc::SIGKILL);
            let next = support::eventually(Duration::from_secs(20), "a new leader", || async {
                let h = holder().await?;
                (h != first).then_some(h)
            })
            .await;
            assert_ne!(next, first);
        }
        let before = refresh_writes(refresher.probe).await;
        let other_before = if round == 0 {
            refresh_writes(other.probe).await
        } else {
            0.0
        };
        sm.put_secret_value()
            .secret_id(format!("{ns}/db"))
            .secret_string(format!(r#"{{"pw":"{value}"}}"#))
            .send()
            .await
            .unwrap();
        support::eventually(
            Duration::from_secs(20),
            "the rotation to reach the backing Secret",
            || async {
                let s = backing(&client, &ns).await;
                (s.data?["pw"].0 == value.as_bytes()).then_some(())
            },
        )
        .await;
        assert!(
            refresh_writes(refresher.probe).await > before,
            "round {round}: the leader refreshed"
        );
        if round == 0 {
            assert_eq!(
                refresh_writes(other.probe).await,
                other_before,
                "the follower did not"
            );
        }
        // Admissions are answered throughout, by every live replica.
        assert!(admits(bed, refresher.port, &body).await, "round {round}");
        if round == 0 {
            assert!(admits(bed, other.port, &body).await);
        }
    }
    // Stop the survivor too: it would refresh other tests' Secrets.
    for p in [a.pid, b.pid] {
        support::signal(p as i32, libc::SIGKILL);
    }
}
