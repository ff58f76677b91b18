//! `decode=base64` (SPEC section 3): a value stored base64-encoded in Secrets
//! Manager (a certificate bundle, a keystore) injected as its bytes.

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// The standard alphabet, padding optional.
const STANDARD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The bytes `text` encodes in base64 (standard alphabet, padding optional,
/// ASCII white space such as the line breaks of wrapped output ignored), or
/// `None` when it is not base64. The empty text is the empty value.
pub fn base64(text: &[u8]) -> Option<Vec<u8>> {
    let compact: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    STANDARD.decode(compact).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_standard_base64_with_or_without_padding_and_line_breaks() {
        assert_eq!(base64(b"aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64(b"aGVsbG8").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64(b"aGVs\nbG8=\n").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64(b"AP8=").as_deref(), Some(&[0u8, 255][..]));
        assert_eq!(base64(b"").as_deref(), Some(&b""[..]));
    }

    #[test]
    fn refuses_what_is_not_base64() {
        for bad in [&b"not base64!"[..], b"a", b"aGVsbG8-", b"aGVs_G8="] {
            assert_eq!(base64(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}

/// `decode=base64` through the plan: which backing Secret a reference gets,
/// what it holds, and the denials.
#[cfg(test)]
mod plan_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::backing::{self, Form};
    use crate::fetch::{CachedResults, FetchKey};
    use crate::plan::{Caps, Content, Plan, resolve};
    use crate::policy::AccessRule;
    use crate::reference::Version;
    use crate::secret::{Payload, SecretValue};

    /// The seed's ScyllaDB secret: a base64 bundle beside a plain host.
    const SCYLLA: &str = r#"{"bundle":"AP8BAg==","host":"scylla.internal"}"#;

    fn plan(annotations: &[(&str, &str)], secret: &str) -> Result<Plan, Vec<String>> {
        let a = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let inj = crate::annotations::parse(&a, Duration::from_secs(60))
            .unwrap()
            .unwrap();
        let value = SecretValue::new(
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:a/scylla-AbCdEf".into(),
            "a/scylla".into(),
            "v1".into(),
            Payload::String(secret.into()),
        );
        let mut results = CachedResults::default();
        results.insert(
            FetchKey {
                id: "a/scylla".into(),
                version: Version::current(),
            },
            Ok(Arc::new(value)),
        );
        resolve(
            &inj,
            &AccessRule::for_namespace("a", None),
            &results,
            &Caps::default(),
        )
    }

    fn data(p: &Plan, form: Form) -> std::collections::BTreeMap<String, Vec<u8>> {
        let b = p.backing.iter().find(|b| b.form == form).expect("the form");
        let Content::Fresh { value } = &b.content else {
            panic!("fetched")
        };
        backing::data(value, form)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    }

    #[test]
    fn a_decoded_key_gets_its_bytes_beside_the_plain_keys() {
        let p = plan(
            &[
                ("sm-injector.io/env.BUNDLE", "a/scylla?decode=base64#bundle"),
                ("sm-injector.io/env.HOST", "a/scylla#host"),
            ],
            SCYLLA,
        )
        .unwrap();
        // Two backing Secrets of one fetched value: the plain keys and the
        // decoded ones (a key that is not base64 is left out of the latter).
        assert_eq!(p.backing.len(), 2);
        let decoded = backing::name("a/scylla", &Version::current(), Form::KeysBase64);
        assert!(decoded.starts_with("sm-a-scylla-b64-"), "{decoded}");
        let bundle = p.env.iter().find(|e| e.var == "BUNDLE").unwrap();
        assert_eq!(
            (bundle.secret.as_str(), bundle.key.as_str()),
            (decoded.as_str(), "bundle")
        );
        assert_eq!(data(&p, Form::KeysBase64)["bundle"], [0u8, 255, 1, 2]);
        assert_eq!(data(&p, Form::Keys)["bundle"], b"AP8BAg==");
        assert_eq!(data(&p, Form::Keys)["host"], b"scylla.internal");
    }

    #[test]
    fn a_value_that_is_not_base64_is_a_denial_naming_the_key_and_reference() {
        let e = plan(
            &[("sm-injector.io/env.HOST", "a/scylla?decode=base64#host")],
            r#"{"host":"scylla.internal!"}"#,
        )
        .unwrap_err();
        assert_eq!(
            e,
            [
                "sm-injector.io/env.HOST: the key \"host\" of secret \"a/scylla\" is not base64, which decode=base64 needs"
            ]
        );
        let e = plan(
            &[("sm-injector.io/env.ALL", "a/scylla?decode=base64")],
            "not base64!",
        )
        .unwrap_err();
        assert_eq!(
            e,
            [
                "sm-injector.io/env.ALL: secret \"a/scylla\" is not base64, which decode=base64 needs"
            ]
        );
        let e = plan(
            &[("sm-injector.io/env-from", "a/scylla?decode=base64")],
            SCYLLA,
        )
        .unwrap_err();
        assert!(e[0].contains("values are not base64 (\"host\")"), "{e:?}");
    }

    #[test]
    fn the_whole_value_decoded_and_mounted_as_files_decoded() {
        let p = plan(
            &[("sm-injector.io/env.ALL", "a/scylla?decode=base64")],
            "aGVsbG8=",
        )
        .unwrap();
        assert_eq!(data(&p, Form::RawBase64)["value"], b"hello");
        // Mounted: the directory of a secret the pod asks decoded holds the
        // decoded keys.
        let p = plan(
            &[
                ("sm-injector.io/env.HOST", "a/scylla#host"),
                ("sm-injector.io/env.BUNDLE", "a/scylla?decode=base64#bundle"),
                ("sm-injector.io/mount-path", "/etc/secrets"),
            ],
            SCYLLA,
        )
        .unwrap();
        assert_eq!(p.mounts.len(), 1);
        assert_eq!(p.mounts[0].path, "/etc/secrets/a/scylla");
        assert_eq!(
            p.mounts[0].secret,
            backing::name("a/scylla", &Version::current(), Form::KeysBase64)
        );
    }
}
