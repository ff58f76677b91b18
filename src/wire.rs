//! The AdmissionReview on the wire. Decoding reads kube's
//! [`AdmissionReview`] of a slim pod that keeps only what sm-injector reads
//! (metadata's names, labels and annotations; each container's name, env,
//! envFrom and volume mounts; volume names) and skips the rest of the pod
//! without building it: the typed `PodSpec` was the largest single cost of
//! a warm admission. The slim pod becomes a [`Pod`] holding just those
//! fields, so that the rest of the code keeps k8s-openapi's types.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, EnvVar, Pod, PodSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde::Deserialize;

/// The parts of a pod's metadata sm-injector reads.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    name: Option<String>,
    generate_name: Option<String>,
    namespace: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
struct SlimContainer {
    name: String,
    env: Option<Vec<EnvVar>>,
    env_from: Option<Vec<EnvFromSource>>,
    volume_mounts: Option<Vec<VolumeMount>>,
}

#[derive(Deserialize, Clone, Debug)]
struct SlimVolume {
    name: String,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
struct SlimSpec {
    #[serde(default)]
    containers: Vec<SlimContainer>,
    init_containers: Option<Vec<SlimContainer>>,
    volumes: Option<Vec<SlimVolume>>,
}

/// A pod as sm-injector reads it from a review.
#[derive(Deserialize, Clone, Debug)]
pub struct SlimPod {
    #[serde(default)]
    metadata: SlimMeta,
    spec: Option<SlimSpec>,
    /// Never read: kube's `Resource` wants an `ObjectMeta` to lend.
    #[serde(skip)]
    meta: ObjectMeta,
}

impl kube::Resource for SlimPod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

fn container(c: SlimContainer) -> Container {
    Container {
        name: c.name,
        env: c.env,
        env_from: c.env_from,
        volume_mounts: c.volume_mounts,
        ..Default::default()
    }
}

impl From<SlimPod> for Pod {
    fn from(p: SlimPod) -> Pod {
        let m = p.metadata;
        Pod {
            metadata: ObjectMeta {
                name: m.name,
                generate_name: m.generate_name,
                namespace: m.namespace,
                labels: m.labels,
                annotations: m.annotations,
                ..Default::default()
            },
            spec: p.spec.map(|s| PodSpec {
                containers: s.containers.into_iter().map(container).collect(),
                init_containers: s
                    .init_containers
                    .map(|v| v.into_iter().map(container).collect()),
                volumes: s.volumes.map(|v| {
                    v.into_iter()
                        .map(|v| Volume {
                            name: v.name,
                            ..Default::default()
                        })
                        .collect()
                }),
                ..Default::default()
            }),
            status: None,
        }
    }
}

/// Why a body is not a review to answer.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    NotAReview(#[from] serde_json::Error),
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

/// An AdmissionReview's request, its pod read as a [`SlimPod`].
pub fn decode(body: &[u8]) -> Result<AdmissionRequest<Pod>, DecodeError> {
    let review: AdmissionReview<SlimPod> = serde_json::from_slice(body)?;
    let r: AdmissionRequest<SlimPod> = review.try_into().map_err(|_| DecodeError::NoRequest)?;
    Ok(AdmissionRequest {
        types: r.types,
        uid: r.uid,
        kind: r.kind,
        resource: r.resource,
        sub_resource: r.sub_resource,
        request_kind: r.request_kind,
        request_resource: r.request_resource,
        request_sub_resource: r.request_sub_resource,
        name: r.name,
        namespace: r.namespace,
        operation: r.operation,
        user_info: r.user_info,
        object: r.object.map(Pod::from),
        old_object: r.old_object.map(Pod::from),
        dry_run: r.dry_run,
        options: r.options,
    })
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
    let rest = serde_json::to_vec(&WireResponse {
        uid: &r.uid,
        allowed: r.allowed,
        status: &r.result,
        audit_annotations: &r.audit_annotations,
        warnings: &r.warnings,
    })
    .expect("an admission response serializes");
    let patch_len = r.patch.as_ref().map_or(0, |p| p.len().div_ceil(3) * 4);
    let mut out = Vec::with_capacity(rest.len() + patch_len + 128);
    out.extend_from_slice(
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":"#,
    );
    match &r.patch {
        Some(p) => {
            out.extend_from_slice(br#"{"patchType":"JSONPatch","patch":""#);
            // SIMD base64: a large patch's encoding was a visible share of
            // the admission in profiles with the scalar `base64` crate.
            base64_simd::STANDARD.encode_append(p, &mut out);
            out.extend_from_slice(b"\",");
            // `rest` is an object: its fields follow the patch's.
            out.extend_from_slice(&rest[1..]);
        }
        None => out.extend_from_slice(&rest),
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

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
    fn the_slim_pod_gives_the_same_request_and_the_same_patch_as_the_full_one() {
        use crate::patch;
        use crate::plan::{EnvFrom, EnvVar, Mount, Plan};
        let body = serde_json::to_vec(&full_review()).unwrap();
        let slim = decode(&body).unwrap();
        let full: AdmissionRequest<Pod> = serde_json::from_slice::<AdmissionReview<Pod>>(&body)
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
        };
        let (s, f) = (slim.object.unwrap(), full.object.unwrap());
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
        assert!(matches!(decode(empty), Err(DecodeError::NoRequest)));
        assert!(matches!(decode(b"{x"), Err(DecodeError::NotAReview(_))));
    }
}
