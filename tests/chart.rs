//! The chart's values as an admin meets them, with a real `helm` (built from
//! its Go module): mistakes refused with their path by `helm lint --strict`
//! and by `helm template` (values.schema.json), the values admins need
//! rendered where the API server reads them, objects that need a CRD skipped
//! with a note where the CRD is absent, and the chart README generated from
//! values.yaml. No test bed: nothing here is installed (tests/packaging/
//! installs).

mod support;

use std::path::Path;

use serde_json::json;
use support::chart::{helm, run, template};

const CHART: &str = "charts/sm-injector";

/// `helm lint --strict` and `helm template` of the chart with `set`, each
/// refusing; both errors.
fn refused(set: &[&str]) -> (String, String) {
    let flags: Vec<&str> = set.iter().flat_map(|s| ["--set", s]).collect();
    let mut lint = helm();
    lint.args(["lint", "--strict", CHART]).args(&flags);
    let lint = run(lint).expect_err("helm lint --strict accepts it");
    let mut t = helm();
    t.args(["template", "sm-injector", CHART, "--kube-version", "1.33.0"])
        .args(&flags);
    let t = run(t).expect_err("helm template accepts it");
    (lint, t)
}

#[test]
#[ignore = "needs helm: run ./tests/run"]
fn bad_values_are_refused_with_their_path() {
    for (set, path, what) in [
        (
            "certificates.mode=cert-manger",
            "/certificates/mode",
            "must be one of",
        ),
        ("nodeSelectr.zone=a", "''", "'nodeSelectr' not allowed"),
        (
            "certificates.managed.certValidity=30d",
            "/certificates/managed/certValidity",
            "does not match",
        ),
        ("image.tagg=1", "/image", "'tagg' not allowed"),
        ("image.digest=latest", "/image/digest", "does not match"),
        (
            "image.repository=ghcr.io/x/y:1.0",
            "/image/repository",
            "does not match",
        ),
        (
            "image.pullPolicy=always",
            "/image/pullPolicy",
            "must be one of",
        ),
        ("replicas=0", "/replicas", "minimum"),
        (
            "webhook.failurePolicy=fail",
            "/webhook/failurePolicy",
            "one of",
        ),
        (
            "webhook.timeoutSeconds=60",
            "/webhook/timeoutSeconds",
            "maximum",
        ),
        ("ports.webhook=70000", "/ports/webhook", "maximum"),
        ("hostNetwork=yes", "/hostNetwork", "boolean"),
        (
            "annotationKeysPolicy.action=deny",
            "/annotationKeysPolicy/action",
            "must be one of",
        ),
        ("extraArgs={cache-ttl=1m}", "/extraArgs/0", "does not match"),
        (
            "certificates.mode=secret",
            "/certificates/caBundle",
            "minLength",
        ),
        (
            "serviceMonitor.interval=thirty",
            "/serviceMonitor/interval",
            "does not match",
        ),
    ] {
        let (lint, template) = refused(&[set]);
        for (tool, err) in [("lint", &lint), ("template", &template)] {
            assert!(
                err.contains(&format!("at '{}'", path.trim_matches('\''))) && err.contains(what),
                "{set}: helm {tool} should name {path} ({what}): {err}"
            );
        }
    }
    // The defaults pass, strictly.
    let mut lint = helm();
    lint.args(["lint", "--strict", CHART]);
    run(lint).unwrap();
}

