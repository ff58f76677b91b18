//! The plain-HTTP probe and metrics port: `/healthz`, `/readyz` (with the
//! reasons the replica is not ready) and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::get;

use crate::admission::Webhook;
use crate::connections;

/// Why the replica is not ready although it serves, if anything: one reason
/// per concern (AWS configuration, the managed certificate), each set and
/// cleared by its owner.
#[derive(Debug, Clone, Default)]
pub struct Unready(Arc<std::sync::RwLock<std::collections::BTreeMap<&'static str, String>>>);

impl Unready {
    /// Unready for the AWS configuration.
    pub fn set(&self, why: String) {
        self.set_for("aws", why);
    }

    pub fn set_for(&self, concern: &'static str, why: String) {
        self.0.write().expect("not poisoned").insert(concern, why);
    }

    pub fn clear(&self, concern: &'static str) {
        self.0.write().expect("not poisoned").remove(concern);
    }

    pub fn get(&self) -> Option<String> {
        let reasons = self.0.read().expect("not poisoned");
        (!reasons.is_empty()).then(|| reasons.values().cloned().collect::<Vec<_>>().join("; "))
    }
}

/// The probe and metrics port's budgets: the kubelet and a Prometheus or
/// two need a handful of connections.
pub const BUDGETS: connections::Budgets = connections::Budgets {
    established: 64,
    handshakes: 64,
    per_source: 16,
};

/// `/healthz`, `/readyz` and `/metrics`. Readiness is false until the
/// Namespace cache is synced, while `unready` holds a reason, and again once
/// `stopping` is set.
pub fn router(webhook: Arc<Webhook>, stopping: Arc<AtomicBool>, unready: Unready) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move |State(w): State<Arc<Webhook>>| async move {
                if stopping.load(Ordering::Relaxed) {
                    (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_string())
                } else if let Some(why) = unready.get() {
                    (StatusCode::SERVICE_UNAVAILABLE, why)
                } else if w.namespaces.is_ready() {
                    (StatusCode::OK, "ok".to_string())
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "namespace cache not synced yet".to_string(),
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(w): State<Arc<Webhook>>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    w.metrics.encode(),
                )
            }),
        )
        .with_state(webhook)
}
