//! The HTTPS admission endpoint (`POST /mutate`) and the plain-HTTP probe and
//! metrics endpoint, as thin shells around [`Webhook::review`].

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum_server::tls_rustls::RustlsConfig;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};

use crate::admission::Webhook;

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Every admission is answered within this time (keep it below the
    /// webhook configuration's `timeoutSeconds`).
    pub admission_deadline: Duration,
    pub max_body_bytes: usize,
    /// How often the certificate files are checked for changes.
    pub cert_poll: Duration,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub drain: Duration,
}

#[derive(Clone)]
struct AppState {
    webhook: Arc<Webhook>,
    deadline: Duration,
}

fn bad_request(reason: String) -> Response {
    tracing::warn!(%reason, "bad admission request");
    (StatusCode::BAD_REQUEST, reason).into_response()
}

async fn mutate(State(st): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            st.webhook.metrics.admission("invalid", 0.0);
            return bad_request(format!("cannot read the request body: {}", e.body_text()));
        }
    };
    let review: AdmissionReview<Pod> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            st.webhook.metrics.admission("invalid", 0.0);
            return bad_request(format!(
                "the body is not an admission.k8s.io/v1 AdmissionReview: {e}"
            ));
        }
    };
    let req: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(_) => {
            st.webhook.metrics.admission("invalid", 0.0);
            return bad_request("the AdmissionReview has no request".into());
        }
    };
    let response = match tokio::time::timeout(st.deadline, st.webhook.review(&req)).await {
        Ok(answer) => answer.response,
        Err(_) => {
            st.webhook
                .metrics
                .admission("denied", st.deadline.as_secs_f64());
            AdmissionResponse::from(&req).deny(format!(
                "sm-injector: no answer within its deadline of {}",
                humantime::format_duration(st.deadline)
            ))
        }
    };
    axum::Json(response.into_review()).into_response()
}

/// The admission router (exposed for tests and benchmarks).
pub fn admission_router(
    webhook: Arc<Webhook>,
    deadline: Duration,
    max_body_bytes: usize,
) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(AppState { webhook, deadline })
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn probe_router(webhook: Arc<Webhook>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(w): State<Arc<Webhook>>| async move {
                if w.namespaces.is_ready() {
                    (StatusCode::OK, "ok")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "namespace cache not synced yet",
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

/// Reloads the certificate when either file changes. Kubernetes updates mounted
/// Secrets by swapping a symlink, so the files are polled, not watched.
async fn reload_certs(config: RustlsConfig, cert: PathBuf, key: PathBuf, every: Duration) {
    let read = || async {
        (
            tokio::fs::read(&cert).await.ok(),
            tokio::fs::read(&key).await.ok(),
        )
    };
    let mut last = read().await;
    loop {
        tokio::time::sleep(every).await;
        let now = read().await;
        if now == last {
            continue;
        }
        if let (Some(c), Some(k)) = (&now.0, &now.1) {
            match config.reload_from_pem(c.clone(), k.clone()).await {
                Ok(()) => tracing::info!(cert = %cert.display(), "serving certificate reloaded"),
                // A half-written pair: keep the old one and try again next time.
                Err(e) => {
                    tracing::warn!(error = %e, "certificate files changed but do not load yet");
                    continue;
                }
            }
        }
        last = now;
    }
}

/// Serves admissions over TLS on `tls_listener` and probes on `probe_listener`
/// until `shutdown` resolves, then drains in-flight requests.
pub async fn run(
    webhook: Arc<Webhook>,
    settings: ServerSettings,
    tls_listener: std::net::TcpListener,
    probe_listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = RustlsConfig::from_pem_file(&settings.tls_cert, &settings.tls_key)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot load the serving certificate {} / key {}: {e}",
                settings.tls_cert.display(),
                settings.tls_key.display()
            )
        })?;
    let reloader = tokio::spawn(reload_certs(
        tls.clone(),
        settings.tls_cert.clone(),
        settings.tls_key.clone(),
        settings.cert_poll,
    ));
    let handle = axum_server::Handle::<std::net::SocketAddr>::new();
    let drain = settings.drain;
    {
        let handle = handle.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: draining in-flight requests");
            handle.graceful_shutdown(Some(drain));
        });
    }
    tls_listener.set_nonblocking(true)?;
    let app = admission_router(
        webhook.clone(),
        settings.admission_deadline,
        settings.max_body_bytes,
    );
    let probes = probe_router(webhook);
    // The probe port lives as long as the TLS server: it is aborted once that has drained.
    let probe_server = axum::serve(probe_listener, probes);
    let probe_task = tokio::spawn(async move { probe_server.await });
    let served = axum_server::from_tcp_rustls(tls_listener, tls)?
        .handle(handle)
        .serve(app.into_make_service())
        .await;
    reloader.abort();
    probe_task.abort();
    served?;
    Ok(())
}
