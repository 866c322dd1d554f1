//! Configuration. The only module that reads environment variables (the AWS SDK reads its own
//! standard ones: region, credentials, `AWS_ENDPOINT_URL`).

use std::path::PathBuf;
use std::time::Duration;

use crate::oidc::JwksSettings;

/// Environment variable naming a policy file to use instead of the bundled one.
pub const POLICY_ENV: &str = "TOKEN_BROKER_POLICY";

/// Settings for one broker process.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Policy file to load; default `None`: the policy compiled into the binary.
    pub policy: Option<PathBuf>,
    /// Clock leeway for `exp`, `nbf`, `iat`; default 60 s (`TOKEN_BROKER_LEEWAY_SECS`).
    pub leeway: Duration,
    /// JWKS fetch limits (`TOKEN_BROKER_JWKS_TIMEOUT_MS`, `TOKEN_BROKER_JWKS_COOLDOWN_SECS`).
    pub jwks: JwksSettings,
    /// Whether this process runs inside AWS Lambda (`AWS_LAMBDA_RUNTIME_API` is set).
    pub in_lambda: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            policy: None,
            leeway: Duration::from_secs(60),
            jwks: JwksSettings::default(),
            in_lambda: false,
        }
    }
}

impl Settings {
    /// Settings from the environment; unset variables keep their defaults.
    pub fn from_env() -> Result<Self, String> {
        let mut settings = Self::default();
        if let Some(policy) = var(POLICY_ENV) {
            settings.policy = Some(PathBuf::from(policy));
        }
        if let Some(secs) = number("TOKEN_BROKER_LEEWAY_SECS")? {
            settings.leeway = Duration::from_secs(secs);
        }
        if let Some(ms) = number("TOKEN_BROKER_JWKS_TIMEOUT_MS")? {
            settings.jwks.timeout = Duration::from_millis(ms);
        }
        if let Some(secs) = number("TOKEN_BROKER_JWKS_COOLDOWN_SECS")? {
            settings.jwks.cooldown = Duration::from_secs(secs);
        }
        settings.in_lambda = var("AWS_LAMBDA_RUNTIME_API").is_some();
        Ok(settings)
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn number(name: &str) -> Result<Option<u64>, String> {
    var(name)
        .map(|v| {
            v.parse()
                .map_err(|_| format!("{name}={v:?} is not a whole number"))
        })
        .transpose()
}
