//! A pod as sm-injector reads it: metadata's names, labels and its own
//! `sm-injector.io/` annotations; each container's name, env, envFrom and
//! volume mounts; the volumes' names; the ServiceAccount. Reviews decode
//! straight into it ([`crate::wire::decode`]) and the rest of the pod is
//! parsed past without being built: k8s-openapi's `Pod` (2 KiB, and 2 KiB
//! per `Container`, built, moved and dropped for every admission) was the
//! largest cost of a warm admission after the transport.
//!
//! The fields keep k8s-openapi's names and types where they hold anything
//! (`EnvVar`, `EnvFromSource`, `VolumeMount`), so code reads either pod the
//! same way; [`Pod::from`] a k8s-openapi `Pod` is how pods from elsewhere (a
//! manifest given to `render`, tests) come in.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvFromSource, EnvVar, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

thread_local! {
    /// Entries a list may still build, and entries skipped: set for one
    /// review by [`crate::wire::decode`] (and by [`crate::glance::read`]),
    /// unbounded otherwise.
    static ENTRIES: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((usize::MAX, 0)) };
}

/// Runs `f` with at most `max` env, envFrom and volumeMounts entries built;
/// also gives how many were parsed past.
pub(crate) fn bounded<T>(max: usize, f: impl FnOnce() -> T) -> (T, usize) {
    ENTRIES.set((max, 0));
    let out = f();
    let (_, skipped) = ENTRIES.replace((usize::MAX, 0));
    (out, skipped)
}

/// A list of which only the first entries within the review's budget are
/// built; the rest are parsed past (the JSON is still checked) and counted.
struct Bounded<T>(Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Bounded<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                let mut out = Vec::new();
                loop {
                    let (left, skipped) = ENTRIES.get();
                    if left > 0 {
                        let Some(x) = seq.next_element::<T>()? else {
                            break;
                        };
                        out.push(x);
                        ENTRIES.set((left - 1, skipped));
                    } else {
                        if seq.next_element::<IgnoredAny>()?.is_none() {
                            break;
                        }
                        ENTRIES.set((0, skipped + 1));
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData)).map(Bounded)
    }
}

pub(crate) fn bounded_list<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Bounded<T>>::deserialize(d)?.map(|b| b.0))
}

/// A pod's annotations, only the `sm-injector.io/` ones built: the others
/// (`kubectl.kubernetes.io/last-applied-configuration` alone can be many
/// KiB) are parsed past. `Some` whenever the pod has an annotations object,
/// which the patch needs to know.
struct OwnAnnotations(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for OwnAnnotations {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BTreeMap<String, String>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                    if k.starts_with(crate::annotations::PREFIX) {
                        out.insert(k.into_owned(), map.next_value::<String>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V).map(OwnAnnotations)
    }
}

fn own_annotations<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    Ok(Option::<OwnAnnotations>::deserialize(d)?.map(|a| a.0))
}

