//! One admission review, from request to response: read the annotations, check
//! the access rule, fetch the secrets, write the backing Secrets, patch the pod.
//! Its submodule `pod` plans a pod ([`plan_pod`]); this module answers the
//! review with that plan, or with the decision kept for pods like it
//! ([`crate::decisions`]), found from the first look at the body
//! ([`crate::glance`]).

mod answer;
mod asked;
mod pod;
pub mod scope;

pub use answer::{Answer, Denial, Outcome, Reply, denial_message, mutated};
pub use pod::{MAX_AWS_CALLS, Planned, Settings, plan_pod};

use answer::{deny, unchanged};
pub use asked::{Asked, OwnedAsked};
use asked::{asks, pod_name};

use std::sync::Arc;
use std::time::Instant;

use crate::pod::Pod;
use kube::core::admission::{AdmissionRequest, Operation};

use crate::cache::CachedSource;
use crate::decisions::{Decision, Decisions};
use crate::identity::{self as ids, Identity, Mode};
use crate::metrics::Metrics;
use crate::namespaces::{Namespaces, Seen};
use crate::service_accounts::ServiceAccounts;
use crate::store::Syncer;
use crate::{patch, plan};

pub struct Webhook {
    pub source: CachedSource,
    pub syncer: Syncer,
    pub namespaces: Namespaces,
    /// ServiceAccounts' role annotations, for namespaces that read with each
    /// workload's identity.
    pub service_accounts: ServiceAccounts,
    /// The namespaces it acts in ([`scope`]).
    pub scope: scope::Scope,
    pub metrics: Metrics,
    pub settings: Settings,
    pub decisions: Decisions,
}

/// Whose review is concluded: the namespace and its UID, the identity that
/// read its secrets, the pod's name.
#[derive(Clone, Copy)]
struct Subject<'a> {
    namespace: &'a str,
    uid: Option<&'a str>,
    identity: &'a Identity,
    pod: &'a str,
}

/// The patch a review answers with: one made for this pod, or a kept
/// decision's.
enum Patch<'a> {
    Made(Vec<u8>),
    Kept(&'a Decision),
}

impl Webhook {
    /// The answer to `req`, decided afresh; `key` is its pod's decision key,
    /// from the first look at the body ([`crate::decisions::key_of`]), under
    /// which the decision is kept. The decision already kept under it, if any,
    /// was tried by [`Webhook::review_kept`] on the same facts, so it is not
    /// looked up again.
    pub async fn review(&self, req: &AdmissionRequest<Pod>, key: Option<Vec<u8>>) -> Answer {
        match (Asked::of_request(req), &req.object) {
            (Some(asked), Some(pod)) => self.review_asked(asked, pod, key).await,
            _ => {
                let start = Instant::now();
                let answer = unchanged(&Reply::from(req));
                self.metrics
                    .admission(answer.outcome.metric_label(), start.elapsed().as_secs_f64());
                answer
            }
        }
    }

    /// The answer to what `asked` asks for `pod`, decided afresh: from kube's
    /// decoding ([`Webhook::review`]), or from the first look at the body when
    /// it reads all that planning reads of the pod
    /// ([`crate::glance::PodGlance::planning_pod`]), so that the body is not
    /// decoded a second time.
    pub async fn review_asked(&self, asked: Asked<'_>, pod: &Pod, key: Option<Vec<u8>>) -> Answer {
        let start = Instant::now();
        let answer = self.decide(asked, pod, key).await;
        self.metrics
            .admission(answer.outcome.metric_label(), start.elapsed().as_secs_f64());
        answer
    }

    /// The answer to what `asked` asks (read by the glance at its body, or
    /// recalled, [`crate::recall`]), from the decision kept under its pod's
    /// `key` if there is one and it is current; `None` otherwise, and the pod
    /// is then decided afresh ([`Webhook::review_asked`]). The steps before
    /// are the same as there.
    pub async fn review_kept(&self, asked: Asked<'_>, key: &[u8]) -> Option<Answer> {
        let start = Instant::now();
        // Looked up first: a pod decided afresh pays this lookup only.
        let d = self.decisions.get(key).await?;
        let (identity, seen) = self.admit(&asked).await.ok()?;
        let d = self.current(d, &seen, &identity)?;
        let subject = Subject {
            namespace: seen.name,
            uid: seen.uid(),
            identity: &identity,
            pod: asked.pod,
        };
        let answer = self
            .conclude(&asked.reply, subject, &d.plan, Patch::Kept(&d), vec![])
            .await;
        self.metrics
            .admission(answer.outcome.metric_label(), start.elapsed().as_secs_f64());
        Some(answer)
    }

