//! Level-triggered rollouts, as pure decisions: a workload with
//! `sm-injector.io/restart-on-rotation` is rolled whenever some of its pods
//! run another version of a backing Secret than the Secret holds, whoever
//! wrote that version and whichever replica leads; exactly once per version.
//!
//! "Once" is kept in the API, not in a leader's memory: a rollout writes the
//! versions it rolls to into the pod template ([`ROTATED_VERSIONS`]), and a
//! template that already names the held version of every Secret its pods are
//! behind on is not rolled again (old pods of a rollout in progress are
//! behind until they are gone). A new leader reads the same template.
//!
//! [`ROTATED_VERSIONS`]: crate::annotations::ROTATED_VERSIONS

use std::collections::{BTreeMap, HashMap};

use super::index::{Behind, Workload};

/// The template's new [`ROTATED_VERSIONS`] record, or `None` when the
/// template already names what the pods are behind on (rolled before, by
/// this leader or another). `template` is its current record (empty when
/// absent or unreadable). Entries for Secrets the workload no longer uses
/// are dropped.
///
/// [`ROTATED_VERSIONS`]: crate::annotations::ROTATED_VERSIONS
pub fn roll_to(
    template: &BTreeMap<String, String>,
    behind: &Behind,
) -> Option<BTreeMap<String, String>> {
    let rolled = behind.stale.iter().all(|b| {
        template
            .get(b)
            .is_some_and(|v| behind.wanted.get(b) == Some(v))
    });
    if rolled {
        return None;
    }
    Some(behind.wanted.clone())
}

/// Whether a workload's pod template (its annotations) still names one of
/// `secrets` (by name, or by an ARN of that name): a workload whose template
/// no longer uses a rotated secret (its pods are old ones, or they only claim
/// to be its) is not rolled for it.
pub fn template_uses(
    annotations: &BTreeMap<String, String>,
    secrets: &std::collections::BTreeSet<String>,
) -> bool {
    let Ok(Some(inj)) = crate::annotations::parse(annotations, std::time::Duration::ZERO) else {
        return false;
    };
    let names = |id: &str| {
        secrets
            .iter()
            .any(|s| id == s || (id.starts_with("arn:") && crate::backing::arn_names(id, s)))
    };
    inj.env.iter().any(|e| names(e.reference.id))
        || inj.env_from.iter().any(|e| names(e.reference.id))
}

/// What this leader has made sure of, per workload: the versions its
/// template names (or that it does not ask to be rolled), so that a rollout
/// in progress costs no API call per pass.
#[derive(Debug, Default)]
pub struct Rollouts {
    settled: HashMap<(String, Workload), BTreeMap<String, String>>,
}

impl Rollouts {
    /// The workloads of `behind` that need a look (a read of the workload):
    /// those not settled at the versions they are now behind on. Forgets
    /// workloads that are no longer behind.
    pub fn to_check(
        &mut self,
        behind: BTreeMap<(String, Workload), Behind>,
    ) -> Vec<((String, Workload), Behind)> {
        self.settled.retain(|k, _| behind.contains_key(k));
        behind
            .into_iter()
            .filter(|(k, b)| self.settled.get(k) != Some(&b.wanted))
            .collect()
    }

    /// `workload` holds (or needs no) rollout to `wanted`.
    pub fn settled(&mut self, workload: (String, Workload), wanted: BTreeMap<String, String>) {
        self.settled.insert(workload, wanted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn behind(wanted: &[(&str, &str)], stale: &[&str]) -> Behind {
        Behind {
            wanted: map(wanted),
            stale: stale.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_rotation_rolls_once_and_a_template_that_names_it_is_not_rolled_again() {
        let b = behind(&[("db", "v2"), ("redis", "r1")], &["db"]);
        // Never rolled: roll to every Secret's held version.
        let first = roll_to(&BTreeMap::new(), &b).unwrap();
        assert_eq!(first, map(&[("db", "v2"), ("redis", "r1")]));
        // Old pods still running during the rollout: not rolled again.
        assert_eq!(roll_to(&first, &b), None);
        // A template rolled for an earlier version of the same Secret.
        assert!(roll_to(&map(&[("db", "v1")]), &b).is_some());
        // A rollback in Secrets Manager is another version: rolled again.
        let back = behind(&[("db", "v1"), ("redis", "r1")], &["db"]);
        assert_eq!(
            roll_to(&first, &back),
            Some(map(&[("db", "v1"), ("redis", "r1")]))
        );
        // Secrets the workload stopped using leave the record.
        let fewer = behind(&[("db", "v3")], &["db"]);
        assert_eq!(roll_to(&first, &fewer), Some(map(&[("db", "v3")])));
    }

    #[test]
    fn only_a_template_that_names_a_rotated_secret_is_rolled_for_it() {
        let secrets = ["n/db".to_string()].into();
        let ann = |pairs: &[(&str, &str)]| map(pairs);
        assert!(template_uses(
            &ann(&[("sm-injector.io/env.DB", "n/db#url")]),
            &secrets
        ));
        assert!(template_uses(
            &ann(&[("sm-injector.io/env-from", "n/db")]),
            &secrets
        ));
        assert!(template_uses(
            &ann(&[(
                "sm-injector.io/env.DB",
                "arn:aws:secretsmanager:r:1:secret:n/db-AbCdEf#url"
            )]),
            &secrets
        ));
        // Another secret, no sm-injector annotation, or a broken one: not rolled.
        assert!(!template_uses(
            &ann(&[("sm-injector.io/env.DB", "n/other#url")]),
            &secrets
        ));
        assert!(!template_uses(&ann(&[("app", "n/db")]), &secrets));
        assert!(!template_uses(
            &ann(&[("sm-injector.io/env.1X", "n/db")]),
            &secrets
        ));
    }

    #[test]
    fn a_settled_workload_costs_no_read_until_it_falls_behind_again() {
        let w = (
            "n".to_string(),
            Workload {
                kind: "Deployment",
                name: "web".into(),
            },
        );
        let b = behind(&[("db", "v2")], &["db"]);
        let mut r = Rollouts::default();
        let all = BTreeMap::from([(w.clone(), b.clone())]);
        assert_eq!(r.to_check(all.clone()).len(), 1);
        r.settled(w.clone(), b.wanted.clone());
        assert!(r.to_check(all.clone()).is_empty(), "pods still rolling");
        // Another rotation: looked at again.
        let b3 = behind(&[("db", "v3")], &["db"]);
        assert_eq!(r.to_check(BTreeMap::from([(w.clone(), b3)])).len(), 1);
        // Caught up (nothing behind): forgotten, so a later lag is looked at.
        assert!(r.to_check(BTreeMap::new()).is_empty());
        assert_eq!(r.to_check(all).len(), 1);
    }
}
