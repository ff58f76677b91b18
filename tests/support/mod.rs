//! The test bed: a real control plane (etcd, kube-apiserver,
//! kube-controller-manager) and moto as the Secrets Manager endpoint, started
//! once per test binary on free loopback ports in a temporary folder.
//!
//! `tests/run` builds the binaries and the moto virtualenv and says where they
//! are (`SM_INJECTOR_CLUSTER_BIN`, `SM_INJECTOR_MOTO_SERVER`). A missing
//! component fails the test that needs it, loudly.
//!
//! Processes are spawned from a thread that lives as long as the test process,
//! with `PR_SET_PDEATHSIG`, so they die with it even on a crash; an `atexit`
//! hook stops them and removes the folder on a normal exit (also after failed
//! tests, since the harness exits through `exit`).

// Signals and process control for the processes the tests start.
#![allow(unsafe_code)]
#![allow(dead_code)]

pub mod balancer;
pub mod chart;
pub mod faults;
pub mod iam;
pub mod injector;
pub mod install;
pub mod node;

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use sm_injector::certs::{Ca, Pem};

pub const HOW_TO_RUN: &str = "run the integration tests with ./tests/run, which builds the cluster binaries and the moto virtualenv first";

pub struct TestBed {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub apiserver: String,
    pub moto: String,
    /// etcd's client port (its `/metrics` is served there too).
    pub etcd_port: u16,
    /// The cluster CA (PEM); it also signs the webhook serving certificates of tests.
    pub ca_pem: String,
    ca: Mutex<Ca>,
    /// The CA of the client certificate the API server presents to every
    /// webhook (its AdmissionConfiguration's kubeConfigFile), for
    /// `serve --client-ca-file`.
    pub webhook_client_ca: PathBuf,
}

/// The test bed, or why it could not start (so that every test fails with
/// the same reason instead of starting it again).
static BED: OnceLock<Result<TestBed, String>> = OnceLock::new();
static CHILDREN: Mutex<Vec<(String, u32)>> = Mutex::new(Vec::new());
static DIR: OnceLock<PathBuf> = OnceLock::new();
static NODE: OnceLock<Result<node::Node, String>> = OnceLock::new();

