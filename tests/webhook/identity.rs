//! Reading with the workload's own AWS identity (SPEC section 4), against
//! moto with IAM enforced and an auditing STS/Secrets Manager proxy
//! (tests/support/iam.rs): sm-injector's own user has no Secrets Manager
//! permission at all.

use super::*;
use k8s_openapi::api::core::v1::ServiceAccount;
use support::iam::IamAws;

const ROLE: &str = "eks.amazonaws.com/role-arn";

async fn service_account(client: &kube::Client, ns: &str, name: &str, role: Option<String>) {
    let sa: ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": role.map(|r| json!({ROLE: r}))}
    }))
    .unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
}

fn running_as(name: &str, account: &str, reference: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"sm-injector.io/env.PASSWORD": reference}},
        "spec": {"serviceAccountName": account, "containers": one_container()}
    }))
    .unwrap()
}

#[tokio::test]
#[ignore = "needs the test bed: run ./tests/run"]
async fn each_workload_reads_with_its_own_role_and_the_audit_names_it() {
    let bed = testbed();
    let client = bed.client().await;
    let ns = namespace_with(
        &client,
        "identity",
        &[INJECT],
        &[("sm-injector.io/aws-identity", "serviceaccount")],
    )
    .await;
    let own_ns = namespace(&client, "identity-own", &[INJECT]).await;
    let secret = format!("{ns}/db");
    let own_secret = format!("{own_ns}/db");
    let aws = IamAws::start(
        bed,
        &[
            (&secret, r#"{"password":"p1"}"#),
            (&own_secret, r#"{"password":"p2"}"#),
        ],
    )
    .await;
    service_account(&client, &ns, "reader", Some(aws.role_arn("secret-reader"))).await;
    service_account(&client, &ns, "blocked", Some(aws.role_arn("no-secrets"))).await;
    service_account(&client, &ns, "plain", None).await;
    let inj = injector::start(
        bed,
        &[&ns, &own_ns],
        Options {
            aws_endpoint: Some(aws.url.clone()),
            sts_endpoint: Some(aws.url.clone()),
            aws_credentials: Some(aws.own.clone()),
            ..Default::default()
        },
    )
    .await;
    let reference = format!("{secret}#password");

    // A Deployment's worth of pods of the reader: each gets the value read
    // with the reader's role; one exchange and one read serve them all.
    for i in 0..3 {
        let p = create(
            &client,
            &ns,
            &running_as(&format!("reader-{i}"), "reader", &reference),
        )
        .await
        .expect("the reader's role may read");
        let env = resolve_env(&client, &ns, &p.spec.unwrap().containers[0]).await;
        assert_eq!(env["PASSWORD"], b"p1");
    }
    let session = format!("{ns}.reader");
    let audit = aws.audit();
    let exchanges: Vec<_> = audit
        .exchanges
        .iter()
        .filter(|e| e.session == session)
        .collect();
    assert_eq!(exchanges.len(), 1, "{:?}", audit.exchanges);
    let e = exchanges[0];
    assert_eq!(e.role, aws.role_arn("secret-reader"));
    assert_eq!(e.audience, ["sts.amazonaws.com"]);
    assert_eq!(e.subject, format!("system:serviceaccount:{ns}:reader"));
    assert!(e.key.is_some(), "{e:?}");
    let principal = format!("role/secret-reader/{session}");
    let reads: Vec<_> = audit
        .reads
        .iter()
        .filter(|r| r.principal == principal)
        .collect();
    assert_eq!(reads.len(), 1, "{:?}", audit.reads);
    assert_eq!(
        (reads[0].status, reads[0].secrets.clone()),
        (200, vec![secret.clone()])
    );

    // Another workload of the same namespace, whose role may not read:
    // refused by AWS, the message naming its role and session.
    let denied = create(&client, &ns, &running_as("blocked", "blocked", &reference))
        .await
        .map(|_| format!("admitted; audit {:?}", aws.audit()))
        .expect_err("the no-secrets role may not read");
    let expected = format!(
        "role {} (session {ns}.blocked) may not read {secret}",
        aws.role_arn("no-secrets")
    );
    assert!(denied.contains(&expected), "{denied}");
    assert!(!denied.contains("p1"), "{denied}");

    // A ServiceAccount without a role is a clear denial, with no AWS call.
    let denied = create(&client, &ns, &running_as("plain", "plain", &reference))
        .await
        .expect_err("no role");
    assert!(
        denied.contains(&format!("ServiceAccount plain has no {ROLE} annotation")),
        "{denied}"
    );
    assert!(
        !aws.audit()
            .exchanges
            .iter()
            .any(|e| e.session.ends_with(".plain"))
    );

    // In a namespace left to sm-injector's own identity, its own user (no
    // Secrets Manager permission) is refused by AWS.
    let denied = create_one(
        &client,
        &own_ns,
        "own",
        json!({"sm-injector.io/env.PASSWORD": format!("{own_secret}#password")}),
    )
    .await
    .expect_err("sm-injector's own user may not read");
    assert!(
        denied.contains("is not authorized to perform: secretsmanager:BatchGetSecretValue"),
        "{denied}"
    );

    // The audit trail: every read that succeeded was signed by the reader's
    // role; none by an unknown key, none by sm-injector's own user.
    let audit = aws.audit();
    println!("audit: who read which secret");
    for r in &audit.reads {
        println!(
            "  {:<45} {:<22} {:?} {}",
            r.principal, r.action, r.secrets, r.status
        );
    }
    assert!(
        audit.reads.iter().all(|r| r.principal != "unknown"),
        "{:?}",
        audit.reads
    );
    for r in audit.reads.iter().filter(|r| r.status == 200) {
        assert_eq!(r.principal, principal, "{r:?}");
    }
    assert!(
        audit
            .reads
            .iter()
            .any(|r| r.principal == "own" && r.status >= 400)
    );
    assert!(
        audit
            .reads
            .iter()
            .any(|r| r.principal == format!("role/no-secrets/{ns}.blocked") && r.status >= 400)
    );
    // `sm-injector status` says whose identity read each copy.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sm-injector"))
        .args(["status", "--namespace", &ns, "-o", "json"])
        .env("KUBECONFIG", &bed.kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        rows[0]["readBy"],
        json!(["serviceaccount/reader"]),
        "{rows:?}"
    );
    inj.stop(&client).await;
}
