//! The way `sm-size`: the minimal no-op webhook answering sm-injector's own
//! patch for a warm pod (`examples/noop_webhook.rs` with a patch file), so
//! that what a pod creation costs splits into what the patch's size and shape
//! cost the API server, whoever answers it (`sm-size` against `no-op`), and
//! what sm-injector's own process and its watches add (`sm-injector` against
//! `sm-size`). The patch's `sm-injector.io/injected` label is renamed, so that
//! sm-injector's refresher, which watches the pods that carry it, does not
//! take those pods for its own; the bytes are the same but one.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

/// sm-injector's answer (on `port`) to the review of `pod` in `ns`, posted
/// twice so that the second is a warm pod's: its base64 patch, relabelled.
pub fn warm_patch(port: u16, ns: &str, pod: &Pod) -> String {
    let mut object = serde_json::to_value(pod).unwrap();
    object["metadata"]["namespace"] = json!(ns);
    let review = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-0000000005ca",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": ns,
            "operation": "CREATE",
            "userInfo": {"username": "scale-bench"},
            "object": object,
            "dryRun": false
        }
    }))
    .unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), review).unwrap();
    let mut patch = String::new();
    for _ in 0..2 {
        let out = std::process::Command::new("curl")
            .args(["-sk", "--fail", "-H", "Content-Type: application/json"])
            .arg("--data-binary")
            .arg(format!("@{}", file.path().display()))
            .arg(format!("https://127.0.0.1:{port}/mutate"))
            .output()
            .expect("curl");
        assert!(out.status.success(), "curl: {out:?}");
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        patch = answer["response"]["patch"]
            .as_str()
            .expect("sm-injector's answer carries a patch")
            .to_owned();
    }
    let text = String::from_utf8(STANDARD.decode(&patch).unwrap()).unwrap();
    let label = "/metadata/labels/sm-injector.io~1injected";
    assert!(text.contains(label), "the patch adds the label: {text}");
    STANDARD.encode(text.replace(label, "/metadata/labels/sm-injector.io~1injectes"))
}
