//! The write rule (SPEC section 5): who may change a backing Secret, and to
//! what. Pure: the I/O around it ([`super::write_backing`]) reads the Secret,
//! asks [`decide`], and carries the answer out.
//!
//! - **The admission path creates** a backing Secret that is missing, and
//!   otherwise answers against whatever the Secret holds: it never moves a
//!   Secret from one version to another. When what it fetched differs from
//!   what the Secret holds, it tells the refresher ([`Action::Differs`]).
//! - **Only the refresher's leader replaces**: each pass, it makes the Secret
//!   hold exactly what Secrets Manager holds now, whatever made it differ (a
//!   rotation, a hand edit, a restore, a deposed writer's late write).
//!
//! So no ordering depends on clocks agreeing: a version reaches a Secret only
//! through its creation or through the leader, which writes what Secrets
//! Manager answered in the same pass.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

use crate::backing::{
    ANN_FORM, ANN_NAME, ANN_REFRESHED, ANN_SELECTOR, ANN_VERSION_ID, MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
};

/// Who is writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// An admission (any replica): creates what is missing, changes nothing.
    Admission,
    /// The refresher on the replica that holds the Lease.
    Leader,
}

/// How an existing backing Secret compares with what it should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// Exactly what the value gives (the refresh time aside).
    Same,
    /// The same version, other content: edited by hand, keys removed, its
    /// source annotations or label changed.
    Drifted,
    /// Another version.
    OtherVersion { version_id: String },
}

/// What to do with the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create,
    Nothing,
    /// Replace it under the `resourceVersion` that was read (the leader only).
    Replace {
        rotation: bool,
    },
    /// The admission leaves it as it is; the refresher is told.
    Differs {
        version_id: String,
    },
}

/// The version a backing Secret holds, from its annotations.
pub fn version_of(s: &Secret) -> Option<&str> {
    s.metadata
        .annotations
        .as_ref()?
        .get(ANN_VERSION_ID)
        .map(String::as_str)
}

/// Whether the Secret carries sm-injector's managed-by label.
pub fn managed(s: &Secret) -> bool {
    s.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY_VALUE)
}

/// Whether `existing` is the backing Secret of the same secret, version
/// selector and form as `desired`, as far as it says (a Secret whose source
/// annotations were removed is drift, repaired). Two references whose names
/// hashed alike would otherwise overwrite each other's Secret; it is refused
/// instead ([`super::write_backing`]).
pub fn same_source(existing: &Secret, desired: &Secret) -> bool {
    let get = |k: &str| annotation(desired, k).unwrap_or_default();
    holds_source(existing, get(ANN_NAME), get(ANN_SELECTOR), get(ANN_FORM))
}

/// Whether `s` says it holds `name` at `selector` in `form` (or says nothing).
pub fn holds_source(s: &Secret, name: &str, selector: &str, form: &str) -> bool {
    [(ANN_NAME, name), (ANN_SELECTOR, selector), (ANN_FORM, form)]
        .iter()
        .all(|(k, want)| annotation(s, k).is_none_or(|v| v == *want))
}

fn annotation<'a>(s: &'a Secret, k: &str) -> Option<&'a str> {
    s.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(k))
        .map(String::as_str)
}

/// Compares what `existing` holds with `desired` ([`crate::backing::object`]):
/// the version, the data, the type, the managed-by label and every
/// annotation sm-injector writes except the refresh time.
pub fn compare(existing: &Secret, desired: &Secret) -> Held {
    let theirs = version_of(existing);
    let ours = version_of(desired).unwrap_or_default();
    if theirs != Some(ours) {
        return Held::OtherVersion {
            version_id: theirs.unwrap_or_default().to_string(),
        };
    }
    let empty = BTreeMap::new();
    let their_ann = existing.metadata.annotations.as_ref().unwrap_or(&empty);
    let annotations_hold = desired
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != ANN_REFRESHED)
        .all(|(k, v)| their_ann.get(k) == Some(v));
    let data_holds = existing.data.as_ref().unwrap_or(&BTreeMap::new())
        == desired.data.as_ref().unwrap_or(&BTreeMap::new());
    let type_holds = existing.type_.as_deref().unwrap_or("Opaque")
        == desired.type_.as_deref().unwrap_or("Opaque");
    if annotations_hold && data_holds && type_holds && managed(existing) {
        Held::Same
    } else {
        Held::Drifted
    }
}

