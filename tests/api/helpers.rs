//! `spawn_app()`: the broker's router on a free port, its GitLab issuer a local one with keys
//! generated here, and STS the moto server that `scripts/test` starts (`MOTO_ENDPOINT`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sts::config::Credentials;
use base64::Engine;
use local_issuer::LocalIssuer;
use serde_json::Value;
use token_broker::aws::kms::Kms;
use token_broker::aws::sts::Sts;
use token_broker::config::Settings;
use token_broker::{AppState, policy};

pub const AUDIENCE: &str = "https://token-broker.example.com";

/// The policy the tests run against; `{issuer}` is the local issuer's URL.
pub const POLICY: &str = r#"
audience = "https://token-broker.example.com"

[[issuer]]
url = "{issuer}"

[role.deploy-web-prod]
arn = "arn:aws:iam::123456789012:role/deploy-web-prod"
max_duration = "1h"
session_tags = ["project_id", "ref", "environment"]
session_policy = "policies/deploy-web-prod.json"

[[role.deploy-web-prod.allow]]
project_id = "4242"
ref_type = "branch"
ref = "main"
ref_protected = "true"
environment = "production"

[[role.deploy-web-prod.allow]]
namespace_id = "72"
project_path = "acme/*"
ref_type = "tag"
ref = ["v*", "release-*"]

[role.read-only]
arn = "arn:aws:iam::123456789012:role/read-only"
max_duration = "30m"

[[role.read-only.allow]]
project_id = "4242"

[token.aws]
audience = "sts.amazonaws.com"
max_ttl = "10m"
claims = ["project_id", "ref", "runner_id", "environment"]

[[token.aws.allow]]
project_id = "4242"
ref_type = "branch"
ref = "main"
ref_protected = "true"

[role.tagged]
arn = "arn:aws:iam::123456789012:role/tagged"
session_tags = ["ref"]

[[role.tagged.allow]]
project_id = "4242"
"#;

