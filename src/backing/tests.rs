use super::*;
use crate::secret::Payload;

#[test]
fn names_are_readable_dns_labels_and_distinct() {
    let cur = Version::current();
    let n = name("arrakis/discord", &cur, Form::Keys);
    assert!(n.starts_with("sm-arrakis-discord-"), "{n}");
    assert_eq!(n.len(), "sm-arrakis-discord-".len() + 16);
    let prev = name(
        "arrakis/discord",
        &Version::Stage("AWSPREVIOUS".into()),
        Form::Keys,
    );
    assert!(
        prev.starts_with("sm-arrakis-discord-awsprevious-"),
        "{prev}"
    );
    let raw = name("arrakis/discord", &cur, Form::Raw);
    assert!(raw.starts_with("sm-arrakis-discord-raw-"), "{raw}");
    let pinned = name("arrakis/discord", &Version::Id("abc".into()), Form::Keys);
    let pinned2 = name("arrakis/discord", &Version::Id("abd".into()), Form::Keys);
    assert_ne!(pinned, pinned2);
    assert_ne!(name("a/b", &cur, Form::Keys), name("a-b", &cur, Form::Keys));
    let long = name(&"x/".repeat(200), &cur, Form::Raw);
    assert!(long.len() <= 63, "{long}");
    for n in [
        &n,
        &prev,
        &raw,
        &pinned,
        &long,
        &name("@@", &cur, Form::Keys),
    ] {
        assert!(
            n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !n.ends_with('-'),
            "{n}"
        );
    }
}

#[test]
fn names_are_stable_across_releases() {
    // Backing Secrets outlive a release: an upgrade must find them under
    // the same names.
    let names = [
        name("arrakis/discord", &Version::current(), Form::Keys),
        name("arrakis/discord", &Version::Id("abc".into()), Form::Raw),
        name_scoped(
            "db",
            Some("eu-west-1:123456789012"),
            &Version::Stage("AWSPREVIOUS".into()),
            Form::Keys,
        ),
        name("@@", &Version::current(), Form::Keys),
    ];
    assert_eq!(
        names,
        [
            "sm-arrakis-discord-4ce282e9f42db0fd",
            "sm-arrakis-discord-pinned-raw-9395d8814dbf24ad",
            "sm-db-awsprevious-4a6e8a6027e68965",
            "sm-83c742a1661e2fd0"
        ]
    );
    // What earlier releases named them is still derived, for their records.
    let legacy = [
        legacy_name_scoped("arrakis/discord", None, &Version::current(), Form::Keys),
        legacy_name_scoped(
            "arrakis/discord",
            None,
            &Version::Id("abc".into()),
            Form::Raw,
        ),
        legacy_name_scoped(
            "db",
            Some("eu-west-1:123456789012"),
            &Version::Stage("AWSPREVIOUS".into()),
            Form::Keys,
        ),
        legacy_name_scoped("@@", None, &Version::current(), Form::Keys),
    ];
    assert_eq!(
        legacy,
        [
            "sm-arrakis-discord-4ce282e9",
            "sm-arrakis-discord-pinned-raw-9395d881",
            "sm-db-awsprevious-4a6e8a60",
            "sm-83c742a1"
        ]
    );
    // Long names still fit a DNS label, the full hash kept.
    let long = name(&"x".repeat(300), &Version::current(), Form::Raw);
    assert_eq!(long.len(), 63, "{long}");
}

#[test]
fn object_carries_labels_annotations_and_data() {
    let v = SecretValue::new(
        "arn:x".into(),
        "n/s".into(),
        "v7".into(),
        Payload::String(r#"{"a":"1","b":2}"#.into()),
    );
    let d = data(&v, Form::Keys).unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(d["b"].0, b"2");
    let s = object(
        "ns",
        "sm-n-s-1",
        &v,
        &Version::current(),
        Form::Keys,
        "2026-01-01T00:00:00Z",
    )
    .unwrap();
    assert_eq!(s.data.as_ref(), Some(&d));
    let m = &s.metadata;
    assert_eq!(m.labels.as_ref().unwrap()[MANAGED_BY_LABEL], "sm-injector");
    let a = m.annotations.as_ref().unwrap();
    assert_eq!(a[ANN_ARN], "arn:x");
    assert_eq!(a[ANN_VERSION_ID], "v7");
    assert!(s.string_data.is_none());
    let raw = data(&v, Form::Raw).unwrap();
    assert_eq!(raw[RAW_KEY].0, br#"{"a":"1","b":2}"#);
}

#[test]
fn arn_references_of_other_accounts_get_their_own_backing_secret() {
    let cur = Version::current();
    let arn = "arn:aws:secretsmanager:eu-west-1:999999999999:secret:team/db-AbCdEf";
    assert_eq!(arn_scope(arn).as_deref(), Some("eu-west-1:999999999999"));
    assert_eq!(arn_scope("team/db"), None);
    assert_eq!(arn_scope("arn:aws:s3:::bucket"), None);
    let local = name("team/db", &cur, Form::Keys);
    let remote = name_scoped("team/db", arn_scope(arn).as_deref(), &cur, Form::Keys);
    assert_ne!(local, remote);
    assert!(remote.starts_with("sm-team-db-"), "{remote}");
}

#[test]
fn a_values_backing_names_are_the_derived_ones_for_every_form_scope_and_version() {
    let arn = "arn:aws:secretsmanager:eu-west-1:999999999999:secret:team/db-AbCdEf";
    let v = SecretValue::new(
        arn.into(),
        "team/db".into(),
        "v1".into(),
        Payload::String("{}".into()),
    );
    let versions = [
        Version::current(),
        Version::Stage("AWSPREVIOUS".into()),
        Version::Id("v1".into()),
    ];
    // Twice over: the second round reads what the first kept, and a slot
    // kept for one version still gives another version its own name.
    for _ in 0..2 {
        for version in &versions {
            for form in [Form::Keys, Form::Raw, Form::KeysBase64, Form::RawBase64] {
                assert_eq!(
                    name_of(&v, false, version, form),
                    name_scoped("team/db", None, version, form)
                );
                assert_eq!(
                    name_of(&v, true, version, form),
                    name_scoped("team/db", arn_scope(arn).as_deref(), version, form)
                );
            }
        }
    }
    assert_ne!(
        name_of(&v, true, &versions[0], Form::Keys),
        name_of(&v, false, &versions[0], Form::Keys)
    );
}
