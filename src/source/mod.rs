//! Where secret values come from: the [`SecretSource`] trait and its AWS
//! Secrets Manager implementation ([`crate::cache::CachedSource`] is the TTL
//! cache in front of it).

use std::collections::HashMap;

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use futures::future::{BoxFuture, FutureExt, join_all};

use crate::credentials::WorkloadCredentials;
use crate::fetch::{FetchError, FetchKey, FetchResults, error_chain};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::quota::Quota;
use crate::reference::Version;
use crate::secret::{Payload, SecretValue};

/// A source of secret values. Answers every key it is given, read as `identity`.
pub trait SecretSource: Send + Sync + 'static {
    fn fetch<'a>(
        &'a self,
        identity: &'a Identity,
        keys: &'a [FetchKey],
    ) -> BoxFuture<'a, FetchResults>;
}

/// Secrets Manager through the AWS SDK. AWSCURRENT versions are fetched with
/// `BatchGetSecretValue` (20 ids a call); pinned versions with `GetSecretValue`.
pub struct AwsSource {
    client: Client,
    metrics: Metrics,
    /// The process's rate and concurrency of calls, if bounded.
    quota: Option<Quota>,
    /// Clients signed as workloads' roles, where namespaces use them.
    workloads: Option<WorkloadCredentials>,
}

const BATCH_MAX: usize = crate::quota::BATCH;

impl AwsSource {
    pub fn new(client: Client, metrics: Metrics) -> Self {
        AwsSource {
            client,
            metrics,
            quota: None,
            workloads: None,
        }
    }

    /// Reads for [`Identity::Workload`] with the workload's role.
    pub fn with_workloads(mut self, workloads: WorkloadCredentials) -> Self {
        self.workloads = Some(workloads);
        self
    }

    /// Makes each call within `quota`'s process rate and concurrency.
    pub fn with_quota(mut self, quota: Quota) -> Self {
        self.quota = Some(quota);
        self
    }

    /// A place for one call, held while it runs.
    async fn place(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match &self.quota {
            Some(q) => Some(q.call().await),
            None => None,
        }
    }

    /// A client from the standard AWS chain (env vars, profiles, IRSA web identity;
    /// `AWS_ENDPOINT_URL_SECRETS_MANAGER` for another endpoint).
    pub async fn from_env(metrics: Metrics) -> Self {
        let conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Self::new(Client::new(&conf), metrics)
    }

    async fn batch(&self, client: &Client, keys: &[FetchKey]) -> FetchResults {
        const OP: &str = "BatchGetSecretValue";
        let place = self.place().await;
        self.metrics.aws_call(OP, keys.len() as u64);
        let ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
        let out = match client
            .batch_get_secret_value()
            .set_secret_id_list(Some(ids))
            .send()
            .await
        {
            Ok(out) => {
                drop(place);
                out
            }
            Err(e) => {
                self.metrics.aws_error(OP);
                // A refusal of the whole call says nothing of any one secret.
                let err = match classify(&e) {
                    e if e.is_transient() => e,
                    e => FetchError::CallRefused(Box::new(e)),
                };
                return keys.iter().map(|k| (k.clone(), Err(err.clone()))).collect();
            }
        };
        let mut results = FetchResults::new();
        let mut unanswered = vec![];
        for k in keys {
            let entry = out
                .secret_values()
                .iter()
                .find(|e| e.name() == Some(&k.id) || e.arn() == Some(&k.id));
            if let Some(e) = entry {
                let payload = match (e.secret_string(), e.secret_binary()) {
                    (Some(s), _) => Payload::String(s.to_string()),
                    (None, Some(b)) => Payload::Binary(b.as_ref().to_vec()),
                    (None, None) => Payload::String(String::new()),
                };
                results.insert(
                    k.clone(),
                    Ok(SecretValue::new(
                        e.arn().unwrap_or_default().to_string(),
                        e.name().unwrap_or_default().to_string(),
                        e.version_id().unwrap_or_default().to_string(),
                        payload,
                    )),
                );
            } else if let Some(err) = out.errors().iter().find(|e| e.secret_id() == Some(&k.id)) {
                results.insert(
                    k.clone(),
                    Err(FetchError::from_code(err.error_code(), err.message())),
                );
            } else {
                // A partial ARN, for instance: AWS answered under another id.
                unanswered.push(k.clone());
            }
        }
        for k in unanswered {
            let r = self.single(client, &k).await;
            results.insert(k, r);
        }
        results
    }

    async fn single(&self, client: &Client, key: &FetchKey) -> Result<SecretValue, FetchError> {
        const OP: &str = "GetSecretValue";
        let _place = self.place().await;
        self.metrics.aws_call(OP, 1);
        let mut req = client.get_secret_value().secret_id(&key.id);
        req = match &key.version {
            Version::Stage(s) => req.version_stage(s.as_ref()),
            Version::Id(id) => req.version_id(id.as_ref()),
        };
        match req.send().await {
            Ok(o) => {
                let payload = match (o.secret_string(), o.secret_binary()) {
                    (Some(s), _) => Payload::String(s.to_string()),
                    (None, Some(b)) => Payload::Binary(b.as_ref().to_vec()),
                    (None, None) => Payload::String(String::new()),
                };
                Ok(SecretValue::new(
                    o.arn().unwrap_or_default().to_string(),
                    o.name().unwrap_or_default().to_string(),
                    o.version_id().unwrap_or_default().to_string(),
                    payload,
                ))
            }
            Err(e) => {
                self.metrics.aws_error(OP);
                Err(classify(&e))
            }
        }
    }
}

