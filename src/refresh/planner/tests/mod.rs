//! The planner's decisions, without an API server.

use super::*;
use crate::backing::Form;
use crate::fetch::FetchKey;
use crate::reference::Version;

mod collection;

const TICK: Duration = Duration::from_secs(30);
const HOUR: Duration = Duration::from_secs(3600);

fn key(ns: &str, b: &str) -> Key {
    Key {
        namespace: ns.into(),
        backing: b.into(),
    }
}

fn want(secret: &str, interval: Duration) -> Want {
    Want {
        secret: secret.into(),
        fetch: FetchKey {
            id: secret.into(),
            version: Version::current(),
        },
        form: Form::Keys,
        interval,
        readers: Default::default(),
    }
}

fn facts(ns: &str) -> Option<NamespaceFacts> {
    Some(NamespaceFacts {
        opted_in: true,
        rule: AccessRule::for_namespace(ns, None),
        refresh_now: None,
    })
}

/// A namespace that may read every secret named `s*`.
fn open(ns: &str) -> Option<NamespaceFacts> {
    Some(NamespaceFacts {
        opted_in: true,
        rule: AccessRule::for_namespace(ns, Some("s*")),
        refresh_now: None,
    })
}

fn t(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
}

#[test]
fn failures_back_off_exponentially_up_to_the_interval() {
    assert_eq!(backoff(TICK, 1, HOUR), TICK);
    assert_eq!(backoff(TICK, 2, HOUR), Duration::from_secs(60));
    assert_eq!(backoff(TICK, 4, HOUR), Duration::from_secs(240));
    assert_eq!(backoff(TICK, 10, HOUR), HOUR);
    assert_eq!(backoff(TICK, 40, HOUR), HOUR);
}

#[test]
fn existing_secrets_are_checked_soon_new_ones_after_their_interval() {
    let mut p = Planner::new(TICK);
    let a = key("n", "a");
    let mut in_use = BTreeMap::from([(a.clone(), want("n/a", HOUR))]);
    let d = p.plan(&in_use, facts, &Marks::new(), None, t(0));
    assert!(d.due.is_empty());
    assert!(d.next_wake <= t(30), "spread over at most 30 s");
    assert_eq!(
        p.plan(&in_use, facts, &Marks::new(), None, t(30)).due.len(),
        1
    );
    p.succeeded(&a, "v1", &want("n/x", HOUR), t(30));
    assert!(
        p.plan(&in_use, facts, &Marks::new(), None, t(60))
            .due
            .is_empty()
    );
    // A pod admitted later: its Secret was just written.
    let b = key("n", "b");
    in_use.insert(b.clone(), want("n/b", HOUR));
    let d = p.plan(&in_use, facts, &Marks::new(), None, t(100));
    assert!(d.due.is_empty());
    let d = p.plan(&in_use, facts, &Marks::new(), None, t(100 + 3600 + 360));
    assert_eq!(d.due.len(), 2, "both due within interval + 10 %");
}

#[test]
fn a_shorter_interval_is_taken_at_once() {
    let mut p = Planner::new(TICK);
    let a = key("n", "a");
    let mut in_use = BTreeMap::from([(a.clone(), want("n/a", HOUR))]);
    p.plan(&in_use, facts, &Marks::new(), None, t(0));
    let d = p.plan(&in_use, facts, &Marks::new(), None, t(30));
    p.succeeded(&a, "v1", &d.due[0].1, t(30));
    // A pod now asks for the same Secret every 10 minutes.
    let ten = Duration::from_secs(600);
    in_use.insert(a.clone(), want("n/a", ten));
    let d = p.plan(&in_use, facts, &Marks::new(), None, t(100));
    assert!(d.due.is_empty());
    assert!(d.next_wake <= t(100 + 600 + 60), "{:?}", d.next_wake);
    let d = p.plan(&in_use, facts, &Marks::new(), None, t(100 + 660));
    assert_eq!(d.due.len(), 1, "due within the new interval + 10 %");
    p.succeeded(&a, "v1", &d.due[0].1, t(760));
    // The longer interval again: the next check is the one already planned.
    in_use.insert(a.clone(), want("n/a", HOUR));
    let d = p.plan(&in_use, facts, &Marks::new(), None, t(800));
    assert!(d.due.is_empty());
    assert!(
        p.plan(&in_use, facts, &Marks::new(), None, t(760 + 660))
            .due
            .len()
            == 1,
        "planned when the interval was 10 minutes"
    );
}

