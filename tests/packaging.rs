//! Installing as a cluster admin would, beyond the plain base: the install
//! overlay that carries the `caBundle` through every re-apply, an overlay that
//! moves sm-injector to another namespace (examples/kustomize/), and the Helm
//! chart (charts/sm-injector) with a real `helm` built from its Go module
//! (tests/tools/). Its own test bed: these install cluster-scoped objects of
//! the same names as tests/install/, one test at a time (INSTALLS).

mod support;

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, PostParams};
use serde_json::json;
use support::chart::{assert_same_objects, helm, kustomize, objects, run, template};
use support::{TestBed, namespace, testbed};

/// One install on the test bed at a time: they share cluster-scoped names.
static INSTALLS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A copy of the repository's layout (manifests/, examples/kustomize/) with
/// `sm-injector certs --namespace <namespace>` written to certs/generated, as
/// a user's checkout would be after the documented steps.
fn checkout(bed: &TestBed, name: &str, namespace: &str) -> std::path::PathBuf {
    let root = bed.dir.join(name);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    copy_dir(&repo.join("manifests"), &root.join("manifests"));
    copy_dir(
        &repo.join("examples/kustomize"),
        &root.join("examples/kustomize"),
    );
    let status = Command::new(env!("CARGO_BIN_EXE_sm-injector"))
        .args(["certs", "--namespace", namespace, "--out-dir"])
        .arg(root.join("certs/generated"))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "sm-injector certs");
    root
}

fn webhook(bed: &TestBed) -> serde_json::Value {
    let out = bed
        .kubectl_run(
            &[
                "get",
                "mutatingwebhookconfiguration",
                "sm-injector",
                "-o",
                "json",
            ],
            None,
        )
        .unwrap();
    serde_json::from_str(&out).unwrap()
}

fn ca_bundle(bed: &TestBed) -> Option<String> {
    webhook(bed)["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .map(String::from)
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn the_relocated_overlay_keeps_its_ca_bundle_and_admits_pods() {
    use base64::Engine;
    let _one = INSTALLS.lock().await;
    let bed = testbed();
    let home = "platform-secrets";
    let root = checkout(bed, "relocated-checkout", home);
    let overlay = root.join("examples/kustomize/relocated");
    let overlay = overlay.to_str().unwrap();
    let applied = bed.kubectl_run(&["apply", "-k", overlay], None).unwrap();
    assert!(applied.contains(&format!("namespace/{home}")), "{applied}");
    assert!(applied.contains("secret/sm-injector-tls"), "{applied}");
    let ca = std::fs::read(root.join("certs/generated/ca.crt")).unwrap();
    let want = base64::engine::general_purpose::STANDARD.encode(&ca);
    assert_eq!(ca_bundle(bed).as_deref(), Some(want.as_str()));

    // Everything that named the namespace names the new one.
    let w = webhook(bed);
    assert_eq!(
        w["webhooks"][0]["clientConfig"]["service"]["namespace"],
        home
    );
    assert_eq!(
        w["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"],
        json!(["kube-system", home])
    );
    for policy in [
        "sm-injector-managed-secrets",
        "sm-injector-token-requests",
        "sm-injector-workload-rolls",
    ] {
        let vap = bed
            .kubectl_run(
                &["get", "validatingadmissionpolicy", policy, "-o", "json"],
                None,
            )
            .unwrap();
        assert!(
            vap.contains(&format!("system:serviceaccount:{home}:sm-injector"))
                && !vap.contains("system:serviceaccount:sm-injector:"),
            "{policy}: {vap}"
        );
    }
    let binding = bed
        .kubectl_run(
            &["get", "clusterrolebinding", "sm-injector", "-o", "json"],
            None,
        )
        .unwrap();
    let binding: serde_json::Value = serde_json::from_str(&binding).unwrap();
    assert_eq!(binding["subjects"][0]["namespace"], home);

    // An upgrade re-applies the overlay: the caBundle stays.
    let again = bed.kubectl_run(&["apply", "-k", overlay], None).unwrap();
    assert!(
        again.contains("mutatingwebhookconfiguration.admissionregistration.k8s.io/sm-injector"),
        "{again}"
    );
    assert_eq!(ca_bundle(bed).as_deref(), Some(want.as_str()));

    // Running with only the relocated ServiceAccount's rights, pods are
    // admitted and injected: its role bindings and the admission policy's
    // user name follow the namespace (the backing Secret's write passes it).
    let inst = support::install::run_installed(bed, home).await;
    let _ = inst.port;
    let client = bed.client().await;
    let ns = namespace(&client, "moved", &[("sm-injector.io/inject", "enabled")]).await;
    bed.put_secret(&format!("{ns}/db"), r#"{"url":"postgres://moved"}"#)
        .await;
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "app", "annotations": {"sm-injector.io/env.DATABASE_URL": format!("{ns}/db#url")}},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    }))
    .unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let created = support::eventually(
        std::time::Duration::from_secs(30),
        "the pod to be admitted through the relocated install",
        || async { pods.create(&PostParams::default(), &p).await.ok() },
    )
    .await;
    let r = created.spec.unwrap().containers[0].env.as_ref().unwrap()[0]
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .clone()
        .unwrap();
    let backing = Api::<Secret>::namespaced(client.clone(), &ns)
        .get(&r.name)
        .await
        .unwrap();
    assert_eq!(backing.data.unwrap()[&r.key].0, b"postgres://moved");

    // Uninstalled with the overlay, the cluster-scoped objects go too.
    bed.kubectl_run(&["delete", "-k", overlay, "--wait=false"], None)
        .unwrap();
    let err = bed
        .kubectl_run(
            &["get", "mutatingwebhookconfiguration", "sm-injector"],
            None,
        )
        .unwrap_err();
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
}

