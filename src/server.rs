//! The HTTPS admission endpoint (`POST /mutate`), a thin shell around
//! [`Webhook::review`], served with the plain-HTTP [`crate::probes`] port.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum_server::tls_rustls::RustlsConfig;
use kube::core::admission::AdmissionResponse;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::admission::{Asked, Reply, Webhook};
use crate::connections;
use crate::glance;
use crate::inflight;
use crate::tls::Certificates;
use crate::wire;

#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The serving certificate and key, and the CA of required client
    /// certificates if any: files, or kept by [`crate::managed_tls`].
    pub tls: Certificates,
    /// Connections per source address, in their handshake, and established.
    pub connections: connections::Budgets,
    /// A TLS handshake must finish within this time.
    pub handshake_timeout: Duration,
    /// Every admission is answered within this time (keep it below the
    /// webhook configuration's `timeoutSeconds`).
    pub admission_deadline: Duration,
    pub max_body_bytes: usize,
    /// Requests and bytes of large bodies in flight ([`inflight`]).
    pub inflight: inflight::Limits,
    /// Env, envFrom and volumeMounts entries decoded from one pod.
    pub max_pod_entries: usize,
    /// A connection's first request, and each request's headers (also the
    /// next request's on a keep-alive connection), must arrive within this
    /// time, and its body within `body_read_timeout`: silent, slow or
    /// half-sent requests are cut off instead of holding connections.
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    /// A keep-alive connection waiting for its next request is closed after
    /// this (also the time that request's headers may take). Keep it above
    /// the API server's idle-connection timeout (Go's 90 s), so that the API
    /// server closes idle connections first: a server closing one as the
    /// API server sends on it fails that admission
    /// (`http: server closed idle connection`).
    pub idle_timeout: Duration,
    /// How often the certificate files are checked for changes.
    pub cert_poll: Duration,
    /// After SIGTERM, how long readiness reads false while admissions are
    /// still served, so that the API server stops routing here first (the
    /// endpoints take a few seconds to follow).
    pub shutdown_delay: Duration,
    /// Then, how long in-flight requests may take to finish.
    pub drain: Duration,
    /// Set when the replica lacks something it cannot work without (an AWS
    /// region or any credentials): `/readyz` fails with the reason.
    pub unready: crate::probes::Unready,
}

#[derive(Clone)]
struct AppState {
    webhook: Arc<Webhook>,
    deadline: Duration,
    body_timeout: Duration,
    max_body_bytes: usize,
    budget: inflight::Budget,
    max_pod_entries: usize,
    /// Replicas' reviews remembered by their bodies.
    recall: Arc<crate::recall::Recall>,
    /// Set once shutting down: every answer then closes its connection.
    stopping: Arc<AtomicBool>,
}

/// HTTP 400 with `reason` for the caller; the log gets only `log`, since a
/// parse error can quote part of the body.
fn bad_request(reason: String, log: String) -> Response {
    tracing::warn!(problem = %log, "bad admission request");
    (StatusCode::BAD_REQUEST, reason).into_response()
}

