//! A bad day for Secrets Manager: an HTTP proxy in front of moto whose
//! behaviour can be switched while it runs. The AWS SDK reaches it through
//! `AWS_ENDPOINT_URL_SECRETS_MANAGER`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Passed through.
    Healthy = 0,
    /// Each call answered after 2 s.
    Slow = 1,
    /// Each call answered `ThrottlingException` (HTTP 400), as AWS does when
    /// the account's request rate is exceeded.
    Throttling = 2,
    /// Connections closed on arrival, as an unreachable endpoint.
    Refusing = 3,
    /// Calls alternately passed through and failed with HTTP 500.
    Flapping = 4,
    /// AWS's account quota: more than [`BATCH_QUOTA`] `BatchGetSecretValue`
    /// calls in one second are answered `ThrottlingException`.
    Quota = 5,
}

/// AWS's `BatchGetSecretValue` calls a second per account and region.
pub const BATCH_QUOTA: u32 = 100;

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Healthy => "healthy",
            Mode::Slow => "slow (2 s)",
            Mode::Throttling => "throttling",
            Mode::Refusing => "refusing",
            Mode::Flapping => "flapping",
            Mode::Quota => "AWS's quota",
        }
    }

    fn from_u8(v: u8) -> Mode {
        [
            Mode::Healthy,
            Mode::Slow,
            Mode::Throttling,
            Mode::Refusing,
            Mode::Flapping,
            Mode::Quota,
        ][v as usize]
    }
}

pub struct FaultyEndpoint {
    pub url: String,
    mode: Arc<AtomicU8>,
    /// Requests that reached the proxy (refused connections not included).
    pub requests: Arc<AtomicU64>,
    /// Calls answered `ThrottlingException` under [`Mode::Quota`], and the
    /// most `BatchGetSecretValue` calls seen in one second.
    pub throttled: Arc<AtomicU64>,
    pub busiest_second: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultyEndpoint {
    /// A proxy to `upstream` (`host:port`) on a free loopback port.
    pub async fn start(upstream: String) -> FaultyEndpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mode = Arc::new(AtomicU8::new(Mode::Healthy as u8));
        let requests = Arc::new(AtomicU64::new(0));
        let flip = Arc::new(AtomicU64::new(0));
        let window = Arc::new(Window::default());
        let (throttled, busiest_second) = (window.throttled.clone(), window.busiest.clone());
        let task = {
            let (mode, requests) = (mode.clone(), requests.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    if Mode::from_u8(mode.load(Ordering::SeqCst)) == Mode::Refusing {
                        drop(tcp);
                        continue;
                    }
                    let (mode, requests, flip, upstream, window) = (
                        mode.clone(),
                        requests.clone(),
                        flip.clone(),
                        upstream.clone(),
                        window.clone(),
                    );
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let (mode, requests, flip, upstream, window) = (
                                mode.clone(),
                                requests.clone(),
                                flip.clone(),
                                upstream.clone(),
                                window.clone(),
                            );
                            async move {
                                requests.fetch_add(1, Ordering::SeqCst);
                                let m = Mode::from_u8(mode.load(Ordering::SeqCst));
                                Ok::<_, Infallible>(answer(m, req, &upstream, &flip, &window).await)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), svc)
                            .await;
                    });
                }
            })
        };
        FaultyEndpoint {
            url,
            mode,
            requests,
            throttled,
            busiest_second,
            task,
        }
    }

    pub fn set(&self, m: Mode) {
        self.mode.store(m as u8, Ordering::SeqCst);
    }
}

impl Drop for FaultyEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn aws_error(status: StatusCode, kind: &str, message: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amzn-errortype", kind)
        .body(Full::new(Bytes::from(format!(
            r#"{{"__type":"{kind}","message":"{message}"}}"#
        ))))
        .unwrap()
}

/// `BatchGetSecretValue` calls per second, as AWS counts them for its quota.
#[derive(Default)]
struct Window {
    /// The current second (since the proxy started) and its calls.
    now: std::sync::Mutex<(u64, u32)>,
    start: std::sync::OnceLock<std::time::Instant>,
    throttled: Arc<AtomicU64>,
    busiest: Arc<AtomicU64>,
}

impl Window {
    /// Counts one call; false when it is over the quota.
    fn admit(&self) -> bool {
        let second = self
            .start
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs();
        let mut now = self.now.lock().unwrap();
        if now.0 != second {
            *now = (second, 0);
        }
        now.1 += 1;
        self.busiest.fetch_max(now.1 as u64, Ordering::SeqCst);
        now.1 <= BATCH_QUOTA
    }
}

async fn answer(
    m: Mode,
    req: Request<Incoming>,
    upstream: &str,
    flip: &AtomicU64,
    window: &Window,
) -> Response<Full<Bytes>> {
    let batch = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.ends_with("BatchGetSecretValue"));
    if batch && !window.admit() && m == Mode::Quota {
        window.throttled.fetch_add(1, Ordering::SeqCst);
        return aws_error(
            StatusCode::BAD_REQUEST,
            "ThrottlingException",
            "Rate exceeded",
        );
    }
    match m {
        Mode::Throttling => {
            return aws_error(
                StatusCode::BAD_REQUEST,
                "ThrottlingException",
                "Rate exceeded",
            );
        }
        Mode::Flapping if flip.fetch_add(1, Ordering::SeqCst) % 2 == 1 => {
            return aws_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServiceError",
                "flapping",
            );
        }
        Mode::Slow => tokio::time::sleep(Duration::from_secs(2)).await,
        _ => {}
    }
    forward(req, upstream)
        .await
        .unwrap_or_else(|e| aws_error(StatusCode::BAD_GATEWAY, "ProxyError", &e.to_string()))
}

async fn forward(
    req: Request<Incoming>,
    upstream: &str,
) -> Result<Response<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let tcp = tokio::net::TcpStream::connect(upstream).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let out = send
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await?;
    let (parts, body) = out.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, Full::new(body)))
}
