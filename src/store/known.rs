//! What an admission knows of backing Secrets: that (namespace UID, backing
//! Secret, version) was created or found holding that version by this
//! process. An admission answers from it for as long as the value cache
//! trusts the value itself (`--cache-ttl`); once it is older than
//! [`super::KNOWN_TTL`], the first admission to use it claims a read of the
//! Secret again, which [`super::Syncer`] makes in the background. So a
//! namespace whose pods come more than 30 s apart no longer waits on those
//! reads: the pod is answered from the last read, and the read after it
//! tells the next pods (and the refresher) what changed.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::lookup::{Hashing, Strs};

/// (namespace UID, backing Secret name, version id).
pub type Key = (String, String, String);

/// When a Secret was last found so, in milliseconds since [`epoch`].
#[derive(Debug)]
pub struct Seen(AtomicU64);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_millis() as u64
}

impl Seen {
    pub fn at(now: Instant) -> Arc<Self> {
        Arc::new(Seen(AtomicU64::new(millis(now))))
    }

    /// Whether this was found more than `after` before `now`; if so, the
    /// caller is the one to read it again (the others see it as just found).
    fn claim(&self, now: Instant, after: Duration) -> bool {
        let now = millis(now);
        let seen = self.0.load(Ordering::Relaxed);
        now.saturating_sub(seen) > after.as_millis() as u64
            && self
                .0
                .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// What this process knows, and when to read it again.
#[derive(Clone)]
pub struct Known {
    pub(super) seen: moka::future::Cache<Key, Arc<Seen>, Hashing>,
    /// How old a finding is read again (in the background).
    pub(super) recheck_after: Duration,
}

/// What the memory says of one backing Secret.
#[derive(Debug, PartialEq, Eq)]
pub enum Finding {
    /// Not known: the admission reads (or creates) it before answering.
    Unknown,
    /// Known: the admission answers from it.
    Known,
    /// Known, and older than [`Known::recheck_after`]: the admission answers
    /// from it and reads it again in the background (this caller claimed it).
    Recheck,
}

impl Known {
    /// Kept for `ttl` (the value cache's), read again after the shorter of
    /// it and `recheck_after`.
    pub fn new(ttl: Duration, recheck_after: Duration) -> Self {
        epoch();
        Known {
            seen: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build_with_hasher(Hashing::default()),
            recheck_after: recheck_after.min(ttl),
        }
    }

    pub async fn find(&self, key: Strs<'_, 3>, now: Instant) -> Finding {
        match self.seen.get(&key).await {
            None => Finding::Unknown,
            Some(s) if s.claim(now, self.recheck_after) => Finding::Recheck,
            Some(_) => Finding::Known,
        }
    }

    /// Found so (again) now: known for the whole TTL from here.
    pub async fn found(&self, key: Key) {
        self.seen.insert(key, Seen::at(Instant::now())).await;
    }

    /// Found otherwise (or not read): the next admission reads it first.
    pub async fn forget(&self, key: &Key) {
        self.seen.invalidate(key).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_finding_older_than_the_recheck_is_claimed_by_one_caller_only() {
        let known = Known::new(Duration::from_secs(300), Duration::from_secs(30));
        let key = || Strs(["uid", "sm-a", "v1"]);
        let t0 = Instant::now();
        assert_eq!(known.find(key(), t0).await, Finding::Unknown);
        known
            .seen
            .insert(("uid".into(), "sm-a".into(), "v1".into()), Seen::at(t0))
            .await;
        assert_eq!(
            known.find(key(), t0 + Duration::from_secs(29)).await,
            Finding::Known
        );
        let late = t0 + Duration::from_secs(31);
        assert_eq!(known.find(key(), late).await, Finding::Recheck);
        // The claim moved the finding to `late`: others answer from it.
        assert_eq!(known.find(key(), late).await, Finding::Known);
        assert_eq!(
            known.find(key(), late + Duration::from_secs(31)).await,
            Finding::Recheck
        );
        known
            .forget(&("uid".into(), "sm-a".into(), "v1".into()))
            .await;
        assert_eq!(known.find(key(), late).await, Finding::Unknown);
    }

    #[test]
    fn a_value_cache_shorter_than_the_recheck_never_answers_past_it() {
        let known = Known::new(Duration::from_secs(10), Duration::from_secs(30));
        assert_eq!(known.recheck_after, Duration::from_secs(10));
    }
}
