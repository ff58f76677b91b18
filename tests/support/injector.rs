//! sm-injector served in-process for one test, registered with the test
//! cluster through a URL-based MutatingWebhookConfiguration that selects the
//! test's own namespaces (and, as shipped, only those labelled
//! `sm-injector.io/inject=enabled`).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use sm_injector::admission::{Settings, Webhook};
use sm_injector::cache::CachedSource;
use sm_injector::metrics::Metrics;
use sm_injector::namespaces::Namespaces;
use sm_injector::server::{self, ServerSettings};
use sm_injector::source::AwsSource;
use sm_injector::store::Syncer;
use sm_injector::tls::{Certificates, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{TestBed, eventually};

pub struct Injector {
    /// What the leader's rotations told this replica (with an inventory).
    pub moves: sm_injector::store::moves::Moves,
    /// Holds tls.crt and tls.key, reloaded when they change.
    pub dir: std::path::PathBuf,
    pub port: u16,
    pub probe_port: u16,
    pub config_name: String,
    pub webhook: Arc<Webhook>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub struct Options {
    /// The Secrets Manager endpoint; moto's by default.
    pub aws_endpoint: Option<String>,
    pub aws_deadline: Duration,
    pub cache_ttl: Duration,
    /// The shortest refresh-interval a pod may ask for.
    pub min_refresh: Duration,
    /// Record written backing Secrets in an inventory in this namespace.
    pub inventory: Option<String>,
    /// Not ready, still serving, for this long after shutdown begins.
    pub shutdown_delay: Duration,
    /// Headers, then a body, must arrive within these.
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    /// Connections per source, in their handshake and established.
    pub connections: sm_injector::connections::Budgets,
    /// Whose identity reads where a namespace does not say.
    pub aws_identity: sm_injector::identity::Mode,
    /// The STS endpoint for workload identities; the Secrets Manager one by default.
    pub sts_endpoint: Option<String>,
    /// sm-injector's own AWS access key id and secret; the test bed's by default.
    pub aws_credentials: Option<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            aws_endpoint: None,
            aws_deadline: Duration::from_secs(3),
            cache_ttl: Duration::from_secs(300),
            min_refresh: Duration::from_secs(60),
            inventory: None,
            shutdown_delay: Duration::ZERO,
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(5),
            connections: sm_injector::connections::Budgets {
                established: 1024,
                handshakes: 256,
                per_source: 128,
            },
            aws_identity: sm_injector::identity::Mode::Own,
            sts_endpoint: None,
            aws_credentials: None,
        }
    }
}

