//! A small certificate authority (rcgen): the webhook's serving certificate,
//! and, for the test bed, the control plane's certificates.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    validity: Duration,
}

fn params(cn: &str, validity: Duration) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    // rcgen's default validity runs from 1975 to 4096: always set both ends.
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::try_from(validity).unwrap_or(time::Duration::days(365));
    p
}

impl Ca {
    pub fn new(cn: &str, validity: Duration) -> Result<Self, rcgen::Error> {
        let mut p = params(cn, validity);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert_pem = p.self_signed(&key)?.pem();
        Ok(Ca {
            issuer: Issuer::new(p, key),
            cert_pem,
            validity,
        })
    }

    /// An existing CA, from its PEM certificate and key (to issue a new serving
    /// certificate under the CA that the webhook's caBundle already trusts).
    pub fn from_pem(cert: &str, key: &str, validity: Duration) -> Result<Self, rcgen::Error> {
        Ok(Ca {
            issuer: Issuer::from_ca_cert_pem(cert, KeyPair::from_pem(key)?)?,
            cert_pem: cert.to_string(),
            validity,
        })
    }

    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A server certificate for these DNS names and IP addresses.
    pub fn server(&self, cn: &str, names: &[&str]) -> Result<Pem, rcgen::Error> {
        let mut p = params(cn, self.validity);
        p.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName((*n).try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        self.sign(p)
    }

    /// A client certificate: Kubernetes reads the user from CN and the groups from O.
    pub fn client(&self, user: &str, groups: &[&str]) -> Result<Pem, rcgen::Error> {
        let mut p = params(user, self.validity);
        for g in groups {
            p.distinguished_name.push(DnType::OrganizationName, *g);
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(p)
    }

    fn sign(&self, p: CertificateParams) -> Result<Pem, rcgen::Error> {
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// The shipped MutatingWebhookConfiguration (manifests/).
const WEBHOOK_MANIFEST: &str = include_str!("../manifests/mutatingwebhookconfiguration.yaml");

/// What `sm-injector certs` writes: (file name, contents).
pub fn webhook_files(
    ca: &Ca,
    service: &str,
    namespace: &str,
    secret_name: &str,
) -> Result<Vec<(&'static str, String)>, String> {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::core::v1::Secret;

    let names = [
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ];
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let serving = ca
        .server(&names[2], &name_refs)
        .map_err(|e| format!("cannot issue the serving certificate: {e}"))?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(secret_name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("tls.crt", &serving.cert),
                ("tls.key", &serving.key),
                ("ca.crt", &ca.cert_pem()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes())))
            .collect(),
        ),
        ..Default::default()
    };
    let mut webhook: MutatingWebhookConfiguration = serde_yaml_ng::from_str(WEBHOOK_MANIFEST)
        .map_err(|e| format!("the embedded webhook manifest does not parse: {e}"))?;
    for w in webhook.webhooks.iter_mut().flatten() {
        w.client_config.ca_bundle = Some(ByteString(ca.cert_pem().into_bytes()));
        if let Some(svc) = w.client_config.service.as_mut() {
            svc.name = service.into();
            svc.namespace = namespace.into();
        }
    }
    Ok(vec![
        ("ca.crt", ca.cert_pem()),
        ("ca.key", ca.key_pem()),
        ("tls.crt", serving.cert.clone()),
        ("tls.key", serving.key.clone()),
        ("tls-secret.yaml", to_yaml(&secret)?),
        ("mutatingwebhookconfiguration.yaml", to_yaml(&webhook)?),
        ("kustomization.yaml", component(&ca.cert_pem())),
    ])
}

/// A kustomize Component carrying the TLS Secret and the webhook's
/// `caBundle`, for an overlay of `manifests/` to include: every
/// `kubectl apply -k` of that overlay then applies the `caBundle` too, where
/// re-applying the base alone after `kubectl apply -f` of the filled-in
/// configuration would remove it.
fn component(ca_pem: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "# Written by `sm-injector certs`: include it in an overlay of manifests/\n\
         # (components: [<this folder>]) so that every apply carries the caBundle.\n\
         apiVersion: kustomize.config.k8s.io/v1alpha1\n\
         kind: Component\n\
         resources:\n\
         - tls-secret.yaml\n\
         patches:\n\
         - target: {{group: admissionregistration.k8s.io, kind: MutatingWebhookConfiguration, name: sm-injector}}\n  \
         patch: |-\n    \
         - op: add\n      \
         path: /webhooks/0/clientConfig/caBundle\n      \
         value: {b64}\n"
    )
}

/// Files of [`webhook_files`] that hold a private key (the TLS Secret
/// manifest too): written readable by their owner only.
pub fn holds_private_key(name: &str) -> bool {
    matches!(name, "ca.key" | "tls.key" | "tls-secret.yaml")
}

fn to_yaml<T: serde::Serialize>(v: &T) -> Result<String, String> {
    serde_yaml_ng::to_string(v).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_pem_certificates() {
        let ca = Ca::new("test-ca", Duration::from_secs(86400)).unwrap();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let s = ca.server("webhook", &["127.0.0.1", "svc.ns.svc"]).unwrap();
        assert!(s.cert.contains("BEGIN CERTIFICATE") && s.key.contains("PRIVATE KEY"));
        let c = ca.client("admin", &["system:masters"]).unwrap();
        assert!(c.cert.contains("BEGIN CERTIFICATE"));
        let again = Ca::from_pem(&ca.cert_pem(), &ca.key_pem(), Duration::from_secs(60)).unwrap();
        assert!(again.server("w", &["w.ns.svc"]).is_ok());
        assert_eq!(
            again.cert_pem(),
            ca.cert_pem(),
            "the same CA, so caBundle need not change"
        );
    }

    #[test]
    fn webhook_files_fill_in_the_ca_bundle_and_the_service() {
        use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
        use k8s_openapi::api::core::v1::Secret;
        let ca = Ca::new("ca", Duration::from_secs(86400)).unwrap();
        let files = webhook_files(&ca, "smi", "infra", "smi-tls").unwrap();
        let get = |n: &str| files.iter().find(|(f, _)| *f == n).unwrap().1.clone();
        let w: MutatingWebhookConfiguration =
            serde_yaml_ng::from_str(&get("mutatingwebhookconfiguration.yaml")).unwrap();
        let cc = &w.webhooks.as_ref().unwrap()[0].client_config;
        assert_eq!(cc.ca_bundle.as_ref().unwrap().0, ca.cert_pem().into_bytes());
        let svc = cc.service.as_ref().unwrap();
        assert_eq!(
            (svc.name.as_str(), svc.namespace.as_str()),
            ("smi", "infra")
        );
        let k: serde_json::Value = serde_yaml_ng::from_str(&get("kustomization.yaml")).unwrap();
        assert_eq!(k["kind"], "Component");
        assert_eq!(k["resources"][0], "tls-secret.yaml");
        let ops: serde_json::Value =
            serde_yaml_ng::from_str(k["patches"][0]["patch"].as_str().unwrap()).unwrap();
        use base64::Engine;
        let pem = base64::engine::general_purpose::STANDARD
            .decode(ops[0]["value"].as_str().unwrap())
            .unwrap();
        assert_eq!(pem, ca.cert_pem().into_bytes());
        let s: Secret = serde_yaml_ng::from_str(&get("tls-secret.yaml")).unwrap();
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("infra"));
        assert!(s.data.unwrap().contains_key("tls.key"));
    }
}
