//! Filling Secrets Manager's batches: which waiting backing Secrets join a
//! pass that fetches anyway.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use super::{BATCH, Pass, Planner};
use crate::fetch::FetchKey;
use crate::refresh::index::{Key, Want};

impl Planner {
    /// Secrets Manager answers up to [`BATCH`] secrets a call. When anything
    /// is due, the secrets due soonest (within half their interval) join this
    /// pass until the last batch is full: a secret checked early once then
    /// stays with the batch it joined, so batches fill up and stay full
    /// whatever order keys appeared in; and every copy
    /// (in any namespace) of a secret fetched in this pass joins it, whenever
    /// it is due: a copy costs one read of its Secret and no further fetch,
    /// and the copies stay aligned on one fetch. A copy backing off after
    /// failures keeps its own time. So an interval costs about
    /// ceil(secrets / 20) calls, and the spread between secrets stays.
    pub(super) fn fill_batches(
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
            if !fetched.contains(&w.fetch) && s.next_attempt <= now + w.interval / 2 {
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
}
