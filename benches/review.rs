//! The review's own work, in one thread and without I/O: what a pod decided
//! afresh costs sm-injector from its body to its answer's bytes, step by step,
//! and what a kept decision's look (or a replica's recall) and lookup cost, on the reviews
//! `./tests/bench` posts (`benches/admission/reviews.rs`).
//!
//! `cargo bench --bench review` (no test bed: the values come from a
//! [`StaticSource`], read once and then held by the cache as on the warm
//! path). Each line is a prefix of a path that starts with the look at the
//! body, so the step it adds costs the difference from the line before it
//! on the same path; each figure is the median of 7 batches of 20,000
//! reviews, in ns per review, and beside it the allocations per review,
//! counted over 100 more (the allocator counts only then; the floor's one is
//! serde_json's buffer for the nesting it skips). Not timed here, as they
//! need an API server: the Namespace's lookup in the watched cache and the backing
//! Secrets' check ([`sm_injector::store::Syncer::ensure`], two cache lookups
//! per backing Secret on the warm path). For comparison, the minimal floor's
//! own work (`examples/noop_webhook.rs`): the uid, borrowed from the body.
//! The server's transport (TLS, HTTP/1.1, system calls) is what
//! `./tests/bench` adds. `cargo bench --bench review -- <filter>` measures only
//! the lines whose name contains `<filter>` (for `perf record`).
//!
//! `cargo bench --bench review -- --cold`: each review is timed alone, after
//! 4 MiB are written between it and the one before (batches of 2,000), so
//! that it finds the caches as a server's admission does after the kernel,
//! TLS and other connections' work: what it costs to touch what it touches.

#[path = "review/counting.rs"]
mod counting;
#[path = "admission/reviews.rs"]
mod reviews;

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sm_injector::admission::{Asked, Planned, Settings, plan_pod};
use sm_injector::cache::CachedSource;
use sm_injector::decisions::{self, Decision, Decisions};
use sm_injector::identity::{Identity, Mode};
use sm_injector::metrics::Metrics;
use sm_injector::policy::AccessRule;
use sm_injector::recall::Recall;
use sm_injector::secret::Payload;
use sm_injector::source::StaticSource;
use sm_injector::store::Ensured;
use sm_injector::{glance, patch, wire};

const BATCH: u32 = 20_000;
const BATCHES: usize = 7;
/// With `--cold`: the bytes written between two reviews, more than this
/// machine's caches hold, and the reviews of a batch.
const COLD_BYTES: usize = 4 << 20;
const COLD_BATCH: u32 = 2_000;
/// The untimed calls whose allocations are counted, per line.
const COUNTED: u32 = 100;
const NS: &str = "bench";

