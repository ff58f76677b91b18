//! `--certificates=managed`: sm-injector keeps its own serving certificate,
//! as ESO's and Gatekeeper's cert controllers do, so that nothing rendered
//! by Helm or applied by GitOps holds key material or a caBundle that
//! changes between renders.
//!
//! - A CA lives in a Secret of sm-injector's namespace ([`stored`]), owned
//!   by the MutatingWebhookConfiguration (deleting that deletes the CA).
//!   Whichever replica finds it missing or due makes it (the write carries
//!   the resourceVersion read, so two replicas never both win).
//! - Every replica keeps the caBundle of every webhook in that configuration
//!   equal to the stored CAs, and signs its own serving certificate in
//!   memory; the private key never leaves the process.
//! - Rotation keeps the chain ([`plan`]): a new CA is published beside the
//!   old one, and certificates move to it after the propagation delay.
//!
//! Woken by watches of the two objects and by the plan's next deadline.

pub mod plan;
pub mod stored;

use std::path::PathBuf;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

use crate::certs::Ca;
use crate::metrics::Metrics;
use crate::probes::Unready;
use plan::{Leaf, StoreChange, Stored, StoredCa, Timing};

/// What `--certificates=managed` needs to know.
#[derive(Clone, Debug)]
pub struct Settings {
    /// sm-injector's namespace, where the CA Secret lives.
    pub namespace: String,
    /// The CA Secret's name.
    pub secret: String,
    /// The MutatingWebhookConfiguration whose caBundles are kept.
    pub webhook: String,
    /// The serving certificate's DNS names and IP addresses.
    pub names: Vec<String>,
    pub timing: Timing,
    /// Required client certificates' CA (read at each renewal).
    pub client_ca: Option<PathBuf>,
}

const UNREADY: &str = "certificate";

fn now() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

/// Starts keeping the serving certificate; the configuration returned is the
/// server's, updated in place. Until the first certificate is issued, a
/// throwaway one is served and `unready` says why.
pub async fn start(
    client: kube::Client,
    settings: Settings,
    metrics: Metrics,
    unready: Unready,
) -> anyhow::Result<RustlsConfig> {
    settings
        .timing
        .check()
        .map_err(|e| anyhow::anyhow!("--ca-validity/--cert-validity/--ca-propagation: {e}"))?;
    let names: Vec<&str> = settings.names.iter().map(String::as_str).collect();
    let placeholder = Ca::new("sm-injector-placeholder", Duration::from_secs(3600))?
        .server("sm-injector-placeholder", &names)?;
    let config = RustlsConfig::from_config(build(&settings, &placeholder).await?);
    unready.set_for(UNREADY, "the serving certificate is not issued yet".into());
    let keeper = Keeper {
        secrets: Api::namespaced(client.clone(), &settings.namespace),
        webhooks: Api::all(client),
        settings,
        config: config.clone(),
        metrics,
        leaf: None,
    };
    tokio::spawn(keeper.run(unready));
    Ok(config)
}

async fn build(
    s: &Settings,
    pem: &crate::certs::Pem,
) -> std::io::Result<std::sync::Arc<rustls::ServerConfig>> {
    let client_ca = match &s.client_ca {
        Some(p) => Some((p.display().to_string(), tokio::fs::read(p).await?)),
        None => None,
    };
    crate::tls::server_config(
        (
            "the managed serving certificate".into(),
            pem.cert.as_bytes(),
        ),
        ("its key".into(), pem.key.as_bytes()),
        client_ca.as_ref().map(|(n, b)| (n.clone(), b.as_slice())),
    )
}

struct Keeper {
    secrets: Api<Secret>,
    webhooks: Api<MutatingWebhookConfiguration>,
    settings: Settings,
    config: RustlsConfig,
    metrics: Metrics,
    leaf: Option<Leaf>,
}

