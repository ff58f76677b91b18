//! The AdmissionReview on the wire: kube's [`AdmissionReview`] of the pod as
//! sm-injector reads it ([`crate::pod`]), which skips the rest of the pod
//! without building it, and the response written with its patch as base64.

use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};

use crate::pod::{self, Pod};

/// The most env, envFrom and volumeMounts entries decoded from one review's
/// pods by default (`--max-pod-entries`): a 1.4 MB pod of 32,000 env entries
/// would otherwise build several times its size in memory.
pub const DEFAULT_MAX_ENTRIES: usize = 4096;

/// Why a body is not a review to answer.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    NotAReview(#[from] serde_json::Error),
    #[error("the AdmissionReview has no request")]
    NoRequest,
    /// The request, with only the first `max` entries of its pod's lists.
    #[error("the pod's containers have more than {max} env, envFrom and volumeMounts entries")]
    TooManyEntries {
        request: Box<AdmissionRequest<Pod>>,
        max: usize,
    },
}

/// An AdmissionReview's request, its pod read as a [`Pod`] with at most
/// `max_entries` env, envFrom and volumeMounts entries in all.
pub fn decode(body: &[u8], max_entries: usize) -> Result<AdmissionRequest<Pod>, DecodeError> {
    let (review, skipped) = pod::bounded(max_entries, || {
        serde_json::from_slice::<AdmissionReview<Pod>>(body)
    });
    let request: AdmissionRequest<Pod> = review?.try_into().map_err(|_| DecodeError::NoRequest)?;
    if skipped > 0 {
        return Err(DecodeError::TooManyEntries {
            request: Box::new(request),
            max: max_entries,
        });
    }
    Ok(request)
}

/// The fields of an AdmissionReview response other than the patch, borrowing
/// kube's [`AdmissionResponse`].
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse<'a> {
    uid: &'a str,
    allowed: bool,
    status: &'a kube::core::Status,
    #[serde(skip_serializing_if = "std::collections::HashMap::is_empty")]
    audit_annotations: &'a std::collections::HashMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: &'a Option<Vec<String>>,
}

/// Serializes the response to `admission.k8s.io/v1` AdmissionReview JSON.
///
/// kube-core serializes `patch` (a `Vec<u8>`) as a JSON array of numbers;
/// Kubernetes defines it as base64 (Go's `[]byte`). This writes the same
/// fields with the patch as base64, encoded straight into the output (base64
/// never needs JSON escaping): a third of the bytes, and no second pass.
pub fn encode(r: &AdmissionResponse) -> Vec<u8> {
    encode_with(r, None)
}

