//! Whose AWS identity reads a pod's secrets (SPEC section 4, "The workload's
//! own identity"): sm-injector's own credentials, or, where a cluster admin
//! opted the namespace in, the IAM role of the pod's ServiceAccount (IRSA's
//! `eks.amazonaws.com/role-arn`), assumed for a session named after the
//! namespace and ServiceAccount. Pure: the token request and the STS
//! exchange live in [`crate::credentials`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// The Namespace annotation (admin-only, like `allowed-secrets`) choosing
/// the identity: `serviceaccount` or `sm-injector`.
pub const NAMESPACE_ANNOTATION: &str = "sm-injector.io/aws-identity";
/// The ServiceAccount annotation naming its IAM role (IRSA's).
pub const ROLE_ANNOTATION: &str = "eks.amazonaws.com/role-arn";
/// The audience of the ServiceAccount tokens sm-injector requests.
pub const AUDIENCE: &str = "sts.amazonaws.com";
/// The lifetime asked of those tokens: the shortest the API server grants.
pub const TOKEN_SECONDS: i64 = 600;
/// AWS's limit on a role session name.
pub const SESSION_NAME_MAX: usize = 64;

/// How a namespace's pods read their secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// With sm-injector's own credentials (the default).
    #[default]
    Own,
    /// With the role of each pod's ServiceAccount.
    ServiceAccount,
}

impl Mode {
    /// The value of the namespace annotation or of `--aws-identity`.
    pub fn parse(value: &str) -> Result<Mode, String> {
        match value.trim() {
            "sm-injector" => Ok(Mode::Own),
            "serviceaccount" => Ok(Mode::ServiceAccount),
            other => Err(format!(
                "{NAMESPACE_ANNOTATION} is {other:?}: expected \"serviceaccount\" or \"sm-injector\""
            )),
        }
    }

    /// The mode of a namespace: its annotation's, else the cluster's `default`.
    pub fn of_namespace(annotation: Option<&str>, default: Mode) -> Result<Mode, String> {
        annotation.map_or(Ok(default), Mode::parse)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Own => "sm-injector",
            Mode::ServiceAccount => "serviceaccount",
        })
    }
}

/// The AWS identity a read is made with. Values read with one identity are
/// never served to another: caches key on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Identity {
    #[default]
    Own,
    Workload(Arc<Workload>),
}

/// A workload's identity: the role its ServiceAccount names, assumed for
/// that namespace and ServiceAccount.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload {
    pub role_arn: String,
    pub namespace: String,
    pub service_account: String,
}

impl Workload {
    /// The role session name CloudTrail records: `<namespace>.<serviceaccount>`,
    /// cut to AWS's 64 characters with a hash of the whole kept when longer.
    pub fn session_name(&self) -> String {
        let full = format!("{}.{}", self.namespace, self.service_account);
        if full.len() <= SESSION_NAME_MAX {
            return full;
        }
        let hash = Sha256::digest(full.as_bytes());
        let tail: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
        // Namespace and ServiceAccount names are ASCII: any cut is a boundary.
        format!("{}-{tail}", &full[..SESSION_NAME_MAX - tail.len() - 1])
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Own => f.write_str("sm-injector's own role"),
            Identity::Workload(w) => {
                write!(f, "role {} (session {})", w.role_arn, w.session_name())
            }
        }
    }
}

/// Why a pod has no identity to read with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "namespace {namespace} reads secrets with each pod's ServiceAccount role ({NAMESPACE_ANNOTATION}), \
         and ServiceAccount {service_account} has no {ROLE_ANNOTATION} annotation"
    )]
    NoRole {
        namespace: String,
        service_account: String,
    },
    #[error(
        "ServiceAccount {namespace}/{service_account}: {ROLE_ANNOTATION} is {value:?}, not an IAM role ARN \
         (arn:<partition>:iam::<account>:role/<name>)"
    )]
    BadRole {
        namespace: String,
        service_account: String,
        value: String,
    },
    #[error(
        "namespace {namespace} reads secrets with each pod's ServiceAccount role, \
         and ServiceAccount {service_account} does not exist"
    )]
    NoServiceAccount {
        namespace: String,
        service_account: String,
    },
}

/// Whether `value` has the shape of an IAM role ARN.
pub fn is_role_arn(value: &str) -> bool {
    let parts: Vec<&str> = value.splitn(6, ':').collect();
    let [arn, partition, service, region, account, resource] = parts[..] else {
        return false;
    };
    let name = resource.strip_prefix("role/").unwrap_or_default();
    arn == "arn"
        && partition.starts_with("aws")
        && service == "iam"
        && region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !name.is_empty()
        && !name.ends_with('/')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b))
}

