//! Backing Secrets (SPEC section 5): their names and contents, as pure functions.
//!
//! A backing Secret holds one version selector of one secret in one namespace, in
//! one of two forms:
//! - [`Form::Keys`]: the top-level keys of a JSON object secret, one data key each
//!   (used by `#key` references, `env-from` and `mount-path`);
//! - [`Form::Raw`]: the whole SecretString (or SecretBinary) under the data key
//!   [`RAW_KEY`] (used by `env.<VAR>` references without `#key`).
//!
//! They are separate Secrets because `envFrom` must see exactly the secret's
//! top-level keys, nothing more. References with `decode=base64` have each
//! form's decoded twin ([`Form::KeysBase64`], [`Form::RawBase64`]): the bytes
//! the base64 text encodes.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use sha2::{Digest, Sha256};

use crate::decode;
use crate::reference::Version;
use crate::secret::{ContentError, SecretValue};

pub const FIELD_MANAGER: &str = "sm-injector";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "sm-injector";
/// The data key of a raw-form backing Secret.
pub const RAW_KEY: &str = "value";
pub const ANN_ARN: &str = "sm-injector.io/source-arn";
pub const ANN_NAME: &str = "sm-injector.io/source-name";
pub const ANN_SELECTOR: &str = "sm-injector.io/version-selector";
pub const ANN_VERSION_ID: &str = "sm-injector.io/version-id";
pub const ANN_REFRESHED: &str = "sm-injector.io/refreshed-at";
pub const ANN_FORM: &str = "sm-injector.io/form";

/// One backing Secret: (namespace, backing Secret name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub namespace: String,
    pub backing: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Form {
    Keys,
    Raw,
    /// The keys whose values are base64, decoded; the others left out.
    KeysBase64,
    /// The whole value, base64, decoded.
    RawBase64,
}

impl Form {
    /// The form a reference needs: key per key (`#key`, env-from, mounts)
    /// or the whole value, decoded or not.
    pub fn of(keys: bool, decode: bool) -> Form {
        match (keys, decode) {
            (true, false) => Form::Keys,
            (false, false) => Form::Raw,
            (true, true) => Form::KeysBase64,
            (false, true) => Form::RawBase64,
        }
    }

    /// Whether it holds the secret's keys (else the whole value).
    pub fn is_keys(self) -> bool {
        matches!(self, Form::Keys | Form::KeysBase64)
    }

    /// Whether its values are decoded from base64.
    pub fn decodes(self) -> bool {
        matches!(self, Form::KeysBase64 | Form::RawBase64)
    }

    pub fn parse(s: &str) -> Option<Form> {
        match s {
            "keys" => Some(Form::Keys),
            "raw" => Some(Form::Raw),
            "keys-base64" => Some(Form::KeysBase64),
            "raw-base64" => Some(Form::RawBase64),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Form::Keys => "keys",
            Form::Raw => "raw",
            Form::KeysBase64 => "keys-base64",
            Form::RawBase64 => "raw-base64",
        }
    }
}

fn dns_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// The backing Secret's name: `sm-<readable>-<hash>`, at most 63 characters so that
/// it is also a valid volume name. `<readable>` comes from the secret name (and the
/// pinned stage, and `raw`); the hash of the exact (name, version, form) keeps two
/// names that read alike apart (`a/b` and `a-b`).
pub fn name(secret_name: &str, version: &Version, form: Form) -> String {
    name_scoped(secret_name, None, version, form)
}

