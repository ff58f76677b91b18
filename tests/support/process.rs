//! The processes the tests start: spawned from the test bed's thread with
//! `PR_SET_PDEATHSIG` so that they die with the test process, their output in
//! `<dir>/logs/<name>.log`; their pids, ports and signals.

use super::*;

/// The pid of the test bed's child process `name` (e.g. "kube-apiserver",
/// "etcd"), for benchmarks that read its CPU time from `/proc`.
pub fn child_pid(name: &str) -> Option<u32> {
    CHILDREN
        .lock()
        .ok()?
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, pid)| *pid)
}

/// A loopback port no listener holds, for a process about to listen on it.
///
/// Taken below the kernel's ephemeral range: a port from that range (what
/// binding port 0 gives) can be handed to any outgoing connection on the
/// machine between this check and the process's own bind (seen in CI:
/// kube-controller-manager's `bind: address already in use`). Below it, only
/// a listener can take it, and each port is offered once per test process,
/// whichever thread asks.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    const FIRST: u32 = 10_000;
    if low <= FIRST + 1000 {
        // An unusual range: the kernel's choice, as before.
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
    }
    let span = low - FIRST;
    // Test binaries run one after another; each starts at its own offset
    // (in u64: a pid times the step can pass u32 where pid_max is 4194304).
    let start = (u64::from(std::process::id()) * 7919 % u64::from(span)) as u32;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = (FIRST + offset) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {FIRST} and {low}");
}

/// Spawns a process whose output goes to `<dir>/logs/<name>.log` and which is
/// killed when this process dies.
pub fn spawn(dir: &Path, name: &str, program: &Path, args: &[String]) -> Child {
    spawn_env(dir, name, program, args, &[])
}

/// A request to the test bed thread to start a process.
pub(super) struct SpawnRequest {
    pub(super) dir: PathBuf,
    pub(super) name: String,
    pub(super) program: PathBuf,
    pub(super) args: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    pub(super) reply: std::sync::mpsc::Sender<Child>,
}

pub(super) static SPAWNER: Mutex<Option<std::sync::mpsc::Sender<SpawnRequest>>> = Mutex::new(None);

/// [`spawn`] with extra environment variables (`("!NAME", "")` removes
/// `NAME` from what the process inherits). Once the test bed runs, the
/// process is started by the test bed thread, since `PR_SET_PDEATHSIG` fires
/// when the spawning *thread* ends, and a test's thread ends with the test.
pub fn spawn_env(
    dir: &Path,
    name: &str,
    program: &Path,
    args: &[String],
    env: &[(&str, &str)],
) -> Child {
    let spawner = SPAWNER.lock().unwrap().clone();
    if let Some(tx) = spawner
        && std::thread::current().name() != Some("testbed")
    {
        let (reply, rx) = std::sync::mpsc::channel();
        tx.send(SpawnRequest {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            program: program.to_path_buf(),
            args: args.to_vec(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            reply,
        })
        .expect("the test bed thread is running");
        return rx.recv().expect("the test bed thread answers");
    }
    spawn_here(dir, name, program, args, env)
}

pub(super) fn spawn_here(
    dir: &Path,
    name: &str,
    program: &Path,
    args: &[String],
    env: &[(&str, &str)],
) -> Child {
    let log = fs::File::create(dir.join("logs").join(format!("{name}.log"))).unwrap();
    let mut cmd = Command::new(program);
    for (k, v) in env {
        match k.strip_prefix('!') {
            Some(k) => cmd.env_remove(k),
            None => cmd.env(k, v),
        };
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    CHILDREN
        .lock()
        .unwrap()
        .push((name.to_string(), child.id()));
    child
}

/// The last 30 lines of the log of the process `name` started in `dir`.
pub fn log_tail(dir: &Path, name: &str) -> String {
    let text = fs::read_to_string(dir.join("logs").join(format!("{name}.log"))).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

pub(super) fn wait_for(
    dir: &Path,
    name: &str,
    child: &mut Child,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) {
    let start = Instant::now();
    loop {
        if ready() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{name} exited ({status}) before it was ready:\n{}",
                log_tail(dir, name)
            );
        }
        if start.elapsed() > timeout {
            panic!(
                "{name} was not ready within {timeout:?}:\n{}",
                log_tail(dir, name)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `sig` to the process `pid` (one the test started).
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid, sig) };
}
