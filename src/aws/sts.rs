//! STS AssumeRole with inputs that were validated before the call, and errors reduced to a code.

use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_sts::config::SharedCredentialsProvider;
use aws_sdk_sts::config::http::HttpResponse;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::primitives::DateTimeFormat;
use aws_sdk_sts::types::Tag;

use tokio::sync::OnceCell;

use super::names::{RoleArn, SessionName, SessionTag, SourceIdentity};
use crate::secret::Secret;

/// Everything AssumeRole is sent, each part already checked against STS's rules.
#[derive(Debug, Clone)]
pub struct AssumeRole {
    pub role_arn: RoleArn,
    pub session_name: SessionName,
    pub source_identity: SourceIdentity,
    pub tags: Vec<SessionTag>,
    pub policy: Option<String>,
    pub duration_seconds: i32,
}

/// Temporary credentials; `Debug` redacts the secret parts.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Secret,
    /// RFC 3339, as credential_process expects.
    pub expiration: String,
    pub assumed_role_arn: String,
}

/// An AssumeRole failure, by STS error code only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StsError {
    /// Throttling, 5xx, timeouts, connection trouble: the caller may retry.
    #[error("STS is unavailable ({code})")]
    Unavailable { code: String },
    /// STS refused the call (the target role does not trust the broker, say).
    #[error("STS refused AssumeRole ({code})")]
    Refused { code: String },
}

/// STS's longest session when the caller's own credentials are a role session (role chaining),
/// which is always the case in Lambda. STS refuses a longer `DurationSeconds` there.
const ROLE_CHAINING_MAX: Duration = Duration::from_secs(3600);

/// Owns the STS client, and knows whether the broker's own credentials make every AssumeRole
/// role chaining.
#[derive(Clone)]
pub struct Sts {
    client: aws_sdk_sts::Client,
    credentials: Option<SharedCredentialsProvider>,
    chaining: Arc<OnceCell<bool>>,
}

impl Sts {
    /// An adapter around an SDK client built from `config`.
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self {
            client: aws_sdk_sts::Client::new(&super::client_config(config)),
            credentials: config.credentials_provider(),
            chaining: Arc::default(),
        }
    }

    /// The longest session STS will grant: 1 h when the broker's own credentials carry a session
    /// token (a role session: always in Lambda), otherwise none beyond the role's own. Found out
    /// once, from the credentials the SDK would sign with; credentials that cannot be had count
    /// as a role session, so the cap errs on the side STS enforces.
    pub async fn session_cap(&self) -> Option<Duration> {
        let chaining = *self
            .chaining
            .get_or_init(|| async {
                match &self.credentials {
                    Some(provider) => provider
                        .provide_credentials()
                        .await
                        .map_or(true, |c| c.session_token().is_some()),
                    None => true,
                }
            })
            .await;
        chaining.then_some(ROLE_CHAINING_MAX)
    }

    /// Sends AssumeRole and checks that the answer holds usable credentials.
    #[tracing::instrument(skip_all, fields(role_arn = input.role_arn.as_str()))]
    pub async fn assume_role(&self, input: &AssumeRole) -> Result<Credentials, StsError> {
        let tags = input
            .tags
            .iter()
            .map(|t| {
                Tag::builder()
                    .key(t.key())
                    .value(t.value())
                    .build()
                    .map_err(|_| refused("InvalidTag"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let output = self
            .client
            .assume_role()
            .role_arn(input.role_arn.as_str())
            .role_session_name(input.session_name.as_str())
            .source_identity(input.source_identity.as_str())
            .set_tags(Some(tags).filter(|t| !t.is_empty()))
            .set_policy(input.policy.clone())
            .duration_seconds(input.duration_seconds)
            .send()
            .await
            .map_err(classify)?;
        let credentials = output
            .credentials
            .filter(|c| {
                [&c.access_key_id, &c.secret_access_key, &c.session_token]
                    .iter()
                    .all(|part| credential_text(part))
            })
            .ok_or_else(|| refused("MalformedCredentials"))?;
        let expiration = credentials
            .expiration
            .fmt(DateTimeFormat::DateTime)
            .map_err(|_| refused("BadExpiration"))?;
        Ok(Credentials {
            access_key_id: credentials.access_key_id,
            secret_access_key: Secret::new(credentials.secret_access_key),
            session_token: Secret::new(credentials.session_token),
            expiration,
            assumed_role_arn: output.assumed_role_user.map(|u| u.arn).unwrap_or_default(),
        })
    }
}

/// STS's keys, secrets and session tokens are base64-ish ASCII. Anything else is a broken or
/// hostile answer, refused here so that no renderer (shell `export` lines above all) gets a
/// value it would have to quote.
fn credential_text(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'+' | b'='))
}

fn refused(code: &str) -> StsError {
    StsError::Refused {
        code: code.to_owned(),
    }
}

const RETRYABLE_CODES: [&str; 6] = [
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "ServiceUnavailable",
    "InternalFailure",
    "IDPCommunicationError",
];

fn classify<E: ProvideErrorMetadata>(error: SdkError<E, HttpResponse>) -> StsError {
    let super::Failure { code, retryable } = super::failure(&error, &RETRYABLE_CODES);
    if retryable {
        StsError::Unavailable { code }
    } else {
        StsError::Refused { code }
    }
}
