//! ServiceAccounts' annotations, for namespaces that read with each
//! workload's own identity ([`crate::identity`]): read with `get` when a pod
//! of that ServiceAccount is admitted, kept for a short time so that a
//! Deployment's replicas make one read. A role annotation added, changed or
//! removed is seen within that time. Only these namespaces' ServiceAccounts
//! are ever read: nothing is listed or watched cluster-wide.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::Api;

/// How long a ServiceAccount's annotations are kept.
pub const TTL: Duration = Duration::from_secs(30);

type Annotations = Option<Arc<BTreeMap<String, String>>>;

#[derive(Clone)]
pub struct ServiceAccounts {
    client: kube::Client,
    /// `(namespace, name)` → its annotations, `None` when it does not exist.
    cache: moka::future::Cache<(String, String), Annotations>,
}

impl ServiceAccounts {
    pub fn new(client: kube::Client, ttl: Duration) -> Self {
        ServiceAccounts {
            client,
            cache: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The annotations of ServiceAccount `namespace/name` (`Ok(None)`: it
    /// does not exist), or why they cannot be read.
    pub async fn annotations(&self, namespace: &str, name: &str) -> Result<Annotations, String> {
        let key = (namespace.to_string(), name.to_string());
        self.cache
            .try_get_with(key, async {
                let api = Api::<ServiceAccount>::namespaced(self.client.clone(), namespace);
                match api.get_opt(name).await {
                    Ok(sa) => {
                        Ok(sa.map(|sa| Arc::new(sa.metadata.annotations.unwrap_or_default())))
                    }
                    Err(e) => Err(format!(
                        "cannot read ServiceAccount {namespace}/{name} for its IAM role: {}",
                        crate::kube_error::kube_reason(&e)
                    )),
                }
            })
            .await
            .map_err(|e: Arc<String>| (*e).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_api;
    use serde_json::json;

    #[tokio::test]
    async fn replicas_share_one_read_and_a_missing_account_is_none() {
        let (mut api, client) = mock_api::client();
        let sas = ServiceAccounts::new(client, TTL);
        let task = tokio::spawn({
            let sas = sas.clone();
            async move {
                let (a, b) = futures::join!(
                    sas.annotations("arrakis", "bot"),
                    sas.annotations("arrakis", "bot")
                );
                let gone = sas.annotations("arrakis", "gone").await;
                (a, b, gone)
            }
        });
        let asked = mock_api::answer(
            &mut api,
            200,
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": "bot", "namespace": "arrakis",
                                "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/r"}}}),
        )
        .await;
        assert_eq!(asked.method, "GET");
        assert_eq!(asked.path, "/api/v1/namespaces/arrakis/serviceaccounts/bot");
        let asked = mock_api::answer(
            &mut api,
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not found"}),
        )
        .await;
        assert_eq!(
            asked.path,
            "/api/v1/namespaces/arrakis/serviceaccounts/gone"
        );
        let (a, b, gone) = mock_api::done(task).await;
        let a = a.unwrap().unwrap();
        assert_eq!(
            a.get("eks.amazonaws.com/role-arn").map(String::as_str),
            Some("arn:aws:iam::123456789012:role/r")
        );
        assert_eq!(b.unwrap().unwrap(), a);
        assert_eq!(gone, Ok(None));
    }
}