#[test]
fn a_burst_does_not_come_due_in_the_same_second() {
    let mut p = Planner::new(TICK);
    let in_use: BTreeMap<Key, Want> = (0..500)
        .map(|i| (key("n", &format!("s{i}")), want(&format!("n/s{i}"), HOUR)))
        .collect();
    p.plan(&in_use, facts, &Marks::new(), None, t(0));
    let mut seconds = BTreeSet::new();
    for s in 0..=30 {
        let d = p.plan(&in_use, facts, &Marks::new(), None, t(s));
        for (k, w) in &d.due {
            p.succeeded(k, "v", w, t(s));
        }
        if !d.due.is_empty() {
            seconds.insert(s);
        }
        assert!(d.due.len() < 50, "{} due at once at {s}", d.due.len());
    }
    assert!(seconds.len() > 20, "{seconds:?}");
}

#[test]
fn the_outage_gauge_stays_while_attempts_fail() {
    let mut p = Planner::new(TICK);
    let a = key("n", "a");
    let in_use = BTreeMap::from([(a.clone(), want("n/a", Duration::from_secs(60)))]);
    p.plan(&in_use, facts, &Marks::new(), None, t(0));
    p.succeeded(&a, "v1", &want("n/a", Duration::from_secs(60)), t(0));
    let due_at = p
        .plan(&in_use, facts, &Marks::new(), None, t(1))
        .gauges
        .oldest_due;
    assert!((unix(t(60))..=unix(t(66))).contains(&due_at));
    for s in [70, 200, 900] {
        let d = p.plan(&in_use, facts, &Marks::new(), None, t(s));
        for (k, w) in &d.due {
            p.failed(k, w.interval, t(s));
        }
        assert_eq!(
            d.gauges.oldest_due, due_at,
            "does not move during an outage"
        );
    }
    assert_eq!(
        p.plan(&in_use, facts, &Marks::new(), None, t(901))
            .gauges
            .failing,
        1
    );
    p.succeeded(&a, "v2", &want("n/a", Duration::from_secs(60)), t(960));
    assert!(
        p.plan(&in_use, facts, &Marks::new(), None, t(961))
            .gauges
            .oldest_due
            > unix(t(960))
    );
}

#[test]
fn refresh_now_forces_the_named_secret_once_per_value() {
    let mut p = Planner::new(TICK);
    let (a, b) = (key("n", "a"), key("n", "b"));
    let in_use = BTreeMap::from([
        (a.clone(), want("n/a", HOUR)),
        (b.clone(), want("n/b", HOUR)),
    ]);
    p.plan(&in_use, facts, &Marks::new(), None, t(0));
    for k in [&a, &b] {
        p.succeeded(k, "v", &want("n/x", HOUR), t(0));
    }
    let forced = |v: &'static str| {
        move |ns: &str| {
            Some(NamespaceFacts {
                refresh_now: Some(v.into()),
                ..facts(ns).unwrap()
            })
        }
    };
    let d = p.plan(&in_use, forced("n/a@1"), &Marks::new(), None, t(5));
    assert_eq!(d.due.iter().map(|(k, _)| k).collect::<Vec<_>>(), [&a]);
    assert_eq!(p.version(&a), None, "checked against the Secret again");
    p.succeeded(&a, "v", &want("n/x", HOUR), t(5));
    assert!(
        p.plan(&in_use, forced("n/a@1"), &Marks::new(), None, t(6))
            .due
            .is_empty()
    );
    assert_eq!(
        p.plan(&in_use, forced("*@2"), &Marks::new(), None, t(7))
            .due
            .len(),
        2
    );
}

