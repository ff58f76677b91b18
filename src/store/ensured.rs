//! What an admission's [`super::Syncer::ensure`] found of the plan's backing
//! Secrets: warnings, stale cached values, and the version each holds; and
//! [`Vouched`], that a kept decision's backing Secrets were all found so.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::fetch::FetchKey;
use crate::plan::{Content, Plan};

/// How long, at most, a kept decision's admissions trust that its backing
/// Secrets hold what it fetched, once [`super::Syncer::ensure`] found them
/// all so on its warm path, without asking again for each ([`Vouched`]); and
/// at most a tenth of what an admission remembers ([`super::KNOWN_TTL`], or
/// `--cache-ttl` if shorter). It adds at most this to that memory and to the
/// inventory's memory of what it recorded: a Secret deleted by hand is
/// written again by the first admission after both.
pub const VOUCHED_FOR: Duration = Duration::from_secs(1);

/// Kept with a decision ([`crate::decisions::Decision`]): until when, in
/// which namespace (its UID, as [`super::Syncer::ensure`] scopes what it
/// knows) and under which of its generations ([`super::moves`]), every
/// backing Secret of the decision's plan was last found holding what the
/// plan fetched and recorded in the inventory. While it holds, the replicas'
/// admissions skip the two lookups per backing Secret that tell them so; a
/// rotation the leader makes in the namespace ends it at once, as it ends
/// the trust in what was found.
#[derive(Debug, Default)]
pub struct Vouched(Mutex<Option<(Box<str>, u64, Instant)>>);

impl Vouched {
    /// Whether all was found so in `scope` under `generation`, trusted until
    /// after `now`.
    pub fn holds(&self, scope: &str, generation: u64, now: Instant) -> bool {
        let held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        held.as_ref()
            .is_some_and(|(s, g, until)| **s == *scope && *g == generation && now < *until)
    }

    /// All was found so in `scope` under `generation`: trusted until `until`.
    pub fn found(&self, scope: &str, generation: u64, until: Instant) {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *held = Some((scope.into(), generation, until));
    }
}

/// What [`Syncer::ensure`](super::Syncer::ensure) found.
#[derive(Debug, Default)]
pub struct Ensured {
    pub warnings: Vec<String>,
    /// Cached values that differ from what the backing Secrets hold: to be
    /// dropped, so that the next admission asks Secrets Manager again.
    pub stale: Vec<FetchKey>,
    /// The backing Secrets (by index in the plan) found holding another
    /// version than the plan fetched, with that version; see
    /// [`Ensured::versions`]. Empty on the warm path (nothing copied there).
    pub held: Vec<(usize, String)>,
}

impl Ensured {
    /// The version each backing Secret of `plan` holds, as far as this
    /// admission saw (what the pod's containers will read), in the plan's
    /// order (`None` where it is not known): recorded on the pod
    /// ([`crate::annotations::VERSIONS`]) for the refresher's rollouts.
    pub fn versions<'a>(&'a self, plan: &'a Plan) -> impl Iterator<Item = Option<&'a str>> {
        plan.backing.iter().enumerate().map(|(i, b)| {
            let held = self
                .held
                .iter()
                .find(|(j, _)| *j == i)
                .map(|(_, v)| v.as_str());
            let fetched = match &b.content {
                Content::Fresh { value } => Some(value.version_id.as_str()),
                Content::Unreachable { .. } => None,
            };
            held.or(fetched)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vouched_holds_in_its_namespace_until_its_time() {
        let v = Vouched::default();
        let t = Instant::now();
        assert!(!v.holds("uid-1", 3, t), "nothing found yet");
        v.found("uid-1", 3, t + VOUCHED_FOR);
        assert!(v.holds("uid-1", 3, t));
        assert!(v.holds("uid-1", 3, t + VOUCHED_FOR - Duration::from_millis(1)));
        assert!(!v.holds("uid-1", 3, t + VOUCHED_FOR), "past its time");
        assert!(
            !v.holds("uid-1", 4, t),
            "the leader moved a backing Secret of the namespace since"
        );
        assert!(
            !v.holds("uid-2", 3, t),
            "a namespace made again has another UID"
        );
        v.found("uid-2", 3, t + 2 * VOUCHED_FOR);
        assert!(v.holds("uid-2", 3, t + VOUCHED_FOR));
        assert!(
            !v.holds("uid-1", 3, t + VOUCHED_FOR),
            "found in the other only"
        );
    }
}
