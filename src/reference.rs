//! Secret references (SPEC section 3):
//! `<secret-id>[?<option>[&<option>]][#<key>]`, the options a version
//! (`versionStage=<stage>` or `versionId=<id>`, at most one) and
//! `decode=base64`.

use std::borrow::Cow;
use std::fmt;

/// Which version of a secret a reference selects. The text is borrowed for
/// `AWSCURRENT`, which most references select without naming it: such a
/// version is made and copied without an allocation. (It hashes, compares
/// and prints as the text alone, owned or not.)
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// A staging label; `AWSCURRENT` when the reference pins nothing.
    Stage(Cow<'static, str>),
    /// A version id (a UUID in AWS).
    Id(Cow<'static, str>),
}

impl Version {
    pub fn current() -> Self {
        Version::Stage(Cow::Borrowed(CURRENT))
    }

    pub fn is_current(&self) -> bool {
        matches!(self, Version::Stage(s) if s == CURRENT)
    }

    /// The stage or the version id.
    pub fn selector(&self) -> &str {
        match self {
            Version::Stage(s) | Version::Id(s) => s,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Stage(s) => write!(f, "versionStage={s}"),
            Version::Id(s) => write!(f, "versionId={s}"),
        }
    }
}

/// The stage Secrets Manager gives the current version of a secret.
pub const CURRENT: &str = "AWSCURRENT";

/// A parsed `<ref>`, its id and key borrowed from the text parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretRef<'a> {
    /// The secret id as written: a name or an ARN.
    pub id: &'a str,
    pub version: Version,
    /// `#<key>`: a top-level key of the secret's JSON object.
    pub key: Option<&'a str>,
    /// `decode=base64`: the selected value is base64, injected decoded.
    pub decode: bool,
}

impl SecretRef<'_> {
    /// True when the id is an ARN; its canonical name is only known once
    /// Secrets Manager has answered.
    pub fn is_arn(&self) -> bool {
        self.id.starts_with("arn:")
    }
}

impl fmt::Display for SecretRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id)?;
        let mut sep = '?';
        if !self.version.is_current() {
            write!(f, "{sep}{}", self.version)?;
            sep = '&';
        }
        if self.decode {
            write!(f, "{sep}decode=base64")?;
        }
        if let Some(k) = &self.key {
            write!(f, "#{k}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("the reference is empty")]
    Empty,
    #[error("the secret id is empty")]
    EmptyId,
    #[error("the secret id {0:?} contains {1:?}, which a secret name cannot contain")]
    BadIdChar(String, char),
    #[error("the secret id {0:?} is longer than 2048 characters")]
    IdTooLong(String),
    #[error(
        "unknown option {0:?}: the options are versionStage=<stage> or versionId=<id> (not both) and decode=base64, joined by '&'"
    )]
    BadSelector(String),
    #[error("{0:?} names a version twice: use versionStage=<stage> or versionId=<id>, not both")]
    TwoVersions(String),
    #[error("unknown decoding {0:?}: decode=base64 is the one there is")]
    BadDecode(String),
    #[error("the version selector {0:?} has an empty value")]
    EmptySelector(String),
    #[error("the key after '#' is empty")]
    EmptyKey,
    #[error(
        "the ARN {0:?} is not a Secrets Manager secret ARN (arn:<partition>:secretsmanager:<region>:<account>:secret:<name>)"
    )]
    BadArn(String),
}

fn valid_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '+' | '=' | '.' | '@' | '-')
}

/// Parses one `<ref>`. Surrounding white space is ignored.
pub fn parse(input: &str) -> Result<SecretRef<'_>, RefError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(RefError::Empty);
    }
    let (rest, key) = match s.split_once('#') {
        Some((r, k)) => {
            if k.is_empty() {
                return Err(RefError::EmptyKey);
            }
            (r, Some(k))
        }
        None => (s, None),
    };
    let (id, version, decode) = match rest.split_once('?') {
        Some((id, options)) => {
            let (version, decode) = parse_options(options)?;
            (id, version, decode)
        }
        None => (rest, Version::current(), false),
    };
    validate_id(id)?;
    Ok(SecretRef {
        id,
        version,
        key,
        decode,
    })
}

