//! The store of backing Secrets in Kubernetes (SPEC section 5), used by both
//! writers and living in neither: the admission path ([`Syncer::ensure`]) and
//! the refresher ([`write_backing`], [`delete_backing`], [`inventory`]).
//!
//! The [`rule`] says who may write what: admissions create missing backing
//! Secrets and otherwise answer against what they hold, telling the refresher
//! when it differs from what they fetched (an inventory mark,
//! [`inventory::nudge_mark`]); only the refresher's leader moves a Secret to
//! another version. A Secret this process created (or found holding the
//! fetched version) is not read again for the cache TTL, or until the leader
//! moves one of the namespace's backing Secrets ([`moves`]; [`KNOWN_TTL`]
//! while this replica cannot tell), keyed by the namespace's UID, so a warm
//! admission makes no Kubernetes call, and a namespace deleted and made again
//! is written afresh.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

mod ensured;
mod existing;
pub mod inventory;
pub mod moves;
mod nudge;
pub mod rule;
mod write;

pub use ensured::{Ensured, VOUCHED_FOR, Vouched};
pub use write::{WriteError, Written, create_backing, delete_backing, read, write_backing};

use crate::backing;
use crate::fetch::FetchKey;
use crate::lookup::{Hashing, Strs};
use crate::metrics::Metrics;
use crate::plan::{Backing, Content, Plan};
use inventory::Inventory;
use moves::Moves;
use rule::Writer;

/// How long an admission trusts that a backing Secret holds the version it
/// created or found, without reading it again (at most the cache TTL), when
/// it does not learn of the leader's rotations ([`moves`]): after a rotation,
/// admissions of other replicas notice the new version within this time.
/// When it does, it trusts that for the cache TTL, or until the leader moves
/// one of the namespace's backing Secrets. Either way a Secret deleted by
/// hand is written again by the first admission after the trust ends.
pub const KNOWN_TTL: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Syncer {
    client: kube::Client,
    /// (namespace UID, backing Secret name, version id) found or created by
    /// this process lately: under which generation of the namespace's
    /// [`Moves`], and when.
    known: moka::future::Cache<(String, String, String), Found, Hashing>,
    /// (namespace, backing Secret name, version fetched) the refresher was
    /// told about lately.
    nudged: moka::future::Cache<(String, String, String), (), Hashing>,
    /// How long a kept decision trusts its warm path's finding ([`Vouched`]).
    vouch_for: Duration,
    metrics: Metrics,
    inventory: Option<Inventory>,
    /// What the leader's rotations tell this replica (never in sync unless
    /// [`Syncer::with_moves`]).
    moves: Moves,
    /// How long what was found is trusted while `moves` is in sync, and
    /// while it is not.
    trust: Duration,
    short: Duration,
}

/// When and under which generation a backing Secret was found holding a
/// version (or created so).
#[derive(Clone, Copy)]
struct Found {
    generation: u64,
    at: std::time::Instant,
}

/// Now, as RFC 3339 in UTC with second precision.
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn memory<V: Clone + Send + Sync + 'static>(
    ttl: Duration,
) -> moka::future::Cache<(String, String, String), V, Hashing> {
    moka::future::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(ttl)
        .build_with_hasher(Hashing::default())
}

enum Done {
    /// It holds what the plan fetched.
    Held,
    Differs {
        fetch: FetchKey,
        held: String,
    },
    Warning {
        held: String,
        warning: String,
    },
}

/// Why a shared write did not leave the Secret at the fetched version (not
/// remembered, so the next admission reads again).
#[derive(Debug, Clone)]
enum NotWritten {
    Differs {
        version_id: String,
        keys: BTreeSet<String>,
    },
    Failed(String),
}

