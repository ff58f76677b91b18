//! [`CachedSource`]: the TTL cache in front of a [`SecretSource`], with
//! single-flight loading per tenant and a shorter-lived memory of refusals.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{FutureExt, join_all};

use crate::fetch::{CachedResults, FetchError, FetchKey, IdentityKey, TenantKey};
use crate::identity::Identity;
use crate::lookup::Hashing;
use crate::metrics::Metrics;
use crate::quota::Quota;
use crate::secret::SecretValue;
use crate::source::SecretSource;

/// A TTL cache in front of a [`SecretSource`]. Keys missing at the same time are
/// asked for in one `fetch` (so one batch call).
///
/// **Values are shared, loads are not.** A value read for one namespace is
/// served to any other namespace whose rules allow the same secret (policy
/// is checked before the cache is asked), so Secrets Manager reads scale with
/// distinct secrets, and a secret's bytes are kept once. Concurrent misses of
/// the same key by the same tenant share one load; a tenant never waits on
/// another tenant's load: when two namespaces miss the same secret at the
/// same moment each makes its own call. That keeps the fairness property:
/// one tenant's slow or failing secret, fetched in a batch with a secret
/// another tenant also reads, never stalls that other tenant's admission.
/// Definite refusals (not found, access denied, any other refusal) are
/// remembered per tenant for a shorter time, so that retried pods and dry
/// runs do not spend the account's quota; transient errors are not remembered.
#[derive(Clone)]
pub struct CachedSource {
    inner: Arc<dyn SecretSource>,
    /// Secret values, for every tenant, by the identity they were read with.
    values: moka::future::Cache<(Identity, FetchKey), Arc<SecretValue>, Hashing>,
    /// Loads in flight, per tenant: the single-flight of concurrent misses.
    /// An entry is dropped by its waiters once the value is in `values`.
    loading: moka::future::Cache<(Arc<str>, FetchKey), Arc<SecretValue>, Hashing>,
    /// Definite refusals of one secret, per tenant.
    negative: moka::future::Cache<(Arc<str>, FetchKey), FetchError, Hashing>,
    metrics: Metrics,
    /// What each namespace may spend of the account's quota.
    quota: Option<Quota>,
    /// How long a value is served from `values`.
    ttl: Duration,
}

/// The default time a definite refusal is remembered.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(30);

/// The default bytes of secret values kept ([`SecretValue::weight`]).
pub const DEFAULT_MAX_BYTES: u64 = 32 * 1024 * 1024;

/// Secret values for `ttl`, at most `bytes` of them ([`SecretValue::weight`]).
fn value_cache(
    ttl: Duration,
    bytes: u64,
) -> moka::future::Cache<(Identity, FetchKey), Arc<SecretValue>, Hashing> {
    moka::future::Cache::builder()
        .max_capacity(bytes)
        .weigher(|_, v: &Arc<SecretValue>| v.weight())
        .time_to_live(ttl)
        // Replaced, invalidated, expired or evicted: a kept decision made
        // from this value is not used again ([`CachedSource::still_holds`]).
        .eviction_listener(|_, v: Arc<SecretValue>, _| v.let_go())
        .build_with_hasher(Hashing::default())
}

/// Per-tenant single-flight: entries live only between a load's end and its
/// waiters' taking it (a second at most, should a waiter be cancelled).
fn loading_cache(
    ttl: Duration,
) -> moka::future::Cache<(Arc<str>, FetchKey), Arc<SecretValue>, Hashing> {
    moka::future::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(ttl.min(Duration::from_secs(1)))
        .build_with_hasher(Hashing::default())
}

fn negative_cache(ttl: Duration) -> moka::future::Cache<(Arc<str>, FetchKey), FetchError, Hashing> {
    moka::future::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(ttl)
        .build_with_hasher(Hashing::default())
}

/// The tenant of loads and refusals: the namespace, and the workload's
/// ServiceAccount and role when it reads with its own identity.
fn scope<'a>(tenant: &'a str, identity: &Identity) -> std::borrow::Cow<'a, str> {
    match identity {
        Identity::Own => tenant.into(),
        Identity::Workload(w) => format!("{tenant}\n{}\n{}", w.service_account, w.role_arn).into(),
    }
}

impl CachedSource {
    pub fn new(inner: Arc<dyn SecretSource>, ttl: Duration, metrics: Metrics) -> Self {
        CachedSource {
            inner,
            values: value_cache(ttl, DEFAULT_MAX_BYTES),
            loading: loading_cache(ttl),
            negative: negative_cache(NEGATIVE_TTL),
            metrics,
            quota: None,
            ttl,
        }
    }

