//! What the managed serving certificate needs next, as functions of the
//! stored CAs, the webhook's live caBundle and the time: when to make or
//! rotate the CA, what the caBundle must hold, which CA signs this replica's
//! serving certificate and when that certificate is renewed. No I/O here.
//!
//! The trust chain never breaks: a new CA is published in the caBundle beside
//! the old one, and serving certificates move to it only once it has been
//! there for the propagation delay; the old CA leaves the bundle when it
//! expires, long after the last certificate it signed.

use std::time::Duration;

/// A CA as stored: its PEM certificate and key, when it was made and when it
/// expires (Unix seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCa {
    pub cert: String,
    pub key: String,
    pub created: i64,
    pub not_after: i64,
}

/// The CA Secret's content: the CA that signs now, and the one it replaced
/// while that one is still trusted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub current: Option<StoredCa>,
    pub previous: Option<StoredCa>,
}

/// The lifetimes. Each certificate is renewed at two thirds of its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub ca_validity: Duration,
    pub leaf_validity: Duration,
    /// How long a new CA stays in the caBundle before certificates it signed
    /// are served (every API server must have loaded the new bundle).
    pub propagation: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            ca_validity: Duration::from_secs(5 * 365 * 86400),
            leaf_validity: Duration::from_secs(90 * 86400),
            propagation: Duration::from_secs(300),
        }
    }
}

impl Timing {
    /// Refuses lifetimes that cannot keep the chain: the old CA is trusted
    /// for the last third of its life after its successor is published, which
    /// must cover the propagation delay.
    pub fn check(&self) -> Result<(), String> {
        if self.ca_validity.as_secs() < 30 || self.leaf_validity.as_secs() < 10 {
            return Err("the CA must be valid for 30 s at least, the certificate for 10 s".into());
        }
        if self.leaf_validity > self.ca_validity {
            return Err("the certificate's validity must not exceed the CA's".into());
        }
        if self.propagation.as_secs() * 3 >= self.ca_validity.as_secs() {
            return Err("the propagation delay must be under a third of the CA's validity".into());
        }
        Ok(())
    }
}

/// What the CA Secret needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreChange {
    /// No CA yet: make one.
    Create,
    /// The CA is two thirds through its life (or past it): make a new one
    /// and keep this one as the previous.
    Rotate,
    /// The previous CA has expired: forget it.
    DropPrevious,
}

/// When a certificate made at `from` and expiring at `to` is renewed.
pub fn renewal_at(from: i64, to: i64) -> i64 {
    from + (to - from).max(0) * 2 / 3
}

pub fn store_change(s: &Stored, now: i64) -> Option<StoreChange> {
    let Some(c) = &s.current else {
        return Some(StoreChange::Create);
    };
    if now >= renewal_at(c.created, c.not_after) {
        return Some(StoreChange::Rotate);
    }
    match &s.previous {
        Some(p) if p.not_after <= now => Some(StoreChange::DropPrevious),
        _ => None,
    }
}

/// The CAs the caBundle must hold, newest first: the current one and the
/// previous one while it has not expired.
pub fn bundle(s: &Stored, now: i64) -> Vec<&str> {
    let mut out: Vec<&str> = s.current.iter().map(|c| c.cert.as_str()).collect();
    if let Some(p) = &s.previous
        && p.not_after > now
    {
        out.push(&p.cert);
    }
    out
}

/// The CA that signs this replica's serving certificate: the current one
/// once it has been published for the propagation delay; until then the
/// previous one while it is still trusted; the current one when there is no
/// other choice (a first install). `published` says whether a CA's PEM
/// certificate is in the live caBundle. `None`: nothing that the API server
/// trusts can sign yet.
pub fn signer<'a>(
    s: &'a Stored,
    now: i64,
    t: &Timing,
    published: &dyn Fn(&str) -> bool,
) -> Option<&'a StoredCa> {
    let current = s.current.as_ref().filter(|c| published(&c.cert));
    let settled = current.filter(|c| now >= c.created + t.propagation.as_secs() as i64);
    let previous = s
        .previous
        .as_ref()
        .filter(|p| p.not_after > now && published(&p.cert));
    settled.or(previous).or(current)
}

/// This replica's serving certificate, as far as planning goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// The PEM certificate of the CA that signed it.
    pub issuer: String,
    pub issued: i64,
    pub not_after: i64,
}

/// Whether a new serving certificate is needed: there is none, another CA
/// should sign it, or it is two thirds through its life.
pub fn leaf_due(leaf: Option<&Leaf>, signer: &StoredCa, now: i64) -> bool {
    match leaf {
        None => true,
        Some(l) => l.issuer != signer.cert || now >= renewal_at(l.issued, l.not_after),
    }
}

/// How long a certificate issued now by `signer` is valid: the configured
/// validity, but never past its CA's expiry.
pub fn leaf_validity(signer: &StoredCa, now: i64, t: &Timing) -> Duration {
    let left = (signer.not_after - now).max(1) as u64;
    t.leaf_validity.min(Duration::from_secs(left))
}

/// When something changes next without anyone writing: the CA's rotation,
/// the previous CA's expiry, the end of the new CA's propagation delay, the
/// serving certificate's renewal. At least a second from now.
pub fn next_change(s: &Stored, leaf: Option<&Leaf>, now: i64, t: &Timing) -> i64 {
    let mut at = Vec::new();
    if let Some(c) = &s.current {
        at.push(renewal_at(c.created, c.not_after));
        at.push(c.created + t.propagation.as_secs() as i64);
    }
    if let Some(p) = &s.previous {
        at.push(p.not_after);
    }
    if let Some(l) = leaf {
        at.push(renewal_at(l.issued, l.not_after));
    }
    at.into_iter()
        .filter(|&x| x > now)
        .min()
        .unwrap_or(now + 3600)
        .max(now + 1)
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