#[test]
fn an_interval_costs_about_one_call_per_twenty_secrets() {
    // 500 backing Secrets of 50 secrets (each in 10 namespaces), admitted
    // over 60 s: copies of one secret first come due far apart.
    let mut p = Planner::new(TICK);
    let minute = Duration::from_secs(60);
    p.plan(&BTreeMap::new(), open, &Marks::new(), None, t(0));
    let mut in_use = BTreeMap::new();
    let mut ms = 0;
    for i in 0..500 {
        in_use.insert(
            key(&format!("n{}", i / 5), &format!("b{i}")),
            want(&format!("s{}", i % 50), minute),
        );
        if i % 8 == 0 {
            ms += 1000;
            p.plan(
                &in_use,
                open,
                &Marks::new(),
                None,
                t(0) + Duration::from_millis(ms),
            );
        }
    }
    // Passes every 200 ms over four intervals, all succeeding.
    let mut calls_per_interval = BTreeMap::<u64, usize>::new();
    for step in 0..(4 * 300) {
        let now = t(63) + Duration::from_millis(200 * step);
        let d = p.plan(&in_use, open, &Marks::new(), None, now);
        let secrets: BTreeSet<&str> = d.due.iter().map(|(_, w)| w.fetch.id.as_str()).collect();
        *calls_per_interval.entry(step / 300).or_default() += secrets.len().div_ceil(BATCH);
        for (k, w) in &d.due {
            p.succeeded(k, "v", w, now);
        }
    }
    // Every copy of every secret is checked each interval, in full batches.
    for (i, calls) in &calls_per_interval {
        assert!(
            *calls >= 50usize.div_ceil(BATCH),
            "interval {i}: {calls} calls"
        );
        assert!(
            *calls <= 50usize.div_ceil(BATCH) + 1,
            "interval {i}: {calls} calls"
        );
    }
}

#[test]
fn a_key_that_comes_back_or_is_nudged_is_due_at_once() {
    let mut p = Planner::new(TICK);
    let a = key("n", "a");
    let in_use = BTreeMap::from([(a.clone(), want("n/a", HOUR))]);
    p.plan(&in_use, facts, &Marks::new(), None, t(0));
    p.succeeded(&a, "v1", &want("n/a", HOUR), t(30));
    // The namespace is deleted (its pods go) and made again.
    p.plan(&BTreeMap::new(), facts, &Marks::new(), None, t(40));
    assert_eq!(
        p.plan(&in_use, facts, &Marks::new(), None, t(50)).due.len(),
        1,
        "checked at once, not after its interval"
    );
    p.succeeded(&a, "v1", &want("n/a", HOUR), t(50));
    // An admission saw another version: due once per nudge, and the mark
    // is cleared whether or not the collector runs.
    let nudged = Marks::from([(a.clone(), format!("{NUDGE}v2"))]);
    let d = p.plan(&in_use, facts, &nudged, None, t(60));
    assert_eq!(d.due.len(), 1);
    assert_eq!(d.marks[&a], Some(String::new()));
    p.succeeded(&a, "v2", &want("n/a", HOUR), t(60));
    assert!(p.plan(&in_use, facts, &nudged, None, t(61)).due.is_empty());
    let again = Marks::from([(a.clone(), format!("{NUDGE}v3"))]);
    assert_eq!(p.plan(&in_use, facts, &again, None, t(62)).due.len(), 1);
    // Long gone keys are forgotten.
    let b = key("n", "b");
    let with_b = BTreeMap::from([(b.clone(), want("n/b", HOUR))]);
    p.plan(&with_b, facts, &Marks::new(), None, t(100));
    p.plan(&BTreeMap::new(), facts, &Marks::new(), None, t(200));
    p.plan(&BTreeMap::new(), facts, &Marks::new(), None, t(200 + 3601));
    assert!(
        p.plan(&with_b, facts, &Marks::new(), None, t(200 + 3602))
            .due
            .is_empty()
    );
}

