//! What every replica learns of the leader's rotations, so that an admission
//! can trust what it found of a backing Secret for longer than
//! [`super::KNOWN_TTL`] without reading it again.
//!
//! Only the refresher's leader moves a backing Secret to another version
//! ([`super::rule`]). Right after it has, it stamps the namespace's inventory
//! ConfigMap with [`MOVED`] (a new value each time). Every replica keeps a
//! metadata watch of the inventory ConfigMaps, and each stamp, like each
//! re-list of the watch, raises a generation: what an admission found under
//! an earlier generation is not trusted any more, and the next admission in
//! that namespace reads its backing Secrets again. While the watch is not in
//! sync, nothing is trusted past [`super::KNOWN_TTL`], as without it.
//!
//! [`Moves`] is the pure state; [`watch`] feeds it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;

use super::inventory::{INVENTORY_OF, MOVED, tenant};

/// The generations, shared by the watch and the admissions.
#[derive(Clone, Default)]
pub struct Moves {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Raised at each (re-)list of the watch: everything found before is
    /// found again.
    epoch: AtomicU64,
    /// In sync: stamps are seen as they are made.
    watching: AtomicBool,
    /// Per tenant namespace: what the watch saw of its inventory.
    seen: Mutex<HashMap<String, Seen>>,
}

#[derive(Default)]
struct Seen {
    /// The last stamp.
    stamp: Option<String>,
    /// How often it changed.
    changes: u64,
    /// The inventory exists (it was listed or applied since it was last
    /// deleted).
    present: bool,
}

impl Moves {
    /// The generation of `namespace`: any change since means a rotation (or
    /// a lapse of the watch) may have happened there.
    pub fn generation(&self, namespace: &str) -> u64 {
        let own = self
            .inner
            .seen
            .lock()
            .expect("never poisoned")
            .get(namespace)
            .map_or(0, |seen| seen.changes);
        self.inner.epoch.load(Ordering::Acquire) + own
    }

    /// Whether stamps are seen as they are made (the watch is in sync).
    pub fn watching(&self) -> bool {
        self.inner.watching.load(Ordering::Acquire)
    }

    /// Whether `namespace` has an inventory ConfigMap, as far as the watch
    /// has seen: `None` while it is not in sync. A `Some(false)` can lag an
    /// inventory another replica has just made, so it is a hint for the
    /// order of requests, never a reason to skip one.
    pub fn has_inventory(&self, namespace: &str) -> Option<bool> {
        if !self.watching() {
            return None;
        }
        let seen = self.inner.seen.lock().expect("never poisoned");
        Some(seen.get(namespace).is_some_and(|s| s.present))
    }

    /// `namespace`'s inventory is there, carrying `stamp` (`None`: none).
    pub fn saw(&self, namespace: &str, stamp: Option<&str>) {
        self.see(namespace, stamp, true);
    }

    /// The namespace's inventory is gone (the namespace was deleted).
    pub fn gone(&self, namespace: &str) {
        self.see(namespace, None, false);
    }

    fn see(&self, namespace: &str, stamp: Option<&str>, present: bool) {
        let mut seen = self.inner.seen.lock().expect("never poisoned");
        let entry = seen.entry(namespace.to_string()).or_default();
        entry.present = present;
        if entry.stamp.as_deref() != stamp {
            entry.stamp = stamp.map(str::to_string);
            entry.changes += 1;
        }
    }

    /// The watch lost its place (an error, a re-list): not in sync until
    /// [`Moves::synced`].
    pub fn lost(&self) {
        self.inner.watching.store(false, Ordering::Release);
    }

    /// The watch listed everything again: whatever was found before may have
    /// been moved meanwhile.
    pub fn synced(&self) {
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
        self.inner.watching.store(true, Ordering::Release);
    }
}