/// The identity a pod of `namespace` running as `service_account` reads
/// with, given the namespace's mode and the ServiceAccount's annotations
/// (`None`: the ServiceAccount does not exist).
pub fn resolve(
    mode: Mode,
    namespace: &str,
    service_account: &str,
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<Identity, IdentityError> {
    if mode == Mode::Own {
        return Ok(Identity::Own);
    }
    let Some(annotations) = annotations else {
        return Err(IdentityError::NoServiceAccount {
            namespace: namespace.into(),
            service_account: service_account.into(),
        });
    };
    let Some(role) = annotations.get(ROLE_ANNOTATION) else {
        return Err(IdentityError::NoRole {
            namespace: namespace.into(),
            service_account: service_account.into(),
        });
    };
    let role = role.trim();
    if !is_role_arn(role) {
        return Err(IdentityError::BadRole {
            namespace: namespace.into(),
            service_account: service_account.into(),
            value: role.into(),
        });
    }
    Ok(Identity::Workload(Arc::new(Workload {
        role_arn: role.into(),
        namespace: namespace.into(),
        service_account: service_account.into(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotated(role: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(ROLE_ANNOTATION.to_string(), role.to_string())])
    }

    #[test]
    fn the_namespace_annotation_chooses_else_the_cluster_default() {
        assert_eq!(Mode::of_namespace(None, Mode::Own), Ok(Mode::Own));
        assert_eq!(
            Mode::of_namespace(None, Mode::ServiceAccount),
            Ok(Mode::ServiceAccount)
        );
        assert_eq!(
            Mode::of_namespace(Some("serviceaccount"), Mode::Own),
            Ok(Mode::ServiceAccount)
        );
        assert_eq!(
            Mode::of_namespace(Some("sm-injector"), Mode::ServiceAccount),
            Ok(Mode::Own)
        );
        let e = Mode::of_namespace(Some("service-account"), Mode::Own).unwrap_err();
        assert!(
            e.contains("\"service-account\"") && e.contains("serviceaccount"),
            "{e}"
        );
    }

    #[test]
    fn a_pod_reads_with_its_service_accounts_role_where_the_namespace_says_so() {
        let role = "arn:aws:iam::123456789012:role/arrakis-bot";
        let id = resolve(
            Mode::ServiceAccount,
            "arrakis",
            "bot",
            Some(&annotated(role)),
        )
        .unwrap();
        let Identity::Workload(w) = &id else {
            panic!("{id:?}")
        };
        assert_eq!(w.role_arn, role);
        assert_eq!(w.session_name(), "arrakis.bot");
        assert_eq!(
            id.to_string(),
            "role arn:aws:iam::123456789012:role/arrakis-bot (session arrakis.bot)"
        );
        // Mode Own ignores the ServiceAccount entirely.
        assert_eq!(
            resolve(Mode::Own, "arrakis", "bot", None),
            Ok(Identity::Own)
        );
    }

    #[test]
    fn a_service_account_without_a_usable_role_is_a_clear_denial() {
        let e = resolve(
            Mode::ServiceAccount,
            "arrakis",
            "default",
            Some(&BTreeMap::new()),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("ServiceAccount default has no eks.amazonaws.com/role-arn"),
            "{e}"
        );
        let e = resolve(Mode::ServiceAccount, "arrakis", "bot", None).unwrap_err();
        assert!(
            e.to_string().contains("ServiceAccount bot does not exist"),
            "{e}"
        );
        for bad in [
            "arrakis-bot",
            "arn:aws:iam::12345:role/x",
            "arn:aws:iam::123456789012:user/x",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:sts::123456789012:role/x",
            "arn:aws:iam:us-east-1:123456789012:role/x",
        ] {
            let e = resolve(Mode::ServiceAccount, "a", "b", Some(&annotated(bad))).unwrap_err();
            assert!(matches!(e, IdentityError::BadRole { .. }), "{bad}: {e}");
        }
        assert!(is_role_arn(
            "arn:aws-us-gov:iam::123456789012:role/team/app-reader"
        ));
    }

    #[test]
    fn session_names_keep_within_64_characters_and_stay_distinct() {
        let w = |ns: &str, sa: &str| Workload {
            role_arn: "arn:aws:iam::123456789012:role/r".into(),
            namespace: ns.into(),
            service_account: sa.into(),
        };
        let long_ns = "n".repeat(63);
        let a = w(&long_ns, "reader").session_name();
        let b = w(&long_ns, "writer").session_name();
        assert_eq!(a.len(), SESSION_NAME_MAX);
        assert_eq!(b.len(), SESSION_NAME_MAX);
        assert_ne!(a, b);
        assert!(a.starts_with("nnnn"));
        // AWS's character set: [\w+=,.@-].
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"+=,.@-_".contains(&c))
        );
        assert_eq!(w("a", "b").session_name(), "a.b");
    }

    #[test]
    fn identities_differ_by_role_and_by_service_account() {
        let role = "arn:aws:iam::123456789012:role/r";
        let a = resolve(Mode::ServiceAccount, "n", "a", Some(&annotated(role))).unwrap();
        let a2 = resolve(Mode::ServiceAccount, "n", "a", Some(&annotated(role))).unwrap();
        let b = resolve(Mode::ServiceAccount, "n", "b", Some(&annotated(role))).unwrap();
        assert_eq!(a, a2);
        assert_ne!(a, b);
        assert_ne!(a, Identity::Own);
    }
}
