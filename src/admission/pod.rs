//! Everything from a pod to its plan, shared by the webhook and `render`:
//! bounded by the caps before the work, then the annotations, the containers,
//! the namespace's access rule, the secrets and their contents.

use std::sync::Arc;
use std::time::Duration;

use crate::pod::Pod;

use crate::cache::CachedSource;
use crate::fetch::{FetchError, FetchKey};
use crate::identity::{Identity, Mode};
use crate::policy::AccessRule;
use crate::secret::SecretValue;
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
    /// Whose identity reads where a namespace does not say (`--aws-identity`).
    pub identity: Mode,
}

/// The default of [`Settings::max_aws_calls`].
pub const MAX_AWS_CALLS: usize = 10;

/// What a pod asks for, decided.
pub enum Planned {
    /// No `sm-injector.io/` input annotation: the pod is left as it is.
    Nothing,
    Denied(super::Denial),
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
/// the annotations, select containers, apply the namespace's access `rule`,
/// fetch the secrets, and check their contents.
pub async fn plan_pod(
    pod: &Pod,
    namespace: &str,
    rule: Arc<AccessRule>,
    identity: &Identity,
    source: &CachedSource,
    settings: &Settings,
) -> Planned {
    let empty = Default::default();
    let anns = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    // Bounded work whatever a tenant sends: caps checked before the work.
    let bytes: usize = annotations::inputs(anns)
        .map(|(k, v)| k.len() + v.len())
        .sum();
    let caps = &settings.caps;
    if bytes > caps.annotation_bytes {
        return Planned::Denied(super::Denial(vec![format!(
            "the pod's sm-injector.io/ annotations hold {bytes} bytes; at most {} (--max-annotation-bytes)",
            caps.annotation_bytes
        )]));
    }
    let inj = match annotations::parse(anns, settings.min_refresh) {
        Ok(None) => return Planned::Nothing,
        Ok(Some(i)) => i,
        Err(errors) => {
            return Planned::Denied(super::Denial(
                errors.iter().map(ToString::to_string).collect(),
            ));
        }
    };
    let references = inj.env.len() + inj.env_from.len();
    if references > caps.references {
        return Planned::Denied(super::Denial(vec![format!(
            "the pod has {references} secret references; at most {} (--max-references)",
            caps.references
        )]));
    }
    let targets = match patch::select(pod, inj.containers.as_deref()) {
        Ok(t) => t,
        Err(e) => return Planned::Denied(super::Denial::one(e)),
    };
    let injections = targets.len() * references;
    if injections > caps.injections {
        return Planned::Denied(super::Denial(vec![format!(
            "{} containers x {references} references = {injections} injections; at most {} (--max-injections; select containers with {})",
            targets.len(),
            caps.injections,
            annotations::CONTAINERS
        )]));
    }
    let denials = plan::precheck(&inj, &rule);
    if !denials.is_empty() {
        return Planned::Denied(super::Denial(denials));
    }
    let keys = plan::fetch_keys(&inj);
    let calls = plan::aws_calls(&keys);
    if calls > settings.max_aws_calls {
        return Planned::Denied(super::Denial(vec![format!(
            "the pod's references need {calls} Secrets Manager calls (20 current versions a call, one per pinned version); at most {} per pod (--max-secretsmanager-calls-per-pod)",
            settings.max_aws_calls
        )]));
    }
    let mut results = source
        .get_many(namespace, identity, &keys, settings.aws_deadline)
        .await;
    if let Identity::Workload(_) = identity {
        // AWS's refusal, said of the workload's role (a whole call refused
        // for want of the permission comes as each secret's refusal:
        // definite, never served from an existing copy).
        for (k, r) in results.iter_mut() {
            if let Err(FetchError::AccessDenied(m)) = r {
                *m = format!("{identity} may not read {}: {m}", k.id);
            }
        }
    }
    match plan::resolve(&inj, &rule, &results, caps) {
        Ok(mut plan) => {
            if let Identity::Workload(w) = identity {
                plan.service_account = Some(w.service_account.clone());
            }
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
        Err(e) => Planned::Denied(super::Denial(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::source::StaticSource;
    use std::collections::HashMap;
    use std::time::Instant;

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
            identity: Mode::Own,
        };
        let rule = Arc::new(AccessRule::for_namespace("n", None));
        match plan_pod(&pod, "n", rule, &Identity::Own, &source, &settings).await {
            Planned::Denied(e) => Err(e.0),
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
}
