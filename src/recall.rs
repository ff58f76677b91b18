//! Reviews recalled: a ReplicaSet's replicas reach the API server's webhook
//! call as the same bytes but for a few strings (the request's uid, the
//! managed-fields times, the name the API server gives each replica's token
//! volume), so a review whose body equals a remembered one outside those
//! strings is answered from what was read of that one, without the glance
//! ([`crate::glance`]), the warm path's largest cost after the transport.
//!
//! Recalling is exact, not a guess: the remembered body's volatile strings
//! are where a second reading found them ([`glance::volatile`]), every other byte
//! of the new body must equal the remembered one's, and the new body's bytes
//! in those places must be as many and plain (printable ASCII, no quote and
//! no backslash), so that every string ends where it ended and the JSON
//! parses to the same tree but for those strings' text. The glance reads
//! none of them but the uid, which is taken from the new body; everything
//! else it read is the same. What is recalled is the look only: the kept
//! decision, the namespace's rule and the values are checked as on every
//! review ([`crate::admission::Webhook::review_kept`]).
//!
//! Remembered bodies are bounded by [`MAX_BYTES`] in all and
//! [`PER_LENGTH`] of each length; one is remembered when a decision kept for
//! its glance answered it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::admission::{Asked, OwnedAsked};
use crate::glance::{self, Volatiles};

/// Bytes of remembered bodies, in all.
pub const MAX_BYTES: usize = 1 << 20;
/// Remembered bodies of one length (replicas of different workloads can
/// be as long), the latest first.
pub const PER_LENGTH: usize = 4;

/// What was read of a remembered body.
struct Looked {
    body: Box<[u8]>,
    /// Its volatile strings' places, in order and apart, the uid's among them.
    places: Box<[(usize, usize)]>,
    uid: (usize, usize),
    /// What the review asks, but for its uid.
    asked: OwnedAsked,
    /// The decision key of its pod ([`crate::decisions::key_of`]).
    key: Box<[u8]>,
}

/// Remembered bodies, by length.
#[derive(Default)]
pub struct Recall {
    remembered: RwLock<Remembered>,
}

#[derive(Default)]
struct Remembered {
    by_length: HashMap<usize, Vec<Arc<Looked>>, foldhash::fast::RandomState>,
    bytes: usize,
}

/// A review recalled: what it asks, with its own uid, and its pod's key.
pub struct Recalled<'b> {
    looked: Arc<Looked>,
    uid: &'b str,
}

impl Recalled<'_> {
    pub fn asked(&self) -> Asked<'_> {
        self.looked.asked.asked_for(self.uid)
    }

    pub fn key(&self) -> &[u8] {
        &self.looked.key
    }
}

impl Recall {
    /// The review `body` recalled, if it equals a remembered body but for
    /// that one's volatile strings.
    pub fn recall<'b>(&self, body: &'b [u8]) -> Option<Recalled<'b>> {
        let remembered = self.remembered.read().expect("not poisoned");
        let looked = remembered
            .by_length
            .get(&body.len())?
            .iter()
            .find(|l| same_but_volatile(&l.body, &l.places, body))?
            .clone();
        drop(remembered);
        let (start, end) = looked.uid;
        let uid = std::str::from_utf8(&body[start..end]).ok()?;
        Some(Recalled { looked, uid })
    }

    /// Remembers `body`, which asks `asked` for a pod whose decision key is
    /// `key`; not where its uid held an escape, or one of its length is
    /// remembered for the same key (its replicas then differ elsewhere, and
    /// recalling would only fail again).
    pub fn remember(&self, body: &[u8], asked: &Asked<'_>, key: &[u8], max_entries: usize) {
        if body.len() > MAX_BYTES / 4 || self.remembers(body.len(), key) {
            return;
        }
        // Read again, noting where the volatile strings are: once for a
        // workload's replicas, which are then recalled.
        let Some(volatile) = glance::volatile(body, max_entries) else {
            return;
        };
        let Some(places) = placed(&volatile, body.len()) else {
            return;
        };
        let looked = Arc::new(Looked {
            body: body.into(),
            places,
            uid: volatile.uid,
            asked: asked.owned_but_uid(),
            key: key.into(),
        });
        let mut r = self.remembered.write().expect("not poisoned");
        let same = r.by_length.entry(body.len()).or_default();
        if same.iter().any(|l| *l.key == *key) {
            return;
        }
        same.insert(0, looked);
        let mut freed = 0;
        if same.len() > PER_LENGTH {
            freed += same.pop().map_or(0, |l| l.body.len());
        }
        r.bytes = r.bytes + body.len() - freed;
        // Over budget: lengths are let go in the map's order (a random one).
        while r.bytes > MAX_BYTES {
            let Some(&length) = r.by_length.keys().find(|l| **l != body.len()) else {
                break;
            };
            let gone = r.by_length.remove(&length).unwrap_or_default();
            r.bytes -= gone.iter().map(|l| l.body.len()).sum::<usize>();
        }
    }

    /// Whether a body of `len` bytes is remembered for `key`.
    fn remembers(&self, len: usize, key: &[u8]) -> bool {
        let r = self.remembered.read().expect("not poisoned");
        r.by_length
            .get(&len)
            .is_some_and(|same| same.iter().any(|l| *l.key == *key))
    }

    /// Bodies remembered, and their bytes.
    pub fn size(&self) -> (usize, usize) {
        let r = self.remembered.read().expect("not poisoned");
        (r.by_length.values().map(Vec::len).sum(), r.bytes)
    }
}

/// The volatile places of a body of `len` bytes, the uid's among them, in
/// order; `None` unless they are apart and within it.
fn placed(v: &Volatiles, len: usize) -> Option<Box<[(usize, usize)]>> {
    let mut all: Vec<(usize, usize)> = v.others.clone();
    all.push(v.uid);
    all.sort_unstable();
    all.dedup();
    let apart = all.windows(2).all(|w| w[0].1 <= w[1].0);
    (apart && all.iter().all(|(s, e)| s <= e && *e <= len)).then(|| all.into())
}

/// Whether `body` equals `remembered` but for `places` (in order and apart),
/// where its bytes are plain (printable ASCII, neither `"` nor `\`).
fn same_but_volatile(remembered: &[u8], places: &[(usize, usize)], body: &[u8]) -> bool {
    if remembered.len() != body.len() {
        return false;
    }
    let mut from = 0;
    for &(start, end) in places {
        if start < from || end > body.len() || start > end {
            return false;
        }
        if remembered[from..start] != body[from..start] || !body[start..end].iter().all(plain) {
            return false;
        }
        from = end;
    }
    remembered[from..] == body[from..]
}

/// A byte that cannot end or escape a JSON string, nor start a multi-byte
/// character.
fn plain(b: &u8) -> bool {
    (0x20..0x7f).contains(b) && *b != b'"' && *b != b'\\'
}

#[cfg(test)]
mod tests;
