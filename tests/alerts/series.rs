//! The alerts' series: /metrics scraped at the start and end of a phase,
//! carried forward for the rules' windows, and evaluated by `promtool test
//! rules` against the shipped monitoring/alerts.rules.yaml.

use super::*;

/// Minutes a phase is carried forward.
pub(crate) const MINUTES: u64 = 70;

pub(crate) fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn promtool() -> PathBuf {
    support::component(
        "SM_INJECTOR_PROMTOOL",
        "promtool (tests/tools/build.sh promtool)",
    )
}

/// `promtool <command> rules <file>`: its output when it fails.
pub(crate) fn promtool_on(command: &str, file: &Path) -> Result<(), String> {
    let out = Command::new(promtool())
        .args([command, "rules"])
        .arg(file)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "promtool {command} rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// One scrape: when, and each sample with whether it is a counter.
pub(crate) struct Scrape {
    pub(crate) at: f64,
    samples: BTreeMap<String, (f64, bool)>,
}

pub(crate) async fn scrape(probe: u16) -> Scrape {
    let (status, text) = http_get(probe, "/metrics").await;
    assert_eq!(status, 200);
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let mut p = t.split(' ');
            types.insert(p.next().unwrap().to_string(), p.next().unwrap().to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let name = series.split('{').next().unwrap();
        let counter = ["", "_total", "_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| {
                name.strip_suffix(suffix)
                    .and_then(|family| types.get(family))
                    .is_some_and(|t| t == "counter" || t == "histogram")
            });
        samples.insert(series.to_string(), (value.parse().unwrap(), counter));
    }
    Scrape { at, samples }
}

/// promtool input series carrying the phase from `a` to `b` forward.
pub(crate) fn series(a: &Scrape, b: &Scrape) -> Vec<serde_json::Value> {
    let secs = b.at - a.at;
    b.samples
        .iter()
        .map(|(name, (v, counter))| {
            let values = if *counter {
                let before = a.samples.get(name).map_or(0.0, |s| s.0);
                let per_minute = (v - before).max(0.0) / secs * 60.0;
                format!("{v}+{per_minute}x{MINUTES}")
            } else {
                format!("{v}x{MINUTES}")
            };
            json!({"series": name, "values": values})
        })
        .collect()
}

/// Runs promtool on the shipped rules: in `phase`, the alerts `firing` fire
/// (each once, with its severity) and the alerts `quiet` do not.
pub(crate) fn check(
    phase: &str,
    input: Vec<serde_json::Value>,
    start: f64,
    firing: &[&str],
    quiet: &[&str],
) {
    let rules: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("monitoring/alerts.rules.yaml")).unwrap(),
    )
    .unwrap();
    let severity = |alert: &str| {
        rules["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["alert"] == alert)
            .unwrap_or_else(|| panic!("no alert {alert}"))["labels"]["severity"]
            .clone()
    };
    let mut tests = vec![];
    for a in firing {
        tests.push(json!({"eval_time": format!("{MINUTES}m"), "alertname": a,
            "exp_alerts": [{"exp_labels": {"severity": severity(a)}}]}));
    }
    for a in quiet {
        tests.push(json!({"eval_time": format!("{MINUTES}m"), "alertname": a, "exp_alerts": []}));
    }
    // The shipped rules without their annotations: promtool compares those
    // too, and they quote each alert's value; `promtool check rules` checks
    // their templates (below).
    let dir = tempfile::tempdir().unwrap();
    let mut bare = rules.clone();
    for r in bare["groups"][0]["rules"].as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("annotations");
    }
    let rule_file = dir.path().join("alerts.rules.yaml");
    std::fs::write(&rule_file, serde_yaml_ng::to_string(&bare).unwrap()).unwrap();
    let file = json!({
        "rule_files": [rule_file],
        "evaluation_interval": "1m",
        "tests": [{
            "name": phase,
            "interval": "1m",
            "start_timestamp": start as i64,
            "input_series": input,
            "alert_rule_test": tests,
        }]
    });
    let path = dir.path().join(format!("{}.yaml", phase.replace(' ', "-")));
    std::fs::write(&path, serde_yaml_ng::to_string(&file).unwrap()).unwrap();
    if let Err(e) = promtool_on("test", &path) {
        panic!("{phase}: {e}\n{}", std::fs::read_to_string(&path).unwrap());
    }
}

pub(crate) fn others<'a>(firing: &[&str], unasserted: &[&str]) -> Vec<&'a str> {
    ALERTS
        .iter()
        .copied()
        .filter(|a| !firing.contains(a) && !unasserted.contains(a))
        .collect()
}

/// Waits until the refresher has `n` backing Secrets in use and none due:
/// a newly used one is due at once (its first refresh), after which the next
/// is an interval away.
pub(crate) async fn settled(probe: u16, n: f64) {
    // A refresh through the slow proxy takes 2 s a call, and the refresher
    // plans once a tick: generous, since the machine is shared.
    support::eventually(
        Duration::from_secs(90),
        "the refresher to settle",
        || async {
            let used =
                support::injector::metric_sum(probe, "sm_injector_refresh_backing_secrets").await;
            let due = support::injector::metric_sum(
                probe,
                "sm_injector_refresh_oldest_due_timestamp_seconds",
            )
            .await;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            (used >= n && due > now + 60.0).then_some(())
        },
    )
    .await;
}

/// `input`'s series with the label `instance` = `name`, as Prometheus
/// scraping several replicas sees them.
pub(crate) fn labelled(input: Vec<serde_json::Value>, name: &str) -> Vec<serde_json::Value> {
    input
        .into_iter()
        .map(|mut v| {
            let series = v["series"].as_str().unwrap().to_string();
            v["series"] = json!(match series.split_once('{') {
                Some((metric, rest)) => format!("{metric}{{instance=\"{name}\",{rest}"),
                None => format!("{series}{{instance=\"{name}\"}}"),
            });
            v
        })
        .collect()
}
