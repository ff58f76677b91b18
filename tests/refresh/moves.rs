//! A replica learns of the leader's rotations through the inventory
//! (`sm-injector.io/moved`): it trusts what it found of a backing Secret past
//! 30 s while in sync, and reads it again as soon as the leader moves it.

use super::*;
use sm_injector::store::KNOWN_TTL;

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn a_replica_trusts_what_it_found_until_the_leader_moves_it() {
    let _serial = SERIAL.lock().await;
    let bed = testbed();
    let client = bed.client().await;
    let (ns, own, inj) = tenant_with_inventory(bed, &client, "moves").await;
    let secret = format!("{ns}/db");
    bed.put_secret(&secret, r#"{"pw":"v1"}"#).await;
    let uses = json!({"sm-injector.io/env.PW": format!("{secret}#pw"),
        "sm-injector.io/refresh-interval": "1s"});
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let create = |name: String| {
        let (pods, uses) = (pods.clone(), uses.clone());
        async move {
            let p = pods
                .create(&PostParams::default(), &pod(&name, uses))
                .await
                .unwrap();
            let versions: Vec<Option<String>> =
                serde_json::from_str(&p.metadata.annotations.unwrap()["sm-injector.io/versions"])
                    .unwrap();
            versions[0].clone().unwrap()
        }
    };
    let v1 = create("p0".into()).await;
    assert_eq!(holds(&client, &ns, "pw").await, "v1");
    eventually(
        Duration::from_secs(10),
        "the inventory watch in sync",
        || async { inj.moves.watching().then_some(()) },
    )
    .await;
    // In sync (p1 reads again if p0 came before the sync), then trusted past
    // what an admission trusts without the watch: no read. (The same metric
    // rises after the move below, so it is the right one.)
    create("p1".into()).await;
    let reads = r#"sm_injector_backing_secret_reads_total{operation="admission"}"#;
    let before = inj.metric(reads).await;
    tokio::time::sleep(KNOWN_TTL + Duration::from_secs(2)).await;
    assert_eq!(create("p2".into()).await, v1);
    assert_eq!(
        inj.metric(reads).await,
        before,
        "no read past {KNOWN_TTL:?}"
    );

    // The leader moves the Secret to v2 and stamps the inventory; this
    // replica's cache still says v1 for minutes, but its next admission
    // reads the Secret again and records what it holds.
    let r = start_refresher(bed, &client, None, &own, None).await;
    let v2 = bed.rotate(&secret, r#"{"pw":"v2"}"#).await;
    eventually(Duration::from_secs(45), "the rotation", || async {
        (holds(&client, &ns, "pw").await == "v2").then_some(())
    })
    .await;
    // Within seconds; without the stamp, not for the cache TTL (5 minutes).
    let mut n = 3;
    eventually(Duration::from_secs(10), "a pod recording v2", || {
        n += 1;
        let p = create(format!("p{n}"));
        let v2 = v2.clone();
        async move { (p.await == v2).then_some(()) }
    })
    .await;
    assert!(
        inj.metric(reads).await > before,
        "read again after the move"
    );
    drop(r);
    inj.stop(&client).await;
    cleanup(&client, &[&ns, &own]).await;
}
