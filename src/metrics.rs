//! Prometheus metrics. Label values are fixed words, never secret ids or values.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `mutated`, `unchanged` (nothing asked for), `denied`, `invalid` (bad body).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// The Secrets Manager or Kubernetes operation.
    pub operation: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    admissions: Family<OutcomeLabels, Counter>,
    admission_seconds: Histogram,
    aws_calls: Family<OperationLabels, Counter>,
    aws_errors: Family<OperationLabels, Counter>,
    aws_secrets_requested: Counter,
    cache_hits: Counter,
    cache_misses: Counter,
    secret_writes: Family<OperationLabels, Counter>,
    refresh_failures: Counter,
    oldest_refresh_age: Gauge,
    failing_secrets: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sm_injector");
        let admissions = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "admissions",
            "Admission requests answered, by outcome",
            admissions.clone(),
        );
        // 0.5 ms .. ~8 s
        let admission_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 15));
        registry.register(
            "admission_duration_seconds",
            "Time to answer one admission request",
            admission_seconds.clone(),
        );
        let aws_calls = Family::<OperationLabels, Counter>::default();
        registry.register(
            "secretsmanager_calls",
            "Secrets Manager API calls, by operation",
            aws_calls.clone(),
        );
        let aws_errors = Family::<OperationLabels, Counter>::default();
        registry.register(
            "secretsmanager_errors",
            "Secrets Manager API calls that failed as a whole, by operation",
            aws_errors.clone(),
        );
        let aws_secrets_requested = Counter::default();
        registry.register(
            "secretsmanager_secrets_requested",
            "Secret versions asked of Secrets Manager (a batch call counts each of its secrets)",
            aws_secrets_requested.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "cache_hits",
            "Secret lookups answered from the cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "cache_misses",
            "Secret lookups not in the cache",
            cache_misses.clone(),
        );
        let secret_writes = Family::<OperationLabels, Counter>::default();
        registry.register(
            "backing_secret_writes",
            "Writes of backing Secrets to Kubernetes, by operation",
            secret_writes.clone(),
        );
        let refresh_failures = Counter::default();
        registry.register(
            "refresh_failures",
            "Backing Secret refreshes that failed (Secrets Manager or Kubernetes); the Secret is kept",
            refresh_failures.clone(),
        );
        let oldest_refresh_age = Gauge::default();
        registry.register(
            "refresh_oldest_success_age_seconds",
            "Seconds since the backing Secret refreshed least recently was last refreshed or confirmed current (refresher leader only)",
            oldest_refresh_age.clone(),
        );
        let failing_secrets = Gauge::default();
        registry.register(
            "refresh_failing_secrets",
            "Backing Secrets whose last refresh attempt failed (refresher leader only)",
            failing_secrets.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                admissions,
                admission_seconds,
                aws_calls,
                aws_errors,
                aws_secrets_requested,
                cache_hits,
                cache_misses,
                secret_writes,
                refresh_failures,
                oldest_refresh_age,
                failing_secrets,
            }),
        }
    }

    pub fn admission(&self, outcome: &'static str, seconds: f64) {
        self.inner
            .admissions
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.inner.admission_seconds.observe(seconds);
    }

    pub fn aws_call(&self, operation: &'static str, secrets: u64) {
        self.inner
            .aws_calls
            .get_or_create(&OperationLabels { operation })
            .inc();
        self.inner.aws_secrets_requested.inc_by(secrets);
    }

    pub fn aws_error(&self, operation: &'static str) {
        self.inner
            .aws_errors
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    pub fn cache(&self, hits: u64, misses: u64) {
        self.inner.cache_hits.inc_by(hits);
        self.inner.cache_misses.inc_by(misses);
    }

    pub fn secret_write(&self, operation: &'static str) {
        self.inner
            .secret_writes
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    pub fn refresh_failure(&self) {
        self.inner.refresh_failures.inc();
    }

    /// After a refresh pass: the oldest successful refresh, and how many fail.
    pub fn refresh_state(&self, oldest_age_seconds: i64, failing: i64) {
        self.inner.oldest_refresh_age.set(oldest_age_seconds);
        self.inner.failing_secrets.set(failing);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_in_the_exposition() {
        let m = Metrics::new();
        m.admission("mutated", 0.001);
        m.aws_call("BatchGetSecretValue", 3);
        m.cache(2, 1);
        let text = m.encode();
        assert!(
            text.contains(r#"sm_injector_admissions_total{outcome="mutated"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"sm_injector_secretsmanager_calls_total{operation="BatchGetSecretValue"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("sm_injector_secretsmanager_secrets_requested_total 3"),
            "{text}"
        );
        assert!(text.contains("sm_injector_cache_hits_total 2"), "{text}");
    }
}
