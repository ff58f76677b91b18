//! A small certificate authority (rcgen): the webhook's serving certificate,
//! and, for the test bed, the control plane's certificates.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
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
        let issuer = CertifiedIssuer::self_signed(p, KeyPair::generate()?)?;
        Ok(Ca { issuer, validity })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
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
    }
}
