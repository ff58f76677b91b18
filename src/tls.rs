//! The serving TLS configuration: the certificate and key, and optionally the
//! CA whose client certificates are required (the API server's webhook client
//! certificate), read from files and rebuilt when they change. rustls speaks
//! TLS 1.2 and 1.3 only.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use axum_server::tls_rustls::RustlsConfig;

use crate::metrics::Metrics;

/// Where the serving certificate, its key and the client CA live.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, a client must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

/// Where the serving certificate comes from.
#[derive(Clone)]
pub enum Certificates {
    /// Files, reloaded when they change.
    Files(TlsFiles),
    /// A configuration kept up to date by its owner ([`crate::managed_tls`]).
    Kept(axum_server::tls_rustls::RustlsConfig),
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Certificates::Files(files) => f.debug_tuple("Files").field(files).finish(),
            Certificates::Kept(_) => f.write_str("Kept"),
        }
    }
}

/// The files' bytes, compared to notice a change.
pub type Contents = Vec<Option<Vec<u8>>>;

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| p.as_path())
    }

    pub async fn read(&self) -> Contents {
        let mut out = Vec::new();
        for p in self.paths() {
            out.push(tokio::fs::read(p).await.ok());
        }
        out
    }

    /// Builds the server configuration from `contents` (as [`Self::read`]
    /// returned them); the error names the file that does not load.
    pub fn config(&self, contents: &Contents) -> io::Result<Arc<ServerConfig>> {
        let file = |i: usize| -> io::Result<(String, &[u8])> {
            let path = self.paths().nth(i).expect("one content per path");
            let bytes = contents[i]
                .as_deref()
                .ok_or_else(|| invalid(&path.display(), "cannot be read"))?;
            Ok((path.display().to_string(), bytes))
        };
        let client_ca = match self.client_ca {
            Some(_) => Some(file(2)?),
            None => None,
        };
        server_config(file(0)?, file(1)?, client_ca)
    }
}

/// A server configuration for this PEM certificate chain and key, requiring
/// client certificates signed by `client_ca` when given; each comes with the
/// name its errors use (a file's path).
pub fn server_config(
    cert: (String, &[u8]),
    key: (String, &[u8]),
    client_ca: Option<(String, &[u8])>,
) -> io::Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.1)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(&cert.0, &e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid(&cert.0, "holds no PEM certificate"));
    }
    let private =
        PrivateKeyDer::from_pem_slice(key.1).map_err(|e| invalid(&key.0, &e.to_string()))?;
    let builder = ServerConfig::builder();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some((name, pem)) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem) {
                let c = c.map_err(|e| invalid(&name, &e.to_string()))?;
                roots.add(c).map_err(|e| invalid(&name, &e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(invalid(&name, "holds no PEM certificate"));
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| invalid(&name, &e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, private)
        .map_err(|e| invalid(&key.0, &e.to_string()))?;
    // HTTP/1.1 only: what the API server speaks to webhooks.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// When the serving certificate (the first in the file) expires, as Unix
/// seconds; `None` when `contents` hold none that parses.
pub fn not_after(contents: &Contents) -> Option<i64> {
    let pem = contents.first()?.as_deref()?;
    let der = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

fn invalid(name: &dyn std::fmt::Display, why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{name}: {why}"))
}

/// Rebuilds the TLS configuration when a file changes. Kubernetes updates
/// mounted Secrets by swapping a symlink, so the files are polled, not watched.
pub async fn reload_when_changed(
    config: RustlsConfig,
    files: TlsFiles,
    every: Duration,
    metrics: Metrics,
) {
    let mut last = files.read().await;
    loop {
        tokio::time::sleep(every).await;
        let now = files.read().await;
        if now == last {
            continue;
        }
        match files.config(&now) {
            Ok(c) => {
                config.reload_from_config(c);
                if let Some(t) = not_after(&now) {
                    metrics.serving_certificate_expiry(t);
                }
                tracing::info!(cert = %files.cert.display(), "serving certificate reloaded");
            }
            // A half-written set: keep the old one and try again next time.
            Err(e) => {
                tracing::warn!(error = %e, "certificate files changed but do not load yet");
                continue;
            }
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::Ca;
    use std::time::Duration;

    fn files(dir: &Path, client_ca: bool) -> TlsFiles {
        let ca = Ca::new("t", Duration::from_secs(3600)).unwrap();
        let pem = ca.server("s", &["localhost"]).unwrap();
        std::fs::write(dir.join("tls.crt"), &pem.cert).unwrap();
        std::fs::write(dir.join("tls.key"), &pem.key).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.cert_pem()).unwrap();
        TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            client_ca: client_ca.then(|| dir.join("ca.crt")),
        }
    }

    #[tokio::test]
    async fn builds_with_and_without_a_client_ca_and_names_a_bad_file() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path(), false);
        let c = f.config(&f.read().await).unwrap();
        assert_eq!(c.alpn_protocols, [b"http/1.1".to_vec()]);

        let f = files(dir.path(), true);
        f.config(&f.read().await).unwrap();
        let expiry = not_after(&f.read().await).expect("the certificate's expiry");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((expiry - now - 3600).abs() < 120, "{expiry} vs {now}");

        std::fs::write(dir.path().join("ca.crt"), "not a certificate").unwrap();
        let err = f.config(&f.read().await).unwrap_err().to_string();
        assert!(err.contains("ca.crt") && err.contains("no PEM"), "{err}");
        std::fs::remove_file(dir.path().join("tls.key")).unwrap();
        let err = f.config(&f.read().await).unwrap_err().to_string();
        assert!(err.contains("tls.key: cannot be read"), "{err}");
    }
}