/// The secrets the reviews read, as `./tests/bench` creates them.
fn secrets() -> HashMap<String, Payload> {
    let mut s: HashMap<String, Payload> = [
        ("discord", r#"{"bot_token":"tok","application_id":123}"#),
        ("postgres", r#"{"url":"postgres://app:pw@db:5432/app"}"#),
        ("redis", r#"{"HOST":"redis","PORT":6379}"#),
    ]
    .into_iter()
    .map(|(n, v)| (format!("{NS}/{n}"), Payload::String(v.into())))
    .collect();
    for w in 0..5 {
        let keys: Vec<String> = (0..20)
            .filter(|i| i % 5 == w)
            .map(|i| format!("\"k{i}\":\"v{i}\""))
            .collect();
        s.insert(
            format!("{NS}/wide{w}"),
            Payload::String(format!("{{{}}}", keys.join(","))),
        );
    }
    s
}

/// What a review needs besides its body.
struct Bed {
    source: CachedSource,
    rule: Arc<AccessRule>,
    settings: Settings,
}

impl Bed {
    /// The plan for `pod`, as the webhook makes it for a pod decided afresh.
    async fn plan(&self, pod: &sm_injector::pod::Pod) -> Planned {
        let rule = self.rule.clone();
        plan_pod(pod, NS, rule, &Identity::Own, &self.source, &self.settings).await
    }
}

/// How far along its path a timed review goes: a pod decided afresh takes
/// the look, then `Pod`, `Plan`, `Patch` and `Answer`; a kept decision's
/// replica the look, then `Key`, `Lookup` and `Answer`; a recalled replica
/// `Recall`, then `Lookup` and `Answer`.
#[derive(Clone, Copy, PartialEq)]
enum Step {
    /// The look at the body only (the first step of both paths).
    Look,
    /// The pod planned from the look, and what it asks copied out.
    Pod,
    /// Its plan: annotations, containers, rule, values, their contents.
    Plan,
    /// The patch.
    Patch,
    /// The decision's key.
    Key,
    /// The review recalled (`sm_injector::recall`): a replica's body found
    /// equal to a remembered one, what it asks and its key, without a look.
    Recall,
    /// The kept decision's lookup.
    Lookup,
    /// The answer's bytes: afresh, the record of versions and the patch as
    /// base64; kept, the kept base64 patch.
    Answer,
}

/// One review of `body` decided afresh, as far as `upto`; its answer's length.
async fn afresh(bed: &Bed, body: &[u8], upto: Step) -> usize {
    let g = glance::read(body, wire::DEFAULT_MAX_ENTRIES).expect("a review");
    let pod = g
        .created_pod()
        .and_then(|p| p.planning_pod())
        .expect("planned from the look");
    let owned = sm_injector::admission::Asked::of_glance(&g)
        .expect("a pod")
        .owned();
    drop(g);
    let asked = owned.asked();
    if upto == Step::Pod {
        return black_box(&pod)
            .metadata
            .annotations
            .as_ref()
            .map_or(0, |a| a.len())
            + asked.pod.len();
    }
    let Planned::Plan { plan, targets, .. } = bed.plan(&pod).await else {
        panic!("the bench's review is planned");
    };
    if upto == Step::Plan {
        return black_box(&plan).backing.len();
    }
    let (mut built, warnings) = patch::build(&pod, &plan, &targets);
    assert!(warnings.is_empty());
    if upto == Step::Patch {
        return black_box(&built).len();
    }
    patch::record_versions(&mut built, Ensured::default().versions(&plan));
    let mut response = asked.reply.allowed();
    response.patch = Some(built);
    wire::encode_with(&response, None).len()
}

/// One review recalled from `recall`, answered from the decision kept under
/// its key, as far as `upto`.
async fn recalled(recall: &Recall, decisions: &Decisions, body: &[u8], upto: Step) -> usize {
    let r = recall.recall(body).expect("recalled");
    if upto == Step::Recall {
        return black_box(&r).key().len();
    }
    let d = decisions.get(r.key()).await.expect("kept");
    if upto == Step::Lookup {
        return black_box(d).warm_patch.len();
    }
    let response = r.asked().reply.allowed();
    wire::encode_with(&response, Some(&d.warm_patch)).len()
}

/// How a line's review is answered.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    Afresh,
    Kept,
    Recalled,
}

/// One review answered from the decision kept under its key, as far as `upto`.
async fn kept(decisions: &Decisions, body: &[u8], upto: Step) -> usize {
    let g = glance::read(body, wire::DEFAULT_MAX_ENTRIES).expect("a review");
    if upto == Step::Look {
        return black_box(&g).uid().len();
    }
    let key = decisions::key_of(&g).expect("a key");
    if upto == Step::Key {
        return black_box(key).len();
    }
    let d = decisions.get(&key).await.expect("kept");
    if upto == Step::Lookup {
        return black_box(d).warm_patch.len();
    }
    let asked = sm_injector::admission::Asked::of_glance(&g).expect("a pod");
    let response = asked.reply.allowed();
    wire::encode_with(&response, Some(&d.warm_patch)).len()
}

/// The minimal floor's own work: the uid, borrowed from the body.
fn floor(body: &[u8]) -> usize {
    #[derive(serde::Deserialize)]
    struct Review<'a> {
        #[serde(borrow)]
        request: Request<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Request<'a> {
        uid: &'a str,
    }
    let r: Review = serde_json::from_slice(body).expect("a review");
    r.request.uid.len()
}

/// The median over [`BATCHES`] of ns per call of `f`, and the allocations
/// per call over [`COUNTED`] untimed calls after, if the line `name` is
/// wanted: a line is skipped (NaN) when the command line gives a filter
/// (`cargo bench --bench review -- <filter>`, to profile one line) that its
/// name does not contain.
async fn ns_per<F: AsyncFnMut() -> usize>(name: &str, mut f: F) -> (f64, f64) {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    if filter.is_some_and(|f| !name.contains(f.as_str())) {
        return (f64::NAN, f64::NAN);
    }
    let mut sink = 0usize;
    for _ in 0..BATCH / 10 {
        sink = sink.wrapping_add(f().await);
    }
    let mut batches: Vec<f64> = (0..BATCHES).map(|_| 0.0).collect();
    let mut cold = std::env::args()
        .any(|a| a == "--cold")
        .then(|| vec![0u8; COLD_BYTES]);
    for b in batches.iter_mut() {
        if let Some(buffer) = cold.as_mut() {
            // Each review timed alone, after the buffer's every cache line
            // is written.
            let mut spent = Duration::ZERO;
            for _ in 0..COLD_BATCH {
                buffer
                    .iter_mut()
                    .step_by(64)
                    .for_each(|x| *x = x.wrapping_add(1));
                black_box(&buffer);
                let t = Instant::now();
                sink = sink.wrapping_add(f().await);
                spent += t.elapsed();
            }
            *b = spent.as_nanos() as f64 / f64::from(COLD_BATCH);
            continue;
        }
        let t = Instant::now();
        for _ in 0..BATCH {
            sink = sink.wrapping_add(f().await);
        }
        *b = t.elapsed().as_nanos() as f64 / f64::from(BATCH);
    }
    counting::start();
    for _ in 0..COUNTED {
        sink = sink.wrapping_add(f().await);
    }
    let allocations = counting::stop() as f64 / f64::from(COUNTED);
    black_box(sink);
    batches.sort_by(f64::total_cmp);
    (batches[BATCHES / 2], allocations)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("review benchmark: run it with cargo bench --bench review");
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bed = Bed {
            source: CachedSource::new(
                Arc::new(StaticSource::new(secrets())),
                Duration::from_secs(3600),
                Metrics::new(),
            ),
            rule: Arc::new(AccessRule::for_namespace(NS, None)),
            settings: Settings {
                min_refresh: Duration::from_secs(60),
                aws_deadline: Duration::from_secs(3),
                max_aws_calls: sm_injector::admission::MAX_AWS_CALLS,
                caps: Default::default(),
                identity: Mode::Own,
            },
        };
        let timed = if std::env::args().any(|a| a == "--cold") {
            format!(
                "cold: each review timed alone after {} MiB written, median of {BATCHES} batches of {COLD_BATCH}",
                COLD_BYTES >> 20
            )
        } else {
            format!("median of {BATCHES} batches of {BATCH}")
        };
        println!(
            "the review's own work in one thread, ns per review ({timed}) and allocations per review (over {COUNTED} more); each line after the look adds its step to the line above (afresh: to the look; kept: to the look, then each kept line to the one above; recalled: a replica's body found equal to a remembered one, without the look, then each line to the one above)"
        );
        println!(
            "{:<44} {:>8} {:>7} {:>8} {:>7}",
            "", "seed ns", "allocs", "20 refs", "allocs"
        );
        let shapes = [reviews::review(NS, 0), reviews::review(NS, 20)];
        let print = |name: &str, v: &[(f64, f64)]| {
            println!(
                "{name:<44} {:>8.0} {:>7.1} {:>8.0} {:>7.1}",
                v[0].0, v[0].1, v[1].0, v[1].1
            )
        };
        let mut v = vec![];
        for body in &shapes {
            v.push(ns_per("minimal floor: the uid", async || floor(body)).await);
        }
        print("minimal floor: the uid", &v);
        // Each line: its name, whether its pod is decided afresh (else
        // answered from the decision kept for it), and how far it goes.
        for (name, path, upto) in [
            ("the look", Path::Kept, Step::Look),
            ("afresh: + pod, what it asks", Path::Afresh, Step::Pod),
            ("afresh: + plan", Path::Afresh, Step::Plan),
            ("afresh: + patch", Path::Afresh, Step::Patch),
            ("afresh: + record, answer (whole)", Path::Afresh, Step::Answer),
            ("kept: + key", Path::Kept, Step::Key),
            ("kept: + lookup", Path::Kept, Step::Lookup),
            ("kept: + answer (whole)", Path::Kept, Step::Answer),
            ("recalled: the recall (no look)", Path::Recalled, Step::Recall),
            ("recalled: + lookup", Path::Recalled, Step::Lookup),
            ("recalled: + answer (whole)", Path::Recalled, Step::Answer),
        ] {
            let mut v = vec![];
            for body in &shapes {
                let decisions =
                    Decisions::new(decisions::DEFAULT_MAX_BYTES, Duration::from_secs(3600));
                let recall = Recall::default();
                if path != Path::Afresh {
                    keep(&bed, &decisions, body).await;
                    let g = glance::read(body, wire::DEFAULT_MAX_ENTRIES).expect("a review");
                    let key = decisions::key_of(&g).expect("a key");
                    let asked = Asked::of_glance(&g).expect("a pod's creation");
                    recall.remember(body, &asked, &key, wire::DEFAULT_MAX_ENTRIES);
                }
                v.push(match path {
                    Path::Afresh => ns_per(name, async || afresh(&bed, body, upto).await).await,
                    Path::Kept => {
                        ns_per(name, async || kept(&decisions, body, upto).await).await
                    }
                    Path::Recalled => {
                        ns_per(name, async || {
                            recalled(&recall, &decisions, body, upto).await
                        })
                        .await
                    }
                });
            }
            print(name, &v);
        }
    });
}

/// Keeps the decision for `body`'s pod, as the first admission of a replica.
async fn keep(bed: &Bed, decisions: &Decisions, body: &[u8]) {
    let g = glance::read(body, wire::DEFAULT_MAX_ENTRIES).expect("a review");
    let key = decisions::key_of(&g).expect("a key");
    let pod = g.created_pod().and_then(|p| p.planning_pod()).unwrap();
    let Planned::Plan {
        plan,
        targets,
        rule,
        values,
    } = bed.plan(&pod).await
    else {
        panic!("the bench's review is planned");
    };
    let (built, _) = patch::build(&pod, &plan, &targets);
    let d = Decision::new(Identity::Own, rule, values, plan, built);
    decisions.insert(key, Arc::new(d)).await;
}
