//! The load and what it costs: the reviews posted, `wrk` pinned to its own
//! core against a pinned server, the server's CPU time and memory from
//! `/proc`, the size of an answer, and pods created through the API server.

use super::*;

pub(crate) fn proc_field(pid: u32, file: &str, name: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn rss_mib(pid: u32) -> f64 {
    proc_field(pid, "status", "VmRSS:") as f64 / 1024.0
}

/// utime + stime of a process, all its threads, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    #[allow(unsafe_code)]
    // SAFETY: sysconf(3) reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

pub(crate) fn pin(pid: u32, cpu: u32) {
    let ok = Command::new("taskset")
        .args(["-a", "-c", "-p", &cpu.to_string(), &pid.to_string()])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "taskset could not pin {pid} to CPU {cpu}");
}

/// wrk's Lua: POST the body, count answers that are not `allowed: true`.
pub(crate) const WRK_SCRIPT: &str = r#"
local f = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) denied = 0 end
function response(status, headers, body)
  if status == 200 and not string.find(body, '"allowed":true', 1, true) then
    denied = denied + 1
  end
end
function done(summary, latency, requests)
  local d = 0
  for _, t in ipairs(threads) do d = d + t:get("denied") end
  io.write(string.format("RESULT %d %d %d %d %d %.1f %.1f %.1f %.1f\n",
    summary.requests, d, summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write,
    summary.errors.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"#;

/// The bytes of the answer to one post of `body`, and of its base64 patch.
pub(crate) fn answer(port: u16, body: &Path) -> (usize, String) {
    let out = Command::new("curl")
        .args([
            "-sk",
            "--fail",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
        ])
        .arg(format!("@{}", body.display()))
        .arg(format!("https://127.0.0.1:{port}/mutate"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl: {out:?}");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let patch = answer["response"]["patch"].as_str().unwrap_or_default();
    (out.stdout.len(), patch.to_owned())
}

pub(crate) struct Run {
    pub(crate) rate: f64,
    pub(crate) cpu_us: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) denied: u64,
    pub(crate) errors: u64,
    pub(crate) rss: f64,
}

/// `wrk` on CPU 1 against `port` for SECONDS with `conns` connections. With
/// `BENCH_PERF=<file>`, the server is also sampled by `perf record` (cpu-clock,
/// call graphs) into `<file>-<pid>-<row>`; `BENCH_PERF_ROW=<row>` (`seed-8`,
/// `20 refs-8 paced`, ..., or several joined by `,`) samples those rows only.
pub(crate) fn wrk(port: u16, pid: u32, body: &Path, script: &Path, conns: usize, row: &str) -> Run {
    let sampled = std::env::var("BENCH_PERF_ROW").map_or(true, |r| r.split(',').any(|r| r == row));
    let perf = std::env::var("BENCH_PERF")
        .ok()
        .filter(|_| sampled)
        .map(|f| {
            Command::new("perf")
                .args([
                    "record",
                    "-q",
                    "-e",
                    "cpu-clock",
                    "-F",
                    "999",
                    "--call-graph",
                    "dwarf,16384",
                    "-p",
                    &pid.to_string(),
                    "-o",
                ])
                .arg(format!("{f}-{pid}-{}", row.replace(' ', "-")))
                .args(["--", "sleep", &SECONDS.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("perf")
        });
    let cpu0 = cpu_seconds(pid);
    // On a worker of its own: the auditing proxy in front of the IAM moto
    // (tests/support/iam.rs) runs in this process.
    let out = tokio::task::block_in_place(|| {
        Command::new("taskset")
            .args([
                "-c",
                "1",
                "wrk",
                "-t1",
                &format!("-c{conns}"),
                &format!("-d{SECONDS}s"),
                "-s",
            ])
            .arg(script)
            .arg(format!("https://127.0.0.1:{port}/mutate"))
            .env("BENCH_BODY", body)
            .output()
    })
    .expect("wrk (apt-get install wrk)");
    let cpu = cpu_seconds(pid) - cpu0;
    if let Some(mut p) = perf {
        let _ = p.wait();
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| panic!("wrk: {text}{}", String::from_utf8_lossy(&out.stderr)));
    let v: Vec<f64> = line[7..].split(' ').map(|x| x.parse().unwrap()).collect();
    Run {
        rate: v[0] / SECONDS as f64,
        cpu_us: cpu * 1e6 / v[0],
        p50_us: v[5],
        p99_us: v[7],
        denied: v[1] as u64,
        errors: (v[2] + v[3] + v[4]) as u64,
        rss: rss_mib(pid),
    }
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

/// Pod creations through the API server: (p50 ms, p99 ms, failures).
pub(crate) async fn create_pods(
    client: &kube::Client,
    ns: &str,
    refs: serde_json::Value,
    n: usize,
    clients: usize,
) -> (f64, f64, usize) {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let results: Vec<(Duration, bool)> = futures::stream::iter(0..n)
        .map(|_| {
            let api = api.clone();
            let p: Pod = serde_json::from_value(json!({
                "metadata": {"generateName": "e2e-", "labels": {"app": "e2e"}, "annotations": refs.clone()},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
            }))
            .unwrap();
            async move {
                let t = Instant::now();
                let ok = api.create(&PostParams::default(), &p).await.is_ok();
                (t.elapsed(), ok)
            }
        })
        .buffer_unordered(clients)
        .collect()
        .await;
    let mut lat: Vec<Duration> = results.iter().map(|r| r.0).collect();
    lat.sort();
    let failures = results.iter().filter(|r| !r.1).count();
    (percentile(&lat, 0.5), percentile(&lat, 0.99), failures)
}
