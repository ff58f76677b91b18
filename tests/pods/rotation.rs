//! A rotation reaches every running replica's environment on restart and
//! mounted files without one, in containers the test bed's node runs.

use super::*;

#[tokio::test]
#[ignore = "needs the test bed and its node: run ./tests/run"]
async fn a_rotation_reaches_every_running_replica_and_mounted_files_without_a_restart() {
    let bed = testbed();
    bed.node();
    let client = bed.client().await;
    let ns = support::namespace(&client, "rot", &[INJECT]).await;
    let own = support::namespace(&client, "rot-own", &[]).await;
    let secret = format!("{ns}/db");
    bed.put_secret(&secret, r#"{"pw":"v1"}"#).await;
    // Values cached 1 s, intervals down to 1 s, a planning tick of 1 s.
    let flags = [
        "--cache-ttl=1s",
        "--min-refresh-interval=1s",
        "--refresh-tick=1s",
        "--gc-grace=1h",
    ];
    let server = serve(bed, &client, &ns, &own, &flags).await;
    let script = report_script(&["PW"]);
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let web: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "annotations": {"sm-injector.io/restart-on-rotation": "true"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": {
                    "sm-injector.io/env.PW": format!("{secret}#pw"),
                    "sm-injector.io/refresh-interval": "1h"
                }},
                "spec": {"terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "app", "image": BUSYBOX, "command": ["/bin/sh", "-c", script]}]}
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &web)
        .await
        .unwrap();
    // A bare pod reads the same secret as a file, refreshed every second.
    let files = reporter(
        "files",
        json!({"sm-injector.io/mount-path": "/var/run/secrets/sm",
               "sm-injector.io/env.PW": format!("{secret}#pw"),
               "sm-injector.io/refresh-interval": "1s"}),
        &["PW", &format!("/var/run/secrets/sm/{secret}/pw")],
    );
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &files).await.unwrap();
    node::running(&client, &ns, "files").await;
    let reads = |want: String| {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let l = Api::<Pod>::namespaced(client.clone(), &ns)
                .list(&ListParams::default().labels("app=web"))
                .await
                .ok()?;
            let live: Vec<&Pod> = l
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let mut all = vec![];
            for p in &live {
                let name = p.metadata.name.clone()?;
                let r = report(&client, &ns, &name).await?;
                all.push(r.get("PW")? == &want);
            }
            (live.len() == 3 && all.len() == 3 && all.iter().all(|ok| *ok)).then_some(())
        }
    };
    support::eventually(
        Duration::from_secs(90),
        "two replicas running on v1",
        || async {
            let l = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .ok()?;
            let mut ok = 0;
            for p in &l.items {
                let r = report(&client, &ns, p.metadata.name.as_deref()?).await?;
                ok += usize::from(r.get("PW")? == &sha("v1"));
            }
            (ok == 2).then_some(())
        },
    )
    .await;

    // The secret rotates; an admission (a scale-up) sees v2 first. Every
    // running replica, the old ones too, ends on v2: the Deployment is rolled.
    bed.rotate(&secret, r#"{"pw":"v2"}"#).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    support::eventually(
        Duration::from_secs(120),
        "every running replica on v2",
        || reads(sha("v2")),
    )
    .await;
    // The file follows without a restart; the variable keeps the value the
    // process started with (a variable cannot change under a process).
    let file = format!("/var/run/secrets/sm/{secret}/pw");
    let seen = support::eventually(
        Duration::from_secs(60),
        "the mounted file on v2",
        || async {
            report(&client, &ns, "files")
                .await
                .filter(|r| r.get(&file) == Some(&sha("v2")))
        },
    )
    .await;
    assert_eq!(seen["PW"], sha("v1"));
    let files_now = pods.get("files").await.unwrap();
    let restarts = files_now.status.unwrap().container_statuses.unwrap()[0].restart_count;
    assert_eq!(restarts, 0, "no restart");
    support::signal(server.pid as i32, libc::SIGTERM);
}
