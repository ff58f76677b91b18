//! The plan's unit tests: what a pod's references plan (here), and what
//! they are denied for (`denials`).

use super::*;
use crate::annotations;
use crate::backing::{self, RAW_KEY};
use crate::fetch::{CachedResults, FetchError};
use crate::record::Record;
use crate::secret::Payload;
use std::collections::BTreeMap as Map;

/// The pod's request, borrowing from annotations kept for the test's length.
fn inj(pairs: &[(&str, &str)]) -> Injection<'static> {
    let a: &'static Map<String, String> = Box::leak(Box::new(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    ));
    annotations::parse(a, Duration::from_secs(60))
        .unwrap()
        .unwrap()
}

fn value(name: &str, s: &str) -> Arc<SecretValue> {
    Arc::new(SecretValue::new(
        format!("arn:aws:secretsmanager:eu-west-1:123456789012:secret:{name}-AbCdEf"),
        name.into(),
        "v1".into(),
        Payload::String(s.into()),
    ))
}

type Entry<'a> = (&'a str, Version, Result<Arc<SecretValue>, FetchError>);

fn results(entries: Vec<Entry<'_>>) -> CachedResults {
    entries
        .into_iter()
        .map(|(id, version, r)| {
            (
                FetchKey {
                    id: id.into(),
                    version,
                },
                r,
            )
        })
        .collect()
}

fn cur() -> Version {
    Version::current()
}

mod denials;

