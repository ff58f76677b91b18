//! The collector's half of a plan: inventory marks (in use, or unused since
//! when), deletions after the grace period, and inventories of namespaces
//! that are gone.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{ABSENT_GRACE, Marks, Pass, Planner, unix};
use crate::refresh::index::Key;

/// Marks what is in use (`""`), stamps what is not (the Unix second since
/// which), and deletes what stayed unused for `grace`. Keys of namespaces
/// not in the cache yet are left alone.
pub(super) fn marks_and_deletions(
    valid: &BTreeSet<&Key>,
    unknown: &BTreeSet<&Key>,
    inventory: &Marks,
    grace: Duration,
    now: SystemTime,
    d: &mut Pass,
) {
    for key in valid {
        if inventory.get(*key).is_none_or(|m| !m.is_empty()) {
            d.marks.insert((*key).clone(), Some(String::new()));
        }
    }
    for (key, mark) in inventory {
        if valid.contains(key) || unknown.contains(key) {
            continue;
        }
        match mark.parse::<i64>() {
            Ok(since) if unix(now) - since > grace.as_secs() as i64 => d.delete.push(key.clone()),
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

impl Planner {
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
