//! The Helm chart: it renders the objects of the kustomize base, it and an
//! overlay can require client certificates, and it installs, upgrades and
//! uninstalls on the test bed with a real `helm`.

use super::*;

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