impl Keeper {
    async fn run(mut self, unready: Unready) {
        // Watched by name: RBAC grants list and watch on these names only.
        let by_name = |n: &str| watcher::Config::default().fields(&format!("metadata.name={n}"));
        let events = futures::stream::select(
            watcher(self.secrets.clone(), by_name(&self.settings.secret))
                .default_backoff()
                .map(logged("the CA Secret"))
                .boxed(),
            watcher(self.webhooks.clone(), by_name(&self.settings.webhook))
                .default_backoff()
                .map(logged("the webhook configuration"))
                .boxed(),
        );
        let mut events = std::pin::pin!(events);
        let mut failures = 0u32;
        loop {
            let at = now();
            let (wait, why) = match self.reconcile(at).await {
                Ok(next) => {
                    failures = 0;
                    let wait = Duration::from_secs((next - at).clamp(1, 3600) as u64);
                    (
                        wait,
                        "the serving certificate is not issued yet".to_string(),
                    )
                }
                Err(why) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %why, "the managed serving certificate cannot be kept");
                    (Duration::from_secs(1 << failures.min(5)), why)
                }
            };
            // Ready exactly while a valid certificate is served: a replica
            // that cannot reach the API server keeps serving its own, and a
            // pass that lost the CA Secret's write to another replica ends
            // before issuing one.
            match &self.leaf {
                Some(l) if l.not_after > at => unready.clear(UNREADY),
                _ => unready.set_for(UNREADY, why),
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = events.next() => {
                    // Let a burst of events (our own writes) settle.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// One pass: the CA Secret, the caBundles, this replica's certificate.
    /// When to look again (Unix seconds).
    async fn reconcile(&mut self, now: i64) -> Result<i64, String> {
        let s = &self.settings;
        let webhook = self
            .webhooks
            .get_opt(&s.webhook)
            .await
            .map_err(|e| format!("reading the MutatingWebhookConfiguration {}: {e}", s.webhook))?
            .ok_or_else(|| {
                format!(
                    "the MutatingWebhookConfiguration {} does not exist (its caBundle is where the CA is published)",
                    s.webhook
                )
            })?;
        let secret = self
            .secrets
            .get_opt(&s.secret)
            .await
            .map_err(|e| format!("reading the Secret {}/{}: {e}", s.namespace, s.secret))?;
        let mut stored = match &secret {
            None => Stored::default(),
            Some(found) => stored::parse(found).map_err(|e| {
                format!(
                    "the CA Secret {}/{}: {e} (delete it to have a new CA made)",
                    s.namespace, s.secret
                )
            })?,
        };
        if let Some(change) = plan::store_change(&stored, now) {
            let next = changed(&stored, change, now, &s.timing)?;
            let rv = secret.and_then(|x| x.metadata.resource_version);
            let obj = stored::object(&s.secret, &s.namespace, &next, owner(&webhook)?, rv.clone());
            let pp = PostParams::default();
            let written = match rv {
                None => self.secrets.create(&pp, &obj).await,
                Some(_) => self.secrets.replace(&s.secret, &pp, &obj).await,
            };
            match written {
                Ok(_) => {
                    tracing::info!(change = ?change, secret = %s.secret, "webhook CA written");
                    stored = next;
                }
                // Another replica wrote first: read what it wrote.
                Err(kube::Error::Api(e)) if e.code == 409 => return Ok(now + 1),
                Err(e) => {
                    return Err(format!(
                        "writing the CA Secret {}/{}: {e}",
                        s.namespace, s.secret
                    ));
                }
            }
        }
        let live = self.publish(&webhook, &stored, now).await?;
        let published = |cert: &str| {
            stored::certificates(cert.as_bytes())
                .first()
                .is_some_and(|c| live.contains(c))
        };
        let signer = plan::signer(&stored, now, &s.timing, &published)
            .ok_or("no stored CA is in the caBundle yet")?
            .clone();
        let timing = s.timing;
        if plan::leaf_due(self.leaf.as_ref(), &signer, now) {
            self.issue(&signer, now).await?;
        }
        Ok(plan::next_change(&stored, self.leaf.as_ref(), now, &timing))
    }

    /// Makes every webhook's caBundle the stored CAs; the certificates every
    /// webhook now trusts.
    async fn publish(
        &self,
        webhook: &MutatingWebhookConfiguration,
        stored: &Stored,
        now: i64,
    ) -> Result<Vec<Vec<u8>>, String> {
        use base64::Engine;
        let want = stored::join(&plan::bundle(stored, now));
        let want_certs = stored::certificates(want.as_bytes());
        let hooks = webhook.webhooks.as_deref().unwrap_or_default();
        if hooks.is_empty() {
            return Err(format!(
                "the MutatingWebhookConfiguration {} has no webhooks",
                self.settings.webhook
            ));
        }
        let mut ops = Vec::new();
        for (i, w) in hooks.iter().enumerate() {
            let have = w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice());
            if stored::certificates(have.unwrap_or_default()) != want_certs {
                ops.push(serde_json::json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": w.name}));
                ops.push(serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                    "value": base64::engine::general_purpose::STANDARD.encode(&want)}));
            }
        }
        if !ops.is_empty() {
            let patch: json_patch::Patch =
                serde_json::from_value(serde_json::Value::Array(ops)).expect("a JSON patch");
            self.webhooks
                .patch(
                    &self.settings.webhook,
                    &PatchParams::default(),
                    &Patch::Json::<()>(patch),
                )
                .await
                .map_err(|e| {
                    format!(
                        "publishing the CA in the caBundle of {}: {e}",
                        self.settings.webhook
                    )
                })?;
            tracing::info!(webhook = %self.settings.webhook, cas = want_certs.len(), "caBundle published");
        }
        Ok(want_certs)
    }

