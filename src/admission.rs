//! One admission review, from request to response: read the annotations, check
//! the access rule, fetch the secrets, write the backing Secrets, patch the pod.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};

use crate::cache::CachedSource;
use crate::decisions::{self, Decision, Decisions};
use crate::metrics::Metrics;
use crate::namespaces::Namespaces;
use crate::policy::AccessRule;
use crate::secret::SecretValue;
use crate::source::FetchKey;
use crate::sync::Syncer;
use crate::{annotations, patch, plan};

/// Settings of the admission path.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The shortest `refresh-interval` a pod may ask for.
    pub min_refresh: Duration,
    /// How long Secrets Manager may take before it counts as unreachable.
    pub aws_deadline: Duration,
    /// The most Secrets Manager calls one pod's references may need (20
    /// current versions a call, one call per pinned version), dry runs included.
    pub max_aws_calls: usize,
    /// Bounds on what one pod may ask for.
    pub caps: plan::Caps,
}

/// The default of [`Settings::max_aws_calls`].
pub const MAX_AWS_CALLS: usize = 10;

pub struct Webhook {
    pub source: CachedSource,
    pub syncer: Syncer,
    pub namespaces: Namespaces,
    pub metrics: Metrics,
    pub settings: Settings,
    pub decisions: Decisions,
}

/// The outcome of one review, for the response and the metrics.
pub struct Answer {
    pub response: AdmissionResponse,
    pub outcome: &'static str,
}

/// At most this many reasons, each of at most this many characters, reach a
/// denial message (and the log line that repeats it): they echo tenant input.
const MAX_REASONS: usize = 20;
const MAX_REASON_CHARS: usize = 512;

/// The denial message: the reasons joined, bounded whatever the input.
pub fn denial_message(reasons: &[String]) -> String {
    let mut parts: Vec<String> = reasons
        .iter()
        .take(MAX_REASONS)
        .map(|r| match r.char_indices().nth(MAX_REASON_CHARS) {
            Some((i, _)) => format!("{}... ({} bytes in all)", &r[..i], r.len()),
            None => r.clone(),
        })
        .collect();
    if reasons.len() > MAX_REASONS {
        parts.push(format!("and {} more", reasons.len() - MAX_REASONS));
    }
    format!("sm-injector: {}", parts.join("; "))
}

/// The denying answer; the log line names the pod and the user, and gives
/// the reasons (they name annotations, references and AWS/Kubernetes errors,
/// never values).
fn deny(req: &AdmissionRequest<Pod>, pod: &str, reasons: Vec<String>) -> Answer {
    let response = AdmissionResponse::from(req).deny(denial_message(&reasons));
    tracing::info!(
        namespace = req.namespace.as_deref().unwrap_or(""),
        pod,
        user = req.user_info.username.as_deref().unwrap_or(""),
        reason = %response.result.message,
        "admission denied"
    );
    Answer {
        response,
        outcome: "denied",
    }
}

/// The allowing response carrying `patch`, a JSON patch's bytes. kube's
/// `with_patch` takes a typed patch only to serialize it; [`crate::wire::encode`]
/// writes `patchType: JSONPatch` for any response with a patch.
pub fn mutated<K: kube::Resource>(req: &AdmissionRequest<K>, patch: Vec<u8>) -> AdmissionResponse {
    let mut response = AdmissionResponse::from(req);
    response.patch = Some(patch);
    response
}

fn unchanged(req: &AdmissionRequest<Pod>) -> Answer {
    Answer {
        response: AdmissionResponse::from(req),
        outcome: "unchanged",
    }
}

/// What a pod asks for, decided.
pub enum Planned {
    /// No `sm-injector.io/` input annotation: the pod is left as it is.
    Nothing,
    Denied(Vec<String>),
    Plan {
        plan: plan::Plan,
        targets: Vec<patch::Target>,
        /// What the plan was made from: the access rule, and each value read
        /// (empty if any was not fetched).
        rule: Arc<AccessRule>,
        values: Vec<(FetchKey, Arc<SecretValue>)>,
    },
}

