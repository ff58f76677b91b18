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
mod cluster;
pub mod faults;
pub mod iam;
pub mod injector;
pub mod install;
pub mod node;
mod process;
mod servers;
mod start;

pub use cluster::*;
pub use process::*;
use process::{SPAWNER, SpawnRequest, spawn_here, wait_for};
pub use servers::*;
use start::{kubeconfig, start, write};

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
