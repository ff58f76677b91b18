//! What `/mutate` holds in memory at once, taken before a body is read:
//! requests in flight, and bytes of large bodies (by their `Content-Length`)
//! in all and per source address. A request over budget is answered at once
//! (429 or 503, with the budget's name) instead of being buffered.
//!
//! Bodies of at most [`SMALL`] bytes (every ordinary pod: a few KiB) are not
//! charged to the byte budget, only to the request budget, so that callers
//! sending large bodies, even through the API server (dry runs of huge pods),
//! never crowd out ordinary admissions. Memory in flight is then at most
//! `bytes + requests x SMALL` of bodies, plus what decoding them builds
//! (bounded by [`crate::wire`]'s entry cap).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Bodies up to this size are charged to the request budget only.
pub const SMALL: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests being read or answered at once.
    pub requests: usize,
    /// Bytes of bodies larger than [`SMALL`], in all and from one source.
    pub bytes: u64,
    pub bytes_per_source: u64,
}

#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

struct Inner {
    limits: Limits,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    requests: usize,
    bytes: u64,
    by_source: HashMap<IpAddr, u64>,
}

/// Why a request was not taken in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "sm-injector is answering {0} requests, its most at once (--max-inflight-requests); retry"
    )]
    Requests(usize),
    #[error(
        "sm-injector holds {0} bytes of large request bodies, its most at once (--max-inflight-bytes); retry"
    )]
    Bytes(u64),
    #[error(
        "this caller already has {0} bytes of large request bodies in flight, its most at once (--max-inflight-bytes-per-source)"
    )]
    SourceBytes(u64),
}

impl Refusal {
    /// The `reason` label of `sm_injector_requests_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Requests(_) => "requests",
            Refusal::Bytes(_) => "bytes",
            Refusal::SourceBytes(_) => "source-bytes",
        }
    }

    /// 429 for a caller over its own share; 503 when the replica is full.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::SourceBytes(_) => 429,
            _ => 503,
        }
    }
}

/// A request's place in the budget, given back when dropped.
pub struct Taken {
    inner: Arc<Inner>,
    source: IpAddr,
    bytes: u64,
}

impl Budget {
    pub fn new(limits: Limits) -> Self {
        Budget {
            inner: Arc::new(Inner {
                limits,
                state: Mutex::default(),
            }),
        }
    }

    /// A place for a request from `source` whose body is `length` bytes
    /// (`None`: not announced, charged as `max_body`).
    pub fn take(
        &self,
        source: IpAddr,
        length: Option<u64>,
        max_body: u64,
    ) -> Result<Taken, Refusal> {
        let l = &self.inner.limits;
        let len = length.unwrap_or(max_body).min(max_body);
        let bytes = if len > SMALL { len } else { 0 };
        let mut s = self.inner.state.lock().expect("not poisoned");
        if s.requests >= l.requests {
            return Err(Refusal::Requests(l.requests));
        }
        if bytes > 0 {
            let mine = s.by_source.get(&source).copied().unwrap_or(0);
            if mine + bytes > l.bytes_per_source {
                return Err(Refusal::SourceBytes(l.bytes_per_source));
            }
            if s.bytes + bytes > l.bytes {
                return Err(Refusal::Bytes(l.bytes));
            }
            s.bytes += bytes;
            *s.by_source.entry(source).or_default() += bytes;
        }
        s.requests += 1;
        Ok(Taken {
            inner: self.inner.clone(),
            source,
            bytes,
        })
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        let mut s = self.inner.state.lock().expect("not poisoned");
        s.requests -= 1;
        if self.bytes > 0 {
            s.bytes -= self.bytes;
            if let Some(b) = s.by_source.get_mut(&self.source) {
                *b -= self.bytes;
                if *b == 0 {
                    s.by_source.remove(&self.source);
                }
            }
        }
    }
}

/// The body, into one buffer sized from its `Content-Length` (collecting
/// frames and joining them held twice the body at the end).
pub async fn read_body(
    body: axum::body::Body,
    length: Option<u64>,
    max: usize,
) -> Result<Vec<u8>, String> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut out = Vec::with_capacity(length.map_or(0, |n| n as usize).min(max));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err("length limit exceeded".into());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn budget() -> Budget {
        Budget::new(Limits {
            requests: 4,
            bytes: 8 * MIB,
            bytes_per_source: 4 * MIB,
        })
    }

    #[test]
    fn large_bodies_are_held_to_a_share_per_source_and_a_total() {
        let b = budget();
        let _a1 = b.take(ip(2), Some(3 * MIB), 4 * MIB).unwrap();
        // The same source may not hold more than its share...
        assert_eq!(
            b.take(ip(2), Some(2 * MIB), 4 * MIB).err(),
            Some(Refusal::SourceBytes(4 * MIB))
        );
        // ...an unannounced length counts as the largest body...
        let b3 = b.take(ip(3), None, 4 * MIB).unwrap();
        assert_eq!(b3.bytes, 4 * MIB, "charged as --max-body-bytes");
        // ...and the replica not more than its total.
        let _c = b.take(ip(4), Some(MIB), 4 * MIB).unwrap();
        let e = b.take(ip(5), Some(MIB), 4 * MIB).err().unwrap();
        assert_eq!(e, Refusal::Bytes(8 * MIB));
        assert_eq!((e.status(), e.reason()), (503, "bytes"));
        assert!(e.to_string().contains("--max-inflight-bytes"), "{e}");
    }

    #[test]
    fn ordinary_pods_get_in_while_large_bodies_fill_the_byte_budget() {
        let b = budget();
        let _big = [
            b.take(ip(2), Some(4 * MIB), 4 * MIB).unwrap(),
            b.take(ip(1), Some(4 * MIB), 4 * MIB).unwrap(),
        ];
        assert!(b.take(ip(1), Some(2 * MIB), 4 * MIB).is_err());
        // A 10 KiB pod from the same address as a large one still gets in.
        let small = b.take(ip(1), Some(10 * 1024), 4 * MIB).unwrap();
        let _also = b.take(ip(1), Some(SMALL), 4 * MIB).unwrap();
        // Until the request budget is full.
        assert_eq!(
            b.take(ip(1), Some(100), 4 * MIB).err(),
            Some(Refusal::Requests(4))
        );
        drop(small);
        b.take(ip(1), Some(100), 4 * MIB).unwrap();
    }

    #[test]
    fn places_come_back_when_requests_end() {
        let b = budget();
        for _ in 0..10 {
            let held: Vec<_> = (0..2)
                .map(|i| b.take(ip(i), Some(4 * MIB), 4 * MIB).unwrap())
                .collect();
            drop(held);
        }
        let s = b.inner.state.lock().unwrap();
        assert_eq!((s.requests, s.bytes, s.by_source.len()), (0, 0, 0));
    }
}
