//! The floor for `benches/admission.rs`: a mutating webhook built from the
//! same crates as sm-injector (axum, axum-server with rustls on aws-lc-rs,
//! kube's admission types, serde_json, json-patch, mimalloc, the same release
//! profile) that does nothing but the unavoidable: reads the body, decodes
//! the AdmissionReview as kube's generic `DynamicObject` review, and answers
//! with a one-operation patch (base64, as sm-injector writes it).
//!
//! `noop_webhook <listen addr> <tls.crt> <tls.key>`

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn mutate(body: Bytes) -> axum::response::Response {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(_) => return (axum::http::StatusCode::BAD_REQUEST, "no request").into_response(),
    };
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "add", "path": "/metadata/labels/noop", "value": "yes"}
    ]))
    .unwrap();
    let response = AdmissionResponse::from(&req).with_patch(patch).unwrap();
    (
        [(header::CONTENT_TYPE, "application/json")],
        sm_injector::wire::encode(&response),
    )
        .into_response()
}

#[tokio::main]
async fn main() {
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .unwrap();
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, cert, key] = &args[..] else {
        eprintln!("usage: noop_webhook <listen addr> <tls.crt> <tls.key>");
        std::process::exit(2);
    };
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .unwrap();
    let app = Router::new().route("/mutate", post(mutate));
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    axum_server::bind_rustls(addr, tls)
        .serve(app.into_make_service())
        .await
        .unwrap();
}
