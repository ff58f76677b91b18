//! `sm-injector serve`'s serving-certificate flags: files (mounted from a
//! Secret, reloaded when they change) or kept by sm-injector itself
//! (`--certificates=managed`, [`sm_injector::managed_tls`]).

use std::path::PathBuf;
use std::time::Duration;

use sm_injector::managed_tls::{self, plan::Timing};
use sm_injector::metrics::Metrics;
use sm_injector::probes::Unready;
use sm_injector::tls::{Certificates, TlsFiles};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// --tls-cert and --tls-key, from a Secret made by Helm, cert-manager or
    /// `sm-injector certs`.
    Files,
    /// A CA in the Secret --ca-secret, published in the caBundle of
    /// --webhook-configuration; each replica signs its own certificate.
    Managed,
}

#[derive(clap::Args)]
pub struct TlsArgs {
    /// Where the serving certificate comes from.
    #[arg(
        long,
        env = "SM_INJECTOR_CERTIFICATES",
        value_enum,
        default_value = "files"
    )]
    certificates: Mode,
    /// PEM certificate chain served on --listen; reloaded when it changes.
    #[arg(
        long,
        env = "SM_INJECTOR_TLS_CERT",
        default_value = "/etc/sm-injector/tls/tls.crt"
    )]
    tls_cert: PathBuf,
    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "SM_INJECTOR_TLS_KEY",
        default_value = "/etc/sm-injector/tls/tls.key"
    )]
    tls_key: PathBuf,
    /// Require a client certificate signed by this PEM CA bundle: only the API
    /// server (given a webhook client certificate through its
    /// AdmissionConfiguration) may call /mutate. Reloaded when it changes
    /// (managed: read at each renewal).
    #[arg(long, env = "SM_INJECTOR_CLIENT_CA_FILE")]
    client_ca_file: Option<PathBuf>,
    /// managed: the Secret, in sm-injector's namespace, that holds the CA.
    #[arg(
        long,
        env = "SM_INJECTOR_CA_SECRET",
        default_value = "sm-injector-webhook-ca"
    )]
    ca_secret: String,
    /// managed: the MutatingWebhookConfiguration whose caBundles are kept.
    #[arg(
        long,
        env = "SM_INJECTOR_WEBHOOK_CONFIGURATION",
        default_value = "sm-injector"
    )]
    webhook_configuration: String,
    /// managed: the Service the API server calls; the certificate is for
    /// <service>.<namespace>.svc (and its other forms).
    #[arg(long, env = "SM_INJECTOR_SERVICE", default_value = "sm-injector")]
    service: String,
    /// managed: more DNS names or IP addresses for the certificate (comma-separated).
    #[arg(long, env = "SM_INJECTOR_TLS_NAMES", value_delimiter = ',')]
    tls_names: Vec<String>,
    /// managed: the CA's validity; a new CA is made at two thirds of it.
    #[arg(long, env = "SM_INJECTOR_CA_VALIDITY", default_value = "1825days", value_parser = humantime::parse_duration)]
    ca_validity: Duration,
    /// managed: the serving certificate's validity; renewed at two thirds of it.
    #[arg(long, env = "SM_INJECTOR_CERT_VALIDITY", default_value = "90days", value_parser = humantime::parse_duration)]
    cert_validity: Duration,
    /// managed: how long a new CA is in the caBundle before certificates it
    /// signed are served (until then the previous CA signs).
    #[arg(long, env = "SM_INJECTOR_CA_PROPAGATION", default_value = "5m", value_parser = humantime::parse_duration)]
    ca_propagation: Duration,
}

impl TlsArgs {
    /// The server's certificates; with `managed`, the keeper is started.
    pub async fn certificates(
        self,
        client: &kube::Client,
        namespace: &str,
        metrics: &Metrics,
        unready: &Unready,
    ) -> anyhow::Result<Certificates> {
        if self.certificates == Mode::Files {
            return Ok(Certificates::Files(TlsFiles {
                cert: self.tls_cert,
                key: self.tls_key,
                client_ca: self.client_ca_file,
            }));
        }
        let svc = &self.service;
        let mut names = vec![
            svc.clone(),
            format!("{svc}.{namespace}"),
            format!("{svc}.{namespace}.svc"),
            format!("{svc}.{namespace}.svc.cluster.local"),
        ];
        names.extend(self.tls_names.into_iter().filter(|n| !n.is_empty()));
        let settings = managed_tls::Settings {
            namespace: namespace.to_string(),
            secret: self.ca_secret,
            webhook: self.webhook_configuration,
            names,
            timing: Timing {
                ca_validity: self.ca_validity,
                leaf_validity: self.cert_validity,
                propagation: self.ca_propagation,
            },
            client_ca: self.client_ca_file,
        };
        let config =
            managed_tls::start(client.clone(), settings, metrics.clone(), unready.clone()).await?;
        Ok(Certificates::Kept(config))
    }
}