/// As [`encode`], with the patch given as base64 when `r` carries none of
/// its own (a kept decision's, [`crate::admission::Answer::patch_base64`]).
pub fn encode_with(r: &AdmissionResponse, patch_base64: Option<&str>) -> Vec<u8> {
    let rest = serde_json::to_vec(&WireResponse {
        uid: &r.uid,
        allowed: r.allowed,
        status: &r.result,
        audit_annotations: &r.audit_annotations,
        warnings: &r.warnings,
    })
    .expect("an admission response serializes");
    let patch_len = match (&r.patch, patch_base64) {
        (Some(p), _) => p.len().div_ceil(3) * 4,
        (None, Some(b)) => b.len(),
        (None, None) => 0,
    };
    let mut out = Vec::with_capacity(rest.len() + patch_len + 128);
    out.extend_from_slice(
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":"#,
    );
    if r.patch.is_some() || patch_base64.is_some() {
        out.extend_from_slice(br#"{"patchType":"JSONPatch","patch":""#);
        match (&r.patch, patch_base64) {
            // SIMD base64: a large patch's encoding was a visible share of
            // the admission in profiles with the scalar `base64` crate.
            (Some(p), _) => base64_simd::STANDARD.encode_append(p, &mut out),
            (None, Some(b)) => out.extend_from_slice(b.as_bytes()),
            (None, None) => unreachable!("one of the two is set"),
        }
        out.extend_from_slice(b"\",");
        // `rest` is an object: its fields follow the patch's.
        out.extend_from_slice(&rest[1..]);
    } else {
        out.extend_from_slice(&rest);
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::collections::BTreeMap;

    fn request() -> AdmissionRequest<Pod> {
        let review: AdmissionReview<Pod> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "CREATE", "userInfo": {}, "namespace": "n",
                "object": {"metadata": {}, "spec": {"containers": []}}
            }
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    #[test]
    fn wire_form_matches_kube_except_the_patch_is_base64() {
        use base64::Engine;
        let patch: json_patch::Patch =
            serde_json::from_value(json!([{"op": "add", "path": "/a", "value": 1}])).unwrap();
        let mut resp = AdmissionResponse::from(&request())
            .with_patch(patch)
            .unwrap();
        resp.warnings = Some(vec!["w".into()]);
        let ours: Value = serde_json::from_slice(&encode(&resp)).unwrap();
        let mut kube: Value = serde_json::to_value(resp.clone().into_review()).unwrap();
        let b64 = ours["response"]["patch"].as_str().unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(&decoded, resp.patch.as_ref().unwrap());
        let mut ours_wo = ours.clone();
        ours_wo["response"].as_object_mut().unwrap().remove("patch");
        kube["response"].as_object_mut().unwrap().remove("patch");
        assert_eq!(ours_wo, kube);

        // The same patch given as base64 (a kept decision's) is written the same.
        let mut without = resp.clone();
        let raw = without.patch.take().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
        assert_eq!(encode_with(&without, Some(&b64)), encode(&resp));
        assert_eq!(encode_with(&without, None), encode(&without));

        let denied = AdmissionResponse::from(&request()).deny("no");
        let ours: Value = serde_json::from_slice(&encode(&denied)).unwrap();
        assert_eq!(ours, serde_json::to_value(denied.into_review()).unwrap());
    }

    /// A pod as the API server sends it, with everything sm-injector skips.
    fn full_review() -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u-2", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE", "userInfo": {"username": "u", "groups": ["g"]},
                "namespace": "n", "dryRun": true, "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
                "object": {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {
                        "generateName": "web-", "namespace": "n",
                        "labels": {"app": "web"},
                        "annotations": {"sm-injector.io/env.DB": "n/db#url"},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "x", "controller": true}],
                        "managedFields": [{"manager": "kcm", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}]
                    },
                    "spec": {
                        "initContainers": [{"name": "init", "image": "x", "env": [{"name": "DB", "value": "mine"}]}],
                        "containers": [
                            {"name": "app", "image": "y", "imagePullPolicy": "IfNotPresent",
                             "resources": {"requests": {"cpu": "100m"}},
                             "envFrom": [{"configMapRef": {"name": "c"}}],
                             "env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                             "volumeMounts": [{"name": "tok", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
                             "securityContext": {"runAsNonRoot": true}, "ports": [{"containerPort": 80}]},
                            {"name": "side", "image": "z", "volumeMounts": [{"name": "v", "mountPath": "/s/n/db"}]}
                        ],
                        "volumes": [{"name": "tok", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}, {"name": "v", "emptyDir": {}}],
                        "tolerations": [{"key": "k", "operator": "Exists"}], "dnsPolicy": "ClusterFirst"
                    }
                }
            }
        })
    }

    #[test]
    fn the_pod_as_read_gives_the_same_request_and_patch_as_k8s_openapis_full_pod() {
        use crate::patch;
        use crate::plan::{EnvFrom, EnvVar, Mount, Plan};
        let body = serde_json::to_vec(&full_review()).unwrap();
        let slim = decode(&body, DEFAULT_MAX_ENTRIES).unwrap();
        // As k8s-openapi reads it, every field built.
        type Full = k8s_openapi::api::core::v1::Pod;
        let full: AdmissionRequest<Full> = serde_json::from_slice::<AdmissionReview<Full>>(&body)
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(
            (
                &slim.uid,
                &slim.namespace,
                slim.dry_run,
                &slim.operation,
                &slim.user_info.username
            ),
            (
                &full.uid,
                &full.namespace,
                full.dry_run,
                &full.operation,
                &full.user_info.username
            )
        );
        let plan = Plan {
            backing: vec![],
            env: vec![EnvVar {
                var: "DB".into(),
                secret: "sm-n-db-1".into(),
                key: "url".into(),
            }],
            env_from: vec![EnvFrom {
                prefix: None,
                secret: "sm-n-redis-2".into(),
            }],
            mounts: vec![Mount {
                secret: "sm-n-db-1".into(),
                path: "/s/n/db".into(),
            }],
            refresh_interval: std::time::Duration::from_secs(3600),
            service_account: None,
        };
        let (s, f) = (slim.object.unwrap(), Pod::from(&full.object.unwrap()));
        // The same fields, read either way (the sample has no other annotations).
        assert_eq!(s, f);
        for wanted in [None, Some(vec!["app".to_string()])] {
            let ts = patch::select(&s, wanted.as_deref()).unwrap();
            let tf = patch::select(&f, wanted.as_deref()).unwrap();
            assert_eq!(ts, tf);
            let (ps, ws) = patch::build(&s, &plan, &ts);
            let (pf, wf) = patch::build(&f, &plan, &tf);
            assert_eq!(ps, pf);
            assert_eq!(ws, wf);
            assert!(!ws.is_empty(), "the sample exercises the warnings");
        }
        let empty = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
        assert!(matches!(
            decode(empty, DEFAULT_MAX_ENTRIES),
            Err(DecodeError::NoRequest)
        ));
        assert!(matches!(
            decode(b"{x", DEFAULT_MAX_ENTRIES),
            Err(DecodeError::NotAReview(_))
        ));
    }

    #[test]
    fn only_sm_injector_annotations_are_kept() {
        let mut review = full_review();
        let ann = &mut review["request"]["object"]["metadata"]["annotations"];
        ann["kubectl.kubernetes.io/last-applied-configuration"] = json!("x".repeat(10_000));
        ann["prometheus.io/scrape"] = json!("true");
        ann["sm-injector.io/containers"] = json!("app");
        let body = serde_json::to_vec(&review).unwrap();
        let pod = decode(&body, DEFAULT_MAX_ENTRIES).unwrap().object.unwrap();
        let kept: Vec<_> = pod.metadata.annotations.unwrap().into_keys().collect();
        assert_eq!(kept, ["sm-injector.io/containers", "sm-injector.io/env.DB"]);
        // A pod whose annotations are all others' still has an annotations object.
        let mut review = full_review();
        review["request"]["object"]["metadata"]["annotations"] = json!({"a": "b"});
        let body = serde_json::to_vec(&review).unwrap();
        let pod = decode(&body, DEFAULT_MAX_ENTRIES).unwrap().object.unwrap();
        assert_eq!(pod.metadata.annotations, Some(BTreeMap::new()));
        // A value that is not a string is still an error, as before.
        let mut review = full_review();
        review["request"]["object"]["metadata"]["annotations"] = json!({"sm-injector.io/env.X": 1});
        let body = serde_json::to_vec(&review).unwrap();
        assert!(matches!(decode(&body, 10), Err(DecodeError::NotAReview(_))));
    }

    #[test]
    fn entries_past_the_cap_are_parsed_past_not_built() {
        let mut review = full_review();
        let env: Vec<Value> = (0..50)
            .map(|i| json!({"name": format!("V{i}"), "value": "x"}))
            .collect();
        review["request"]["object"]["spec"]["containers"][0]["env"] = json!(env);
        let body = serde_json::to_vec(&review).unwrap();
        // 50 env + 1 envFrom + 1 mount in app, 1 mount in side, 1 env in init.
        let all = decode(&body, 54).unwrap();
        let c = &all.object.unwrap().spec.unwrap().containers[0];
        assert_eq!(c.env.as_ref().unwrap().len(), 50);
        match decode(&body, 20) {
            Err(DecodeError::TooManyEntries { request, max }) => {
                assert_eq!((request.uid.as_str(), max), ("u-2", 20));
                let pod = request.object.unwrap();
                let kept: usize = pod
                    .spec
                    .as_ref()
                    .unwrap()
                    .containers
                    .iter()
                    .map(|c| c.env.as_ref().map_or(0, Vec::len))
                    .sum();
                assert!(kept <= 20, "{kept}");
                // What decides whether the pod asks for anything is all there.
                assert!(
                    pod.metadata
                        .annotations
                        .unwrap()
                        .contains_key("sm-injector.io/env.DB")
                );
            }
            other => panic!("{other:?}"),
        }
        // The cap is per review: the next one starts afresh.
        assert!(decode(&body, 54).is_ok());
        // Bad JSON past the cap is still an error.
        let bad = String::from_utf8(body)
            .unwrap()
            .replacen(r#""value":"x"}"#, r#""value":}"#, 1);
        assert!(matches!(
            decode(bad.as_bytes(), 0),
            Err(DecodeError::NotAReview(_))
        ));
    }
}