extern "C" fn cleanup() {
    let children = CHILDREN.lock().map(|c| c.clone()).unwrap_or_default();
    // The node first: its kubelet (which would restart what is stopped),
    // then its containers, mounts and bridge, while containerd still runs.
    if let Some(dir) = DIR.get().map(|d| d.join("node"))
        && dir.is_dir()
    {
        for (_, pid) in children.iter().filter(|(n, _)| n == "kubelet") {
            let mut status = 0;
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
            unsafe { libc::waitpid(*pid as i32, &mut status, 0) };
        }
        node::stop(&dir);
    }
    // Stop in reverse order of start: controller-manager, apiserver, etcd.
    for (_, pid) in children.iter().rev() {
        unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for (_, pid) in children.iter().rev() {
        loop {
            let mut status = 0;
            let r = unsafe { libc::waitpid(*pid as i32, &mut status, libc::WNOHANG) };
            if r != 0 {
                break;
            }
            if Instant::now() > deadline {
                unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
                unsafe { libc::waitpid(*pid as i32, &mut status, 0) };
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Some(dir) = DIR.get()
        && std::env::var_os("SM_INJECTOR_KEEP_TESTBED").is_none()
    {
        let _ = fs::remove_dir_all(dir);
    }
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The path a test component's variable names; a failure when unset or
/// missing (never a skip).
pub fn component(var: &str, what: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) if Path::new(&p).exists() => PathBuf::from(p),
        Some(p) => panic!(
            "{var}={} does not exist: {what} is missing{}; {HOW_TO_RUN}",
            Path::new(&p).display(),
            if ci() {
                " (CI=true: a missing component is a failure)"
            } else {
                ""
            }
        ),
        None => panic!("{var} is not set: {what} is missing; {HOW_TO_RUN}"),
    }
}

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

/// `examples/noop_webhook` of the same profile as the running bench (the
/// minimal no-op webhook the benchmarks compare against).
pub fn noop_webhook_binary() -> PathBuf {
    // target/release/deps/<bench>-... -> target/release/examples/noop_webhook
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples/noop_webhook");
    assert!(
        p.is_file(),
        "{} is missing: cargo build --release --example noop_webhook",
        p.display()
    );
    p
}

/// Starts the minimal no-op webhook on 127.0.0.1 with the bed's serving
/// certificate (written into `dir`); its port and pid.
pub fn start_noop_webhook(bed: &TestBed, dir: &Path) -> (u16, u32) {
    start_noop_webhook_answering(bed, dir, None)
}

/// [`start_noop_webhook`], answering the base64 patch in `patch` when given.
pub fn start_noop_webhook_answering(bed: &TestBed, dir: &Path, patch: Option<&Path>) -> (u16, u32) {
    let pem = bed.serving_cert();
    fs::write(dir.join("tls.crt"), &pem.cert).unwrap();
    fs::write(dir.join("tls.key"), &pem.key).unwrap();
    let port = free_port();
    let mut args = vec![
        format!("127.0.0.1:{port}"),
        dir.join("tls.crt").display().to_string(),
        dir.join("tls.key").display().to_string(),
    ];
    args.extend(patch.map(|p| p.display().to_string()));
    let name = format!("noop-webhook-{port}");
    let noop = spawn(&bed.dir, &name, &noop_webhook_binary(), &args);
    let pid = noop.id();
    // Stopped at exit with the other children (its pid is in CHILDREN).
    std::mem::forget(noop);
    (port, pid)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Spawns a process whose output goes to `<dir>/logs/<name>.log` and which is
/// killed when this process dies.
pub fn spawn(dir: &Path, name: &str, program: &Path, args: &[String]) -> Child {
    spawn_env(dir, name, program, args, &[])
}

/// A request to the test bed thread to start a process.
struct SpawnRequest {
    dir: PathBuf,
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    reply: std::sync::mpsc::Sender<Child>,
}

static SPAWNER: Mutex<Option<std::sync::mpsc::Sender<SpawnRequest>>> = Mutex::new(None);

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

fn spawn_here(
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

fn wait_for(
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

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn kubeconfig(server: &str, ca: &Path, cert: &Path, key: &Path, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: {user}\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: test\n  context: {{cluster: test, user: {user}, namespace: default}}\ncurrent-context: test\n",
        ca.display(),
        cert.display(),
        key.display()
    )
}

/// Removes test bed folders of earlier runs whose process is gone (a run killed
/// with SIGKILL cannot clean up after itself).
fn remove_stale_dirs(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(pid) = name
            .strip_prefix("sm-injector-testbed-")
            .and_then(|p| p.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
            && unsafe { libc::kill(pid, 0) } != 0
        {
            if e.path().join("node").is_dir() {
                node::stop(&e.path().join("node"));
            }
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn start() -> TestBed {
    let bin = component(
        "SM_INJECTOR_CLUSTER_BIN",
        "the folder with etcd, kube-apiserver and kube-controller-manager (tests/cluster/build.sh)",
    );
    let moto_server = component(
        "SM_INJECTOR_MOTO_SERVER",
        "moto_server (tests/moto/setup.sh)",
    );
    for b in ["etcd", "kube-apiserver", "kube-controller-manager"] {
        component_file(&bin.join(b));
    }

    let base = std::env::temp_dir();
    remove_stale_dirs(&base);
    let dir = base.join(format!(
        "sm-injector-testbed-{}-{}",
        std::process::id(),
        free_port()
    ));
    fs::create_dir_all(dir.join("logs")).unwrap();
    fs::create_dir_all(dir.join("pki")).unwrap();
    DIR.set(dir.clone()).ok();
    unsafe { libc::atexit(cleanup) };

    // Certificates: a CA, the apiserver's serving certificate, client
    // certificates for the admin (system:masters) and the controller-manager,
    // and the service-account signing key.
    let ca = Ca::new("sm-injector-testbed-ca", Duration::from_secs(365 * 86400)).unwrap();
    let pki = dir.join("pki");
    let put = |name: &str, pem: &Pem| {
        write(&pki.join(format!("{name}.crt")), &pem.cert);
        write(&pki.join(format!("{name}.key")), &pem.key);
    };
    write(&pki.join("ca.crt"), &ca.cert_pem());
    put(
        "apiserver",
        &ca.server("kube-apiserver", &["127.0.0.1", "localhost"])
            .unwrap(),
    );
    put("admin", &ca.client("admin", &["system:masters"]).unwrap());
    // The API server's identity towards the node's kubelet (logs, exec).
    put(
        "kubelet-client",
        &ca.client("kube-apiserver-kubelet-client", &["system:masters"])
            .unwrap(),
    );
    put(
        "kcm",
        &ca.client("system:kube-controller-manager", &["system:masters"])
            .unwrap(),
    );
    // The API server authenticates to webhooks with a certificate of its own
    // CA, so that a webhook can require it (serve --client-ca-file).
    let webhook_ca = Ca::new(
        "sm-injector-testbed-webhook-client-ca",
        Duration::from_secs(7 * 86400),
    )
    .unwrap();
    write(&pki.join("webhook-client-ca.crt"), &webhook_ca.cert_pem());
    put(
        "webhook-client",
        &webhook_ca
            .client("kube-apiserver-webhook-client", &[])
            .unwrap(),
    );
    write(
        &pki.join("webhook-kubeconfig.yaml"),
        &format!(
            "apiVersion: v1\nkind: Config\nusers:\n- name: '*'\n  user:\n    client-certificate: {}\n    client-key: {}\n",
            pki.join("webhook-client.crt").display(),
            pki.join("webhook-client.key").display()
        ),
    );
    let webhook_admission = |plugin: &str| {
        format!(
            "- name: {plugin}\n  configuration:\n    apiVersion: apiserver.config.k8s.io/v1\n    kind: WebhookAdmissionConfiguration\n    kubeConfigFile: {}\n",
            pki.join("webhook-kubeconfig.yaml").display()
        )
    };
    write(
        &pki.join("admission.yaml"),
        &format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n{}{}",
            webhook_admission("MutatingAdmissionWebhook"),
            webhook_admission("ValidatingAdmissionWebhook")
        ),
    );
    let sa = rcgen::KeyPair::generate().unwrap();
    write(&pki.join("sa.key"), &sa.serialize_pem());
    write(&pki.join("sa.pub"), &sa.public_key_pem());

    let (ep, pp, ap, kp, mp) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let p = |f: &str| pki.join(f).display().to_string();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut etcd = spawn(
        &dir,
        "etcd",
        &bin.join("etcd"),
        &[
            "--name=default".into(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls=http://127.0.0.1:{ep}"),
            format!("--advertise-client-urls=http://127.0.0.1:{ep}"),
            format!("--listen-peer-urls=http://127.0.0.1:{pp}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{pp}"),
            format!("--initial-cluster=default=http://127.0.0.1:{pp}"),
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ],
    );
    let mut moto = spawn(
        &dir,
        "moto",
        &moto_server,
        &["-H".into(), "127.0.0.1".into(), "-p".into(), mp.to_string()],
    );
    wait_for(&dir, "etcd", &mut etcd, Duration::from_secs(30), || {
        rt.block_on(injector::http_get(ep, "/health")).0 == 200
    });

    let apiserver = format!("https://127.0.0.1:{ap}");
    let mut kas = spawn(
        &dir,
        "kube-apiserver",
        &bin.join("kube-apiserver"),
        &[
            format!("--etcd-servers=http://127.0.0.1:{ep}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={ap}"),
            format!("--cert-dir={}", dir.join("apiserver").display()),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--admission-control-config-file={}", p("admission.yaml")),
            format!("--service-account-issuer={apiserver}"),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--authorization-mode=Node,RBAC".into(),
            format!("--kubelet-client-certificate={}", p("kubelet-client.crt")),
            format!("--kubelet-client-key={}", p("kubelet-client.key")),
            "--kubelet-preferred-address-types=InternalIP".into(),
            "--allow-privileged=true".into(),
            "--enable-priority-and-fairness=false".into(),
            "--v=1".into(),
        ],
    );
    let kubeconfig_path = dir.join("admin.kubeconfig");
    write(
        &kubeconfig_path,
        &kubeconfig(
            &apiserver,
            &pki.join("ca.crt"),
            &pki.join("admin.crt"),
            &pki.join("admin.key"),
            "admin",
        ),
    );
    let kcm_kubeconfig = dir.join("kcm.kubeconfig");
    write(
        &kcm_kubeconfig,
        &kubeconfig(
            &apiserver,
            &pki.join("ca.crt"),
            &pki.join("kcm.crt"),
            &pki.join("kcm.key"),
            "kcm",
        ),
    );

    let kc = kubeconfig_path.clone();
    let readyz = || {
        rt.block_on(async {
            let Ok(client) = client_for(&kc).await else {
                return false;
            };
            let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
            client
                .request_text(req)
                .await
                .is_ok_and(|t| t.trim() == "ok")
        })
    };
    wait_for(
        &dir,
        "kube-apiserver",
        &mut kas,
        Duration::from_secs(90),
        readyz,
    );

    let mut kcm = spawn(
        &dir,
        "kube-controller-manager",
        &bin.join("kube-controller-manager"),
        &[
            format!("--kubeconfig={}", kcm_kubeconfig.display()),
            format!("--authentication-kubeconfig={}", kcm_kubeconfig.display()),
            format!("--authorization-kubeconfig={}", kcm_kubeconfig.display()),
            "--controllers=deployment,replicaset,garbagecollector,serviceaccount,serviceaccount-token,namespace,clusterrole-aggregation,nodelifecycle,root-ca-cert-publisher".into(),
            format!("--service-account-private-key-file={}", p("sa.key")),
            format!("--root-ca-file={}", p("ca.crt")),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={kp}"),
            "--v=1".into(),
        ],
    );
    // The controller-manager is ready for tests once it has made the default
    // ServiceAccount, which pods need.
    wait_for(
        &dir,
        "kube-controller-manager",
        &mut kcm,
        Duration::from_secs(90),
        || {
            rt.block_on(async {
                let Ok(client) = client_for(&kc).await else {
                    return false;
                };
                Api::<ServiceAccount>::namespaced(client, "default")
                    .get_opt("default")
                    .await
                    .is_ok_and(|s| s.is_some())
            })
        },
    );
    wait_for(&dir, "moto", &mut moto, Duration::from_secs(30), || {
        rt.block_on(injector::http_get(mp, "/moto-api/")).0 == 200
    });
    // The children stay owned by this thread's caller; their pids are in CHILDREN.
    std::mem::forget((etcd, kas, kcm, moto));

    TestBed {
        dir,
        kubeconfig: kubeconfig_path,
        apiserver,
        moto: format!("http://127.0.0.1:{mp}"),
        etcd_port: ep,
        ca_pem: ca.cert_pem(),
        ca: Mutex::new(ca),
        webhook_client_ca: pki.join("webhook-client-ca.crt"),
    }
}

pub fn component_file(p: &Path) {
    if !p.is_file() {
        panic!("{} is missing; {HOW_TO_RUN}", p.display());
    }
}

impl TestBed {
    /// The node (containerd, kubelet, kube-scheduler), started on first use:
    /// pods run only in test binaries that ask for it.
    pub fn node(&self) -> &node::Node {
        let node = NODE.get_or_init(|| {
            // Its own thread: it blocks, and may be asked from async code.
            std::thread::scope(|s| s.spawn(|| node::start(self)).join()).map_err(panic_text)
        });
        match node {
            Ok(n) => n,
            Err(e) => panic!("the test node did not start: {e}"),
        }
    }
}

/// What a caught panic said.
fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// The test bed of this test binary, started on first use.
pub fn testbed() -> &'static TestBed {
    let bed = BED.get_or_init(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        // PR_SET_PDEATHSIG fires when the *thread* that spawned a child exits,
        // so children are spawned from a thread that never does.
        let (tx, rx) = std::sync::mpsc::channel();
        let (spawn_tx, spawn_rx) = std::sync::mpsc::channel::<SpawnRequest>();
        *SPAWNER.lock().unwrap() = Some(spawn_tx);
        std::thread::Builder::new()
            .name("testbed".into())
            .spawn(move || {
                let bed = std::panic::catch_unwind(start);
                let _ = tx.send(bed);
                // Serve spawn requests for the rest of the process's life.
                while let Ok(r) = spawn_rx.recv() {
                    let env: Vec<(&str, &str)> = r
                        .env
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    let _ = r
                        .reply
                        .send(spawn_here(&r.dir, &r.name, &r.program, &r.args, &env));
                }
                loop {
                    std::thread::park();
                }
            })
            .unwrap();
        rx.recv().unwrap().map_err(panic_text)
    });
    match bed {
        Ok(bed) => bed,
        Err(e) => panic!("the test bed did not start: {e}"),
    }
}

pub async fn client_for(kubeconfig: &Path) -> Result<kube::Client, kube::Error> {
    let kc = Kubeconfig::read_from(kubeconfig).map_err(kube::Error::InferKubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(kube::Error::InferKubeconfig)?;
    kube::Client::try_from(config)
}

impl TestBed {
    /// An admin client (system:masters), for the current Tokio runtime.
    pub async fn client(&self) -> kube::Client {
        client_for(&self.kubeconfig).await.expect("admin client")
    }

    /// The real AWS SDK client pointed at moto, with dummy credentials.
    pub async fn aws_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.moto)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
                "testing", "testing", None, None, "testbed",
            ))
            .load()
            .await
    }

    pub async fn aws(&self) -> aws_sdk_secretsmanager::Client {
        aws_sdk_secretsmanager::Client::new(&self.aws_config().await)
    }

    /// Creates a secret with a SecretString in moto; returns its ARN.
    pub async fn put_secret(&self, name: &str, value: &str) -> String {
        let out = self
            .aws()
            .await
            .create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateSecret {name}: {e:?}"));
        out.arn().unwrap().to_string()
    }

    /// `PutSecretValue`: a new AWSCURRENT version; returns its id.
    pub async fn rotate(&self, name: &str, value: &str) -> String {
        self.aws()
            .await
            .put_secret_value()
            .secret_id(name)
            .secret_string(value)
            .send()
            .await
            .unwrap_or_else(|e| panic!("PutSecretValue {name}: {e:?}"))
            .version_id()
            .unwrap()
            .to_string()
    }

    /// A serving certificate for 127.0.0.1 signed by the cluster CA.
    pub fn serving_cert(&self) -> Pem {
        self.ca
            .lock()
            .unwrap()
            .server("webhook", &["127.0.0.1", "localhost", "0.0.0.0"])
            .unwrap()
    }

    pub fn ca_bundle_b64(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&self.ca_pem)
    }

    /// Runs kubectl with `args` (and `stdin`): its stdout, or its stderr on failure.
    pub fn kubectl_run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        use std::io::Write;
        let mut child = self
            .kubectl()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into())
        }
    }

    /// A kubectl command against the test cluster.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }
}