fn classify<E, R>(e: &SdkError<E, R>) -> FetchError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    match e {
        SdkError::ServiceError(se) => FetchError::from_code(se.err().code(), se.err().message()),
        SdkError::TimeoutError(_) => FetchError::Unreachable("timed out".into()),
        other => {
            let chain = error_chain(other);
            if configuration_error(&chain) {
                FetchError::Configuration(chain)
            } else {
                FetchError::Unreachable(chain)
            }
        }
    }
}

/// Whether `conf` can call AWS at all: a region, and credentials somewhere in
/// the chain. Expired or refused credentials are not a configuration error
/// (they come and go); no provider yielding any is.
pub async fn check_configuration(conf: &aws_config::SdkConfig) -> Result<(), String> {
    use aws_credential_types::provider::{ProvideCredentials, error::CredentialsError};
    if conf.region().is_none() {
        return Err("no AWS region is configured: set AWS_REGION (or a profile's region)".into());
    }
    let Some(provider) = conf.credentials_provider() else {
        return Err("no AWS credentials provider is configured".into());
    };
    match tokio::time::timeout(
        std::time::Duration::from_secs(20),
        provider.provide_credentials(),
    )
    .await
    {
        Ok(Err(CredentialsError::CredentialsNotLoaded(_))) => Err(
            "no AWS credentials anywhere in the standard chain (IRSA or EKS Pod Identity, environment, profile, instance role)".into(),
        ),
        _ => Ok(()),
    }
}

/// Whether a failure to send a request says sm-injector has no region or
/// no credentials at all (the SDK fails before any request for those).
pub fn configuration_error(chain: &str) -> bool {
    let c = chain.to_ascii_lowercase();
    c.contains("no providers in chain provided credentials")
        || c.contains("credentials not loaded")
        || c.contains("no credentials")
        || (c.contains("region") && (c.contains("missing") || c.contains("no region")))
}

impl AwsSource {
    /// The client that reads as `identity`.
    async fn client_for(&self, identity: &Identity) -> Result<Client, FetchError> {
        match identity {
            Identity::Own => Ok(self.client.clone()),
            Identity::Workload(w) => match &self.workloads {
                Some(c) => c.client(w).await,
                None => Err(FetchError::Identity(
                    "this sm-injector cannot read with workload identities (no Kubernetes client for TokenRequest)".into(),
                )),
            },
        }
    }
}

impl SecretSource for AwsSource {
    fn fetch<'a>(
        &'a self,
        identity: &'a Identity,
        keys: &'a [FetchKey],
    ) -> BoxFuture<'a, FetchResults> {
        async move {
            let client = match self.client_for(identity).await {
                Ok(c) => c,
                Err(e) => return keys.iter().map(|k| (k.clone(), Err(e.clone()))).collect(),
            };
            let client = &client;
            let (current, pinned): (Vec<&FetchKey>, Vec<&FetchKey>) =
                keys.iter().partition(|k| k.version.is_current());
            let current: Vec<FetchKey> = current.into_iter().cloned().collect();
            let batches = current.chunks(BATCH_MAX).map(|c| self.batch(client, c));
            let singles = pinned.into_iter().map(|k| async move {
                FetchResults::from([(k.clone(), self.single(client, k).await)])
            });
            let (a, b) = futures::join!(join_all(batches), join_all(singles));
            let mut results: FetchResults = a.into_iter().chain(b).flatten().collect();
            if let Identity::Workload(_) = identity {
                // A call refused whole for want of the permission is the
                // workload role's refusal of each secret in it: definite.
                for r in results.values_mut() {
                    if let Err(FetchError::CallRefused(refusal)) = r
                        && let FetchError::AccessDenied(_) = **refusal
                    {
                        *r = Err((**refusal).clone());
                    }
                }
            }
            // Credentials AWS refused are exchanged again on the next read.
            if let (Identity::Workload(w), Some(c)) = (identity, &self.workloads)
                && results
                    .values()
                    .any(|r| matches!(r, Err(FetchError::Credentials(_))))
            {
                c.forget(w).await;
            }
            results
        }
        .boxed()
    }
}

/// Secret values from a fixed map (secret name → value): for `render
/// --secrets-file` and for tests of the pure logic. Every version selector
/// resolves to the one value given.
pub struct StaticSource {
    values: HashMap<String, Payload>,
}

impl StaticSource {
    pub fn new(values: HashMap<String, Payload>) -> Self {
        StaticSource { values }
    }
}

impl SecretSource for StaticSource {
    fn fetch<'a>(&'a self, _: &'a Identity, keys: &'a [FetchKey]) -> BoxFuture<'a, FetchResults> {
        let r = keys
            .iter()
            .map(|k| {
                let v = self
                    .values
                    .get(&k.id)
                    .map(|p| {
                        SecretValue::new(
                            format!("arn:aws:secretsmanager:local:000000000000:secret:{}", k.id),
                            k.id.clone(),
                            "local".into(),
                            p.clone(),
                        )
                    })
                    .ok_or(FetchError::NotFound);
                (k.clone(), v)
            })
            .collect();
        futures::future::ready(r).boxed()
    }
}

#[cfg(test)]
mod tests;
