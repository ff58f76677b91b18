//! `sm-injector certs`: the webhook's serving certificate and its manifests.

use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct CertsArgs {
    /// The webhook's Service name.
    #[arg(long, default_value = "sm-injector")]
    service: String,
    /// The namespace sm-injector runs in.
    #[arg(long, default_value = "sm-injector")]
    namespace: String,
    /// The name of the TLS Secret the Deployment mounts.
    #[arg(long, default_value = "sm-injector-tls")]
    secret_name: String,
    /// Where to write ca.crt, ca.key, tls.crt, tls.key, tls-secret.yaml,
    /// mutatingwebhookconfiguration.yaml and kustomization.yaml (a kustomize
    /// Component with the Secret and the caBundle).
    #[arg(long, default_value = "certs/generated")]
    out_dir: PathBuf,
    /// Validity of the issued certificates.
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
    validity: Duration,
    /// Reuse this CA certificate (with --ca-key) instead of making a new one:
    /// the caBundle stays the same, so the serving certificate rotates with no downtime.
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// The private key of --ca-cert.
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
}

pub fn certs(a: CertsArgs) -> anyhow::Result<()> {
    use sm_injector::certs::{Ca, webhook_files};
    let ca = match (&a.ca_cert, &a.ca_key) {
        (Some(c), Some(k)) => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
            };
            Ca::from_pem(&read(c)?, &read(k)?, a.validity).map_err(|e| {
                anyhow::anyhow!("cannot use {} / {} as a CA: {e}", c.display(), k.display())
            })?
        }
        _ => Ca::new("sm-injector-ca", a.validity)?,
    };
    let files =
        webhook_files(&ca, &a.service, &a.namespace, &a.secret_name).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&a.out_dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", a.out_dir.display()))?;
    for (name, text) in files {
        let path = a.out_dir.join(name);
        if sm_injector::certs::holds_private_key(name) {
            use std::io::Write;
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                // A file that existed keeps its mode on open: set it.
                .and_then(|f| {
                    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                    Ok(f)
                })
                .and_then(|mut f| f.write_all(text.as_bytes()))
        } else {
            std::fs::write(&path, text)
        }
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    println!(
        "next: include {0} in an overlay of manifests/ (components: [...], see examples/kustomize/) and kubectl apply -k that overlay: each apply then keeps the caBundle\nkeep {0}/ca.key out of the cluster; pass it with --ca-cert/--ca-key to rotate the serving certificate with the same caBundle",
        a.out_dir.display()
    );
    Ok(())
}