/// A fresh namespace `<prefix>-<n>` with these labels, once its default
/// ServiceAccount exists (pods need it).
pub async fn namespace(client: &kube::Client, prefix: &str, labels: &[(&str, &str)]) -> String {
    namespace_with(client, prefix, labels, &[]).await
}

pub async fn namespace_with(
    client: &kube::Client,
    prefix: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "{prefix}-{}-{}",
        std::process::id() % 10000,
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let map = |kv: &[(&str, &str)]| -> Option<BTreeMap<String, String>> {
        (!kv.is_empty()).then(|| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
    };
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: map(labels),
            annotations: map(annotations),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), &name);
    eventually(
        Duration::from_secs(30),
        "the default ServiceAccount",
        || async { sas.get_opt("default").await.ok().flatten() },
    )
    .await;
    name
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a dry-run creation of `pod` in `ns` comes back with env
/// injected into its first container: the webhook just registered is called.
pub async fn until_injected(client: &kube::Client, ns: &str, pod: &Pod) {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    eventually(
        Duration::from_secs(30),
        "the webhook to take effect",
        || async {
            let p = api.create(&dry, pod).await.ok()?;
            p.spec?.containers.first()?.env.is_some().then_some(())
        },
    )
    .await
}

/// A webhook that labels every pod `testbed-mutated=yes`.
async fn marker(
    body: axum::body::Bytes,
) -> axum::Json<kube::core::admission::AdmissionReview<kube::core::DynamicObject>> {
    use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
    let review: AdmissionReview<k8s_openapi::api::core::v1::Pod> =
        serde_json::from_slice(&body).unwrap();
    let req: AdmissionRequest<_> = review.try_into().unwrap();
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "add", "path": "/metadata/labels", "value": {"testbed-mutated": "yes"}}
    ]))
    .unwrap();
    axum::Json(
        AdmissionResponse::from(&req)
            .with_patch(patch)
            .unwrap()
            .into_review(),
    )
}

