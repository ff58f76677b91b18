//! Whether a review's namespace is one sm-injector acts in. The API server
//! only sends reviews for opted-in namespaces, but `/mutate` answers whoever
//! connects: a review naming `kube-system`, a namespace that never opted in,
//! or a name no namespace can have is answered unchanged, with no write,
//! whoever sent it. Pure: the opt-in label is looked up by the caller.

/// Why a review's namespace is out of scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutOfScope {
    /// Not a DNS-1123 label: no namespace has that name.
    NotAName,
    /// A namespace the webhook configuration excludes (`kube-system`,
    /// sm-injector's own).
    Excluded,
    /// Without the label `sm-injector.io/inject=enabled`.
    NotOptedIn,
}

impl OutOfScope {
    pub fn reason(self) -> &'static str {
        match self {
            OutOfScope::NotAName => "the namespace is not a DNS-1123 label",
            OutOfScope::Excluded => "the namespace is excluded from injection",
            OutOfScope::NotOptedIn => "the namespace does not carry sm-injector.io/inject=enabled",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Scope {
    excluded: Vec<String>,
}

impl Scope {
    /// `kube-system` and `own` (sm-injector's namespace), as the shipped
    /// webhook configuration excludes them.
    pub fn new(own: &str) -> Self {
        let mut excluded = vec!["kube-system".to_string()];
        if own != "kube-system" {
            excluded.push(own.to_string());
        }
        Scope { excluded }
    }

    /// What can be told from the name alone.
    pub fn check_name(&self, namespace: &str) -> Result<(), OutOfScope> {
        if !is_dns1123_label(namespace) {
            return Err(OutOfScope::NotAName);
        }
        if self.excluded.iter().any(|e| e == namespace) {
            return Err(OutOfScope::Excluded);
        }
        Ok(())
    }
}

/// At most 63 characters of `a-z`, `0-9` and `-`, starting and ending with a
/// letter or digit: what Kubernetes allows a namespace to be called.
pub fn is_dns1123_label(s: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|&c| alnum(c) || c == b'-')
        && alnum(b[0])
        && alnum(b[b.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_no_namespace_can_have_and_excluded_ones_are_out_of_scope() {
        let s = Scope::new("sm-injector");
        assert_eq!(s.check_name("arrakis"), Ok(()));
        assert_eq!(s.check_name("team-1"), Ok(()));
        assert_eq!(s.check_name("kube-system"), Err(OutOfScope::Excluded));
        assert_eq!(s.check_name("sm-injector"), Err(OutOfScope::Excluded));
        for bad in [
            "",
            "Arrakis",
            "a_b",
            "-a",
            "a-",
            "a.b",
            "../x",
            &"a".repeat(64),
        ] {
            assert_eq!(s.check_name(bad), Err(OutOfScope::NotAName), "{bad:?}");
        }
        assert_eq!(s.check_name(&"a".repeat(63)), Ok(()));
        assert_eq!(Scope::new("kube-system").excluded.len(), 1);
    }
}
