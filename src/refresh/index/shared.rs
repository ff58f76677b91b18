//! Texts the index reads from pods (records, version lists), each parsed and
//! kept once while some pod carries it: replicas share theirs.

use std::collections::HashMap;
use std::sync::Arc;

/// Texts seen on pods, each kept once while a pod carries it.
#[derive(Debug)]
pub(super) struct Shared<T: ?Sized> {
    by_text: HashMap<Box<str>, Arc<T>>,
}

impl<T: ?Sized> Default for Shared<T> {
    fn default() -> Self {
        Shared {
            by_text: HashMap::new(),
        }
    }
}

impl<T: ?Sized> Shared<T> {
    pub(super) fn get(&self, text: &str) -> Option<Arc<T>> {
        self.by_text.get(text).cloned()
    }

    pub(super) fn insert(&mut self, text: &str, value: Arc<T>) -> Arc<T> {
        self.by_text.insert(text.into(), value.clone());
        value
    }

    /// Forgets the texts no pod carries any more.
    pub(super) fn prune(&mut self) {
        self.by_text.retain(|_, v| Arc::strong_count(v) > 1);
    }

    pub(super) fn len(&self) -> usize {
        self.by_text.len()
    }
}
