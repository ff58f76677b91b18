//! sm-injector's own figures in a wave, from its `/metrics`: the time its
//! reviews took (`sm_injector_admission_duration_seconds`: from the
//! decision's lookup to the answer; the body's read, the first look and HTTP
//! apart) and its reads of backing Secrets by what read them
//! (`sm_injector_backing_secret_reads_total`), which tell an admission that
//! waits on the API server from one that does not.

use std::collections::BTreeMap;

use super::cost::samples;

/// From sm-injector's metrics text: `sum`, `count`, each histogram bucket by
/// its bound, and `reads <operation>`. Counters all, so two can be subtracted.
pub fn figures(sm: &str) -> BTreeMap<String, f64> {
    let histogram = "sm_injector_admission_duration_seconds";
    let mut out: BTreeMap<String, f64> = samples(sm, &format!("{histogram}_bucket"), &["le"])
        .into_iter()
        .map(|(k, v)| (k[0].clone(), v))
        .collect();
    for part in ["sum", "count"] {
        let v = samples(sm, &format!("{histogram}_{part}"), &[])
            .values()
            .sum();
        out.insert(part.into(), v);
    }
    let reads = samples(sm, "sm_injector_backing_secret_reads_total", &["operation"]);
    for (op, v) in reads {
        out.insert(format!("reads {}", op[0]), v);
    }
    out
}

/// The review time's mean, the bounds of the buckets that hold its median,
/// 90th and 99th percentiles, and reviews per pod; then the reads of backing
/// Secrets per pod (`per_pod` divides by the wave's pods). `None` when
/// sm-injector reviewed nothing.
pub fn describe(f: &BTreeMap<String, f64>, per_pod: impl Fn(f64) -> f64) -> Option<String> {
    let n = f.get("count").copied().filter(|n| *n > 0.0)?;
    let mut buckets: Vec<(f64, f64)> = (f.iter())
        .filter_map(|(le, c)| Some((le.parse::<f64>().ok()?, *c)))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let bound = |q: f64| {
        let found = buckets.iter().find(|(_, c)| *c >= q * n);
        found.map_or("?".into(), |(le, _)| format!("{:.1}", le * 1000.0))
    };
    let reads: Vec<String> = (f.iter())
        .filter_map(|(k, v)| Some(format!("{} {:.2}", k.strip_prefix("reads ")?, per_pod(*v))))
        .collect();
    Some(format!(
        "sm-injector's own review {:.2} (p50 <= {}, p90 <= {}, p99 <= {}) x {:.2}; its reads of backing Secrets per pod: {}",
        f["sum"] * 1000.0 / n,
        bound(0.5),
        bound(0.9),
        bound(0.99),
        per_pod(n),
        if reads.is_empty() {
            "none".into()
        } else {
            reads.join(", ")
        }
    ))
}
