//! A secret value as Secrets Manager returns it, and how its parts render
//! into environment variable values (SPEC section 3).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use serde_json::Value;

use crate::reference::Version;

/// The value of one version of one secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Payload {
    String(String),
    Binary(Vec<u8>),
}

// Never print a value: this Debug shows only the shape.
impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Payload::String(s) => write!(f, "String(<{} bytes>)", s.len()),
            Payload::Binary(b) => write!(f, "Binary(<{} bytes>)", b.len()),
        }
    }
}

/// One fetched version of a secret. Its `Debug` shows names and sizes, never
/// the value or its parsed fields.
#[derive(Clone)]
pub struct SecretValue {
    /// The full ARN.
    pub arn: String,
    /// The canonical name, which the access rule is checked against.
    pub name: String,
    pub version_id: String,
    pub payload: Payload,
    /// [`SecretValue::json_fields`], parsed once per fetched value.
    fields: OnceLock<Result<BTreeMap<String, String>, ContentError>>,
    /// When it was read from Secrets Manager.
    fetched: Instant,
    /// Whether the secret cache holds it ([`crate::cache`]).
    held: Held,
    /// Backing Secret names derived from it ([`crate::backing::name_of`]),
    /// by slot: hashed once per value, not once per pod decided afresh.
    names: [OnceLock<(Version, String)>; 8],
}

/// What one slot of a value's backing names holds once made, about: the name
/// (at most 63 bytes, [`crate::backing::name`]) and the version it was made
/// for (a staging label or a version id).
const NAME_BYTES: usize = 64 + 64;

/// Whether a value is in the secret cache: never put there, held, or let go
/// (replaced, invalidated, expired or evicted; never held again). A copy is a
/// value of its own, not yet held.
#[derive(Default)]
struct Held(AtomicU8);

const NOT_HELD: u8 = 0;
const HELD: u8 = 1;
const LET_GO: u8 = 2;

impl Clone for Held {
    fn clone(&self) -> Self {
        Held::default()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretValue")
            .field("arn", &self.arn)
            .field("name", &self.name)
            .field("version_id", &self.version_id)
            .field("payload", &self.payload)
            .finish_non_exhaustive()
    }
}

impl SecretValue {
    /// About the bytes this value holds in memory: itself, its names, its
    /// payload and the fields parsed from it (about as many bytes again), and
    /// the backing names it keeps once they are made (`NAME_BYTES` a slot).
    /// Counted when the value is cached, before any name is made. The value
    /// cache is bounded by it.
    pub fn weight(&self) -> u32 {
        let payload = match &self.payload {
            Payload::String(s) => s.len(),
            Payload::Binary(b) => b.len(),
        };
        let bytes = std::mem::size_of::<Self>()
            + self.arn.len()
            + self.name.len()
            + self.version_id.len()
            + 2 * payload
            + self.names.len() * NAME_BYTES;
        bytes.min(u32::MAX as usize) as u32
    }
}

impl PartialEq for SecretValue {
    fn eq(&self, o: &Self) -> bool {
        (&self.arn, &self.name, &self.version_id, &self.payload)
            == (&o.arn, &o.name, &o.version_id, &o.payload)
    }
}

impl Eq for SecretValue {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    #[error("secret {0:?} is binary (SecretBinary), not a JSON object")]
    Binary(String),
    #[error("secret {0:?} is not a JSON object")]
    NotJsonObject(String),
    #[error("secret {secret:?} has no top-level key {key:?}")]
    MissingKey { secret: String, key: String },
    #[error(
        "secret {secret:?} has the key {key:?}, which cannot be a Kubernetes Secret key (letters, digits, '-', '_' and '.' only)"
    )]
    BadKey { secret: String, key: String },
    #[error("secret {0:?} is not base64, which decode=base64 needs")]
    NotBase64(String),
    #[error("the key {key:?} of secret {secret:?} is not base64, which decode=base64 needs")]
    KeyNotBase64 { secret: String, key: String },
}

/// A Kubernetes Secret data key: `[-._a-zA-Z0-9]+`, at most 253 characters.
pub fn valid_secret_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

