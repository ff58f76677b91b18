//! A first look at a review, borrowed from its body: what the warm path
//! needs to answer a pod from a kept decision ([`crate::decisions`]) without
//! building kube's owned [`AdmissionRequest`](kube::core::admission::AdmissionRequest),
//! and what a pod decided afresh is planned from when it mounts no file
//! ([`PodGlance::planning_pod`]), so that its body is read once.
//!
//! It reads the request's uid, operation, kind, sub-resource, name,
//! namespace, user and dry-run flag, and of the pod what a decision's key
//! holds: its names, whether it has labels, its `sm-injector.io/`
//! annotations, each container's name and its env and envFrom entries as
//! their JSON text, and the ServiceAccount. Strings are borrowed from the
//! body wherever they hold no escape; everything else is parsed past. The
//! body's env, envFrom and volumeMounts entries count against the same
//! `--max-pod-entries` as [`crate::wire::decode`]'s, and a pod past it gets
//! no glance: the full decoding answers it.
//!
//! The key ([`crate::decisions::key_of`]) is built from the glance on every path (kept or decided afresh),
//! so a decision is found again by pods whose glance is the same. The text
//! of env entries, not their typed value, is in the key: the same text always
//! reads as the same entries, and a pod whose entries are written otherwise
//! (the API server writes them one way) is only decided afresh.
//!
//! A second reading ([`volatile`]) notes where, in the body, the strings are
//! that differ between a ReplicaSet's replicas and that the glance parses
//! past or reads apart: the request's uid, each managed-fields entry's
//! time, the volumes' and volume mounts' names (the API server names each
//! replica's token volume afresh). A body equal to one glanced before
//! outside those strings reads the same ([`crate::recall`]).

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::annotations::{self, PREFIX};
use crate::pod::{Container, Meta, Pod, Spec, bounded, bounded_list};

/// A string borrowed from the body, or owned where it held an escape.
#[derive(Default, Debug, PartialEq)]
pub struct Str<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(s))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(s))
            }
        }
        d.deserialize_str(V).map(Str)
    }
}

fn text<'b>(s: &'b Option<Str<'_>>) -> Option<&'b str> {
    s.as_ref().map(|s| &*s.0)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review<'a> {
    // Required as kube requires them; their content is not read.
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    #[serde(borrow)]
    request: Option<Request<'a>>,
}

#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(borrow)]
    kind: Str<'a>,
}

#[derive(Deserialize, Default)]
struct User<'a> {
    #[serde(default, borrow)]
    username: Option<Str<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    #[serde(borrow)]
    uid: Str<'a>,
    #[serde(borrow)]
    kind: Kind<'a>,
    #[serde(rename = "resource")]
    _resource: IgnoredAny,
    #[serde(default, borrow)]
    sub_resource: Option<Str<'a>>,
    #[serde(default, borrow)]
    name: Str<'a>,
    #[serde(default, borrow)]
    namespace: Option<Str<'a>>,
    #[serde(borrow)]
    operation: Str<'a>,
    #[serde(borrow)]
    user_info: User<'a>,
    #[serde(borrow)]
    /// Boxed: the request is built and then moved a few times on its way
    /// out of the deserializer, and the pod is most of its size.
    object: Option<Box<PodGlance<'a>>>,
    #[serde(default)]
    dry_run: bool,
}

/// What a decision reads of a pod.
#[derive(Deserialize, Default)]
pub struct PodGlance<'a> {
    #[serde(default, borrow)]
    pub metadata: MetaGlance<'a>,
    #[serde(default, borrow)]
    pub spec: Option<SpecGlance<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct MetaGlance<'a> {
    #[serde(default, borrow)]
    name: Option<Str<'a>>,
    #[serde(default, borrow)]
    generate_name: Option<Str<'a>>,
    #[serde(default, borrow)]
    namespace: Option<Str<'a>>,
    /// Only whether there are labels (the patch adds to them or makes them).
    #[serde(default)]
    labels: Option<IgnoredAny>,
    /// Parsed past, each entry's time noted as volatile.
    #[serde(default, rename = "managedFields", deserialize_with = "volatile_list")]
    _managed_fields: Option<IgnoredAny>,
    /// The `sm-injector.io/` annotations, in the body's order; `Some`
    /// whenever the pod has an annotations object.
    #[serde(default, borrow)]
    pub annotations: Option<Own<'a>>,
}

impl MetaGlance<'_> {
    pub fn has_labels(&self) -> bool {
        self.labels.is_some()
    }
}

/// A pod's `sm-injector.io/` annotations; the others are parsed past.
#[derive(Default)]
pub struct Own<'a>(pub Vec<(Str<'a>, Str<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Own<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<(Str<'de>, Str<'de>)>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<Str<'de>>()? {
                    if k.0.starts_with(PREFIX) {
                        out.push((k, map.next_value::<Str<'de>>()?));
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V).map(Own)
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SpecGlance<'a> {
    #[serde(default, borrow)]
    pub containers: Vec<ContainerGlance<'a>>,
    #[serde(default, borrow)]
    pub init_containers: Option<Vec<ContainerGlance<'a>>>,
    #[serde(default, borrow)]
    service_account_name: Option<Str<'a>>,
    #[serde(default, borrow)]
    service_account: Option<Str<'a>>,
    /// Parsed past, each volume's name noted as volatile.
    #[serde(default, deserialize_with = "volatile_list")]
    _volumes: Option<IgnoredAny>,
}

/// A container's name, and its env and envFrom entries as their JSON text.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerGlance<'a> {
    #[serde(borrow)]
    pub name: Str<'a>,
    #[serde(default, borrow, deserialize_with = "bounded_list")]
    pub env: Option<Vec<&'a RawValue>>,
    #[serde(default, borrow, deserialize_with = "bounded_list")]
    pub env_from: Option<Vec<&'a RawValue>>,
    /// Counted against the bound, and their names noted as volatile (a list
    /// of nothing allocates nothing).
    #[serde(default, rename = "volumeMounts", deserialize_with = "bounded_list")]
    _volume_mounts: Option<Vec<Volatile>>,
}

