//! Decisions kept for pods that ask for the same thing. The replicas of a
//! Deployment, the pods of a StatefulSet or of a Job's runs differ in their
//! names and in the ServiceAccount token volume the API server adds to each
//! (`kube-api-access-<random>`), but not in what sm-injector reads to decide:
//! the `sm-injector.io/` annotations, each container's name, env and envFrom,
//! and whether the pod has labels. That is the [`key`], read from the
//! review's first look at its body ([`crate::glance`]) whether the pod is
//! then answered from a kept decision or decided afresh.
//!
//! A decision, the plan and its patch, is a function of that key, the
//! namespace's access rule and the secret values it read (`plan_pod` and
//! `patch::build` read nothing else of the pod when the plan mounts no file;
//! the settings are fixed for the process). So it is kept with the rule and
//! the values it was made from, and it is used again only while the
//! namespace's rule is the same `Arc` and every value is still the same `Arc`
//! in the secret cache: any change to either (an annotation edited, a value
//! expired, refetched or found stale) is a new `Arc`, and the pod is decided
//! afresh. Each value is asked whether the cache still holds it
//! ([`crate::cache::CachedSource::still_holds`]: marked when let go, and its
//! TTL) rather than looked up, so a kept admission does not count as a use
//! of its values in the cache's eviction order; under its byte bound, values
//! only kept decisions read go first, and those pods are decided afresh.
//! The backing Secrets are still ensured on every admission
//! ([`crate::store::Syncer::ensure`]), as the inventory record is; once the
//! warm path found them all holding what was fetched, a decision's replicas
//! trust so for [`crate::store::VOUCHED_FOR`] without a lookup per Secret.
//!
//! Kept: allowed decisions whose every value was fetched, whose plan mounts no
//! file (a mount's patch reads the pod's volumes and mounts, which differ per
//! pod) and whose patch carried no warning. Denials and degraded answers are
//! always made afresh. The memory is bounded by bytes, and an entry lives no
//! longer than the secret cache's TTL, so a value is not held past it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;

use crate::fetch::FetchKey;
use crate::glance::{Glance, PodGlance};
use crate::lookup::Hashing;
use crate::plan::{Content, Plan};
use crate::policy::AccessRule;
use crate::secret::SecretValue;

/// The default bound on the memory of kept decisions: 8 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 8 << 20;

/// What a decision about `pod` in `namespace` reads of it, as bytes, from
/// the review's first look ([`crate::glance`]); `None` for a pod without
/// `sm-injector.io/` annotations (nothing to decide) or without a spec. Every
/// string is length-prefixed and every list count-prefixed, so that the bytes
/// read back one way only: no two different inputs give the same key,
/// whatever a tenant writes in its annotations or container names.
pub fn key(namespace: &str, pod: &PodGlance<'_>) -> Option<Vec<u8>> {
    let ours = &pod.metadata.annotations.as_ref()?.0;
    if ours.is_empty() {
        return None;
    }
    let spec = pod.spec.as_ref()?;
    let mut out = Vec::with_capacity(1024);
    field(&mut out, namespace.as_bytes());
    out.push(pod.metadata.has_labels() as u8);
    out.extend_from_slice(&(ours.len() as u64).to_le_bytes());
    for (k, v) in ours {
        field(&mut out, k.0.as_bytes());
        field(&mut out, v.0.as_bytes());
    }
    for list in [spec.init_containers.as_deref(), Some(&spec.containers[..])] {
        out.push(list.is_some() as u8);
        let list = list.unwrap_or_default();
        out.extend_from_slice(&(list.len() as u64).to_le_bytes());
        for c in list {
            field(&mut out, c.name.0.as_bytes());
            // An absent list is told from an empty one, as the patch does.
            entries(&mut out, c.env.as_deref());
            entries(&mut out, c.env_from.as_deref());
        }
    }
    Some(out)
}