/// The keys of `required` not in `present`, quoted, for a message.
fn missing_keys(required: &BTreeSet<&str>, present: &BTreeSet<String>) -> String {
    required
        .iter()
        .filter(|k| !present.contains(**k))
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Syncer {
    /// `ttl`: the value cache's; what an admission knows of a backing Secret
    /// is trusted for the shorter of it and [`KNOWN_TTL`].
    pub fn new(client: kube::Client, ttl: Duration, metrics: Metrics) -> Self {
        Syncer {
            client,
            known: memory(ttl),
            nudged: memory(ttl.min(KNOWN_TTL)),
            vouch_for: VOUCHED_FOR.min(ttl.min(KNOWN_TTL) / 10),
            metrics,
            inventory: None,
            moves: Moves::default(),
            trust: ttl,
            short: ttl.min(KNOWN_TTL),
        }
    }

    /// Learns of the leader's rotations from `moves` (fed by
    /// [`moves::watch`]): what an admission found is trusted for the cache TTL
    /// while that watch is in sync, and until the namespace's generation
    /// changes.
    pub fn with_moves(mut self, moves: Moves) -> Self {
        self.moves = moves;
        self
    }

    /// Whether `found` still holds under `generation`.
    fn trusted(&self, found: Found, generation: u64) -> bool {
        let trust = if self.moves.watching() {
            self.trust
        } else {
            self.short
        };
        found.generation == generation && found.at.elapsed() < trust
    }

    /// Records every backing Secret this process writes in the collector's
    /// inventory before writing it, so that none is left behind when a later
    /// admission stage rejects the pod.
    pub fn with_inventory(mut self, inventory: Inventory) -> Self {
        self.inventory = Some(inventory);
        self
    }

    /// Makes sure every backing Secret of `plan` exists in `namespace` (whose
    /// UID is `uid`, when the Namespace cache has it): creates the missing
    /// ones and answers against what the others hold ([`rule`]). With
    /// `dry_run`, nothing is written. Returns what the Secrets hold, the
    /// admission warnings and the cached values found stale, or the reasons
    /// to deny. A kept decision passes its [`Vouched`]: while it holds, all
    /// is as found last time and nothing is asked again; each time the warm
    /// path finds all so, it is renewed.
    pub async fn ensure(
        &self,
        namespace: &str,
        uid: Option<&str>,
        plan: &Plan,
        dry_run: bool,
        vouched: Option<&Vouched>,
    ) -> Result<Ensured, Vec<String>> {
        // The owned form of `uid`, or of the name when the cache has no UID yet
        // (a '/' is in neither a UID nor a name, so the two never meet).
        let scope: std::borrow::Cow<str> = match uid {
            Some(u) => u.into(),
            None => format!("/{namespace}").into(),
        };
        // The generation before anything is looked at: a move meanwhile is
        // not missed. The clock is read for a kept decision's admissions only.
        let generation = self.moves.generation(namespace);
        if vouched.is_some_and(|v| v.holds(&scope, generation, std::time::Instant::now())) {
            return Ok(Ensured::default());
        }
        let mut out = Ensured::default();
        // The namespace's first backing Secrets: created without a read first.
        let mut first = false;
        if let Some(inv) = self.inventory.as_ref().filter(|_| !dry_run) {
            // Recorded before anything is written, all in one write: a
            // create where the inventories' watch has seen none (the
            // namespace's first pod), else a patch.
            let fresh = plan
                .backing
                .iter()
                .filter(|b| matches!(b.content, Content::Fresh { .. }))
                .map(|b| b.name.as_str());
            let absent = || self.moves.has_inventory(namespace) == Some(false);
            match inv.record(namespace, fresh, absent).await {
                Ok(made) => first = made,
                Err(e) => {
                    // The pod is admitted; only a Secret written for a pod that a
                    // later stage rejects could be left uncollected.
                    tracing::warn!(namespace, error = %e, "could not record backing Secrets in the inventory; admitting all the same");
                    out.warnings.push(format!("sm-injector could not record its backing Secrets in its inventory ({e}); the pod is admitted"));
                }
            }
        }
        // The warm path: every value fetched, and each backing Secret known to
        // hold it (or nothing to write on a dry run). Answered here, without
        // building a write for each.
        let mut warm = true;
        for b in &plan.backing {
            warm = match &b.content {
                Content::Fresh { value } => {
                    dry_run
                        || self
                            .known
                            .get(&Strs([&scope, &b.name, &value.version_id]))
                            .await
                            .is_some_and(|f| self.trusted(f, generation))
                }
                Content::Unreachable { .. } => false,
            };
            if !warm {
                break;
            }
        }
        if warm {
            if let Some(v) = vouched.filter(|_| !dry_run && out.warnings.is_empty()) {
                v.found(
                    &scope,
                    generation,
                    std::time::Instant::now() + self.vouch_for,
                );
            }
            return Ok(out);
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let jobs = plan.backing.iter().map(|b| {
            let at = (&*scope, generation);
            self.ensure_one(&api, namespace, at, (plan, b), dry_run, first)
        });
        let results = futures::future::join_all(jobs).await;
        let mut errors = vec![];
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(Done::Held) => {}
                Ok(Done::Differs { fetch, held }) => {
                    out.stale.push(fetch);
                    out.held.push((i, held));
                }
                Ok(Done::Warning { held, warning }) => {
                    out.warnings.push(warning);
                    out.held.push((i, held));
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    async fn ensure_one(
        &self,
        api: &Api<Secret>,
        namespace: &str,
        (scope, generation): (&str, u64),
        (plan, b): (&Plan, &Backing),
        dry_run: bool,
        first: bool,
    ) -> Result<Done, String> {
        let value = match &b.content {
            Content::Fresh { value } => value,
            Content::Unreachable { reason } => {
                let required = plan.required_keys(&b.name);
                return self
                    .existing(api, namespace, b, &required, reason, dry_run)
                    .await;
            }
        };
        if dry_run {
            return Ok(Done::Held);
        }
        // Concurrent admissions needing the same Secret share one write. What
        // was found before and is no longer trusted is found again.
        let key = (scope.to_string(), b.name.clone(), value.version_id.clone());
        if self
            .known
            .get(&key)
            .await
            .is_some_and(|f| !self.trusted(f, generation))
        {
            self.known.invalidate(&key).await;
        }
        // The generation before the read: a move during it is not missed.
        let found = Found {
            generation,
            at: std::time::Instant::now(),
        };
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
                let written = if first {
                    create_backing(api, &obj).await
                } else {
                    self.metrics.secret_read("admission");
                    write_backing(api, &obj, Writer::Admission, &|| true).await
                };
                match written {
                    Ok(Written::Created) => {
                        self.metrics.secret_write("apply");
                        Ok(found)
                    }
                    Ok(Written::Differs { version_id, keys }) => {
                        Err(NotWritten::Differs { version_id, keys })
                    }
                    Ok(_) => Ok(found),
                    Err(e) => Err(NotWritten::Failed(format!(
                        "could not write the backing Secret {namespace}/{}: {e}",
                        b.name
                    ))),
                }
            })
            .await;
        match r.map_err(|e| (*e).clone()) {
            Ok(_) => Ok(Done::Held),
            Err(NotWritten::Failed(e)) => Err(e),
            // The Secret holds another version (or was changed): the pod reads
            // what it holds (it names the Secret, not a value), so its keys
            // must be there; the refresher is told, and brings it to what
            // Secrets Manager holds.
            Err(NotWritten::Differs { version_id, keys }) => {
                self.nudge(namespace, &b.name, &value.version_id).await;
                let missing = missing_keys(&plan.required_keys(&b.name), &keys);
                if !missing.is_empty() {
                    return Err(format!(
                        "the backing Secret {namespace}/{} holds version {version_id} of {:?}, which has no key {missing}; sm-injector's refresher is bringing it to the version Secrets Manager has, retry shortly",
                        b.name, b.secret_name
                    ));
                }
                Ok(Done::Differs {
                    fetch: b.fetch.clone(),
                    held: version_id,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;
