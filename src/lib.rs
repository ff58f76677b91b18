//! sm-injector: a Kubernetes mutating admission webhook that injects AWS Secrets
//! Manager secrets into pods as env vars, through backing Kubernetes Secrets.
//!
//! The decision logic is pure ([`annotations`], [`reference`](mod@reference), [`policy`],
//! [`plan`], [`patch`], [`backing`], [`secret`], [`fetch`], the write rule in
//! [`store::rule`], the refresher's planner and index); I/O lives at the
//! edges ([`source`] for AWS, [`store`] for backing Secrets in Kubernetes,
//! [`server`] for HTTPS). Both writers, [`admission`] and [`refresh`], use
//! [`store`]; neither imports the other.

#![forbid(unsafe_code)]

pub mod admission;
pub mod annotations;
pub mod backing;
pub mod cache;
pub mod certs;
pub mod connections;
pub mod convert;
pub mod credentials;
pub mod decisions;
pub mod decode;
pub mod fetch;
pub mod glance;
pub mod identity;
pub mod inflight;
pub mod kube_error;
pub mod lookup;
pub mod managed_tls;
pub mod metrics;
#[cfg(test)]
mod mock_api;
pub mod namespaces;
pub mod patch;
pub mod plan;
pub mod pod;
pub mod policy;
pub mod probes;
pub mod quota;
pub mod recall;
pub mod record;
pub mod reference;
pub mod refresh;
pub mod render;
pub mod secret;
pub mod server;
pub mod service_accounts;
pub mod source;
pub mod status;
pub mod store;
pub mod tls;
pub mod wire;