/// Feeds `moves` from a metadata watch of the inventory ConfigMaps (`api`,
/// sm-injector's own namespace; names `<prefix>-<namespace>`). Runs until the
/// process ends. After an error the watch starts over with a list (1 s,
/// doubling to 30 s, apart): kube's watcher would resume without one, and
/// so without the [`watcher::Event::InitDone`] that says it is in sync again.
pub async fn watch(api: Api<PartialObjectMeta<ConfigMap>>, prefix: String, moves: Moves) {
    let config = watcher::Config::default().labels(INVENTORY_OF);
    let mut pause = Duration::from_secs(1);
    loop {
        let mut stream = std::pin::pin!(watcher::watcher(api.clone(), config.clone()));
        while let Some(event) = stream.next().await {
            match event {
                Err(e) => {
                    tracing::warn!(error = %e, "inventory watch error (listing again); backing Secrets are read again after 30 s meanwhile");
                    break;
                }
                Ok(event) => {
                    if matches!(event, watcher::Event::InitDone) {
                        pause = Duration::from_secs(1);
                    }
                    see(&prefix, &moves, event);
                }
            }
        }
        moves.lost();
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// One event of the watch, as it changes `moves`.
fn see(prefix: &str, moves: &Moves, event: watcher::Event<PartialObjectMeta<ConfigMap>>) {
    match event {
        watcher::Event::Init => moves.lost(),
        watcher::Event::InitDone => moves.synced(),
        watcher::Event::Apply(m) | watcher::Event::InitApply(m) => {
            if let Some(ns) = tenant(prefix, &m.metadata) {
                let stamp = m.metadata.annotations.as_ref().and_then(|a| a.get(MOVED));
                moves.saw(ns, stamp.map(String::as_str));
            }
        }
        watcher::Event::Delete(m) => {
            if let Some(ns) = tenant(prefix, &m.metadata) {
                moves.gone(ns);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_stamp_or_a_relist_raises_the_generation_and_nothing_else_does() {
        let m = Moves::default();
        assert!(!m.watching(), "not in sync before the first list");
        m.saw("a", None);
        m.saw("b", Some("1"));
        m.synced();
        assert!(m.watching());
        let (a, b) = (m.generation("a"), m.generation("b"));
        // The same stamp again (any other change of the ConfigMap): nothing.
        m.saw("b", Some("1"));
        m.saw("a", None);
        assert_eq!((m.generation("a"), m.generation("b")), (a, b));
        // A rotation in b: b only.
        m.saw("b", Some("2"));
        assert_eq!(m.generation("a"), a);
        assert!(m.generation("b") > b);
        // A namespace never seen has a generation too, raised by a re-list.
        let c = m.generation("c");
        m.lost();
        assert!(!m.watching());
        assert_eq!(m.generation("c"), c, "lost alone changes nothing found");
        m.synced();
        assert!(m.generation("c") > c && m.generation("a") > a);
        // The inventory deleted (its namespace gone): raised.
        let b = m.generation("b");
        m.gone("b");
        assert!(m.generation("b") > b);
    }

    #[test]
    fn which_namespaces_have_an_inventory_is_told_only_in_sync() {
        let m = Moves::default();
        m.saw("a", None);
        assert_eq!(m.has_inventory("a"), None, "not in sync: unknown");
        m.synced();
        assert_eq!(m.has_inventory("a"), Some(true));
        assert_eq!(m.has_inventory("never"), Some(false));
        m.gone("a");
        assert_eq!(m.has_inventory("a"), Some(false));
        m.saw("a", None);
        assert_eq!(m.has_inventory("a"), Some(true), "made again");
        m.lost();
        assert_eq!(m.has_inventory("never"), None);
    }

    fn inventory(name: &str, tenant: &str, stamp: Option<&str>) -> PartialObjectMeta<ConfigMap> {
        let mut m = PartialObjectMeta::<ConfigMap>::default();
        m.metadata.name = Some(name.into());
        m.metadata.labels = Some([(INVENTORY_OF.to_string(), tenant.to_string())].into());
        m.metadata.annotations = stamp.map(|s| [(MOVED.to_string(), s.to_string())].into());
        m
    }

    #[test]
    fn the_watch_events_say_when_it_is_in_sync_and_where_a_secret_moved() {
        use watcher::Event::*;
        let (m, p) = (Moves::default(), "inv");
        for e in [
            Init,
            InitApply(inventory("inv-a", "a", Some("1"))),
            InitDone,
        ] {
            see(p, &m, e);
        }
        assert!(m.watching());
        let a = m.generation("a");
        // Another change of the ConfigMap (its marks): nothing.
        see(p, &m, Apply(inventory("inv-a", "a", Some("1"))));
        assert_eq!(m.generation("a"), a);
        see(p, &m, Apply(inventory("inv-a", "a", Some("2"))));
        assert!(m.generation("a") > a);
        // A ConfigMap whose name and label disagree stands for no namespace.
        let a = m.generation("a");
        see(p, &m, Apply(inventory("inv-b", "a", Some("3"))));
        assert_eq!(m.generation("a"), a);
        // A list again: not in sync until it is done.
        see(p, &m, Init);
        assert!(!m.watching());
        see(p, &m, InitDone);
        assert!(m.watching() && m.generation("a") > a);
    }
}
