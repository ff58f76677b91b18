//! Writing backing Secrets to Kubernetes (SPEC section 5).
//!
//! Secrets are written with server-side apply under the field manager
//! `sm-injector`, by [`write_backing`], the one write every writer uses: it
//! never replaces a later observation with an earlier one. A Secret this
//! process has written (or found current) with the same version within the
//! cache TTL is not written again, so a warm admission makes no Kubernetes
//! call at all.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::backing::{self, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::metrics::Metrics;
use crate::plan::{Content, Plan};
use crate::refresh::inventory::Inventory;
use crate::secret::SecretValue;
use crate::source::FetchKey;

#[derive(Clone)]
pub struct Syncer {
    client: kube::Client,
    /// (namespace, backing Secret name, version id) written by this process
    /// within the TTL.
    known: moka::future::Cache<(String, String, String), ()>,
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
                .build(),
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
                                if let Some(inv) = &self.inventory {
                                    inv.record(namespace, &b.name).await.map_err(Stale::Failed)?;
                                }
                                let data = backing::data(value, b.form)
                                    .map_err(|e| Stale::Failed(e.to_string()))?;
                                let obj = backing::object(
                                    namespace,
                                    &b.name,
                                    value,
                                    &b.version,
                                    b.form,
                                    data,
                                    &now_rfc3339(),
                                );
                                match write_backing(&api, &obj, value).await {
                                    Ok(Written::Wrote | Written::Created) => {
                                        self.metrics.secret_write("apply");
                                        Ok(())
                                    }
                                    Ok(Written::Current) => Ok(()),
                                    Ok(Written::Newer { version_id, keys }) => {
                                        Err(Stale::Newer { version_id, keys })
                                    }
                                    Err(e) => Err(Stale::Failed(format!(
                                        "could not write the backing Secret {namespace}/{}: {e}",
                                        b.name
                                    ))),
                                }
                            })
                            .await;
                        match r.map_err(|e| (*e).clone()) {
                            Ok(()) => Ok(Done::Nothing),
                            Err(Stale::Failed(e)) => Err(e),
                            // Another writer holds a later observation: the pod
                            // reads that (it names the Secret, not a value), so
                            // its keys must be there; the cached value is dropped.
                            Err(Stale::Newer { version_id, keys }) => {
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
enum Stale {
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
/// [`backing::decide`], and apply with the read `resourceVersion` as a
/// precondition, so that a write in between makes this one start over. A
/// Secret that is not sm-injector's is never touched. Returns the reason on
/// failure.
pub async fn write_backing(
    api: &Api<Secret>,
    obj: &Secret,
    value: &SecretValue,
) -> Result<Written, String> {
    let name = obj.metadata.name.as_deref().unwrap_or_default();
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
        let mut obj = obj.clone();
        let created = existing.is_none();
        if let Some(s) = existing {
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
                backing::Decision::Write => {
                    obj.metadata.resource_version = s.metadata.resource_version;
                }
            }
        }
        let pp = PatchParams::apply(backing::FIELD_MANAGER).force();
        match api.patch(name, &pp, &Patch::Apply(&obj)).await {
            Ok(_) if created => return Ok(Written::Created),
            Ok(_) => return Ok(Written::Wrote),
            // Written (or created) by another writer since the read: decide again.
            Err(kube::Error::Api(e)) if e.code == 409 && attempts < 5 => continue,
            Err(e) => return Err(kube_reason(&e)),
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
