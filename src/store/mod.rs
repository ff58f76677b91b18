//! The store of backing Secrets in Kubernetes (SPEC section 5), used by both
//! writers: the admission path ([`Syncer::ensure`]) and the refresher
//! ([`write_backing`], [`inventory`]). It lives in neither.
//!
//! Secrets are written by [`write_backing`], the one write every writer
//! uses (field manager `sm-injector`): it never replaces a later observation
//! with an earlier one. A Secret this
//! process has written (or found current) with the same version within the
//! cache TTL is not written again, so a warm admission makes no Kubernetes
//! call at all.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

pub mod inventory;

use crate::backing::{self, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::fetch::FetchKey;
use crate::kube_error::kube_reason;
use crate::lookup::{Hashing, Strs};
use crate::metrics::Metrics;
use crate::plan::{Content, Plan};
use crate::secret::SecretValue;
use inventory::Inventory;

#[derive(Clone)]
pub struct Syncer {
    client: kube::Client,
    /// (namespace, backing Secret name, version id) written by this process
    /// within the TTL.
    known: moka::future::Cache<(String, String, String), (), Hashing>,
    metrics: Metrics,
    inventory: Option<Inventory>,
}

/// Now, as RFC 3339 in UTC with second precision.
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

impl Syncer {
    pub fn new(client: kube::Client, ttl: Duration, metrics: Metrics) -> Self {
        Syncer {
            client,
            known: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build_with_hasher(Hashing::default()),
            metrics,
            inventory: None,
        }
    }

    /// Records every backing Secret this process writes in the collector's
    /// inventory before writing it, so that none is left behind when a later
    /// admission stage rejects the pod.
    pub fn with_inventory(mut self, inventory: Inventory) -> Self {
        self.inventory = Some(inventory);
        self
    }

    /// Makes sure every backing Secret of `plan` exists in `namespace` and holds
    /// what the plan fetched, or a later observation ([`write_backing`]). With
    /// `dry_run`, nothing is written. Returns the admission warnings and the
    /// cached values found stale, or the reason to deny.
    pub async fn ensure(
        &self,
        namespace: &str,
        plan: &Plan,
        dry_run: bool,
    ) -> Result<Ensured, Vec<String>> {
        if let Some(inv) = self.inventory.as_ref().filter(|_| !dry_run) {
            // Recorded before anything is written, all in one write.
            let fresh = plan
                .backing
                .iter()
                .filter(|b| matches!(b.content, Content::Fresh { .. }))
                .map(|b| b.name.as_str());
            inv.record(namespace, fresh).await.map_err(|e| vec![e])?;
        }
        // The warm path: every value fetched, and each backing Secret known
        // to hold it (or nothing to write on a dry run). Answered here, without
        // building a write for each.
        let warm = plan.backing.iter().all(|b| match &b.content {
            Content::Fresh { value } => {
                dry_run
                    || self
                        .known
                        .contains_key(&Strs([namespace, &b.name, &value.version_id]))
            }
            Content::Unreachable { .. } => false,
        });
        if warm {
            return Ok(Ensured::default());
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let jobs = plan.backing.iter().map(|b| {
            let api = api.clone();
            async move {
                match &b.content {
                    Content::Fresh { value } => {
                        if dry_run {
                            return Ok(Done::Nothing);
                        }
                        // Concurrent admissions needing the same write share it.
                        let key = (namespace.to_string(), b.name.clone(), value.version_id.clone());
                        let r = self
                            .known
                            .try_get_with(key, async {
                                let obj = backing::object(
                                    namespace,
                                    &b.name,
                                    value,
                                    &b.version,
                                    b.form,
                                    &now_rfc3339(),
                                )
                                .map_err(|e| NotWritten::Failed(e.to_string()))?;
                                match write_backing(&api, &obj, value).await {
                                    Ok(Written::Wrote | Written::Created) => {
                                        self.metrics.secret_write("apply");
                                        Ok(())
                                    }
                                    Ok(Written::Current) => Ok(()),
                                    Ok(Written::Newer { version_id, keys }) => {
                                        Err(NotWritten::Newer { version_id, keys })
                                    }
                                    Err(e) => Err(NotWritten::Failed(format!(
                                        "could not write the backing Secret {namespace}/{}: {e}",
                                        b.name
                                    ))),
                                }
                            })
                            .await;
                        match r.map_err(|e| (*e).clone()) {
                            Ok(()) => Ok(Done::Nothing),
                            Err(NotWritten::Failed(e)) => Err(e),
                            // Another writer holds a later observation: the pod
                            // reads that (it names the Secret, not a value), so
                            // its keys must be there; the cached value is dropped.
                            Err(NotWritten::Newer { version_id, keys }) => {
                                let missing = missing_keys(&b.required_keys, &keys);
                                if missing.is_empty() {
                                    Ok(Done::Stale(b.fetch.clone()))
                                } else {
                                    Err(format!(
                                        "the backing Secret {namespace}/{} holds version {version_id} of {:?}, which has no key {missing}",
                                        b.name, b.secret_name
                                    ))
                                }
                            }
                        }
                    }
                    Content::Unreachable { reason } => {
                        // An empty merge patch changes nothing and needs only the
                        // `patch` verb: it answers whether the Secret exists.
                        let pp = PatchParams {
                            dry_run,
                            ..Default::default()
                        };
                        let existing = api
                            .patch(&b.name, &pp, &Patch::Merge(serde_json::json!({})))
                            .await;
                        let s = match existing {
                            Ok(s) => s,
                            Err(kube::Error::Api(e)) if e.code == 404 => {
                                return Err(format!(
                                    "{reason}, and there is no backing Secret for {:?} in namespace {namespace:?} yet",
                                    b.secret_name
                                ));
                            }
                            Err(e) => {
                                return Err(format!(
                                    "{reason}, and the backing Secret {namespace}/{} could not be checked: {}",
                                    b.name,
                                    kube_reason(&e)
                                ));
                            }
                        };
                        if !managed(&s) {
                            return Err(format!(
                                "{reason}, and the Secret {namespace}/{} is not managed by sm-injector",
                                b.name
                            ));
                        }
                        let keys: BTreeSet<String> =
                            s.data.unwrap_or_default().into_keys().collect();
                        let missing = missing_keys(&b.required_keys, &keys);
                        if !missing.is_empty() {
                            return Err(format!(
                                "{reason}, and the existing backing Secret for {:?} has no key {missing}",
                                b.secret_name,
                            ));
                        }
                        let refreshed = s
                            .metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get(backing::ANN_REFRESHED))
                            .cloned()
                            .unwrap_or_else(|| "an unknown time".into());
                        Ok(Done::Warning(format!(
                            "{reason}; using the existing backing Secret {} for {:?}, last refreshed at {refreshed}",
                            b.name, b.secret_name
                        )))
                    }
                }
            }
        });
        let results = futures::future::join_all(jobs).await;
        let mut out = Ensured::default();
        let mut errors = vec![];
        for r in results {
            match r {
                Ok(Done::Warning(w)) => out.warnings.push(w),
                Ok(Done::Stale(k)) => out.stale.push(k),
                Ok(Done::Nothing) => {}
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }
}

/// What [`Syncer::ensure`] found.
#[derive(Debug, Default)]
pub struct Ensured {
    pub warnings: Vec<String>,
    /// Cached values older than what the backing Secrets hold: to be dropped.
    pub stale: Vec<FetchKey>,
}

enum Done {
    Nothing,
    Warning(String),
    Stale(FetchKey),
}

/// Why a shared write did not leave the Secret at the cached version (not
/// cached, so the next admission tries again).
#[derive(Debug, Clone)]
enum NotWritten {
    Newer {
        version_id: String,
        keys: BTreeSet<String>,
    },
    Failed(String),
}

fn missing_keys(required: &BTreeSet<String>, present: &BTreeSet<String>) -> String {
    required
        .difference(present)
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn managed(s: &Secret) -> bool {
    s.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY_VALUE)
}

/// What [`write_backing`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// It did not exist: created.
    Created,
    /// Replaced an earlier observation of another version.
    Wrote,
    /// It held this version already; nothing written.
    Current,
    /// It holds another version observed later; nothing written.
    Newer {
        version_id: String,
        keys: BTreeSet<String>,
    },
}

/// The one write of a backing Secret, for every writer: read what it holds
/// (an empty merge patch: sm-injector has no read verb on Secrets), decide with
/// [`backing::decide`], then create it (which fails if it appeared meanwhile)
/// or replace it under the `resourceVersion` that was read (which fails if it
/// changed meanwhile); either failure starts over. Server-side apply cannot
/// guard a creation (the API server ignores `resourceVersion` when an apply
/// creates), which is why this is create-or-replace. A replace sets exactly
/// the new data, so keys removed from the secret go, and keeps labels and
/// annotations that others set. A Secret that is not sm-injector's is never
/// touched. Returns the reason on failure.
pub async fn write_backing(
    api: &Api<Secret>,
    obj: &Secret,
    value: &SecretValue,
) -> Result<Written, String> {
    let name = obj.metadata.name.as_deref().unwrap_or_default();
    let pp = PostParams {
        field_manager: Some(backing::FIELD_MANAGER.into()),
        ..Default::default()
    };
    let mut attempts = 0;
    loop {
        attempts += 1;
        let existing = match api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({})),
            )
            .await
        {
            Ok(s) => Some(s),
            Err(kube::Error::Api(e)) if e.code == 404 => None,
            Err(e) => return Err(format!("cannot check what it holds: {}", kube_reason(&e))),
        };
        let result = match existing {
            None => api.create(&pp, obj).await.map(|_| Written::Created),
            Some(mut s) => {
                if !managed(&s) {
                    return Err(
                        "a Secret of that name exists and is not managed by sm-injector".into(),
                    );
                }
                let empty = Default::default();
                let annotations = s.metadata.annotations.as_ref().unwrap_or(&empty);
                match backing::decide(annotations, &value.version_id, value.observed_at) {
                    backing::Decision::Current => return Ok(Written::Current),
                    backing::Decision::Newer { version_id } => {
                        let keys = s.data.unwrap_or_default().into_keys().collect();
                        return Ok(Written::Newer { version_id, keys });
                    }
                    backing::Decision::Write => {}
                }
                let ours = &obj.metadata;
                s.metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .extend(ours.labels.clone().unwrap_or_default());
                s.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .extend(ours.annotations.clone().unwrap_or_default());
                s.metadata.managed_fields = None;
                s.data = obj.data.clone();
                s.string_data = None;
                s.type_ = obj.type_.clone();
                api.replace(name, &pp, &s).await.map(|_| Written::Wrote)
            }
        };
        match result {
            Ok(w) => return Ok(w),
            // Created or written by another writer since the read: decide again.
            Err(kube::Error::Api(e)) if e.code == 409 && attempts < 5 => continue,
            Err(e) => return Err(kube_reason(&e)),
        }
    }
}

