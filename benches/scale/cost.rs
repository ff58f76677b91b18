//! What a pod creation costs the whole cluster, four ways in one run: no
//! webhook, the minimal no-op webhook (`examples/noop_webhook.rs`), the no-op
//! answering sm-injector's patch (`sized.rs`) and sm-injector, each
//! registered for its own namespaces, the same pods.
//!
//! Each way runs two waves with 16 concurrent creators: the first pod of
//! every namespace (for sm-injector: the Secrets Manager read and the backing
//! Secrets' creation), then the rest, whose secrets are already in the
//! namespace. Each wave is cut into chunks run in turn (none, no-op,
//! sm-size, sm-injector, then no-op first, ...: `order::turns`), so that a
//! slow spell of the shared 2-core machine falls on every way alike. Per wave: latency p50/p99; CPU seconds per 1,000 pods of
//! kube-apiserver, etcd and each webhook process (`/proc/<pid>/stat`); API
//! requests per pod by verb and resource (`apiserver_request_total`); bytes
//! written to etcd's WAL per pod (`etcd_disk_wal_write_bytes_total`); watch
//! events the API server sent per pod (`apiserver_watch_events_total`, all
//! watchers); Secrets Manager calls; the time each admission plugin and
//! webhook takes per CREATE (`apiserver_admission_{controller,webhook}_admission_duration_seconds`),
//! which shows where a creation waits inside the API server, and beside the
//! webhook's call the time sm-injector's own reviews took
//! (`sm_injector_admission_duration_seconds`). Work a wave causes after its last
//! answer (watches, the refresher's writes) is counted: each wave's figures
//! are taken after a settling pause, which every way gets alike.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

use super::support;

/// How long after a wave's last answer its figures are read.
const SETTLE: Duration = Duration::from_secs(8);

/// The processes whose CPU is counted, by column.
pub struct Processes {
    pub columns: Vec<(&'static str, u32)>,
    pub sm_probe: u16,
    pub etcd_port: u16,
    /// The API server's CPU profile of each chunk, where asked for.
    pub pprof: super::pprof::Pprof,
}

#[derive(Default, Clone)]
struct Snapshot {
    cpu: Vec<f64>,
    requests: BTreeMap<(String, String), f64>,
    watch_events: f64,
    etcd_wal_bytes: f64,
    aws_calls: f64,
    /// Seconds spent and calls made by each admission plugin and webhook
    /// (`name`, `type`) on creations, as the API server's histograms count them.
    admission: BTreeMap<(String, String), (f64, f64)>,
    /// sm-injector's own figures (`own.rs`).
    own: BTreeMap<String, f64>,
}

/// One way's wave: totals over every chunk of it ([`Row::absorb`]).
pub struct Row {
    pub way: &'static str,
    pub wave: &'static str,
    /// Each chunk's latencies in ms, in the order the chunks ran
    /// (`paired.rs`).
    pub chunks: Vec<Vec<f64>>,
    cpu: Vec<f64>,
    requests: BTreeMap<(String, String), f64>,
    watch_events: f64,
    etcd_bytes: f64,
    pub aws_calls: f64,
    admission: BTreeMap<(String, String), (f64, f64)>,
    own: BTreeMap<String, f64>,
}

impl Row {
    /// Adds a further chunk of the same way and wave.
    pub fn absorb(&mut self, other: Row) {
        self.chunks.extend(other.chunks);
        for (a, b) in self.cpu.iter_mut().zip(other.cpu) {
            *a += b;
        }
        for (k, v) in other.requests {
            *self.requests.entry(k).or_default() += v;
        }
        self.watch_events += other.watch_events;
        self.etcd_bytes += other.etcd_bytes;
        self.aws_calls += other.aws_calls;
        for (k, (t, n)) in other.admission {
            let e = self.admission.entry(k).or_default();
            e.0 += t;
            e.1 += n;
        }
        for (k, v) in other.own {
            *self.own.entry(k).or_default() += v;
        }
    }

    /// Every chunk's latencies, in ms.
    pub fn latencies(&self) -> Vec<f64> {
        self.chunks.concat()
    }