/// Everything from a pod to its plan, shared by the webhook and `render`: read
/// the annotations, select containers, apply the namespace's access rule (from
/// `rule`, awaited only when the pod asks for something), fetch the secrets, and
/// check their contents.
pub async fn plan_pod(
    pod: &Pod,
    namespace: &str,
    rule: impl std::future::Future<Output = Result<Arc<AccessRule>, String>>,
    source: &CachedSource,
    settings: &Settings,
) -> Planned {
    let empty = Default::default();
    let anns = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    // Bounded work whatever a tenant sends: caps checked before the work.
    let bytes: usize = anns
        .iter()
        .filter(|(k, _)| k.starts_with(annotations::PREFIX))
        .filter(|(k, _)| !annotations::OUTPUT_KEYS.contains(&k.as_str()))
        .map(|(k, v)| k.len() + v.len())
        .sum();
    let caps = &settings.caps;
    if bytes > caps.annotation_bytes {
        return Planned::Denied(vec![format!(
            "the pod's sm-injector.io/ annotations hold {bytes} bytes; at most {} (--max-annotation-bytes)",
            caps.annotation_bytes
        )]);
    }
    let inj = match annotations::parse(anns, settings.min_refresh) {
        Ok(None) => return Planned::Nothing,
        Ok(Some(i)) => i,
        Err(errors) => return Planned::Denied(errors.iter().map(ToString::to_string).collect()),
    };
    let references = inj.env.len() + inj.env_from.len();
    if references > caps.references {
        return Planned::Denied(vec![format!(
            "the pod has {references} secret references; at most {} (--max-references)",
            caps.references
        )]);
    }
    let targets = match patch::select(pod, inj.containers.as_deref()) {
        Ok(t) => t,
        Err(e) => return Planned::Denied(vec![e]),
    };
    let injections = targets.len() * references;
    if injections > caps.injections {
        return Planned::Denied(vec![format!(
            "{} containers x {references} references = {injections} injections; at most {} (--max-injections; select containers with {})",
            targets.len(),
            caps.injections,
            annotations::CONTAINERS
        )]);
    }
    let rule = match rule.await {
        Ok(r) => r,
        Err(e) => return Planned::Denied(vec![e]),
    };
    let denials = plan::precheck(&inj, &rule);
    if !denials.is_empty() {
        return Planned::Denied(denials);
    }
    let keys = plan::fetch_keys(&inj);
    let calls = plan::aws_calls(&keys);
    if calls > settings.max_aws_calls {
        return Planned::Denied(vec![format!(
            "the pod's references need {calls} Secrets Manager calls (20 current versions a call, one per pinned version); at most {} per pod (--max-secretsmanager-calls-per-pod)",
            settings.max_aws_calls
        )]);
    }
    let results = source
        .get_many(namespace, &keys, settings.aws_deadline)
        .await;
    match plan::resolve(&inj, &rule, &results, caps) {
        Ok(plan) => {
            let values = results
                .into_iter()
                .map(|(k, r)| r.ok().map(|v| (k, v)))
                .collect::<Option<Vec<_>>>()
                .unwrap_or_default();
            Planned::Plan {
                plan,
                targets,
                rule,
                values,
            }
        }
        Err(e) => Planned::Denied(e),
    }
}

/// The pod's name, or its generateName prefix (pods made by controllers have
/// no name yet), or the request's name.
fn pod_name<'a>(req: &'a AdmissionRequest<Pod>, pod: &'a Pod) -> &'a str {
    let m = &pod.metadata;
    m.name
        .as_deref()
        .or(m.generate_name.as_deref())
        .unwrap_or(&req.name)
}

impl Webhook {
    pub async fn review(&self, req: &AdmissionRequest<Pod>) -> Answer {
        let start = Instant::now();
        let answer = self.decide(req).await;
        self.metrics
            .admission(answer.outcome, start.elapsed().as_secs_f64());
        answer
    }

    async fn decide(&self, req: &AdmissionRequest<Pod>) -> Answer {
        if req.operation != Operation::Create
            || req.kind.kind != "Pod"
            || req.sub_resource.is_some()
        {
            return unchanged(req);
        }
        let Some(pod) = &req.object else {
            return unchanged(req);
        };
        let name = pod_name(req, pod);
        let Some(namespace) = req
            .namespace
            .as_deref()
            .or(pod.metadata.namespace.as_deref())
        else {
            return deny(req, name, vec!["the request names no namespace".into()]);
        };
        let key = decisions::key(namespace, pod);
        if let Some(key) = &key
            && let Some(d) = self.kept(namespace, key).await
        {
            return self
                .conclude(req, namespace, name, &d.plan, d.patch.clone(), vec![])
                .await;
        }
        let (plan, targets, rule, values) = match plan_pod(
            pod,
            namespace,
            self.namespaces.rule(namespace),
            &self.source,
            &self.settings,
        )
        .await
        {
            Planned::Nothing => return unchanged(req),
            Planned::Denied(reasons) => return deny(req, name, reasons),
            Planned::Plan {
                plan,
                targets,
                rule,
                values,
            } => (plan, targets, rule, values),
        };
        let (patch, warnings) = patch::build(pod, &plan, &targets);
        if let Some(key) = key
            && let Some(d) = Decision::keepable(rule, values, &plan, &patch, &warnings)
        {
            self.decisions.insert(key, d).await;
        }
        self.conclude(req, namespace, name, &plan, patch, warnings)
            .await
    }

