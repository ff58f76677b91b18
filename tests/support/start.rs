//! Starting the test bed: its certificates, etcd, kube-apiserver,
//! kube-controller-manager and moto, each on a free loopback port in the test
//! bed's folder, and the kubeconfigs for them.

use super::*;

pub(super) fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

pub(super) fn kubeconfig(server: &str, ca: &Path, cert: &Path, key: &Path, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: {user}\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: test\n  context: {{cluster: test, user: {user}, namespace: default}}\ncurrent-context: test\n",
        ca.display(),
        cert.display(),
        key.display()
    )
}

/// Removes test bed folders of earlier runs whose process is gone (a run killed
/// with SIGKILL cannot clean up after itself).
pub(super) fn remove_stale_dirs(base: &Path) {
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

pub(super) fn start() -> TestBed {
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
