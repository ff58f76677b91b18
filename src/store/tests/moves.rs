//! What an admission trusts when it learns of the leader's rotations
//! ([`moves`](super::super::moves)), against a mocked API server.

use super::ensure::{config_map, plan_for};
use super::*;
use crate::store::moves::Moves;
use std::sync::Arc;

/// An admission of `plan` in namespace `n`: the read it makes, if any.
async fn admit(h: &mut H, syncer: &Syncer, plan: &Plan, reads: bool) {
    let (s, p) = (syncer.clone(), plan.clone());
    let t = tokio::spawn(async move { s.ensure("n", Some("uid-1"), &p, false, None).await });
    if reads {
        let (method, _, _, body) = answer(h, 200, held("v1", true)).await;
        assert_eq!((method.as_str(), body), ("PATCH", json!({})), "the read");
    }
    let e = done(t).await.unwrap();
    assert!(e.held.is_empty() && e.warnings.is_empty(), "{e:?}");
}

/// An admission's writer with an inventory, learning of rotations from `moves`.
fn with_inventory(client: kube::Client, moves: &Moves) -> Syncer {
    let inventory = Inventory::new(client.clone(), "own", "inventory", Duration::from_secs(60));
    Syncer::new(client, Duration::from_secs(60), Metrics::new())
        .with_inventory(inventory)
        .with_moves(moves.clone())
}

#[tokio::test]
async fn in_sync_with_the_leaders_rotations_what_was_found_is_trusted_until_one() {
    let (mut h, client) = mock_api::client();
    let moves = Moves::default();
    let mut syncer = with_inventory(client, &moves);
    // KNOWN_TTL, made short for the test.
    let short = Duration::from_millis(100);
    syncer.short = short;
    let plan = plan_for("v1");
    let s = syncer.clone();
    let p = plan.clone();
    let t = tokio::spawn(async move { s.ensure("n", Some("uid-1"), &p, false, None).await });
    answer(&mut h, 200, config_map()).await;
    answer(&mut h, 200, held("v1", true)).await;
    done(t).await.unwrap();
    admit(&mut h, &syncer, &plan, false).await;
    // Not in sync: read again once the short trust is over.
    tokio::time::sleep(short * 2).await;
    admit(&mut h, &syncer, &plan, true).await;
    // In sync: what was found before is found again, then trusted past it.
    moves.synced();
    admit(&mut h, &syncer, &plan, true).await;
    tokio::time::sleep(short * 2).await;
    admit(&mut h, &syncer, &plan, false).await;
    // A rotation in another namespace changes nothing here; one here does.
    moves.saw("other", Some("1"));
    admit(&mut h, &syncer, &plan, false).await;
    moves.saw("n", Some("1"));
    admit(&mut h, &syncer, &plan, true).await;
    admit(&mut h, &syncer, &plan, false).await;
    // The watch lost: the short trust again.
    moves.lost();
    tokio::time::sleep(short * 2).await;
    admit(&mut h, &syncer, &plan, true).await;
}

#[tokio::test]
async fn a_rotation_ends_what_a_kept_decision_vouched_for_at_once() {
    let (mut h, client) = mock_api::client();
    let moves = Moves::default();
    let syncer =
        Syncer::new(client, Duration::from_secs(60), Metrics::new()).with_moves(moves.clone());
    moves.synced();
    let plan = Arc::new(plan_for("v1"));
    let vouched = Arc::new(Vouched::default());
    let ensure = || {
        let (s, p, v) = (syncer.clone(), plan.clone(), vouched.clone());
        tokio::spawn(async move { s.ensure("n", Some("uid-1"), &p, false, Some(&v)).await })
    };
    // Found by a read, then vouched for by the warm path.
    let t = ensure();
    answer(&mut h, 200, held("v1", true)).await;
    done(t).await.unwrap();
    done(ensure()).await.unwrap();
    // Vouched for: no request even with the memory of the finding gone.
    syncer.known.invalidate_all();
    done(ensure()).await.unwrap();
    // The leader moves a backing Secret of the namespace within the
    // vouched-for second: the next admission reads it again, and what it
    // finds is trusted again (no request).
    moves.saw("n", Some("1"));
    let t = ensure();
    answer(&mut h, 200, held("v1", true)).await;
    done(t).await.unwrap();
    done(ensure()).await.unwrap();
}

