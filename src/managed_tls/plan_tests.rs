use super::*;

fn ca(name: &str, created: i64, validity: u64) -> StoredCa {
    StoredCa {
        cert: format!("CA {name}"),
        key: format!("key {name}"),
        created,
        not_after: created + validity as i64,
    }
}

fn timing() -> Timing {
    Timing {
        ca_validity: Duration::from_secs(300),
        leaf_validity: Duration::from_secs(60),
        propagation: Duration::from_secs(10),
    }
}

#[test]
fn the_store_is_created_rotated_at_two_thirds_and_forgets_an_expired_ca() {
    assert_eq!(
        store_change(&Stored::default(), 0),
        Some(StoreChange::Create)
    );
    let s = Stored {
        current: Some(ca("a", 0, 300)),
        previous: None,
    };
    assert_eq!(store_change(&s, 199), None);
    assert_eq!(store_change(&s, 200), Some(StoreChange::Rotate));
    assert_eq!(store_change(&s, 10_000), Some(StoreChange::Rotate));
    let s = Stored {
        current: Some(ca("b", 200, 300)),
        previous: Some(ca("a", 0, 300)),
    };
    assert_eq!(store_change(&s, 299), None);
    assert_eq!(bundle(&s, 299), ["CA b", "CA a"]);
    assert_eq!(store_change(&s, 300), Some(StoreChange::DropPrevious));
    assert_eq!(bundle(&s, 300), ["CA b"], "an expired CA is not published");
}

#[test]
fn a_new_ca_signs_only_once_published_for_the_propagation_delay() {
    let t = timing();
    let s = Stored {
        current: Some(ca("b", 200, 300)),
        previous: Some(ca("a", 0, 300)),
    };
    let both = |c: &str| c == "CA a" || c == "CA b";
    let old_only = |c: &str| c == "CA a";
    let signer_at = |now, p: &dyn Fn(&str) -> bool| signer(&s, now, &t, p).map(|c| c.cert.clone());
    assert_eq!(signer_at(205, &both).as_deref(), Some("CA a"), "too new");
    assert_eq!(signer_at(210, &both).as_deref(), Some("CA b"));
    assert_eq!(
        signer_at(250, &old_only).as_deref(),
        Some("CA a"),
        "not in the caBundle yet"
    );
    assert_eq!(signer_at(250, &|_: &str| false), None, "nothing trusted");
    // A first install has no other choice than its new CA.
    let first = Stored {
        current: Some(ca("a", 0, 300)),
        previous: None,
    };
    assert_eq!(
        signer(&first, 1, &t, &old_only).map(|c| c.cert.as_str()),
        Some("CA a")
    );
    // The previous CA signs no longer than it lives.
    assert_eq!(
        leaf_validity(s.previous.as_ref().unwrap(), 280, &t),
        Duration::from_secs(20)
    );
    assert_eq!(
        leaf_validity(s.current.as_ref().unwrap(), 280, &t),
        Duration::from_secs(60)
    );
}

#[test]
fn a_leaf_is_renewed_at_two_thirds_or_when_its_signer_changes() {
    let a = ca("a", 0, 300);
    let b = ca("b", 200, 300);
    let leaf = Leaf {
        issuer: a.cert.clone(),
        issued: 100,
        not_after: 160,
    };
    assert!(leaf_due(None, &a, 0));
    assert!(!leaf_due(Some(&leaf), &a, 139));
    assert!(leaf_due(Some(&leaf), &a, 140));
    assert!(leaf_due(Some(&leaf), &b, 101));
}

#[test]
fn the_timing_must_leave_room_for_the_overlap() {
    assert!(Timing::default().check().is_ok());
    assert!(timing().check().is_ok());
    let mut t = timing();
    t.propagation = Duration::from_secs(100);
    assert!(t.check().unwrap_err().contains("propagation"));
    let mut t = timing();
    t.leaf_validity = Duration::from_secs(301);
    assert!(t.check().unwrap_err().contains("exceed"));
}

/// Runs the plan second by second through several CA rotations, with an API
/// server that sees each caBundle `lag` seconds after it is written, and
/// checks at every second that the certificate served verifies against what
/// the API server trusts: there is no window in which admissions fail.
#[test]
fn the_chain_holds_at_every_second_through_rotations() {
    let t = timing();
    let lag = 8; // under the propagation delay
    let mut s = Stored::default();
    let mut written: Vec<(i64, Vec<String>)> = Vec::new(); // (when, bundle)
    let mut leaf: Option<Leaf> = None;
    let mut made = 0;
    let mut rotations = 0;
    let mut next = 0;
    for now in 0..2_000i64 {
        if now >= next {
            // A reconcile: the store, then the caBundle, then the leaf.
            match store_change(&s, now) {
                Some(StoreChange::Create) => {
                    made += 1;
                    s.current = Some(ca(&made.to_string(), now, 300));
                }
                Some(StoreChange::Rotate) => {
                    made += 1;
                    rotations += 1;
                    s.previous = s.current.take();
                    s.current = Some(ca(&made.to_string(), now, 300));
                }
                Some(StoreChange::DropPrevious) => s.previous = None,
                None => {}
            }
            let want: Vec<String> = bundle(&s, now).iter().map(|c| c.to_string()).collect();
            if written.last().map(|(_, b)| b) != Some(&want) {
                written.push((now, want));
            }
            let live = written.last().unwrap().1.clone();
            let published = |c: &str| live.iter().any(|l| l == c);
            let signer = signer(&s, now, &t, &published).expect("a signer").clone();
            if leaf_due(leaf.as_ref(), &signer, now) {
                let v = leaf_validity(&signer, now, &t).as_secs() as i64;
                leaf = Some(Leaf {
                    issuer: signer.cert.clone(),
                    issued: now,
                    not_after: now + v,
                });
            }
            next = next_change(&s, leaf.as_ref(), now, &t);
        }
        if now < lag {
            continue; // a first install is ready once its bundle is loaded
        }
        // What the API server trusts now: the last bundle it has loaded.
        let seen = written
            .iter()
            .rev()
            .find(|(at, _)| at + lag <= now)
            .map(|(_, b)| b.clone())
            .unwrap_or_default();
        let l = leaf.as_ref().unwrap();
        assert!(seen.contains(&l.issuer), "at {now}: {l:?} not in {seen:?}");
        assert!(l.not_after > now, "at {now}: {l:?} expired");
        let issuer = [&s.current, &s.previous]
            .into_iter()
            .flatten()
            .find(|c| c.cert == l.issuer)
            .expect("the issuer is still stored");
        assert!(issuer.not_after > now, "at {now}: the issuer expired");
    }
    assert!(rotations >= 8, "{rotations} rotations");
}