    /// A review whose pod has more list entries than were decoded
    /// ([`crate::wire::DecodeError::TooManyEntries`]): unchanged if it asks
    /// nothing of sm-injector, else denied, since its patch would be built
    /// from part of its containers.
    pub fn review_oversized(&self, req: &AdmissionRequest<Pod>, max: usize) -> Answer {
        let answer = match &req.object {
            Some(pod) if asks(pod) && req.operation == Operation::Create => deny(
                &Reply::from(req),
                pod_name(req, pod),
                Denial::one(format!(
                    "the pod's containers have more than {max} env, envFrom and volumeMounts \
                     entries; sm-injector reads at most {max} (--max-pod-entries)"
                )),
            ),
            _ => unchanged(&Reply::from(req)),
        };
        self.metrics.admission(answer.outcome.metric_label(), 0.0);
        answer
    }

    /// The answer to what `asked` asks for `pod`, decided afresh.
    async fn decide(&self, asked: Asked<'_>, pod: &Pod, key: Option<Vec<u8>>) -> Answer {
        let (identity, seen) = match self.admit(&asked).await {
            Ok(admitted) => admitted,
            Err(answer) => return answer,
        };
        let (reply, name, namespace) = (&asked.reply, asked.pod, seen.name);
        let subject = Subject {
            namespace,
            uid: seen.uid(),
            identity: &identity,
            pod: name,
        };
        let key = key.filter(|_| self.decisions.enabled());
        // Boxed, as the ServiceAccount's lookup below: a pod decided afresh
        // pays one allocation, and every review's future stays small instead
        // of being copied whole as it is made and moved (seen in profiles).
        let (plan, targets, rule, values) = match Box::pin(plan_pod(
            pod,
            namespace,
            self.namespaces.rule(&seen),
            &identity,
            &self.source,
            &self.settings,
        ))
        .await
        {
            Planned::Nothing => return unchanged(reply),
            Planned::Denied(reasons) => return deny(reply, name, reasons),
            Planned::Plan {
                plan,
                targets,
                rule,
                values,
            } => (plan, targets, rule, values),
        };
        let (patch, warnings) = patch::build(pod, &plan, &targets);
        if let Some(key) = key
            && Decision::keepable(&values, &plan, &warnings)
        {
            // Kept, then answered from what was kept: the plan is not copied.
            let d = Arc::new(Decision::new(identity.clone(), rule, values, plan, patch));
            self.decisions.insert(key, d.clone()).await;
            return self
                .conclude(reply, subject, &d.plan, Patch::Kept(&d), warnings)
                .await;
        }
        self.conclude(reply, subject, &plan, Patch::Made(patch), warnings)
            .await
    }

