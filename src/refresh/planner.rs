//! The refresher's decisions, as a pure function of what it knows: which
//! backing Secrets are due, which lost their right to be refreshed, which
//! the collector marks or deletes, and what the gauges say. The I/O around it
//! ([`super`]) feeds it the watched state and carries the decisions out.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::index::{Key, Want};
use crate::fetch::FetchKey;
#[cfg(test)]
use crate::policy::AccessRule;
use crate::policy::NamespaceFacts;
use crate::store::inventory::NUDGE;

/// What the leader remembers of one backing Secret in use.
#[derive(Debug, Clone)]
struct State {
    next_attempt: SystemTime,
    /// When it became (or becomes) due for its next successful refresh: the
    /// oldest of these is the alerting gauge; it does not move during failures.
    due_since: SystemTime,
    failures: u32,
    /// The version it holds, as this leader last wrote or found it.
    version: Option<String>,
}

/// Why a backing Secret in use is no longer refreshed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// The namespace lost (or never had) the opt-in label.
    NotOptedIn,
    /// The namespace's current rule does not allow the secret.
    NotAllowed(String),
}

impl Revoked {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Revoked::NotOptedIn => "not-opted-in",
            Revoked::NotAllowed(_) => "not-allowed",
        }
    }
}

/// The marks the collector keeps per backing Secret in the inventory: `""`
/// while in use (or just written), else the Unix second since which no pod
/// uses it.
pub type Marks = BTreeMap<Key, String>;

#[derive(Debug)]
pub struct Pass {
    /// To fetch and write now.
    pub due: Vec<(Key, Want)>,
    /// Newly revoked (each reported once while it stays revoked).
    pub revoked: Vec<(Key, Want, Revoked)>,
    /// Marks changes: `Some(mark)` to set, `None` to remove.
    pub marks: BTreeMap<Key, Option<String>>,
    /// Unused for the grace period: to delete.
    pub delete: Vec<Key>,
    pub gauges: Gauges,
    /// When to plan again at the latest.
    pub next_wake: SystemTime,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Gauges {
    pub in_use: i64,
    pub failing: i64,
    pub revoked: i64,
    /// Unix seconds: the earliest time an in-use backing Secret was due for a
    /// successful refresh. `time() - this` grows during an outage.
    pub oldest_due: i64,
}

pub struct Planner {
    tick: Duration,
    /// First planning after the leader's watches are in sync: what exists
    /// is checked soon (spread out), what appears later was just written.
    started: bool,
    states: HashMap<Key, State>,
    revoked: HashSet<Key>,
    forced: HashMap<String, String>,
    /// Backing Secrets that left use (or were deleted by the collector) lately,
    /// and when: one that comes back (a namespace made again, a Deployment
    /// scaled up from zero) is checked at once, not after its interval.
    gone: HashMap<Key, SystemTime>,
    /// The last nudge mark handled per backing Secret ([`NUDGE`]).
    nudges: HashMap<Key, String>,
    /// Namespaces that have inventory marks and no Namespace, and since when.
    absent: HashMap<String, SystemTime>,
}

/// How long a backing Secret that left use is remembered as [`Planner::gone`].
pub const RECHECK_WINDOW: Duration = Duration::from_secs(3600);

/// How long a namespace must be absent before its inventory is dropped (its
/// backing Secrets went with it).
pub const ABSENT_GRACE: Duration = Duration::from_secs(60);

/// Secrets per `BatchGetSecretValue` call.
pub const BATCH: usize = 20;

pub fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A stable part of `span` for a secret, so that the secrets of Secrets
/// created in one burst do not all come due in the same second. Keyed by what
/// is fetched: the copies of one secret in many namespaces come due together
/// and share one fetch.
fn spread(key: &impl Hash, span: Duration) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    span.mul_f64((h.finish() % 10_000) as f64 / 10_000.0)
}

/// After `failures` failed attempts in a row: one tick, then two, four, …,
/// at most the interval.
pub fn backoff(tick: Duration, failures: u32, interval: Duration) -> Duration {
    tick.saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(interval)
}

impl Planner {
    pub fn new(tick: Duration) -> Self {
        Planner {
            tick,
            started: false,
            states: HashMap::new(),
            revoked: HashSet::new(),
            forced: HashMap::new(),
            gone: HashMap::new(),
            nudges: HashMap::new(),
            absent: HashMap::new(),
        }
    }

