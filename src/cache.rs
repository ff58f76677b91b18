//! [`CachedSource`]: the TTL cache in front of a [`SecretSource`], with
//! single-flight loading per tenant and a shorter-lived memory of refusals.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{FutureExt, join_all};

use crate::fetch::{CachedResults, FetchError, FetchKey, TenantKey};
use crate::lookup::Hashing;
use crate::metrics::Metrics;
use crate::secret::SecretValue;
use crate::source::SecretSource;

/// A TTL cache in front of a [`SecretSource`]. Keys missing at the same time are
/// asked for in one `fetch` (so one batch call), and concurrent misses of the same
/// key by the same tenant (namespace) share one load. Values are kept per
/// tenant, so that one tenant's slow or failing secret, fetched in a batch with
/// a secret another tenant also reads, never stalls that other tenant's
/// admission (a secret several namespaces may read is fetched once per
/// namespace and TTL). Definite refusals (not found, access denied, any other
/// refusal) are remembered for a shorter time, so that retried pods and dry runs
/// do not spend the account's quota; transient errors are not remembered.
#[derive(Clone)]
pub struct CachedSource {
    inner: Arc<dyn SecretSource>,
    cache: moka::future::Cache<(Arc<str>, FetchKey), Arc<SecretValue>, Hashing>,
    negative: moka::future::Cache<FetchKey, FetchError, Hashing>,
    metrics: Metrics,
}

/// The default time a definite refusal is remembered.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(30);

fn negative_cache(ttl: Duration) -> moka::future::Cache<FetchKey, FetchError, Hashing> {
    moka::future::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(ttl)
        .build_with_hasher(Hashing::default())
}

impl CachedSource {
    pub fn new(inner: Arc<dyn SecretSource>, ttl: Duration, metrics: Metrics) -> Self {
        CachedSource {
            inner,
            cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build_with_hasher(Hashing::default()),
            negative: negative_cache(NEGATIVE_TTL),
            metrics,
        }
    }

