//! An admission past [`KNOWN_TTL`] answers from what it found and reads the
//! backing Secret again in the background ([`Syncer::recheck`]); what that
//! read finds is what the next admissions answer from.

use super::ensure::{config_map, plan_for, syncer};
use super::*;

/// A syncer whose findings are read again after 100 ms, with the backing
/// Secret of v1 found by a first admission (the inventory made before).
async fn found_once() -> (H, Syncer, Plan) {
    let (mut h, mut syncer) = syncer();
    syncer.known.recheck_after = Duration::from_millis(100);
    let plan = plan_for("v1");
    let (s, p) = (syncer.clone(), plan.clone());
    let t = tokio::spawn(async move { s.ensure("n", Some("uid-1"), &p, false, None).await });
    answer(&mut h, 200, config_map()).await;
    answer(&mut h, 200, held("v1", true)).await;
    done(t).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    (h, syncer, plan)
}

/// Ensures `plan` without any request on the admission's path.
async fn answered_at_once(syncer: &Syncer, plan: &Plan) -> Ensured {
    tokio::time::timeout(
        Duration::from_secs(5),
        syncer.ensure("n", Some("uid-1"), plan, false, None),
    )
    .await
    .expect("answered without waiting on a request")
    .unwrap()
}

/// No request comes within 300 ms.
async fn quiet(h: &mut H) {
    let next = tokio::time::timeout(Duration::from_millis(300), h.next_request()).await;
    if let Ok(Some((req, _))) = next {
        panic!("no request expected: {} {}", req.method(), req.uri());
    }
}

fn count(syncer: &Syncer, operation: &str) -> String {
    let text = syncer.metrics.encode();
    let line = format!(r#"sm_injector_backing_secret_reads_total{{operation="{operation}"}} "#);
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or("0")
        .to_string()
}

#[tokio::test]
async fn an_old_finding_is_answered_from_and_read_again_in_the_background_once() {
    let (mut h, syncer, plan) = found_once().await;
    let ensured = answered_at_once(&syncer, &plan).await;
    assert!(ensured.held.is_empty(), "answered from the finding: v1");
    // Two more admissions meanwhile claim no second read.
    answered_at_once(&syncer, &plan).await;
    answered_at_once(&syncer, &plan).await;
    let (method, _, ct, body) = answer(&mut h, 200, held("v1", true)).await;
    assert_eq!(
        (method.as_str(), ct.as_str(), body),
        ("PATCH", "application/merge-patch+json", json!({})),
        "the read is an empty merge patch"
    );
    // Found again: known afresh, so the next admission asks nothing.
    answered_at_once(&syncer, &plan).await;
    quiet(&mut h).await;
    assert_eq!(count(&syncer, "recheck"), "1");
    assert_eq!(
        count(&syncer, "admission"),
        "1",
        "only the first admission's"
    );
}

#[tokio::test]
async fn a_read_again_that_finds_another_version_has_the_next_admission_answer_with_it() {
    let (mut h, syncer, plan) = found_once().await;
    answered_at_once(&syncer, &plan).await;
    // The leader of the refresher moved it to v2 meanwhile.
    answer(&mut h, 200, held("v2", true)).await;
    // The refresher is told (the inventory's mark), and the finding forgotten.
    let (method, _, _, body) = answer(&mut h, 200, config_map()).await;
    assert_eq!(method, "PATCH");
    assert_eq!(body, json!({"data": {"sm-n-db-1": "due:v1"}}));
    let (s, p) = (syncer.clone(), plan.clone());
    let t = tokio::spawn(async move { s.ensure("n", Some("uid-1"), &p, false, None).await });
    let (method, _, _, _) = answer(&mut h, 200, held("v2", true)).await;
    assert_eq!(method, "PATCH", "read before answering");
    let ensured = done(t).await.unwrap();
    assert_eq!(
        ensured.versions(&plan).collect::<Vec<_>>(),
        [("sm-n-db-1", "v2")],
        "the pod records what the Secret holds"
    );
}

#[tokio::test]
async fn a_backing_secret_deleted_by_hand_is_written_again_by_the_read_again() {
    let (mut h, syncer, plan) = found_once().await;
    answered_at_once(&syncer, &plan).await;
    answer(&mut h, 404, status(404, "NotFound")).await;
    let (method, _, _, body) = answer(&mut h, 201, held("v1", true)).await;
    assert_eq!(method, "POST", "created again");
    assert_eq!(body["metadata"]["name"], "sm-n-db-1");
    answered_at_once(&syncer, &plan).await;
    quiet(&mut h).await;
}

#[tokio::test]
async fn a_read_again_that_fails_has_the_next_admission_read_first() {
    let (mut h, syncer, plan) = found_once().await;
    answered_at_once(&syncer, &plan).await;
    answer(&mut h, 500, status(500, "InternalError")).await;
    quiet(&mut h).await;
    let (s, p) = (syncer.clone(), plan.clone());
    let t = tokio::spawn(async move { s.ensure("n", Some("uid-1"), &p, false, None).await });
    let (method, _, _, _) = answer(&mut h, 200, held("v1", true)).await;
    assert_eq!(method, "PATCH", "read before answering");
    assert!(done(t).await.unwrap().held.is_empty());
}
