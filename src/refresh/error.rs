//! The refresher's errors: why it stopped (the process exits), and why one
//! backing Secret could not be refreshed (counted by reason).

use crate::fetch::FetchError;

/// Why the refresher stopped (the process exits on any of them, so that
/// another replica takes the Lease).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot take part in the Lease election: {0}")]
    Lease(String),
    #[error("the Lease task stopped")]
    LeaseStopped,
    #[error("the {0} watch ended")]
    WatchEnded(&'static str),
}

/// Why one backing Secret could not be refreshed (it is kept as it is).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    SecretsManager(FetchError),
    /// The API server refused or failed a read or write (its status code
    /// kept when it answered).
    #[error("{0}")]
    Kubernetes(crate::store::WriteError),
    #[error("{0}")]
    Content(String),
    #[error("{0}")]
    Mismatch(String),
}

impl Failure {
    /// The `reason` label of `sm_injector_refresh_failures_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Failure::SecretsManager(_) => "secretsmanager",
            Failure::Kubernetes(_) => "kubernetes",
            Failure::Content(_) => "content",
            Failure::Mismatch(_) => "mismatch",
        }
    }
}
