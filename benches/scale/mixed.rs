//! More warm pods, every way's in one stream: the 16 creators take the ways'
//! pods in turn, pod by pod (`order::turns`), so that each way's pods wait on
//! the same machine at the same moments as the others'. The chunked waves
//! (`cost.rs`) tell each way's whole cost (its CPU, its requests, its bytes
//! in etcd) apart, but a way's chunks run seconds apart from the others', and
//! this shared 2-core machine's speed moves by a third from one minute to the
//! next; here a slow spell falls on every way's pods alike, which is what a
//! comparison of their latencies needs. What one way's pods cost the API
//! server slows the others' pods here too: these rows tell what a way adds to
//! its own pods' creation, the chunked rows what it costs the cluster. It
//! starts 32 s after the last chunk (`LIMIT_RANGER_LIVE_TTL`), so that the
//! first pod of every way's namespaces waits on the API server's live lookup
//! of LimitRanges alike.

use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

use super::cost::pct;
use super::order;

/// How many parts of the stream the ratios are also given for, each its own
/// stretch of time: their spread tells how far one run's ratio can be
/// trusted.
const PARTS: usize = 4;

/// Each way's latencies in ms, in the order their pods were taken.
pub type Latencies = Vec<Vec<f64>>;

/// What sm-injector's process did in each quarter of the stream, and one
/// thing the API server did, counted as each quarter's first pod starts:
/// - its reads of backing Secrets (the refresher's checks, and an
///   admission's once what it found is `--cache-ttl` old);
/// - its Secrets Manager calls (values past `--cache-ttl` fetched again);
/// - its inventory writes (`PATCH configmaps`, from the API server's counts:
///   only sm-injector patches ConfigMaps here, its admissions and its
///   leader's collector alike; an admission writes the namespace's inventory
///   again once `--cache-ttl` has passed since this process last did);
/// - its CPU seconds;
/// - the API server's live lookups of LimitRanges (`LIST limitranges`: its
///   `LimitRanger` lists a namespace that has none again when its last list
///   there is 30 s old, and the pod's creation waits on it).
pub struct Busy(Vec<Mark>);

/// sm-injector's counters at one moment.
struct Mark {
    reads: f64,
    aws: f64,
    inventory: f64,
    limitranges: f64,
    cpu: f64,
    at: Instant,
}

impl Busy {
    fn describe(&self) -> String {
        let parts: Vec<String> = self
            .0
            .windows(2)
            .map(|w| {
                let (a, b) = (&w[0], &w[1]);
                format!(
                    "{:.0} reads, {:.0} AWS calls, {:.0} inventory writes, {:.2} CPU s in {:.1} s, {:.0} LimitRange lookups",
                    b.reads - a.reads,
                    b.aws - a.aws,
                    b.inventory - a.inventory,
                    b.cpu - a.cpu,
                    b.at.duration_since(a.at).as_secs_f64(),
                    b.limitranges - a.limitranges,
                )
            })
            .collect();
        parts.join("; ")
    }
}

/// sm-injector's counters now.
async fn busy_now(client: &kube::Client, probe: u16, pid: u32) -> Mark {
    use super::support::injector::metric_sum;
    let requests = super::api_requests(client).await;
    let count = |verb: &str, resource: &str| {
        requests
            .get(&(verb.to_string(), resource.to_string()))
            .copied()
            .unwrap_or(0.0)
    };
    Mark {
        reads: metric_sum(probe, "sm_injector_backing_secret_reads_total").await,
        aws: metric_sum(probe, "sm_injector_secretsmanager_calls_total").await,
        inventory: count("PATCH", "configmaps"),
        limitranges: count("LIST", "limitranges"),
        cpu: super::cost::cpu_seconds(pid),
        at: Instant::now(),
    }
}

/// Creates every way's pods (`by_way`, in the ways' order) with `clients`
/// concurrent creators, the ways taking turns pod by pod.
pub async fn wave(
    client: &kube::Client,
    by_way: Vec<Vec<(String, Pod)>>,
    clients: usize,
    (probe, pid): (u16, u32),
) -> (Latencies, Busy) {
    let ways = by_way.len();
    let mut left: Vec<_> = by_way.into_iter().map(Vec::into_iter).collect();
    let mut stream = vec![];
    for turn in 0.. {
        let before = stream.len();
        for w in order::turns(turn, ways) {
            stream.extend(left[w].next().map(|pod| (w, pod)));
        }
        if stream.len() == before {
            break;
        }
    }
    let quarter = stream.len().div_ceil(PARTS).max(1);
    // Each pod's place in the stream, its way, its latency, and for each
    // quarter's first pod sm-injector's counters as it started.
    let mut done: Vec<(usize, usize, f64, Option<Mark>)> =
        futures::stream::iter(stream.into_iter().enumerate())
            .map(|(taken, (w, (ns, p)))| {
                let api = Api::<Pod>::namespaced(client.clone(), &ns);
                async move {
                    let mark = match taken % quarter {
                        0 => Some(busy_now(client, probe, pid).await),
                        _ => None,
                    };
                    let t = Instant::now();
                    api.create(&PostParams::default(), &p)
                        .await
                        .expect("pod created");
                    (taken, w, t.elapsed().as_secs_f64() * 1000.0, mark)
                }
            })
            .buffer_unordered(clients)
            .collect()
            .await;
    // In the order the pods were taken, so that the stream's parts are
    // stretches of time.
    done.sort_by_key(|(taken, ..)| *taken);
    let mut out = vec![vec![]; ways];
    let mut busy = vec![];
    for (_, w, ms, mark) in done {
        out[w].push(ms);
        busy.extend(mark);
    }
    busy.push(busy_now(client, probe, pid).await);
    (out, Busy(busy))
}

/// `p`'s percentile of `v`'s `part`-th of [`PARTS`].
fn part(v: &[f64], part: usize, p: f64) -> f64 {
    let len = v.len().div_ceil(PARTS);
    pct(v.chunks(len.max(1)).nth(part).unwrap_or(&[]).to_vec(), p)
}

/// Each way's p50 and p99, and their ratios to `base`'s.
pub fn print(ways: &[&str], (latencies, busy): &(Latencies, Busy), base: &str, clients: usize) {
    println!(
        "\nwarm pods again, every way's in one stream ({clients} concurrent creators, the ways taking turns pod by pod)"
    );
    let at = |w: usize, p: f64| pct(latencies[w].clone(), p);
    let b = ways.iter().position(|w| *w == base).expect("the base way");
    for (w, way) in ways.iter().enumerate() {
        let (p50, p99) = (at(w, 0.5), at(w, 0.99));
        let against = if w == b {
            String::new()
        } else {
            let parts: Vec<String> = (0..PARTS)
                .map(|i| {
                    let r = |p| part(&latencies[w], i, p) / part(&latencies[b], i, p);
                    format!("{:.2}/{:.2}", r(0.5), r(0.99))
                })
                .collect();
            format!(
                ", against the {base} {:.2}x, {:.2}x (by quarter of the stream, p50/p99: {})",
                p50 / at(b, 0.5),
                p99 / at(b, 0.99),
                parts.join(" ")
            )
        };
        println!(
            "  {way:<13} {:>5} pods  p50 {p50:>6.1} ms  p99 {p99:>6.1} ms{against}",
            latencies[w].len()
        );
    }
    println!(
        "  sm-injector's process in each quarter of the stream (its reads of backing Secrets, the refresher's and the admissions'; its Secrets Manager calls; its inventory writes; its CPU; and the API server's live LimitRange lookups, for every way's pods): {}",
        busy.describe()
    );
}
