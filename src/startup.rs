//! Building the application state: policy, verifier, AWS adapters. Used by `main` and by tests.

use std::sync::Arc;

use aws_config::SdkConfig;

use crate::aws::kms::Kms;
use crate::aws::sts::Sts;
use crate::broker::Broker;
use crate::config::Settings;
use crate::oidc::Verifier;
use crate::policy::Policy;

/// Everything a request needs, built once per process and shared by reference.
pub struct AppState {
    /// The exchange.
    pub broker: Broker,
    /// `ISSUER_URL`, when configured; otherwise each adapter derives it.
    pub issuer_url: Option<String>,
}

impl AppState {
    /// Builds the state with AWS clients from `sdk`.
    pub async fn build(policy: Policy, settings: &Settings, sdk: &SdkConfig) -> Self {
        let kms = settings
            .kms_key_id
            .clone()
            .map(|active| Kms::new(sdk, active, settings.kms_retired_key_ids.clone()));
        Self::assemble(policy, settings, Sts::new(sdk), kms).await
    }

    /// Builds the state from ready adapters and fetches the issuers' keys and the KMS public
    /// keys at once, so the first request finds them cached. Failures are left for the first
    /// request to retry.
    pub async fn assemble(policy: Policy, settings: &Settings, sts: Sts, kms: Option<Kms>) -> Self {
        let policy = Arc::new(policy);
        let verifier = Verifier::new(policy.clone(), settings.leeway, settings.jwks.clone());
        let kms_keys = async {
            if let Some(kms) = &kms
                && let Err(error) = kms.keys().await
            {
                tracing::warn!(%error, "KMS public keys not fetched at start; retrying on first use");
            }
        };
        tokio::join!(verifier.prefetch(), kms_keys);
        let broker = Broker::new(policy, verifier, sts, kms);
        Self {
            broker,
            issuer_url: settings.issuer_url.clone(),
        }
    }
}