async fn mutate(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    request: axum::extract::Request,
) -> Response {
    let mut answer = answer(&st, peer.ip(), request).await;
    // While stopping, every answer closes its HTTP/1.1 connection, so that the
    // API server's keep-alive connections move to other replicas during the
    // delay instead of being cut when it ends. A refusal (413, 429, 503, 408,
    // 400) closes it too: its body may be left unread, so hyper closes the
    // connection after answering, and a client not told so would pool it and
    // send its next admission into a closed socket (Go: `http: server closed
    // idle connection`, an admission failed). (Done here rather than in a
    // middleware layer, whose boxing and request extensions showed in
    // profiles of the warm path.)
    if answer.status() != StatusCode::OK || st.stopping.load(Ordering::Relaxed) {
        answer.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    answer
}

/// The answer to one `POST /mutate`: the AdmissionReview, or why there is none.
async fn answer(st: &AppState, source: IpAddr, request: axum::extract::Request) -> Response {
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let max = st.max_body_bytes as u64;
    if let Some(n) = length.filter(|n| *n > max) {
        st.webhook.metrics.admission("invalid", 0.0);
        let reason = format!("the request body is {n} bytes; at most {max} (--max-body-bytes)");
        tracing::info!(%reason, "admission request refused");
        return (StatusCode::PAYLOAD_TOO_LARGE, reason).into_response();
    }
    // Taken before a byte of the body is read, held until it is answered.
    let _taken = match st.budget.take(source, length, max) {
        Ok(t) => t,
        Err(refusal) => {
            st.webhook.metrics.request_refused(refusal.reason());
            let status = StatusCode::from_u16(refusal.status()).expect("a valid status");
            return (status, [(header::RETRY_AFTER, "1")], refusal.to_string()).into_response();
        }
    };
    let read = inflight::read_body(request.into_body(), length, st.max_body_bytes);
    let body = match tokio::time::timeout(st.body_timeout, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            st.webhook.metrics.admission("invalid", 0.0);
            let reason = format!(
                "cannot read the request body (at most {} bytes): {e}",
                st.max_body_bytes
            );
            return bad_request(reason.clone(), reason);
        }
        Err(_) => {
            st.webhook.metrics.admission("invalid", 0.0);
            let reason = format!(
                "the request body did not arrive within {}",
                humantime::format_duration(st.body_timeout)
            );
            tracing::info!(%reason, "admission request refused");
            return (StatusCode::REQUEST_TIMEOUT, reason).into_response();
        }
    };
    let answer_by = tokio::time::Instant::now() + st.deadline;
    // A replica's review, recalled ([`crate::recall`]): answered from the
    // decision kept for its pod without a look at its body.
    let keeping = st.webhook.decisions.enabled();
    let recalled = keeping.then(|| st.recall.recall(&body)).flatten();
    // Recalled, its look's key is the one tried: not tried again below.
    let tried = recalled.is_some();
    if let Some(r) = recalled {
        let asked = r.asked();
        let reply = asked.reply;
        let kept = Box::pin(st.webhook.review_kept(asked, r.key()));
        match tokio::time::timeout_at(answer_by, kept).await {
            Ok(Some(answer)) => {
                st.webhook.metrics.review_recalled();
                return answered(answer.response, answer.patch_base64);
            }
            Ok(None) => {}
            Err(_) => return answered(too_late(st, &reply), None),
        }
    }
    // A first look, borrowed from the body ([`crate::glance`]): a pod whose
    // decision is kept is answered from it without building kube's request,
    // and a pod decided afresh is planned from it where it reads all that
    // planning reads; the rest is decoded.
    let glance = glance::read(&body, st.max_pod_entries);
    let key = (glance.as_ref())
        .filter(|_| keeping)
        .and_then(crate::decisions::key_of);
    if let (Some(g), Some(key), false) = (&glance, &key, tried)
        && let Some(asked) = Asked::of_glance(g)
    {
        let kept = Box::pin(st.webhook.review_kept(asked, key));
        match tokio::time::timeout_at(answer_by, kept).await {
            Ok(Some(answer)) => {
                // Its replicas are recalled from here on.
                st.recall.remember(&body, &asked, key, st.max_pod_entries);
                return answered(answer.response, answer.patch_base64);
            }
            Ok(None) => {}
            Err(_) => return answered(too_late(st, &Reply::from(g)), None),
        }
    }
    // The pod decided afresh from the look, where it reads all that planning
    // reads; what it asks is copied out, so that the body is let go before
    // the review, which may wait on Secrets Manager (as after decoding).
    let planned = glance.as_ref().and_then(|g| {
        let pod = g.created_pod()?.planning_pod()?;
        Some((Asked::of_glance(g)?.owned(), pod))
    });
    drop(glance);
    if let Some((owned, pod)) = planned {
        drop(body);
        let asked = owned.asked();
        let reply = asked.reply;
        // Boxed, as below.
        let review = Box::pin(st.webhook.review_asked(asked, &pod, key));
        return match tokio::time::timeout_at(answer_by, review).await {
            Ok(answer) => answered(answer.response, answer.patch_base64),
            Err(_) => answered(too_late(st, &reply), None),
        };
    }
    let decoded = wire::decode(&body, st.max_pod_entries);
    drop(body);
    let req = match decoded {
        Ok(r) => r,
        Err(wire::DecodeError::TooManyEntries { request, max }) => {
            let response = st.webhook.review_oversized(&request, max).response;
            return (
                [(header::CONTENT_TYPE, "application/json")],
                wire::encode(&response),
            )
                .into_response();
        }
        Err(e) => {
            st.webhook.metrics.admission("invalid", 0.0);
            let log = match &e {
                // A parse error can quote part of the body: the log gets its place only.
                wire::DecodeError::NotAReview(j) => format!(
                    "the body is not an AdmissionReview ({:?} error at line {} column {})",
                    j.classify(),
                    j.line(),
                    j.column()
                ),
                other => other.to_string(),
            };
            return bad_request(e.to_string(), log);
        }
    };
    // Boxed: the review's future is the larger part of this one, which is
    // made, then moved through axum's and tower's layers as a whole.
    let review = Box::pin(st.webhook.review(&req, key));
    match tokio::time::timeout_at(answer_by, review).await {
        Ok(answer) => answered(answer.response, answer.patch_base64),
        Err(_) => answered(too_late(st, &Reply::from(&req)), None),
    }
}

