//! Telling the refresher's leader that a backing Secret holds something
//! other than what an admission fetched: an inventory mark
//! ([`inventory::nudge_mark`]) its watch sees at once.

use super::{Strs, Syncer, inventory};

impl Syncer {
    /// Tells the refresher (through the inventory, which its leader watches)
    /// that `backing` holds something other than the version `fetched`; once
    /// per (Secret, version) for [`KNOWN_TTL`](super::KNOWN_TTL), in the background.
    pub(super) async fn nudge(&self, namespace: &str, backing: &str, fetched: &str) {
        let Some(inv) = self.inventory.clone() else {
            return;
        };
        if self
            .nudged
            .contains_key(&Strs([namespace, backing, fetched]))
        {
            return;
        }
        self.nudged
            .insert(
                (
                    namespace.to_string(),
                    backing.to_string(),
                    fetched.to_string(),
                ),
                (),
            )
            .await;
        let (namespace, backing, fetched) = (
            namespace.to_string(),
            backing.to_string(),
            fetched.to_string(),
        );
        tokio::spawn(async move {
            let marks = [(backing, Some(inventory::nudge_mark(&fetched)))].into();
            if let Err(e) = inv.mark(&namespace, &marks).await {
                tracing::warn!(namespace, error = %e, "could not tell the refresher that a backing Secret differs from Secrets Manager; it finds out at its next pass");
            }
        });
    }
}