/// The rule: what `writer` does given what exists (`None`: absent) and what
/// Secrets Manager answered (`desired`). A Secret that is not sm-injector's
/// is refused before this is asked.
pub fn decide(writer: Writer, existing: Option<&Secret>, desired: &Secret) -> Action {
    let Some(existing) = existing else {
        return Action::Create;
    };
    match (compare(existing, desired), writer) {
        (Held::Same, _) => Action::Nothing,
        (Held::Drifted, Writer::Leader) => Action::Replace { rotation: false },
        (Held::OtherVersion { .. }, Writer::Leader) => Action::Replace { rotation: true },
        (Held::Drifted, Writer::Admission) => Action::Differs {
            version_id: version_of(existing).unwrap_or_default().to_string(),
        },
        (Held::OtherVersion { version_id }, Writer::Admission) => Action::Differs { version_id },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backing::{self, ANN_REFRESHED, Form};
    use crate::reference::Version;
    use crate::secret::{Payload, SecretValue};
    use k8s_openapi::ByteString;

    fn desired(version: &str, pw: &str) -> Secret {
        let v = SecretValue::new(
            "arn:aws:secretsmanager:us-east-1:1:secret:n/db-AbCdEf".into(),
            "n/db".into(),
            version.into(),
            Payload::String(format!(r#"{{"pw":"{pw}"}}"#)),
        );
        backing::object("n", "sm-n-db-1", &v, &Version::current(), Form::Keys, "t0").unwrap()
    }

    #[test]
    fn only_the_leader_moves_a_version_and_neither_looks_at_a_clock() {
        let v1 = desired("v1", "a");
        let v2 = desired("v2", "b");
        for w in [Writer::Admission, Writer::Leader] {
            assert_eq!(decide(w, None, &v1), Action::Create);
            assert_eq!(decide(w, Some(&v1), &v1), Action::Nothing);
        }
        // Whichever is "newer": the admission never replaces, the leader always
        // writes what Secrets Manager answered now (a rotation or a rollback).
        for (held, answered) in [(&v1, &v2), (&v2, &v1)] {
            assert_eq!(
                decide(Writer::Admission, Some(held), answered),
                Action::Differs {
                    version_id: version_of(held).unwrap().into()
                }
            );
            assert_eq!(
                decide(Writer::Leader, Some(held), answered),
                Action::Replace { rotation: true }
            );
        }
    }

    #[test]
    fn a_hand_edit_is_drift_that_the_leader_repairs() {
        let v1 = desired("v1", "a");
        let mut refreshed = v1.clone();
        refreshed
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANN_REFRESHED.into(), "t9".into());
        assert_eq!(
            compare(&refreshed, &v1),
            Held::Same,
            "the refresh time aside"
        );
        let mut edited = v1.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert("pw".into(), ByteString(b"mine".to_vec()));
        let mut extra = v1.clone();
        extra
            .data
            .as_mut()
            .unwrap()
            .insert("more".into(), ByteString(b"x".to_vec()));
        let mut emptied = v1.clone();
        emptied.data = None;
        let mut relabelled = v1.clone();
        relabelled.metadata.labels = Some(Default::default());
        let mut resourced = v1.clone();
        resourced
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(backing::ANN_ARN.into(), "arn:other".into());
        for drifted in [&edited, &extra, &emptied, &relabelled, &resourced] {
            assert_eq!(compare(drifted, &v1), Held::Drifted);
            assert_eq!(
                decide(Writer::Leader, Some(drifted), &v1),
                Action::Replace { rotation: false }
            );
            assert_eq!(
                decide(Writer::Admission, Some(drifted), &v1),
                Action::Differs {
                    version_id: "v1".into()
                }
            );
        }
        for drifted in [&edited, &extra, &emptied, &relabelled, &resourced] {
            assert!(same_source(drifted, &v1));
        }
        let mut unversioned = v1.clone();
        unversioned.metadata.annotations = None;
        assert_eq!(
            decide(Writer::Leader, Some(&unversioned), &v1),
            Action::Replace { rotation: true }
        );
    }

    #[test]
    fn a_secret_of_another_source_under_the_same_name_is_not_ours_to_replace() {
        let v1 = desired("v1", "a");
        let other = |k: &str, v: &str| {
            let mut s = v1.clone();
            s.metadata
                .annotations
                .as_mut()
                .unwrap()
                .insert(k.into(), v.into());
            s
        };
        assert!(same_source(&v1, &v1));
        for (k, v) in [
            (ANN_NAME, "n/other"),
            (ANN_SELECTOR, "versionStage=AWSPREVIOUS"),
            (ANN_FORM, "raw"),
        ] {
            assert!(!same_source(&other(k, v), &v1), "{k}");
        }
        let mut bare = v1.clone();
        bare.metadata.annotations = None;
        assert!(same_source(&bare, &v1), "no source said: drift, repaired");
    }
}
