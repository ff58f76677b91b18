//! What is refused, and how the message names it: bad annotations, secret
//! problems, the access rule by name and by ARN, the namespace annotation.

use super::*;

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn bad_annotations_are_denied_naming_the_annotation() {
    let (_bed, client, ns, inj) = setup("bad-input").await;
    let cases: Vec<(Value, Value, &[&str])> = vec![
        (
            json!({"sm-injector.io/env.1BAD": format!("{ns}/x#k")}),
            one_container(),
            &[
                "sm-injector.io/env.1BAD",
                "not a valid environment variable name",
            ],
        ),
        (
            json!({"sm-injector.io/envv.TOKEN": format!("{ns}/x#k")}),
            one_container(),
            &[
                "sm-injector.io/envv.TOKEN",
                "unknown sm-injector annotation",
            ],
        ),
        (
            json!({"sm-injector.io/env.A": format!("{ns}/x?stage=AWSPREVIOUS")}),
            one_container(),
            &["sm-injector.io/env.A", "versionStage"],
        ),
        (
            json!({"sm-injector.io/env.A": format!("{ns}/x#k"), "sm-injector.io/refresh-interval": "soon"}),
            one_container(),
            &["sm-injector.io/refresh-interval", "not a duration"],
        ),
        (
            json!({"sm-injector.io/env.A": format!("{ns}/x#k"), "sm-injector.io/refresh-interval": "30s"}),
            one_container(),
            &[
                "sm-injector.io/refresh-interval",
                "shorter than the minimum of 1m",
            ],
        ),
        (
            json!({"sm-injector.io/env.A": format!("{ns}/x#k"), "sm-injector.io/containers": "app,nope"}),
            one_container(),
            &[
                "sm-injector.io/containers",
                "no container named \"nope\"",
                "it has: app",
            ],
        ),
        (
            json!({"sm-injector.io/env.A": "has space"}),
            one_container(),
            &["sm-injector.io/env.A", "cannot contain"],
        ),
    ];
    for (i, (anns, containers, needles)) in cases.into_iter().enumerate() {
        let msg = create(
            &client,
            &ns,
            &pod(&format!("bad-{i}"), anns.clone(), containers),
        )
        .await
        .expect_err(&format!("{anns} must be denied"));
        assert!(msg.contains("denied the request: sm-injector:"), "{msg}");
        for n in needles {
            assert!(msg.contains(n), "{anns}: {n:?} not in {msg:?}");
        }
    }
    assert!(managed_secrets(&client, &ns).await.is_empty());
    inj.stop(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn secret_problems_are_denied_with_the_reason() {
    let (bed, client, ns, inj) = setup("bad-secret").await;
    bed.put_secret(&format!("{ns}/json"), r#"{"k":"v"}"#).await;
    bed.put_secret(&format!("{ns}/plain"), "not json").await;
    let nope = format!("secret \"{ns}/nope\" not found in Secrets Manager");
    let nokey = format!("secret \"{ns}/json\" has no top-level key \"other\"");
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (
            json!({"sm-injector.io/env.A": format!("{ns}/nope#k")}),
            vec!["sm-injector.io/env.A", &nope],
        ),
        (
            json!({"sm-injector.io/env.A": format!("{ns}/json#other")}),
            vec![&nokey],
        ),
        (
            json!({"sm-injector.io/env-from": format!("{ns}/plain")}),
            vec![
                "sm-injector.io/env-from",
                "is not a JSON object, which env-from needs",
            ],
        ),
        (
            json!({"sm-injector.io/env.A": format!("{ns}/plain#k")}),
            vec!["is not a JSON object, so"],
        ),
    ];
    for (i, (anns, needles)) in cases.into_iter().enumerate() {
        let msg = create(
            &client,
            &ns,
            &pod(&format!("p-{i}"), anns.clone(), one_container()),
        )
        .await
        .expect_err(&format!("{anns} must be denied"));
        for n in needles {
            assert!(msg.contains(n), "{anns}: {n:?} not in {msg:?}");
        }
    }
    assert!(managed_secrets(&client, &ns).await.is_empty());
    inj.stop(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn access_rule_denies_other_namespaces_secrets_by_name_and_by_arn() {
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace(&client, "tenant-a", &[INJECT]).await;
    let other = namespace(&client, "tenant-b", &[INJECT]).await;
    let inj = injector::start(bed, &[&ns, &other], Options::default()).await;
    let arn = bed
        .put_secret(&format!("{other}/db"), r#"{"password":"b-secret"}"#)
        .await;

    let msg = create_one(
        &client,
        &ns,
        "by-name",
        json!({"sm-injector.io/env.PW": format!("{other}/db#password")}),
    )
    .await
    .unwrap_err();
    for n in [
        "sm-injector.io/env.PW",
        &format!("reference \"{other}/db#password\" is not allowed in namespace \"{ns}\""),
        &format!("\"{ns}/*\" (the default rule"),
    ] {
        assert!(msg.contains(n), "{n:?} not in {msg:?}");
    }
    let msg = create_one(
        &client,
        &ns,
        "by-arn",
        json!({"sm-injector.io/env.PW": format!("{arn}#password")}),
    )
    .await
    .unwrap_err();
    assert!(
        msg.contains(&format!(
            "(secret \"{other}/db\") is not allowed in namespace \"{ns}\""
        )),
        "{msg}"
    );
    assert!(!msg.contains("b-secret"));
    // The owner may use it, by ARN too.
    let p = create_one(
        &client,
        &other,
        "owner",
        json!({"sm-injector.io/env.PW": format!("{arn}#password")}),
    )
    .await
    .unwrap();
    let env = resolve_env(&client, &other, &p.spec.unwrap().containers[0]).await;
    assert_eq!(env["PW"], b"b-secret");
    assert!(
        managed_secrets(&client, &ns).await.is_empty(),
        "nothing written for the denied tenant"
    );
    inj.stop(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn namespace_annotation_widens_and_narrows_access() {
    let bed = testbed();
    let client = bed.client().await;
    let shared = format!("shared-{}", std::process::id());
    let wide = namespace_with(
        &client,
        "wide",
        &[INJECT],
        &[(
            "sm-injector.io/allowed-secrets",
            &format!("wide-*/*, {shared}/*"),
        )],
    )
    .await;
    let narrow = namespace_with(
        &client,
        "narrow",
        &[INJECT],
        &[("sm-injector.io/allowed-secrets", "narrow-*/only")],
    )
    .await;
    let inj = injector::start(bed, &[&wide, &narrow], Options::default()).await;
    bed.put_secret(&format!("{shared}/smtp"), r#"{"password":"smtp-pw"}"#)
        .await;
    bed.put_secret(&format!("{narrow}/only"), r#"{"k":"only-v"}"#)
        .await;
    bed.put_secret(&format!("{narrow}/other"), r#"{"k":"other-v"}"#)
        .await;

    let p = create_one(
        &client,
        &wide,
        "w",
        json!({"sm-injector.io/env.SMTP": format!("{shared}/smtp#password")}),
    )
    .await
    .unwrap();
    assert_eq!(
        resolve_env(&client, &wide, &p.spec.unwrap().containers[0]).await["SMTP"],
        b"smtp-pw"
    );

    create_one(
        &client,
        &narrow,
        "n1",
        json!({"sm-injector.io/env.K": format!("{narrow}/only#k")}),
    )
    .await
    .unwrap();
    let msg = create_one(
        &client,
        &narrow,
        "n2",
        json!({"sm-injector.io/env.K": format!("{narrow}/other#k")}),
    )
    .await
    .unwrap_err();
    assert!(
        msg.contains("\"narrow-*/only\" (its Namespace annotation sm-injector.io/allowed-secrets)"),
        "{msg}"
    );
    inj.stop(&client).await;
}