    /// Decides what to do at `now`. `grace`: delete backing Secrets unused for
    /// that long (`None`: never).
    pub fn plan(
        &mut self,
        in_use: &BTreeMap<Key, Want>,
        namespace: impl Fn(&str) -> Option<NamespaceFacts>,
        inventory: &Marks,
        grace: Option<Duration>,
        now: SystemTime,
    ) -> Pass {
        let mut d = Pass {
            due: vec![],
            revoked: vec![],
            marks: BTreeMap::new(),
            delete: vec![],
            gauges: Gauges::default(),
            next_wake: now + self.tick,
        };
        let mut valid: BTreeSet<&Key> = BTreeSet::new();
        // Keys whose namespace is not in the cache yet: neither refreshed nor collected.
        let mut unknown: BTreeSet<&Key> = BTreeSet::new();
        let mut forced_now: HashMap<String, String> = HashMap::new();
        for (key, want) in in_use {
            let Some(facts) = namespace(&key.namespace) else {
                unknown.insert(key);
                continue;
            };
            let revoked = if !facts.opted_in {
                Some(Revoked::NotOptedIn)
            } else if !facts.rule.allows(&want.secret) {
                Some(Revoked::NotAllowed(facts.rule.to_string()))
            } else {
                None
            };
            if let Some(r) = revoked {
                self.states.remove(key);
                if self.revoked.insert(key.clone()) {
                    d.revoked.push((key.clone(), want.clone(), r));
                }
                continue;
            }
            self.revoked.remove(key);
            valid.insert(key);
            let first = if !self.started {
                now + spread(&want.fetch, want.interval.min(Duration::from_secs(30)))
            } else if self.gone.remove(key).is_some() {
                now
            } else {
                now + want.interval + spread(&want.fetch, want.interval / 10)
            };
            let state = self.states.entry(key.clone()).or_insert(State {
                next_attempt: first,
                due_since: first,
                failures: 0,
                version: None,
            });
            // An admin's forced refresh: a new refresh-now value.
            if let Some(value) = &facts.refresh_now
                && self.forced.get(&key.namespace) != Some(value)
            {
                let secret = value.rsplit_once('@').map_or(value.as_str(), |(s, _)| s);
                if secret == "*" || secret == want.secret {
                    state.next_attempt = now;
                    state.version = None;
                }
                forced_now.insert(key.namespace.clone(), value.clone());
            }
            // An admission found the Secret differing from what it fetched.
            match inventory.get(key) {
                Some(mark) if mark.starts_with(NUDGE) => {
                    if self.nudges.get(key) != Some(mark) {
                        self.nudges.insert(key.clone(), mark.clone());
                        state.next_attempt = now;
                    }
                    d.marks.insert(key.clone(), Some(String::new()));
                }
                _ => {
                    self.nudges.remove(key);
                }
            }
            if state.next_attempt <= now {
                d.due.push((key.clone(), want.clone()));
            } else {
                d.next_wake = d.next_wake.min(state.next_attempt);
            }
        }
        self.fill_batches(in_use, &valid, &mut d, now);
        self.forced.extend(forced_now);
        self.started = true;
        for k in self.states.keys().filter(|k| !in_use.contains_key(*k)) {
            self.gone.insert(k.clone(), now);
        }
        self.states.retain(|k, _| in_use.contains_key(k));
        self.revoked.retain(|k| in_use.contains_key(k));
        self.nudges.retain(|k, _| in_use.contains_key(k));
        self.gone
            .retain(|_, at| now.duration_since(*at).unwrap_or_default() < RECHECK_WINDOW);
        let namespaces: HashSet<&str> = in_use.keys().map(|k| k.namespace.as_str()).collect();
        self.forced.retain(|ns, _| namespaces.contains(ns.as_str()));

        if let Some(grace) = grace {
            for key in &valid {
                if inventory.get(*key).is_none_or(|m| !m.is_empty()) {
                    d.marks.insert((*key).clone(), Some(String::new()));
                }
            }
            for (key, mark) in inventory {
                if valid.contains(key) || unknown.contains(key) {
                    continue;
                }
                match mark.parse::<i64>() {
                    Ok(since) if unix(now) - since > grace.as_secs() as i64 => {
                        d.delete.push(key.clone())
                    }
                    Ok(since) => {
                        let at = UNIX_EPOCH + Duration::from_secs(since as u64) + grace;
                        d.next_wake = d.next_wake.min(at + Duration::from_secs(1));
                    }
                    Err(_) => {
                        d.marks.insert(key.clone(), Some(unix(now).to_string()));
                    }
                }
            }
        }

        let valid_states = valid.iter().filter_map(|k| self.states.get(*k));
        d.gauges = Gauges {
            in_use: valid.len() as i64,
            failing: valid_states.clone().filter(|s| s.failures > 0).count() as i64,
            revoked: self.revoked.len() as i64,
            oldest_due: valid_states
                .map(|s| unix(s.due_since))
                .min()
                .unwrap_or(unix(now)),
        };
        d
    }