    /// Charges each namespace's misses to its budget in `quota`.
    pub fn with_quota(mut self, quota: Quota) -> Self {
        self.quota = Some(quota);
        self
    }

    /// Keeps at most `bytes` of secret values ([`SecretValue::weight`]).
    pub fn with_max_bytes(mut self, bytes: u64) -> Self {
        self.values = value_cache(self.ttl, bytes);
        self
    }

    /// Remembers definite refusals for `ttl` (zero: not at all).
    pub fn with_negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative = negative_cache(ttl);
        self
    }

    /// Forgets `keys` as read by `identity`, for every tenant: the next
    /// lookup asks the source (a writer found that a backing Secret holds a
    /// later observation than the cached value).
    pub async fn invalidate(&self, tenant: &str, identity: &Identity, keys: &[FetchKey]) {
        let tenant = scope(tenant, identity);
        for k in keys {
            self.values.invalidate(&IdentityKey(identity, k)).await;
            self.loading.invalidate(&TenantKey(&tenant, k)).await;
        }
    }

    /// The value of `key` read as `identity` the cache holds, if fresh (no fetch).
    pub async fn cached(&self, identity: &Identity, key: &FetchKey) -> Option<Arc<SecretValue>> {
        self.values.get(&IdentityKey(identity, key)).await
    }

    /// Whether `value`, given by this cache, is still the one it holds for
    /// its key at `now`: not let go since (each is put there once, under one
    /// key, and marked when replaced, invalidated, expired or evicted) and
    /// within the TTL counted from its fetch (an expired entry is marked only
    /// when moka next tidies up). The same answer as looking its key up and
    /// comparing, without the lookup.
    pub fn still_holds(&self, value: &SecretValue, now: Instant) -> bool {
        value.is_held() && now.saturating_duration_since(value.fetched()) < self.ttl
    }

    /// The values of `keys` for `tenant` (the namespace asking) read as
    /// `identity`, from the cache where fresh, else from the source. Keys not
    /// answered within `deadline` come back as [`FetchError::Unreachable`].
    pub async fn get_many(
        &self,
        tenant: &str,
        identity: &Identity,
        keys: &[FetchKey],
        deadline: Duration,
    ) -> CachedResults {
        let mut out = CachedResults::with_capacity_and_hasher(keys.len(), Hashing::default());
        let mut missing = vec![];
        let scoped = scope(tenant, identity);
        for k in keys {
            if out.contains_key(k) || missing.contains(k) {
                continue;
            }
            match self.values.get(&IdentityKey(identity, k)).await {
                Some(v) => {
                    out.insert(k.clone(), Ok(v));
                }
                None => match self.negative.get(&TenantKey(&scoped, k)).await {
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
        if let Some(q) = &self.quota
            && let Err(e) = q.charge(tenant, crate::quota::calls_for(&missing))
        {
            for k in missing {
                out.insert(k, Err(e.clone()));
            }
            return out;
        }
        let tenant: Arc<str> = scoped.into();
        let inner = self.inner.clone();
        let batch_keys = missing.clone();
        let reader = identity.clone();
        let batch = async move { Arc::new(inner.fetch(&reader, &batch_keys).await) }
            .boxed()
            .shared();
        let loads = missing.iter().map(|k| {
            let batch = batch.clone();
            let key = (tenant.clone(), k.clone());
            async move {
                let r = self
                    .loading
                    .try_get_with(key.clone(), async {
                        match batch.await.get(k) {
                            Some(Ok(v)) => {
                                let v = Arc::new(v.clone());
                                v.hold();
                                self.values
                                    .insert((identity.clone(), k.clone()), v.clone())
                                    .await;
                                Ok(v)
                            }
                            Some(Err(e)) => Err(e.clone()),
                            None => {
                                Err(FetchError::Unreachable("no answer for this secret".into()))
                            }
                        }
                    })
                    .await
                    .map_err(|e: Arc<FetchError>| (*e).clone());
                // Later lookups find the value in `values`; a stale copy must
                // not outlive an invalidation there.
                self.loading.invalidate(&key).await;
                (k.clone(), r)
            }
        });
        match tokio::time::timeout(deadline, join_all(loads)).await {
            Ok(results) => {
                for (k, r) in &results {
                    // Refusals of the identity itself are not the secret's.
                    if let Err(e) = r
                        && !e.is_transient()
                        && !matches!(e, FetchError::Identity(_))
                    {
                        self.negative
                            .insert((tenant.clone(), k.clone()), e.clone())
                            .await;
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
mod tests;
