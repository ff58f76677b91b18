//! From a pod's request and the fetched secret values to a plan: which backing
//! Secrets hold what, and which env / envFrom / mounts point at them. Pure: the
//! access rule (SPEC section 4) and every content check of section 3 happen here.

mod resolve;

pub use resolve::resolve;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::annotations::Injection;
use crate::backing::Form;
use crate::fetch::FetchKey;
use crate::policy::AccessRule;
use crate::reference::{SecretRef, Version};
use crate::secret::SecretValue;

/// What a backing Secret holds this time.
#[derive(Debug, Clone)]
pub enum Content {
    /// Fetched: the Secret is (re)written from this value when it is not
    /// known to be current ([`crate::backing::data`] gives its data).
    Fresh { value: Arc<SecretValue> },
    /// Secrets Manager could not be reached: the existing backing Secret must
    /// serve, and must hold the keys the pod reads ([`Plan::required_keys`]).
    Unreachable { reason: String },
}

/// Bounds on what one pod may ask for, each checked before the work it
/// bounds; a pod over one is denied with a reason naming the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Bytes of a pod's `sm-injector.io/` annotations (keys and values, not
    /// the ones sm-injector writes).
    pub annotation_bytes: usize,
    /// Secret references (`env.<VAR>` and `env-from` entries) per pod.
    pub references: usize,
    /// Selected containers times references: bounds the patch.
    pub injections: usize,
    /// Keys of one secret injected with `env-from`.
    pub env_from_keys: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            annotation_bytes: 64 * 1024,
            references: 250,
            injections: 2_500,
            env_from_keys: 500,
        }
    }
}

/// At most this many backing Secrets per pod. The refresher refuses records
/// with more entries, so one pod cannot make it fetch without bound.
pub const MAX_BACKING_PER_POD: usize = 100;

#[derive(Debug, Clone)]
pub struct Backing {
    /// The backing Secret's name.
    pub name: String,
    /// The canonical secret name.
    pub secret_name: String,
    pub version: Version,
    pub form: Form,
    /// What was asked of Secrets Manager (the reference's name or ARN).
    pub fetch: FetchKey,
    /// The full ARN when the reference named the secret by ARN (its account
    /// and region are part of the backing name and of the pod's record).
    pub arn: Option<String>,
    pub content: Content,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    pub var: String,
    pub secret: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFrom {
    pub prefix: Option<String>,
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub secret: String,
    pub path: String,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub backing: Vec<Backing>,
    pub env: Vec<EnvVar>,
    pub env_from: Vec<EnvFrom>,
    pub mounts: Vec<Mount>,
    pub refresh_interval: Duration,
    /// The ServiceAccount whose role read the secrets, where the pod read
    /// with its workload's identity ([`crate::identity`]); recorded for the
    /// refresher.
    pub service_account: Option<String>,
}

impl Plan {
    /// The data keys the pod's env entries read from the backing Secret
    /// `backing`: what a Secret holding another version than was fetched must
    /// still hold for the pod to start ([`crate::store`]).
    pub fn required_keys(&self, backing: &str) -> BTreeSet<&str> {
        self.env
            .iter()
            .filter(|e| e.secret == backing)
            .map(|e| e.key.as_str())
            .collect()
    }
}

/// The version selectors a pod needs fetched, in a stable order.
pub fn fetch_keys(inj: &Injection) -> Vec<FetchKey> {
    // Sorted and deduplicated before anything is copied.
    refs(inj)
        .map(|(r, _)| (r.id, &r.version))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|(id, version)| FetchKey {
            id: id.to_string(),
            version: version.clone(),
        })
        .collect()
}

/// The Secrets Manager calls fetching `keys` takes at most (as
/// [`crate::source::AwsSource`] makes them): current versions in batches of
/// 20, one call per pinned version.
pub fn aws_calls(keys: &[FetchKey]) -> usize {
    let current = keys.iter().filter(|k| k.version.is_current()).count();
    current.div_ceil(20) + (keys.len() - current)
}

fn refs<'a>(inj: &'a Injection) -> impl Iterator<Item = (&'a SecretRef<'a>, &'a str)> {
    inj.env
        .iter()
        .map(|e| (&e.reference, e.annotation))
        .chain(inj.env_from.iter().map(|e| (&e.reference, e.annotation)))
}

fn denied(r: &SecretRef, canonical: Option<&str>, rule: &AccessRule) -> String {
    let what = match canonical {
        Some(name) if name != r.id => format!("reference {:?} (secret {name:?})", r.to_string()),
        _ => format!("reference {:?}", r.to_string()),
    };
    format!(
        "{what} is not allowed in namespace {:?}, which may read only {rule}",
        rule.namespace()
    )
}

/// Denials that need no Secrets Manager call: references by name outside the
/// namespace's rule. (ARN references are checked once AWS has named the secret.)
pub fn precheck(inj: &Injection, rule: &AccessRule) -> Vec<String> {
    // Each secret is matched once, however many of its keys the pod reads.
    let mut allowed: Vec<&str> = vec![];
    let mut denials = vec![];
    for (r, ann) in refs(inj) {
        if r.is_arn() || allowed.contains(&r.id) {
            continue;
        }
        if rule.allows(r.id) {
            allowed.push(r.id);
        } else {
            denials.push(format!("{ann}: {}", denied(r, None, rule)));
        }
    }
    denials
}

#[cfg(test)]
mod tests;
