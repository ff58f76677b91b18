//! The Lease that elects the one replica running the refresher, on
//! `kube-lease-manager`, with what it lacks for a quick, safe hand-over:
//! - its creation is retried with backoff (a control-plane blip at start must
//!   not crash-loop every replica);
//! - on shutdown the Lease is released before the process exits;
//! - a follower watches the Lease and, when it is released, starts over at
//!   once (the crate's follower otherwise sleeps until the old Lease would
//!   have expired).

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use super::Error;

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub seconds: u64,
}

/// The backoff between failed attempts to join the election: 1 s, doubling,
/// at most 30 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(5)).min(Duration::from_secs(30))
}

/// Whether a Lease is free to take: no holder, or a holder that released it
/// (the crate clears the holder on release).
fn released(lease: &Lease) -> bool {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .is_none_or(str::is_empty)
}

/// Takes part in the election until `stop` turns true, telling `leading`
/// whether this replica holds the Lease. Releases the Lease on the way out.
/// Returns why it stopped ([`Error::LeaseStopped`] after `stop`).
pub async fn elect(
    client: kube::Client,
    settings: LeaseSettings,
    leading: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) -> Error {
    let api: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    let lease_watch = watcher(
        api,
        watcher::Config::default().fields(&format!("metadata.name={}", settings.name)),
    )
    .default_backoff()
    .applied_objects();
    let mut lease_watch = std::pin::pin!(lease_watch);
    let mut attempt = 0;
    loop {
        let manager =
            kube_lease_manager::LeaseManagerBuilder::new(client.clone(), settings.name.clone())
                .with_namespace(settings.namespace.clone())
                .with_identity(settings.identity.clone())
                .with_duration(settings.seconds)
                .with_grace(settings.seconds.div_ceil(3).max(1))
                .build()
                .await;
        let manager = match manager {
            Ok(m) => m,
            Err(e) => {
                let wait = backoff(attempt);
                attempt += 1;
                tracing::warn!(error = %e, retry_in = ?wait, "cannot join the Lease election; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = stop.wait_for(|s| *s) => return Error::LeaseStopped,
                }
            }
        };
        attempt = 0;
        let (mut state, task) = manager.watch().await;
        let restart = loop {
            tokio::select! {
                r = state.changed() => {
                    if r.is_err() {
                        leading.send_replace(false);
                        return Error::Lease("the Lease task stopped".into());
                    }
                    leading.send_replace(*state.borrow_and_update());
                }
                ev = lease_watch.next() => {
                    match ev {
                        Some(Ok(lease)) if !*state.borrow() && released(&lease) => break true,
                        Some(Err(e)) => tracing::debug!(error = %e, "Lease watch error (retrying)"),
                        _ => {}
                    }
                }
                _ = stop.wait_for(|s| *s) => break false,
            }
        };
        // Dropping the receiver makes the task release the Lease (a no-op for
        // a follower) and end.
        leading.send_replace(false);
        drop(state);
        match tokio::time::timeout(Duration::from_secs(3), task).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "could not release the Lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the Lease task failed"),
            Err(_) => tracing::warn!("the Lease was not released within 3 s"),
        }
        if !restart {
            tracing::info!("released the refresher's Lease");
            return Error::LeaseStopped;
        }
        tracing::info!("the refresher's Lease was released by its holder; taking part again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joining_is_retried_with_a_bounded_backoff() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(16));
        assert_eq!(backoff(5), Duration::from_secs(30));
        assert_eq!(backoff(60), Duration::from_secs(30));
    }

    #[test]
    fn a_lease_without_a_holder_is_free() {
        let lease = |holder: Option<&str>| Lease {
            spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                holder_identity: holder.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(released(&lease(None)));
        assert!(released(&lease(Some(""))));
        assert!(!released(&lease(Some("replica-a"))));
        assert!(released(&Lease::default()));
    }
}
