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
    decisions_reused: Counter,
    reviews_recalled: Counter,
    secret_writes: Family<OperationLabels, Counter>,
    secret_reads: Family<OperationLabels, Counter>,
    refresh_failures: Family<ReasonLabels, Counter>,
    refresh_refused: Family<ReasonLabels, Counter>,
    refresh_leader: Gauge,
    oldest_due: Gauge,
    in_use: Gauge,
    failing_secrets: Gauge,
    revoked_secrets: Gauge,
    connections_refused: Family<ReasonLabels, Counter>,
    requests_refused: Family<ReasonLabels, Counter>,
    cert_expiry: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A fixed word (`secretsmanager`, `kubernetes`, `record`, `not-allowed`, ...).
    pub reason: &'static str,
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
        let decisions_reused = Counter::default();
        registry.register(
            "decisions_reused",
            "Admissions answered with the decision kept for an identical pod (a ReplicaSet's replicas), its rule and values unchanged",
            decisions_reused.clone(),
        );
        let reviews_recalled = Counter::default();
        registry.register(
            "reviews_recalled",
            "Admissions answered from a kept decision whose body equalled a remembered replica's but for its volatile strings (uid, managed-fields times, volume names), so it was not read again",
            reviews_recalled.clone(),
        );
        let secret_writes = Family::<OperationLabels, Counter>::default();
        registry.register(
            "backing_secret_writes",
            "Writes of backing Secrets to Kubernetes, by operation",
            secret_writes.clone(),
        );
        let secret_reads = Family::<OperationLabels, Counter>::default();
        registry.register(
            "backing_secret_reads",
            "Reads of backing Secrets (each an empty merge patch: sm-injector has no read verb on Secrets), by what read: admission, refresh, collect",
            secret_reads.clone(),
        );
        let refresh_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "refresh_failures",
            "Backing Secret refreshes that failed, by reason; the Secret is kept as it is",
            refresh_failures.clone(),
        );
        let refresh_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "refresh_refused",
            "Pod records refused (reason record) and backing Secrets no longer refreshed (not-opted-in, not-allowed), each counted once",
            refresh_refused.clone(),
        );
        let refresh_leader = Gauge::default();
        registry.register(
            "refresh_leader",
            "1 while this replica holds the refresher's Lease, else 0",
            refresh_leader.clone(),
        );
        let oldest_due = Gauge::default();
        registry.register(
            "refresh_oldest_due_timestamp_seconds",
            "Unix time at which the most overdue backing Secret in use was due for a successful refresh; time() minus this grows while refreshes fail or stop (leader only)",
            oldest_due.clone(),
        );
        let in_use = Gauge::default();
        registry.register(
            "refresh_backing_secrets",
            "Backing Secrets in use and refreshed (leader only)",
            in_use.clone(),
        );
        let failing_secrets = Gauge::default();
        registry.register(
            "refresh_failing_secrets",
            "Backing Secrets whose last refresh attempt failed (leader only)",
            failing_secrets.clone(),
        );
        let revoked_secrets = Gauge::default();
        registry.register(
            "refresh_revoked_secrets",
            "Backing Secrets in use that their namespace may no longer read (leader only)",
            revoked_secrets.clone(),
        );
        let connections_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed by a budget: per-source, handshake-dropped (the oldest handshake, for a newer one), established",
            connections_refused.clone(),
        );
        let requests_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "requests_refused",
            "Admission requests answered 429/503 before their body was read: requests, bytes, source-bytes (--max-inflight-*)",
            requests_refused.clone(),
        );
        let cert_expiry = Gauge::default();
        registry.register(
            "serving_certificate_expiry_timestamp_seconds",
            "Unix time at which the serving certificate in use expires",
            cert_expiry.clone(),
        );
        registry.register(
            "build",
            "The version of sm-injector running",
            prometheus_client::metrics::info::Info::new(vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )]),
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
                decisions_reused,
                reviews_recalled,
                secret_writes,
                secret_reads,
                refresh_failures,
                refresh_refused,
                refresh_leader,
                oldest_due,
                in_use,
                failing_secrets,
                revoked_secrets,
                connections_refused,
                requests_refused,
                cert_expiry,
            }),
        }
    }

    /// One answered review: `outcome` is a bounded label
    /// ([`crate::admission::Outcome::metric_label`], or `invalid`).
    pub fn admission(&self, outcome: &'static str, seconds: f64) {
        self.inner
            .admissions
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.inner.admission_seconds.observe(seconds);
    }

    /// Each time the serving certificate is loaded.
    pub fn serving_certificate_expiry(&self, unix_seconds: i64) {
        self.inner.cert_expiry.set(unix_seconds);
    }
    /// A connection closed by one of [`crate::connections::Budgets`].
    pub fn connection_refused(&self, reason: &'static str) {
        self.inner
            .connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A request refused by [`crate::inflight::Budget`].
    pub fn request_refused(&self, reason: &'static str) {
        self.inner
            .requests_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
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

    pub fn decision_reused(&self) {
        self.inner.decisions_reused.inc();
    }

    pub fn review_recalled(&self) {
        self.inner.reviews_recalled.inc();
    }

    pub fn secret_write(&self, operation: &'static str) {
        self.inner
            .secret_writes
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    /// A read of a backing Secret by `operation`: `admission` (what an
    /// admission no longer knows it holds), `refresh` (each check), `collect`
    /// (before a deletion). The read again after a write's conflict (another
    /// writer between the read and the write, rare) is not counted.
    pub fn secret_read(&self, operation: &'static str) {
        self.inner
            .secret_reads
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    pub fn refresh_failure(&self, reason: &'static str) {
        self.inner
            .refresh_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn refresh_refused(&self, reason: &'static str) {
        self.inner
            .refresh_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Set when the Lease is won, reset when it is lost.
    pub fn refresh_leader(&self, leader: bool) {
        self.inner.refresh_leader.set(i64::from(leader));
    }

    /// After each planning of the refresher: backing Secrets in use, failing
    /// and revoked, and the Unix second the oldest was due.
    pub fn refresh_gauges(&self, in_use: i64, failing: i64, revoked: i64, oldest_due: i64) {
        self.inner.oldest_due.set(oldest_due);
        self.inner.in_use.set(in_use);
        self.inner.failing_secrets.set(failing);
        self.inner.revoked_secrets.set(revoked);
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
        m.serving_certificate_expiry(1_900_000_000);
        m.secret_read("refresh");
        let text = m.encode();
        assert!(
            text.contains(&format!(
                "sm_injector_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(
            text.contains("sm_injector_serving_certificate_expiry_timestamp_seconds 1900000000"),
            "{text}"
        );
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
        assert!(
            text.contains(r#"sm_injector_backing_secret_reads_total{operation="refresh"} 1"#),
            "{text}"
        );
    }
}
