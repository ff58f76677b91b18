//! The background refresher (SPEC sections 5 and 7): keeps backing Secrets on
//! the version Secrets Manager has now. One replica runs it at a time, chosen
//! with a Kubernetes Lease; every replica keeps serving admissions.
//!
//! The backing Secrets in use are read from the records sm-injector writes on
//! the pods it mutates ([`crate::annotations::INJECTED`]), through pod metadata
//! only: no Secret is listed or read. A record on a pod the webhook did not
//! mutate could be forged, so every entry is checked again: its backing name
//! must be the one sm-injector derives for it, and the namespace's access rule
//! must allow the secret.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};

use crate::annotations::{INJECTED, REFRESH_NOW, RESTART_ON_ROTATION, ROTATED_VERSIONS};
use crate::backing::{self, Form};
use crate::metrics::Metrics;
use crate::namespaces::Namespaces;
use crate::plan::Record;
use crate::reference::{self, Version};
use crate::source::{FetchKey, SecretSource};
use crate::sync::{kube_reason, now_rfc3339};

/// One backing Secret in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub secret: String,
    pub version: Version,
    pub form: Form,
    /// The shortest refresh interval among the pods that use it.
    pub interval: Duration,
}

/// The backing Secrets the pods' records name, by (namespace, backing name).
/// Entries that do not parse, or whose backing name is not the one derived from
/// the secret, version and form, are left out.
pub fn in_use<'a>(
    pods: impl IntoIterator<Item = (&'a str, Option<&'a BTreeMap<String, String>>)>,
) -> BTreeMap<(String, String), Want> {
    let mut out: BTreeMap<(String, String), Want> = BTreeMap::new();
    for (ns, annotations) in pods {
        let Some(text) = annotations.and_then(|a| a.get(INJECTED)) else {
            continue;
        };
        let Ok(record) = serde_json::from_str::<Record>(text) else {
            continue;
        };
        let Ok(interval) = humantime::parse_duration(&record.refresh_interval) else {
            continue;
        };
        for e in record.secrets {
            let Ok(r) = reference::parse(&format!("{}?{}", e.secret, e.version)) else {
                continue;
            };
            let Some(form) = Form::parse(&e.form) else {
                continue;
            };
            if r.is_arn() || backing::name(&r.id, &r.version, form) != e.backing {
                continue;
            }
            let want = out.entry((ns.to_string(), e.backing)).or_insert(Want {
                secret: r.id,
                version: r.version,
                form,
                interval,
            });
            want.interval = want.interval.min(interval);
        }
    }
    out
}

/// When a backing Secret was last checked against Secrets Manager, and how
/// many attempts have failed in a row since.
struct Known {
    checked: Instant,
    failures: u32,
}

impl Known {
    fn ok() -> Self {
        Known {
            checked: Instant::now(),
            failures: 0,
        }
    }
}