    fn pods(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    fn per_pod(&self, total: f64) -> f64 {
        total / self.pods().max(1) as f64
    }
}

/// (resident now, peak) of `pid`, in MiB.
pub fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU seconds (user + system) `pid` has used.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: state is the 3rd field,
    // utime the 14th and stime the 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // In clock ticks of USER_HZ, which is 100 on every Linux build.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// The sum of the samples of `name` in a Prometheus text, by the values of `labels`.
pub fn samples(text: &str, name: &str, labels: &[&str]) -> BTreeMap<Vec<String>, f64> {
    let mut out = BTreeMap::new();
    for l in text.lines().filter(|l| {
        l.strip_prefix(name)
            .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
    }) {
        let key = labels
            .iter()
            .map(|k| {
                l.find(&format!("{k}=\""))
                    .and_then(|i| l[i + k.len() + 2..].split('"').next())
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        let v: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(key).or_default() += v;
    }
    out
}

/// Seconds and calls of each admission plugin (`admission_controller`) and
/// webhook on CREATE requests, by (`name`, `type`).
fn admission(api: &str) -> BTreeMap<(String, String), (f64, f64)> {
    let mut out: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
    for kind in ["controller", "webhook"] {
        let metric = format!("apiserver_admission_{kind}_admission_duration_seconds");
        let labels = ["name", "type", "operation"];
        let sums = samples(api, &format!("{metric}_sum"), &labels);
        let counts = samples(api, &format!("{metric}_count"), &labels);
        for (k, t) in sums.into_iter().filter(|(k, _)| k[2] == "CREATE") {
            let n = counts.get(&k).copied().unwrap_or(0.0);
            out.insert((k[0].clone(), k[1].clone()), (t, n));
        }
    }
    out
}

async fn snapshot(client: &kube::Client, procs: &Processes) -> Snapshot {
    let req = http::Request::get("/metrics").body(vec![]).unwrap();
    let api = client.request_text(req).await.unwrap();
    let requests = samples(&api, "apiserver_request_total", &["verb", "resource"])
        .into_iter()
        .map(|(k, v)| ((k[0].clone(), k[1].clone()), v))
        .collect();
    let watch_events = samples(&api, "apiserver_watch_events_total", &[])
        .values()
        .sum();
    let (_, etcd) = support::injector::http_get(procs.etcd_port, "/metrics").await;
    let etcd_wal_bytes = samples(&etcd, "etcd_disk_wal_write_bytes_total", &[])
        .values()
        .sum();
    let (_, sm) = support::injector::http_get(procs.sm_probe, "/metrics").await;
    let own = super::own::figures(&sm);
    Snapshot {
        own,
        admission: admission(&api),
        cpu: procs.columns.iter().map(|(_, p)| cpu_seconds(*p)).collect(),
        requests,
        watch_events,
        etcd_wal_bytes,
        aws_calls: support::injector::metric_sum(
            procs.sm_probe,
            "sm_injector_secretsmanager_calls_total",
        )
        .await,
    }
}

/// Creates `pods` with `clients` concurrent clients, waits SETTLE, and
/// returns the wave's row.
pub async fn wave(
    client: &kube::Client,
    procs: &Processes,
    (way, wave): (&'static str, &'static str),
    pods: Vec<(String, Pod)>,
    clients: usize,
) -> Row {
    let before = snapshot(client, procs).await;
    let profile = procs.pprof.start(client, way, wave);
    let latencies: Vec<f64> = futures::stream::iter(pods)
        .map(|(ns, p)| {
            let api = Api::<Pod>::namespaced(client.clone(), &ns);
            async move {
                let t = Instant::now();
                api.create(&PostParams::default(), &p)
                    .await
                    .expect("pod created");
                t.elapsed().as_secs_f64() * 1000.0
            }
        })
        .buffer_unordered(clients)
        .collect()
        .await;
    tokio::time::sleep(SETTLE).await;
    if let Some(p) = profile {
        p.await.expect("the profile's task");
    }
    let after = snapshot(client, procs).await;
    Row {
        way,
        wave,
        chunks: vec![latencies],
        cpu: after
            .cpu
            .iter()
            .zip(&before.cpu)
            .map(|(a, b)| a - b)
            .collect(),
        requests: after
            .requests
            .iter()
            .map(|(k, v)| (k.clone(), v - before.requests.get(k).unwrap_or(&0.0)))
            .filter(|(_, d)| *d > 0.0)
            .collect(),
        watch_events: after.watch_events - before.watch_events,
        etcd_bytes: after.etcd_wal_bytes - before.etcd_wal_bytes,
        aws_calls: after.aws_calls - before.aws_calls,
        admission: after
            .admission
            .iter()
            .map(|(k, (t, n))| {
                let (t0, n0) = before.admission.get(k).copied().unwrap_or_default();
                (k.clone(), (t - t0, n - n0))
            })
            .filter(|(_, (_, n))| *n > 0.0)
            .collect(),
        own: after
            .own
            .iter()
            .map(|(k, v)| (k.clone(), v - before.own.get(k).unwrap_or(&0.0)))
            .collect(),
    }
}

pub fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0)
}

/// The table of the ways, then each row's API requests per pod.
pub fn print(procs: &Processes, rows: &[Row], clients: usize) {
    println!("\npod creation, what it costs the cluster ({clients} concurrent creators, one run)");
    let cpu_heads: Vec<String> = procs
        .columns
        .iter()
        .map(|(n, _)| format!("{n:>14}"))
        .collect();
    println!(
        "{:<13} {:<18} {:>5} {:>8} {:>8} {} {:>8} {:>8} {:>9} {:>8} {:>5}",
        "webhook",
        "wave",
        "pods",
        "p50 ms",
        "p99 ms",
        cpu_heads.join(" "),
        "all CPU",
        "API/pod",
        "etcd B/pod",
        "watch/pod",
        "AWS"
    );
    for r in rows {
        let cpu: Vec<f64> = r.cpu.iter().map(|c| r.per_pod(*c) * 1000.0).collect();
        let latencies = r.latencies();
        let cells: Vec<String> = cpu.iter().map(|c| format!("{c:>13.2}s")).collect();
        println!(
            "{:<13} {:<18} {:>5} {:>8.1} {:>8.1} {} {:>7.2}s {:>8.2} {:>9.0} {:>8.2} {:>5}",
            r.way,
            r.wave,
            r.pods(),
            pct(latencies.clone(), 0.5),
            pct(latencies, 0.99),
            cells.join(" "),
            cpu.iter().sum::<f64>(),
            r.per_pod(r.requests.values().sum::<f64>()),
            r.per_pod(r.etcd_bytes),
            r.per_pod(r.watch_events),
            r.aws_calls
        );
    }
    println!(
        "  (CPU: seconds per 1,000 pods; API/pod: every client's requests; watch/pod: events the API server sent to all watchers)"
    );
    for r in rows {
        let by: Vec<String> = r
            .requests
            .iter()
            .map(|(k, v)| (k, r.per_pod(*v)))
            .filter(|(_, d)| *d >= 0.005)
            .map(|((v, res), d)| format!("{v} {res} {d:.2}"))
            .collect();
        println!(
            "  API requests per pod, {} / {}: {}",
            r.way,
            r.wave,
            by.join(", ")
        );
    }
    // Where a creation waits inside the API server: the plugins and webhooks
    // that take a tenth of a millisecond or more a call.
    for r in rows {
        let by: Vec<String> = r
            .admission
            .iter()
            .map(|((name, kind), (t, n))| (name, kind, t * 1000.0 / n, r.per_pod(*n)))
            .filter(|(_, _, ms, _)| *ms >= 0.1)
            .map(|(name, kind, ms, calls)| format!("{name} ({kind}) {ms:.1} x {calls:.2}"))
            .chain(super::own::describe(&r.own, |n| r.per_pod(n)))
            .collect();
        println!(
            "  admission on CREATE, ms a call x calls per pod, {} / {}: {}",
            r.way,
            r.wave,
            if by.is_empty() {
                "none at 0.1 ms or more".to_string()
            } else {
                by.join(", ")
            }
        );
    }
}