/// The scope of a secret named by ARN: `<region>:<account>`, so that a secret
/// of another account or region never shares a backing Secret with the local
/// one of the same name. `None` for anything that is not a Secrets Manager ARN.
pub fn arn_scope(arn: &str) -> Option<String> {
    let mut parts = arn.splitn(7, ':');
    let (Some("arn"), Some(_partition), Some("secretsmanager"), Some(region), Some(account)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    Some(format!("{region}:{account}"))
}

/// Whether `arn` is a Secrets Manager ARN of the secret named `secret`: its
/// resource is `secret:<secret>` with AWS's six-character suffix
/// (`-AbCdEf`), or without it (a partial ARN). A record's entry pairs a name
/// (what the access rule is checked against) with an ARN (what is fetched):
/// the two must name the same secret.
pub fn arn_names(arn: &str, secret: &str) -> bool {
    let mut parts = arn.splitn(7, ':');
    let (
        Some("arn"),
        Some(_),
        Some("secretsmanager"),
        Some(_),
        Some(_),
        Some("secret"),
        Some(rest),
    ) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    )
    else {
        return false;
    };
    rest == secret
        || rest
            .strip_prefix(secret)
            .and_then(|s| s.strip_prefix('-'))
            .is_some_and(|s| s.len() == 6 && s.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// [`name`] for a secret that a reference named by ARN: the ARN's scope
/// ([`arn_scope`]) goes into the hash, which is 64 bits (16 hex digits): a
/// tenant cannot search out two references whose backing Secrets share a
/// name, as it could the 32 bits of earlier releases ([`legacy_name_scoped`]).
pub fn name_scoped(
    secret_name: &str,
    scope: Option<&str>,
    version: &Version,
    form: Form,
) -> String {
    derive(secret_name, scope, version, form, 8)
}

/// [`name_scoped`] of the backing Secret of `value` in `form`, read by a
/// reference of `version` (by ARN when `by_arn`, scoped to its account and
/// region): the hash is taken once per fetched value.
pub fn name_of(value: &SecretValue, by_arn: bool, version: &Version, form: Form) -> String {
    let slot = 4 * by_arn as usize + form as usize;
    value.name_in(slot, version, || {
        let scope = by_arn.then(|| arn_scope(&value.arn)).flatten();
        name_scoped(&value.name, scope.as_deref(), version, form)
    })
}

/// The name earlier releases gave (a 32-bit hash): backing Secrets and pod
/// records written by them are still taken for what they are, until their
/// pods are gone and they are collected; new pods get [`name_scoped`].
pub fn legacy_name_scoped(
    secret_name: &str,
    scope: Option<&str>,
    version: &Version,
    form: Form,
) -> String {
    derive(secret_name, scope, version, form, 4)
}

/// `sm-<readable>-<hash>` with `hash_bytes` of the SHA-256, in at most 63
/// characters.
fn derive(
    secret_name: &str,
    scope: Option<&str>,
    version: &Version,
    form: Form,
    hash_bytes: usize,
) -> String {
    let mut readable = dns_part(secret_name);
    match version {
        v if v.is_current() => {}
        Version::Stage(s) => {
            readable.push('-');
            readable.push_str(&dns_part(s));
        }
        Version::Id(_) => readable.push_str("-pinned"),
    }
    match form {
        Form::Keys => {}
        Form::Raw => readable.push_str("-raw"),
        Form::KeysBase64 => readable.push_str("-b64"),
        Form::RawBase64 => readable.push_str("-raw-b64"),
    }
    let mut h = Sha256::new();
    if let Some(scope) = scope {
        h.update(b"arn:");
        h.update(scope.as_bytes());
        h.update([0]);
    }
    h.update(secret_name.as_bytes());
    h.update([0]);
    // `Version`'s text, without building it.
    match version {
        Version::Stage(s) => h.update([b"versionStage=", s.as_bytes()].concat()),
        Version::Id(s) => h.update([b"versionId=", s.as_bytes()].concat()),
    }
    h.update([0]);
    h.update(form.as_str().as_bytes());
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // 63 - "sm-" - "-" - the hash's hex digits
    readable.truncate(63 - 4 - 2 * hash_bytes);
    let readable = readable.trim_matches('-');
    let mut out = String::with_capacity(4 + readable.len() + 2 * hash_bytes);
    out.push_str("sm-");
    if !readable.is_empty() {
        out.push_str(readable);
        out.push('-');
    }
    for b in &h.finalize()[..hash_bytes] {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

/// The data of a backing Secret of `form` for `value`.
pub fn data(value: &SecretValue, form: Form) -> Result<BTreeMap<String, ByteString>, ContentError> {
    Ok(match form {
        Form::Keys => value
            .json_fields()
            .as_ref()
            .map_err(Clone::clone)?
            .iter()
            .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
            .collect(),
        Form::Raw => {
            BTreeMap::from([(RAW_KEY.to_string(), ByteString(value.raw_bytes().to_vec()))])
        }
        Form::KeysBase64 => value
            .json_fields()
            .as_ref()
            .map_err(Clone::clone)?
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), ByteString(decode::base64(v.as_bytes())?))))
            .collect(),
        Form::RawBase64 => {
            let bytes = decode::base64(value.raw_bytes())
                .ok_or_else(|| ContentError::NotBase64(value.name.clone()))?;
            BTreeMap::from([(RAW_KEY.to_string(), ByteString(bytes))])
        }
    })
}

/// The Secret object to create or replace ([`crate::store::write_backing`],
/// field manager [`FIELD_MANAGER`]). It holds `data`, never `stringData`, and a
/// replace sets exactly that data, so keys removed from the secret go. `name` is the backing Secret's ([`name`] or
/// [`name_scoped`]).
pub fn object(
    namespace: &str,
    name: &str,
    value: &SecretValue,
    version: &Version,
    form: Form,
    refreshed_at: &str,
) -> Result<Secret, ContentError> {
    let data = data(value, form)?;
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_string(),
                MANAGED_BY_VALUE.to_string(),
            )])),
            annotations: Some(BTreeMap::from([
                (ANN_ARN.to_string(), value.arn.clone()),
                (ANN_NAME.to_string(), value.name.clone()),
                (ANN_SELECTOR.to_string(), version.to_string()),
                (ANN_VERSION_ID.to_string(), value.version_id.clone()),
                (ANN_FORM.to_string(), form.as_str().to_string()),
                (ANN_REFRESHED.to_string(), refreshed_at.to_string()),
            ])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests;
