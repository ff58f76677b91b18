//! The test bed's node: containerd (Debian's package) with runc, a kubelet and
//! a kube-scheduler built from the same Kubernetes module set as the API
//! server, and a bridge pod network from Debian's CNI plugins. Pods run, in
//! containers of images assembled locally (`tests/node/images.sh`): no registry
//! is reached.
//!
//! Started on first use by [`super::TestBed::node`] (a test binary that runs
//! no pod starts none of it), in the test bed's folder, on loopback; stopped
//! with the test bed (`tests/node/stop.sh` removes the containers, mounts and
//! bridge it leaves).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use kube::api::Api;

use super::{TestBed, component, component_file, free_port, kubeconfig, spawn, wait_for, write};

/// The name the kubelet registers.
pub const NODE: &str = "sm-injector-node";
/// The image pods run: Debian's busybox-static, every applet in /bin.
pub const BUSYBOX: &str = "sm-injector.test/busybox:1";
/// The pod sandbox image (containerd's `sandbox_image`).
pub const PAUSE: &str = "sm-injector.test/pause:1";

pub struct Node {
    pub dir: PathBuf,
    pub containerd_socket: PathBuf,
}

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node")
}

/// `program` on the PATH, or a failure naming the package.
fn installed(program: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "{program} is missing (Debian's {package}); {}",
            super::HOW_TO_RUN
        )
    })
}

/// A bridge and subnet of this test bed's own, so that two test beds (the
/// demo and a test run) can have a node at once. The bridge's address is the
/// node's (the kubelet refuses a loopback one): the bridge is made here,
/// before the first pod, and the CNI bridge plugin takes it as it is.
fn network() -> (String, String, String) {
    let (a, b) = (200 + std::process::id() % 50, std::process::id() / 50 % 250);
    (
        format!("smi{}", std::process::id()),
        format!("10.{a}.{b}.0/24"),
        format!("10.{a}.{b}.1"),
    )
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("ip (Debian's iproute2) cannot run: {e}"),
    }
}

