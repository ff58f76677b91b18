//! The way `sm-size`: the minimal no-op webhook answering sm-injector's own
//! patch for a warm pod (`examples/noop_webhook.rs` with a patch file), so
//! that what a pod creation costs splits into what the patch's size and shape
//! cost the API server, whoever answers it (`sm-size` against `no-op`), and
//! what sm-injector's own process and its watches add (`sm-injector` against
//! `sm-size`). The patch's `sm-injector.io/injected` label is renamed, so that
//! sm-injector's refresher, which watches the pods that carry it, does not
//! take those pods for its own; the bytes are the same but one.
//! `SCALE_SIZED=no-annotations` answers it without its annotations (the
//! record and the versions), to tell what they cost.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

/// The label the `sm-size` way's pods carry instead of
/// `sm-injector.io/injected` (which the refresher's pod watch selects).
pub const LABEL: &str = "sm-injector.io/injectes";

/// Whether `SCALE_SIZED` asks for the patch without its annotations
/// (`no-annotations`) rather than whole (`whole`, the default).
fn without_annotations_asked() -> bool {
    match std::env::var("SCALE_SIZED").as_deref() {
        Err(_) | Ok("whole") => false,
        Ok("no-annotations") => true,
        Ok(other) => panic!("SCALE_SIZED={other:?}: whole (the default) or no-annotations"),
    }
}

/// sm-injector's answer (on `port`) to the review of `pod` in `ns`, posted
/// twice so that the second is a warm pod's: its base64 patch, relabelled.
pub fn warm_patch(port: u16, ns: &str, pod: &Pod) -> String {
    let mut object = serde_json::to_value(pod).unwrap();
    object["metadata"]["namespace"] = json!(ns);
    let review = super::reviews::envelope(ns, "scale-bench", object);
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
    // A label's JSON Pointer (neither label has a `~` to escape).
    let pointer = |name: &str| format!("/metadata/labels/{}", name.replace('/', "~1"));
    let label = pointer(sm_injector::annotations::INJECTED_LABEL);
    assert!(text.contains(&label), "the patch adds the label: {text}");
    let text = text.replace(&label, &pointer(LABEL));
    STANDARD.encode(if without_annotations_asked() {
        without_annotations(&text)
    } else {
        text
    })
}

/// The patch without its operations on annotations (the record and the
/// versions): `SCALE_SIZED=no-annotations`, to tell what they cost.
fn without_annotations(text: &str) -> String {
    let ops: Vec<serde_json::Value> = serde_json::from_str(text).unwrap();
    let kept: Vec<&serde_json::Value> = (ops.iter())
        .filter(|op| {
            !op["path"]
                .as_str()
                .unwrap()
                .starts_with("/metadata/annotations")
        })
        .collect();
    assert!(kept.len() < ops.len(), "the patch adds annotations: {text}");
    serde_json::to_string(&kept).unwrap()
}

/// What the output says of the `sm-size` way.
pub fn describe() -> String {
    let what = if without_annotations_asked() {
        "without its annotations (SCALE_SIZED=no-annotations)"
    } else {
        "whole (SCALE_SIZED=whole)"
    };
    format!("sm-size: the no-op webhook answering sm-injector's patch for a warm pod, {what}")
}
