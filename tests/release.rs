//! The release as an admin adopts it: `release/release.sh` run against a
//! registry on loopback (crane's), then everything checked from the
//! registry with the tools an admin uses (crane, cosign, helm, all built from
//! their Go modules): a multi-arch index of linux/amd64 and linux/arm64, each
//! binary of its architecture and static; the signature verifies with the
//! public key and fails once the tag is moved to another image; the SBOM
//! attestation lists the crates; the chart, pulled from the registry by
//! `helm install oci://...` after its signature is verified, installs on the
//! test bed and its webhook admits pods.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::{component, free_port, namespace, testbed};

fn tool(var: &str, what: &str) -> PathBuf {
    component(var, what)
}

fn run(c: &mut Command) -> Result<String, String> {
    let out = c.output().expect("run");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into())
    } else {
        Err(format!(
            "{c:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The ELF machine of the file at `path` inside the gzipped tarball `archive`.
fn elf_machine(archive: &Path, path: &str) -> (u16, bool) {
    let dir = tempfile::tempdir().unwrap();
    run(Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(dir.path()))
    .unwrap();
    let bin = std::fs::read(dir.path().join(path)).unwrap();
    assert_eq!(&bin[..4], b"\x7fELF", "{path} is not an ELF file");
    let machine = u16::from_le_bytes([bin[18], bin[19]]);
    let file = run(Command::new("file").arg(dir.path().join(path))).unwrap();
    (
        machine,
        file.contains("statically linked") || file.contains("static-pie"),
    )
}

#[tokio::test]
#[ignore = "needs the test bed, crane, helm and cosign: run ./tests/run"]
async fn a_signed_multi_arch_release_installs_from_the_registry() {
    let bed = testbed();
    let crane = tool("SM_INJECTOR_CRANE", "crane (tests/tools/build.sh crane)");
    let helm = tool("SM_INJECTOR_HELM", "helm (tests/tools/build.sh helm)");
    let cosign = tool("SM_INJECTOR_COSIGN", "cosign (tests/tools/build.sh cosign)");
    let port = free_port();
    let child = support::spawn(
        &bed.dir,
        "registry",
        &crane,
        &[
            "registry".into(),
            "serve".into(),
            "--address".into(),
            format!("127.0.0.1:{port}"),
        ],
    );
    std::mem::forget(child);
    let registry = format!("127.0.0.1:{port}");
    support::eventually(
        std::time::Duration::from_secs(20),
        "the registry",
        || async { std::net::TcpStream::connect(&registry).ok().map(|_| ()) },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    run(Command::new(&cosign)
        .args(["generate-key-pair"])
        .env("COSIGN_PASSWORD", "release-test")
        .current_dir(dir.path()))
    .unwrap();
    let key = dir.path().join("cosign.key");
    let public = dir.path().join("cosign.pub");
    let out = dir.path().join("release");

    // The release, as CI would make it.
    let image_ref = run(
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/release/release.sh"))
            .arg(&registry)
            .arg(&out)
            .env("COSIGN_KEY", &key)
            .env("COSIGN_PASSWORD", "release-test"),
    )
    .unwrap()
    .trim()
    .to_string();
    let version = env!("CARGO_PKG_VERSION");
    let image = format!("{registry}/sm-injector");
    assert!(
        image_ref.starts_with(&format!("{image}@sha256:")),
        "{image_ref}"
    );

    // A multi-arch index of the two platforms.
    let index: Value = serde_json::from_str(
        &run(Command::new(&crane).args(["manifest", &format!("{image}:{version}")])).unwrap(),
    )
    .unwrap();
    let mut platforms: Vec<String> = index["manifests"]
        .as_array()
        .expect("an index")
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    platforms.sort();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    // Each CLI archive holds a static binary of its architecture.
    for (arch, machine) in [("amd64", 0x3e), ("arm64", 0xb7)] {
        let archive = out.join(format!("sm-injector-{version}-linux-{arch}.tar.gz"));
        let (m, is_static) = elf_machine(
            &archive,
            &format!("sm-injector-{version}-linux-{arch}/sm-injector"),
        );
        assert_eq!(m, machine, "{arch}");
        assert!(is_static, "{arch} binary is not static");
    }
    // The arm64 binary runs (under qemu's user-mode emulation).
    let dir_arm = tempfile::tempdir().unwrap();
    run(Command::new("tar")
        .arg("-xzf")
        .arg(out.join(format!("sm-injector-{version}-linux-arm64.tar.gz")))
        .arg("-C")
        .arg(dir_arm.path()))
    .unwrap();
    let qemu = Path::new("/usr/bin/qemu-aarch64-static");
    support::component_file(qemu);
    let said = run(Command::new(qemu)
        .arg(
            dir_arm
                .path()
                .join(format!("sm-injector-{version}-linux-arm64/sm-injector")),
        )
        .arg("--version"))
    .unwrap();
    assert_eq!(said.trim(), format!("sm-injector {version}"));
    let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), 2, "{sums}");

    // Signed: verifies with the public key, by digest and by tag.
    let insecure = ["--allow-http-registry", "--allow-insecure-registry"];
    let verify = |what: &str| {
        run(Command::new(&cosign)
            .args(["verify", "--insecure-ignore-tlog", "--key"])
            .arg(&public)
            .args(insecure)
            .arg(what))
    };
    verify(&image_ref).unwrap();
    verify(&format!("{image}:{version}")).unwrap();
    // The SBOM attestation lists the crates compiled in (not dev ones).
    let attestations = run(Command::new(&cosign)
        .args([
            "verify-attestation",
            "--insecure-ignore-tlog",
            "--type",
            "cyclonedx",
            "--key",
        ])
        .arg(&public)
        .args(insecure)
        .arg(&image_ref))
    .unwrap();
    let envelope: Value = serde_json::from_str(attestations.lines().next().unwrap()).unwrap();
    let statement: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(envelope["payload"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let crates: Vec<&str> = statement["predicate"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for c in ["kube", "rustls", "aws-sdk-secretsmanager", "tokio"] {
        assert!(crates.contains(&c), "{c} not in the SBOM");
    }
    assert!(
        !crates.contains(&"tower-test"),
        "a dev dependency in the SBOM"
    );

    // The chart's signature verifies; it installs from the registry.
    let release: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("release.json")).unwrap()).unwrap();
    let chart_digest = release["chartDigest"].as_str().unwrap();
    verify(&format!("{registry}/charts/sm-injector@{chart_digest}")).unwrap();
    let digest = image_ref.split_once('@').unwrap().1;
    let installed = run(Command::new(&helm)
        .env("KUBECONFIG", &bed.kubeconfig)
        .args(["install", "sm-injector"])
        .arg(format!("oci://{registry}/charts/sm-injector"))
        .args([
            "--version",
            version,
            "--plain-http",
            "--namespace",
            "sm-injector",
            "--create-namespace",
        ])
        .args([
            "--set",
            &format!("image.repository={image}"),
            "--set",
            &format!("image.digest={digest}"),
        ]))
    .unwrap();
    assert!(installed.contains("STATUS: deployed"), "{installed}");
    let d: Value = serde_json::from_str(
        &bed.kubectl_run(
            &[
                "-n",
                "sm-injector",
                "get",
                "deployment",
                "sm-injector",
                "-o",
                "json",
            ],
            None,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        image_ref.as_str()
    );
    // Its webhook admits pods (the binary run as the chart's ServiceAccount,
    // as the install tests do: the test bed's node pulls from no registry).
    let _installed = support::install::run_installed(bed, "sm-injector").await;
    let client = bed.client().await;
    let ns = namespace(&client, "release", &[("sm-injector.io/inject", "enabled")]).await;
    bed.put_secret(&format!("{ns}/db"), r#"{"url":"postgres://db"}"#)
        .await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "app", "annotations": {"sm-injector.io/env.DB_URL": format!("{ns}/db#url")}},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    }))
    .unwrap();
    let created = support::eventually(
        std::time::Duration::from_secs(30),
        "the webhook to admit",
        || {
            let pods = Api::<Pod>::namespaced(client.clone(), &ns);
            let pod = pod.clone();
            async move { pods.create(&PostParams::default(), &pod).await.ok() }
        },
    )
    .await;
    let env = created.spec.unwrap().containers[0].env.clone().unwrap();
    assert_eq!(env[0].name, "DB_URL");
    assert!(env[0].value_from.is_some(), "read from its backing Secret");

    // Tampered: the tag moved to an image nobody signed fails verification.
    run(Command::new(&crane).args([
        "mutate",
        &format!("{image}:{version}-amd64"),
        "--label",
        "tampered=true",
        "-t",
        &format!("{image}:{version}"),
    ]))
    .unwrap();
    let err = verify(&format!("{image}:{version}")).expect_err("a tampered image verifies");
    assert!(
        err.contains("no signatures found") || err.contains("no matching signatures"),
        "{err}"
    );
}
