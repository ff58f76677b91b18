//! What one namespace's records may hold: pods with records, and distinct
//! secret versions they name (what costs Secrets Manager calls each
//! interval). A tenant can write any record on its pods; these bounds keep
//! its forged records from growing the refresher's work without bound.

use std::collections::HashMap;

use super::{Entry, Limits};
use crate::fetch::FetchKey;

#[derive(Debug, Default)]
pub(super) struct Namespaces {
    by_name: HashMap<String, Use>,
}

#[derive(Debug, Default)]
struct Use {
    pods: usize,
    /// Each secret version named, with how many pods name it.
    secrets: HashMap<FetchKey, usize>,
}

impl Namespaces {
    /// Counts a pod's `entries` in (`add`) or out of namespace `ns`.
    pub(super) fn count(&mut self, ns: &str, entries: &[Entry], add: bool) {
        let u = self.by_name.entry(ns.to_string()).or_default();
        if add {
            u.pods += 1;
        } else {
            u.pods -= 1;
        }
        for e in entries {
            if add {
                *u.secrets.entry(e.fetch.clone()).or_default() += 1;
            } else if let Some(n) = u.secrets.get_mut(&e.fetch) {
                *n -= 1;
                if *n == 0 {
                    u.secrets.remove(&e.fetch);
                }
            }
        }
        if u.pods == 0 {
            self.by_name.remove(ns);
        }
    }

    /// Why one more pod with `entries` may not be counted in `ns`, if not.
    pub(super) fn over(&self, ns: &str, entries: &[Entry], limits: &Limits) -> Option<String> {
        let empty = Use::default();
        let u = self.by_name.get(ns).unwrap_or(&empty);
        if u.pods >= limits.max_records_per_namespace {
            return Some(format!(
                "namespace {ns} has {} pods with records; at most {} (--max-records-per-namespace)",
                u.pods, limits.max_records_per_namespace
            ));
        }
        let mut new: Vec<&FetchKey> = entries
            .iter()
            .map(|e| &e.fetch)
            .filter(|k| !u.secrets.contains_key(*k))
            .collect();
        new.sort();
        new.dedup();
        let total = u.secrets.len() + new.len();
        (total > limits.max_secrets_per_namespace).then(|| {
            format!(
                "namespace {ns}'s records would name {total} secret versions; at most {} (--max-secrets-per-namespace)",
                limits.max_secrets_per_namespace
            )
        })
    }

    pub(super) fn clear(&mut self) {
        self.by_name.clear();
    }
}