/// The parts of a pod's metadata sm-injector reads.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(
        default,
        deserialize_with = "own_annotations",
        skip_serializing_if = "Option::is_none"
    )]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    #[serde(
        default,
        deserialize_with = "bounded_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub env: Option<Vec<EnvVar>>,
    #[serde(
        default,
        deserialize_with = "bounded_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub env_from: Option<Vec<EnvFromSource>>,
    #[serde(
        default,
        deserialize_with = "bounded_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub volume_mounts: Option<Vec<VolumeMount>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Volume {
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_containers: Option<Vec<Container>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Volume>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Deprecated alias of `serviceAccountName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

/// A pod as sm-injector reads it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Pod {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Spec>,
    /// Only for kube's [`kube::Resource`], which an `AdmissionReview`'s
    /// object must be and which lends an `ObjectMeta`; never read here.
    #[serde(skip)]
    object_meta: Option<Box<ObjectMeta>>,
}

impl Pod {
    pub fn new(metadata: Meta, spec: Option<Spec>) -> Pod {
        Pod {
            metadata,
            spec,
            object_meta: None,
        }
    }

    /// This pod as the first look at a review reads it for planning
    /// ([`crate::glance::PodGlance::planning_pod`]): without its volumes and
    /// volume mounts, its labels only as present. For the tests and the fuzz
    /// target that hold the two readings to each other.
    pub fn as_planning_reads(mut self) -> Pod {
        self.metadata.labels = self.metadata.labels.map(|_| Default::default());
        if let Some(s) = &mut self.spec {
            s.volumes = None;
            let init = s.init_containers.iter_mut().flatten();
            for c in s.containers.iter_mut().chain(init) {
                c.volume_mounts = None;
            }
        }
        self
    }
}

static NO_META: std::sync::LazyLock<ObjectMeta> = std::sync::LazyLock::new(ObjectMeta::default);

impl kube::Resource for Pod {
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
        self.object_meta.as_deref().unwrap_or(&NO_META)
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.object_meta.get_or_insert_default()
    }
}

fn container(c: &k8s_openapi::api::core::v1::Container) -> Container {
    Container {
        name: c.name.clone(),
        env: c.env.clone(),
        env_from: c.env_from.clone(),
        volume_mounts: c.volume_mounts.clone(),
    }
}

impl From<&k8s_openapi::api::core::v1::Pod> for Pod {
    /// What sm-injector reads of a k8s-openapi pod: the same as decoding its
    /// JSON, all annotations kept.
    fn from(p: &k8s_openapi::api::core::v1::Pod) -> Pod {
        let m = &p.metadata;
        Pod {
            metadata: Meta {
                name: m.name.clone(),
                generate_name: m.generate_name.clone(),
                namespace: m.namespace.clone(),
                labels: m.labels.clone(),
                annotations: m.annotations.clone(),
            },
            spec: p.spec.as_ref().map(|s| Spec {
                containers: s.containers.iter().map(container).collect(),
                init_containers: s
                    .init_containers
                    .as_ref()
                    .map(|v| v.iter().map(container).collect()),
                volumes: s.volumes.as_ref().map(|v| {
                    v.iter()
                        .map(|v| Volume {
                            name: v.name.clone(),
                        })
                        .collect()
                }),
                service_account_name: s.service_account_name.clone(),
                service_account: s.service_account.clone(),
            }),
            object_meta: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_reads_the_same_from_json_and_from_k8s_openapi() {
        let doc = json!({
            "metadata": {"name": "p", "namespace": "n", "labels": {"a": "b"},
                         "annotations": {"sm-injector.io/env.X": "n/s#k"}},
            "spec": {
                "serviceAccountName": "bot",
                "initContainers": [{"name": "i", "image": "x", "env": [{"name": "A", "value": "1"}]}],
                "containers": [{"name": "c", "image": "y",
                    "envFrom": [{"secretRef": {"name": "s"}}],
                    "volumeMounts": [{"name": "v", "mountPath": "/v"}]}],
                "volumes": [{"name": "v", "emptyDir": {}}]
            }
        });
        let slim: Pod = serde_json::from_value(doc.clone()).unwrap();
        let full: k8s_openapi::api::core::v1::Pod = serde_json::from_value(doc).unwrap();
        assert_eq!(slim, Pod::from(&full));
        // Absent lists stay absent, empty ones empty, as the patch tells them apart.
        let c = &slim.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            (c.env.is_none(), c.env_from.as_ref().map(Vec::len)),
            (true, Some(1))
        );
        // Outside a review's decoding, nothing is skipped.
        let many: Vec<_> = (0..5000)
            .map(|i| json!({"name": format!("V{i}")}))
            .collect();
        let c: Container = serde_json::from_value(json!({"name": "c", "env": many})).unwrap();
        assert_eq!(c.env.unwrap().len(), 5000);
        // `null` reads as absent.
        let c: Container = serde_json::from_value(json!({"name": "c", "env": null})).unwrap();
        assert_eq!(c.env, None);
    }
}
