//! What is asked of Secrets Manager and what comes back, as plain types shared
//! by the admission path, the cache and the refresher: [`FetchKey`],
//! [`FetchError`] (classified from AWS's error codes) and the result maps.
//! No I/O.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::identity::Identity;
use crate::lookup::Hashing;
use crate::reference::Version;
use crate::secret::SecretValue;

/// One version selector of one secret, as a reference names it (name or ARN).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FetchKey {
    pub id: String,
    pub version: Version,
}

/// Why a secret could not be had. Messages come from AWS and never hold values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("not found in Secrets Manager")]
    NotFound,
    #[error("access denied by AWS: {0}")]
    AccessDenied(String),
    /// Transient: network, throttling, AWS-side errors, or the deadline passed.
    #[error("Secrets Manager could not be reached: {0}")]
    Unreachable(String),
    /// Any other refusal (for example a secret marked for deletion).
    #[error("Secrets Manager refused the request: {0}")]
    Rejected(String),
    /// sm-injector's own credentials were refused: expired, not (yet) valid,
    /// or signed with a clock too far off. About sm-injector, not the secret:
    /// transient, never remembered as a refusal.
    #[error(
        "sm-injector's AWS credentials were refused (expired, invalid, or the clock is off): {0}"
    )]
    Credentials(String),
    /// sm-injector is not configured to call AWS at all: no region, or no
    /// credentials anywhere in the chain. Transient for the secret; the
    /// process reports it (`/readyz` fails with the reason).
    #[error("sm-injector is not configured for AWS: {0}")]
    Configuration(String),
    /// The namespace has spent its share of the account's Secrets Manager
    /// quota ([`crate::quota`]): no call was made. Transient.
    #[error("{0}")]
    OverBudget(String),
    /// A call for several secrets was refused as a whole (its permission,
    /// its form): nothing is known of any one secret, so it is never
    /// remembered against them. Transient.
    #[error("Secrets Manager refused the call for all its secrets: {0}")]
    CallRefused(Box<FetchError>),
    /// A workload's identity could not be had ([`crate::credentials`]): its
    /// ServiceAccount got no token for STS, or STS refused to assume its
    /// role. About the workload, not one secret: never remembered against a
    /// secret, and denied rather than served from an existing copy.
    #[error("{0}")]
    Identity(String),
}

impl FetchError {
    /// Not about the secret: Secrets Manager could not be reached, or
    /// sm-injector's own credentials or configuration are at fault. Such an
    /// error is never remembered, and an existing backing Secret serves.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            FetchError::Unreachable(_)
                | FetchError::Credentials(_)
                | FetchError::Configuration(_)
                | FetchError::OverBudget(_)
                | FetchError::CallRefused(_)
        )
    }

    /// Classifies an AWS error code and message.
    pub fn from_code(code: Option<&str>, message: Option<&str>) -> Self {
        let msg = || {
            let mut s = code.unwrap_or("error").to_string();
            if let Some(m) = message {
                s.push_str(": ");
                s.push_str(m);
            }
            s
        };
        match code {
            Some("ResourceNotFoundException") => FetchError::NotFound,
            Some("AccessDeniedException" | "AccessDenied" | "DecryptionFailure") => {
                FetchError::AccessDenied(msg())
            }
            Some(
                "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "SignatureDoesNotMatch"
                | "ExpiredTokenException"
                | "ExpiredToken"
                | "InvalidClientTokenId"
                | "RequestExpired"
                | "RequestTimeTooSkewed"
                | "RequestInTheFuture",
            ) => FetchError::Credentials(msg()),
            Some(
                "ThrottlingException"
                | "Throttling"
                | "TooManyRequestsException"
                | "RequestLimitExceeded"
                | "InternalServiceError"
                | "InternalFailure"
                | "ServiceUnavailable",
            ) => FetchError::Unreachable(msg()),
            _ => FetchError::Rejected(msg()),
        }
    }
}

/// What a [`crate::source::SecretSource`] answers, one result per key asked.
pub type FetchResults = HashMap<FetchKey, Result<SecretValue, FetchError>>;

/// What [`crate::cache::CachedSource`] answers: values shared with the cache.
pub type CachedResults = HashMap<FetchKey, Result<Arc<SecretValue>, FetchError>, Hashing>;

/// `(tenant, key)`, borrowed: looks up a `(Arc<str>, FetchKey)` key.
#[derive(Clone, Copy)]
pub struct TenantKey<'a>(pub &'a str, pub &'a FetchKey);

impl Hash for TenantKey<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.hash(h);
        self.1.hash(h);
    }
}

impl moka::Equivalent<(Arc<str>, FetchKey)> for TenantKey<'_> {
    fn equivalent(&self, key: &(Arc<str>, FetchKey)) -> bool {
        *key.0 == *self.0 && key.1 == *self.1
    }
}

/// An error and its sources, each shown once, without the Debug dump the
/// SDK's own context display appends: `dispatch failure: io error: connection
/// closed before message completed`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![];
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    let mut out = parts.join(": ");
    if out.len() > 300 {
        let cut = (0..=300)
            .rev()
            .find(|i| out.is_char_boundary(*i))
            .unwrap_or(0);
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

/// `(identity, key)`, borrowed: looks up an `(Identity, FetchKey)` key.
#[derive(Clone, Copy)]
pub struct IdentityKey<'a>(pub &'a Identity, pub &'a FetchKey);

impl Hash for IdentityKey<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.hash(h);
        self.1.hash(h);
    }
}

impl moka::Equivalent<(Identity, FetchKey)> for IdentityKey<'_> {
    fn equivalent(&self, key: &(Identity, FetchKey)) -> bool {
        key.0 == *self.0 && key.1 == *self.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn a_borrowed_tenant_key_hashes_and_compares_as_its_owned_tuple() {
        let s = std::collections::hash_map::RandomState::new();
        let k = FetchKey {
            id: "n/db".into(),
            version: Version::Stage("AWSPENDING".into()),
        };
        let owned: (Arc<str>, FetchKey) = ("n".into(), k.clone());
        assert_eq!(s.hash_one(&owned), s.hash_one(TenantKey("n", &k)));
        assert!(moka::Equivalent::equivalent(&TenantKey("n", &k), &owned));
        assert!(!moka::Equivalent::equivalent(&TenantKey("m", &k), &owned));
    }

    #[tokio::test]
    async fn a_moka_cache_finds_owned_keys_by_borrowed_ones() {
        let k = FetchKey {
            id: "n/db".into(),
            version: Version::current(),
        };
        let t: moka::future::Cache<(Arc<str>, FetchKey), u8> = moka::future::Cache::new(10);
        t.insert(("n".into(), k.clone()), 7).await;
        assert_eq!(t.get(&TenantKey("n", &k)).await, Some(7));
        assert_eq!(t.get(&TenantKey("m", &k)).await, None);
    }
}