/// The options after '?': at most one version, and `decode=base64`.
fn parse_options(options: &str) -> Result<(Version, bool), RefError> {
    let mut version = None;
    let mut decode = false;
    for option in options.split('&') {
        if let Some(how) = option.strip_prefix("decode=") {
            if how != "base64" || decode {
                return Err(RefError::BadDecode(option.into()));
            }
            decode = true;
        } else if version.replace(parse_selector(option)?).is_some() {
            return Err(RefError::TwoVersions(options.into()));
        }
    }
    Ok((version.unwrap_or_else(Version::current), decode))
}

fn parse_selector(sel: &str) -> Result<Version, RefError> {
    let (k, v) = sel
        .split_once('=')
        .ok_or_else(|| RefError::BadSelector(sel.into()))?;
    if v.is_empty() {
        return Err(RefError::EmptySelector(sel.into()));
    }
    if v.contains(|c: char| !(c.is_ascii_alphanumeric() || "_-.".contains(c))) {
        return Err(RefError::BadSelector(sel.into()));
    }
    match k {
        "versionStage" if v == CURRENT => Ok(Version::current()),
        "versionStage" => Ok(Version::Stage(v.to_owned().into())),
        "versionId" => Ok(Version::Id(v.to_owned().into())),
        _ => Err(RefError::BadSelector(sel.into())),
    }
}

fn validate_id(id: &str) -> Result<(), RefError> {
    if id.is_empty() {
        return Err(RefError::EmptyId);
    }
    if id.len() > 2048 {
        return Err(RefError::IdTooLong(id.chars().take(40).collect()));
    }
    if let Some(arn_rest) = id.strip_prefix("arn:") {
        // arn:<partition>:secretsmanager:<region>:<account>:secret:<name>
        let parts: Vec<&str> = arn_rest.splitn(6, ':').collect();
        let ok = parts.len() == 6
            && !parts[0].is_empty()
            && parts[1] == "secretsmanager"
            && parts[4] == "secret"
            && !parts[5].is_empty()
            && parts[5].chars().all(valid_name_char);
        return if ok {
            Ok(())
        } else {
            Err(RefError::BadArn(id.into()))
        };
    }
    if let Some(c) = id.chars().find(|c| !valid_name_char(*c)) {
        return Err(RefError::BadIdChar(id.into(), c));
    }
    Ok(())
}

