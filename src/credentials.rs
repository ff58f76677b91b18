//! Credentials of a workload's identity ([`crate::identity::Workload`]): a
//! ServiceAccount token requested from the API server (TokenRequest,
//! audience `sts.amazonaws.com`, the shortest lifetime it grants) exchanged
//! with STS `AssumeRoleWithWebIdentity` for the ServiceAccount's role, in a
//! session named after the namespace and ServiceAccount. The resulting
//! Secrets Manager client is kept per identity until shortly before its
//! credentials expire; concurrent misses of one identity share one exchange
//! (a Deployment's replicas make one). The token is used once and never
//! kept, logged or put in an error.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};

use crate::fetch::FetchError;
use crate::identity::{AUDIENCE, TOKEN_SECONDS, Workload};

/// Credentials are renewed this long before they expire.
pub const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);
/// The session lifetime asked of STS (its minimum is 900 s).
pub const SESSION_SECONDS: i32 = 3600;

/// Secrets Manager clients signed with workload identities.
#[derive(Clone)]
pub struct WorkloadCredentials {
    kube: kube::Client,
    sts: aws_sdk_sts::Client,
    /// The configuration each workload's Secrets Manager client starts from
    /// (region, endpoint, retries, timeouts), its credentials replaced.
    base: aws_sdk_secretsmanager::Config,
    clients: moka::future::Cache<Arc<Workload>, Assumed>,
}

/// A client for one identity and when its credentials must be renewed.
#[derive(Clone)]
pub struct Assumed {
    pub client: aws_sdk_secretsmanager::Client,
    renew_at: Instant,
}

struct RenewAt;

impl moka::Expiry<Arc<Workload>, Assumed> for RenewAt {
    fn expire_after_create(
        &self,
        _: &Arc<Workload>,
        v: &Assumed,
        now: Instant,
    ) -> Option<Duration> {
        Some(v.renew_at.saturating_duration_since(now))
    }
}

impl WorkloadCredentials {
    pub fn new(
        kube: kube::Client,
        sts: aws_sdk_sts::Client,
        base: aws_sdk_secretsmanager::Config,
    ) -> Self {
        WorkloadCredentials {
            kube,
            sts,
            base,
            clients: moka::future::Cache::builder()
                .max_capacity(10_000)
                .expire_after(RenewAt)
                .build(),
        }
    }

    /// From the standard AWS chain's configuration (`AWS_ENDPOINT_URL_STS`
    /// and `AWS_ENDPOINT_URL_SECRETS_MANAGER` apply).
    pub fn from_conf(kube: kube::Client, conf: &aws_config::SdkConfig) -> Self {
        Self::new(
            kube,
            aws_sdk_sts::Client::new(conf),
            aws_sdk_secretsmanager::Config::new(conf),
        )
    }

    /// A Secrets Manager client signed as `who`, from the cache or a fresh exchange.
    pub async fn client(
        &self,
        who: &Arc<Workload>,
    ) -> Result<aws_sdk_secretsmanager::Client, FetchError> {
        self.clients
            .try_get_with_by_ref(who, self.exchange(who))
            .await
            .map(|a| a.client)
            .map_err(|e: Arc<FetchError>| (*e).clone())
    }

    /// Forgets `who`'s credentials (AWS refused them): the next read exchanges again.
    pub async fn forget(&self, who: &Arc<Workload>) {
        self.clients.invalidate(who).await;
    }

    async fn exchange(&self, who: &Arc<Workload>) -> Result<Assumed, FetchError> {
        let token = self.token(who).await?;
        let session = who.session_name();
        let out = self
            .sts
            .assume_role_with_web_identity()
            .role_arn(&who.role_arn)
            .role_session_name(&session)
            .web_identity_token(token)
            .duration_seconds(SESSION_SECONDS)
            .send()
            .await
            .map_err(|e| refused_assume(who, &session, &e))?;
        let c = out.credentials().ok_or_else(|| {
            FetchError::Unreachable(format!("STS answered no credentials for {}", who.role_arn))
        })?;
        let expires = SystemTime::try_from(*c.expiration())
            .unwrap_or_else(|_| SystemTime::now() + Duration::from_secs(900));
        let left = expires
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .saturating_sub(RENEW_BEFORE);
        let creds = aws_credential_types::Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            Some(expires),
            "sm-injector-workload-identity",
        );
        let conf = self.base.to_builder().credentials_provider(creds).build();
        Ok(Assumed {
            client: aws_sdk_secretsmanager::Client::from_conf(conf),
            renew_at: Instant::now() + left,
        })
    }

    /// A short-lived token of `who`'s ServiceAccount for STS.
    async fn token(&self, who: &Workload) -> Result<String, FetchError> {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![AUDIENCE.to_string()],
                expiration_seconds: Some(TOKEN_SECONDS),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        let api = Api::<ServiceAccount>::namespaced(self.kube.clone(), &who.namespace);
        let answer = api
            .create_token_request(&who.service_account, &PostParams::default(), &request)
            .await
            .map_err(|e| {
                let what = format!(
                    "no token for ServiceAccount {}/{} (audience {AUDIENCE})",
                    who.namespace, who.service_account
                );
                match &e {
                    kube::Error::Api(s) if s.code == 404 => {
                        FetchError::Identity(format!("{what}: it does not exist"))
                    }
                    kube::Error::Api(s) if s.code == 403 || s.code == 422 => {
                        FetchError::Identity(format!("{what}: {}", s.message))
                    }
                    other => FetchError::Unreachable(format!("{what}: {other}")),
                }
            })?;
        answer
            .status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                FetchError::Unreachable(format!(
                    "the API server answered no token for ServiceAccount {}/{}",
                    who.namespace, who.service_account
                ))
            })
    }
}

