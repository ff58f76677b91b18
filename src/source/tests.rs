//! Unit tests of [`super`].

use super::*;

fn key(id: &str) -> FetchKey {
    FetchKey {
        id: id.into(),
        version: Version::current(),
    }
}

/// The AWS half of the I/O against a mocked Secrets Manager
/// (`aws-smithy-mocks`): one batch for the current versions, one call per
/// pinned version, per-secret errors, whole-call errors.
#[tokio::test]
async fn the_aws_source_batches_and_classifies_what_it_fetched() {
    use aws_sdk_secretsmanager::operation::batch_get_secret_value::{
        BatchGetSecretValueError, BatchGetSecretValueOutput,
    };
    use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueOutput;
    use aws_sdk_secretsmanager::types::error::InternalServiceError;
    use aws_sdk_secretsmanager::types::{ApiErrorType, SecretValueEntry};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    let batch = mock!(aws_sdk_secretsmanager::Client::batch_get_secret_value)
        .match_requests(|r| r.secret_id_list().len() == 2)
        .then_output(|| {
            BatchGetSecretValueOutput::builder()
                .secret_values(
                    SecretValueEntry::builder()
                        .name("n/a")
                        .arn("arn:aws:secretsmanager:us-east-1:1:secret:n/a-AbCdEf")
                        .version_id("va")
                        .secret_string(r#"{"k":"v"}"#)
                        .build(),
                )
                .errors(
                    ApiErrorType::builder()
                        .secret_id("n/missing")
                        .error_code("ResourceNotFoundException")
                        .message("gone")
                        .build(),
                )
                .build()
        });
    let pinned = mock!(aws_sdk_secretsmanager::Client::get_secret_value)
        .match_requests(|r| r.version_id() == Some("v0"))
        .then_output(|| {
            GetSecretValueOutput::builder()
                .name("n/a")
                .arn("arn:aws:secretsmanager:us-east-1:1:secret:n/a-AbCdEf")
                .version_id("v0")
                .secret_string("old")
                .build()
        });
    let client = mock_client!(
        aws_sdk_secretsmanager,
        RuleMode::MatchAny,
        [&batch, &pinned]
    );
    let metrics = Metrics::new();
    let src = AwsSource::new(client, metrics.clone());
    let keys = vec![
        key("n/a"),
        key("n/missing"),
        FetchKey {
            id: "n/a".into(),
            version: Version::Id("v0".into()),
        },
    ];
    let r = src.fetch(&Identity::Own, &keys).await;
    let a = r[&keys[0]].as_ref().unwrap();
    assert_eq!((a.version_id.as_str(), a.name.as_str()), ("va", "n/a"));
    assert_eq!(r[&keys[1]], Err(FetchError::NotFound));
    assert_eq!(
        r[&keys[2]].as_ref().unwrap().payload,
        Payload::String("old".into())
    );
    assert_eq!((batch.num_calls(), pinned.num_calls()), (1, 1));
    assert!(
        metrics
            .encode()
            .contains("sm_injector_secretsmanager_secrets_requested_total 3")
    );

    // A failed call fails every secret it asked for, as transient.
    let down = mock!(aws_sdk_secretsmanager::Client::batch_get_secret_value).then_error(|| {
        BatchGetSecretValueError::InternalServiceError(
            InternalServiceError::builder()
                .message("busy")
                .meta(
                    aws_smithy_types::error::ErrorMetadata::builder()
                        .code("InternalServiceError")
                        .build(),
                )
                .build(),
        )
    });
    let client = mock_client!(aws_sdk_secretsmanager, [&down]);
    let src = AwsSource::new(client, Metrics::new());
    let r = src.fetch(&Identity::Own, &keys[..2]).await;
    assert!(
        r.values().all(|v| matches!(v, Err(e) if e.is_transient())),
        "{r:?}"
    );

    // A whole call refused (its permission) says nothing of any one
    // secret: not a per-secret refusal, never remembered against them.
    let denied = mock!(aws_sdk_secretsmanager::Client::batch_get_secret_value).then_error(|| {
        BatchGetSecretValueError::generic(
            aws_smithy_types::error::ErrorMetadata::builder()
                .code("AccessDeniedException")
                .message("not authorized to perform secretsmanager:BatchGetSecretValue")
                .build(),
        )
    });
    let client = mock_client!(aws_sdk_secretsmanager, [&denied]);
    let src = AwsSource::new(client, Metrics::new());
    let r = src.fetch(&Identity::Own, &keys[..2]).await;
    for v in r.values() {
        let e = v.as_ref().unwrap_err();
        assert!(
            matches!(e, FetchError::CallRefused(_)) && e.is_transient(),
            "{e}"
        );
        assert!(e.to_string().contains("BatchGetSecretValue"), "{e}");
    }
}

#[test]
fn aws_codes_are_classified() {
    assert_eq!(
        FetchError::from_code(Some("ResourceNotFoundException"), None),
        FetchError::NotFound
    );
    assert!(
        matches!(FetchError::from_code(Some("AccessDeniedException"), Some("no")), FetchError::AccessDenied(m) if m.contains("no"))
    );
    assert!(FetchError::from_code(Some("ThrottlingException"), None).is_transient());
    // sm-injector's own credentials or clock: transient, so never
    // remembered as a refusal of the secret (nor charged to it).
    for code in [
        "ExpiredTokenException",
        "InvalidSignatureException",
        "UnrecognizedClientException",
        "RequestTimeTooSkewed",
        "SignatureDoesNotMatch",
    ] {
        let e = FetchError::from_code(Some(code), Some("m"));
        assert!(matches!(e, FetchError::Credentials(_)), "{code}");
        assert!(e.is_transient(), "{code}");
    }
    assert!(matches!(
        FetchError::from_code(Some("InvalidRequestException"), None),
        FetchError::Rejected(_)
    ));
}

#[test]
fn a_failed_connection_reads_as_its_cause_without_a_debug_dump() {
    use aws_sdk_secretsmanager::error::ConnectorError;
    use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
    let io = std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection closed before message completed",
    );
    let e: SdkError<GetSecretValueError, ()> =
        SdkError::dispatch_failure(ConnectorError::io(Box::new(io)));
    let FetchError::Unreachable(m) = classify(&e) else {
        panic!("not unreachable");
    };
    assert_eq!(
        m,
        "dispatch failure: io error: connection closed before message completed"
    );
}

