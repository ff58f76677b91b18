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

    /// The UID of the Namespace `namespace`, from the watched cache: a
    /// namespace deleted and made again has another.
    pub fn uid(&self, namespace: &str) -> Option<String> {
        self.store
            .get(&ObjectRef::new(namespace))?
            .metadata
            .uid
            .clone()
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

    /// An annotation of a Namespace: from the watched cache, else read (a
    /// namespace made a moment ago).
    pub async fn read_annotation(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Option<String>, String> {
        let annotation = |ns: &Namespace| ns.metadata.annotations.as_ref()?.get(key).cloned();
        if let Some(ns) = self.store.get(&ObjectRef::new(namespace)) {
            return Ok(annotation(&ns));
        }
        match self.api.get_opt(namespace).await {
            Ok(ns) => Ok(ns.as_ref().and_then(annotation)),
            Err(e) => Err(format!(
                "could not read Namespace {namespace:?}: {}",
                kube_reason(&e)
            )),
        }
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

    /// Whether `namespace` carries `sm-injector.io/inject=enabled`: from the
    /// watched cache, else read (a namespace made a moment ago).
    pub async fn opted_in(&self, namespace: &str) -> Result<bool, String> {
        if let Some(ns) = self.store.get(&ObjectRef::new(namespace)) {
            return Ok(labelled(&ns));
        }
        match self.api.get_opt(namespace).await {
            Ok(ns) => Ok(ns.as_ref().is_some_and(labelled)),
            Err(e) => Err(format!(
                "could not read Namespace {namespace:?}: {}",
                kube_reason(&e)
            )),
        }
    }

    /// The access rule of `namespace`: from the watched cache, else read.
    pub async fn rule(&self, namespace: &str) -> Result<Arc<AccessRule>, String> {
        if let Some(ns) = self.store.get(&ObjectRef::new(namespace)) {
            return Ok(self.rules.get(namespace, allowed(&ns)));
        }
        match self.api.get(namespace).await {
            Ok(ns) => Ok(self.rules.get(namespace, allowed(&ns))),
            Err(e) => Err(format!(
                "could not read Namespace {namespace:?} for its access rule: {}",
                kube_reason(&e)
            )),
        }
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
