//! Where, in a review's body, the strings are that differ between a
//! ReplicaSet's replicas and that the glance parses past (or reads apart,
//! the uid): found by a second reading ([`volatile`]) for
//! [`crate::recall`]. The glance itself notes nothing.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, Visitor};

use super::{Str, read};

/// The most volatile strings a glance notes; past them, the rest are read
/// as any other byte of the body.
pub const MAX_VOLATILE: usize = 16;

thread_local! {
    /// The volatile strings noted while [`volatile`] parses, as (address,
    /// length); `None` while [`read`] does, which notes nothing.
    static NOTED: std::cell::RefCell<Option<Vec<(usize, usize)>>> = const { std::cell::RefCell::new(None) };
}

/// An entry of a list the glance parses past (volumes, volume mounts,
/// managed fields): while [`volatile`] parses, its `name` and `time`, where
/// borrowed from the body, are noted; nothing is kept.
pub(super) struct Volatile;

impl<'de> Deserialize<'de> for Volatile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if NOTED.with_borrow(Option::is_none) {
            return d.deserialize_ignored_any(IgnoredAny).map(|_| Volatile);
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Volatile;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Volatile, A::Error> {
                while let Some(k) = map.next_key::<Str<'de>>()? {
                    if k.0 == "name" || k.0 == "time" {
                        if let Cow::Borrowed(s) = map.next_value::<Str<'de>>()?.0 {
                            note(s);
                        }
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Volatile)
            }
        }
        d.deserialize_map(V)
    }
}

/// A list of [`Volatile`] entries, parsed past but for their names.
pub(super) fn volatile_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<IgnoredAny>, D::Error> {
    Option::<Vec<Volatile>>::deserialize(d).map(|l| l.map(|_| IgnoredAny))
}

fn note(s: &str) {
    NOTED.with_borrow_mut(|n| {
        if let Some(n) = n.as_mut().filter(|n| n.len() < MAX_VOLATILE) {
            n.push((s.as_ptr() as usize, s.len()));
        }
    });
}

/// Where a body's volatile strings are ([`volatile`]), as start and end
/// offsets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Volatiles {
    /// The uid's place.
    pub uid: (usize, usize),
    /// The others' (at most [`MAX_VOLATILE`]), in the body's order.
    pub others: Vec<(usize, usize)>,
}

/// Where in `body` the strings are that differ between a ReplicaSet's
/// replicas and that the glance parses past (or reads apart, the uid), read
/// again for [`crate::recall`]: a body equal to this one outside them, and
/// whose strings there are as long and plain, glances the same but for its
/// uid. `None` where [`read`] gives no glance, an entry of those lists is
/// not an object whose `name` or `time` is a string, or the uid holds an
/// escape.
pub fn volatile(body: &[u8], max_entries: usize) -> Option<Volatiles> {
    NOTED.set(Some(Vec::new()));
    let glance = read(body, max_entries);
    let noted = NOTED.take().unwrap_or_default();
    let Cow::Borrowed(uid) = glance?.request.uid.0 else {
        return None;
    };
    let start = body.as_ptr() as usize;
    let at = |(address, len): (usize, usize)| {
        let from = address.checked_sub(start)?;
        Some((from, from.checked_add(len)?)).filter(|(_, to)| *to <= body.len())
    };
    Some(Volatiles {
        uid: at((uid.as_ptr() as usize, uid.len()))?,
        others: noted.into_iter().map(at).collect::<Option<_>>()?,
    })
}
