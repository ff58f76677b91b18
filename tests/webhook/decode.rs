//! `decode=base64` through the real API server (SPEC section 3): a base64
//! value in Secrets Manager (the seed's ScyllaDB bundle) reaches the pod's
//! env and its mounted files as the bytes it encodes; a value that is not
//! base64 is a denial naming the key and the reference.

use super::*;

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn a_base64_bundle_reaches_env_and_files_decoded() {
    let (bed, client, ns, inj) = setup("decode").await;
    // Bytes that are not UTF-8, as a certificate bundle or keystore holds.
    let bundle: Vec<u8> = vec![0x00, 0xff, 0x10, 0x80, b'\n', 0xfe];
    let encoded = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&bundle)
    };
    bed.put_secret(
        &format!("{ns}/scylladb"),
        &json!({"bundle": encoded, "host": "scylla.internal"}).to_string(),
    )
    .await;
    let p = create_one(
        &client,
        &ns,
        "scylla",
        json!({
            "sm-injector.io/env.SCYLLA_BUNDLE": format!("{ns}/scylladb?decode=base64#bundle"),
            "sm-injector.io/env.SCYLLA_HOST": format!("{ns}/scylladb#host"),
            "sm-injector.io/env.SCYLLA_BUNDLE_B64": format!("{ns}/scylladb#bundle"),
            "sm-injector.io/mount-path": "/etc/scylla",
        }),
    )
    .await
    .expect("admitted");
    let spec = p.spec.clone().unwrap();
    let env = resolve_env(&client, &ns, &spec.containers[0]).await;
    assert_eq!(env["SCYLLA_BUNDLE"], bundle);
    assert_eq!(env["SCYLLA_HOST"], b"scylla.internal");
    assert_eq!(env["SCYLLA_BUNDLE_B64"], encoded.as_bytes());
    // The mounted directory holds the decoded form: the file `bundle` is the
    // bytes (the plain `host` is not base64, so it is not a file there).
    let mount = spec.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == format!("/etc/scylla/{ns}/scylladb"))
        .expect("the secret's directory");
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    let secret = volume.secret.as_ref().unwrap().secret_name.clone().unwrap();
    let held = Api::<Secret>::namespaced(client.clone(), &ns)
        .get(&secret)
        .await
        .unwrap();
    let annotations = held.metadata.annotations.unwrap();
    assert_eq!(annotations["sm-injector.io/form"], "keys-base64");
    let data = held.data.unwrap();
    assert_eq!(data["bundle"].0, bundle);
    assert!(!data.contains_key("host"), "{:?}", data.keys());
    // No value, encoded or not, in the pod spec.
    let text = serde_json::to_string(&p).unwrap();
    assert!(!text.contains(&encoded) && !text.contains("scylla.internal"));

    // Not base64: denied, naming the key, the secret and the option.
    let denied = create_one(
        &client,
        &ns,
        "bad",
        json!({"sm-injector.io/env.HOST": format!("{ns}/scylladb?decode=base64#host")}),
    )
    .await
    .expect_err("host is not base64");
    assert!(
        denied.contains(&format!(
            "sm-injector.io/env.HOST: the key \"host\" of secret \"{ns}/scylladb\" is not base64, which decode=base64 needs"
        )),
        "{denied}"
    );
    // An unknown decoding is a bad reference.
    let denied = create_one(
        &client,
        &ns,
        "hex",
        json!({"sm-injector.io/env.B": format!("{ns}/scylladb?decode=hex#bundle")}),
    )
    .await
    .expect_err("decode=hex");
    assert!(
        denied.contains("unknown decoding \"decode=hex\""),
        "{denied}"
    );
    inj.stop(&client).await;
}
