//! What an admission's [`super::Syncer::ensure`] found of the plan's backing
//! Secrets: warnings, stale cached values, and the version each holds.

use crate::fetch::FetchKey;
use crate::plan::{Content, Plan};

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
    /// admission saw (what the pod's containers will read): recorded on the
    /// pod ([`crate::annotations::VERSIONS`]) for the refresher's rollouts.
    pub fn versions<'a>(&'a self, plan: &'a Plan) -> impl Iterator<Item = (&'a str, &'a str)> {
        plan.backing.iter().enumerate().filter_map(|(i, b)| {
            let held = self
                .held
                .iter()
                .find(|(j, _)| *j == i)
                .map(|(_, v)| v.as_str());
            let fetched = match &b.content {
                Content::Fresh { value } => Some(value.version_id.as_str()),
                Content::Unreachable { .. } => None,
            };
            Some((b.name.as_str(), held.or(fetched)?))
        })
    }
}
