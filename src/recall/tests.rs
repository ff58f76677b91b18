use super::*;
use crate::glance;

/// A replica's review as the API server sends it: `uid`, the managed
/// field's `time`, the token volume's `suffix`, and the env annotation.
fn review(uid: &str, time: &str, suffix: &str, env: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {
                "metadata": {
                    "generateName": "web-7d9f8c6b5-",
                    "namespace": "team",
                    "labels": {"app": "web"},
                    "annotations": {"sm-injector.io/env.DB_URL": env, "other": "x"},
                    "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                        "apiVersion": "v1", "time": time, "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}]
                },
                "spec": {
                    "containers": [{"name": "web", "image": "web:1",
                        "volumeMounts": [{"name": format!("kube-api-access-{suffix}"), "mountPath": "/var/run/secrets"}]}],
                    "serviceAccountName": "web",
                    "volumes": [{"name": format!("kube-api-access-{suffix}"), "projected": {"sources": []}}]
                }
            },
            "dryRun": false
        }
    }))
    .unwrap()
}

const UID: &str = "00000000-0000-0000-0000-000000000001";
const TIME: &str = "2026-12-05T08:00:00Z";

/// `body` glanced, its key, and remembered in a new [`Recall`].
fn remembered(body: &[u8]) -> Recall {
    let recall = Recall::default();
    let g = glance::read(body, 1000).unwrap();
    let key = crate::decisions::key_of(&g).unwrap();
    recall.remember(body, &Asked::of_glance(&g).unwrap(), &key, 1000);
    recall
}

#[test]
fn a_replica_differing_in_uid_times_and_token_volume_is_recalled_as_its_own_glance_reads_it() {
    let first = review(UID, TIME, "abcde", "team/db#url");
    let recall = remembered(&first);
    let other_uid = "11111111-2222-3333-4444-555555555555";
    let replica = review(other_uid, "2026-12-05T08:03:17Z", "xyz12", "team/db#url");
    let r = recall.recall(&replica).expect("recalled");
    let g = glance::read(&replica, 1000).unwrap();
    assert_eq!(r.asked(), Asked::of_glance(&g).unwrap());
    assert_eq!(r.asked().reply.uid, other_uid);
    assert_eq!(r.key(), crate::decisions::key_of(&g).unwrap());
}

#[test]
fn a_body_differing_anywhere_else_is_not_recalled() {
    let recall = remembered(&review(UID, TIME, "abcde", "team/db#url"));
    // As long, but another secret, another namespace in the request, another
    // container name, dry run: each is read by the glance.
    let env = review(UID, TIME, "abcde", "team/db#uri");
    assert_eq!(env.len(), review(UID, TIME, "abcde", "team/db#url").len());
    assert!(recall.recall(&env).is_none());
    let text = String::from_utf8(review(UID, TIME, "abcde", "team/db#url")).unwrap();
    for (from, to) in [
        (r#""namespace":"team""#, r#""namespace":"tean""#),
        (r#""name":"web""#, r#""name":"wab""#),
        (r#""dryRun":false"#, r#""dryRun":fals0"#),
        (
            r#""serviceAccountName":"web""#,
            r#""serviceAccountName":"wep""#,
        ),
    ] {
        let changed = text.replacen(from, to, 1);
        assert_ne!(changed, text, "{from}");
        assert!(recall.recall(changed.as_bytes()).is_none(), "{to}");
    }
    // Not as long.
    assert!(
        recall
            .recall(&review(UID, TIME, "abcdef", "team/db#url"))
            .is_none()
    );
}

#[test]
fn volatile_bytes_that_would_end_or_escape_a_string_are_not_recalled() {
    let recall = remembered(&review(UID, TIME, "abcde", "team/db#url"));
    for suffix in ["ab\"de", "ab\\de", "ab\u{7f}de"] {
        let text = String::from_utf8(review(UID, TIME, "abcde", "team/db#url")).unwrap();
        let changed = text.replace(
            "kube-api-access-abcde",
            &format!("kube-api-access-{suffix}"),
        );
        assert_eq!(changed.len(), text.len());
        assert!(recall.recall(changed.as_bytes()).is_none(), "{suffix:?}");
    }
    // A uid that would close its string early and add a field.
    let text = String::from_utf8(review(UID, TIME, "abcde", "team/db#url")).unwrap();
    let forged = text.replace(UID, r#"0","dryRun":true,"x":"00000000000"#);
    assert!(recall.recall(forged.as_bytes()).is_none());
}

#[test]
fn a_uid_with_an_escape_is_not_remembered() {
    let body = review(
        "00000000-0000-0000-0000-00000000\\u0030",
        TIME,
        "abcde",
        "team/db#url",
    );
    let recall = remembered(&body);
    assert_eq!(recall.size(), (0, 0));
}

#[test]
fn a_second_body_for_the_same_key_is_not_remembered_and_the_bytes_are_bounded() {
    let recall = remembered(&review(UID, TIME, "abcde", "team/db#url"));
    // The same key but not recallable (its annotations differ outside what
    // the key reads): the first stays, the second is not added.
    let text = String::from_utf8(review(UID, TIME, "abcde", "team/db#url")).unwrap();
    let other = text.replace(r#""other":"x""#, r#""other":"y""#);
    let g = glance::read(other.as_bytes(), 1000).unwrap();
    let key = crate::decisions::key_of(&g).unwrap();
    recall.remember(other.as_bytes(), &Asked::of_glance(&g).unwrap(), &key, 1000);
    assert_eq!(recall.size().0, 1);
    // Many workloads: what is remembered stays within MAX_BYTES.
    for i in 0..4000 {
        let body = review(UID, TIME, "abcde", &format!("team/db{i}#url"));
        let g = glance::read(&body, 1000).unwrap();
        let key = crate::decisions::key_of(&g).unwrap();
        recall.remember(&body, &Asked::of_glance(&g).unwrap(), &key, 1000);
    }
    let (count, bytes) = recall.size();
    assert!(bytes <= MAX_BYTES && count > PER_LENGTH, "{count} {bytes}");
}