/// Where `deployment` reads its client CA from: the file the env var names,
/// found through its mount to a ConfigMap volume, as (ConfigMap, key).
fn client_ca_source(deployment: &serde_json::Value) -> (String, String) {
    let c = &deployment["spec"]["template"]["spec"]["containers"][0];
    let file = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SM_INJECTOR_CLIENT_CA_FILE")
        .expect("SM_INJECTOR_CLIENT_CA_FILE is set")["value"]
        .as_str()
        .unwrap()
        .to_string();
    let (dir, key) = file.rsplit_once('/').unwrap();
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("nothing is mounted at {dir}"));
    let volume = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let cm = volume["configMap"]["name"]
        .as_str()
        .expect("a ConfigMap volume");
    (cm.to_string(), key.to_string())
}

#[tokio::test]
#[ignore = "needs helm and kubectl: run ./tests/run"]
async fn the_chart_and_an_overlay_can_require_client_certificates() {
    // The chart: the flag's file, mounted from the ConfigMap named.
    let chart = template(&["--set", "clientCA.configMap=webhook-client-ca"]);
    assert_eq!(
        client_ca_source(&chart["Deployment/sm-injector"]),
        ("webhook-client-ca".to_string(), "ca.crt".to_string())
    );
    assert!(
        !format!("{:?}", template(&[])["Deployment/sm-injector"]).contains("client-ca"),
        "not required by default"
    );
    // The overlay: the CA next to it becomes that ConfigMap.
    let bed = testbed();
    let root = checkout(bed, "client-ca-checkout", "sm-injector");
    let overlay = root.join("examples/kustomize/client-ca");
    let ca = std::fs::read_to_string(&bed.webhook_client_ca).unwrap();
    std::fs::write(overlay.join("ca.crt"), &ca).unwrap();
    let rendered = objects(
        &run({
            let mut k = Command::new("kubectl");
            k.arg("kustomize").arg(&overlay);
            k
        })
        .unwrap(),
    );
    let (cm, key) = client_ca_source(&rendered["Deployment/sm-injector"]);
    let config_map = rendered
        .iter()
        .find(|(k, _)| k.starts_with(&format!("ConfigMap/{cm}")))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("the ConfigMap {cm} is rendered"));
    assert_eq!(config_map["metadata"]["namespace"], "sm-injector");
    assert_eq!(config_map["data"][&key], ca.as_str());
}

#[test]
#[ignore = "needs helm: run ./tests/run"]
fn the_chart_renders_the_objects_of_the_kustomize_base() {
    // The base mounts its certificate from a Secret, as the chart's
    // `generate` mode does (the default, `managed`, is tests/certificates.rs).
    let mut chart = template(&["--set", "certificates.mode=generate"]);
    // What differs in this mode: the serving certificate and its caBundle,
    // which the base leaves to `sm-injector certs` or cert-manager.
    let tls = chart
        .remove("Secret/sm-injector-tls")
        .expect("the generated TLS Secret");
    let ca = tls["data"]["ca.crt"].as_str().unwrap().to_string();
    let webhook = chart
        .get_mut("MutatingWebhookConfiguration/sm-injector")
        .unwrap();
    let bundle = webhook["webhooks"][0]["clientConfig"]
        .as_object_mut()
        .unwrap()
        .remove("caBundle");
    assert_eq!(
        bundle.as_ref().and_then(|b| b.as_str()),
        Some(ca.as_str()),
        "the caBundle is the Secret's CA"
    );
    let deployment = chart.get_mut("Deployment/sm-injector").unwrap();
    let checksum = deployment["spec"]["template"]["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    assert!(checksum.is_some(), "a new certificate rolls the replicas");
    assert_same_objects(chart, kustomize("manifests"), "manifests/");
    // The chart's PrometheusRule carries monitoring/alerts.rules.yaml, and so
    // does monitoring/prometheusrule.yaml.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo.join("monitoring/alerts.rules.yaml")).unwrap(),
    )
    .unwrap();
    let with_rules = template(&[
        "--set",
        "prometheusRule.enabled=true",
        "--api-versions",
        "monitoring.coreos.com/v1/PrometheusRule",
    ]);
    assert_eq!(with_rules["PrometheusRule/sm-injector"]["spec"], rules);
    let shipped =
        objects(&std::fs::read_to_string(repo.join("monitoring/prometheusrule.yaml")).unwrap());
    assert_eq!(shipped["PrometheusRule/sm-injector"]["spec"], rules);
}

