//! Writing backing Secrets to Kubernetes (SPEC section 5).
//!
//! Secrets are written with server-side apply under the field manager
//! `sm-injector`. A Secret this process has written with the same version
//! within the cache TTL is known current and is not written again, so a warm
//! admission makes no Kubernetes call at all.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::backing::{self, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::metrics::Metrics;
use crate::plan::{Content, Plan};

#[derive(Clone)]
pub struct Syncer {
    client: kube::Client,
    /// (namespace, backing Secret name, version id) written by this process
    /// within the TTL.
    known: moka::future::Cache<(String, String, String), ()>,
    metrics: Metrics,
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
                .build(),
            metrics,
        }
    }

    /// Makes sure every backing Secret of `plan` exists in `namespace` and holds
    /// what the plan fetched. With `dry_run`, nothing is written. Returns the
    /// admission warnings, or the reason to deny.
    pub async fn ensure(
        &self,
        namespace: &str,
        plan: &Plan,
        dry_run: bool,
    ) -> Result<Vec<String>, Vec<String>> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let jobs = plan.backing.iter().map(|b| {
            let api = api.clone();
            async move {
                match &b.content {
                    Content::Fresh { value } => {
                        if dry_run {
                            return Ok(None);
                        }
                        // Concurrent admissions needing the same write share it.
                        let key = (namespace.to_string(), b.name.clone(), value.version_id.clone());
                        self.known
                            .try_get_with(key, async {
                                let data = backing::data(value, b.form).map_err(|e| e.to_string())?;
                                let obj = backing::object(
                                    namespace,
                                    value,
                                    &b.version,
                                    b.form,
                                    data,
                                    &now_rfc3339(),
                                );
                                let pp = PatchParams::apply(backing::FIELD_MANAGER).force();
                                self.metrics.secret_write("apply");
                                api.patch(&b.name, &pp, &Patch::Apply(&obj))
                                    .await
                                    .map(|_| ())
                                    .map_err(|e| {
                                        format!(
                                            "could not write the backing Secret {namespace}/{}: {}",
                                            b.name,
                                            kube_reason(&e)
                                        )
                                    })
                            })
                            .await
                            .map_err(|e: std::sync::Arc<String>| (*e).clone())?;
                        Ok(None)
                    }
                    Content::Unreachable {
                        required_keys,
                        reason,
                    } => {
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
                        let managed = s
                            .metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(MANAGED_BY_LABEL))
                            .is_some_and(|v| v == MANAGED_BY_VALUE);
                        if !managed {
                            return Err(format!(
                                "{reason}, and the Secret {namespace}/{} is not managed by sm-injector",
                                b.name
                            ));
                        }
                        let data = s.data.unwrap_or_default();
                        let missing: Vec<&String> =
                            required_keys.iter().filter(|k| !data.contains_key(*k)).collect();
                        if !missing.is_empty() {
                            return Err(format!(
                                "{reason}, and the existing backing Secret for {:?} has no key {}",
                                b.secret_name,
                                missing
                                    .iter()
                                    .map(|k| format!("{k:?}"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ));
                        }
                        let refreshed = s
                            .metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get(backing::ANN_REFRESHED))
                            .cloned()
                            .unwrap_or_else(|| "an unknown time".into());
                        Ok(Some(format!(
                            "{reason}; using the existing backing Secret {} for {:?}, last refreshed at {refreshed}",
                            b.name, b.secret_name
                        )))
                    }
                }
            }
        });
        let results = futures::future::join_all(jobs).await;
        let mut warnings = vec![];
        let mut errors = vec![];
        for r in results {
            match r {
                Ok(Some(w)) => warnings.push(w),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(warnings)
        } else {
            Err(errors)
        }
    }
}

/// A Kubernetes error as a short reason (the API server's message when there is one).
pub fn kube_reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}
