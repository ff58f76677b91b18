//! `sm-injector serve`: the webhook, its refresher and their flags.

use std::sync::Arc;
use std::time::Duration;

use sm_injector::admission::{Settings, Webhook};
use sm_injector::cache::CachedSource;
use sm_injector::credentials::WorkloadCredentials;
use sm_injector::decisions::Decisions;
use sm_injector::identity::Mode;
use sm_injector::metrics::Metrics;
use sm_injector::namespaces::Namespaces;
use sm_injector::plan::{Caps, MAX_BACKING_PER_POD};
use sm_injector::probes;
use sm_injector::quota::{Limits as QuotaLimits, Quota};
use sm_injector::refresh::{self, Refresher, index::Limits};
use sm_injector::server::{self, ServerSettings};
use sm_injector::service_accounts::{self, ServiceAccounts};
use sm_injector::source::AwsSource;
use sm_injector::store::Syncer;
use sm_injector::store::inventory::Inventory;
use sm_injector::store::moves::Moves;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address of the HTTPS admission endpoint (POST /mutate).
    #[arg(long, env = "SM_INJECTOR_LISTEN", default_value = "0.0.0.0:8443")]
    listen: std::net::SocketAddr,
    /// Address of the plain-HTTP endpoint for /healthz, /readyz and /metrics.
    #[arg(long, env = "SM_INJECTOR_PROBE_LISTEN", default_value = "0.0.0.0:9090")]
    probe_listen: std::net::SocketAddr,
    #[command(flatten)]
    tls: super::tls::TlsArgs,
    /// Connections past their TLS handshake open at once; one more is closed at once.
    #[arg(long, env = "SM_INJECTOR_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// Connections in their TLS handshake at once; when full, the oldest is
    /// dropped for a newcomer.
    #[arg(long, env = "SM_INJECTOR_MAX_HANDSHAKES", default_value_t = 256)]
    max_handshakes: usize,
    /// Connections one source address may hold, in their handshake or past it;
    /// keep it below --max-handshakes.
    #[arg(
        long,
        env = "SM_INJECTOR_MAX_CONNECTIONS_PER_SOURCE",
        default_value_t = 128
    )]
    max_connections_per_source: usize,
    /// A TLS handshake must finish within this time.
    #[arg(long, env = "SM_INJECTOR_HANDSHAKE_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    handshake_timeout: Duration,
    /// Bytes of a pod's sm-injector.io/ annotations; a pod with more is denied.
    #[arg(long, env = "SM_INJECTOR_MAX_ANNOTATION_BYTES", default_value_t = Caps::default().annotation_bytes)]
    max_annotation_bytes: usize,
    /// Secret references (env.<VAR> and env-from entries) per pod.
    #[arg(long, env = "SM_INJECTOR_MAX_REFERENCES", default_value_t = Caps::default().references)]
    max_references: usize,
    /// Selected containers times references per pod.
    #[arg(long, env = "SM_INJECTOR_MAX_INJECTIONS", default_value_t = Caps::default().injections)]
    max_injections: usize,
    /// Keys of one secret injected with env-from.
    #[arg(long, env = "SM_INJECTOR_MAX_ENV_FROM_KEYS", default_value_t = Caps::default().env_from_keys)]
    max_env_from_keys: usize,
    /// Whose AWS identity reads a pod's secrets where its namespace has no
    /// sm-injector.io/aws-identity annotation: "sm-injector" (its own
    /// credentials) or "serviceaccount" (the role of the pod's ServiceAccount,
    /// eks.amazonaws.com/role-arn, through a TokenRequest and STS).
    #[arg(long, env = "SM_INJECTOR_AWS_IDENTITY", default_value = "sm-injector", value_parser = Mode::parse)]
    aws_identity: Mode,
    /// Each admission is answered within this time; keep it below the webhook's timeoutSeconds.
    #[arg(long, env = "SM_INJECTOR_ADMISSION_DEADLINE", default_value = "8s", value_parser = humantime::parse_duration)]
    admission_deadline: Duration,
    /// How long Secrets Manager may take before it counts as unreachable.
    #[arg(long, env = "SM_INJECTOR_AWS_DEADLINE", default_value = "5s", value_parser = humantime::parse_duration)]
    aws_deadline: Duration,
    /// The most Secrets Manager calls one pod's references may need (20 current
    /// versions a call, one per pinned version); a pod needing more is denied.
    #[arg(long, env = "SM_INJECTOR_MAX_SECRETSMANAGER_CALLS_PER_POD", default_value_t = sm_injector::admission::MAX_AWS_CALLS)]
    max_secretsmanager_calls_per_pod: usize,
    /// Secrets Manager calls a second one namespace's admissions (dry runs
    /// included) may make; over it, pods needing a call are denied (or served
    /// from an existing backing Secret) and other namespaces are unaffected.
    #[arg(long, env = "SM_INJECTOR_SECRETSMANAGER_CALLS_PER_NAMESPACE", default_value_t = QuotaLimits::default().per_namespace)]
    secretsmanager_calls_per_namespace: std::num::NonZeroU32,
    /// Calls one namespace may make in a burst (at least the per-pod cap).
    #[arg(long, env = "SM_INJECTOR_SECRETSMANAGER_BURST_PER_NAMESPACE", default_value_t = QuotaLimits::default().namespace_burst)]
    secretsmanager_burst_per_namespace: std::num::NonZeroU32,
    /// Secrets Manager calls a second this replica makes, admissions and
    /// refresher alike (calls wait for their turn); keep it times the replicas
    /// well below AWS's 100 BatchGetSecretValue calls a second per account and region.
    #[arg(long, env = "SM_INJECTOR_SECRETSMANAGER_CALLS_PER_SECOND", default_value_t = QuotaLimits::default().per_second)]
    secretsmanager_calls_per_second: std::num::NonZeroU32,
    /// Secrets Manager calls this replica has in flight at once.
    #[arg(long, env = "SM_INJECTOR_SECRETSMANAGER_CONCURRENCY", default_value_t = QuotaLimits::default().concurrency)]
    secretsmanager_concurrency: usize,
    /// How long a missing secret, a missing key's secret or an AWS refusal is
    /// remembered, so that retries and dry runs do not spend the account's quota.
    #[arg(long, env = "SM_INJECTOR_NEGATIVE_CACHE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    negative_cache_ttl: Duration,
    /// Bytes of secret values kept in memory (each value's own size, names,
    /// payload and parsed fields, and the backing Secret names it keeps,
    /// about); the least used go first.
    #[arg(long, env = "SM_INJECTOR_CACHE_BYTES", default_value_t = sm_injector::cache::DEFAULT_MAX_BYTES)]
    cache_bytes: u64,
    /// How long a fetched secret version is served from memory before Secrets Manager is asked again.
    #[arg(long, env = "SM_INJECTOR_CACHE_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    cache_ttl: Duration,
    /// Bytes of memory (about: the pod's text, its patch and plan) for
    /// decisions kept for identical pods, such as a ReplicaSet's replicas; 0
    /// decides every pod afresh. A kept decision is used only while the
    /// namespace's rule and every secret value it read are unchanged.
    #[arg(long, env = "SM_INJECTOR_DECISION_CACHE_BYTES", default_value_t = sm_injector::decisions::DEFAULT_MAX_BYTES)]
    decision_cache_bytes: u64,
    /// The shortest refresh-interval a pod may ask for.
    #[arg(long, env = "SM_INJECTOR_MIN_REFRESH_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    min_refresh_interval: Duration,
    /// Admission requests being read or answered at once; more are answered 503.
    #[arg(long, env = "SM_INJECTOR_MAX_INFLIGHT_REQUESTS", default_value_t = 256)]
    max_inflight_requests: usize,
    /// Bytes of request bodies over 64 KiB held at once, in all; more are
    /// answered 503 before their body is read.
    #[arg(long, env = "SM_INJECTOR_MAX_INFLIGHT_BYTES", default_value_t = 16 * 1024 * 1024)]
    max_inflight_bytes: u64,
    /// The same, from one source address (429).
    #[arg(long, env = "SM_INJECTOR_MAX_INFLIGHT_BYTES_PER_SOURCE", default_value_t = 8 * 1024 * 1024)]
    max_inflight_bytes_per_source: u64,
    /// Env, envFrom and volumeMounts entries decoded from one pod; a pod with
    /// more that asks for secrets is denied.
    #[arg(long, env = "SM_INJECTOR_MAX_POD_ENTRIES", default_value_t = sm_injector::wire::DEFAULT_MAX_ENTRIES)]
    max_pod_entries: usize,
    /// Largest accepted AdmissionReview body, in bytes.
    #[arg(long, env = "SM_INJECTOR_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_body_bytes: usize,
    /// After SIGTERM, how long readiness reads false while admissions are still
    /// served (the API server's endpoints take a few seconds to follow).
    #[arg(long, env = "SM_INJECTOR_SHUTDOWN_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    shutdown_delay: Duration,
    /// Then, how long in-flight requests may take to finish.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// A connection's first request must arrive within this time.
    #[arg(long, env = "SM_INJECTOR_HEADER_READ_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    header_read_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed; keep
    /// it above the API server's 90 s idle-connection timeout.
    #[arg(long, env = "SM_INJECTOR_IDLE_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// An admission request's body must arrive within this time (else 408).
    #[arg(long, env = "SM_INJECTOR_BODY_READ_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    body_read_timeout: Duration,
    /// Log as JSON lines.
    #[arg(long, env = "SM_INJECTOR_LOG_JSON")]
    pub log_json: bool,
    /// The refresher (on the replica holding the Lease) plans at least this
    /// often, in memory (no API call); also the first retry delay after a failure.
    #[arg(long, env = "SM_INJECTOR_REFRESH_TICK", default_value = "30s", value_parser = humantime::parse_duration)]
    refresh_tick: Duration,
    /// The Lease that elects the refresher; in --lease-namespace.
    #[arg(
        long,
        env = "SM_INJECTOR_LEASE_NAME",
        default_value = "sm-injector-refresher"
    )]
    lease_name: String,
    /// The namespace of the Lease (sm-injector's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "sm-injector")]
    lease_namespace: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long the Lease is held without renewal before another replica takes over.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Pods with sm-injector records the refresher takes from one namespace;
    /// records past it are refused (logged, counted), so that one tenant's
    /// forged records cannot grow the refresher's work without bound.
    #[arg(
        long,
        env = "SM_INJECTOR_MAX_RECORDS_PER_NAMESPACE",
        default_value_t = 5000
    )]
    max_records_per_namespace: usize,
    /// Distinct secret versions the records of one namespace may name (what
    /// costs Secrets Manager calls each interval); records past it are refused.
    #[arg(
        long,
        env = "SM_INJECTOR_MAX_SECRETS_PER_NAMESPACE",
        default_value_t = 1000
    )]
    max_secrets_per_namespace: usize,
    /// A backing Secret that no pod has used for this long is deleted.
    #[arg(long, env = "SM_INJECTOR_GC_GRACE", default_value = "24h", value_parser = humantime::parse_duration)]
    gc_grace: Duration,
}

pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

pub async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("cannot build a Kubernetes client (in-cluster config or KUBECONFIG): {e}")
    })?;
    let aws_conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let quota = Quota::new(QuotaLimits {
        per_namespace: a.secretsmanager_calls_per_namespace,
        namespace_burst: a.secretsmanager_burst_per_namespace,
        per_second: a.secretsmanager_calls_per_second,
        concurrency: a.secretsmanager_concurrency,
    });
    let aws: Arc<dyn sm_injector::source::SecretSource> = Arc::new(
        AwsSource::new(
            aws_sdk_secretsmanager::Client::new(&aws_conf),
            metrics.clone(),
        )
        .with_quota(quota.clone())
        .with_workloads(WorkloadCredentials::from_conf(client.clone(), &aws_conf)),
    );
    // Without a region or any credentials nothing can be fetched: said once,
    // clearly, and /readyz fails with it (admissions still answer, denying).
    let unready = probes::Unready::default();
    {
        let unready = unready.clone();
        tokio::spawn(async move {
            if let Err(why) = sm_injector::source::check_configuration(&aws_conf).await {
                tracing::error!(reason = %why, "sm-injector cannot call AWS Secrets Manager; not ready");
                unready.set(why);
            }
        });
    }
    let namespaces = Namespaces::start(client.clone());
    let inventory = Inventory::new(
        client.clone(),
        &a.lease_namespace,
        &format!("{}-inventory", a.lease_name),
        a.cache_ttl,
    );
    let refresher = Refresher::new(
        client.clone(),
        aws.clone(),
        namespaces.clone(),
        metrics.clone(),
        inventory.clone(),
        refresh::Settings {
            tick: a.refresh_tick,
            limits: Limits {
                max_entries: MAX_BACKING_PER_POD,
                min_interval: a.min_refresh_interval,
                max_calls: a.max_secretsmanager_calls_per_pod,
                max_records_per_namespace: a.max_records_per_namespace,
                max_secrets_per_namespace: a.max_secrets_per_namespace,
            },
            aws_deadline: a.aws_deadline,
            gc_grace: Some(a.gc_grace),
            concurrency: 16,
        },
    )
    .with_identities(
        ServiceAccounts::new(client.clone(), service_accounts::TTL),
        a.aws_identity,
    );
    let identity = a.identity.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "sm-injector".into()),
            std::process::id()
        )
    });
    // SIGTERM stops the refresher at once (the Lease is released, so another
    // replica takes over within a second or two) while admissions drain.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let lease = refresh::lease::LeaseSettings {
        namespace: a.lease_namespace.clone(),
        name: a.lease_name.clone(),
        identity,
        seconds: a.lease_seconds,
    };
    let mut refresher = tokio::spawn(refresher.run_with_lease(lease, stopping.clone()));
    // Every replica learns of the leader's rotations (the watch retries on
    // its own; until it is in sync, admissions trust what they found 30 s).
    let moves = Moves::default();
    tokio::spawn(sm_injector::store::moves::watch(
        inventory.metadata_api().clone(),
        inventory.prefix().to_string(),
        moves.clone(),
    ));
    let webhook = Arc::new(Webhook {
        source: CachedSource::new(aws, a.cache_ttl, metrics.clone())
            .with_max_bytes(a.cache_bytes)
            .with_negative_ttl(a.negative_cache_ttl)
            .with_quota(quota),
        syncer: Syncer::new(client.clone(), a.cache_ttl, metrics.clone())
            .with_inventory(inventory)
            .with_moves(moves),
        namespaces,
        service_accounts: ServiceAccounts::new(client.clone(), service_accounts::TTL),
        scope: sm_injector::admission::scope::Scope::new(&a.lease_namespace),
        metrics,
        decisions: Decisions::new(a.decision_cache_bytes, a.cache_ttl),
        settings: Settings {
            min_refresh: a.min_refresh_interval,
            aws_deadline: a.aws_deadline,
            max_aws_calls: a.max_secretsmanager_calls_per_pod,
            caps: Caps {
                annotation_bytes: a.max_annotation_bytes,
                references: a.max_references,
                injections: a.max_injections,
                env_from_keys: a.max_env_from_keys,
            },
            identity: a.aws_identity,
        },
    });
    let certificates = a
        .tls
        .certificates(&client, &a.lease_namespace, &webhook.metrics, &unready)
        .await?;
    let tls = std::net::TcpListener::bind(a.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", a.listen))?;
    let probes = tokio::net::TcpListener::bind(a.probe_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", a.probe_listen))?;
    tracing::info!(listen = %a.listen, probes = %a.probe_listen, "serving admissions");
    let server = server::run(
        webhook,
        ServerSettings {
            tls: certificates,
            connections: sm_injector::connections::Budgets {
                established: a.max_connections,
                handshakes: a.max_handshakes,
                per_source: a.max_connections_per_source,
            },
            handshake_timeout: a.handshake_timeout,
            admission_deadline: a.admission_deadline,
            max_body_bytes: a.max_body_bytes,
            inflight: sm_injector::inflight::Limits {
                requests: a.max_inflight_requests,
                bytes: a.max_inflight_bytes,
                bytes_per_source: a.max_inflight_bytes_per_source,
            },
            max_pod_entries: a.max_pod_entries,
            header_read_timeout: a.header_read_timeout,
            body_read_timeout: a.body_read_timeout,
            idle_timeout: a.idle_timeout,
            cert_poll: Duration::from_secs(10),
            shutdown_delay: a.shutdown_delay,
            drain: a.drain,
            unready,
        },
        tls,
        probes,
        async move {
            shutdown_signal().await;
            stop.send_replace(true);
        },
    );
    let mut server = std::pin::pin!(server);
    // A replica whose refresher or Lease task stopped exits (the Lease is
    // released on the way), so that another one takes over; during a
    // shutdown, the refresher stopping is expected and the server finishes.
    tokio::select! {
        r = &mut server => {
            // Drained: the refresher releases the Lease before the process ends.
            if *stopping.borrow() {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut refresher).await;
            }
            r
        }
        r = &mut refresher => {
            if *stopping.borrow() {
                return server.await;
            }
            let why = match r {
                Ok(e) => e.to_string(),
                Err(e) => format!("the refresher task failed: {e}"),
            };
            tracing::error!(error = %why, "the refresher stopped; exiting so that another replica takes over");
            anyhow::bail!("the refresher stopped: {why}")
        }
    }
}