#[test]
fn seed_example_plans_backing_secrets_and_env() {
    let i = inj(&[
        (
            "sm-injector.io/env.DISCORD_BOT_TOKEN",
            "arrakis/discord#bot_token",
        ),
        (
            "sm-injector.io/env.DISCORD_APPLICATION_ID",
            "arrakis/discord#application_id",
        ),
        ("sm-injector.io/env.DATABASE_URL", "arrakis/postgres#url"),
        ("sm-injector.io/env-from.REDIS", "arrakis/redis"),
    ]);
    let rule = AccessRule::for_namespace("arrakis", None);
    assert!(precheck(&i, &rule).is_empty());
    assert_eq!(fetch_keys(&i).len(), 3);
    let res = results(vec![
        (
            "arrakis/discord",
            cur(),
            Ok(value(
                "arrakis/discord",
                r#"{"bot_token":"t","application_id":123}"#,
            )),
        ),
        (
            "arrakis/postgres",
            cur(),
            Ok(value("arrakis/postgres", r#"{"url":"postgres://u@h/db"}"#)),
        ),
        (
            "arrakis/redis",
            cur(),
            Ok(value("arrakis/redis", r#"{"host":"r","port":6379}"#)),
        ),
    ]);
    let p = resolve(&i, &rule, &res, &Caps::default()).unwrap();
    assert_eq!(p.backing.len(), 3, "one backing Secret per secret");
    assert_eq!(p.env.len(), 3);
    let discord = backing::name("arrakis/discord", &cur(), Form::Keys);
    assert!(p.env.contains(&EnvVar {
        var: "DISCORD_APPLICATION_ID".into(),
        secret: discord.clone(),
        key: "application_id".into()
    }));
    assert_eq!(
        p.env_from,
        vec![EnvFrom {
            prefix: Some("REDIS_".into()),
            secret: backing::name("arrakis/redis", &cur(), Form::Keys)
        }]
    );
    let Content::Fresh { value } = &p
        .backing
        .iter()
        .find(|b| b.name == discord)
        .unwrap()
        .content
    else {
        panic!()
    };
    let data = backing::data(value, Form::Keys).unwrap();
    assert_eq!(data["application_id"].0, b"123");
    let rec: Record = serde_json::from_str(&p.record()).unwrap();
    assert_eq!(rec.refresh_interval, "1h");
    assert_eq!(rec.secrets.len(), 3);
}

#[test]
fn whole_value_uses_the_raw_form() {
    let i = inj(&[
        ("sm-injector.io/env.CFG", "n/cfg"),
        ("sm-injector.io/env.K", "n/cfg#k"),
    ]);
    let rule = AccessRule::for_namespace("n", None);
    let res = results(vec![("n/cfg", cur(), Ok(value("n/cfg", r#"{"k":"v"}"#)))]);
    let p = resolve(&i, &rule, &res, &Caps::default()).unwrap();
    assert_eq!(p.backing.len(), 2);
    let raw = p.env.iter().find(|e| e.var == "CFG").unwrap();
    assert_eq!(raw.key, RAW_KEY);
    assert!(raw.secret.contains("-raw-"));
}

/// References to one secret, with another secret's backing Secret sorted in
/// before it between them: each still points at, and is checked against, its
/// own secret's backing Secret.
#[test]
fn references_to_one_secret_find_its_backing_secret_after_others_sort_before_it() {
    let rule = AccessRule::for_namespace("n", None);
    let i = inj(&[
        ("sm-injector.io/env.A", "n/zeta#k1"),
        ("sm-injector.io/env.B", "n/alpha#k"),
        ("sm-injector.io/env.C", "n/zeta#k2"),
        ("sm-injector.io/env.D", "n/middle#k"),
        ("sm-injector.io/env.E", "n/zeta#k3"),
        ("sm-injector.io/env-from.Z", "n/zeta"),
    ]);
    let res = results(vec![
        (
            "n/zeta",
            cur(),
            Ok(value("n/zeta", r#"{"k1":"1","k2":"2","k3":"3"}"#)),
        ),
        ("n/alpha", cur(), Ok(value("n/alpha", r#"{"k":"a"}"#))),
        ("n/middle", cur(), Ok(value("n/middle", r#"{"k":"m"}"#))),
    ]);
    let p = resolve(&i, &rule, &res, &Caps::default()).unwrap();
    let name = |s: &str| backing::name(s, &cur(), Form::Keys);
    let names: Vec<&str> = p.backing.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, [name("n/alpha"), name("n/middle"), name("n/zeta")]);
    let env: Vec<(&str, &str, &str)> = (p.env.iter())
        .map(|e| (e.var.as_str(), e.secret.as_str(), e.key.as_str()))
        .collect();
    let (zeta, alpha, middle) = (name("n/zeta"), name("n/alpha"), name("n/middle"));
    assert_eq!(
        env,
        [
            ("A", zeta.as_str(), "k1"),
            ("B", alpha.as_str(), "k"),
            ("C", zeta.as_str(), "k2"),
            ("D", middle.as_str(), "k"),
            ("E", zeta.as_str(), "k3"),
        ]
    );
    assert_eq!(p.env_from[0].secret, zeta);

    // A key the secret lacks is found missing in that secret, not in
    // whichever backing Secret now sits where it first went.
    let i = inj(&[
        ("sm-injector.io/env.A", "n/zeta#k1"),
        ("sm-injector.io/env.B", "n/alpha#k"),
        ("sm-injector.io/env.C", "n/zeta#k"),
    ]);
    let e = resolve(&i, &rule, &res, &Caps::default()).unwrap_err();
    assert_eq!(
        e,
        ["sm-injector.io/env.C: secret \"n/zeta\" has no top-level key \"k\""]
    );
}

#[test]
fn unreachable_names_fall_back_to_the_existing_secret_but_arns_cannot() {
    let rule = AccessRule::for_namespace("n", None);
    let down = || Err(FetchError::Unreachable("timed out".into()));
    let i = inj(&[
        ("sm-injector.io/env.A", "n/s#k1"),
        ("sm-injector.io/env.B", "n/s#k2"),
    ]);
    let p = resolve(
        &i,
        &rule,
        &results(vec![("n/s", cur(), down())]),
        &Caps::default(),
    )
    .unwrap();
    assert!(matches!(p.backing[0].content, Content::Unreachable { .. }));
    let required = p.required_keys(&p.backing[0].name);
    assert_eq!(required.into_iter().collect::<Vec<_>>(), ["k1", "k2"]);

    let arn = "arn:aws:secretsmanager:eu-west-1:1:secret:n/s-AbCdEf";
    let i = inj(&[("sm-injector.io/env.A", arn)]);
    let e = resolve(
        &i,
        &rule,
        &results(vec![(arn, cur(), down())]),
        &Caps::default(),
    )
    .unwrap_err();
    assert!(e[0].contains("could not be reached"), "{e:?}");
}

#[test]
fn mounts_prefer_the_keys_form_and_name_pinned_versions() {
    let rule = AccessRule::for_namespace("n", None);
    let i = inj(&[
        ("sm-injector.io/env.A", "n/s#k"),
        ("sm-injector.io/env.B", "n/s"),
        ("sm-injector.io/env.C", "n/s?versionStage=AWSPREVIOUS#k"),
        ("sm-injector.io/mount-path", "/secrets"),
    ]);
    let res = results(vec![
        ("n/s", cur(), Ok(value("n/s", r#"{"k":"v"}"#))),
        (
            "n/s",
            Version::Stage("AWSPREVIOUS".into()),
            Ok(value("n/s", r#"{"k":"old"}"#)),
        ),
    ]);
    let p = resolve(&i, &rule, &res, &Caps::default()).unwrap();
    let paths: Vec<(&str, &str)> = p
        .mounts
        .iter()
        .map(|m| (m.path.as_str(), m.secret.as_str()))
        .collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(paths.contains(&(
        "/secrets/n/s",
        backing::name("n/s", &cur(), Form::Keys).as_str()
    )));
    assert!(paths.iter().any(|(p, _)| *p == "/secrets/n/s@AWSPREVIOUS"));
}

#[test]
fn arn_references_keep_their_account_in_the_name_and_the_record() {
    let rule = AccessRule::for_namespace("n", None);
    let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:n/s-AbCdEf";
    let i = inj(&[
        ("sm-injector.io/env.A", &format!("{arn}#k")),
        ("sm-injector.io/env.B", "n/s#k"),
    ]);
    let res = results(vec![
        (arn, cur(), Ok(value("n/s", r#"{"k":"v"}"#))),
        ("n/s", cur(), Ok(value("n/s", r#"{"k":"v"}"#))),
    ]);
    let p = resolve(&i, &rule, &res, &Caps::default()).unwrap();
    assert_eq!(
        p.backing.len(),
        2,
        "by ARN and by name: two backing Secrets"
    );
    let rec: Record = serde_json::from_str(&p.record()).unwrap();
    let by_arn = rec.secrets.iter().find(|e| e.arn.is_some()).unwrap();
    assert_eq!(by_arn.arn.as_deref(), Some(arn));
    let by_name = rec.secrets.iter().find(|e| e.arn.is_none()).unwrap();
    assert_eq!((&by_arn.backing, &by_name.backing), (&None, &None));
    // The reader derives the backing Secrets' names from the rest.
    let annotations = [(crate::annotations::INJECTED.to_string(), p.record())].into();
    let limits = crate::refresh::index::Limits {
        max_entries: 10,
        max_calls: 10,
        min_interval: std::time::Duration::from_secs(1),
        max_records_per_namespace: 10,
        max_secrets_per_namespace: 10,
    };
    let (entries, _, _) = crate::refresh::index::read_record(&annotations, limits)
        .unwrap()
        .unwrap();
    let mut names: Vec<&str> = entries.iter().map(|e| e.backing.as_str()).collect();
    let mut planned: Vec<&str> = p.backing.iter().map(|b| b.name.as_str()).collect();
    names.sort();
    planned.sort();
    assert_eq!(names, planned);
    for (by, name) in [
        (
            true,
            backing::name_scoped("n/s", Some("eu-west-1:123456789012"), &cur(), Form::Keys),
        ),
        (false, backing::name("n/s", &cur(), Form::Keys)),
    ] {
        let e = entries.iter().find(|e| (e.fetch.id == arn) == by).unwrap();
        assert_eq!(e.backing, name, "by ARN: {by}");
    }
    assert!(!p.record().contains("\"arn\":null"));
}

#[test]
fn calls_count_batches_of_current_versions_and_each_pin() {
    let k = |id: &str, v: Version| FetchKey {
        id: id.into(),
        version: v,
    };
    let mut keys: Vec<FetchKey> = (0..41).map(|i| k(&format!("n/s{i}"), cur())).collect();
    assert_eq!(aws_calls(&keys), 3);
    keys.push(k("n/a", Version::Id("v1".into())));
    keys.push(k("n/a", Version::Stage("AWSPREVIOUS".into())));
    assert_eq!(aws_calls(&keys), 5);
    assert_eq!(aws_calls(&[]), 0);
}
