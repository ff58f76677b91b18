//! What the planner stops refreshing and collects: revoked and unlabelled
//! copies, unused ones after the grace, a namespace's inventory once it is
//! gone, a copy no role may read any more.

use super::*;

#[test]
fn revoked_and_unlabelled_are_not_refreshed_and_reported_once() {
    let mut p = Planner::new(TICK);
    let a = key("n", "a");
    let in_use = BTreeMap::from([(a.clone(), want("shared/db", HOUR))]);
    let widened = |_: &str| {
        Some(NamespaceFacts {
            opted_in: true,
            rule: AccessRule::for_namespace("n", Some("shared/*")),
            refresh_now: None,
        })
    };
    let narrowed = |_: &str| facts("n");
    let unlabelled = |_: &str| {
        Some(NamespaceFacts {
            opted_in: false,
            ..facts("n").unwrap()
        })
    };
    p.plan(&in_use, widened, &Marks::new(), None, t(0));
    assert_eq!(
        p.plan(&in_use, widened, &Marks::new(), None, t(31))
            .due
            .len(),
        1
    );
    let d = p.plan(&in_use, narrowed, &Marks::new(), None, t(32));
    assert!(d.due.is_empty());
    assert_eq!(d.revoked.len(), 1);
    assert!(matches!(&d.revoked[0].2, Revoked::NotAllowed(r) if r.contains("n/*")));
    assert!(
        p.plan(&in_use, narrowed, &Marks::new(), None, t(33))
            .revoked
            .is_empty()
    );
    let d = p.plan(&in_use, unlabelled, &Marks::new(), None, t(34));
    assert!(
        d.due.is_empty() && d.revoked.is_empty(),
        "still revoked: not reported again"
    );
    assert_eq!(d.gauges.revoked, 1);
}

#[test]
fn the_collector_marks_waits_for_the_grace_and_deletes() {
    let grace = Some(Duration::from_secs(100));
    let mut p = Planner::new(TICK);
    let (a, b, c) = (key("n", "a"), key("n", "b"), key("n", "c"));
    let in_use = BTreeMap::from([(a.clone(), want("n/a", HOUR))]);
    let inv = Marks::from([
        (a.clone(), "500".to_string()), // used again: cleared
        (b.clone(), String::new()),     // written, no pod: stamped
        (c.clone(), (unix(t(0)) - 101).to_string()),
    ]);
    let d = p.plan(&in_use, facts, &inv, grace, t(0));
    assert_eq!(d.marks[&a], Some(String::new()));
    assert_eq!(d.marks[&b], Some(unix(t(0)).to_string()));
    assert_eq!(d.delete, vec![c.clone()]);
    // Revoked counts as unused: stamped, then deleted after the grace.
    let none = BTreeMap::new();
    let inv = Marks::from([(a.clone(), unix(t(0)).to_string())]);
    assert!(p.plan(&none, facts, &inv, grace, t(50)).delete.is_empty());
    assert_eq!(
        p.plan(&none, facts, &inv, grace, t(101)).delete,
        vec![a.clone()]
    );
    // A namespace not yet in the cache: nothing is collected there.
    let inv = Marks::from([(a.clone(), String::new())]);
    let d = p.plan(&in_use, |_| None, &inv, grace, t(0));
    assert!(d.marks.is_empty() && d.delete.is_empty());
    // A Secret deleted and then used again is written at once.
    p.deleted(&a, t(0));
    let mut p2 = Planner::new(TICK);
    p2.plan(&BTreeMap::new(), facts, &Marks::new(), None, t(0));
    p2.deleted(&a, t(0));
    assert_eq!(
        p2.plan(&in_use, facts, &Marks::new(), None, t(1)).due.len(),
        1
    );
}

#[test]
fn the_inventory_of_a_namespace_gone_for_a_minute_is_dropped() {
    let mut p = Planner::new(TICK);
    let inv = Marks::from([
        (key("gone", "a"), String::new()),
        (key("here", "b"), String::new()),
    ]);
    let exists = |ns: &str| ns == "here";
    assert!(p.vanished(&inv, exists, t(0)).is_empty());
    assert!(p.vanished(&inv, exists, t(59)).is_empty());
    assert_eq!(p.vanished(&inv, exists, t(61)), vec!["gone".to_string()]);
    // Back meanwhile (made again): its clock starts over.
    assert!(p.vanished(&inv, |_| true, t(62)).is_empty());
    assert!(p.vanished(&inv, exists, t(63)).is_empty());
}

#[test]
fn a_copy_the_workloads_role_may_no_longer_read_is_collected_unless_read_again() {
    let mut p = Planner::new(TICK);
    let a = key("n", "a");
    let w = want("n/a", HOUR);
    let in_use = BTreeMap::from([(a.clone(), w.clone())]);
    let grace = Some(Duration::from_secs(100));
    p.plan(&in_use, facts, &Marks::new(), grace, t(0));
    p.succeeded(&a, "v1", &w, t(0));
    // Refused to the role: reported once, stamped as unused, not overdue.
    assert!(p.denied(&a, &w, t(10)));
    assert!(!p.denied(&a, &w, t(11)), "reported once");
    let inv = Marks::from([(a.clone(), String::new())]);
    let d = p.plan(&in_use, facts, &inv, grace, t(20));
    assert_eq!(d.marks[&a], Some(unix(t(20)).to_string()));
    assert_eq!(d.gauges.revoked, 1);
    assert_eq!(d.gauges.in_use, 0);
    assert!(d.due.is_empty(), "tried again at its interval, not at once");
    let inv = Marks::from([(a.clone(), unix(t(20)).to_string())]);
    assert_eq!(
        p.plan(&in_use, facts, &inv, grace, t(121)).delete,
        vec![a.clone()]
    );
    // Still tried at its interval; readable again, it is in use again.
    assert_eq!(
        p.plan(&in_use, facts, &inv, grace, t(20) + HOUR * 2)
            .due
            .len(),
        1
    );
    p.succeeded(&a, "v2", &w, t(20) + HOUR * 2);
    let d = p.plan(&in_use, facts, &inv, grace, t(21) + HOUR * 2);
    assert_eq!(d.marks[&a], Some(String::new()));
    assert!(d.delete.is_empty());
    assert_eq!(d.gauges.revoked, 0);
}
