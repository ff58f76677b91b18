//! The background refresher (SPEC sections 5 and 7): keeps backing Secrets on
//! the version Secrets Manager has now. One replica runs it at a time, chosen
//! with a Kubernetes Lease; every replica keeps serving admissions.
//!
//! It is a controller: a metadata watch of the pods the webhook labelled
//! ([`crate::annotations::INJECTED_LABEL`]) feeds the pure [`index::Index`];
//! a watch of the inventory ConfigMaps feeds the collector; the pure
//! [`planner::Planner`] decides, from those and the watched Namespaces, what
//! is due, revoked or unused; this module carries that out. While nothing is
//! due it makes no API call at all. Every write goes through
//! [`crate::store::write_backing`], so a version never goes backwards.

pub mod collector;
pub mod error;
pub mod index;
pub mod planner;
pub mod workloads;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use crate::annotations::INJECTED_LABEL;
use crate::backing;
use crate::fetch::{FetchError, FetchKey};
use crate::metrics::Metrics;
use crate::namespaces::Namespaces;
use crate::source::SecretSource;
use crate::store::inventory::{self, Inventory};
use crate::store::{Written, now_rfc3339, write_backing};
pub use error::{Error, Failure};
use index::{Index, Key, Limits, Want};
use planner::{Planner, Revoked};

#[derive(Debug, Clone)]
pub struct Settings {
    /// The longest pause between two plannings (in memory, no API call), and
    /// the first backoff step.
    pub tick: Duration,
    pub limits: Limits,
    /// Every Secrets Manager call of a refresh answers within this.
    pub aws_deadline: Duration,
    /// Backing Secrets unused (or revoked) for this long are deleted.
    pub gc_grace: Option<Duration>,
    /// Backing Secrets written at once.
    pub concurrency: usize,
}

pub struct Refresher {
    client: kube::Client,
    source: Arc<dyn SecretSource>,
    namespaces: Namespaces,
    metrics: Metrics,
    inventory: Inventory,
    settings: Settings,
    recorder: kube::runtime::events::Recorder,
}

enum Outcome {
    /// Written with a new version (rolls workloads that ask for it).
    Rotated(String),
    /// Holds this version (found, or written where it was missing).
    Current(String),
}

impl Refresher {
    pub fn new(
        client: kube::Client,
        source: Arc<dyn SecretSource>,
        namespaces: Namespaces,
        metrics: Metrics,
        inventory: Inventory,
        settings: Settings,
    ) -> Self {
        let recorder = kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: "sm-injector".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Refresher {
            client,
            source,
            namespaces,
            metrics,
            inventory,
            settings,
            recorder,
        }
    }