/// Serves the marker webhook over TLS on loopback and registers it as the
/// MutatingWebhookConfiguration `name` for pods in `namespaces`.
pub async fn start_marker(bed: &TestBed, client: &kube::Client, name: &str, namespaces: &[&str]) {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let pem = bed.serving_cert();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(pem.cert.into(), pem.key.into())
        .await
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let app = axum::Router::new().route("/mutate", axum::routing::post(marker));
    tokio::spawn(async move {
        axum_server::from_tcp_rustls(listener, tls)
            .unwrap()
            .serve(app.into_make_service())
            .await
    });
    let config: MutatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "marker.testbed.sm-injector.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 10,
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate"), "caBundle": bed.ca_bundle_b64()},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}]}
        }]
    }))
    .unwrap();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
}

/// `sm-injector serve` (the binary of this package) as its own process against
/// the test bed, configured as in a cluster: KUBECONFIG, and the AWS chain with
/// AWS_ENDPOINT_URL_SECRETS_MANAGER pointing at moto.
pub struct ServeProcess {
    pub port: u16,
    pub probe: u16,
    pub pid: u32,
}

pub async fn serve_process(
    bed: &TestBed,
    binary: &Path,
    name: &str,
    extra_args: &[&str],
) -> ServeProcess {
    serve_process_as(bed, binary, name, &bed.kubeconfig, extra_args).await
}

