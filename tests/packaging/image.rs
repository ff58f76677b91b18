//! The OCI image (image/build.sh): minimal, non-root, and its binary serves.

use super::*;

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
