//! Configuration. The only module that reads environment variables, with two exceptions that
//! read their own: the CLI's `--policy` falls back to `TOKEN_BROKER_POLICY` through clap, and the
//! AWS SDK reads its standard ones (region, credentials, `AWS_ENDPOINT_URL`).

use std::path::PathBuf;
use std::time::Duration;

use crate::oidc::JwksSettings;

/// Settings for one broker process.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Policy file to load; default `None`: the policy compiled into the binary. Not read here:
    /// the CLI sets it from `--policy` (or `TOKEN_BROKER_POLICY`).
    pub policy: Option<PathBuf>,
    /// Clock leeway for `exp`, `nbf`, `iat`; default 60 s (`TOKEN_BROKER_LEEWAY_SECS`).
    pub leeway: Duration,
    /// JWKS fetch limits (`TOKEN_BROKER_JWKS_TIMEOUT_MS`, `TOKEN_BROKER_JWKS_COOLDOWN_SECS`).
    pub jwks: JwksSettings,
    /// The KMS key that signs re-issued tokens (`KMS_KEY_ID`); default none: no token endpoint.
    pub kms_key_id: Option<String>,
    /// Keys still published in the JWKS during a rotation (`KMS_RETIRED_KEY_IDS`, comma-separated).
    pub kms_retired_key_ids: Vec<String>,
    /// The broker's issuer URL (`ISSUER_URL`); default: in Lambda `https://<Function URL domain>`,
    /// under `serve` `http://<listen address>`.
    pub issuer_url: Option<String>,
    /// The replay guard's DynamoDB table (`TOKEN_BROKER_REPLAY_TABLE`); default none: a policy
    /// that sets `token_uses` is refused at those grants (500), never run unguarded.
    pub replay_table: Option<String>,
    /// CloudWatch namespace of the EMF metric lines on stdout
    /// (`TOKEN_BROKER_METRICS_NAMESPACE`); default none: no metric lines.
    pub metrics_namespace: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            policy: None,
            leeway: Duration::from_secs(60),
            jwks: JwksSettings::default(),
            kms_key_id: None,
            kms_retired_key_ids: Vec::new(),
            issuer_url: None,
            replay_table: None,
            metrics_namespace: None,
        }
    }
}

impl Settings {
    /// Settings from the environment; unset variables keep their defaults. `policy` stays `None`.
    pub fn from_env() -> Result<Self, String> {
        let mut settings = Self::default();
        if let Some(secs) = number("TOKEN_BROKER_LEEWAY_SECS")? {
            settings.leeway = Duration::from_secs(secs);
        }
        if let Some(ms) = number("TOKEN_BROKER_JWKS_TIMEOUT_MS")? {
            settings.jwks.timeout = Duration::from_millis(ms);
        }
        if let Some(secs) = number("TOKEN_BROKER_JWKS_COOLDOWN_SECS")? {
            settings.jwks.cooldown = Duration::from_secs(secs);
        }
        settings.kms_key_id = var("KMS_KEY_ID");
        settings.kms_retired_key_ids = var("KMS_RETIRED_KEY_IDS")
            .map(|ids| {
                ids.split(',')
                    .map(str::trim)
                    .filter(|id| !id.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(url) = var("ISSUER_URL") {
            settings.issuer_url = Some(issuer_url(&url)?);
        }
        // Operating the broker: the replay guard's table and the metrics' namespace.
        settings.replay_table = var("TOKEN_BROKER_REPLAY_TABLE");
        settings.metrics_namespace = var("TOKEN_BROKER_METRICS_NAMESPACE");
        Ok(settings)
    }
}

/// Whether this process runs inside AWS Lambda (`AWS_LAMBDA_RUNTIME_API` is set), where the
/// runtime starts the binary without a command.
pub fn in_lambda() -> bool {
    var("AWS_LAMBDA_RUNTIME_API").is_some()
}

/// The log filter in `RUST_LOG` syntax (`RUST_LOG`); empty when unset, which
/// [`crate::telemetry`] reads as `info`. Apart from [`Settings`] because logging starts before
/// settings are read, and the tests' harness sets it up without settings from the environment.
pub fn log_filter() -> String {
    var("RUST_LOG").unwrap_or_default()
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

/// An issuer URL: https (http only on loopback), no trailing slash, no query or fragment.
pub fn issuer_url(url: &str) -> Result<String, String> {
    let trimmed = url.trim_end_matches('/');
    token_broker_policy::check_url(trimmed).map_err(|e| format!("ISSUER_URL: {e}"))?;
    Ok(trimmed.to_owned())
}