/// Renders a JSON value as an env var value: strings as they are, anything
/// else as compact JSON text (`5432`, `true`).
pub fn render(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl SecretValue {
    pub fn new(arn: String, name: String, version_id: String, payload: Payload) -> Self {
        SecretValue {
            arn,
            name,
            version_id,
            payload,
            fields: OnceLock::new(),
            fetched: Instant::now(),
            held: Held::default(),
            names: Default::default(),
        }
    }

    /// The name kept in `slot` for `version`, else `make`'s (kept when the
    /// slot is free: a value is fetched for one version, so a slot rarely
    /// sees two).
    pub(crate) fn name_in(
        &self,
        slot: usize,
        version: &Version,
        make: impl FnOnce() -> String,
    ) -> String {
        let cell = &self.names[slot];
        match cell.get() {
            Some((v, name)) if v == version => name.clone(),
            Some(_) => make(),
            None => cell.get_or_init(|| (version.clone(), make())).1.clone(),
        }
    }

    /// When it was read from Secrets Manager (a copy keeps the time).
    pub fn fetched(&self) -> Instant {
        self.fetched
    }

    /// Marks it held by the secret cache, before it is put there; a value
    /// let go stays so.
    pub(crate) fn hold(&self) {
        let _ = self
            .held
            .0
            .compare_exchange(NOT_HELD, HELD, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Marks it let go by the secret cache (its eviction listener).
    pub(crate) fn let_go(&self) {
        self.held.0.store(LET_GO, Ordering::Release);
    }

    /// Whether the secret cache put it there and has not let it go since.
    pub fn is_held(&self) -> bool {
        self.held.0.load(Ordering::Acquire) == HELD
    }

    /// The top-level keys of a JSON object secret, rendered, each a valid
    /// Kubernetes Secret key. Parsed on first use, then kept with the value.
    pub fn json_fields(&self) -> &Result<BTreeMap<String, String>, ContentError> {
        self.fields.get_or_init(|| self.parse_fields())
    }

    fn parse_fields(&self) -> Result<BTreeMap<String, String>, ContentError> {
        let s = match &self.payload {
            Payload::Binary(_) => return Err(ContentError::Binary(self.name.clone())),
            Payload::String(s) => s,
        };
        let obj = match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(o)) => o,
            _ => return Err(ContentError::NotJsonObject(self.name.clone())),
        };
        obj.iter()
            .map(|(k, v)| {
                if valid_secret_key(k) {
                    Ok((k.clone(), render(v)))
                } else {
                    Err(ContentError::BadKey {
                        secret: self.name.clone(),
                        key: k.clone(),
                    })
                }
            })
            .collect()
    }

    /// The whole value as bytes: the SecretString, or the SecretBinary's raw bytes.
    pub fn raw_bytes(&self) -> &[u8] {
        match &self.payload {
            Payload::String(s) => s.as_bytes(),
            Payload::Binary(b) => b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn v(payload: Payload) -> SecretValue {
        SecretValue::new(
            "arn:aws:secretsmanager:us-east-1:1:secret:n/s-AbCdEf".into(),
            "n/s".into(),
            "v1".into(),
            payload,
        )
    }

    #[test]
    fn json_fields_render_non_strings_compactly() {
        let s = v(Payload::String(
            r#"{"url":"postgres://x","port":5432,"tls":true,"opts":{"a": [1, 2]},"n":null}"#.into(),
        ));
        let f = s.json_fields().as_ref().unwrap();
        assert_eq!(f["url"], "postgres://x");
        assert_eq!(f["port"], "5432");
        assert_eq!(f["tls"], "true");
        assert_eq!(f["opts"], r#"{"a":[1,2]}"#);
        assert_eq!(f["n"], "null");
    }

    #[test]
    fn non_objects_and_bad_keys_are_errors() {
        assert_eq!(
            v(Payload::String("plain".into())).json_fields(),
            &Err(ContentError::NotJsonObject("n/s".into()))
        );
        assert_eq!(
            v(Payload::String("[1]".into())).json_fields(),
            &Err(ContentError::NotJsonObject("n/s".into()))
        );
        assert_eq!(
            v(Payload::Binary(vec![0, 1])).json_fields(),
            &Err(ContentError::Binary("n/s".into()))
        );
        assert!(matches!(
            v(Payload::String(r#"{"a b":"x"}"#.into())).json_fields(),
            Err(ContentError::BadKey { .. })
        ));
    }

    #[test]
    fn the_weight_counts_the_value_and_every_backing_name_it_may_keep() {
        let s = v(Payload::String(r#"{"k":"v"}"#.into()));
        let before = s.weight() as usize;
        // Every slot filled, as pods reading it by name and by ARN, in each
        // form, would fill them.
        for slot in 0..s.names.len() {
            s.name_in(slot, &Version::Id("a".repeat(36).into()), || "n".repeat(63));
        }
        let names: usize = s
            .names
            .iter()
            .map(|c| {
                let (version, name) = c.get().unwrap();
                let held = match version {
                    Version::Stage(Cow::Owned(t)) | Version::Id(Cow::Owned(t)) => t.capacity(),
                    Version::Stage(Cow::Borrowed(_)) | Version::Id(Cow::Borrowed(_)) => 0,
                };
                held + name.capacity()
            })
            .sum();
        let held = std::mem::size_of::<SecretValue>()
            + s.arn.capacity()
            + s.name.capacity()
            + s.version_id.capacity()
            + 9
            + names;
        assert!(before >= held, "weighs {before} bytes, holds {held}");
    }

    #[test]
    fn debug_never_shows_the_value() {
        let s = v(Payload::String("hunter2".into()));
        assert!(!format!("{s:?}").contains("hunter2"));
        // Not once its JSON fields are parsed either.
        let j = v(Payload::String(r#"{"password":"hunter2"}"#.into()));
        assert!(j.json_fields().is_ok());
        let shown = format!("{j:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("n/s"),
            "{shown}"
        );
    }
}
