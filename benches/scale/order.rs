//! The order in which the creators take the pods: namespace by namespace (the
//! 16 creators on one or two namespaces' pods at a time, as a scale-up), or
//! with `SCALE_ORDER=interleaved` the namespaces taking turns (a creator's pod
//! in another namespace than the others'). Created namespace by namespace,
//! the pods of a namespace also wait together on the API server's own
//! admission (its `LimitRanger` lists a namespace's LimitRanges once for all
//! of them), which can hide what a webhook adds. [`turns`]: the order of the
//! ways in each round of a wave's chunks.

use k8s_openapi::api::core::v1::Pod;

#[derive(Clone, Copy, PartialEq)]
pub enum Order {
    ByNamespace,
    Interleaved,
}

impl Order {
    /// From `SCALE_ORDER` (`by-namespace`, the default, or `interleaved`).
    pub fn from_env() -> Order {
        match std::env::var("SCALE_ORDER").as_deref() {
            Err(_) | Ok("by-namespace") => Order::ByNamespace,
            Ok("interleaved") => Order::Interleaved,
            Ok(other) => {
                panic!("SCALE_ORDER={other:?}: by-namespace (the default) or interleaved")
            }
        }
    }

    /// What the output says of it.
    pub fn describe(self) -> &'static str {
        match self {
            Order::ByNamespace => "pods created namespace by namespace (SCALE_ORDER=by-namespace)",
            Order::Interleaved => {
                "pods created with the namespaces taking turns (SCALE_ORDER=interleaved)"
            }
        }
    }

    /// `pods`, given namespace by namespace with `per` pods each, in this order.
    pub fn arrange(self, pods: Vec<(String, Pod)>, per: usize) -> Vec<(String, Pod)> {
        if self == Order::ByNamespace || per == 0 {
            return pods;
        }
        // The first pod of every namespace, then the second, ...: a stable
        // sort on the place within the namespace keeps the namespaces' order.
        let mut placed: Vec<(usize, (String, Pod))> = pods.into_iter().enumerate().collect();
        placed.sort_by_key(|(i, _)| i % per);
        placed.into_iter().map(|(_, pod)| pod).collect()
    }
}

/// The ways' turns in a wave's `round`, by index: each round starts one way
/// further on, so that work recurring at the pace of a round (the
/// refresher's checks, once a minute) does not fall on one way's chunks
/// every time.
pub fn turns(round: usize, ways: usize) -> impl Iterator<Item = usize> {
    (0..ways).map(move |step| (round + step) % ways)
}