pub const SESSION_POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::acme-web/*"}]
}"#;

/// A running broker and the servers it talks to.
pub struct TestApp {
    pub address: String,
    pub issuer: LocalIssuer,
    pub client: reqwest::Client,
    pub state: Arc<AppState>,
    dir: tempfile::TempDir,
}

/// The moto endpoint; the README's test command starts moto and sets it.
pub fn moto_endpoint() -> String {
    std::env::var("MOTO_ENDPOINT")
        .expect("MOTO_ENDPOINT is not set: run the tests with `scripts/test`, which starts moto")
}

/// SDK configuration pointing at moto with dummy credentials.
pub fn moto_sdk_config() -> SdkConfig {
    moto_sdk_config_with(Credentials::new("testing", "testing", None, None, "tests"))
}

pub fn moto_sdk_config_with(credentials: Credentials) -> SdkConfig {
    sdk_config_for(&moto_endpoint(), credentials)
}

/// SDK configuration for any local endpoint.
pub fn sdk_config_for(endpoint: &str, credentials: Credentials) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sts::config::SharedCredentialsProvider::new(
            credentials,
        ))
        .timeout_config(token_broker::aws::timeouts())
        .build()
}

/// A job id no other test in this or an earlier run uses, so recorded STS calls can be told apart.
pub fn unique_job_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        % 1_000_000_000
        * 1000;
    let _ = NEXT.compare_exchange(0, base, Ordering::SeqCst, Ordering::SeqCst);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(POLICY, Settings::default()).await
}

/// Starts a local issuer and a broker whose policy is `policy` with `{issuer}` filled in.
pub async fn spawn_app_with(policy: &str, settings: Settings) -> TestApp {
    let issuer = LocalIssuer::start().await;
    spawn_app_for(issuer, policy, settings).await
}

pub async fn spawn_app_for(issuer: LocalIssuer, policy: &str, settings: Settings) -> TestApp {
    spawn_app_full(issuer, policy, settings, &moto_sdk_config()).await
}

/// Like [`spawn_app_for`], with the AWS SDK pointed wherever `sdk` says.
pub async fn spawn_app_full(
    issuer: LocalIssuer,
    policy: &str,
    settings: Settings,
    sdk: &SdkConfig,
) -> TestApp {
    let kms = settings
        .kms_key_id
        .clone()
        .map(|active| Kms::new(sdk, active, settings.kms_retired_key_ids.clone()));
    spawn_app_parts(issuer, policy, settings, Sts::new(sdk), kms).await
}

/// Starts a broker whose KMS is the local stand-in `kms`, signing with `active` and publishing
/// `retired` too, with STS at moto. moto cannot stand in for signing: it ignores
/// `MessageType: DIGEST`, which the broker sends, and hashes the digest again.
pub async fn spawn_app_signing_with(
    kms: &local_issuer::kms::LocalKms,
    policy: &str,
    active: &str,
    retired: &[&str],
) -> TestApp {
    let sdk = sdk_config_for(kms.url(), Credentials::new("t", "t", None, None, "tests"));
    let retired: Vec<String> = retired.iter().map(|k| k.to_string()).collect();
    let settings = Settings {
        kms_key_id: Some(active.to_owned()),
        kms_retired_key_ids: retired.clone(),
        ..Settings::default()
    };
    let signer = Kms::new(&sdk, active.to_owned(), retired);
    let sts = Sts::new(&moto_sdk_config());
    spawn_app_parts(
        LocalIssuer::start().await,
        policy,
        settings,
        sts,
        Some(signer),
    )
    .await
}

/// Starts a broker from ready AWS adapters (so STS and KMS can be pointed at different places).
pub async fn spawn_app_parts(
    issuer: LocalIssuer,
    policy: &str,
    mut settings: Settings,
    sts: Sts,
    kms: Option<Kms>,
) -> TestApp {
    token_broker::telemetry::init(false);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/deploy-web-prod.json"),
        SESSION_POLICY,
    )
    .unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, policy.replace("{issuer}", issuer.url())).unwrap();
    settings.policy = Some(policy_path.clone());
    let policy = policy::load(&policy_path).unwrap();
    let state = Arc::new(AppState::assemble(policy, &settings, sts, kms).await);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(token_broker::serve::run(
        listener,
        state.clone(),
        std::future::pending(),
    ));
    TestApp {
        address,
        issuer,
        client: reqwest::Client::new(),
        state,
        dir,
    }
}

impl TestApp {
    /// The policy file this broker loaded.
    pub fn policy_path(&self) -> std::path::PathBuf {
        self.dir.path().join("policy.toml")
    }

    /// Claims of a fresh job (its own job id) with `overrides` applied (`null` removes a claim).
    pub fn claims(&self, overrides: Value) -> (Value, u64) {
        let job_id = unique_job_id();
        (
            local_issuer::claims::with(self.issuer.claims(AUDIENCE, job_id), &overrides),
            job_id,
        )
    }

    /// A token for a fresh job, signed by the issuer's current key.
    pub fn token(&self, overrides: Value) -> (String, u64) {
        let (claims, job_id) = self.claims(overrides);
        (self.issuer.mint(&claims), job_id)
    }

    /// `POST /v1/credentials?{query}` with the token as Bearer.
    pub async fn credentials(&self, token: &str, query: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/credentials?{query}", self.address))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Asserts an error response: status, OAuth error code, and a description containing `needle`.
    pub async fn assert_error(
        &self,
        response: reqwest::Response,
        status: u16,
        code: &str,
        needle: &str,
    ) -> Value {
        assert_eq!(response.status().as_u16(), status);
        let header_id = response
            .headers()
            .get("x-request-id")
            .map(|id| id.to_str().unwrap().to_owned());
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], code, "{body}");
        let description = body["error_description"].as_str().unwrap_or_default();
        assert!(description.contains(needle), "{needle:?} not in {body}");
        assert!(
            body["request_id"].as_str().is_some_and(|id| !id.is_empty()),
            "{body}"
        );
        assert_eq!(
            header_id.as_deref(),
            body["request_id"].as_str(),
            "the body's request_id is the x-request-id header's"
        );
        body
    }
}

/// The AssumeRole calls moto recorded for `session_name`, each as its form parameters.
pub async fn recorded_assume_roles(session_name: &str) -> Vec<HashMap<String, String>> {
    recorded_requests()
        .await
        .into_iter()
        .map(|(_, body)| {
            form_urlencoded::parse(&body)
                .into_owned()
                .collect::<HashMap<String, String>>()
        })
        .filter(|form| form.get("Action").is_some_and(|a| a == "AssumeRole"))
        .filter(|form| {
            form.get("RoleSessionName")
                .is_some_and(|n| n == session_name)
        })
        .collect()
}

/// Waits briefly, for tests that need a cooldown to pass.
pub async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// A fresh KMS key in moto that signs (`RSA_2048` or `ECC_NIST_P256`); returns its id.
pub async fn moto_kms_key(spec: aws_sdk_kms::types::KeySpec) -> String {
    let kms = aws_sdk_kms::Client::new(&moto_sdk_config());
    let key = kms
        .create_key()
        .key_spec(spec)
        .key_usage(aws_sdk_kms::types::KeyUsageType::SignVerify)
        .send()
        .await
        .unwrap();
    key.key_metadata.unwrap().key_id
}

/// moto's request recording: each request's `X-Amz-Target` header (`TrentService.Sign` for KMS;
/// empty for STS, whose query protocol names the action in the body) and its decoded body.
pub async fn recorded_requests() -> Vec<(String, Vec<u8>)> {
    let url = format!("{}/moto-api/recorder/download-recording", moto_endpoint());
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|entry| {
            let target = entry["headers"]
                .as_object()
                .and_then(|headers| {
                    headers
                        .iter()
                        .find(|(name, _)| name.eq_ignore_ascii_case("x-amz-target"))
                })
                .and_then(|(_, value)| value.as_str())
                .unwrap_or_default()
                .to_owned();
            let body = entry["body"].as_str()?;
            let bytes = if entry["body_encoded"] == true {
                base64::engine::general_purpose::STANDARD
                    .decode(body)
                    .ok()?
            } else {
                body.as_bytes().to_vec()
            };
            Some((target, bytes))
        })
        .collect()
}

/// Every `RoleSessionName` moto was sent in an AssumeRole call; one download serves a whole
/// table of requests.
pub async fn recorded_session_names() -> Vec<String> {
    recorded_requests()
        .await
        .into_iter()
        .filter(|(target, _)| target.is_empty())
        .filter_map(|(_, body)| {
            let form: HashMap<String, String> =
                form_urlencoded::parse(&body).into_owned().collect();
            (form.get("Action")? == "AssumeRole")
                .then(|| form.get("RoleSessionName").cloned())
                .flatten()
        })
        .collect()
}

/// Starts a broker with `operations` (a replay table, a metric sink) beside STS at moto and `kms`;
/// for `replay.rs` and `metrics.rs`, whose brokers need what the constructors above do not pass.
pub async fn spawn_app_operated(
    policy: &str,
    settings: Settings,
    kms: Option<Kms>,
    operations: token_broker::startup::Operations,
) -> TestApp {
    token_broker::telemetry::init(false);
    let issuer = LocalIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    let session_policy = dir.path().join("policies/deploy-web-prod.json");
    std::fs::write(session_policy, SESSION_POLICY).unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, policy.replace("{issuer}", issuer.url())).unwrap();
    let policy = policy::load(&policy_path).unwrap();
    let sts = Sts::new(&moto_sdk_config());
    let state = AppState::assemble_with(policy, &settings, sts, kms, operations).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(state);
    tokio::spawn(token_broker::serve::run(
        listener,
        state.clone(),
        std::future::pending(),
    ));
    TestApp {
        address,
        issuer,
        client: reqwest::Client::new(),
        state,
        dir,
    }
}
