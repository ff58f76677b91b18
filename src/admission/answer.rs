//! What a review answers: allowed with a patch, unchanged, or denied with
//! reasons bounded whatever the input.

use std::sync::Arc;

use kube::core::admission::{AdmissionRequest, AdmissionResponse};

use crate::pod::Pod;

/// The outcome of one review, for the response and the metrics.
pub struct Answer {
    pub response: AdmissionResponse,
    pub outcome: Outcome,
    /// The patch as base64, where it was kept so (a kept decision's,
    /// [`crate::decisions::Decision::warm_patch`]); the response then has
    /// none of its own. [`crate::wire::encode_with`] writes it.
    pub patch_base64: Option<Arc<str>>,
}

/// How a review ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed with a patch.
    Mutated,
    /// Allowed as it is (nothing asked of sm-injector).
    Unchanged,
    /// Refused, with the reasons in the response.
    Denied,
}

impl Outcome {
    /// The `outcome` label of `sm_injector_admissions_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            Outcome::Mutated => "mutated",
            Outcome::Unchanged => "unchanged",
            Outcome::Denied => "denied",
        }
    }
}

/// Why a pod is refused: each reason names what is wrong (an annotation, a
/// reference, an AWS or Kubernetes error), never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial(pub Vec<String>);

impl Denial {
    pub fn one(reason: impl Into<String>) -> Self {
        Denial(vec![reason.into()])
    }
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

/// What an answer copies of its request, from kube's decoding or from the
/// first look at the body ([`crate::glance`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reply<'a> {
    pub uid: &'a str,
    /// For the log lines: the request's namespace (else the pod's), and who
    /// sent it.
    pub namespace: &'a str,
    pub user: &'a str,
    pub dry_run: bool,
}

impl<'a> From<&'a AdmissionRequest<Pod>> for Reply<'a> {
    fn from(req: &'a AdmissionRequest<Pod>) -> Self {
        Reply {
            uid: &req.uid,
            namespace: (req.namespace.as_deref())
                .or(req
                    .object
                    .as_ref()
                    .and_then(|p| p.metadata.namespace.as_deref()))
                .unwrap_or(""),
            user: req.user_info.username.as_deref().unwrap_or(""),
            dry_run: req.dry_run,
        }
    }
}

impl<'a> From<&'a crate::glance::Glance<'a>> for Reply<'a> {
    fn from(g: &'a crate::glance::Glance<'a>) -> Self {
        Reply {
            uid: g.uid(),
            namespace: g.namespace().unwrap_or(""),
            user: g.user(),
            dry_run: g.dry_run(),
        }
    }
}

impl Reply<'_> {
    /// The allowing response, as kube's `AdmissionResponse::from` a request
    /// makes it (its `types` are not written: [`crate::wire::encode`] writes
    /// `admission.k8s.io/v1`).
    pub fn allowed(&self) -> AdmissionResponse {
        let mut response = AdmissionResponse::invalid("");
        response.uid = self.uid.to_owned();
        response.allowed = true;
        response.result = Default::default();
        response
    }
}

/// The denying answer; the log line names the pod and the user, and gives
/// the reasons (they name annotations, references and AWS/Kubernetes errors,
/// never values).
pub(super) fn deny(reply: &Reply<'_>, pod: &str, denial: Denial) -> Answer {
    let response = reply.allowed().deny(denial_message(&denial.0));
    tracing::info!(
        namespace = reply.namespace,
        pod,
        user = reply.user,
        reason = %response.result.message,
        "admission denied"
    );
    Answer {
        response,
        outcome: Outcome::Denied,
        patch_base64: None,
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

pub(super) fn unchanged(reply: &Reply<'_>) -> Answer {
    Answer {
        response: reply.allowed(),
        outcome: Outcome::Unchanged,
        patch_base64: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_allows_as_kubes_response_from_the_request_does() {
        let review: kube::core::admission::AdmissionReview<Pod> =
            serde_json::from_value(serde_json::json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {
                    "uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "operation": "CREATE", "userInfo": {"username": "me"}, "namespace": "n",
                    "dryRun": true, "object": {"metadata": {}, "spec": {"containers": []}}
                }
            }))
            .unwrap();
        let req: AdmissionRequest<Pod> = review.try_into().unwrap();
        let reply = Reply::from(&req);
        assert_eq!(reply.allowed(), AdmissionResponse::from(&req));
        assert_eq!(
            (reply.uid, reply.namespace, reply.user, reply.dry_run),
            ("u-1", "n", "me", true)
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
