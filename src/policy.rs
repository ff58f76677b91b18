//! Who may read what (SPEC section 4): the access rule of one namespace.

use std::fmt;

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
    fn star_crosses_slashes_and_empty_annotation_allows_nothing() {
        let r = AccessRule::for_namespace("n", Some("*/prod/*"));
        assert!(r.allows("a/b/prod/c/d"));
        let r = AccessRule::for_namespace("n", Some(""));
        assert!(!r.allows("n/x"));
        assert!(r.to_string().contains("is empty"));
    }
}