    /// Remembers definite refusals for `ttl` (zero: not at all).
    pub fn with_negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative = negative_cache(ttl);
        self
    }

    /// Forgets `keys`: the next lookup asks the source (a writer found that a
    /// backing Secret holds a later observation than the cached value).
    pub async fn invalidate(&self, tenant: &str, keys: &[FetchKey]) {
        let tenant: Arc<str> = tenant.into();
        for k in keys {
            self.cache.invalidate(&(tenant.clone(), k.clone())).await;
        }
    }

    /// The value of `key` the cache holds for `tenant`, if fresh (no fetch).
    pub async fn cached(&self, tenant: &str, key: &FetchKey) -> Option<Arc<SecretValue>> {
        self.cache.get(&TenantKey(tenant, key)).await
    }

    /// The values of `keys` for `tenant` (the namespace asking), from the
    /// cache where fresh, else from the source. Keys not answered within
    /// `deadline` come back as [`FetchError::Unreachable`].
    pub async fn get_many(
        &self,
        tenant: &str,
        keys: &[FetchKey],
        deadline: Duration,
    ) -> CachedResults {
        let mut out = CachedResults::with_capacity_and_hasher(keys.len(), Hashing::default());
        let mut missing = vec![];
        for k in keys {
            if out.contains_key(k) || missing.contains(k) {
                continue;
            }
            match self.cache.get(&TenantKey(tenant, k)).await {
                Some(v) => {
                    out.insert(k.clone(), Ok(v));
                }
                None => match self.negative.get(k).await {
                    Some(e) => {
                        out.insert(k.clone(), Err(e));
                    }
                    None => missing.push(k.clone()),
                },
            }
        }
        self.metrics.cache(out.len() as u64, missing.len() as u64);
        if missing.is_empty() {
            return out;
        }
        let tenant: Arc<str> = tenant.into();
        let inner = self.inner.clone();
        let batch_keys = missing.clone();
        let batch = async move { Arc::new(inner.fetch(&batch_keys).await) }
            .boxed()
            .shared();
        let loads = missing.iter().map(|k| {
            let batch = batch.clone();
            let key = (tenant.clone(), k.clone());
            async move {
                let r = self
                    .cache
                    .try_get_with(key, async {
                        match batch.await.get(k) {
                            Some(Ok(v)) => Ok(Arc::new(v.clone())),
                            Some(Err(e)) => Err(e.clone()),
                            None => {
                                Err(FetchError::Unreachable("no answer for this secret".into()))
                            }
                        }
                    })
                    .await
                    .map_err(|e: Arc<FetchError>| (*e).clone());
                (k.clone(), r)
            }
        });
        match tokio::time::timeout(deadline, join_all(loads)).await {
            Ok(results) => {
                for (k, r) in &results {
                    if let Err(e) = r
                        && !e.is_transient()
                    {
                        self.negative.insert(k.clone(), e.clone()).await;
                    }
                }
                out.extend(results)
            }
            Err(_) => {
                for k in missing {
                    out.insert(
                        k,
                        Err(FetchError::Unreachable(format!(
                            "no answer within {}",
                            humantime::format_duration(deadline)
                        ))),
                    );
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::FetchResults;
    use crate::reference::Version;
    use crate::secret::Payload;
    use crate::source::StaticSource;
    use futures::future::BoxFuture;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting {
        calls: AtomicUsize,
        keys: AtomicUsize,
        inner: StaticSource,
        delay: Duration,
    }

    impl SecretSource for Counting {
        fn fetch<'a>(&'a self, keys: &'a [FetchKey]) -> BoxFuture<'a, FetchResults> {
            async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                self.keys.fetch_add(keys.len(), Ordering::SeqCst);
                tokio::time::sleep(self.delay).await;
                self.inner.fetch(keys).await
            }
            .boxed()
        }
    }

    fn key(id: &str) -> FetchKey {
        FetchKey {
            id: id.into(),
            version: Version::current(),
        }
    }

    fn counting(delay: Duration) -> Arc<Counting> {
        Arc::new(Counting {
            calls: AtomicUsize::new(0),
            keys: AtomicUsize::new(0),
            inner: StaticSource::new(HashMap::from([
                ("n/a".into(), Payload::String("A".into())),
                ("n/b".into(), Payload::String("B".into())),
            ])),
            delay,
        })
    }

    #[tokio::test]
    async fn misses_are_batched_shared_and_then_cached() {
        let src = counting(Duration::from_millis(50));
        let cache = CachedSource::new(src.clone(), Duration::from_secs(60), Metrics::new());
        let keys = vec![key("n/a"), key("n/b"), key("n/missing")];
        // Twenty concurrent admissions asking for the same three secrets.
        let all =
            join_all((0..20).map(|_| cache.get_many("n", &keys, Duration::from_secs(5)))).await;
        assert_eq!(src.calls.load(Ordering::SeqCst), 1, "one batched load");
        for r in &all {
            assert_eq!(
                r[&key("n/a")].as_ref().unwrap().payload,
                Payload::String("A".into())
            );
            assert_eq!(r[&key("n/missing")], Err(FetchError::NotFound));
        }
        // Values are cached; so is a definite refusal, for a shorter time.
        let r = cache
            .get_many("n", &keys[..2], Duration::from_secs(5))
            .await;
        assert!(r.values().all(Result::is_ok));
        assert_eq!(src.calls.load(Ordering::SeqCst), 1);
        let r = cache
            .get_many("n", &keys[2..], Duration::from_secs(5))
            .await;
        assert_eq!(r[&key("n/missing")], Err(FetchError::NotFound));
        assert_eq!(src.calls.load(Ordering::SeqCst), 1, "not found: remembered");
        let short = CachedSource::new(src.clone(), Duration::from_secs(60), Metrics::new())
            .with_negative_ttl(Duration::from_millis(50));
        short
            .get_many("n", &keys[2..], Duration::from_secs(5))
            .await;
        tokio::time::sleep(Duration::from_millis(120)).await;
        short
            .get_many("n", &keys[2..], Duration::from_secs(5))
            .await;
        assert_eq!(
            src.calls.load(Ordering::SeqCst),
            3,
            "asked again once it expired"
        );
    }

    #[tokio::test]
    async fn deadline_turns_into_unreachable() {
        let src = counting(Duration::from_secs(10));
        let cache = CachedSource::new(src, Duration::from_secs(60), Metrics::new());
        let r = cache
            .get_many("n", &[key("n/a")], Duration::from_millis(20))
            .await;
        assert!(
            matches!(&r[&key("n/a")], Err(e) if e.is_transient()),
            "{r:?}"
        );
        assert!(
            cache.negative.get(&key("n/a")).await.is_none(),
            "a transient failure is not remembered"
        );
    }

    /// A source where one tenant's secret is slow: any batch holding it waits.
    struct OneSlow {
        calls: AtomicUsize,
    }

    impl SecretSource for OneSlow {
        fn fetch<'a>(&'a self, keys: &'a [FetchKey]) -> BoxFuture<'a, FetchResults> {
            async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                if keys.iter().any(|k| k.id == "a/slow") {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                let ok = StaticSource::new(HashMap::from([
                    ("a/slow".into(), Payload::String("S".into())),
                    ("shared/y".into(), Payload::String("Y".into())),
                ]));
                ok.fetch(keys).await
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn one_tenants_slow_secret_does_not_stall_another_tenants_admission() {
        let src = Arc::new(OneSlow {
            calls: AtomicUsize::new(0),
        });
        let cache = CachedSource::new(src.clone(), Duration::from_secs(60), Metrics::new());
        // Tenant a's admission loads its slow secret in one batch with a
        // secret tenant b also reads; b asks for that one meanwhile.
        let a_keys = [key("a/slow"), key("shared/y")];
        let y = [key("shared/y")];
        let a = cache.get_many("a", &a_keys, Duration::from_secs(5));
        let b = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let t = std::time::Instant::now();
            let r = cache
                .get_many("b", &[key("shared/y")], Duration::from_secs(5))
                .await;
            (r, t.elapsed())
        };
        let (ra, (rb, b_took)) = futures::join!(a, b);
        assert!(ra.values().all(Result::is_ok));
        assert!(rb[&key("shared/y")].is_ok());
        assert!(b_took < Duration::from_millis(500), "b waited {b_took:?}");
        assert_eq!(src.calls.load(Ordering::SeqCst), 2);
        // Within a tenant, loads are still shared and then cached.
        let again = join_all((0..5).map(|_| cache.get_many("b", &y, Duration::from_secs(5)))).await;
        assert!(again.iter().all(|r| r[&key("shared/y")].is_ok()));
        assert_eq!(src.calls.load(Ordering::SeqCst), 2);
    }
}