/// Parses a comma-separated list of `<ref>`s (the `env-from` annotation).
pub fn parse_list(input: &str) -> Result<Vec<SecretRef<'_>>, RefError> {
    if input.trim().is_empty() {
        return Err(RefError::Empty);
    }
    input.split(',').map(parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_name_is_current_without_key() {
        let r = parse("arrakis/discord").unwrap();
        assert_eq!(r.id, "arrakis/discord");
        assert_eq!(r.version, Version::current());
        assert_eq!(r.key, None);
        assert!(!r.is_arn());
    }

    #[test]
    fn key_and_selectors() {
        let r = parse("arrakis/discord#bot_token").unwrap();
        assert_eq!(r.key, Some("bot_token"));
        let r = parse("a/b?versionStage=AWSPREVIOUS#k").unwrap();
        assert_eq!(r.version, Version::Stage("AWSPREVIOUS".into()));
        assert_eq!(r.key, Some("k"));
        let r = parse("a/b?versionId=0b5e2c1a-aaaa-bbbb-cccc-0123456789ab").unwrap();
        assert_eq!(
            r.version,
            Version::Id("0b5e2c1a-aaaa-bbbb-cccc-0123456789ab".into())
        );
    }

    #[test]
    fn the_current_version_is_one_whether_named_or_not_and_borrowed_or_owned() {
        use std::hash::BuildHasher;
        let implied = parse("a/b#k").unwrap().version;
        let named = parse("a/b?versionStage=AWSCURRENT#k").unwrap().version;
        // As the refresher reads it back from a pod's record.
        let owned = Version::Stage(String::from("AWSCURRENT").into());
        let hasher = std::collections::hash_map::RandomState::new();
        for v in [&named, &owned] {
            assert_eq!(v, &implied);
            assert!(v.is_current());
            assert_eq!(hasher.hash_one(v), hasher.hash_one(&implied));
            assert_eq!(v.to_string(), "versionStage=AWSCURRENT");
        }
        assert_eq!(
            parse("a/b?versionStage=AWSCURRENT").unwrap().to_string(),
            "a/b"
        );
    }

    #[test]
    fn names_may_hold_the_aws_punctuation() {
        for n in ["a/b_c+d=e.f@g-h", "x", "team.a/db@prod"] {
            assert_eq!(parse(n).unwrap().id, n);
        }
    }

    #[test]
    fn arn_is_accepted_and_flagged() {
        let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:arrakis/discord-AbCdEf";
        let text = format!("{arn}#bot_token");
        let r = parse(&text).unwrap();
        assert!(r.is_arn());
        assert_eq!(r.id, arn);
        assert!(matches!(
            parse("arn:aws:s3:::bucket"),
            Err(RefError::BadArn(_))
        ));
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        assert_eq!(parse(" "), Err(RefError::Empty));
        assert_eq!(parse("#k"), Err(RefError::EmptyId));
        assert_eq!(parse("a/b#"), Err(RefError::EmptyKey));
        assert!(matches!(parse("a b"), Err(RefError::BadIdChar(_, ' '))));
        assert!(matches!(
            parse("a/b?stage=X"),
            Err(RefError::BadSelector(_))
        ));
        assert!(matches!(
            parse("a/b?versionStage="),
            Err(RefError::EmptySelector(_))
        ));
        assert!(matches!(
            parse("a/b?versionStage=A?versionId=B"),
            Err(RefError::BadSelector(_))
        ));
        let msg = parse("a/b?stage=X").unwrap_err().to_string();
        assert!(msg.contains("versionStage"), "{msg}");
        assert!(matches!(
            parse("a/b?versionStage=A&versionId=B"),
            Err(RefError::TwoVersions(_))
        ));
        assert!(matches!(
            parse("a/b?decode=hex#k"),
            Err(RefError::BadDecode(_))
        ));
        assert!(matches!(
            parse("a/b?decode=base64&decode=base64"),
            Err(RefError::BadDecode(_))
        ));
        assert!(matches!(parse("a/b?decode"), Err(RefError::BadSelector(_))));
    }

    #[test]
    fn decode_is_an_option_beside_the_version() {
        let r = parse("arrakis/scylladb?decode=base64#bundle").unwrap();
        assert!(r.decode);
        assert!(r.version.is_current());
        assert_eq!(r.key, Some("bundle"));
        let r = parse("a/b?decode=base64&versionStage=AWSPREVIOUS").unwrap();
        assert!(r.decode);
        assert_eq!(r.version, Version::Stage("AWSPREVIOUS".into()));
        assert!(!parse("a/b#k").unwrap().decode);
    }

    #[test]
    fn list_splits_on_commas_and_rejects_empty_items() {
        let v = parse_list("a/x, a/y?versionStage=AWSPREVIOUS").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].id, "a/y");
        assert_eq!(parse_list("a/x,,a/y"), Err(RefError::Empty));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "a/b",
            "a/b#k",
            "a/b?versionStage=AWSPREVIOUS#k",
            "a/b?versionId=v1",
            "a/b?decode=base64#k",
            "a/b?versionStage=AWSPREVIOUS&decode=base64",
        ] {
            assert_eq!(parse(s).unwrap().to_string(), s);
        }
    }
}