/// [`serve_process`] with the Kubernetes identity of `kubeconfig`.
pub async fn serve_process_as(
    bed: &TestBed,
    binary: &Path,
    name: &str,
    kubeconfig: &Path,
    extra_args: &[&str],
) -> ServeProcess {
    serve_process_at(bed, binary, name, kubeconfig, extra_args, &bed.moto).await
}

/// [`serve_process_as`] with Secrets Manager at `aws_endpoint`.
pub async fn serve_process_at(
    bed: &TestBed,
    binary: &Path,
    name: &str,
    kubeconfig: &Path,
    extra_args: &[&str],
    aws_endpoint: &str,
) -> ServeProcess {
    serve_process_env(bed, binary, name, kubeconfig, extra_args, aws_endpoint, &[]).await
}

/// Starts `sm-injector serve` as its own process like [`serve_process_at`],
/// with more environment variables (`LD_PRELOAD`, ...), and does not wait.
pub fn start_serve_process(
    bed: &TestBed,
    binary: &Path,
    name: &str,
    kubeconfig: &Path,
    extra_args: &[&str],
    aws_endpoint: &str,
    extra_env: &[(&str, &str)],
) -> ServeProcess {
    let dir = bed.dir.join(name);
    fs::create_dir_all(&dir).unwrap();
    let pem = bed.serving_cert();
    write(&dir.join("tls.crt"), &pem.cert);
    write(&dir.join("tls.key"), &pem.key);
    let (port, probe) = (free_port(), free_port());
    let kubeconfig = kubeconfig.display().to_string();
    let mut args = vec![
        "serve".to_string(),
        format!("--listen=127.0.0.1:{port}"),
        format!("--probe-listen=127.0.0.1:{probe}"),
        format!("--tls-cert={}", dir.join("tls.crt").display()),
        format!("--tls-key={}", dir.join("tls.key").display()),
    ];
    args.extend(extra_args.iter().map(|a| a.to_string()));
    let mut env = vec![
        ("KUBECONFIG", kubeconfig.as_str()),
        ("AWS_ENDPOINT_URL_SECRETS_MANAGER", aws_endpoint),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("RUST_LOG", "warn"),
    ];
    env.extend_from_slice(extra_env);
    let child = spawn_env(&bed.dir, name, binary, &args, &env);
    let pid = child.id();
    // Stopped at exit with the other children (its pid is in CHILDREN).
    std::mem::forget(child);
    ServeProcess { port, probe, pid }
}