#[test]
#[ignore = "needs helm: run ./tests/run"]
fn the_values_admins_need_reach_the_pod() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let o = template(&[
        "--set",
        &format!("image.digest={digest}"),
        "--set",
        "imagePullSecrets[0].name=regcred",
        "--set",
        "nodeSelector.kubernetes\\.io/os=linux",
        "--set",
        "tolerations[0].key=dedicated,tolerations[0].operator=Exists",
        "--set",
        "podAnnotations.team=platform",
        "--set",
        "podLabels.cost-center=c42",
        "--set",
        "podLabels.app\\.kubernetes\\.io/instance=hijack",
        "--set",
        "hostNetwork=true,ports.webhook=10260,ports.probes=10261",
        "--set",
        "extraVolumes[0].name=trust,extraVolumes[0].configMap.name=trust-bundle",
        "--set",
        "extraVolumeMounts[0].name=trust,extraVolumeMounts[0].mountPath=/etc/trust",
        "--set",
        "podSecurityContext.runAsUser=null,podSecurityContext.runAsGroup=null",
        "--set",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=arch",
    ]);
    let d = &o["Deployment/sm-injector"];
    let pod = &d["spec"]["template"];
    let spec = &pod["spec"];
    let c = &spec["containers"][0];
    assert_eq!(
        c["image"],
        format!("ghcr.io/sm-injector/sm-injector@{digest}")
    );
    assert_eq!(spec["imagePullSecrets"], json!([{"name": "regcred"}]));
    assert_eq!(spec["nodeSelector"], json!({"kubernetes.io/os": "linux"}));
    assert_eq!(spec["tolerations"][0]["key"], "dedicated");
    assert!(spec["affinity"]["nodeAffinity"].is_object());
    assert_eq!(pod["metadata"]["annotations"]["team"], "platform");
    assert_eq!(pod["metadata"]["labels"]["cost-center"], "c42");
    // The selector's labels cannot be overridden by podLabels.
    let selector = json!({"app.kubernetes.io/name": "sm-injector", "app.kubernetes.io/instance": "sm-injector"});
    assert_eq!(d["spec"]["selector"]["matchLabels"], selector);
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/instance"],
        "sm-injector"
    );
    // On the node's network, on the ports given, with the cluster's DNS.
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(
        c["ports"][0],
        json!({"name": "webhook", "containerPort": 10260})
    );
    let env: Vec<_> = c["env"].as_array().unwrap().iter().collect();
    let var = |n: &str| {
        env.iter()
            .find(|e| e["name"] == n)
            .map(|e| e["value"].clone())
    };
    assert_eq!(var("SM_INJECTOR_LISTEN"), Some(json!("0.0.0.0:10260")));
    assert_eq!(
        var("SM_INJECTOR_PROBE_LISTEN"),
        Some(json!("0.0.0.0:10261"))
    );
    let np = &o["NetworkPolicy/sm-injector"]["spec"];
    assert_eq!(np["ingress"][0]["ports"][0]["port"], 10260);
    assert_eq!(np["ingress"][1]["ports"][0]["port"], 10261);
    // The Service still answers on 443, to the named port.
    assert_eq!(
        o["Service/sm-injector"]["spec"]["ports"][0]["targetPort"],
        "webhook"
    );
    assert_eq!(
        spec["volumes"].as_array().unwrap().last().unwrap(),
        &json!({"name": "trust", "configMap": {"name": "trust-bundle"}})
    );
    assert_eq!(
        c["volumeMounts"].as_array().unwrap().last().unwrap(),
        &json!({"name": "trust", "mountPath": "/etc/trust"})
    );
    // OpenShift: the user and group left to the SCC, the rest kept.
    assert_eq!(
        spec["securityContext"],
        json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}})
    );

    // Every selector of the chart names this release's replicas only.
    let o = template(&[
        "--set",
        "networkPolicy.webhookFrom[0].ipBlock.cidr=10.0.0.0/16",
    ]);
    let by_instance = json!({"app.kubernetes.io/name": "sm-injector", "app.kubernetes.io/instance": "sm-injector"});
    assert_eq!(o["Service/sm-injector"]["spec"]["selector"], by_instance);
    assert_eq!(
        o["PodDisruptionBudget/sm-injector"]["spec"]["selector"]["matchLabels"],
        by_instance
    );
    let np = &o["NetworkPolicy/sm-injector"]["spec"];
    assert_eq!(np["podSelector"]["matchLabels"], by_instance);
    assert_eq!(
        np["ingress"][0]["from"],
        json!([{"ipBlock": {"cidr": "10.0.0.0/16"}}])
    );
    for t in o["Deployment/sm-injector"]["spec"]["template"]["spec"]["topologySpreadConstraints"]
        .as_array()
        .unwrap()
    {
        assert_eq!(t["labelSelector"]["matchLabels"], by_instance);
    }
    assert_eq!(
        o["Deployment/sm-injector"]["metadata"]["labels"]["app.kubernetes.io/version"],
        "0.1.0"
    );
}

/// Argo CD and Flux render with `helm template`: by default (`managed`) two
/// renders are identical and hold no key material and no caBundle, which
/// sm-injector keeps itself, with the rights for it and no more.
#[test]
#[ignore = "needs helm: run ./tests/run"]
fn default_renders_are_identical_and_carry_no_certificate() {
    let one = template(&[]);
    assert_eq!(one, template(&[]), "two renders of the defaults differ");
    assert!(
        !one.keys().any(|k| k.starts_with("Secret/")),
        "{:?}",
        one.keys()
    );
    let webhook = &one["MutatingWebhookConfiguration/sm-injector"]["webhooks"][0];
    assert!(
        webhook["clientConfig"].get("caBundle").is_none(),
        "{webhook}"
    );
    let pod = &one["Deployment/sm-injector"]["spec"]["template"]["spec"];
    let env = &pod["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .contains(&json!({"name": "SM_INJECTOR_CERTIFICATES", "value": "managed"})),
        "{env}"
    );
    assert!(
        pod.get("volumes").is_none(),
        "no certificate to mount: {pod}"
    );
    assert_eq!(
        one["Role/sm-injector-webhook-ca"]["rules"],
        json!([{"apiGroups": [""], "resources": ["secrets"],
            "resourceNames": ["sm-injector-webhook-ca"], "verbs": ["get", "list", "watch"]}])
    );
    assert_eq!(
        one["ClusterRole/sm-injector-webhook-ca"]["rules"],
        json!([{"apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": ["sm-injector"], "verbs": ["get", "list", "watch", "patch"]}])
    );
    // The other modes need none of it; `generate` is what GitOps cannot
    // use: a new CA at every render.
    let generated = template(&["--set", "certificates.mode=generate"]);
    assert!(!generated.contains_key("Role/sm-injector-webhook-ca"));
    assert!(!generated.contains_key("ClusterRole/sm-injector-webhook-ca"));
    assert_ne!(
        generated["Secret/sm-injector-tls"],
        template(&["--set", "certificates.mode=generate"])["Secret/sm-injector-tls"]
    );
}