pub(super) fn start(bed: &TestBed) -> Node {
    let bin = component(
        "SM_INJECTOR_CLUSTER_BIN",
        "the folder with the cluster binaries (tests/cluster/build.sh)",
    );
    let images = component(
        "SM_INJECTOR_NODE_IMAGES",
        "the node's images (tests/node/images.sh)",
    );
    for b in ["kubelet", "kube-scheduler"] {
        component_file(&bin.join(b));
    }
    for f in ["pause.tar", "busybox.tar"] {
        component_file(&images.join(f));
    }
    let containerd = installed("containerd", "containerd");
    installed("runc", "runc");
    installed("ctr", "containerd");
    component_file(Path::new("/usr/lib/cni/bridge"));

    let dir = bed.dir.join("node");
    let ctd = dir.join("containerd");
    let cni = dir.join("cni");
    for d in [&ctd, &cni, &dir.join("kubelet"), &dir.join("pods")] {
        fs::create_dir_all(d).unwrap();
    }
    let socket = ctd.join("containerd.sock");
    write(
        &ctd.join("config.toml"),
        &format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  # This sandbox may not lower a process's oom_score_adj (the kubelet asks
  # -998 for the pod sandbox): kept at containerd's own, as rootless setups do.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
            root = ctd.join("root").display(),
            state = ctd.join("state").display(),
            socket = socket.display(),
            cni = cni.display(),
        ),
    );
    let (bridge, subnet, node_ip) = network();
    write(&dir.join("bridge"), &bridge);
    ip(&["link", "add", &bridge, "type", "bridge"]);
    ip(&["addr", "add", &format!("{node_ip}/24"), "dev", &bridge]);
    ip(&["link", "set", &bridge, "up"]);
    write(
        &cni.join("10-sm-injector-test.conflist"),
        &serde_json::json!({
            "cniVersion": "0.4.0", "name": "sm-injector-test",
            "plugins": [{
                "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                "hairpinMode": true,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                         "routes": [{"dst": "0.0.0.0/0"}],
                         "dataDir": dir.join("ipam").display().to_string()}
            }]
        })
        .to_string(),
    );
    let mut ctd_child = spawn(
        &bed.dir,
        "containerd",
        &containerd,
        &[format!("--config={}", ctd.join("config.toml").display())],
    );
    let ctr = |args: &[&str]| {
        Command::new("ctr")
            .arg("-a")
            .arg(&socket)
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    wait_for(
        &bed.dir,
        "containerd",
        &mut ctd_child,
        Duration::from_secs(30),
        || ctr(&["version"]),
    );
    for f in ["pause.tar", "busybox.tar"] {
        let path = images.join(f).display().to_string();
        assert!(
            ctr(&["images", "import", &path]),
            "ctr could not import {path}"
        );
    }
    std::mem::forget(ctd_child);

    // Identities: the kubelet as system:node:<NODE> (the Node authorizer), the
    // scheduler as system:kube-scheduler (its bootstrap role).
    let pki = bed.dir.join("pki");
    let (node_pem, scheduler_pem) = {
        let ca = bed.ca.lock().unwrap();
        (
            ca.client(&format!("system:node:{NODE}"), &["system:nodes"])
                .unwrap(),
            ca.client("system:kube-scheduler", &[]).unwrap(),
        )
    };
    for (name, pem) in [("node", &node_pem), ("scheduler", &scheduler_pem)] {
        write(&pki.join(format!("{name}.crt")), &pem.cert);
        write(&pki.join(format!("{name}.key")), &pem.key);
        write(
            &dir.join(format!("{name}.kubeconfig")),
            &kubeconfig(
                &bed.apiserver,
                &pki.join("ca.crt"),
                &pki.join(format!("{name}.crt")),
                &pki.join(format!("{name}.key")),
                name,
            ),
        );
    }

    let (port, healthz) = (free_port(), free_port());
    // Secret and ConfigMap volumes follow their objects within seconds
    // (syncFrequency); nothing is evicted or collected on this shared disk;
    // the API server's client certificate (system:masters) may read logs
    // and exec, nothing else reaches the kubelet's port.
    write(
        &dir.join("kubelet.yaml"),
        &format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {node_ip}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
containerRuntimeEndpoint: unix://{socket}
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
syncFrequency: 3s
fileCheckFrequency: 3s
nodeStatusUpdateFrequency: 5s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: "0%", nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%"}}
localStorageCapacityIsolation: false
podLogsDir: {logs}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: Webhook}}
serializeImagePulls: false
maxPods: 110
"#,
            socket = socket.display(),
            logs = dir.join("pods").display(),
            ca = pki.join("ca.crt").display(),
        ),
    );
    let mut kubelet = spawn(
        &bed.dir,
        "kubelet",
        &bin.join("kubelet"),
        &[
            format!("--config={}", dir.join("kubelet.yaml").display()),
            format!("--kubeconfig={}", dir.join("node.kubeconfig").display()),
            format!("--hostname-override={NODE}"),
            format!("--node-ip={node_ip}"),
            format!("--root-dir={}", dir.join("kubelet").display()),
            format!("--cert-dir={}", dir.join("kubelet-pki").display()),
            "--v=1".into(),
        ],
    );
    let scheduler_kc = dir.join("scheduler.kubeconfig").display().to_string();
    let mut scheduler = spawn(
        &bed.dir,
        "kube-scheduler",
        &bin.join("kube-scheduler"),
        &[
            format!("--kubeconfig={scheduler_kc}"),
            format!("--authentication-kubeconfig={scheduler_kc}"),
            format!("--authorization-kubeconfig={scheduler_kc}"),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", free_port()),
            "--v=1".into(),
        ],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let kc = bed.kubeconfig.clone();
    let ready = || {
        rt.block_on(async {
            let Ok(client) = super::client_for(&kc).await else {
                return false;
            };
            Api::<KubeNode>::all(client)
                .get_opt(NODE)
                .await
                .ok()
                .flatten()
                .and_then(|n| n.status?.conditions)
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
    };
    wait_for(
        &bed.dir,
        "kubelet",
        &mut kubelet,
        Duration::from_secs(90),
        ready,
    );
    // The scheduler serves once it has synced; give it its own failure.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        if let Ok(Some(status)) = scheduler.try_wait() {
            panic!(
                "kube-scheduler exited with {status}; its log:\n{}",
                super::log_tail(&bed.dir, "kube-scheduler")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::mem::forget((kubelet, scheduler));
    Node {
        dir,
        containerd_socket: socket,
    }
}

/// Stops the node's containers and removes its mounts and bridge
/// (`tests/node/stop.sh`), once its kubelet has stopped.
pub(super) fn stop(dir: &Path) {
    if let Err(e) = Command::new("bash")
        .arg(here().join("stop.sh"))
        .arg(dir)
        .status()
    {
        eprintln!("tests/node/stop.sh could not run: {e}");
    }
}

/// Waits until pod `name` in `ns` is Running with every container ready.
/// Fails with the pod's status and the kubelet's last lines.
pub async fn running(client: &kube::Client, ns: &str, name: &str) -> Pod {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let t = Instant::now();
    loop {
        let p = pods.get_opt(name).await.ok().flatten();
        if let Some(p) = &p
            && let Some(status) = &p.status
            && status.phase.as_deref() == Some("Running")
            && status
                .container_statuses
                .as_ref()
                .is_some_and(|c| c.iter().all(|c| c.ready))
        {
            return p.clone();
        }
        if t.elapsed() > Duration::from_secs(90) {
            let dir = super::DIR.get().cloned().unwrap_or_default();
            panic!(
                "pod {ns}/{name} not running after 90 s: {}\nthe kubelet's log:\n{}",
                serde_json::to_string(&p.and_then(|p| p.status)).unwrap_or_default(),
                super::log_tail(&dir, "kubelet")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