/// The HTTP answer carrying `response` (and its patch as base64, where kept so).
fn answered(response: AdmissionResponse, patch_base64: Option<Arc<str>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        wire::encode_with(&response, patch_base64.as_deref()),
    )
        .into_response()
}

/// The denial of a review not answered within the deadline.
fn too_late(st: &AppState, reply: &Reply<'_>) -> AdmissionResponse {
    st.webhook
        .metrics
        .admission("denied", st.deadline.as_secs_f64());
    reply.allowed().deny(format!(
        "sm-injector: no answer within its deadline of {}",
        humantime::format_duration(st.deadline)
    ))
}

/// The admission router. The body limit is applied where the body is read
/// (axum's `DefaultBodyLimit` layer only reaches its extractors).
fn admission_router(
    webhook: Arc<Webhook>,
    settings: &ServerSettings,
    stopping: Arc<AtomicBool>,
) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .with_state(AppState {
            webhook,
            deadline: settings.admission_deadline,
            body_timeout: settings.body_read_timeout,
            max_body_bytes: settings.max_body_bytes,
            budget: inflight::Budget::new(settings.inflight),
            max_pod_entries: settings.max_pod_entries,
            recall: Arc::default(),
            stopping,
        })
}

/// A server of HTTP/1.1 only (the API server speaks HTTP/1.1 to webhooks;
/// no protocol detection, no HTTP/2 state to hold) whose connections must
/// send their first request within the header timeout, and are closed when
/// idle for the idle timeout (hyper's header timer runs from the end of one
/// request to the end of the next one's headers).
fn http1_server(
    listener: std::net::TcpListener,
    settings: &ServerSettings,
) -> std::io::Result<axum_server::Server<std::net::SocketAddr>> {
    listener.set_nonblocking(true)?;
    let mut server = axum_server::from_tcp(listener)?
        .http1_only()
        .first_request_timeout(settings.header_read_timeout);
    server
        .http_builder()
        .http1()
        .header_read_timeout(settings.idle_timeout);
    Ok(server)
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
    let (tls, reloader) = match settings.tls.clone() {
        Certificates::Files(files) => {
            let contents = files.read().await;
            let tls = RustlsConfig::from_config(
                files
                    .config(&contents)
                    .map_err(|e| anyhow::anyhow!("cannot load the TLS files: {e}"))?,
            );
            if let Some(t) = crate::tls::not_after(&contents) {
                webhook.metrics.serving_certificate_expiry(t);
            }
            let reloader = tokio::spawn(crate::tls::reload_when_changed(
                tls.clone(),
                files,
                settings.cert_poll,
                webhook.metrics.clone(),
            ));
            (tls, Some(reloader))
        }
        Certificates::Kept(tls) => (tls, None),
    };
    let handle = axum_server::Handle::<std::net::SocketAddr>::new();
    let (delay, drain) = (settings.shutdown_delay, settings.drain);
    let stopping = Arc::new(AtomicBool::new(false));
    {
        let (handle, stopping) = (handle.clone(), stopping.clone());
        tokio::spawn(async move {
            shutdown.await;
            // No admission is lost in a rolling update or a drain: not ready
            // first, still serving until the API server has moved on.
            stopping.store(true, Ordering::Relaxed);
            tracing::info!(delay = %humantime::format_duration(delay), "shutting down: not ready, still serving");
            tokio::time::sleep(delay).await;
            tracing::info!("shutting down: draining in-flight requests");
            handle.graceful_shutdown(Some(drain));
        });
    }
    let app = admission_router(webhook.clone(), &settings, stopping.clone());
    let limit = connections::Limit::new(
        axum_server::tls_rustls::RustlsAcceptor::new(tls)
            .handshake_timeout(settings.handshake_timeout),
        settings.connections,
        webhook.metrics.clone(),
    );
    let probes = crate::probes::router(webhook.clone(), stopping, settings.unready.clone());
    let probe_limit = connections::Limit::new(
        axum_server::accept::DefaultAcceptor,
        crate::probes::BUDGETS,
        webhook.metrics.clone(),
    );
    // The probe port lives as long as the TLS server: it is aborted once that has drained.
    let probe_server = http1_server(probe_listener.into_std()?, &settings)?
        .acceptor(probe_limit)
        .serve(probes.into_make_service());
    let probe_task = tokio::spawn(probe_server);
    let server = http1_server(tls_listener, &settings)?
        .acceptor(limit)
        .handle(handle);
    let served = server
        .serve(app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .await;
    if let Some(r) = reloader {
        r.abort();
    }
    probe_task.abort();
    served?;
    Ok(())
}