#[tokio::test]
#[ignore = "needs the test bed and helm: run ./tests/run"]
async fn the_chart_installs_upgrades_and_uninstalls() {
    let _one = INSTALLS.lock().await;
    let bed = testbed();
    let home = "helm-home";
    let helm_bed = |args: &[&str]| {
        let mut c = helm();
        c.env("KUBECONFIG", &bed.kubeconfig);
        c.args(args);
        run(c)
    };
    let out = helm_bed(&[
        "install",
        "sm-injector",
        "charts/sm-injector",
        "--namespace",
        home,
        "--create-namespace",
        "--set",
        "serviceMonitor.enabled=true,prometheusRule.enabled=true,certificates.mode=generate",
    ])
    .unwrap();
    assert!(out.contains("STATUS: deployed"), "{out}");
    // The notes say what is missing: no AWS credential path configured, and
    // the Prometheus Operator objects skipped on a cluster without its CRDs
    // (installing them would have failed the whole install).
    for said in [
        "WARNING: no AWS credential path is configured",
        "SKIPPED: serviceMonitor.enabled=true",
        "SKIPPED: prometheusRule.enabled=true",
    ] {
        assert!(out.contains(said), "{said}: {out}");
    }
    let get = |what: &[&str]| -> serde_json::Value {
        let mut args = vec!["get"];
        args.extend_from_slice(what);
        args.extend(["-o", "json"]);
        serde_json::from_str(&bed.kubectl_run(&args, None).unwrap()).unwrap()
    };
    let ca = get(&["-n", home, "secret", "sm-injector-tls"])["data"]["ca.crt"].clone();
    let w = get(&["mutatingwebhookconfiguration", "sm-injector"]);
    assert_eq!(w["webhooks"][0]["clientConfig"]["caBundle"], ca);
    assert_eq!(
        w["webhooks"][0]["clientConfig"]["service"]["namespace"],
        home
    );
    let vap = get(&["validatingadmissionpolicy", "sm-injector-managed-secrets"]);
    assert!(
        vap.to_string()
            .contains(&format!("system:serviceaccount:{home}:sm-injector")),
        "{vap}"
    );
    assert_eq!(
        get(&["-n", home, "deployment", "sm-injector"])["spec"]["replicas"],
        2
    );

    // An upgrade keeps the CA (read back from the Secret) and applies values.
    let out = helm_bed(&[
        "upgrade",
        "sm-injector",
        "charts/sm-injector",
        "--namespace",
        home,
        "--set",
        "replicas=3,certificates.mode=generate",
        "--set",
        "extraArgs={--cache-ttl=1m}",
        "--set-string",
        "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::123456789012:role/sm-injector",
    ])
    .unwrap();
    assert!(
        !out.contains("WARNING"),
        "an IRSA role is a credential path: {out}"
    );
    assert!(
        out.contains("STATUS: deployed") && out.contains("REVISION: 2"),
        "{out}"
    );
    let d = get(&["-n", home, "deployment", "sm-injector"]);
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["args"][2],
        "--cache-ttl=1m"
    );
    assert_eq!(
        get(&["-n", home, "secret", "sm-injector-tls"])["data"]["ca.crt"],
        ca
    );
    let w = get(&["mutatingwebhookconfiguration", "sm-injector"]);
    assert_eq!(
        w["webhooks"][0]["clientConfig"]["caBundle"], ca,
        "the caBundle is kept"
    );

    // While installed, not even an admin may create a managed Secret.
    let managed = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: leftover\n  labels: {app.kubernetes.io/managed-by: sm-injector}\nstringData: {k: v}\n";
    let ns = namespace(&bed.client().await, "uninstall", &[]).await;
    let err = bed
        .kubectl_run(&["-n", &ns, "create", "-f", "-"], Some(managed))
        .unwrap_err();
    assert!(err.contains("only sm-injector may"), "{err}");

    // Uninstalled, nothing of it is left but its namespace, and managed
    // Secrets can be cleaned up.
    let out = helm_bed(&["uninstall", "sm-injector", "--namespace", home]).unwrap();
    assert!(out.contains("uninstalled"), "{out}");
    for what in [
        vec!["mutatingwebhookconfiguration", "sm-injector"],
        vec!["validatingadmissionpolicy", "sm-injector-managed-secrets"],
        vec!["clusterrole", "sm-injector"],
        vec!["priorityclass", "sm-injector"],
        vec!["-n", home, "deployment", "sm-injector"],
        vec!["-n", home, "secret", "sm-injector-tls"],
    ] {
        let mut args = vec!["get"];
        args.extend(what.iter().copied());
        let err = bed.kubectl_run(&args, None).unwrap_err();
        assert!(
            err.contains("NotFound") || err.contains("not found"),
            "{what:?}: {err}"
        );
    }
    support::eventually(
        std::time::Duration::from_secs(20),
        "the admission policy to be gone from the API server's view",
        || async {
            bed.kubectl_run(&["-n", &ns, "create", "-f", "-"], Some(managed))
                .ok()
        },
    )
    .await;
    bed.kubectl_run(
        &[
            "-n",
            &ns,
            "delete",
            "secret",
            "-l",
            "app.kubernetes.io/managed-by=sm-injector",
        ],
        None,
    )
    .unwrap();
}