#[test]
#[ignore = "needs helm: run ./tests/run"]
fn sharp_edges_are_gone() {
    // No placeholder AWS role in someone else's account (the install's notes
    // warn that none is configured: tests/packaging/).
    let o = template(&[]);
    assert!(
        o["ServiceAccount/sm-injector"]["metadata"]
            .get("annotations")
            .is_none(),
        "{}",
        o["ServiceAccount/sm-injector"]
    );
    // One replica: no PodDisruptionBudget that would block every drain.
    let one = template(&["--set", "replicas=1"]);
    assert!(!one.contains_key("PodDisruptionBudget/sm-injector"));
    assert!(template(&[]).contains_key("PodDisruptionBudget/sm-injector"));

    // Objects of CRDs the cluster does not serve are skipped (the install's
    // notes say so: tests/packaging/); where they are served, rendered.
    let monitoring = ["serviceMonitor.enabled=true", "prometheusRule.enabled=true"];
    let flags: Vec<&str> = monitoring.iter().flat_map(|s| ["--set", *s]).collect();
    let skipped = template(&flags);
    assert!(!skipped.contains_key("ServiceMonitor/sm-injector"));
    assert!(!skipped.contains_key("PrometheusRule/sm-injector"));
    let mut with_crds = flags.clone();
    with_crds.extend([
        "--api-versions",
        "monitoring.coreos.com/v1/ServiceMonitor",
        "--api-versions",
        "monitoring.coreos.com/v1/PrometheusRule",
    ]);
    let served = template(&with_crds);
    assert_eq!(
        served["ServiceMonitor/sm-injector"]["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
        "sm-injector"
    );
    assert!(served.contains_key("PrometheusRule/sm-injector"));
    // cert-manager is not optional in its mode: without its CRDs the render
    // fails, saying what to do.
    let mut c = helm();
    c.args([
        "template",
        "sm-injector",
        CHART,
        "--kube-version",
        "1.33.0",
        "--set",
        "certificates.mode=cert-manager",
    ]);
    let err = run(c).expect_err("cert-manager mode without cert-manager");
    assert!(
        err.contains("certificates.mode=cert-manager needs cert-manager"),
        "{err}"
    );
    let cm = template(&[
        "--set",
        "certificates.mode=cert-manager",
        "--api-versions",
        "cert-manager.io/v1/Certificate",
    ]);
    assert!(cm.contains_key("Certificate/sm-injector-tls"));

    // The policy on misspelled keys: Deny by default, Warn or off by value.
    let binding = "ValidatingAdmissionPolicyBinding/sm-injector-annotation-keys";
    assert_eq!(
        template(&[])[binding]["spec"]["validationActions"],
        json!(["Deny"])
    );
    let warn = template(&["--set", "annotationKeysPolicy.action=Warn"]);
    assert_eq!(warn[binding]["spec"]["validationActions"], json!(["Warn"]));
    let off = template(&["--set", "annotationKeysPolicy.enabled=false"]);
    assert!(!off.contains_key(binding));
    assert!(!off.contains_key("ValidatingAdmissionPolicy/sm-injector-annotation-keys"));

    // The dashboard for Grafana's sidecar is monitoring/dashboard.json.
    let o = template(&["--set", "grafanaDashboard.enabled=true"]);
    let cm = &o["ConfigMap/sm-injector-dashboard"];
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring/dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let rendered: serde_json::Value =
        serde_json::from_str(cm["data"]["sm-injector.json"].as_str().unwrap()).unwrap();
    assert_eq!(rendered, shipped);
}

#[test]
#[ignore = "needs helm-docs: run ./tests/run"]
fn the_chart_readme_is_generated_from_values_yaml() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("sm-injector");
    std::fs::create_dir_all(&chart).unwrap();
    for f in ["Chart.yaml", "values.yaml", "README.md.gotmpl"] {
        std::fs::copy(repo.join(CHART).join(f), chart.join(f)).unwrap();
    }
    let mut c = std::process::Command::new(support::component(
        "SM_INJECTOR_HELM_DOCS",
        "helm-docs (tests/tools/build.sh helm-docs)",
    ));
    c.current_dir(&chart);
    run(c).unwrap();
    let generated = std::fs::read_to_string(chart.join("README.md")).unwrap();
    let shipped = std::fs::read_to_string(repo.join(CHART).join("README.md")).unwrap();
    assert!(
        generated == shipped,
        "charts/sm-injector/README.md is not what helm-docs makes of values.yaml: run tests/tools/chart-readme.sh"
    );
    // Every value is in the table.
    for key in [
        "image.digest",
        "hostNetwork",
        "ports.webhook",
        "topologySpreadConstraints",
    ] {
        assert!(shipped.contains(&format!("| {key} |")), "{key}");
    }
}
