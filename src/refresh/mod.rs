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

mod check;
pub mod collector;
pub mod error;
pub mod index;
pub mod lease;
pub mod planner;
mod readers;
pub mod rollout;
pub mod workloads;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use crate::annotations::INJECTED_LABEL;
use crate::identity::Mode;
use crate::metrics::Metrics;
use crate::namespaces::Namespaces;
use crate::service_accounts::ServiceAccounts;
use crate::source::SecretSource;
use crate::store::inventory::{self, Inventory};
pub use error::{Error, Failure};
use index::{Index, Key, Limits};
use planner::{Planner, Revoked};
use rollout::Rollouts;

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
    /// ServiceAccounts' roles and the cluster's default mode, for namespaces
    /// that read with each workload's identity.
    identities: Option<(ServiceAccounts, Mode)>,
    /// Namespaces whose replicas could not be told of a rotation
    /// ([`Refresher::stamp_moved`]): told at the next passes until they are.
    unstamped: std::sync::Mutex<BTreeSet<String>>,
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
            identities: None,
            unstamped: Default::default(),
        }
    }

    /// Reads with workloads' roles where a namespace (or `default`) says so.
    pub fn with_identities(mut self, accounts: ServiceAccounts, default: Mode) -> Self {
        self.identities = Some((accounts, default));
        self
    }

    /// Runs while this replica holds the Lease ([`lease::elect`]), until
    /// `stop` turns true; then the Lease is released before this returns.
    /// Dropping this future (or the refresher failing) drops the election,
    /// which releases the Lease too.
    pub async fn run_with_lease(
        self,
        lease: lease::LeaseSettings,
        stop: watch::Receiver<bool>,
    ) -> Error {
        let (tx, rx) = watch::channel(false);
        let election = lease::elect(self.client.clone(), lease, tx, stop);
        tokio::select! {
            e = election => e,
            e = self.run(rx) => e,
        }
    }

    /// Refreshes while `leader` is true; returns why it stopped.
    pub async fn run(self, mut leader: watch::Receiver<bool>) -> Error {
        loop {
            if *leader.borrow_and_update() {
                tracing::info!("this replica leads the refresher");
                self.metrics.refresh_leader(true);
                // Overdue from the start of this leadership until its first
                // pass: a leader whose watches never sync shows as overdue.
                let started = planner::unix(SystemTime::now());
                self.metrics.refresh_gauges(0, 0, 0, started);
                let r = self.lead(&mut leader).await;
                // Leader-only gauges: a follower exports none of them.
                self.metrics.refresh_leader(false);
                self.metrics.refresh_gauges(0, 0, 0, 0);
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
        let pods = pod_watch(self.client.clone()).default_backoff();
        let cms = watcher(
            self.inventory.api().clone(),
            watcher::Config::default().labels(inventory::INVENTORY_OF),
        )
        .default_backoff()
        .map_ok(|e| e.modify(|cm: &mut ConfigMap| cm.metadata.managed_fields = None));
        let (mut pods, mut cms) = (std::pin::pin!(pods), std::pin::pin!(cms));
        let mut index = Index::new(self.settings.limits);
        let mut planner = Planner::new(self.settings.tick);
        let mut rollouts = Rollouts::default();
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
                            shards.insert(cm.metadata.name.clone().unwrap_or_default(), self.inventory.read(&cm));
                        }
                        Some(Ok(watcher::Event::Delete(cm))) => {
                            shards.remove(cm.metadata.name.as_deref().unwrap_or_default());
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake), if pods_synced && cms_synced => {
                    let marks = shards.values().flatten().cloned().collect();
                    let leading = || *leader.borrow();
                    let next = self.pass(&index, &mut planner, &mut rollouts, &marks, &leading).await;
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
        rollouts: &mut Rollouts,
        marks: &planner::Marks,
        leading: &(dyn Fn() -> bool + Sync),
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
                    // The Event does not name the secret: it is outside the
                    // namespace's rule (the log line, for the admin, does).
                    revoked_events.insert(key.clone(), format!(
                        "sm-injector no longer refreshes the backing Secret {}: namespace {:?} may read only {rule}; it is deleted once unused for the grace period",
                        key.backing, key.namespace
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
        let rotated = if d.due.is_empty() {
            BTreeSet::new()
        } else {
            self.refresh(index, planner, d.due, leading).await
        };
        self.stamp_moved(&rotated).await;
        // Level-triggered rollouts: whatever the pods run against what the
        // Secrets hold, whoever wrote it.
        let candidates = rollouts.to_check(index.behind(&planner.versions(), &rotated));
        if !candidates.is_empty() {
            workloads::roll(&self.client, rollouts, candidates, leading).await;
        }
        let vanished = if self.namespaces.is_ready() {
            planner.vanished(marks, |ns| self.namespaces.exists(ns), now)
        } else {
            vec![]
        };
        collector::collect(
            &self.client,
            &self.inventory,
            &self.metrics,
            planner,
            collector::Work {
                marks: d.marks,
                delete: d.delete,
                vanished,
            },
            leading,
        )
        .await;
        let g = &d.gauges;
        self.metrics
            .refresh_gauges(g.in_use, g.failing, g.revoked, g.oldest_due);
        d.next_wake
    }
}

/// The pods the webhook labelled ([`INJECTED_LABEL`], selected by the API
/// server), their metadata only on the wire (`as=PartialObjectMetadata`,
/// which kube asks for an `Api<PartialObjectMeta<_>>`; a test holds it): the
/// record and versions are annotations, so the pods' spec and status are
/// neither encoded for this watch nor decoded here.
fn pod_watch(
    client: kube::Client,
) -> impl futures::Stream<Item = watcher::Result<watcher::Event<PartialObjectMeta<Pod>>>> {
    watcher(
        Api::<PartialObjectMeta<Pod>>::all(client),
        watcher::Config::default().labels(INJECTED_LABEL),
    )
}

impl Refresher {
    /// Tells every replica's admissions that backing Secrets of these
    /// namespaces have just moved ([`crate::store::moves`]): they read them
    /// again rather than trust what they found before. A stamp that fails is
    /// made again at the next passes (at most `tick` apart) until it is
    /// made; meanwhile the replicas trust what they found for at most the
    /// value cache's TTL.
    async fn stamp_moved(&self, rotated: &BTreeSet<Key>) {
        let pending = std::mem::take(&mut *self.unstamped());
        let mut namespaces = pending.clone();
        namespaces.extend(rotated.iter().map(|k| k.namespace.clone()));
        let stamps: Vec<_> = namespaces
            .into_iter()
            .map(|ns| {
                let inventory = self.inventory.clone();
                async move {
                    let r = inventory.stamp_moved(&ns).await;
                    (ns, r)
                }
            })
            .collect();
        let failed: Vec<(String, String)> = futures::stream::iter(stamps)
            .buffer_unordered(self.settings.concurrency.max(1))
            .filter_map(|(ns, r)| std::future::ready(r.err().map(|e| (ns, e))))
            .collect()
            .await;
        for (ns, e) in failed {
            // Logged once per failing spell, not at every pass.
            if !pending.contains(&ns) {
                tracing::warn!(namespace = %ns, error = %e, "could not tell the replicas of a rotation (trying again at each pass until it works); their admissions trust what they found for up to the cache TTL meanwhile");
            }
            self.unstamped().insert(ns);
        }
    }

    fn unstamped(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.unstamped.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests;