/// The write rule's I/O against a mocked API server (`tower-test`): which
/// requests it makes, in which order, with which preconditions.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::backing::{ANN_OBSERVED, ANN_VERSION_ID, Form};
    use crate::reference::Version;
    use crate::secret::Payload;
    use http::{Request, Response};
    use http_body_util::BodyExt;
    use kube::client::Body;
    use serde_json::{Value, json};
    use tower_test::mock::{self, Handle};

    type H = Handle<Request<Body>, Response<Body>>;

    fn value(version: &str, at: &str) -> SecretValue {
        SecretValue::new(
            "arn:aws:secretsmanager:us-east-1:1:secret:n/db-AbCdEf".into(),
            "n/db".into(),
            version.into(),
            Payload::String(r#"{"pw":"x"}"#.into()),
        )
        .observed(at.parse().unwrap())
    }

    fn held(version: &str, at: &str, managed: bool) -> Value {
        let labels = if managed {
            json!({MANAGED_BY_LABEL: MANAGED_BY_VALUE})
        } else {
            json!({})
        };
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {
            "name": "sm-n-db-1", "namespace": "n", "resourceVersion": "7", "labels": labels,
            "annotations": {ANN_VERSION_ID: version, ANN_OBSERVED: at}}, "data": {"pw": "eA=="}})
    }

    fn status(code: u16, reason: &str) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": reason, "reason": reason, "code": code})
    }

    /// Answers the next request; returns its method, query, content type and body.
    async fn answer(h: &mut H, code: u16, body: Value) -> (String, String, String, Value) {
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), h.next_request())
            .await
            .expect("a request within 5 s")
            .expect("a request");
        let (parts, b) = req.into_parts();
        let bytes = b.collect().await.unwrap().to_bytes();
        let ct = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
        (
            parts.method.to_string(),
            parts.uri.query().unwrap_or_default().to_string(),
            ct,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn start(v: SecretValue) -> (H, tokio::task::JoinHandle<Result<Written, String>>) {
        let (svc, h) = mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<Secret> = Api::namespaced(kube::Client::new(svc, "n"), "n");
        let obj =
            backing::object("n", "sm-n-db-1", &v, &Version::current(), Form::Keys, "now").unwrap();
        (
            h,
            tokio::spawn(async move { write_backing(&api, &obj, &v).await }),
        )
    }

    async fn done(t: tokio::task::JoinHandle<Result<Written, String>>) -> Result<Written, String> {
        tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .expect("no further request")
            .unwrap()
    }

    #[tokio::test]
    async fn a_later_observation_is_kept_and_nothing_is_applied() {
        let (mut h, t) = start(value("v1", "2026-01-01T00:00:05Z"));
        let (method, _, ct, body) =
            answer(&mut h, 200, held("v2", "2026-01-01T00:00:10.000Z", true)).await;
        assert_eq!(
            (method.as_str(), ct.as_str(), body),
            ("PATCH", "application/merge-patch+json", json!({}))
        );
        assert_eq!(
            done(t).await,
            Ok(Written::Newer {
                version_id: "v2".into(),
                keys: ["pw".to_string()].into()
            })
        );
    }

    #[tokio::test]
    async fn an_earlier_one_is_replaced_under_its_resource_version_and_a_conflict_starts_over() {
        let (mut h, t) = start(value("v2", "2026-01-01T00:00:10Z"));
        answer(&mut h, 200, held("v1", "2026-01-01T00:00:05.000Z", true)).await;
        let (method, query, _, body) = answer(&mut h, 409, status(409, "Conflict")).await;
        assert_eq!(method, "PUT", "a replace");
        assert!(query.contains("fieldManager=sm-injector"), "{query}");
        assert_eq!(
            body["metadata"]["resourceVersion"], "7",
            "the read version is a precondition"
        );
        assert_eq!(
            body["metadata"]["annotations"][ANN_OBSERVED],
            "2026-01-01T00:00:10.000Z"
        );
        assert_eq!(body["metadata"]["annotations"][ANN_VERSION_ID], "v2");
        // Someone wrote in between: read again and decide again.
        answer(&mut h, 200, held("v2", "2026-01-01T00:00:11.000Z", true)).await;
        assert_eq!(done(t).await, Ok(Written::Current));
    }

    #[tokio::test]
    async fn an_absent_secret_is_created_and_a_failed_read_is_no_absence() {
        let (mut h, t) = start(value("v1", "2026-01-01T00:00:05Z"));
        answer(&mut h, 404, status(404, "NotFound")).await;
        // Created meanwhile by another writer (409): read and decide again.
        let (method, _, _, body) = answer(&mut h, 409, status(409, "AlreadyExists")).await;
        assert_eq!(method, "POST", "a create, which fails if it exists");
        assert!(body["metadata"].get("resourceVersion").is_none());
        answer(&mut h, 404, status(404, "NotFound")).await;
        answer(&mut h, 201, held("v1", "2026-01-01T00:00:05.000Z", true)).await;
        assert_eq!(done(t).await, Ok(Written::Created));

        let (mut h, t) = start(value("v1", "2026-01-01T00:00:05Z"));
        answer(&mut h, 500, status(500, "InternalError")).await;
        let e = done(t).await.unwrap_err();
        assert!(e.starts_with("cannot check what it holds"), "{e}");

        let (mut h, t) = start(value("v1", "2026-01-01T00:00:05Z"));
        answer(&mut h, 200, held("v0", "2026-01-01T00:00:01.000Z", false)).await;
        assert!(
            done(t)
                .await
                .unwrap_err()
                .contains("not managed by sm-injector")
        );
    }
}
