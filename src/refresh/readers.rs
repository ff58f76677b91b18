//! Whose identity reads each due backing Secret: sm-injector's own, or where
//! its namespace reads with each workload's role, the roles of the
//! ServiceAccounts its pods recorded, tried in turn: the first that may read
//! it decides, so a copy shared by several workloads is revoked only when
//! none of their roles may read it.

use std::collections::BTreeMap;

use super::Refresher;
use super::check::fetch_batches;
use super::index::{Key, Want};
use crate::fetch::{FetchError, FetchKey, FetchResults};
use crate::identity::{self, Identity, Mode};
use crate::secret::SecretValue;

/// What one due backing Secret was read as: the value (or why not), and the
/// workload identity that read it last, if it was one.
pub(super) type Read = (Option<Result<SecretValue, FetchError>>, Option<String>);

impl Refresher {
    /// Each due backing Secret read with its identities in turn, in batches
    /// per identity (one round per identity a copy has, for the copies the
    /// previous round's identity may not read).
    pub(super) async fn read_in_turn(&self, due: &[(Key, Want)]) -> Vec<Read> {
        let mut candidates = Vec::with_capacity(due.len());
        for (key, want) in due {
            candidates.push(self.readers(&key.namespace, want).await);
        }
        let mut read: Vec<Read> = vec![(None, None); due.len()];
        for round in 0.. {
            let mut keys: BTreeMap<Identity, Vec<FetchKey>> = BTreeMap::new();
            let mut asked = vec![];
            for (i, c) in candidates.iter().enumerate() {
                let Some(id) = c.as_ref().ok().and_then(|ids| ids.get(round)) else {
                    continue;
                };
                let again = matches!(read[i].0, Some(Err(FetchError::AccessDenied(_))));
                if round > 0 && !again {
                    continue;
                }
                keys.entry(id.clone())
                    .or_default()
                    .push(due[i].1.fetch.clone());
                asked.push((i, id));
            }
            if asked.is_empty() {
                break;
            }
            let mut results: BTreeMap<Identity, FetchResults> = BTreeMap::new();
            for (id, mut keys) in keys {
                keys.sort();
                keys.dedup();
                let r = fetch_batches(self.source.as_ref(), &id, &keys, self.settings.aws_deadline)
                    .await;
                results.insert(id, r);
            }
            for (i, id) in asked {
                let value = results
                    .get(id)
                    .and_then(|r| r.get(&due[i].1.fetch))
                    .cloned();
                let workload = matches!(id, Identity::Workload(_)).then(|| id.to_string());
                read[i] = (value, workload);
            }
        }
        for (i, c) in candidates.into_iter().enumerate() {
            if let Err(e) = c {
                read[i] = (Some(Err(e)), None);
            }
        }
        read
    }

    /// The identities a backing Secret may be read with, in turn.
    async fn readers(&self, namespace: &str, want: &Want) -> Result<Vec<Identity>, FetchError> {
        let Some((accounts, default)) = &self.identities else {
            return Ok(vec![Identity::Own]);
        };
        let annotation = self
            .namespaces
            .annotation(namespace, identity::NAMESPACE_ANNOTATION);
        let mode = Mode::of_namespace(annotation.as_deref(), *default)
            .map_err(|r| FetchError::Identity(format!("namespace {namespace}: {r}")))?;
        if mode == Mode::Own {
            return Ok(vec![Identity::Own]);
        }
        let mut out = vec![];
        let mut first_error = None;
        for account in want.readers.iter().flatten() {
            let resolved = match accounts.annotations(namespace, account).await {
                Ok(annotations) => {
                    identity::resolve(mode, namespace, account, annotations.as_deref())
                        .map_err(|e| FetchError::Identity(e.to_string()))
                }
                Err(e) => Err(FetchError::Unreachable(e)),
            };
            match resolved {
                Ok(id) => out.push(id),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        Err(first_error.unwrap_or_else(|| {
            FetchError::Identity(format!(
                "namespace {namespace} reads with each workload's role, and no pod using this \
                 copy recorded its ServiceAccount (admitted before the namespace chose that mode)"
            ))
        }))
    }
}
