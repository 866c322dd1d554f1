//! Building the application state: policy, verifier, AWS adapters. Used by `main` and by tests.

use std::sync::Arc;

use aws_config::SdkConfig;

use crate::aws::sts::Sts;
use crate::broker::Broker;
use crate::config::Settings;
use crate::oidc::Verifier;
use crate::policy::Policy;

/// Everything a request needs, built once per process and shared by reference.
pub struct AppState {
    /// The exchange.
    pub broker: Broker,
}

impl AppState {
    /// Builds the state and fetches the issuers' keys, so the first request finds them cached.
    pub async fn build(policy: Policy, settings: &Settings, sdk: &SdkConfig) -> Self {
        let policy = Arc::new(policy);
        let verifier = Verifier::new(&policy, settings.leeway, settings.jwks.clone());
        verifier.prefetch().await;
        let broker = Broker::new(policy, verifier, Sts::new(sdk));
        Self { broker }
    }
}