#[tokio::test]
async fn a_missing_region_or_credentials_is_a_configuration_error() {
    use aws_credential_types::provider::error::CredentialsError;
    use aws_credential_types::provider::{ProvideCredentials, future};
    use aws_sdk_secretsmanager::config::{Credentials, Region, SharedCredentialsProvider};
    #[derive(Debug)]
    struct Nothing;
    impl ProvideCredentials for Nothing {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            future::ProvideCredentials::ready(Err(CredentialsError::not_loaded(
                "no providers in chain provided credentials",
            )))
        }
    }
    let base =
        || aws_config::SdkConfig::builder().behavior_version(aws_config::BehaviorVersion::latest());
    let e = check_configuration(&base().build()).await.unwrap_err();
    assert!(e.contains("no AWS region"), "{e}");
    let regional = || base().region(Region::new("us-east-1"));
    let e = check_configuration(&regional().build()).await.unwrap_err();
    assert!(e.contains("provider"), "{e}");
    let none = regional()
        .credentials_provider(SharedCredentialsProvider::new(Nothing))
        .build();
    let e = check_configuration(&none).await.unwrap_err();
    assert!(e.contains("standard chain"), "{e}");
    let fine = regional()
        .credentials_provider(SharedCredentialsProvider::new(Credentials::for_tests()))
        .build();
    assert_eq!(check_configuration(&fine).await, Ok(()));
    assert!(configuration_error(
        "failed to construct request: no providers in chain provided credentials"
    ));
    assert!(!configuration_error(
        "dispatch failure: io error: connection refused"
    ));
}