    async fn issue(&mut self, signer: &StoredCa, now: i64) -> Result<(), String> {
        let validity = plan::leaf_validity(signer, now, &self.settings.timing);
        let names: Vec<&str> = self.settings.names.iter().map(String::as_str).collect();
        let pem = Ca::from_pem(&signer.cert, &signer.key, validity)
            .and_then(|ca| ca.server("sm-injector", &names))
            .map_err(|e| format!("issuing the serving certificate: {e}"))?;
        let config = build(&self.settings, &pem)
            .await
            .map_err(|e| format!("loading the serving certificate: {e}"))?;
        self.config.reload_from_config(config);
        let not_after = now + validity.as_secs() as i64;
        self.metrics.serving_certificate_expiry(not_after);
        self.leaf = Some(Leaf {
            issuer: signer.cert.clone(),
            issued: now,
            not_after,
        });
        tracing::info!(expires_in = %humantime::format_duration(validity), "serving certificate issued");
        Ok(())
    }
}

/// Logs a watch's errors; its events only wake the keeper.
fn logged<K>(what: &'static str) -> impl Fn(Result<watcher::Event<K>, watcher::Error>) {
    move |ev| {
        if let Err(e) = ev {
            tracing::warn!(error = %e, what, "certificate watch error (retrying)");
        }
    }
}

/// `s` after `change`, with a new CA where one is needed.
fn changed(s: &Stored, change: StoreChange, now: i64, t: &Timing) -> Result<Stored, String> {
    let new = || -> Result<StoredCa, String> {
        let ca =
            Ca::new("sm-injector-ca", t.ca_validity).map_err(|e| format!("making a CA: {e}"))?;
        Ok(StoredCa {
            cert: ca.cert_pem(),
            key: ca.key_pem(),
            created: now,
            not_after: now + t.ca_validity.as_secs() as i64,
        })
    };
    Ok(match change {
        StoreChange::Create => Stored {
            current: Some(new()?),
            previous: None,
        },
        StoreChange::Rotate => Stored {
            current: Some(new()?),
            previous: s.current.clone(),
        },
        StoreChange::DropPrevious => Stored {
            current: s.current.clone(),
            previous: None,
        },
    })
}

/// The webhook configuration as the CA Secret's owner.
fn owner(w: &MutatingWebhookConfiguration) -> Result<OwnerReference, String> {
    Ok(OwnerReference {
        api_version: "admissionregistration.k8s.io/v1".into(),
        kind: "MutatingWebhookConfiguration".into(),
        name: w.metadata.name.clone().unwrap_or_default(),
        uid: w
            .metadata
            .uid
            .clone()
            .ok_or("the MutatingWebhookConfiguration has no uid")?,
        ..Default::default()
    })
}
