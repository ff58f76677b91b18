//! Kubernetes API errors as short, user-facing reasons.

/// A Kubernetes error as a short reason (the API server's message when there is one).
pub fn kube_reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

/// The HTTP status of an API error, if the API server answered.
pub fn status(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}