/// When an entry is due again: after its interval when the last attempt
/// succeeded; after an exponential backoff from `tick` (capped at the
/// interval) while attempts fail.
fn next_attempt_after(k: &Known, interval: Duration, tick: Duration) -> Duration {
    if k.failures == 0 {
        interval
    } else {
        tick.saturating_mul(1u32 << k.failures.min(16))
            .min(interval)
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub in_use: usize,
    pub due: usize,
    pub written: usize,
    pub unchanged: usize,
    pub failed: usize,
    pub refused: usize,
    /// Workloads with restart-on-rotation rolled because a secret they use changed.
    pub rolled: usize,
    /// Backing Secrets deleted after the grace period unused.
    pub deleted: usize,
}

/// Garbage collection: backing Secrets no pod has used for `grace` are deleted.
/// When each was last in use is kept in the ConfigMap `configmap` in
/// `namespace` (sm-injector's own), so that a new leader knows the Secrets whose
/// pods went away before it took over.
#[derive(Debug, Clone)]
pub struct Gc {
    pub namespace: String,
    pub configmap: String,
    pub grace: Duration,
}

const INVENTORY_KEY: &str = "last-used.json";

pub struct Refresher {
    client: kube::Client,
    source: std::sync::Arc<dyn SecretSource>,
    namespaces: Namespaces,
    metrics: Metrics,
    known: HashMap<(String, String), Known>,
    gc: Option<Gc>,
    /// "namespace/backing name" → when it was last in use (Unix seconds).
    inventory: Option<BTreeMap<String, u64>>,
    tick: Duration,
    recorder: kube::runtime::events::Recorder,
    /// The last `sm-injector.io/refresh-now` value acted on, per namespace.
    forced: HashMap<String, String>,
}

impl Refresher {
    pub fn new(
        client: kube::Client,
        source: std::sync::Arc<dyn SecretSource>,
        namespaces: Namespaces,
        metrics: Metrics,
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
            known: HashMap::new(),
            gc: None,
            inventory: None,
            tick: Duration::from_secs(30),
            forced: HashMap::new(),
            recorder,
        }
    }

    /// Counts a failed attempt for a backing Secret (for the backoff). The
    /// time of its last success stays as it was.
    fn failed_attempt(&mut self, ns: &str, name: &str) -> u32 {
        let k = self
            .known
            .entry((ns.to_string(), name.to_string()))
            .or_insert(Known {
                checked: Instant::now(),
                failures: 0,
            });
        k.failures += 1;
        k.checked = Instant::now();
        k.failures
    }

    /// The pause between passes, which is also the first backoff step.
    pub fn with_tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// Turns on garbage collection.
    pub fn with_gc(mut self, gc: Gc) -> Self {
        self.gc = Some(gc);
        self
    }

    /// Records which backing Secrets are in use and deletes those unused for
    /// the grace period. Returns how many were deleted.
    async fn collect_garbage(
        &mut self,
        wants: &BTreeMap<(String, String), Want>,
    ) -> Result<usize, String> {
        use k8s_openapi::api::core::v1::ConfigMap;
        let Some(gc) = self.gc.clone() else {
            return Ok(0);
        };
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &gc.namespace);
        if self.inventory.is_none() {
            let loaded = match cms.get_opt(&gc.configmap).await {
                Ok(Some(cm)) => cm
                    .data
                    .and_then(|d| d.get(INVENTORY_KEY).cloned())
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or_default(),
                Ok(None) => BTreeMap::new(),
                Err(e) => return Err(format!("cannot read the inventory: {}", kube_reason(&e))),
            };
            self.inventory = Some(loaded);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let inventory = self.inventory.as_mut().expect("loaded above");
        let before = inventory.clone();
        for (ns, name) in wants.keys() {
            inventory.insert(format!("{ns}/{name}"), now);
        }
        let grace = gc.grace.as_secs();
        let expired: Vec<String> = inventory
            .iter()
            .filter(|(_, last)| now.saturating_sub(**last) > grace)
            .map(|(k, _)| k.clone())
            .collect();
        let mut deleted = 0;
        for key in expired {
            let Some((ns, name)) = key.split_once('/') else {
                inventory.remove(&key);
                continue;
            };
            match Api::<Secret>::namespaced(self.client.clone(), ns)
                .delete(name, &kube::api::DeleteParams::default())
                .await
            {
                Ok(_) => {
                    deleted += 1;
                    self.metrics.secret_write("delete");
                    tracing::info!(
                        namespace = ns,
                        backing = name,
                        "deleted a backing Secret no pod has used for the grace period"
                    );
                    inventory.remove(&key);
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    inventory.remove(&key);
                }
                Err(e) => {
                    tracing::warn!(namespace = ns, backing = name, error = %kube_reason(&e), "could not delete an unused backing Secret")
                }
            }
        }
        // Written when the set changes, and when the stamps of the Secrets in
        // use would otherwise fall a quarter of the grace period behind.
        let stale = before.values().any(|t| now.saturating_sub(*t) > grace / 4);
        let keys_changed = before.keys().ne(inventory.keys());
        if keys_changed || stale {
            let cm = serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": gc.configmap, "namespace": gc.namespace},
                "data": {INVENTORY_KEY: serde_json::to_string(inventory).expect("a map serializes")}
            });
            cms.patch(
                &gc.configmap,
                &PatchParams::apply(backing::FIELD_MANAGER).force(),
                &Patch::Apply(&cm),
            )
            .await
            .map_err(|e| format!("cannot write the inventory: {}", kube_reason(&e)))?;
        }
        Ok(deleted)
    }

    /// One pass: refresh every backing Secret whose interval has passed,
    /// asking Secrets Manager in batches and writing only changed versions.
    /// A failure leaves the Secret as it is and is retried on the next pass.
    pub async fn refresh_once(&mut self) -> Result<Report, String> {
        let pods = Api::<Pod>::all(self.client.clone())
            .list_metadata(&ListParams::default())
            .await
            .map_err(|e| format!("cannot list pods: {}", kube_reason(&e)))?;
        let wants = in_use(pods.items.iter().map(|p| {
            (
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.annotations.as_ref(),
            )
        }));
        let mut report = Report {
            in_use: wants.len(),
            ..Default::default()
        };
        match self.collect_garbage(&wants).await {
            Ok(n) => report.deleted = n,
            Err(e) => tracing::warn!(error = %e, "garbage collection skipped"),
        }
        // An admin's forced refresh: a new refresh-now value on a Namespace
        // makes its named secret due now.
        let namespaces: std::collections::BTreeSet<&String> =
            wants.keys().map(|(ns, _)| ns).collect();
        for ns in namespaces {
            let Some(value) = self.namespaces.annotation(ns, REFRESH_NOW) else {
                continue;
            };
            if self.forced.get(ns) == Some(&value) {
                continue;
            }
            let secret = value
                .rsplit_once('@')
                .map_or(value.as_str(), |(s, _)| s)
                .to_string();
            let forced: Vec<(String, String)> = wants
                .iter()
                .filter(|((wns, _), w)| wns == ns && (secret == "*" || w.secret == secret))
                .map(|(k, _)| k.clone())
                .collect();
            tracing::info!(namespace = %ns, secret = %secret, backing_secrets = forced.len(), "refresh forced by the Namespace annotation {REFRESH_NOW}");
            for k in forced {
                self.known.remove(&k);
            }
            self.forced.insert(ns.clone(), value);
        }
        let mut due = vec![];
        for (key, want) in &wants {
            if self.known.get(key).is_some_and(|k| {
                k.checked.elapsed() < next_attempt_after(k, want.interval, self.tick)
            }) {
                continue;
            }
            // The namespace's access rule, again: a record can be forged.
            match self.namespaces.rule(&key.0).await {
                Ok(rule) if rule.allows(&want.secret) => due.push((key.clone(), want.clone())),
                Ok(_) => {
                    report.refused += 1;
                    tracing::warn!(namespace = %key.0, secret = %want.secret, "a pod record names a secret its namespace may not read; not refreshed");
                }
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(namespace = %key.0, error = %e, "refresh skipped");
                }
            }
        }
        report.due = due.len();
        if due.is_empty() {
            return Ok(report);
        }
        let mut rotated: Vec<(String, String, String)> = vec![];
        let mut newly_failing: Vec<(String, String, String)> = vec![];
        let mut keys: Vec<FetchKey> = due
            .iter()
            .map(|(_, w)| FetchKey {
                id: w.secret.clone(),
                version: w.version.clone(),
            })
            .collect();
        keys.sort();
        keys.dedup();
        let results = self.source.fetch(&keys).await;
        for ((ns, name), want) in due {
            let fk = FetchKey {
                id: want.secret.clone(),
                version: want.version.clone(),
            };
            let value = match results.get(&fk) {
                Some(Ok(v)) => v,
                Some(Err(e)) => {
                    report.failed += 1;
                    self.metrics.refresh_failure();
                    if self.failed_attempt(&ns, &name) == 1 {
                        newly_failing.push((
                            ns.clone(),
                            name.clone(),
                            format!("secret {:?} {e}", want.secret),
                        ));
                    }
                    tracing::warn!(namespace = %ns, secret = %want.secret, error = %e, "refresh failed; the backing Secret is kept as it is");
                    continue;
                }
                None => {
                    report.failed += 1;
                    let _ = self.failed_attempt(&ns, &name);
                    continue;
                }
            };
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
            let key = (ns.clone(), name.clone());
            // The version the Secret holds now (an admission on another replica
            // may have written it), through an empty merge patch: no read verb.
            let current = match api
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({})),
                )
                .await
            {
                Ok(s) => s
                    .metadata
                    .annotations
                    .and_then(|a| a.get(backing::ANN_VERSION_ID).cloned()),
                Err(_) => None,
            };
            if current.as_deref() == Some(value.version_id.as_str()) {
                report.unchanged += 1;
                self.known.insert(key, Known::ok());
                continue;
            }
            let data = match backing::data(value, want.form) {
                Ok(d) => d,
                Err(e) => {
                    report.failed += 1;
                    self.metrics.refresh_failure();
                    let _ = self.failed_attempt(&ns, &name);
                    tracing::warn!(namespace = %ns, secret = %want.secret, error = %e, "the new version cannot be written; the backing Secret is kept as it is");
                    continue;
                }
            };
            let obj = backing::object(&ns, value, &want.version, want.form, data, &now_rfc3339());
            self.metrics.secret_write("refresh");
            match api
                .patch(
                    &name,
                    &PatchParams::apply(backing::FIELD_MANAGER).force(),
                    &Patch::Apply(&obj),
                )
                .await
            {
                Ok(_) => {
                    report.written += 1;
                    rotated.push((ns.clone(), name.clone(), value.version_id.clone()));
                    tracing::info!(namespace = %ns, secret = %want.secret, version = %value.version_id, backing = %name, "backing Secret refreshed to a new version");
                    self.known.insert(key, Known::ok());
                }
                Err(e) => {
                    report.failed += 1;
                    self.metrics.refresh_failure();
                    let _ = self.failed_attempt(&ns, &name);
                    tracing::warn!(namespace = %ns, backing = %name, error = %kube_reason(&e), "could not write the backing Secret");
                }
            }
        }
        // Forget what is no longer in use.
        self.known.retain(|k, _| wants.contains_key(k));
        let (oldest, failing) = self.known.values().fold((0, 0), |(o, f), k| {
            let age = if k.failures == 0 {
                k.checked.elapsed().as_secs() as i64
            } else {
                0
            };
            (o.max(age), f + i64::from(k.failures > 0))
        });
        self.metrics.refresh_state(oldest, failing);
        if !rotated.is_empty() {
            report.rolled = self.roll(&pods.items, &rotated).await;
        }
        if !newly_failing.is_empty() {
            self.warn_workloads(&pods.items, &newly_failing).await;
        }
        Ok(report)
    }

    /// The workloads whose pods use any of `backings` ((namespace, backing
    /// name)): a pod's Deployment (through its ReplicaSet), StatefulSet or
    /// DaemonSet, or the pod itself when no controller owns it. Each comes with
    /// the backing Secrets it uses among those.
    async fn workloads_of(
        &self,
        pods: &[kube::core::PartialObjectMeta<Pod>],
        backings: &[(String, String)],
    ) -> BTreeMap<(String, &'static str, String), Vec<String>> {
        use k8s_openapi::api::apps::v1::ReplicaSet;
        let mut out: BTreeMap<(String, &'static str, String), Vec<String>> = BTreeMap::new();
        for p in pods {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let wants = in_use([(ns.as_str(), p.metadata.annotations.as_ref())]);
            let uses: Vec<String> = backings
                .iter()
                .filter(|(bns, name)| *bns == ns && wants.contains_key(&(ns.clone(), name.clone())))
                .map(|(_, name)| name.clone())
                .collect();
            if uses.is_empty() {
                continue;
            }
            let owner = p
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true));
            let target = match owner {
                None => p.metadata.name.clone().map(|n| ("Pod", n)),
                Some(o) if o.kind == "StatefulSet" => Some(("StatefulSet", o.name.clone())),
                Some(o) if o.kind == "DaemonSet" => Some(("DaemonSet", o.name.clone())),
                Some(o) if o.kind == "ReplicaSet" => {
                    Api::<ReplicaSet>::namespaced(self.client.clone(), &ns)
                        .get_metadata(&o.name)
                        .await
                        .ok()
                        .and_then(|rs| {
                            rs.metadata
                                .owner_references?
                                .into_iter()
                                .find(|o| o.kind == "Deployment" && o.controller == Some(true))
                                .map(|o| ("Deployment", o.name))
                        })
                }
                Some(_) => None,
            };
            if let Some((kind, name)) = target {
                let entry = out.entry((ns.clone(), kind, name)).or_default();
                for u in uses {
                    if !entry.contains(&u) {
                        entry.push(u);
                    }
                }
            }
        }
        out
    }

    /// A Warning Event on each workload using a backing Secret whose refresh
    /// just started failing.
    async fn warn_workloads(
        &self,
        pods: &[kube::core::PartialObjectMeta<Pod>],
        failed: &[(String, String, String)],
    ) {
        let backings: Vec<(String, String)> = failed
            .iter()
            .map(|(ns, n, _)| (ns.clone(), n.clone()))
            .collect();
        for ((ns, kind, name), uses) in self.workloads_of(pods, &backings).await {
            let reasons: Vec<&str> = failed
                .iter()
                .filter(|(fns, n, _)| *fns == ns && uses.contains(n))
                .map(|(_, _, r)| r.as_str())
                .collect();
            let event = kube::runtime::events::Event {
                type_: kube::runtime::events::EventType::Warning,
                reason: "SecretRefreshFailed".into(),
                note: Some(format!(
                    "sm-injector could not refresh {}: {}; the pods keep the values they have",
                    uses.join(", "),
                    reasons.join("; ")
                )),
                action: "Refresh".into(),
                secondary: None,
            };
            let api_version = match kind {
                "Pod" => "v1",
                _ => "apps/v1",
            };
            let reference = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            };
            if let Err(e) = self.recorder.publish(&event, &reference).await {
                tracing::warn!(namespace = %ns, kind, name = %name, error = %kube_reason(&e), "could not record an Event");
            }
        }
    }

    /// The API of a Deployment, StatefulSet or DaemonSet in `ns`.
    fn workload_api(&self, ns: &str, kind: &str) -> Api<kube::core::DynamicObject> {
        use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
        use kube::core::ApiResource;
        let resource = match kind {
            "Deployment" => ApiResource::erase::<Deployment>(&()),
            "StatefulSet" => ApiResource::erase::<StatefulSet>(&()),
            _ => ApiResource::erase::<DaemonSet>(&()),
        };
        Api::namespaced_with(self.client.clone(), ns, &resource)
    }

    /// Rolls the Deployments, StatefulSets and DaemonSets that carry
    /// `sm-injector.io/restart-on-rotation: "true"` and whose pods use a backing
    /// Secret that just changed version: their pod template gets the new
    /// versions in [`ROTATED_VERSIONS`], so their own controller rolls them.
    async fn roll(
        &self,
        pods: &[kube::core::PartialObjectMeta<Pod>],
        rotated: &[(String, String, String)],
    ) -> usize {
        let backings: Vec<(String, String)> = rotated
            .iter()
            .map(|(ns, n, _)| (ns.clone(), n.clone()))
            .collect();
        let workloads: BTreeMap<(String, &'static str, String), BTreeMap<String, String>> = self
            .workloads_of(pods, &backings)
            .await
            .into_iter()
            .filter(|((_, kind, _), _)| *kind != "Pod")
            .map(|((ns, kind, name), uses)| {
                let versions = rotated
                    .iter()
                    .filter(|(rns, n, _)| *rns == ns && uses.contains(n))
                    .map(|(_, n, v)| (n.clone(), v.clone()))
                    .collect();
                ((ns, kind, name), versions)
            })
            .collect();
        let mut rolled = 0;
        for ((ns, kind, name), versions) in workloads {
            let api = self.workload_api(&ns, kind);
            let opted_in = api
                .get_metadata(&name)
                .await
                .ok()
                .and_then(|o| o.metadata.annotations)
                .and_then(|a| a.get(RESTART_ON_ROTATION).cloned())
                .is_some_and(|v| v == "true");
            if !opted_in {
                continue;
            }
            let patch = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
                ROTATED_VERSIONS: serde_json::to_string(&versions).expect("a map serializes")
            }}}}});
            let pp = PatchParams {
                field_manager: Some(backing::FIELD_MANAGER.into()),
                ..Default::default()
            };
            let result = api
                .patch(&name, &pp, &Patch::Merge(&patch))
                .await
                .map(|_| ());
            match result {
                Ok(()) => {
                    rolled += 1;
                    tracing::info!(namespace = %ns, kind, name = %name, "rolling the workload: a secret it injects has a new version");
                }
                Err(e) => {
                    tracing::warn!(namespace = %ns, kind, name = %name, error = %kube_reason(&e), "could not roll the workload")
                }
            }
        }
        rolled
    }

    /// Runs passes every `tick` while this replica holds the Lease `lease_name`
    /// in `namespace`; every replica may call it, one refreshes.
    pub async fn run_with_lease(
        self,
        namespace: &str,
        lease_name: &str,
        identity: String,
        lease_seconds: u64,
        tick: Duration,
    ) -> anyhow::Result<()> {
        let manager = kube_lease_manager::LeaseManagerBuilder::new(self.client.clone(), lease_name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(lease_seconds)
            .with_grace(lease_seconds.div_ceil(3).max(1))
            .build()
            .await?;
        let mut this = self.with_tick(tick);
        let (mut leader, _task) = manager.watch().await;
        loop {
            if *leader.borrow_and_update() {
                match this.refresh_once().await {
                    Ok(r) if r.written + r.failed + r.refused > 0 => {
                        tracing::info!(?r, "refresh pass")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "refresh pass failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(tick) => {}
                    r = leader.changed() => if r.is_err() { anyhow::bail!("the lease manager stopped") },
                }
            } else {
                // A new leader checks everything on its first pass and reads
                // the inventory afresh.
                this.known.clear();
                this.inventory = None;
                if leader.changed().await.is_err() {
                    anyhow::bail!("the lease manager stopped");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::RecordEntry;

    fn record(interval: &str, entries: &[(&str, &str, Form)]) -> BTreeMap<String, String> {
        let r = Record {
            refresh_interval: interval.into(),
            secrets: entries
                .iter()
                .map(|(secret, version, form)| {
                    let v = reference::parse(&format!("{secret}?{version}"))
                        .unwrap()
                        .version;
                    RecordEntry {
                        backing: backing::name(secret, &v, *form),
                        secret: secret.to_string(),
                        version: version.to_string(),
                        form: form.as_str().into(),
                    }
                })
                .collect(),
        };
        BTreeMap::from([(INJECTED.to_string(), serde_json::to_string(&r).unwrap())])
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_interval() {
        let tick = Duration::from_secs(30);
        let hour = Duration::from_secs(3600);
        let k = |failures| Known {
            checked: Instant::now(),
            failures,
        };
        assert_eq!(next_attempt_after(&k(0), hour, tick), hour);
        assert_eq!(
            next_attempt_after(&k(1), hour, tick),
            Duration::from_secs(60)
        );
        assert_eq!(
            next_attempt_after(&k(3), hour, tick),
            Duration::from_secs(240)
        );
        assert_eq!(next_attempt_after(&k(10), hour, tick), hour);
        assert_eq!(next_attempt_after(&k(40), hour, tick), hour);
    }

    #[test]
    fn shortest_interval_wins_and_forged_entries_are_dropped() {
        let a = record("1h", &[("n/db", "versionStage=AWSCURRENT", Form::Keys)]);
        let b = record(
            "10m",
            &[
                ("n/db", "versionStage=AWSCURRENT", Form::Keys),
                ("n/x", "versionId=v1", Form::Raw),
            ],
        );
        let mut forged = record("1m", &[("n/db", "versionStage=AWSCURRENT", Form::Keys)]);
        forged.insert(
            INJECTED.into(),
            forged[INJECTED].replace("sm-n-db-", "sm-someone-else-"),
        );
        let garbage = BTreeMap::from([(INJECTED.to_string(), "{not json".to_string())]);
        let w = in_use([
            ("n", Some(&a)),
            ("n", Some(&b)),
            ("n", Some(&forged)),
            ("n", Some(&garbage)),
            ("n", None),
        ]);
        assert_eq!(w.len(), 2, "{w:?}");
        let db = &w[&(
            "n".to_string(),
            backing::name("n/db", &Version::current(), Form::Keys),
        )];
        assert_eq!(db.interval, Duration::from_secs(600));
        let x = w.values().find(|w| w.secret == "n/x").unwrap();
        assert_eq!((x.form, &x.version), (Form::Raw, &Version::Id("v1".into())));
    }
}