    /// The steps before the plan: the namespace named, the pod asking
    /// something, the namespace in scope and opted in (read once, for all
    /// that follows), the identity that reads its secrets. `Err`: the answer
    /// already (unchanged or denied).
    async fn admit<'a>(&self, asked: &Asked<'a>) -> Result<(Identity, Seen<'a>), Answer> {
        let (reply, name) = (&asked.reply, asked.pod);
        let Some(namespace) = asked.namespace else {
            return Err(deny(
                reply,
                name,
                Denial::one("the request names no namespace"),
            ));
        };
        // A pod that asks for nothing is answered as it is, without looking
        // at its namespace.
        if !asked.asks {
            return Err(unchanged(reply));
        }
        // Its own inputs: whoever sent the review, nothing is written where
        // the webhook configuration would never send one.
        let in_scope = match self.scope.check_name(namespace) {
            Err(why) => Err(why),
            Ok(()) => match self.namespaces.read(namespace).await {
                Ok(Some(object)) => Some(Seen {
                    name: namespace,
                    object,
                })
                .filter(Seen::opted_in)
                .ok_or(scope::OutOfScope::NotOptedIn),
                Ok(None) => Err(scope::OutOfScope::NotOptedIn),
                Err(e) => return Err(deny(reply, name, Denial::one(e))),
            },
        };
        let seen = match in_scope {
            Ok(seen) => seen,
            Err(why) => {
                tracing::debug!(
                    namespace,
                    reason = why.reason(),
                    "review answered unchanged: out of scope"
                );
                return Err(unchanged(reply));
            }
        };
        match self.identity(&seen, asked.service_account).await {
            Ok(identity) => Ok((identity, seen)),
            Err(e) => Err(deny(reply, name, Denial::one(e))),
        }
    }

    /// Whose identity reads the pod's secrets: sm-injector's own, or where the
    /// namespace (or the cluster's default) says so, the role of the pod's
    /// ServiceAccount. Why not, naming the namespace and ServiceAccount.
    async fn identity(&self, seen: &Seen<'_>, account: &str) -> Result<Identity, String> {
        // From the Namespace as `admit` read it, through to the API server if
        // the watched cache lacks it: a namespace made a moment ago must not
        // fall back to the cluster's default.
        let namespace = seen.name;
        let annotation = seen.annotation(ids::NAMESPACE_ANNOTATION);
        let mode = Mode::of_namespace(annotation, self.settings.identity)
            .map_err(|reason| format!("namespace {namespace}: {reason}"))?;
        if mode == Mode::Own {
            return Ok(Identity::Own);
        }
        let annotations = Box::pin(self.service_accounts.annotations(namespace, account)).await?;
        ids::resolve(mode, namespace, account, annotations.as_deref()).map_err(|e| e.to_string())
    }

    /// The kept decision `d`, if what it was made from is unchanged: the
    /// identity, the namespace's rule and each value, the same `Arc`s
    /// ([`crate::decisions`]).
    fn current(&self, d: Arc<Decision>, seen: &Seen, identity: &Identity) -> Option<Arc<Decision>> {
        if d.identity != *identity {
            return None;
        }
        let rule = self.namespaces.rule(seen);
        if !Arc::ptr_eq(&rule, &d.rule) {
            return None;
        }
        // Each value still the one the cache holds for its key, asked of the
        // value itself rather than looked up.
        let now = Instant::now();
        if !d
            .values
            .iter()
            .all(|(_, v)| self.source.still_holds(v, now))
        {
            return None;
        }
        self.metrics.cache(d.values.len() as u64, 0);
        self.metrics.decision_reused();
        Some(d)
    }

    /// Ensures the plan's backing Secrets and answers with the patch.
    async fn conclude(
        &self,
        reply: &Reply<'_>,
        Subject {
            namespace,
            uid,
            identity,
            pod,
        }: Subject<'_>,
        plan: &plan::Plan,
        patch: Patch<'_>,
        patch_warnings: Vec<String>,
    ) -> Answer {
        let vouched = match &patch {
            Patch::Kept(d) => Some(&d.vouched),
            Patch::Made(_) => None,
        };
        let ensured = match self
            .syncer
            .ensure(namespace, uid, plan, reply.dry_run, vouched)
            .await
        {
            Ok(e) => e,
            Err(e) => return deny(reply, pod, Denial(e)),
        };
        if !ensured.stale.is_empty() {
            // A backing Secret holds another version than the cache.
            self.source
                .invalidate(namespace, identity, &ensured.stale)
                .await;
        }
        // Every backing Secret holds what the plan fetched: a kept decision's
        // whole patch is the one it keeps.
        let (patch, patch_base64) = match patch {
            Patch::Kept(d) if ensured.held.is_empty() => (None, Some(d.warm_patch.clone())),
            Patch::Kept(d) => (Some(d.patch()), None),
            Patch::Made(p) => (Some(p), None),
        };
        let mut response = reply.allowed();
        if let Some(mut patch) = patch {
            patch::record_versions(&mut patch, ensured.versions(plan));
            response.patch = Some(patch);
        }
        let mut warnings = ensured.warnings;
        warnings.extend(patch_warnings);
        if !warnings.is_empty() {
            for w in &warnings {
                tracing::info!(namespace, pod, warning = %w, "admission warning");
            }
            response.warnings = Some(warnings);
        }
        Answer {
            response,
            outcome: Outcome::Mutated,
            patch_base64,
        }
    }
}