    /// Runs while this replica holds the Lease `lease_name` in `namespace`.
    /// Returns only on failure; dropping the leader channel on the way out
    /// makes the Lease task release the Lease.
    pub async fn run_with_lease(
        self,
        namespace: &str,
        lease_name: &str,
        identity: String,
        lease_seconds: u64,
    ) -> Error {
        let manager = kube_lease_manager::LeaseManagerBuilder::new(self.client.clone(), lease_name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(lease_seconds)
            .with_grace(lease_seconds.div_ceil(3).max(1))
            .build()
            .await;
        let manager = match manager {
            Ok(m) => m,
            Err(e) => return Error::Lease(e.to_string()),
        };
        let (leader, task) = manager.watch().await;
        let err = self.run(leader).await;
        // The receiver is gone: the Lease task releases the Lease and ends.
        let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        err
    }

    /// Refreshes while `leader` is true; returns why it stopped.
    pub async fn run(self, mut leader: watch::Receiver<bool>) -> Error {
        loop {
            if *leader.borrow_and_update() {
                tracing::info!("this replica leads the refresher");
                self.metrics.refresh_leader(true);
                let r = self.lead(&mut leader).await;
                self.metrics.refresh_leader(false);
                if let Err(e) = r {
                    return e;
                }
                tracing::info!("this replica no longer leads the refresher");
            } else if leader.changed().await.is_err() {
                return Error::LeaseStopped;
            }
        }
    }

    /// One leadership: watches, plans and acts until the Lease is lost.
    async fn lead(&self, leader: &mut watch::Receiver<bool>) -> Result<(), Error> {
        let pods = watcher(
            Api::<PartialObjectMeta<Pod>>::all(self.client.clone()),
            watcher::Config::default().labels(INJECTED_LABEL),
        )
        .default_backoff();
        let cms = watcher(
            self.inventory.api().clone(),
            watcher::Config::default().labels(inventory::INVENTORY_OF),
        )
        .default_backoff()
        .map_ok(|e| e.modify(|cm: &mut ConfigMap| cm.metadata.managed_fields = None));
        let (mut pods, mut cms) = (std::pin::pin!(pods), std::pin::pin!(cms));
        let mut index = Index::new(self.settings.limits);
        let mut planner = Planner::new(self.settings.tick);
        let mut shards: HashMap<String, Vec<(Key, String)>> = HashMap::new();
        let (mut pods_synced, mut cms_synced) = (false, false);
        let soon = || tokio::time::Instant::now() + Duration::from_millis(300);
        let mut wake = soon();
        loop {
            tokio::select! {
                r = leader.changed() => {
                    if r.is_err() {
                        return Err(Error::LeaseStopped);
                    }
                    if !*leader.borrow_and_update() {
                        return Ok(());
                    }
                }
                ev = pods.next() => {
                    match ev {
                        None => return Err(Error::WatchEnded("pod")),
                        Some(Err(e)) => tracing::warn!(error = %e, "pod watch error (retrying)"),
                        Some(Ok(watcher::Event::Init)) => {
                            pods_synced = false;
                            index.restart();
                        }
                        Some(Ok(watcher::Event::InitDone)) => pods_synced = true,
                        Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => {
                            if let Some(reason) = index.apply(&p) {
                                self.metrics.refresh_refused("record");
                                tracing::warn!(namespace = p.metadata.namespace.as_deref().unwrap_or(""), pod = p.metadata.name.as_deref().unwrap_or(""), %reason, "a pod's sm-injector record is refused; its secrets are not refreshed for it");
                            }
                        }
                        Some(Ok(watcher::Event::Delete(p))) => index.delete(&p),
                    }
                    wake = wake.min(soon());
                }
                ev = cms.next() => {
                    match ev {
                        None => return Err(Error::WatchEnded("inventory")),
                        Some(Err(e)) => tracing::warn!(error = %e, "inventory watch error (retrying)"),
                        Some(Ok(watcher::Event::Init)) => {
                            cms_synced = false;
                            shards.clear();
                        }
                        Some(Ok(watcher::Event::InitDone)) => cms_synced = true,
                        Some(Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm))) => {
                            shards.insert(cm.metadata.name.clone().unwrap_or_default(), inventory::read(&cm));
                        }
                        Some(Ok(watcher::Event::Delete(cm))) => {
                            shards.remove(cm.metadata.name.as_deref().unwrap_or_default());
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake), if pods_synced && cms_synced => {
                    let marks = shards.values().flatten().cloned().collect();
                    let next = self.pass(&index, &mut planner, &marks).await;
                    let pause = next
                        .duration_since(SystemTime::now())
                        .unwrap_or_default()
                        .max(Duration::from_millis(200));
                    wake = tokio::time::Instant::now() + pause;
                }
            }
        }
    }

    /// One planning and what it decides. Returns when to plan again.
    async fn pass(
        &self,
        index: &Index,
        planner: &mut Planner,
        marks: &planner::Inventory,
    ) -> SystemTime {
        let now = SystemTime::now();
        let in_use = index.in_use();
        let d = planner.plan(
            &in_use,
            |ns| self.namespaces.facts(ns),
            marks,
            self.settings.gc_grace,
            now,
        );
        let mut revoked_events = BTreeMap::new();
        for (key, want, why) in &d.revoked {
            self.metrics.refresh_refused(why.metric_label());
            match why {
                Revoked::NotOptedIn => {
                    tracing::warn!(namespace = %key.namespace, secret = %want.secret, "pods name a secret in a namespace without sm-injector.io/inject=enabled; not refreshed")
                }
                Revoked::NotAllowed(rule) => {
                    tracing::warn!(namespace = %key.namespace, secret = %want.secret, %rule, "the namespace's rule no longer allows this secret; not refreshed, deleted after the grace period");
                    revoked_events.insert(key.clone(), format!(
                        "sm-injector no longer refreshes secret {:?} (backing Secret {}): namespace {:?} may read only {rule}; the backing Secret is deleted once unused for the grace period",
                        want.secret, key.backing, key.namespace
                    ));
                }
            }
        }
        if !revoked_events.is_empty() {
            workloads::warn(
                &self.recorder,
                index,
                &revoked_events,
                "SecretAccessRevoked",
                "Revoke",
            )
            .await;
        }
        if !d.due.is_empty() {
            self.refresh(index, planner, d.due).await;
        }
        collector::collect(
            &self.client,
            &self.inventory,
            &self.metrics,
            planner,
            d.marks,
            d.delete,
        )
        .await;
        let g = &d.gauges;
        self.metrics
            .refresh_gauges(g.in_use, g.failing, g.revoked, g.oldest_due);
        d.next_wake
    }

    /// Fetches the due ones (each secret version once) and writes those whose
    /// version changed.
    async fn refresh(&self, index: &Index, planner: &mut Planner, due: Vec<(Key, Want)>) {
        let mut keys: Vec<FetchKey> = due.iter().map(|(_, w)| w.fetch.clone()).collect();
        keys.sort();
        keys.dedup();
        let deadline = self.settings.aws_deadline;
        let results = match tokio::time::timeout(deadline, self.source.fetch(&keys)).await {
            Ok(r) => r,
            Err(_) => keys
                .iter()
                .map(|k| {
                    let why = format!("no answer within {}", humantime::format_duration(deadline));
                    (k.clone(), Err(FetchError::Unreachable(why)))
                })
                .collect(),
        };
        let jobs = due.into_iter().map(|(key, want)| {
            let believed = planner.version(&key).map(str::to_string);
            let value = results.get(&want.fetch).cloned();
            async move {
                let r = self.refresh_one(&key, &want, value, believed).await;
                (key, want, r)
            }
        });
        let outcomes: Vec<_> = futures::stream::iter(jobs)
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        let now = SystemTime::now();
        let (mut rotated, mut failing) = (BTreeMap::new(), BTreeMap::new());
        for (key, want, r) in outcomes {
            match r {
                Ok(Outcome::Rotated(v)) => {
                    tracing::info!(namespace = %key.namespace, secret = %want.secret, version = %v, backing = %key.backing, "backing Secret refreshed to a new version");
                    planner.succeeded(&key, &v, &want, now);
                    rotated.insert(key, v);
                }
                Ok(Outcome::Current(v)) => planner.succeeded(&key, &v, &want, now),
                Err(e) => {
                    self.metrics.refresh_failure(e.metric_label());
                    tracing::warn!(namespace = %key.namespace, secret = %want.secret, backing = %key.backing, error = %e, "refresh failed; the backing Secret is kept as it is");
                    if planner.failed(&key, want.interval, now) {
                        failing.insert(key, format!("sm-injector could not refresh {} (secret {:?}): {e}; the pods keep the values they have", want.secret, want.secret));
                    }
                }
            }
        }
        if !rotated.is_empty() {
            workloads::roll(&self.client, index, &rotated).await;
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
    }

    async fn refresh_one(
        &self,
        key: &Key,
        want: &Want,
        value: Option<Result<crate::secret::SecretValue, FetchError>>,
        believed: Option<String>,
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
            return Err(Failure::Mismatch(format!(
                "Secrets Manager names {:?} {:?}, not {:?}",
                want.fetch.id, value.name, want.secret
            )));
        }
        if believed.as_deref() == Some(value.version_id.as_str()) {
            return Ok(Outcome::Current(value.version_id));
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
        self.inventory
            .record(&key.namespace, [key.backing.as_str()])
            .await
            .map_err(Failure::Kubernetes)?;
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &key.namespace);
        match write_backing(&api, &obj, &value)
            .await
            .map_err(Failure::Kubernetes)?
        {
            Written::Wrote => {
                self.metrics.secret_write("refresh");
                Ok(Outcome::Rotated(value.version_id))
            }
            Written::Created => {
                self.metrics.secret_write("refresh");
                Ok(Outcome::Current(value.version_id))
            }
            Written::Current => Ok(Outcome::Current(value.version_id)),
            // Another writer saw a later version first.
            Written::Newer { version_id, .. } => Ok(Outcome::Current(version_id)),
        }
    }
}
