//! Who may read what (SPEC section 4): the access rule of one namespace.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use wildmatch::WildMatch;

use crate::annotations::ALLOWED_SECRETS;

/// The secrets a namespace's pods may reference, by canonical secret name.
#[derive(Debug, Clone)]
pub struct AccessRule {
    namespace: String,
    globs: Vec<String>,
    matchers: Vec<WildMatch>,
    /// True when the rule comes from the Namespace annotation.
    from_annotation: bool,
}

impl AccessRule {
    /// The rule for `namespace`, given the value of its `sm-injector.io/allowed-secrets`
    /// annotation if any. The annotation replaces the default `<namespace>/*`: to widen
    /// it, list the default too (`team-a/*,shared/*`). An empty annotation allows nothing.
    pub fn for_namespace(namespace: &str, annotation: Option<&str>) -> Self {
        let (globs, from_annotation) = match annotation {
            Some(v) => (
                v.split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(String::from)
                    .collect(),
                true,
            ),
            None => (vec![format!("{namespace}/*")], false),
        };
        // Only `*` is a wildcard; `?` can never occur in a secret name, so
        // treating it as one changes nothing.
        let matchers = globs.iter().map(|g| WildMatch::new(g)).collect();
        AccessRule {
            namespace: namespace.to_string(),
            globs,
            matchers,
            from_annotation,
        }
    }

    /// Checks a canonical secret name (never an ARN).
    pub fn allows(&self, secret_name: &str) -> bool {
        self.matchers.iter().any(|m| m.matches(secret_name))
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }
}

/// Compiled rules by namespace, each with the annotation it was built from:
/// an admission reuses its namespace's rule until the annotation changes
/// (building one per admission showed in profiles of the warm path).
#[derive(Default)]
pub struct Rules {
    memo: Mutex<HashMap<String, Kept>>,
}

/// A namespace's annotation and the rule built from it.
type Kept = (Option<String>, Arc<AccessRule>);

/// Namespaces whose rules [`Rules`] keeps; past this it starts over (it also
/// holds namespaces since deleted).
const MAX_RULES: usize = 10_000;

impl Rules {
    /// [`AccessRule::for_namespace`], built once per annotation value.
    pub fn get(&self, namespace: &str, annotation: Option<&String>) -> Arc<AccessRule> {
        let mut memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, rule)) = memo.get(namespace)
            && seen.as_ref() == annotation
        {
            return rule.clone();
        }
        let rule = Arc::new(AccessRule::for_namespace(
            namespace,
            annotation.map(String::as_str),
        ));
        if memo.len() >= MAX_RULES {
            memo.clear();
        }
        memo.insert(namespace.to_string(), (annotation.cloned(), rule.clone()));
        rule
    }
}

impl fmt::Display for AccessRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.from_annotation {
            if self.globs.is_empty() {
                write!(
                    f,
                    "no secret (its Namespace annotation {ALLOWED_SECRETS} is empty)"
                )
            } else {
                write!(
                    f,
                    "secrets matching {:?} (its Namespace annotation {ALLOWED_SECRETS})",
                    self.globs.join(",")
                )
            }
        } else {
            write!(
                f,
                "secrets matching {:?} (the default rule; a cluster admin can change it with the Namespace annotation {ALLOWED_SECRETS})",
                self.globs.join(",")
            )
        }
    }
}

/// What the refresher needs of a namespace (from the watched Namespace
/// cache): whether it takes part, its access rule, an admin's forced refresh.
#[derive(Debug, Clone)]
pub struct NamespaceFacts {
    /// It carries `sm-injector.io/inject=enabled`.
    pub opted_in: bool,
    pub rule: AccessRule,
    /// The value of `sm-injector.io/refresh-now`, if any.
    pub refresh_now: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rule_is_the_namespace_prefix() {
        let r = AccessRule::for_namespace("arrakis", None);
        assert!(r.allows("arrakis/discord"));
        assert!(r.allows("arrakis/deep/path"));
        assert!(!r.allows("arrakisx/discord"));
        assert!(!r.allows("arrakis"));
        assert!(!r.allows("giedi/discord"));
        assert!(r.to_string().contains("\"arrakis/*\""));
        assert!(r.to_string().contains("default rule"));
    }

    #[test]
    fn annotation_replaces_the_default() {
        let r = AccessRule::for_namespace("team-a", Some("team-a/*, shared/db-*"));
        assert!(r.allows("team-a/x"));
        assert!(r.allows("shared/db-main"));
        assert!(!r.allows("shared/other"));
        // Narrowing: only one secret.
        let r = AccessRule::for_namespace("team-a", Some("team-a/only"));
        assert!(r.allows("team-a/only"));
        assert!(!r.allows("team-a/other"));
        assert!(r.to_string().contains(ALLOWED_SECRETS));
    }

    #[test]
    fn a_kept_rule_follows_its_namespace_annotation() {
        let rules = Rules::default();
        let a = rules.get("team", None);
        assert!(Arc::ptr_eq(&a, &rules.get("team", None)), "built once");
        assert!(a.allows("team/x") && !a.allows("shared/x"));
        let widened = "team/*,shared/*".to_string();
        let b = rules.get("team", Some(&widened));
        assert!(b.allows("shared/x"), "a changed annotation is a new rule");
        assert!(Arc::ptr_eq(&b, &rules.get("team", Some(&widened))));
        let emptied = String::new();
        assert!(!rules.get("team", Some(&emptied)).allows("team/x"));
        assert!(rules.get("team", None).allows("team/x"), "and back");
        // Another namespace with the same annotation has its own rule.
        assert!(!rules.get("other", None).allows("team/x"));
        for i in 0..MAX_RULES + 5 {
            rules.get(&format!("ns{i}"), None);
        }
        assert!(rules.memo.lock().unwrap().len() <= MAX_RULES);
        assert!(rules.get("ns3", None).allows("ns3/x"));
    }

    #[test]
    fn star_crosses_slashes_and_empty_annotation_allows_nothing() {
        let r = AccessRule::for_namespace("n", Some("*/prod/*"));
        assert!(r.allows("a/b/prod/c/d"));
        let r = AccessRule::for_namespace("n", Some(""));
        assert!(!r.allows("n/x"));
        assert!(r.to_string().contains("is empty"));
    }
}