    /// Secrets Manager answers up to [`BATCH`] secrets a call. When anything
    /// is due, secrets due within their jitter window (a tenth of their
    /// interval) join this pass until the last batch is full; and every copy
    /// (in any namespace) of a secret fetched in this pass joins it, whenever
    /// it is due: a copy whose version is known costs no API call, and the
    /// copies stay aligned on one fetch. So an interval costs about
    /// ceil(secrets / 20) calls, and the spread between secrets stays.
    fn fill_batches(
        &self,
        in_use: &BTreeMap<Key, Want>,
        valid: &BTreeSet<&Key>,
        d: &mut Pass,
        now: SystemTime,
    ) {
        if d.due.is_empty() {
            return;
        }
        let due: BTreeSet<Key> = d.due.iter().map(|(k, _)| k.clone()).collect();
        let mut fetched: BTreeSet<FetchKey> = d.due.iter().map(|(_, w)| w.fetch.clone()).collect();
        let waiting: Vec<(&Key, &Want)> = valid
            .iter()
            .filter(|k| !due.contains(**k))
            .filter_map(|k| Some((*k, in_use.get(*k)?)))
            .collect();
        let mut soon: BTreeMap<&FetchKey, SystemTime> = BTreeMap::new();
        for (k, w) in &waiting {
            let Some(s) = self.states.get(*k) else {
                continue;
            };
            // A copy backing off after failures waits for its own time.
            if s.failures > 0 && s.next_attempt > now {
                continue;
            }
            if !fetched.contains(&w.fetch) && s.next_attempt <= now + w.interval / 10 {
                let t = soon.entry(&w.fetch).or_insert(s.next_attempt);
                *t = (*t).min(s.next_attempt);
            }
        }
        let mut soon: Vec<(SystemTime, &FetchKey)> =
            soon.into_iter().map(|(f, t)| (t, f)).collect();
        soon.sort();
        let room = fetched.len().div_ceil(BATCH) * BATCH;
        for (_, f) in soon.into_iter().take(room - fetched.len()) {
            fetched.insert(f.clone());
        }
        for (k, w) in waiting {
            let backing_off = self
                .states
                .get(k)
                .is_some_and(|s| s.failures > 0 && s.next_attempt > now);
            if fetched.contains(&w.fetch) && !backing_off {
                d.due.push((k.clone(), w.clone()));
            }
        }
    }

    /// The version this leader believes `key` holds.
    pub fn version(&self, key: &Key) -> Option<&str> {
        self.states.get(key)?.version.as_deref()
    }

    /// `key` holds `version` now (written, or found so).
    pub fn succeeded(&mut self, key: &Key, version: &str, want: &Want, now: SystemTime) {
        if let Some(s) = self.states.get_mut(key) {
            s.next_attempt = now + want.interval + spread(&want.fetch, want.interval / 10);
            s.due_since = s.next_attempt;
            s.failures = 0;
            s.version = Some(version.to_string());
        }
    }

    /// An attempt failed; returns true when it is the first in a row (to
    /// report once).
    pub fn failed(&mut self, key: &Key, interval: Duration, now: SystemTime) -> bool {
        let Some(s) = self.states.get_mut(key) else {
            return false;
        };
        s.failures += 1;
        s.next_attempt = now + backoff(self.tick, s.failures, interval);
        s.failures == 1
    }

    /// The collector deleted `key`: if a pod uses it again, it is checked at once.
    pub fn deleted(&mut self, key: &Key, now: SystemTime) {
        self.gone.insert(key.clone(), now);
    }

    /// Every backing Secret whose version this leader has verified, with it.
    pub fn versions(&self) -> HashMap<&Key, &str> {
        self.states
            .iter()
            .filter_map(|(k, s)| Some((k, s.version.as_deref()?)))
            .collect()
    }

    /// The namespaces whose inventory ConfigMap is to be dropped: they have
    /// marks in `inventory` and have had no Namespace (`exists`) for
    /// [`ABSENT_GRACE`]. Ask only once the Namespace cache is in sync.
    pub fn vanished(
        &mut self,
        inventory: &Marks,
        exists: impl Fn(&str) -> bool,
        now: SystemTime,
    ) -> Vec<String> {
        let with_marks: BTreeSet<&str> = inventory.keys().map(|k| k.namespace.as_str()).collect();
        self.absent
            .retain(|ns, _| with_marks.contains(ns.as_str()) && !exists(ns));
        let mut out = vec![];
        for ns in with_marks {
            if exists(ns) {
                continue;
            }
            let since = *self.absent.entry(ns.to_string()).or_insert(now);
            if now.duration_since(since).unwrap_or_default() >= ABSENT_GRACE {
                out.push(ns.to_string());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backing::Form;
    use crate::fetch::FetchKey;
    use crate::reference::Version;

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
        }
    }

    fn facts(ns: &str) -> Option<NamespaceFacts> {
        Some(NamespaceFacts {
            opted_in: true,
            rule: AccessRule::for_namespace(ns, None),
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
        let open = |ns: &str| {
            Some(NamespaceFacts {
                opted_in: true,
                rule: AccessRule::for_namespace(ns, Some("s*")),
                refresh_now: None,
            })
        };
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
        let open = |ns: &str| {
            Some(NamespaceFacts {
                opted_in: true,
                rule: AccessRule::for_namespace(ns, Some("s*")),
                refresh_now: None,
            })
        };
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
}
