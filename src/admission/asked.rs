//! What a review's first steps read of it, from kube's decoding or from the
//! first look at the body: the two must read the same (unit-tested here,
//! and fuzzed by `fuzz/fuzz_targets/review.rs`).

use kube::core::admission::{AdmissionRequest, Operation};

use super::Reply;
use crate::annotations;
use crate::glance::Glance;
use crate::pod::Pod;

/// What a review's first steps read of a pod's creation, from kube's
/// decoding or from the first look at the body ([`crate::glance`], whose
/// methods of the same names read the same).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Asked<'a> {
    pub reply: Reply<'a>,
    /// The request's namespace, else the pod's.
    pub namespace: Option<&'a str>,
    pub pod: &'a str,
    pub asks: bool,
    pub service_account: &'a str,
}

impl<'a> Asked<'a> {
    /// What is asked by `req`, if it creates a pod.
    pub fn of_request(req: &'a AdmissionRequest<Pod>) -> Option<Asked<'a>> {
        if req.operation != Operation::Create
            || req.kind.kind != "Pod"
            || req.sub_resource.is_some()
        {
            return None;
        }
        let pod = req.object.as_ref()?;
        let spec = pod.spec.as_ref();
        Some(Asked {
            reply: Reply::from(req),
            namespace: req
                .namespace
                .as_deref()
                .or(pod.metadata.namespace.as_deref()),
            pod: pod_name(req, pod),
            asks: asks(pod),
            service_account: spec
                .and_then(|s| {
                    s.service_account_name
                        .as_deref()
                        .or(s.service_account.as_deref())
                })
                .unwrap_or("default"),
        })
    }

    /// What is asked by the review `g` glanced at, if it creates a pod.
    pub fn of_glance(g: &'a Glance<'a>) -> Option<Asked<'a>> {
        let pod = g.created_pod()?;
        Some(Asked {
            reply: Reply::from(g),
            namespace: g.namespace(),
            pod: g.pod_name(),
            asks: pod.asks(),
            service_account: pod.service_account(),
        })
    }
}

impl Asked<'_> {
    /// What this borrows, owned: so that the body it was read from can be let
    /// go before a review that may wait on Secrets Manager.
    pub fn owned(&self) -> OwnedAsked {
        let r = &self.reply;
        OwnedAsked {
            uid: r.uid.to_owned(),
            reply_namespace: r.namespace.to_owned(),
            user: r.user.to_owned(),
            dry_run: r.dry_run,
            namespace: self.namespace.map(str::to_owned),
            pod: self.pod.to_owned(),
            asks: self.asks,
            service_account: self.service_account.to_owned(),
        }
    }

    /// As [`Asked::owned`], without the uid: what a recalled review asks
    /// ([`crate::recall`]) but for its own uid, given with
    /// [`OwnedAsked::asked_for`].
    pub fn owned_but_uid(&self) -> OwnedAsked {
        let mut owned = self.owned();
        owned.uid = String::new();
        owned
    }
}

/// An [`Asked`] that owns its strings ([`Asked::owned`]).
pub struct OwnedAsked {
    uid: String,
    reply_namespace: String,
    user: String,
    dry_run: bool,
    namespace: Option<String>,
    pod: String,
    asks: bool,
    service_account: String,
}

impl OwnedAsked {
    pub fn asked(&self) -> Asked<'_> {
        self.asked_for(&self.uid)
    }

    /// What this asks, answered to `uid`.
    pub fn asked_for<'s>(&'s self, uid: &'s str) -> Asked<'s> {
        Asked {
            reply: Reply {
                uid,
                namespace: &self.reply_namespace,
                user: &self.user,
                dry_run: self.dry_run,
            },
            namespace: self.namespace.as_deref(),
            pod: &self.pod,
            asks: self.asks,
            service_account: &self.service_account,
        }
    }
}

/// The pod's name, or its generateName prefix (pods made by controllers have
/// no name yet), or the request's name.
pub(super) fn pod_name<'a>(req: &'a AdmissionRequest<Pod>, pod: &'a Pod) -> &'a str {
    let m = &pod.metadata;
    m.name
        .as_deref()
        .or(m.generate_name.as_deref())
        .unwrap_or(&req.name)
}

/// Whether the pod asks anything of sm-injector (an input annotation).
pub(super) fn asks(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| annotations::inputs(a).next().is_some())
}

#[cfg(test)]
mod tests;
