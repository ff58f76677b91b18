//! The refresher's decisions, as a pure function of what it knows: which
//! backing Secrets are due, which lost their right to be refreshed, which
//! the collector marks or deletes, and what the gauges say. The I/O around it
//! ([`super`]) feeds it the watched state and carries the decisions out.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod batches;
mod collect;

use super::index::{Key, Want};
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
    /// Refused to the workload's own role by AWS at the last attempt: not
    /// collected as in use, tried again at its interval.
    denied: HashSet<Key>,
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

/// How long a backing Secret that left use is remembered (then checked at
/// once if it comes back).
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
            denied: HashSet::new(),
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
            if !self.denied.contains(key) {
                valid.insert(key);
            }
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
            // A pod asking a shorter interval than the Secret's others (or its
            // own earlier one): checked within that interval from now, not at
            // the check planned for the longer one. (Failing: the backoff,
            // never longer than the interval, decides.)
            // (The spread's hash only when the plain interval is already shorter.)
            if state.failures == 0 && state.next_attempt > now + want.interval {
                let soonest = now + want.interval + spread(&want.fetch, want.interval / 10);
                if state.next_attempt > soonest {
                    state.next_attempt = soonest;
                    state.due_since = soonest;
                }
            }
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
        self.denied.retain(|k| in_use.contains_key(k));
        self.nudges.retain(|k, _| in_use.contains_key(k));
        self.gone
            .retain(|_, at| now.duration_since(*at).unwrap_or_default() < RECHECK_WINDOW);
        let namespaces: HashSet<&str> = in_use.keys().map(|k| k.namespace.as_str()).collect();
        self.forced.retain(|ns, _| namespaces.contains(ns.as_str()));

        if let Some(grace) = grace {
            collect::marks_and_deletions(&valid, &unknown, inventory, grace, now, &mut d);
        }

        let valid_states = valid.iter().filter_map(|k| self.states.get(*k));
        d.gauges = Gauges {
            in_use: valid.len() as i64,
            failing: valid_states.clone().filter(|s| s.failures > 0).count() as i64,
            revoked: (self.revoked.len() + self.denied.len()) as i64,
            oldest_due: valid_states
                .map(|s| unix(s.due_since))
                .min()
                .unwrap_or(unix(now)),
        };
        d
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
        self.denied.remove(key);
    }

    /// AWS refused `key` to the workload's own role: no longer counted as in
    /// use (the collector deletes it after the grace period), tried again at
    /// its interval. Returns true when newly denied (to report once).
    pub fn denied(&mut self, key: &Key, want: &Want, now: SystemTime) -> bool {
        if let Some(s) = self.states.get_mut(key) {
            s.next_attempt = now + want.interval + spread(&want.fetch, want.interval / 10);
            s.due_since = s.next_attempt;
            s.failures = 0;
        }
        self.denied.insert(key.clone())
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
}

#[cfg(test)]
mod tests;