/// Why `who`'s role could not be assumed, naming the role and the session,
/// never the token.
fn refused_assume<E, R>(who: &Workload, session: &str, e: &SdkError<E, R>) -> FetchError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    match e {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("error");
            let msg = se.err().message().unwrap_or_default();
            let text = format!(
                "role {} could not be assumed for session {session}: {code}: {msg}",
                who.role_arn
            );
            if code.contains("Throttl")
                || code == "IDPCommunicationError"
                || code == "ServiceUnavailable"
            {
                FetchError::Unreachable(text)
            } else {
                FetchError::Identity(text)
            }
        }
        other => FetchError::Unreachable(format!(
            "STS could not be reached to assume role {}: {}",
            who.role_arn,
            crate::fetch::error_chain(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_api;
    use aws_sdk_sts::operation::assume_role_with_web_identity::{
        AssumeRoleWithWebIdentityError, AssumeRoleWithWebIdentityOutput,
    };
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use serde_json::json;

    fn workload() -> Arc<Workload> {
        Arc::new(Workload {
            role_arn: "arn:aws:iam::123456789012:role/arrakis-bot".into(),
            namespace: "arrakis".into(),
            service_account: "bot".into(),
        })
    }

    fn base() -> aws_sdk_secretsmanager::Config {
        aws_sdk_secretsmanager::Config::builder()
            .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
            .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
            .build()
    }

    fn token_answer() -> serde_json::Value {
        json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": ["sts.amazonaws.com"], "expirationSeconds": 600},
            "status": {"token": "the-token", "expirationTimestamp": "2030-01-01T00:00:00Z"}
        })
    }

    #[tokio::test]
    async fn replicas_of_one_identity_share_one_exchange_with_a_token_for_sts() {
        let assume = mock!(aws_sdk_sts::Client::assume_role_with_web_identity)
            .match_requests(|r| {
                r.role_arn() == Some("arn:aws:iam::123456789012:role/arrakis-bot")
                    && r.role_session_name() == Some("arrakis.bot")
                    && r.web_identity_token() == Some("the-token")
            })
            .then_output(|| {
                AssumeRoleWithWebIdentityOutput::builder()
                    .credentials(
                        aws_sdk_sts::types::Credentials::builder()
                            .access_key_id("AKIA")
                            .secret_access_key("secret")
                            .session_token("session")
                            .expiration(aws_smithy_types::DateTime::from(
                                SystemTime::now() + Duration::from_secs(3600),
                            ))
                            .build()
                            .unwrap(),
                    )
                    .build()
            });
        let sts = mock_client!(aws_sdk_sts, RuleMode::MatchAny, [&assume]);
        let (mut api, kube) = mock_api::client();
        let creds = WorkloadCredentials::new(kube, sts, base());
        let who = workload();
        let task = tokio::spawn({
            let (creds, who) = (creds.clone(), who.clone());
            async move {
                let (a, b) = futures::join!(creds.client(&who), creds.client(&who));
                (a.is_ok(), b.is_ok(), creds.client(&who).await.is_ok())
            }
        });
        let asked = mock_api::answer(&mut api, 201, token_answer()).await;
        assert_eq!(asked.method, "POST");
        assert_eq!(
            asked.path,
            "/api/v1/namespaces/arrakis/serviceaccounts/bot/token"
        );
        assert_eq!(
            asked.body["spec"]["audiences"],
            json!(["sts.amazonaws.com"])
        );
        assert_eq!(asked.body["spec"]["expirationSeconds"], json!(600));
        assert_eq!(mock_api::done(task).await, (true, true, true));
        assert_eq!(assume.num_calls(), 1);
    }

    #[tokio::test]
    async fn a_refused_exchange_names_the_role_and_session_never_the_token() {
        let refused = mock!(aws_sdk_sts::Client::assume_role_with_web_identity).then_error(|| {
            AssumeRoleWithWebIdentityError::generic(
                aws_sdk_sts::error::ErrorMetadata::builder()
                    .code("AccessDenied")
                    .message("Not authorized to perform sts:AssumeRoleWithWebIdentity")
                    .build(),
            )
        });
        let sts = mock_client!(aws_sdk_sts, RuleMode::MatchAny, [&refused]);
        let (mut api, kube) = mock_api::client();
        let creds = WorkloadCredentials::new(kube, sts, base());
        let who = workload();
        let task = tokio::spawn(async move { creds.client(&who).await.err() });
        mock_api::answer(&mut api, 201, token_answer()).await;
        let e = mock_api::done(task).await.expect("refused");
        let text = e.to_string();
        assert!(matches!(e, FetchError::Identity(_)), "{e:?}");
        assert!(
            text.contains("role arn:aws:iam::123456789012:role/arrakis-bot could not be assumed for session arrakis.bot: AccessDenied"),
            "{text}"
        );
        assert!(!text.contains("the-token"), "{text}");
    }

    #[tokio::test]
    async fn a_service_account_that_cannot_have_a_token_is_a_definite_refusal() {
        let sts = mock_client!(aws_sdk_sts, RuleMode::MatchAny, []);
        let (mut api, kube) = mock_api::client();
        let creds = WorkloadCredentials::new(kube, sts, base());
        let task = tokio::spawn(async move { creds.client(&workload()).await.err() });
        mock_api::answer(
            &mut api,
            403,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
                   "reason": "Forbidden",
                   "message": "serviceaccounts \"bot\" is forbidden: audience must be sts.amazonaws.com"}),
        )
        .await;
        let e = mock_api::done(task).await.expect("refused");
        assert!(matches!(e, FetchError::Identity(_)), "{e:?}");
        assert!(
            e.to_string().starts_with(
                "no token for ServiceAccount arrakis/bot (audience sts.amazonaws.com): "
            ),
            "{e}"
        );
    }
}
