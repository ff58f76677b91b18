//! What one planning of the refresher costs its leader, in memory (no API
//! call): the index's backing Secrets in use ([`Index::in_use`]), the
//! planner's decisions on them ([`Planner::plan`]) and the workloads behind
//! ([`Index::behind`]). The leader plans at least every `--refresh-tick`,
//! and 300 ms after pod events while pods are being created, so under a
//! burst of pod creations this is paid about three times a second.
//!
//! `cargo bench --bench planning`: Deployments of 100 replicas (one record
//! and one versions text per namespace, as a ReplicaSet's pods carry), 5
//! references each to 50 secrets, at 1,000 and 10,000 pods; each figure the
//! median of 15 plannings, in µs.

use std::collections::{BTreeSet, HashMap};
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use kube::core::PartialObjectMeta;
use serde_json::json;
use sm_injector::policy::{AccessRule, NamespaceFacts};
use sm_injector::refresh::index::{Index, Key, Limits};
use sm_injector::refresh::planner::{Marks, Planner};

const REPLICAS: usize = 100;
const REFS: usize = 5;
const SECRETS: usize = 50;
const RUNS: usize = 15;

fn replica(ns: &str, i: usize, record: &str) -> PartialObjectMeta<Pod> {
    let versions = serde_json::to_string(&vec!["v1"; REFS]).unwrap();
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "namespace": ns, "name": format!("web-7d9f-{i}"),
        "labels": {"pod-template-hash": "7d9f"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f", "uid": "rs-uid", "controller": true}],
        "annotations": {"sm-injector.io/injected": record, "sm-injector.io/versions": versions},
    }}))
    .unwrap()
}

fn median(mut t: Vec<Duration>) -> f64 {
    t.sort();
    t[t.len() / 2].as_secs_f64() * 1e6
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!("one planning of the refresher's leader, in memory; µs, median of {RUNS}");
    println!(
        "{:>8} {:>9} {:>10} {:>10} {:>10}",
        "pods", "in use", "in_use()", "plan()", "behind()"
    );
    for namespaces in [10, 100] {
        let limits = Limits {
            max_entries: 20,
            min_interval: Duration::from_secs(60),
            max_calls: 20,
            max_records_per_namespace: 5000,
            max_secrets_per_namespace: 1000,
        };
        let mut index = Index::new(limits);
        for n in 0..namespaces {
            let ns = format!("ns-{n}");
            let secrets: Vec<_> = (0..REFS)
                .map(|j| json!({"secret": format!("shared/s{}", (n + j) % SECRETS)}))
                .collect();
            let record = json!({"refreshInterval": "1h", "secrets": secrets}).to_string();
            for i in 0..REPLICAS {
                assert!(index.apply(&replica(&ns, i, &record)).is_none());
            }
        }
        let facts = |_: &str| {
            Some(NamespaceFacts {
                opted_in: true,
                rule: AccessRule::for_namespace("ns", Some("shared/*")),
                refresh_now: None,
            })
        };
        let mut planner = Planner::new(Duration::from_secs(30));
        let marks = Marks::new();
        let now = SystemTime::now();
        let in_use = index.in_use();
        // The first planning schedules every key; the next ones find it so.
        planner.plan(&in_use, facts, &marks, None, now);
        let (mut a, mut b, mut c) = (vec![], vec![], vec![]);
        for _ in 0..RUNS {
            let t = Instant::now();
            let in_use = black_box(index.in_use());
            a.push(t.elapsed());
            let t = Instant::now();
            black_box(planner.plan(&in_use, facts, &marks, None, now));
            b.push(t.elapsed());
            let holds: HashMap<&Key, &str> = in_use.keys().map(|k| (k, "v1")).collect();
            let t = Instant::now();
            let behind = black_box(index.behind(&holds, &BTreeSet::new()));
            c.push(t.elapsed());
            assert!(
                behind.is_empty(),
                "every replica runs what its Secret holds"
            );
        }
        println!(
            "{:>8} {:>9} {:>10.0} {:>10.0} {:>10.0}",
            namespaces * REPLICAS,
            in_use.len(),
            median(a),
            median(b),
            median(c)
        );
    }
}