/// The decision key of the pod a glanced review creates ([`key`]), if it has
/// `sm-injector.io/` annotations and a spec.
pub fn key_of(g: &Glance<'_>) -> Option<Vec<u8>> {
    key(g.namespace()?, g.created_pod()?)
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A list's presence, its count and each entry's JSON text.
fn entries(out: &mut Vec<u8>, list: Option<&[&RawValue]>) {
    out.push(list.is_some() as u8);
    let list = list.unwrap_or_default();
    out.extend_from_slice(&(list.len() as u64).to_le_bytes());
    for e in list {
        field(out, e.get().as_bytes());
    }
}

/// A decision, and what it was made from.
pub struct Decision {
    /// Whose identity read the values: kept for pods of that identity only.
    pub identity: crate::identity::Identity,
    pub rule: Arc<AccessRule>,
    /// Each secret value read, as the cache held it.
    pub values: Vec<(FetchKey, Arc<SecretValue>)>,
    pub plan: Plan,
    /// The whole patch, with the record of the versions the plan fetched, as
    /// base64: the answer while every backing Secret holds what was fetched
    /// (the warm path), written out as it is, neither rebuilt nor encoded.
    pub warm_patch: Arc<str>,
    /// The length of the patch without that record ([`Decision::patch`]).
    patch_len: usize,
    /// That its backing Secrets held what it fetched when last asked.
    pub vouched: crate::store::Vouched,
}

impl Decision {
    /// The decision to keep for `plan` and its `patch`, made with `identity`
    /// under `rule` from `values`.
    pub fn new(
        identity: crate::identity::Identity,
        rule: Arc<AccessRule>,
        values: Vec<(FetchKey, Arc<SecretValue>)>,
        plan: Plan,
        patch: Vec<u8>,
    ) -> Decision {
        let patch_len = patch.len();
        let mut whole = patch;
        crate::patch::record_versions(&mut whole, crate::store::Ensured::default().versions(&plan));
        Decision {
            identity,
            rule,
            values,
            warm_patch: base64_simd::STANDARD.encode_to_string(&whole).into(),
            plan,
            patch_len,
            vouched: Default::default(),
        }
    }

    /// The JSON patch without the record of versions
    /// ([`crate::patch::record_versions`]), for a pod one of whose backing
    /// Secrets holds another version than the plan fetched: decoded back
    /// from [`Decision::warm_patch`] on that rare path, so that a kept
    /// decision holds its patch once.
    pub fn patch(&self) -> Vec<u8> {
        let mut patch = base64_simd::STANDARD
            .decode_to_vec(self.warm_patch.as_bytes())
            .expect("the base64 that Decision::new wrote");
        // The record's operation, when there is one, was added before the
        // patch's closing bracket.
        patch.truncate(self.patch_len - 1);
        patch.push(b']');
        patch
    }

    /// Whether a decision made from `values` with `plan` and a patch carrying
    /// `warnings` is to be kept (see the module's documentation).
    pub fn keepable(
        values: &[(FetchKey, Arc<SecretValue>)],
        plan: &Plan,
        warnings: &[String],
    ) -> bool {
        let fetched = plan
            .backing
            .iter()
            .all(|b| matches!(b.content, Content::Fresh { .. }));
        fetched && !values.is_empty() && plan.mounts.is_empty() && warnings.is_empty()
    }

    fn weight(&self, key: usize) -> u32 {
        let plan = self.plan.backing.len() * 256 + self.plan.env.len() * 96;
        u32::try_from(key + self.warm_patch.len() + plan + 512).unwrap_or(u32::MAX)
    }
}

#[allow(clippy::borrowed_box)] // moka's weigher takes the key by reference
fn weigh(key: &Box<[u8]>, d: &Arc<Decision>) -> u32 {
    d.weight(key.len())
}

#[derive(Clone)]
pub struct Decisions {
    cache: Option<moka::future::Cache<Box<[u8]>, Arc<Decision>, Hashing>>,
}

impl Decisions {
    /// At most `max_bytes` (about: key, patch and plan) kept, each entry for
    /// at most `ttl`; `max_bytes == 0` keeps nothing.
    pub fn new(max_bytes: u64, ttl: Duration) -> Self {
        let cache = (max_bytes > 0).then(|| {
            moka::future::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(weigh)
                .time_to_live(ttl)
                .build_with_hasher(Hashing::default())
        });
        Decisions { cache }
    }

    /// Whether decisions are kept at all (`max_bytes > 0`): if not, no key
    /// need be built.
    pub fn enabled(&self) -> bool {
        self.cache.is_some()
    }

    /// The decision kept under `key`, if any. The caller checks that it is
    /// still current ([`Decision::rule`], [`Decision::values`]).
    pub async fn get(&self, key: &[u8]) -> Option<Arc<Decision>> {
        self.cache.as_ref()?.get(key).await
    }

    pub async fn insert(&self, key: Vec<u8>, decision: Arc<Decision>) {
        if let Some(c) = &self.cache {
            c.insert(key.into_boxed_slice(), decision).await;
        }
    }
}

#[cfg(test)]
mod tests;
