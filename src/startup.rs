//! Building the application state: policy, verifier, AWS adapters. Used by `main` and by tests.

use std::sync::Arc;

use aws_config::SdkConfig;

use crate::aws::kms::Kms;
use crate::aws::replay::ReplayTable;
use crate::aws::sts::Sts;
use crate::broker::Broker;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::oidc::Verifier;
use crate::policy::Policy;

/// Everything a request needs, built once per process and shared by reference.
pub struct AppState {
    /// The exchange.
    pub broker: Broker,
    /// `ISSUER_URL`, when configured; otherwise each adapter derives it.
    pub issuer_url: Option<String>,
}

/// The parts of a broker that serve the people who run it rather than its callers: the replay
/// guard's table and where metric lines go. Default: neither.
#[derive(Debug, Default)]
pub struct Operations {
    /// The table that counts token uses; needed when the policy sets `token_uses`.
    pub replay: Option<ReplayTable>,
    /// Where EMF metric lines go.
    pub metrics: Metrics,
}

impl AppState {
    /// Builds the state with AWS clients from `sdk`.
    pub async fn build(policy: Policy, settings: &Settings, sdk: &SdkConfig) -> Self {
        let kms = settings
            .kms_key_id
            .clone()
            .map(|active| Kms::new(sdk, active, settings.kms_retired_key_ids.clone()));
        let operations = Operations {
            replay: settings
                .replay_table
                .clone()
                .map(|table| ReplayTable::new(sdk, table, settings.leeway)),
            metrics: Metrics::stdout(settings.metrics_namespace.as_deref()),
        };
        Self::assemble_with(policy, settings, Sts::new(sdk), kms, operations).await
    }

    /// Builds the state from ready adapters, metric lines as `settings` say and no replay table
    /// (this has no SDK configuration to reach one).
    pub async fn assemble(policy: Policy, settings: &Settings, sts: Sts, kms: Option<Kms>) -> Self {
        let operations = Operations {
            replay: None,
            metrics: Metrics::stdout(settings.metrics_namespace.as_deref()),
        };
        Self::assemble_with(policy, settings, sts, kms, operations).await
    }

    /// Builds the state from ready adapters and fetches the issuers' keys and the KMS public
    /// keys at once, so the first request finds them cached. Failures are left for the first
    /// request to retry.
    pub async fn assemble_with(
        policy: Policy,
        settings: &Settings,
        sts: Sts,
        kms: Option<Kms>,
        operations: Operations,
    ) -> Self {
        let policy = Arc::new(policy);
        if policy.guards_replay() && operations.replay.is_none() {
            tracing::error!(
                "the policy sets token_uses but no replay table is configured \
                 (TOKEN_BROKER_REPLAY_TABLE): those grants answer 500 until one is"
            );
        }
        let verifier = Verifier::new(policy.clone(), settings.leeway, settings.jwks.clone())
            .with_metrics(operations.metrics.clone());
        let kms_keys = async {
            if let Some(kms) = &kms
                && let Err(error) = kms.keys().await
            {
                tracing::warn!(%error, "KMS public keys not fetched at start; retrying on first use");
            }
        };
        tokio::join!(verifier.prefetch(), kms_keys);
        let broker = Broker::new(policy, verifier, sts, kms)
            .with_replay_table(operations.replay)
            .with_metrics(operations.metrics);
        Self {
            broker,
            issuer_url: settings.issuer_url.clone(),
        }
    }
}