impl ContainerGlance<'_> {
    /// The container as planning reads it ([`PodGlance::planning_pod`]).
    fn container(&self) -> Option<Container> {
        fn entries<T: serde::de::DeserializeOwned>(
            list: &Option<Vec<&RawValue>>,
        ) -> Option<Option<Vec<T>>> {
            match list {
                None => Some(None),
                Some(l) => l
                    .iter()
                    .map(|e| serde_json::from_str(e.get()).ok())
                    .collect::<Option<_>>()
                    .map(Some),
            }
        }
        Some(Container {
            name: self.name.0.to_string(),
            env: entries(&self.env)?,
            env_from: entries(&self.env_from)?,
            volume_mounts: None,
        })
    }
}

/// A first look at a review that holds a request.
pub struct Glance<'a> {
    request: Request<'a>,
}

/// The glance at `body`, if it is a review with a request and at most
/// `max_entries` env, envFrom and volumeMounts entries; `None` otherwise
/// (the full decoding then answers it, or says what is wrong).
pub fn read(body: &[u8], max_entries: usize) -> Option<Glance<'_>> {
    let (review, skipped) = bounded(max_entries, || serde_json::from_slice::<Review>(body));
    let request = review.ok()?.request?;
    (skipped == 0).then_some(Glance { request })
}

impl<'a> Glance<'a> {
    pub fn uid(&self) -> &str {
        &self.request.uid.0
    }

    pub fn user(&self) -> &str {
        text(&self.request.user_info.username).unwrap_or("")
    }

    pub fn dry_run(&self) -> bool {
        self.request.dry_run
    }

    /// The pod being created, if the review is a pod's creation (not an
    /// update, not a sub-resource).
    pub fn created_pod(&self) -> Option<&PodGlance<'a>> {
        let r = &self.request;
        (r.operation.0 == "CREATE" && r.kind.kind.0 == "Pod" && r.sub_resource.is_none())
            .then_some(r.object.as_deref())
            .flatten()
    }

    /// The request's namespace, else the pod's.
    pub fn namespace(&self) -> Option<&str> {
        let pod_ns = self.request.object.as_ref().map(|p| &p.metadata.namespace);
        text(&self.request.namespace).or(pod_ns.and_then(text))
    }

    /// The pod's name, or its generateName prefix, or the request's name.
    pub fn pod_name(&self) -> &str {
        let m = self.request.object.as_ref().map(|p| &p.metadata);
        m.and_then(|m| text(&m.name).or(text(&m.generate_name)))
            .unwrap_or(&self.request.name.0)
    }
}

impl PodGlance<'_> {
    /// The pod as planning reads it ([`crate::admission::plan_pod`] and
    /// [`crate::patch::build`]), built from this glance instead of a second
    /// decoding of the body, for a pod that mounts no file (no
    /// `sm-injector.io/mount-path`): only a mount's patch reads the
    /// containers' volume mounts and the pod's volumes, which the glance
    /// parses past, so here they are `None`, and the labels, which the patch
    /// only asks the presence of, an empty map when present. `None` for a pod
    /// that mounts a file, has no spec, or whose env or envFrom entry does not
    /// read as one: the full decoding answers those (and says what is wrong).
    pub fn planning_pod(&self) -> Option<Pod> {
        let m = &self.metadata;
        let own = m.annotations.as_ref();
        if own.is_some_and(|a| a.0.iter().any(|(k, _)| k.0 == annotations::MOUNT_PATH)) {
            return None;
        }
        let spec = self.spec.as_ref()?;
        let owned = |s: &Option<Str<'_>>| text(s).map(str::to_owned);
        let containers = |list: &[ContainerGlance<'_>]| -> Option<Vec<Container>> {
            list.iter().map(ContainerGlance::container).collect()
        };
        let metadata = Meta {
            name: owned(&m.name),
            generate_name: owned(&m.generate_name),
            namespace: owned(&m.namespace),
            labels: m.labels.as_ref().map(|_| Default::default()),
            // As the decoding's map: of a key given twice, the last value.
            annotations: own.map(|a| {
                a.0.iter()
                    .map(|(k, v)| (k.0.to_string(), v.0.to_string()))
                    .collect()
            }),
        };
        let spec = Spec {
            containers: containers(&spec.containers)?,
            init_containers: match &spec.init_containers {
                Some(list) => Some(containers(list)?),
                None => None,
            },
            volumes: None,
            service_account_name: owned(&spec.service_account_name),
            service_account: owned(&spec.service_account),
        };
        Some(Pod::new(metadata, Some(spec)))
    }

    /// Whether the pod asks anything of sm-injector (an input annotation).
    pub fn asks(&self) -> bool {
        self.metadata.annotations.as_ref().is_some_and(|a| {
            a.0.iter()
                .any(|(k, _)| !annotations::OUTPUT_KEYS.contains(&&*k.0))
        })
    }

    /// The pod's ServiceAccount: `serviceAccountName`, else its deprecated
    /// alias, else `default`.
    pub fn service_account(&self) -> &str {
        let s = self.spec.as_ref();
        s.and_then(|s| text(&s.service_account_name).or(text(&s.service_account)))
            .unwrap_or("default")
    }
}

mod volatile;
pub use volatile::{MAX_VOLATILE, Volatiles, volatile};
use volatile::{Volatile, volatile_list};

#[cfg(test)]
mod tests;
