//! One read serves every namespace whose rule allows the secret, and never
//! another identity.

use super::*;

#[tokio::test]
async fn a_value_read_for_one_namespace_serves_every_other_without_a_call() {
    let src = counting(Duration::ZERO);
    let cache = CachedSource::new(src.clone(), Duration::from_secs(60), Metrics::new());
    let d = Duration::from_secs(5);
    let keys = [key("n/a"), key("n/b")];
    for tenant in ["t1", "t2", "t3"] {
        let r = cache.get_many(tenant, &Identity::Own, &keys, d).await;
        assert_eq!(
            r[&keys[0]].as_ref().unwrap().payload,
            Payload::String("A".into())
        );
    }
    assert_eq!(
        src.calls.load(Ordering::SeqCst),
        1,
        "one read for three namespaces"
    );
    // One copy of the bytes, not one per namespace.
    cache.values.run_pending_tasks().await;
    assert_eq!(cache.values.entry_count(), 2);
    // A stale value is forgotten for every namespace.
    cache.invalidate("t2", &Identity::Own, &keys[..1]).await;
    cache.get_many("t3", &Identity::Own, &keys, d).await;
    assert_eq!(src.calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        src.keys.load(Ordering::SeqCst),
        3,
        "only the forgotten one asked"
    );
}

/// Answers as whom it was asked: workload `b` may read nothing.
struct AsWho {
    calls: std::sync::Mutex<Vec<String>>,
}

impl SecretSource for AsWho {
    fn fetch<'a>(
        &'a self,
        identity: &'a Identity,
        keys: &'a [FetchKey],
    ) -> BoxFuture<'a, FetchResults> {
        let who = match identity {
            Identity::Own => "own".to_string(),
            Identity::Workload(w) => w.service_account.clone(),
        };
        self.calls.lock().unwrap().push(who.clone());
        let r = keys.iter().map(|k| {
            let r = if who == "b" {
                Err(FetchError::AccessDenied("not b".into()))
            } else {
                Ok(SecretValue::new(
                    format!("arn:{}", k.id),
                    k.id.clone(),
                    "v1".into(),
                    Payload::String(format!("read as {who}")),
                ))
            };
            (k.clone(), r)
        });
        futures::future::ready(r.collect()).boxed()
    }
}

#[tokio::test]
async fn a_value_read_with_one_identity_is_never_served_to_another() {
    let src = Arc::new(AsWho {
        calls: Default::default(),
    });
    let cache = CachedSource::new(src.clone(), Duration::from_secs(60), Metrics::new());
    let d = Duration::from_secs(5);
    let workload = |sa: &str| {
        Identity::Workload(Arc::new(crate::identity::Workload {
            role_arn: format!("arn:aws:iam::123456789012:role/{sa}"),
            namespace: "n".into(),
            service_account: sa.into(),
        }))
    };
    let (a, b) = (workload("a"), workload("b"));
    let k = [key("n/a")];
    let payload = |r: &CachedResults| {
        r[&k[0]]
            .as_ref()
            .map(|v| v.payload.clone())
            .map_err(|e| e.clone())
    };
    let first = cache.get_many("n", &a, &k, d).await;
    assert_eq!(payload(&first), Ok(Payload::String("read as a".into())));
    // b is asked of AWS as b, and refused, although a's value is cached.
    let denied = cache.get_many("n", &b, &k, d).await;
    assert_eq!(
        payload(&denied),
        Err(FetchError::AccessDenied("not b".into()))
    );
    let own = cache.get_many("n", &Identity::Own, &k, d).await;
    assert_eq!(payload(&own), Ok(Payload::String("read as own".into())));
    // Each identity's answer is kept for it: no further call.
    for who in [&a, &b, &Identity::Own] {
        cache.get_many("n", who, &k, d).await;
    }
    assert_eq!(*src.calls.lock().unwrap(), ["a", "b", "own"]);
    assert!(cache.cached(&a, &k[0]).await.is_some());
    assert!(cache.cached(&b, &k[0]).await.is_none());
}