/// Starts sm-injector for pods in `namespaces` and waits until the API server
/// calls it (the first namespace must carry the inject label).
pub async fn start(bed: &TestBed, namespaces: &[&str], opts: Options) -> Injector {
    let client = bed.client().await;
    let metrics = Metrics::new();
    let mut aws_conf = bed.aws_config().await.into_builder();
    if let Some(ep) = &opts.aws_endpoint {
        aws_conf.set_endpoint_url(Some(ep.clone()));
    }
    if let Some((id, secret)) = &opts.aws_credentials {
        aws_conf.set_credentials_provider(Some(
            aws_credential_types::provider::SharedCredentialsProvider::new(
                aws_sdk_secretsmanager::config::Credentials::new(id, secret, None, None, "test"),
            ),
        ));
    }
    let aws_conf = aws_conf.build();
    let aws = aws_sdk_secretsmanager::Client::new(&aws_conf);
    let mut sts_conf = aws_conf.clone().into_builder();
    if let Some(ep) = &opts.sts_endpoint {
        sts_conf.set_endpoint_url(Some(ep.clone()));
    }
    let workloads = sm_injector::credentials::WorkloadCredentials::new(
        client.clone(),
        aws_sdk_sts::Client::new(&sts_conf.build()),
        aws_sdk_secretsmanager::Config::new(&aws_conf),
    );
    // With an inventory, the replica learns of the leader's rotations as
    // `serve` does (a watch of the inventory ConfigMaps, run with the server).
    let inventory = opts.inventory.as_ref().map(|ns| {
        sm_injector::store::inventory::Inventory::new(
            client.clone(),
            ns,
            "inventory",
            opts.cache_ttl,
        )
    });
    let moves = sm_injector::store::moves::Moves::default();
    let moves_watch = inventory.as_ref().map(|i| {
        sm_injector::store::moves::watch(
            i.metadata_api().clone(),
            i.prefix().to_string(),
            moves.clone(),
        )
    });
    let webhook = Arc::new(Webhook {
        source: CachedSource::new(
            Arc::new(AwsSource::new(aws, metrics.clone()).with_workloads(workloads)),
            opts.cache_ttl,
            metrics.clone(),
        ),
        syncer: match inventory {
            None => Syncer::new(client.clone(), opts.cache_ttl, metrics.clone()),
            Some(inventory) => Syncer::new(client.clone(), opts.cache_ttl, metrics.clone())
                .with_inventory(inventory)
                .with_moves(moves.clone()),
        },
        namespaces: Namespaces::start(client.clone()),
        service_accounts: sm_injector::service_accounts::ServiceAccounts::new(
            client.clone(),
            sm_injector::service_accounts::TTL,
        ),
        scope: sm_injector::admission::scope::Scope::new("sm-injector"),
        metrics,
        decisions: sm_injector::decisions::Decisions::new(
            sm_injector::decisions::DEFAULT_MAX_BYTES,
            opts.cache_ttl,
        ),
        settings: Settings {
            min_refresh: opts.min_refresh,
            aws_deadline: opts.aws_deadline,
            max_aws_calls: sm_injector::admission::MAX_AWS_CALLS,
            caps: Default::default(),
            identity: opts.aws_identity,
        },
    });

    let dir = bed.dir.join(format!("injector-{}", namespaces[0]));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = bed.serving_cert();
    std::fs::write(dir.join("tls.crt"), &pem.cert).unwrap();
    std::fs::write(dir.join("tls.key"), &pem.key).unwrap();
    let tls = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tls.local_addr().unwrap().port();
    let probes = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let probe_port = probes.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serve = server::run(
        webhook.clone(),
        ServerSettings {
            tls: Certificates::Files(TlsFiles {
                cert: dir.join("tls.crt"),
                key: dir.join("tls.key"),
                client_ca: None,
            }),
            connections: opts.connections,
            handshake_timeout: Duration::from_secs(3),
            admission_deadline: Duration::from_secs(8),
            max_body_bytes: 4 * 1024 * 1024,
            inflight: sm_injector::inflight::Limits {
                requests: 256,
                bytes: 16 << 20,
                bytes_per_source: 8 << 20,
            },
            max_pod_entries: sm_injector::wire::DEFAULT_MAX_ENTRIES,
            header_read_timeout: opts.header_read_timeout,
            body_read_timeout: opts.body_read_timeout,
            idle_timeout: Duration::from_secs(120),
            cert_poll: Duration::from_secs(1),
            shutdown_delay: opts.shutdown_delay,
            drain: Duration::from_secs(5),
            unready: Default::default(),
        },
        tls,
        probes,
        async move {
            let _ = stopped.await;
        },
    );
    let task = tokio::spawn(async move {
        match moves_watch {
            None => serve.await,
            Some(watch) => tokio::select! {
                r = serve => r,
                () = watch => unreachable!("the watch runs until the server ends"),
            },
        }
    });

    let config_name = format!("sm-injector-{}", namespaces[0]);
    super::start_url_webhook(bed, &client, &config_name, port, namespaces).await;

    // The API server loads configurations through an informer: wait until a
    // dry-run pod with a bad annotation is denied by sm-injector.
    let pods = Api::<Pod>::namespaced(client, namespaces[0]);
    let canary: Pod = serde_json::from_value(json!({
        "metadata": {"name": "canary", "annotations": {"sm-injector.io/canary": "x"}},
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/c:1"}]}
    }))
    .unwrap();
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    eventually(
        Duration::from_secs(30),
        "sm-injector to be called",
        || async {
            match pods.create(&dry, &canary).await {
                Err(kube::Error::Api(e)) if e.message.contains("sm-injector") => Some(()),
                _ => None,
            }
        },
    )
    .await;

    Injector {
        dir,
        port,
        probe_port,
        config_name,
        webhook,
        stop: Some(stop),
        task,
        moves,
    }
}

impl Injector {
    /// Signals shutdown (as SIGTERM does in the binary) without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// True once the server has stopped.
    pub fn finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Unregisters the webhook and stops the server.
    pub async fn stop(mut self, client: &kube::Client) {
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .delete(&self.config_name, &Default::default())
            .await
            .unwrap();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }

    /// The text of one metric line, e.g. `sm_injector_cache_hits_total`.
    pub async fn metric(&self, prefix: &str) -> f64 {
        let text = http_get(self.probe_port, "/metrics").await.1;
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

/// The sum of the metric lines starting with `name` (all label sets) on a
/// probe port.
pub async fn metric_sum(probe: u16, name: &str) -> f64 {
    http_get(probe, "/metrics")
        .await
        .1
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A plain HTTP/1.0 GET on loopback: (status code, body); (0, "") when
/// nothing answers.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, String::new());
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut buf = String::new();
    if s.write_all(request.as_bytes()).await.is_err() || s.read_to_string(&mut buf).await.is_err() {
        return (0, String::new());
    }
    let code = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}
