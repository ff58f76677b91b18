//! Borrowed keys for the caches on the admission path: a warm admission looks
//! up its secrets, the backing Secrets it knows current and the inventory
//! marks it has written without allocating an owned key for each lookup
//! (profiles of warm admissions showed those allocations and copies). Each
//! borrowed key hashes exactly as its owned tuple does (a tuple hashes its
//! fields in order; `String` and `Arc<str>` hash as `str`), and
//! [`moka::Equivalent`] compares it with the owned key. They hash with
//! [`Hashing`] rather than the standard library's SipHash, which showed in the
//! same profiles.

use std::hash::{Hash, Hasher};

/// The hasher of those caches: foldhash, randomly seeded per process (its
/// `quality` variant; the keys are bounded per pod by the caps, and tenants
/// cannot see the seed).
pub type Hashing = foldhash::quality::RandomState;

/// A tuple of `N` strings, borrowed: looks up a key of `N` `String`s.
#[derive(Clone, Copy)]
pub struct Strs<'a, const N: usize>(pub [&'a str; N]);

impl<const N: usize> Hash for Strs<'_, N> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        for s in self.0 {
            s.hash(h);
        }
    }
}

impl moka::Equivalent<(String, String)> for Strs<'_, 2> {
    fn equivalent(&self, key: &(String, String)) -> bool {
        key.0 == self.0[0] && key.1 == self.0[1]
    }
}

impl moka::Equivalent<(String, String, String)> for Strs<'_, 3> {
    fn equivalent(&self, key: &(String, String, String)) -> bool {
        key.0 == self.0[0] && key.1 == self.0[1] && key.2 == self.0[2]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn borrowed_keys_hash_and_compare_as_their_owned_tuples() {
        let s = std::collections::hash_map::RandomState::new();
        // Field boundaries count: ("ab", "c") is not ("a", "bc").
        let two = ("ab".to_string(), "c".to_string());
        assert_eq!(s.hash_one(&two), s.hash_one(Strs(["ab", "c"])));
        assert_ne!(s.hash_one(&two), s.hash_one(Strs(["a", "bc"])));
        assert!(!moka::Equivalent::equivalent(&Strs(["a", "bc"]), &two));
        let three = ("n".to_string(), "b".to_string(), "v1".to_string());
        assert_eq!(s.hash_one(&three), s.hash_one(Strs(["n", "b", "v1"])));
        assert!(moka::Equivalent::equivalent(
            &Strs(["n", "b", "v1"]),
            &three
        ));
        assert!(!moka::Equivalent::equivalent(
            &Strs(["n", "b", "v2"]),
            &three
        ));
    }

    #[tokio::test]
    async fn a_moka_cache_finds_owned_keys_by_borrowed_ones() {
        let c: moka::future::Cache<(String, String, String), ()> = moka::future::Cache::new(10);
        c.insert(("n".into(), "b".into(), "v1".into()), ()).await;
        assert!(c.contains_key(&Strs(["n", "b", "v1"])));
        assert!(!c.contains_key(&Strs(["n", "b", "v2"])));
    }
}
