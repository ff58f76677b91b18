//! The Secrets Manager budget: what one namespace, and the whole process, may
//! spend of the AWS account's request quota.
//!
//! AWS allows `BatchGetSecretValue` 100 calls a second per account and region,
//! and `GetSecretValue` 10,000 (neither adjustable for the batch call), shared
//! by every replica and every other user of the account. Without a budget one
//! namespace's dry runs of pods naming fresh secrets could spend it all, and
//! every other tenant and the refresher would be throttled with it.
//!
//! - **Per namespace** ([`Quota::charge`]): the calls an admission's cache
//!   misses need are charged to its namespace before any is made (a token
//!   bucket, `--secretsmanager-calls-per-namespace` a second with bursts of
//!   `--secretsmanager-burst-per-namespace`). Over it, the misses fail at once
//!   with [`FetchError::OverBudget`], which names the flag; other namespaces
//!   are unaffected.
//! - **Per process** ([`Quota::call`]): each call made, by admissions and the
//!   refresher alike, waits for a token of `--secretsmanager-calls-per-second`
//!   and one of `--secretsmanager-concurrency` places, within the caller's
//!   deadline. Keep the rate times the replicas well below the account's 100.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota as Rate, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::fetch::{FetchError, FetchKey};

/// `AWSCURRENT` versions fetched in one `BatchGetSecretValue` call.
pub const BATCH: usize = 20;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Calls a second one namespace's admissions may make, and in a burst.
    pub per_namespace: NonZeroU32,
    pub namespace_burst: NonZeroU32,
    /// Calls a second the process makes, and at once.
    pub per_second: NonZeroU32,
    pub concurrency: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_namespace: NonZeroU32::new(5).expect("not zero"),
            namespace_burst: NonZeroU32::new(20).expect("not zero"),
            per_second: NonZeroU32::new(25).expect("not zero"),
            concurrency: 16,
        }
    }
}

#[derive(Clone)]
pub struct Quota {
    inner: Arc<Inner>,
}

struct Inner {
    limits: Limits,
    namespaces: DefaultKeyedRateLimiter<String>,
    process: DefaultDirectRateLimiter,
    calls: Arc<Semaphore>,
    charges: AtomicU64,
}

/// The calls fetching `keys` takes: one per [`BATCH`] current versions, one
/// per pinned version.
pub fn calls_for(keys: &[FetchKey]) -> u32 {
    let current = keys.iter().filter(|k| k.version.is_current()).count();
    (current.div_ceil(BATCH) + (keys.len() - current)) as u32
}

impl Quota {
    pub fn new(limits: Limits) -> Self {
        Quota {
            inner: Arc::new(Inner {
                limits,
                namespaces: RateLimiter::keyed(
                    Rate::per_second(limits.per_namespace).allow_burst(limits.namespace_burst),
                ),
                process: RateLimiter::direct(Rate::per_second(limits.per_second)),
                calls: Arc::new(Semaphore::new(limits.concurrency.max(1))),
                charges: AtomicU64::new(0),
            }),
        }
    }

    /// Charges `calls` to `namespace`, or says why not.
    pub fn charge(&self, namespace: &str, calls: u32) -> Result<(), FetchError> {
        let Some(n) = NonZeroU32::new(calls) else {
            return Ok(());
        };
        let i = &self.inner;
        // Namespaces idle for a burst's time hold nothing worth keeping.
        if i.charges.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
            i.namespaces.retain_recent();
        }
        match i.namespaces.check_key_n(&namespace.to_string(), n) {
            Ok(Ok(())) => Ok(()),
            _ => Err(FetchError::OverBudget(format!(
                "namespace {namespace} is over its Secrets Manager budget ({} calls a second, \
                 bursts of {}: --secretsmanager-calls-per-namespace, \
                 --secretsmanager-burst-per-namespace); this needs {calls} more, retry shortly",
                i.limits.per_namespace, i.limits.namespace_burst
            ))),
        }
    }

    /// Waits for a place to make one call under the process's rate and
    /// concurrency; held while the call runs.
    pub async fn call(&self) -> OwnedSemaphorePermit {
        let permit = self
            .inner
            .calls
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        self.inner.process.until_ready().await;
        permit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Version;
    use std::time::{Duration, Instant};

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn key(id: &str, version: Version) -> FetchKey {
        FetchKey {
            id: id.into(),
            version,
        }
    }

    #[test]
    fn calls_are_counted_as_aws_makes_them() {
        let mut keys: Vec<_> = (0..41)
            .map(|i| key(&format!("n/s{i}"), Version::current()))
            .collect();
        assert_eq!(calls_for(&keys), 3);
        keys.push(key("n/p", Version::Id("v1".into())));
        keys.push(key("n/p", Version::Stage("AWSPREVIOUS".into())));
        assert_eq!(calls_for(&keys), 5);
        assert_eq!(calls_for(&[]), 0);
    }

    #[test]
    fn one_namespace_over_its_budget_leaves_the_others_theirs() {
        let q = Quota::new(Limits {
            per_namespace: nz(1),
            namespace_burst: nz(10),
            ..Limits::default()
        });
        q.charge("greedy", 6).unwrap();
        q.charge("greedy", 4).unwrap();
        let e = q.charge("greedy", 1).unwrap_err();
        assert!(e.is_transient(), "never remembered as a refusal");
        let m = e.to_string();
        assert!(
            m.contains("namespace greedy is over its Secrets Manager budget")
                && m.contains("--secretsmanager-calls-per-namespace"),
            "{m}"
        );
        // More than a burst can never be charged at once.
        assert!(q.charge("other", 11).is_err());
        q.charge("other", 10).unwrap();
        q.charge("third", 0).unwrap();
    }

    #[tokio::test]
    async fn the_process_rate_and_concurrency_hold_calls_back() {
        let q = Quota::new(Limits {
            per_second: nz(20),
            concurrency: 2,
            ..Limits::default()
        });
        let start = Instant::now();
        let mut held = vec![];
        for _ in 0..2 {
            held.push(q.call().await);
        }
        // A third waits for a place.
        let third = tokio::time::timeout(Duration::from_millis(100), q.call()).await;
        assert!(third.is_err(), "a third call ran with two in flight");
        drop(held);
        // 40 calls at 20 a second, the first 20 in a burst: about a second.
        for _ in 0..38 {
            drop(q.call().await);
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(900), "{took:?}");
    }
}