#[test]
fn a_failing_copy_keeps_its_own_backoff_while_its_siblings_are_fetched() {
    let mut p = Planner::new(TICK);
    let (a, b) = (key("n1", "a"), key("n2", "a"));
    let in_use = BTreeMap::from([
        (a.clone(), want("shared", HOUR)),
        (b.clone(), want("shared", HOUR)),
    ]);
    p.plan(&in_use, open, &Marks::new(), None, t(0));
    let d = p.plan(&in_use, open, &Marks::new(), None, t(31));
    assert_eq!(d.due.len(), 2);
    p.succeeded(&a, "v1", &want("shared", HOUR), t(31));
    for _ in 0..5 {
        p.failed(&b, HOUR, t(31));
    }
    // `a` comes due again (forced); `b` is backing off for 8 ticks.
    let forced = |ns: &str| {
        Some(NamespaceFacts {
            refresh_now: (ns == "n1").then(|| "*@1".to_string()),
            ..open(ns).unwrap()
        })
    };
    let d = p.plan(&in_use, forced, &Marks::new(), None, t(40));
    assert_eq!(d.due.iter().map(|(k, _)| k).collect::<Vec<_>>(), [&a]);
}

#[test]
fn batches_fill_up_whatever_order_the_keys_appeared_in() {
    // 130 secrets, each in 4 namespaces, admitted one by one over a minute
    // while the leader already leads (as in ./tests/scale): the first checks
    // come due in a trickle.
    let minute = Duration::from_secs(60);
    let mut p = Planner::new(Duration::from_secs(5));
    p.plan(&BTreeMap::new(), open, &Marks::new(), None, t(0));
    let mut in_use = BTreeMap::new();
    let mut now = t(0);
    let mut partial_per_interval = BTreeMap::<u64, usize>::new();
    let mut calls_per_interval = BTreeMap::<u64, usize>::new();
    let mut reads_per_interval = BTreeMap::<u64, usize>::new();
    let mut admitted = 0;
    while now < t(60 * 8) {
        while admitted < 520 && t(0) + Duration::from_millis(115 * admitted as u64) <= now {
            let i = admitted;
            in_use.insert(
                key(&format!("n{}", i % 4), &format!("b{}", i / 4)),
                want(&format!("s{}", i / 4), minute),
            );
            admitted += 1;
        }
        let d = p.plan(&in_use, open, &Marks::new(), None, now);
        let secrets: BTreeSet<&str> = d.due.iter().map(|(_, w)| w.fetch.id.as_str()).collect();
        let interval = now.duration_since(t(0)).unwrap().as_secs() / 60;
        *reads_per_interval.entry(interval).or_default() += d.due.len();
        if !secrets.is_empty() {
            *calls_per_interval.entry(interval).or_default() += secrets.len().div_ceil(BATCH);
            if !secrets.len().is_multiple_of(BATCH) {
                *partial_per_interval.entry(interval).or_default() += 1;
            }
        }
        // A pass reads each copy: 5 ms each.
        let end = now + Duration::from_millis(5 * d.due.len() as u64);
        for (k, w) in &d.due {
            p.succeeded(k, "v", w, end);
        }
        now = end.max(now) + Duration::from_millis(200);
    }
    // Once every key is in use and checked (from the third minute), at most
    // one batch a minute is not full, so a minute costs ceil(130 / 20) calls.
    for i in 3..8 {
        let partial = partial_per_interval.get(&i).copied().unwrap_or(0);
        let calls = calls_per_interval.get(&i).copied().unwrap_or(0);
        assert!(
            partial <= 1,
            "minute {i}: {partial} partial batches, {calls} calls"
        );
        assert!(
            calls <= 130usize.div_ceil(BATCH),
            "minute {i}: {calls} calls"
        );
    }
    // Joining a batch early moves a secret once: each copy is still read
    // about once a minute (520 copies), not more and more often.
    let reads: usize = (3..8)
        .map(|i| reads_per_interval.get(&i).copied().unwrap_or(0))
        .sum();
    assert!(reads <= 5 * 546, "{reads} reads in 5 minutes");
}