/// [`start_serve_process`], then waits until it is ready (45 s at most).
pub async fn serve_process_env(
    bed: &TestBed,
    binary: &Path,
    name: &str,
    kubeconfig: &Path,
    extra_args: &[&str],
    aws_endpoint: &str,
    extra_env: &[(&str, &str)],
) -> ServeProcess {
    let server = start_serve_process(
        bed,
        binary,
        name,
        kubeconfig,
        extra_args,
        aws_endpoint,
        extra_env,
    );
    let probe = server.probe;
    let start = std::time::Instant::now();
    loop {
        let (status, body) = injector::http_get(probe, "/readyz").await;
        if status == 200 {
            break;
        }
        if start.elapsed() > Duration::from_secs(45) {
            panic!(
                "sm-injector {name} not ready after 45 s (/readyz: {status} {body}); its log:\n{}",
                log_tail(&bed.dir, name)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server
}

/// Registers a URL MutatingWebhookConfiguration `name` for sm-injector on
/// 127.0.0.1:`port`, for pods in `namespaces` labelled for injection.
pub async fn start_url_webhook(
    bed: &TestBed,
    client: &kube::Client,
    name: &str,
    port: u16,
    namespaces: &[&str],
) {
    register_webhook(bed, client, name, &format!("127.0.0.1:{port}"), namespaces).await
}

/// [`start_url_webhook`] at `host_port`. (The API server would speak HTTP/2
/// to a loopback URL webhook that offered it; sm-injector offers HTTP/1.1
/// only, as the API server speaks to Service webhooks.)
pub async fn register_webhook(
    bed: &TestBed,
    client: &kube::Client,
    name: &str,
    host_port: &str,
    namespaces: &[&str],
) {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let config: MutatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "pods.sm-injector.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "NoneOnDryRun",
            "failurePolicy": "Fail",
            "reinvocationPolicy": "IfNeeded",
            "timeoutSeconds": 10,
            "clientConfig": {"url": format!("https://{host_port}/mutate"), "caBundle": bed.ca_bundle_b64()},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            // As shipped (manifests/mutatingwebhookconfiguration.yaml).
            "matchConditions": [{"name": "has-sm-injector-annotations", "expression":
                "has(object.metadata.annotations) && object.metadata.annotations.exists(k, k.startsWith('sm-injector.io/'))"}],
            "namespaceSelector": {
                "matchLabels": {"sm-injector.io/inject": "enabled"},
                "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}]
            }
        }]
    }))
    .unwrap();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
}