#[tokio::test]
async fn the_replicas_watch_asks_for_the_inventories_metadata_only() {
    let (mut h, client) = mock_api::client();
    let moves = Moves::default();
    let before = moves.generation("n");
    let inventory = Inventory::new(client, "own", "inventory", Duration::from_secs(60));
    let watch = tokio::spawn(crate::store::moves::watch(
        inventory.metadata_api().clone(),
        "inventory".into(),
        moves.clone(),
    ));
    let stamped = json!({"name": "inventory-n", "namespace": "own",
        "labels": {"sm-injector.io/inventory-of": "n"},
        "annotations": {"sm-injector.io/moved": "1"}});
    let (path, selector) = (
        "/api/v1/namespaces/own/configmaps",
        "sm-injector.io%2Finventory-of",
    );
    // Not the inventories' data.
    mock_api::answer_metadata_list(&mut h, path, selector, &[stamped]).await;
    // The watch that follows the list: by then the list is seen.
    let (watch_req, _pending) = tokio::time::timeout(Duration::from_secs(5), h.next_request())
        .await
        .unwrap()
        .unwrap();
    assert!(
        watch_req
            .uri()
            .query()
            .unwrap_or_default()
            .contains("watch=true"),
        "{:?}",
        watch_req.uri()
    );
    assert!(moves.watching(), "in sync after the list");
    assert!(moves.generation("n") > before, "the stamp was seen");
    watch.abort();
}

/// The inventory's first request for an admission of `plan` in `n`, where the
/// watch has seen what `moves` says; answered `code`.
async fn first_inventory_request(moves: &Moves, code: u16) -> (H, String, Ensuring) {
    let (mut h, client) = mock_api::client();
    let syncer = with_inventory(client, moves);
    let plan = plan_for("v1");
    let t =
        tokio::spawn(async move { syncer.ensure("n", Some("uid-1"), &plan, false, None).await });
    let body = match code {
        409 => status(409, "AlreadyExists"),
        _ => config_map(),
    };
    let (method, _, _, _) = answer(&mut h, code, body).await;
    (h, method, t)
}

type Ensuring = tokio::task::JoinHandle<Result<Ensured, Vec<String>>>;

#[tokio::test]
async fn a_namespace_without_an_inventory_has_it_created_without_a_patch_first() {
    // In sync, none seen for n: created at once, and the Secret after it
    // without a read (the namespace's first).
    let moves = Moves::default();
    moves.synced();
    let (mut h, method, t) = first_inventory_request(&moves, 201).await;
    assert_eq!(method, "POST", "the inventory created first");
    let (method, _, _, _) = answer(&mut h, 201, held("v1", true)).await;
    assert_eq!(method, "POST", "the backing Secret created without a read");
    done(t).await.unwrap();
    // Made meanwhile by another replica (the watch lags): patched after all.
    let (mut h, method, t) = first_inventory_request(&moves, 409).await;
    assert_eq!(method, "POST");
    let (method, _, _, _) = answer(&mut h, 200, config_map()).await;
    assert_eq!(method, "PATCH", "patched once the create found it");
    let (method, _, _, _) = answer(&mut h, 200, held("v1", true)).await;
    assert_eq!(method, "PATCH", "the backing Secret read");
    done(t).await.unwrap();
    // Seen by the watch, or not in sync: patched first, as the collector does.
    moves.saw("n", None);
    for moves in [moves, Moves::default()] {
        let (mut h, method, t) = first_inventory_request(&moves, 200).await;
        assert_eq!(method, "PATCH");
        answer(&mut h, 200, held("v1", true)).await;
        done(t).await.unwrap();
    }
}
