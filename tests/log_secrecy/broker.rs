//! The broker under test, for this binary alone: built by `startup::build` as the binary builds
//! it, with the shared test policy and a local GitLab issuer. A harness of its own rather than the
//! `api` one because this binary installs its own global log subscriber first and must not share
//! a process with tests that install another.

use std::path::PathBuf;

use aws_config::SdkConfig;
use local_issuer::LocalIssuer;
use local_issuer::claims::unique_job_id;
use local_issuer::fixture::{AUDIENCE, POLICY, write_policy};
use serde_json::Value;
use token_broker::config::Settings;

/// A running broker, its issuer, and a client for it.
pub struct Broker {
    pub address: String,
    pub issuer: LocalIssuer,
    pub client: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Broker {
    /// Starts a broker on a free port with [`POLICY`] and `settings`, its STS calls going where
    /// `sts` says and its KMS calls where `kms` does, with the binary's timeouts. Installs no log
    /// subscriber: the test has.
    pub async fn start(settings: Settings, sts: SdkConfig, kms: SdkConfig) -> Self {
        Self::start_with(LocalIssuer::start().await, settings, sts, kms).await
    }

    /// [`Self::start`] with `issuer` as the GitLab the policy trusts.
    pub async fn start_with(
        issuer: LocalIssuer,
        settings: Settings,
        sts: SdkConfig,
        kms: SdkConfig,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            policy: Some(write_policy(dir.path(), POLICY, issuer.url())),
            ..settings
        };
        let (address, _) =
            crate::serve::serve_broker(&settings, sts, kms, Default::default()).await;
        Self {
            address,
            issuer,
            client: reqwest::Client::new(),
            dir,
        }
    }

    /// A broker with default settings and moto for AWS.
    pub async fn start_default() -> Self {
        let moto = local_issuer::moto::sdk_config();
        Self::start(Settings::default(), moto.clone(), moto).await
    }

    /// The policy file this broker loaded.
    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.toml")
    }

    /// Claims of a fresh job (its own job id) with `overrides` applied (`null` removes a claim).
    pub fn claims(&self, overrides: Value) -> Value {
        local_issuer::claims::with(self.issuer.claims(AUDIENCE, unique_job_id()), &overrides)
    }

    /// A token for a fresh job, signed by the issuer's current key.
    pub fn token(&self, overrides: Value) -> String {
        self.issuer.mint(&self.claims(overrides))
    }

    /// `POST /v1/token`: exchanges `subject_token` for a token for `audience`.
    pub async fn exchange(&self, subject_token: &str, audience: &str) -> reqwest::Response {
        local_issuer::requests::exchange(&self.client, &self.address, subject_token, audience).await
    }

    /// `POST /v1/credentials?{query}` with the token as Bearer.
    pub async fn credentials(&self, token: &str, query: &str) -> reqwest::Response {
        local_issuer::requests::credentials(&self.client, &self.address, token, query).await
    }
}