/// A blob of the OCI layout at `oci`, by digest.
fn blob(oci: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    std::fs::read(oci.join("blobs/sha256").join(hex)).unwrap()
}

#[tokio::test]
#[ignore = "needs the image (image/build.sh) and the test bed: run ./tests/run"]
async fn the_image_is_minimal_non_root_and_its_binary_serves() {
    let out = support::component("SM_INJECTOR_IMAGE", "the OCI image (image/build.sh)");
    let oci = out.join("oci");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(oci.join("index.json")).unwrap()).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&blob(
        &oci,
        index["manifests"][0]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    if manifest["manifests"].is_array() {
        // An image index: the linux/amd64 manifest.
        let m = manifest["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == "amd64")
            .expect("a linux/amd64 image")
            .clone();
        manifest = serde_json::from_slice(&blob(&oci, m["digest"].as_str().unwrap())).unwrap();
    }
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&blob(&oci, manifest["config"]["digest"].as_str().unwrap()))
            .unwrap();
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    let c = &config["config"];
    assert_eq!(c["User"], "65532:65532", "non-root");
    assert_eq!(c["Entrypoint"], json!(["/sm-injector"]));
    assert_eq!(c["Cmd"], json!(["serve"]));
    assert_eq!(
        c["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );

    // One layer: the binary, CA certificates, the users; no shell.
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{layers:?}");
    let dir = tempfile::tempdir().unwrap();
    let layer = dir.path().join("layer.tar.gz");
    std::fs::write(&layer, blob(&oci, layers[0]["digest"].as_str().unwrap())).unwrap();
    let list = run({
        let mut t = Command::new("tar");
        t.arg("-tzf").arg(&layer);
        t
    })
    .unwrap();
    let files: Vec<&str> = list.lines().map(|l| l.trim_start_matches("./")).collect();
    for f in [
        "sm-injector",
        "etc/ssl/certs/ca-certificates.crt",
        "etc/passwd",
        "etc/group",
    ] {
        assert!(files.contains(&f), "{f} not in {files:?}");
    }
    assert!(
        !files
            .iter()
            .any(|f| f.starts_with("bin") || f.starts_with("usr") || f.ends_with("sh")),
        "{files:?}"
    );
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    run({
        let mut t = Command::new("tar");
        t.arg("-xzf").arg(&layer).arg("-C").arg(&root);
        t
    })
    .unwrap();
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");

    // Its binary is static and runs: --version, and `serve` against the test
    // bed until ready.
    let binary = root.join("sm-injector");
    let file = run({
        let mut f = Command::new("file");
        f.arg(&binary);
        f
    });
    let f = file.expect("file(1)");
    assert!(
        f.contains("statically linked") || f.contains("static-pie"),
        "{f}"
    );
    let version = run({
        let mut v = Command::new(&binary);
        v.arg("--version");
        v
    })
    .unwrap();
    assert_eq!(
        version.trim(),
        format!("sm-injector {}", env!("CARGO_PKG_VERSION"))
    );
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "image", &[]).await;
    let lease = format!("--lease-namespace={ns}");
    let server = support::serve_process(bed, &binary, "image-serve", &[&lease]).await;
    let (status, metrics) = support::injector::http_get(server.probe, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("sm_injector_build_info"), "{metrics}");
}