/// Writes `secret`'s version `version_id` (`text`, a JSON object) into its
/// AWSCURRENT keys-form backing Secret in `ns`, as the refresher's leader
/// does (the same write): for tests that play a leader which wrote a version
/// and died before anything else.
pub async fn leader_write(
    client: &kube::Client,
    ns: &str,
    secret: &str,
    arn: &str,
    version_id: &str,
    text: &str,
) -> sm_injector::store::Written {
    use sm_injector::backing::{self, Form};
    use sm_injector::reference::Version;
    let value = sm_injector::secret::SecretValue::new(
        arn.to_string(),
        secret.to_string(),
        version_id.to_string(),
        sm_injector::secret::Payload::String(text.to_string()),
    );
    let name = backing::name(secret, &Version::current(), Form::Keys);
    let obj = backing::object(ns, &name, &value, &Version::current(), Form::Keys, "now").unwrap();
    sm_injector::store::write_backing(
        &Api::namespaced(client.clone(), ns),
        &obj,
        sm_injector::store::rule::Writer::Leader,
        &|| true,
    )
    .await
    .unwrap()
}

/// Sends `sig` to the process `pid` (one the test started).
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid, sig) };
}

/// `kubectl create -f -` with a pod: (success, stdout, stderr). kubectl prints
/// admission warnings on stderr as `Warning: ...`. Run without blocking the
/// runtime, which also serves the in-process webhook.
pub async fn kubectl_create(
    bed: &TestBed,
    ns: &str,
    p: &Pod,
    extra: &[&str],
) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::from(bed.kubectl())
        .args(["-n", ns, "create", "-f", "-"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(serde_json::to_string(p).unwrap().as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}
