//! The store's I/O against a mocked API server (`tower-test`): which requests
//! each writer makes, in which order, with which preconditions.

use super::*;
use crate::backing::Form;
use crate::metrics::Metrics;
use crate::mock_api::{self, done};
use crate::reference::Version;
use crate::secret::{Payload, SecretValue};
use serde_json::{Value, json};

type H = mock_api::ApiHandle;

fn value(version: &str) -> SecretValue {
    SecretValue::new(
        "arn:aws:secretsmanager:us-east-1:1:secret:n/db-AbCdEf".into(),
        "n/db".into(),
        version.into(),
        Payload::String(r#"{"pw":"x"}"#.into()),
    )
}

/// The backing Secret `sm-n-db-1` of `version` as sm-injector writes it, at `at`.
fn object(version: &str, at: &str) -> Secret {
    backing::object(
        "n",
        "sm-n-db-1",
        &value(version),
        &Version::current(),
        Form::Keys,
        at,
    )
    .unwrap()
}

/// What the API server holds: `version`'s object as sm-injector writes it,
/// with resourceVersion 7, or unmanaged.
fn held(version: &str, managed: bool) -> Value {
    let mut v = serde_json::to_value(object(version, "then")).unwrap();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Secret");
    v["metadata"]["resourceVersion"] = json!("7");
    v["metadata"]["uid"] = json!("u-1");
    if !managed {
        v["metadata"]["labels"] = json!({});
    }
    v
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": reason, "reason": reason, "code": code})
}

/// The method, query, content type and body of the next request, answered.
async fn answer(h: &mut H, code: u16, body: Value) -> (String, String, String, Value) {
    let a = mock_api::answer(h, code, body).await;
    (a.method, a.query, a.content_type, a.body)
}

type Task = tokio::task::JoinHandle<Result<Written, WriteError>>;

fn mocked() -> (H, Api<Secret>) {
    let (h, client) = mock_api::client();
    (h, Api::namespaced(client, "n"))
}

fn start(version: &str, writer: Writer, leading: bool) -> (H, Task) {
    let (h, api) = mocked();
    let obj = object(version, "now");
    let leading = move || leading;
    (
        h,
        tokio::spawn(async move { write_backing(&api, &obj, writer, &leading).await }),
    )
}

#[tokio::test]
async fn an_admission_never_replaces_another_version_and_only_reads() {
    // Whichever version is "newer", and whatever any clock says.
    for (fetched, there) in [("v1", "v2"), ("v2", "v1")] {
        let (mut h, t) = start(fetched, Writer::Admission, true);
        let (method, _, ct, body) = answer(&mut h, 200, held(there, true)).await;
        assert_eq!(
            (method.as_str(), ct.as_str(), body),
            ("PATCH", "application/merge-patch+json", json!({}))
        );
        assert_eq!(
            done(t).await,
            Ok(Written::Differs {
                version_id: there.into(),
                keys: ["pw".to_string()].into()
            })
        );
    }
}

#[tokio::test]
async fn the_leader_replaces_under_the_read_resource_version_and_a_conflict_starts_over() {
    let (mut h, t) = start("v2", Writer::Leader, true);
    answer(&mut h, 200, held("v1", true)).await;
    let (method, query, _, body) = answer(&mut h, 409, status(409, "Conflict")).await;
    assert_eq!(method, "PUT", "a replace");
    assert!(query.contains("fieldManager=sm-injector"), "{query}");
    assert_eq!(
        body["metadata"]["resourceVersion"], "7",
        "the read version is a precondition"
    );
    assert_eq!(
        body["metadata"]["annotations"][backing::ANN_VERSION_ID],
        "v2"
    );
    // Someone wrote in between: read again and decide again.
    answer(&mut h, 200, held("v2", true)).await;
    assert_eq!(done(t).await, Ok(Written::Current));

    // A rollback made in Secrets Manager goes through the same way.
    let (mut h, t) = start("v1", Writer::Leader, true);
    answer(&mut h, 200, held("v2", true)).await;
    answer(&mut h, 200, held("v1", true)).await;
    assert_eq!(done(t).await, Ok(Written::Rotated { from: "v2".into() }));

    // A hand edit of the same version is repaired.
    let (mut h, t) = start("v1", Writer::Leader, true);
    let mut edited = held("v1", true);
    edited["data"]["pw"] = json!("bWluZQ==");
    answer(&mut h, 200, edited).await;
    let (method, _, _, body) = answer(&mut h, 200, held("v1", true)).await;
    assert_eq!(
        (method.as_str(), &body["data"]["pw"]),
        ("PUT", &json!("eA=="))
    );
    assert_eq!(done(t).await, Ok(Written::Repaired));
}

#[tokio::test]
async fn a_deposed_leader_writes_nothing() {
    let (mut h, t) = start("v2", Writer::Leader, false);
    answer(&mut h, 200, held("v1", true)).await;
    assert_eq!(done(t).await, Ok(Written::NotLeading));
    let (mut h, t) = start("v2", Writer::Leader, false);
    answer(&mut h, 404, status(404, "NotFound")).await;
    assert_eq!(done(t).await, Ok(Written::NotLeading));
}

#[tokio::test]
async fn an_absent_secret_is_created_and_a_failed_read_is_no_absence() {
    let (mut h, t) = start("v1", Writer::Admission, true);
    answer(&mut h, 404, status(404, "NotFound")).await;
    // Created meanwhile by another writer (409): read and decide again.
    let (method, _, _, body) = answer(&mut h, 409, status(409, "AlreadyExists")).await;
    assert_eq!(method, "POST", "a create, which fails if it exists");
    assert!(body["metadata"].get("resourceVersion").is_none());
    answer(&mut h, 404, status(404, "NotFound")).await;
    answer(&mut h, 201, held("v1", true)).await;
    assert_eq!(done(t).await, Ok(Written::Created));

    let (mut h, t) = start("v1", Writer::Leader, true);
    answer(&mut h, 500, status(500, "InternalError")).await;
    let e = done(t).await.unwrap_err();
    assert!(e.reason.starts_with("cannot check what it holds"), "{e}");
    assert_eq!(e.status, Some(500), "the status code is kept");

    for writer in [Writer::Admission, Writer::Leader] {
        let (mut h, t) = start("v1", writer, true);
        answer(&mut h, 200, held("v0", false)).await;
        assert!(
            done(t)
                .await
                .unwrap_err()
                .reason
                .contains("not managed by sm-injector")
        );
    }
}

#[tokio::test]
async fn a_deletion_is_preconditioned_on_what_was_read() {
    let (mut h, api) = mocked();
    let t = tokio::spawn(async move { delete_backing(&api, "sm-n-db-1").await });
    answer(&mut h, 200, held("v1", true)).await;
    let (method, _, _, body) = answer(&mut h, 409, status(409, "Conflict")).await;
    assert_eq!(method, "DELETE");
    assert_eq!(
        body["preconditions"],
        json!({"resourceVersion": "7", "uid": "u-1"})
    );
    assert_eq!(
        done(t).await,
        Ok(false),
        "written again since the read: kept"
    );

    let (mut h, api) = mocked();
    let t = tokio::spawn(async move { delete_backing(&api, "sm-n-db-1").await });
    answer(&mut h, 200, held("v1", false)).await;
    assert!(done(t).await.unwrap_err().reason.contains("not managed"));
}

#[tokio::test]
async fn a_first_write_in_a_namespace_creates_at_once_and_decides_as_usual_when_it_exists() {
    // Absent, as it most likely is: one request, a create.
    let (mut h, api) = mocked();
    let obj = object("v1", "now");
    let t = tokio::spawn(async move { create_backing(&api, &obj).await });
    let (method, query, _, body) = answer(&mut h, 201, held("v1", true)).await;
    assert_eq!(method, "POST");
    assert!(query.contains("fieldManager=sm-injector"), "{query}");
    assert_eq!(
        body["metadata"]["annotations"][backing::ANN_VERSION_ID],
        "v1"
    );
    assert_eq!(done(t).await, Ok(Written::Created));

    // There after all, and not sm-injector's: read, then left alone.
    let (mut h, api) = mocked();
    let obj = object("v1", "now");
    let t = tokio::spawn(async move { create_backing(&api, &obj).await });
    answer(&mut h, 409, status(409, "AlreadyExists")).await;
    let (method, _, _, _) = answer(&mut h, 200, held("v1", false)).await;
    assert_eq!(method, "PATCH", "the read");
    assert_eq!(done(t).await, Err(WriteError::unmanaged()));

    // There after all, at another version: the admission never replaces it.
    let (mut h, api) = mocked();
    let obj = object("v1", "now");
    let t = tokio::spawn(async move { create_backing(&api, &obj).await });
    answer(&mut h, 409, status(409, "AlreadyExists")).await;
    answer(&mut h, 200, held("v2", true)).await;
    assert!(matches!(done(t).await, Ok(Written::Differs { .. })));
}

mod ensure;
mod moves;
