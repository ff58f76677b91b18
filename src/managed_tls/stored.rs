//! The CA Secret's layout, read and written: `ca.crt`/`ca.key` (the CA that
//! signs now), `previous-ca.crt`/`previous-ca.key` (the one it replaced,
//! while still trusted), and the annotation saying when the current CA was
//! made. Also the caBundle's PEM certificates, split for comparison.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::plan::{Stored, StoredCa};

pub const CREATED_AT: &str = "sm-injector.io/ca-created-at";
const KEYS: [(&str, &str); 2] = [("ca.crt", "ca.key"), ("previous-ca.crt", "previous-ca.key")];

/// Reads the Secret; the error names the key that is missing or does not
/// parse (the Secret is then left as it is, for an admin to look at).
pub fn parse(secret: &Secret) -> Result<Stored, String> {
    let data = secret.data.clone().unwrap_or_default();
    let text = |k: &str| -> Result<Option<String>, String> {
        data.get(k)
            .map(|b| String::from_utf8(b.0.clone()).map_err(|_| format!("{k} is not PEM text")))
            .transpose()
    };
    let mut out = [None, None];
    for (i, (crt, key)) in KEYS.into_iter().enumerate() {
        match (text(crt)?, text(key)?) {
            (None, None) if i == 1 => {}
            (Some(c), Some(k)) => {
                let not_after = check_pair(&c, &k).map_err(|e| format!("{crt}/{key}: {e}"))?;
                out[i] = Some((c, k, not_after));
            }
            _ => return Err(format!("{crt} and {key} must both be present")),
        }
    }
    let [current, previous] = out;
    let (cert, key, not_after) = current.expect("checked above");
    let created = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CREATED_AT))
        .ok_or_else(|| format!("the annotation {CREATED_AT} is missing"))?
        .parse::<k8s_openapi::jiff::Timestamp>()
        .map_err(|e| format!("the annotation {CREATED_AT}: {e}"))?
        .as_second();
    Ok(Stored {
        current: Some(StoredCa {
            cert,
            key,
            created,
            not_after,
        }),
        previous: previous.map(|(cert, key, not_after)| StoredCa {
            cert,
            key,
            created: 0,
            not_after,
        }),
    })
}

/// Checks that `key` is the private key of the CA certificate `cert`; its expiry.
fn check_pair(cert: &str, key: &str) -> Result<i64, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    let x509 = pem
        .parse_x509()
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    if !x509.is_ca() {
        return Err("the certificate is not a CA".into());
    }
    let pair = rcgen::KeyPair::from_pem(key).map_err(|e| format!("not a PEM key: {e}"))?;
    if x509.tbs_certificate.subject_pki.raw
        != rcgen::PublicKeyData::subject_public_key_info(&pair).as_slice()
    {
        return Err("the key is not the certificate's".into());
    }
    Ok(x509.validity().not_after.timestamp())
}

/// The Secret holding `s`, owned by the webhook configuration (deleting it
/// deletes the CA).
pub fn object(
    name: &str,
    namespace: &str,
    s: &Stored,
    owner: OwnerReference,
    resource_version: Option<String>,
) -> Secret {
    let mut data = BTreeMap::new();
    for ((crt, key), ca) in KEYS.into_iter().zip([&s.current, &s.previous]) {
        if let Some(ca) = ca {
            data.insert(crt.to_string(), ByteString(ca.cert.clone().into_bytes()));
            data.insert(key.to_string(), ByteString(ca.key.clone().into_bytes()));
        }
    }
    let created = s.current.as_ref().map_or(0, |c| c.created);
    let created = k8s_openapi::jiff::Timestamp::from_second(created)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            resource_version,
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/name".into(), "sm-injector".into()),
                ("app.kubernetes.io/component".into(), "webhook-ca".into()),
            ])),
            annotations: Some(BTreeMap::from([(CREATED_AT.into(), created.to_string())])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// The certificates of a PEM caBundle (DER), to compare bundles by what
/// they trust rather than by their text.
pub fn certificates(bundle: &[u8]) -> Vec<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::pem_slice_iter(bundle)
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect()
}

/// The caBundle holding these PEM certificates.
pub fn join(certs: &[&str]) -> String {
    certs
        .iter()
        .map(|c| format!("{}\n", c.trim_end()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::Ca;
    use std::time::Duration;

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "admissionregistration.k8s.io/v1".into(),
            kind: "MutatingWebhookConfiguration".into(),
            name: "sm-injector".into(),
            uid: "u".into(),
            ..Default::default()
        }
    }

    fn stored_ca(validity: u64) -> StoredCa {
        let ca = Ca::new("t", Duration::from_secs(validity)).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem().as_bytes()).unwrap();
        let not_after = pem.parse_x509().unwrap().validity().not_after.timestamp();
        StoredCa {
            cert: ca.cert_pem(),
            key: ca.key_pem(),
            created: 1_700_000_000,
            not_after,
        }
    }

    #[test]
    fn a_written_secret_reads_back_and_a_broken_one_is_named() {
        let s = Stored {
            current: Some(stored_ca(3600)),
            previous: Some(StoredCa {
                created: 0,
                ..stored_ca(60)
            }),
        };
        let secret = object("ca", "ns", &s, owner(), None);
        assert_eq!(parse(&secret).unwrap(), s);

        let mut broken = secret.clone();
        let data = broken.data.as_mut().unwrap();
        let other = stored_ca(60);
        data.insert("ca.key".into(), ByteString(other.key.into_bytes()));
        let err = parse(&broken).unwrap_err();
        assert!(err.contains("ca.crt/ca.key: the key is not"), "{err}");
        broken.data.as_mut().unwrap().remove("ca.key");
        assert!(parse(&broken).unwrap_err().contains("must both be present"));

        let mut leaf = secret.clone();
        let ca = Ca::new("t", Duration::from_secs(60)).unwrap();
        let server = ca.server("s", &["x"]).unwrap();
        let data = leaf.data.as_mut().unwrap();
        data.insert("ca.crt".into(), ByteString(server.cert.into_bytes()));
        data.insert("ca.key".into(), ByteString(server.key.into_bytes()));
        assert!(parse(&leaf).unwrap_err().contains("not a CA"));

        let mut unstamped = secret;
        unstamped.metadata.annotations = None;
        assert!(parse(&unstamped).unwrap_err().contains(CREATED_AT));
    }

    #[test]
    fn bundles_compare_by_certificate() {
        let (a, b) = (stored_ca(60).cert, stored_ca(60).cert);
        let joined = join(&[&a, &b]);
        let split = certificates(format!("\n{a}\r\n\n{b}").as_bytes());
        assert_eq!(split.len(), 2);
        assert_eq!(split, certificates(joined.as_bytes()));
        assert_eq!(certificates(a.as_bytes()), split[..1]);
        assert!(certificates(b"not PEM").is_empty());
    }
}
