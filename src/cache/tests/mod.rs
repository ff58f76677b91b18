//! Unit tests of [`super`].

use super::*;
use crate::fetch::FetchResults;
use crate::reference::Version;
use crate::secret::Payload;
use crate::source::StaticSource;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

mod sharing;

struct Counting {
    calls: AtomicUsize,
    keys: AtomicUsize,
    inner: StaticSource,
    delay: Duration,
}

impl SecretSource for Counting {
    fn fetch<'a>(&'a self, _: &'a Identity, keys: &'a [FetchKey]) -> BoxFuture<'a, FetchResults> {
        async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.keys.fetch_add(keys.len(), Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.inner.fetch(&Identity::Own, keys).await
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
async fn a_namespace_over_its_budget_calls_nothing_and_others_still_fetch() {
    use crate::quota::{Limits, Quota};
    use std::num::NonZeroU32;
    let src = counting(Duration::ZERO);
    let cache = CachedSource::new(src.clone(), Duration::from_secs(60), Metrics::new()).with_quota(
        Quota::new(Limits {
            per_namespace: NonZeroU32::new(1).unwrap(),
            namespace_burst: NonZeroU32::new(2).unwrap(),
            ..Limits::default()
        }),
    );
    let d = Duration::from_secs(5);
    // Fresh names, one call each: the burst of two, then refusals.
    for i in 0..2 {
        let r = cache
            .get_many("greedy", &Identity::Own, &[key(&format!("n/x{i}"))], d)
            .await;
        assert_eq!(r.values().next().unwrap(), &Err(FetchError::NotFound));
    }
    let r = cache
        .get_many("greedy", &Identity::Own, &[key("n/x9")], d)
        .await;
    let e = r.values().next().unwrap().as_ref().unwrap_err();
    assert!(matches!(e, FetchError::OverBudget(_)), "{e}");
    assert_eq!(src.calls.load(Ordering::SeqCst), 2, "no call over budget");
    // Not remembered: once the budget refills, the secret is asked for.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = cache
        .get_many("greedy", &Identity::Own, &[key("n/x9")], d)
        .await;
    assert_eq!(r.values().next().unwrap(), &Err(FetchError::NotFound));
    // Another namespace is not charged for it; cached values cost nothing.
    let r = cache
        .get_many("calm", &Identity::Own, &[key("n/a"), key("n/b")], d)
        .await;
    assert!(r.values().all(Result::is_ok));
    for _ in 0..5 {
        let r = cache
            .get_many("calm", &Identity::Own, &[key("n/a")], d)
            .await;
        assert!(r.values().all(Result::is_ok));
    }
    assert_eq!(src.calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_refusal_is_remembered_for_its_tenant_only() {
    let src = counting(Duration::ZERO);
    let cache = CachedSource::new(src.clone(), Duration::from_secs(60), Metrics::new());
    let d = Duration::from_secs(5);
    let gone = [key("n/missing")];
    assert_eq!(
        cache.get_many("a", &Identity::Own, &gone, d).await[&gone[0]],
        Err(FetchError::NotFound)
    );
    cache.get_many("a", &Identity::Own, &gone, d).await;
    assert_eq!(src.calls.load(Ordering::SeqCst), 1, "remembered for a");
    // Another tenant is answered by Secrets Manager, not by a's memory.
    assert_eq!(
        cache.get_many("b", &Identity::Own, &gone, d).await[&gone[0]],
        Err(FetchError::NotFound)
    );
    assert_eq!(src.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn values_are_kept_within_a_byte_budget() {
    let big = "x".repeat(100_000);
    let values: HashMap<String, Payload> = (0..10)
        .map(|i| (format!("n/s{i}"), Payload::String(big.clone())))
        .collect();
    let src = Arc::new(StaticSource::new(values));
    // Room for about three values of 200 KB weight each.
    let cache =
        CachedSource::new(src, Duration::from_secs(60), Metrics::new()).with_max_bytes(700_000);
    let d = Duration::from_secs(5);
    for i in 0..10 {
        cache
            .get_many("n", &Identity::Own, &[key(&format!("n/s{i}"))], d)
            .await;
    }
    cache.values.run_pending_tasks().await;
    let held = cache.values.weighted_size();
    assert!(held <= 700_000, "{held} bytes held");
    assert!(
        cache.values.entry_count() <= 3,
        "{}",
        cache.values.entry_count()
    );
}

#[tokio::test]
async fn misses_are_batched_shared_and_then_cached() {
    let src = counting(Duration::from_millis(50));
    let cache = CachedSource::new(src.clone(), Duration::from_secs(60), Metrics::new());
    let keys = vec![key("n/a"), key("n/b"), key("n/missing")];
    // Twenty concurrent admissions asking for the same three secrets.
    let all = join_all(
        (0..20).map(|_| cache.get_many("n", &Identity::Own, &keys, Duration::from_secs(5))),
    )
    .await;
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
        .get_many("n", &Identity::Own, &keys[..2], Duration::from_secs(5))
        .await;
    assert!(r.values().all(Result::is_ok));
    assert_eq!(src.calls.load(Ordering::SeqCst), 1);
    let r = cache
        .get_many("n", &Identity::Own, &keys[2..], Duration::from_secs(5))
        .await;
    assert_eq!(r[&key("n/missing")], Err(FetchError::NotFound));
    assert_eq!(src.calls.load(Ordering::SeqCst), 1, "not found: remembered");
    let short = CachedSource::new(src.clone(), Duration::from_secs(60), Metrics::new())
        .with_negative_ttl(Duration::from_millis(50));
    short
        .get_many("n", &Identity::Own, &keys[2..], Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    short
        .get_many("n", &Identity::Own, &keys[2..], Duration::from_secs(5))
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
        .get_many(
            "n",
            &Identity::Own,
            &[key("n/a")],
            Duration::from_millis(20),
        )
        .await;
    assert!(
        matches!(&r[&key("n/a")], Err(e) if e.is_transient()),
        "{r:?}"
    );
    assert!(
        cache
            .negative
            .get(&TenantKey("n", &key("n/a")))
            .await
            .is_none(),
        "a transient failure is not remembered"
    );
}

/// A source where one tenant's secret is slow: any batch holding it waits.
struct OneSlow {
    calls: AtomicUsize,
}

impl SecretSource for OneSlow {
    fn fetch<'a>(&'a self, _: &'a Identity, keys: &'a [FetchKey]) -> BoxFuture<'a, FetchResults> {
        async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if keys.iter().any(|k| k.id == "a/slow") {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let ok = StaticSource::new(HashMap::from([
                ("a/slow".into(), Payload::String("S".into())),
                ("shared/y".into(), Payload::String("Y".into())),
            ]));
            ok.fetch(&Identity::Own, keys).await
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
    let a = cache.get_many("a", &Identity::Own, &a_keys, Duration::from_secs(5));
    let b = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = std::time::Instant::now();
        let r = cache
            .get_many(
                "b",
                &Identity::Own,
                &[key("shared/y")],
                Duration::from_secs(5),
            )
            .await;
        (r, t.elapsed())
    };
    let (ra, (rb, b_took)) = futures::join!(a, b);
    assert!(ra.values().all(Result::is_ok));
    assert!(rb[&key("shared/y")].is_ok());
    assert!(b_took < Duration::from_millis(500), "b waited {b_took:?}");
    assert_eq!(src.calls.load(Ordering::SeqCst), 2);
    // Within a tenant, loads are still shared and then cached.
    let again =
        join_all((0..5).map(|_| cache.get_many("b", &Identity::Own, &y, Duration::from_secs(5))))
            .await;
    assert!(again.iter().all(|r| r[&key("shared/y")].is_ok()));
    assert_eq!(src.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_value_knows_while_the_cache_holds_it() {
    let src = counting(Duration::ZERO);
    let cache = CachedSource::new(src.clone(), Duration::from_millis(300), Metrics::new());
    let d = Duration::from_secs(5);
    let k = [key("n/a")];
    let get = |r: CachedResults| r.values().next().unwrap().clone().unwrap();
    let first = get(cache.get_many("n", &Identity::Own, &k, d).await);
    let now = Instant::now();
    assert!(cache.still_holds(&first, now));
    // A copy was never put in the cache.
    assert!(!cache.still_holds(&(*first).clone(), now));
    // Invalidated: let go, and the next read is a new value, held.
    cache.invalidate("n", &Identity::Own, &k).await;
    assert!(!cache.still_holds(&first, Instant::now()));
    let second = get(cache.get_many("n", &Identity::Own, &k, d).await);
    assert!(!Arc::ptr_eq(&first, &second));
    assert!(cache.still_holds(&second, Instant::now()));
    // Past the TTL from its fetch, whether or not moka has tidied up yet.
    assert!(!cache.still_holds(&second, second.fetched() + Duration::from_millis(300)));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(!cache.still_holds(&second, Instant::now()));
    // Expired and looked up again: a third value; the second stays let go
    // once moka has evicted it.
    let third = get(cache.get_many("n", &Identity::Own, &k, d).await);
    cache.values.run_pending_tasks().await;
    assert!(!second.is_held());
    assert!(cache.still_holds(&third, Instant::now()));
    assert_eq!(src.calls.load(Ordering::SeqCst), 3);
}