    /// The decision kept under `key`, if what it was made from is unchanged:
    /// the namespace's rule and each value, the same `Arc`s
    /// ([`crate::decisions`]).
    async fn kept(&self, namespace: &str, key: &[u8]) -> Option<Arc<Decision>> {
        let d = self.decisions.get(key).await?;
        let rule = self.namespaces.rule(namespace).await.ok()?;
        if !Arc::ptr_eq(&rule, &d.rule) {
            return None;
        }
        for (k, value) in &d.values {
            let current = self.source.cached(namespace, k).await?;
            if !Arc::ptr_eq(&current, value) {
                return None;
            }
        }
        self.metrics.cache(d.values.len() as u64, 0);
        self.metrics.decision_reused();
        Some(d)
    }

    /// Ensures the plan's backing Secrets and answers with the patch.
    async fn conclude(
        &self,
        req: &AdmissionRequest<Pod>,
        namespace: &str,
        pod: &str,
        plan: &plan::Plan,
        patch: Vec<u8>,
        patch_warnings: Vec<String>,
    ) -> Answer {
        let ensured = match self.syncer.ensure(namespace, plan, req.dry_run).await {
            Ok(e) => e,
            Err(e) => return deny(req, pod, e),
        };
        if !ensured.stale.is_empty() {
            // A backing Secret holds a later observation than the cache.
            self.source.invalidate(namespace, &ensured.stale).await;
        }
        let mut warnings = ensured.warnings;
        warnings.extend(patch_warnings);
        let mut response = mutated(req, patch);
        if !warnings.is_empty() {
            for w in &warnings {
                tracing::info!(namespace, pod, warning = %w, "admission warning");
            }
            response.warnings = Some(warnings);
        }
        Answer {
            response,
            outcome: "mutated",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CachedSource;
    use crate::policy::AccessRule;
    use crate::source::StaticSource;
    use std::collections::HashMap;
    use std::sync::Arc;

    async fn planned(pod: serde_json::Value) -> Result<(), Vec<String>> {
        let pod: Pod = serde_json::from_value(pod).unwrap();
        let source = CachedSource::new(
            Arc::new(StaticSource::new(HashMap::new())),
            Duration::from_secs(60),
            Metrics::new(),
        );
        let settings = Settings {
            min_refresh: Duration::from_secs(60),
            aws_deadline: Duration::from_secs(1),
            max_aws_calls: MAX_AWS_CALLS,
            caps: Default::default(),
        };
        let rule = async { Ok(Arc::new(AccessRule::for_namespace("n", None))) };
        match plan_pod(&pod, "n", rule, &source, &settings).await {
            Planned::Denied(e) => Err(e),
            _ => Ok(()),
        }
    }

    #[tokio::test]
    async fn over_cap_pods_are_denied_quickly_naming_the_cap() {
        let containers: Vec<serde_json::Value> = (0..300)
            .map(|i| serde_json::json!({"name": format!("c{i}"), "image": "x"}))
            .collect();
        let refs = |n: usize| -> serde_json::Map<String, serde_json::Value> {
            (0..n)
                .map(|i| {
                    (
                        format!("sm-injector.io/env.V{i}"),
                        serde_json::json!(format!("n/s#k{i}")),
                    )
                })
                .collect()
        };
        let t = Instant::now();
        let e = planned(serde_json::json!({"metadata": {"annotations": refs(300)}, "spec": {"containers": containers}}))
            .await
            .unwrap_err();
        assert_eq!(
            e,
            vec![format!(
                "the pod has 300 secret references; at most 250 (--max-references)"
            )]
        );
        let e = planned(serde_json::json!({"metadata": {"annotations": refs(20)}, "spec": {"containers": containers}}))
            .await
            .unwrap_err();
        assert!(
            e[0].starts_with("300 containers x 20 references = 6000 injections; at most 2500"),
            "{e:?}"
        );
        let big = serde_json::json!({"sm-injector.io/env.X": "x".repeat(70_000)});
        let e = planned(serde_json::json!({"metadata": {"annotations": big}, "spec": {"containers": [{"name": "c"}]}}))
            .await
            .unwrap_err();
        assert!(
            e[0].contains("annotations hold 70020 bytes; at most 65536"),
            "{e:?}"
        );
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn denial_messages_are_bounded_whatever_the_input() {
        let huge = format!(
            "annotation sm-injector.io/env.X: {:?} is bad",
            "é".repeat(100_000)
        );
        let many: Vec<String> = (0..1000)
            .map(|i| format!("reason {i}"))
            .chain([huge])
            .collect();
        let m = denial_message(&many);
        assert!(
            m.len() < (MAX_REASONS + 1) * (MAX_REASON_CHARS * 4 + 40),
            "{}",
            m.len()
        );
        assert!(m.starts_with("sm-injector: reason 0; reason 1;"));
        assert!(m.ends_with("; and 981 more"), "{}", &m[m.len() - 40..]);
        let long = denial_message(&[format!("x{}", "y".repeat(5000))]);
        assert!(long.ends_with("... (5001 bytes in all)"), "{long}");
        assert_eq!(denial_message(&["short".into()]), "sm-injector: short");
    }
}
