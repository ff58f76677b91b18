//! The minimal floor for `benches/admission.rs`: a mutating webhook on the
//! same stack as sm-injector (axum, axum-server with rustls on aws-lc-rs,
//! HTTP/1.1, serde_json, mimalloc, the same release profile) that does only
//! what no webhook can avoid: reads the body, finds the request's `uid`
//! (borrowed from the body; the rest of the review is parsed past, not
//! built), and answers a fixed one-operation patch.
//!
//! `noop_webhook <listen addr> <tls.crt> <tls.key> [<patch file>]`
//!
//! With a patch file (base64, as an AdmissionReview carries it), the fixed
//! patch is that file's instead: the same minimal work answering as many
//! bytes as sm-injector answers for a pod, which tells the answer's size (the
//! copy, the encryption, the delivery) from the review's own work.

use axum::Router;
use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use serde::Deserialize;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Deserialize)]
struct Review<'a> {
    #[serde(borrow)]
    request: Request<'a>,
}

#[derive(Deserialize)]
struct Request<'a> {
    uid: &'a str,
}

/// `[{"op":"add","path":"/metadata/labels/noop","value":"yes"}]`, base64.
const PATCH: &str =
    "W3sib3AiOiJhZGQiLCJwYXRoIjoiL21ldGFkYXRhL2xhYmVscy9ub29wIiwidmFsdWUiOiJ5ZXMifV0=";

async fn mutate(patch: &'static str, body: Bytes) -> axum::response::Response {
    let review: Review = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let answer = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{{"uid":"{}","allowed":true,"patchType":"JSONPatch","patch":"{patch}"}}}}"#,
        review.request.uid
    );
    ([(header::CONTENT_TYPE, "application/json")], answer).into_response()
}

#[tokio::main]
async fn main() {
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .unwrap();
    let args: Vec<String> = std::env::args().collect();
    let (listen, cert, key, patch): (_, _, _, &'static str) = match &args[..] {
        [_, listen, cert, key] => (listen, cert, key, PATCH),
        [_, listen, cert, key, file] => {
            let patch = std::fs::read_to_string(file).unwrap();
            (listen, cert, key, String::leak(patch.trim().to_owned()))
        }
        _ => {
            eprintln!("usage: noop_webhook <listen addr> <tls.crt> <tls.key> [<patch file>]");
            std::process::exit(2);
        }
    };
    // HTTP/1.1 by ALPN, as sm-injector's server: axum-server's default
    // offers h2 too, which the API server then speaks to an HTTP/1.1 server.
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = axum_server::tls_rustls::RustlsConfig::from_config(std::sync::Arc::new(config));
    let app = Router::new().route("/mutate", post(move |body| mutate(patch, body)));
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    axum_server::bind_rustls(addr, tls)
        .http1_only()
        .serve(app.into_make_service())
        .await
        .unwrap();
}
