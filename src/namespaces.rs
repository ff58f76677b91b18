//! The access rule of each namespace, read from a watched cache of Namespace
//! objects (so an admission makes no API call for it), with a direct read as
//! the fallback for a namespace the cache has not seen yet.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::annotations::{ALLOWED_SECRETS, INJECT_ENABLED, INJECT_LABEL, REFRESH_NOW};
use crate::kube_error::kube_reason;
use crate::policy::{AccessRule, NamespaceFacts, Rules};

#[derive(Clone)]
pub struct Namespaces {
    api: Api<Namespace>,
    store: Store<Namespace>,
    ready: Arc<AtomicBool>,
    rules: Arc<Rules>,
}

impl Namespaces {
    /// Starts watching Namespaces on the current Tokio runtime.
    pub fn start(client: kube::Client) -> Self {
        let api: Api<Namespace> = Api::all(client);
        let (store, writer) = reflector::store();
        let stream = watcher(api.clone(), watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .applied_objects();
        tokio::spawn(async move {
            use futures::StreamExt;
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                if let Err(e) = ev {
                    tracing::warn!(error = %e, "namespace watch error (retrying)");
                }
            }
        });
        let ready = Arc::new(AtomicBool::new(false));
        {
            let (store, ready) = (store.clone(), ready.clone());
            tokio::spawn(async move {
                if store.wait_until_ready().await.is_ok() {
                    ready.store(true, Ordering::Relaxed);
                }
            });
        }
        Namespaces {
            api,
            store,
            ready,
            rules: Default::default(),
        }
    }

    /// True once the first full list has arrived.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Whether the watched cache has the Namespace `namespace`.
    pub fn exists(&self, namespace: &str) -> bool {
        self.store.get(&ObjectRef::new(namespace)).is_some()
    }

    /// An annotation of a Namespace, from the watched cache.
    pub fn annotation(&self, namespace: &str, key: &str) -> Option<String> {
        self.store
            .get(&ObjectRef::new(namespace))?
            .metadata
            .annotations
            .as_ref()?
            .get(key)
            .cloned()
    }

    /// The Namespace `namespace` as an admission reads it: from the watched
    /// cache, else read (a namespace made a moment ago); `None` if there is
    /// none. One read answers all an admission asks of it ([`Seen`]).
    pub async fn read(&self, namespace: &str) -> Result<Option<Arc<Namespace>>, String> {
        if let Some(ns) = self.store.get(&ObjectRef::new(namespace)) {
            return Ok(Some(ns));
        }
        match self.api.get_opt(namespace).await {
            Ok(ns) => Ok(ns.map(Arc::new)),
            Err(e) => Err(format!(
                "could not read Namespace {namespace:?}: {}",
                kube_reason(&e)
            )),
        }
    }

    /// The access rule of `seen`.
    pub fn rule(&self, seen: &Seen) -> Arc<AccessRule> {
        self.rules.get(seen.name, allowed(&seen.object))
    }

    /// What the refresher's planner needs of a Namespace, from the watched
    /// cache only (`None` until the cache has it).
    pub fn facts(&self, namespace: &str) -> Option<NamespaceFacts> {
        let ns = self.store.get(&ObjectRef::new(namespace))?;
        let m = &ns.metadata;
        let annotation = |k: &str| m.annotations.as_ref().and_then(|a| a.get(k));
        Some(NamespaceFacts {
            opted_in: labelled(&ns),
            rule: AccessRule::for_namespace(namespace, allowed(&ns).map(String::as_str)),
            refresh_now: annotation(REFRESH_NOW).cloned(),
        })
    }
}

/// A Namespace as one admission read it ([`Namespaces::read`]).
pub struct Seen<'a> {
    pub name: &'a str,
    pub object: Arc<Namespace>,
}

impl Seen<'_> {
    /// Whether it carries `sm-injector.io/inject=enabled`.
    pub fn opted_in(&self) -> bool {
        labelled(&self.object)
    }

    /// Its annotation `key`.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        let a = self.object.metadata.annotations.as_ref()?;
        a.get(key).map(String::as_str)
    }

    /// Its UID: a namespace deleted and made again has another.
    pub fn uid(&self) -> Option<&str> {
        self.object.metadata.uid.as_deref()
    }
}

/// Whether the Namespace carries `sm-injector.io/inject=enabled`.
fn labelled(ns: &Namespace) -> bool {
    ns.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(INJECT_LABEL))
        .is_some_and(|v| v == INJECT_ENABLED)
}

/// The Namespace's `sm-injector.io/allowed-secrets` annotation.
fn allowed(ns: &Namespace) -> Option<&String> {
    ns.metadata.annotations.as_ref()?.get(ALLOWED_SECRETS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_api::{self, done};
    use serde_json::json;

    /// Namespaces whose watched cache never fills: every read falls back.
    fn unwatched(client: kube::Client) -> Namespaces {
        let (store, _writer) = reflector::store();
        Namespaces {
            api: Api::all(client),
            store,
            ready: Default::default(),
            rules: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_namespace_the_cache_has_not_seen_is_read_once_for_all_an_admission_asks() {
        let (mut h, client) = mock_api::client();
        let ns = unwatched(client);
        let reader = ns.clone();
        let t = tokio::spawn(async move { reader.read("fresh").await });
        let asked = mock_api::answer(
            &mut h,
            200,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
                "name": "fresh", "uid": "u-9",
                "labels": {INJECT_LABEL: INJECT_ENABLED},
                "annotations": {ALLOWED_SECRETS: "fresh/db", "other": "x"}}}),
        )
        .await;
        assert_eq!(
            (asked.method.as_str(), asked.path.as_str()),
            ("GET", "/api/v1/namespaces/fresh")
        );
        let seen = Seen {
            name: "fresh",
            object: done(t).await.unwrap().expect("it exists"),
        };
        // Everything else from that one object (no further read).
        assert!(seen.opted_in());
        assert_eq!(seen.uid(), Some("u-9"));
        assert_eq!(seen.annotation("other"), Some("x"));
        let rule = ns.rule(&seen);
        assert!(
            rule.allows("fresh/db") && !rule.allows("fresh/other"),
            "{rule}"
        );
        // None there: no namespace, not an error.
        let reader = ns.clone();
        let t = tokio::spawn(async move { reader.read("gone").await });
        mock_api::answer(&mut h, 404, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})).await;
        assert!(done(t).await.unwrap().is_none());
    }
}
