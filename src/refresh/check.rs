//! A pass's checks: the due backing Secrets' secrets fetched (each version
//! once, in batches that each have the AWS deadline), and each Secret brought
//! to what Secrets Manager holds now, read every time (level-triggered).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::index::{Index, Key, Want};
use super::planner::{self, Planner};
use super::{Failure, Refresher, workloads};
use crate::backing;
use crate::fetch::{FetchError, FetchKey, FetchResults};
use crate::identity::Identity;
use crate::source::SecretSource;
use crate::store::rule::Writer;
use crate::store::{Written, now_rfc3339, write_backing};

/// What a check did to one backing Secret.
pub(super) enum Outcome {
    /// Moved from another version.
    Rotated { to: String, from: String },
    /// Its content had been changed; restored.
    Repaired(String),
    /// Holds this version (found, or written where it was missing).
    Current(String),
    /// The Lease was lost before writing.
    NotLeading,
}

impl Refresher {
    /// Fetches the due ones (each secret version once, in batches that each
    /// have the AWS deadline) and brings each backing Secret to what Secrets
    /// Manager holds now. Returns the backing Secrets moved to another version.
    pub(super) async fn refresh(
        &self,
        index: &Index,
        planner: &mut Planner,
        due: Vec<(Key, Want)>,
        leading: &(dyn Fn() -> bool + Sync),
    ) -> BTreeSet<Key> {
        let read = self.read_in_turn(&due).await;
        let jobs = due
            .into_iter()
            .zip(read)
            .map(|((key, want), (value, workload))| async move {
                let r = self.refresh_one(&key, &want, value, leading).await;
                (key, want, workload, r)
            });
        let outcomes: Vec<_> = futures::stream::iter(jobs)
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        let now = SystemTime::now();
        let (mut rotated, mut failing, mut denied) =
            (BTreeSet::new(), BTreeMap::new(), BTreeMap::new());
        for (key, want, workload, r) in outcomes {
            match r {
                Ok(Outcome::Rotated { to, from }) => {
                    tracing::info!(namespace = %key.namespace, secret = %want.secret, version = %to, previous = %from, backing = %key.backing, "backing Secret moved to the version Secrets Manager holds");
                    planner.succeeded(&key, &to, &want, now);
                    rotated.insert(key);
                }
                Ok(Outcome::Repaired(v)) => {
                    tracing::warn!(namespace = %key.namespace, secret = %want.secret, version = %v, backing = %key.backing, "backing Secret had been changed; restored what its version holds");
                    planner.succeeded(&key, &v, &want, now);
                }
                Ok(Outcome::Current(v)) => planner.succeeded(&key, &v, &want, now),
                Ok(Outcome::NotLeading) => {}
                // The workload's own role may no longer read it: a
                // revocation, as a narrowed rule is. Tried again at its
                // interval; deleted once the grace period passes meanwhile.
                Err(Failure::SecretsManager(FetchError::AccessDenied(why)))
                    if let Some(who) = &workload =>
                {
                    tracing::warn!(namespace = %key.namespace, secret = %want.secret, backing = %key.backing, identity = %who, error = %why, "the workload's role may no longer read the secret; not refreshed, deleted after the grace period");
                    if planner.denied(&key, &want, now) {
                        self.metrics.refresh_refused("aws-denied");
                        denied.insert(key.clone(), format!("sm-injector no longer refreshes the backing Secret {}: {who} may not read {} ({why}); it is deleted once unused for the grace period unless the role may read it again", key.backing, want.secret));
                    }
                }
                Err(e) => {
                    self.metrics.refresh_failure(e.metric_label());
                    tracing::warn!(namespace = %key.namespace, secret = %want.secret, backing = %key.backing, error = %e, "refresh failed; the backing Secret is kept as it is");
                    if planner.failed(&key, want.interval, now) {
                        failing.insert(key.clone(), format!("sm-injector could not refresh the backing Secret {} of {}: {e}; the pods keep the values they have", key.backing, want.secret));
                    }
                }
            }
        }
        if !denied.is_empty() {
            workloads::warn(
                &self.recorder,
                index,
                &denied,
                "SecretAccessRevoked",
                "Revoke",
            )
            .await;
        }
        if !failing.is_empty() {
            workloads::warn(
                &self.recorder,
                index,
                &failing,
                "SecretRefreshFailed",
                "Refresh",
            )
            .await;
        }
        rotated
    }

    /// Brings one backing Secret to `value`: reads what it holds (every pass,
    /// even when the version is believed current), and writes when anything
    /// differs ([`write_backing`] as the leader).
    async fn refresh_one(
        &self,
        key: &Key,
        want: &Want,
        value: Option<Result<crate::secret::SecretValue, FetchError>>,
        leading: &(dyn Fn() -> bool + Sync),
    ) -> Result<Outcome, Failure> {
        let value = match value {
            Some(Ok(v)) => v,
            Some(Err(e)) => return Err(Failure::SecretsManager(e)),
            None => {
                return Err(Failure::SecretsManager(FetchError::Unreachable(
                    "no answer".into(),
                )));
            }
        };
        if value.name != want.secret {
            // What AWS named is not quoted: it may be another tenant's secret.
            return Err(Failure::Mismatch(format!(
                "Secrets Manager holds another secret than {:?} at what the record names",
                want.secret
            )));
        }
        let obj = backing::object(
            &key.namespace,
            &key.backing,
            &value,
            &want.fetch.version,
            want.form,
            &now_rfc3339(),
        )
        .map_err(|e| Failure::Content(e.to_string()))?;
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &key.namespace);
        self.metrics.secret_read("refresh");
        let written = write_backing(&api, &obj, Writer::Leader, leading)
            .await
            .map_err(Failure::Kubernetes)?;
        if matches!(
            written,
            Written::Created | Written::Rotated { .. } | Written::Repaired
        ) {
            self.metrics.secret_write("refresh");
        }
        let v = value.version_id;
        Ok(match written {
            Written::Rotated { from } => Outcome::Rotated { to: v, from },
            Written::Repaired => Outcome::Repaired(v),
            Written::NotLeading => Outcome::NotLeading,
            // Created where it was missing (a hand deletion): the pods read
            // it now, at this version.
            Written::Created | Written::Current | Written::Differs { .. } => Outcome::Current(v),
        })
    }
}

/// Fetches `keys` in batches of [`planner::BATCH`], each with its own
/// `deadline`, so that one slow call fails only its own batch.
pub async fn fetch_batches(
    source: &dyn SecretSource,
    identity: &Identity,
    keys: &[FetchKey],
    deadline: Duration,
) -> FetchResults {
    let mut batches = Vec::new();
    for batch in keys.chunks(planner::BATCH) {
        batches.push(fetch_batch(source, identity, batch, deadline));
    }
    let mut results = futures::stream::iter(batches).buffer_unordered(4);
    let mut out = FetchResults::new();
    while let Some(r) = results.next().await {
        out.extend(r);
    }
    out
}

async fn fetch_batch(
    source: &dyn SecretSource,
    identity: &Identity,
    batch: &[FetchKey],
    deadline: Duration,
) -> FetchResults {
    match tokio::time::timeout(deadline, source.fetch(identity, batch)).await {
        Ok(r) => r,
        Err(_) => {
            let why = format!("no answer within {}", humantime::format_duration(deadline));
            batch
                .iter()
                .map(|k| (k.clone(), Err(FetchError::Unreachable(why.clone()))))
                .collect()
        }
    }
}
