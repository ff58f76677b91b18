//! For unit tests of the I/O shells: an API server played by `tower-test`,
//! answering each request the code makes and handing back what it was.

use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::Value;
use tower_test::mock::{self, Handle};

pub type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// What a request was.
#[derive(Debug)]
pub struct Asked {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    /// The `Accept` header (a metadata-only request names
    /// `as=PartialObjectMetadata` or `as=PartialObjectMetadataList`).
    pub accept: String,
    pub body: Value,
}

/// A client whose API server is the returned handle.
pub fn client() -> (ApiHandle, kube::Client) {
    let (svc, h) = mock::pair::<Request<Body>, Response<Body>>();
    (h, kube::Client::new(svc, "n"))
}

/// Answers the next request (within 5 s) with `code` and `body`.
pub async fn answer(h: &mut ApiHandle, code: u16, body: Value) -> Asked {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), h.next_request())
        .await
        .expect("a request within 5 s")
        .expect("a request");
    let (parts, b) = req.into_parts();
    let bytes = b.collect().await.unwrap().to_bytes();
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
    Asked {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        content_type: header(&parts.headers, http::header::CONTENT_TYPE),
        accept: header(&parts.headers, http::header::ACCEPT),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// Answers the next request, which must list `path`'s objects selected by
/// the label `selector` (the query's URL-encoded text), their metadata only
/// (`as=PartialObjectMetadataList`), with objects of these metadata.
pub async fn answer_metadata_list(h: &mut ApiHandle, path: &str, selector: &str, metas: &[Value]) {
    let items: Vec<Value> = (metas.iter())
        .map(|m| serde_json::json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": m}))
        .collect();
    let list = serde_json::json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
        "metadata": {"resourceVersion": "7"}, "items": items});
    let asked = answer(h, 200, list).await;
    assert_eq!((asked.method.as_str(), asked.path.as_str()), ("GET", path));
    assert!(
        asked.query.contains(&format!("labelSelector={selector}")),
        "selected by the API server: {}",
        asked.query
    );
    assert!(
        asked.accept.contains("as=PartialObjectMetadataList"),
        "metadata only on the wire: {:?}",
        asked.accept
    );
}

fn header(headers: &http::HeaderMap, name: http::header::HeaderName) -> String {
    headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// The task's result, which must come without a further request.
pub async fn done<T>(t: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), t)
        .await
        .expect("no further request")
        .unwrap()
}
