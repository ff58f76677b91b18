//! What a pod's references are denied for: the access rule, the content of
//! their secrets, the caps, paths out of the mount.

use super::*;

#[test]
fn env_from_of_a_secret_with_too_many_keys_is_denied_naming_the_cap() {
    let i = inj(&[("sm-injector.io/env-from", "n/wide")]);
    let rule = AccessRule::for_namespace("n", None);
    let wide: serde_json::Map<String, serde_json::Value> =
        (0..6).map(|k| (format!("K{k}"), "v".into())).collect();
    let res = results(vec![(
        "n/wide",
        cur(),
        Ok(value(
            "n/wide",
            &serde_json::Value::Object(wide).to_string(),
        )),
    )]);
    let caps = Caps {
        env_from_keys: 5,
        ..Caps::default()
    };
    let e = resolve(&i, &rule, &res, &caps).unwrap_err();
    assert_eq!(
        e,
        vec![
            "sm-injector.io/env-from: secret \"n/wide\" has 6 keys; env-from injects at most 5 (--max-env-from-keys)"
        ]
    );
    let caps = Caps {
        env_from_keys: 6,
        ..Caps::default()
    };
    assert_eq!(resolve(&i, &rule, &res, &caps).unwrap().env_from.len(), 1);
}

#[test]
fn access_rule_is_applied_to_names_and_to_what_an_arn_resolves_to() {
    let rule = AccessRule::for_namespace("team-a", None);
    let i = inj(&[("sm-injector.io/env.X", "team-b/db#pw")]);
    let d = precheck(&i, &rule);
    assert_eq!(d.len(), 1);
    assert!(
        d[0].contains("sm-injector.io/env.X")
            && d[0].contains("\"team-b/db#pw\"")
            && d[0].contains("\"team-a\"")
            && d[0].contains("team-a/*"),
        "{d:?}"
    );

    let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:team-b/db-AbCdEf";
    let i = inj(&[("sm-injector.io/env.X", &format!("{arn}#pw"))]);
    assert!(precheck(&i, &rule).is_empty(), "ARNs wait for AWS's answer");
    let res = results(vec![(arn, cur(), Ok(value("team-b/db", r#"{"pw":"x"}"#)))]);
    let e = resolve(&i, &rule, &res, &Caps::default()).unwrap_err();
    assert!(
        e[0].contains("(secret \"team-b/db\") is not allowed in namespace \"team-a\""),
        "{e:?}"
    );
}

#[test]
fn content_problems_are_denials() {
    let rule = AccessRule::for_namespace("n", None);
    let i = inj(&[
        ("sm-injector.io/env.A", "n/plain#k"),
        ("sm-injector.io/env.B", "n/json#nokey"),
        ("sm-injector.io/env-from", "n/plain"),
        ("sm-injector.io/env-from.P", "n/dotted"),
        ("sm-injector.io/env.C", "n/gone"),
    ]);
    let res = results(vec![
        ("n/plain", cur(), Ok(value("n/plain", "just text"))),
        ("n/json", cur(), Ok(value("n/json", r#"{"k":"v"}"#))),
        ("n/dotted", cur(), Ok(value("n/dotted", r#"{"a.b":"v"}"#))),
        ("n/gone", cur(), Err(FetchError::NotFound)),
    ]);
    let e = resolve(&i, &rule, &res, &Caps::default()).unwrap_err();
    let all = e.join("\n");
    assert_eq!(e.len(), 5, "{all}");
    assert!(all.contains("sm-injector.io/env.A: secret \"n/plain\" is not a JSON object, so \"n/plain#k\" cannot select a key"), "{all}");
    assert!(
        all.contains("sm-injector.io/env.B: secret \"n/json\" has no top-level key \"nokey\""),
        "{all}"
    );
    assert!(
        all.contains(
            "sm-injector.io/env-from: secret \"n/plain\" is not a JSON object, which env-from needs"
        ),
        "{all}"
    );
    assert!(all.contains("\"a.b\""), "{all}");
    assert!(
        all.contains("sm-injector.io/env.C: secret \"n/gone\" not found in Secrets Manager"),
        "{all}"
    );
}

#[test]
fn more_backing_secrets_than_the_cap_are_denied() {
    let rule = AccessRule::for_namespace("n", None);
    let n = MAX_BACKING_PER_POD + 1;
    let pairs: Vec<(String, String)> = (0..n)
        .map(|i| (format!("sm-injector.io/env.V{i}"), format!("n/s{i}#k")))
        .collect();
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let i = inj(&refs);
    let names: Vec<String> = (0..n).map(|i| format!("n/s{i}")).collect();
    let res = results(
        names
            .iter()
            .map(|id| (id.as_str(), cur(), Ok(value(id, r#"{"k":"v"}"#))))
            .collect(),
    );
    let e = resolve(&i, &rule, &res, &Caps::default()).unwrap_err();
    assert_eq!(
        e,
        vec![format!(
            "the pod's references need {n} backing Secrets; at most {MAX_BACKING_PER_POD} per pod"
        )]
    );
}

#[test]
fn secret_names_cannot_mount_outside_the_mount_path() {
    let rule = AccessRule::for_namespace("n", None);
    let sneaky = "n/../../etc/ssl";
    let res = results(vec![(sneaky, cur(), Ok(value(sneaky, r#"{"k":"v"}"#)))]);
    let with_mount = inj(&[
        ("sm-injector.io/env.A", &format!("{sneaky}#k")),
        ("sm-injector.io/mount-path", "/secrets"),
    ]);
    let e = resolve(&with_mount, &rule, &res, &Caps::default()).unwrap_err();
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("sm-injector.io/mount-path: secret \"n/../../etc/ssl\" cannot be mounted under \"/secrets\""),
        "{e:?}"
    );
    // As an env var only, such a name is fine: no path is made from it.
    let env_only = inj(&[("sm-injector.io/env.A", &format!("{sneaky}#k"))]);
    assert!(resolve(&env_only, &rule, &res, &Caps::default()).is_ok());
}
