//! `spawn_app()`: the broker on a free port, built by `startup::build` as the binary builds it,
//! its GitLab issuer a local one with keys generated here, and STS (and KMS) the moto server that
//! `scripts/test` starts (`MOTO_ENDPOINT`). `spawn_app_with(AppSpec { .. })` changes any of that.
//! Tooling that needs no running broker (moto's recording, forged tokens, the test policy) is in
//! `local_issuer`, re-exported here so test files need one `use`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_sts::config::Credentials;
use local_issuer::capture::Capture;
pub use local_issuer::claims::unique_job_id;
pub use local_issuer::fixture::{AUDIENCE, POLICY, SESSION_POLICY};
use local_issuer::kms::{KeySpec, LocalKms};
pub use local_issuer::moto::{self, recorded_assume_roles, recorded_session_names, sdk_config_for};
pub use local_issuer::{LocalIssuer, forge, urn};
use serde_json::Value;
use token_broker::AppState;
use token_broker::config::{self, Settings};
use token_broker::startup::Operations;

/// What to start a broker with. `AppSpec::default()` is what [`spawn_app`] starts.
pub struct AppSpec {
    /// Policy text, `{issuer}` standing for the issuer's URL; default [`POLICY`].
    pub policy: String,
    /// Settings; `policy` is overwritten with the file written from [`AppSpec::policy`].
    pub settings: Settings,
    /// The trusted GitLab issuer; default `None`: a fresh [`LocalIssuer`].
    pub issuer: Option<LocalIssuer>,
    /// Where STS calls go; default `None`: moto.
    pub sts: Option<SdkConfig>,
    /// Where KMS calls go when `settings.kms_key_id` is set; default `None`: moto.
    pub kms: Option<SdkConfig>,
    /// The replay table and the metric sink; default: neither.
    pub operations: Operations,
    /// More files beside the policy (a delegated team's file, say), by path relative to it,
    /// `{issuer}` standing for the issuer's URL; default none.
    pub files: Vec<(String, String)>,
}

impl Default for AppSpec {
    fn default() -> Self {
        Self {
            policy: POLICY.to_owned(),
            settings: Settings::default(),
            issuer: None,
            sts: None,
            kms: None,
            operations: Operations::default(),
            files: Vec::new(),
        }
    }
}

/// The default spec with STS at `url` (a stand-in from local-issuer, or a dead port) instead of
/// moto.
pub fn sts_at(url: &str) -> AppSpec {
    AppSpec {
        sts: Some(sdk_config_for(
            url,
            Credentials::new("t", "t", None, None, "tests"),
        )),
        ..AppSpec::default()
    }
}

/// The KMS stand-in with one fresh key of `spec`, and that key's id.
pub async fn kms_stand_in(spec: KeySpec) -> (LocalKms, String) {
    let kms = LocalKms::start().await;
    let key = kms.create_key(spec);
    (kms, key)
}

/// A spec whose KMS is the local stand-in `kms`, signing with `active` and publishing `retired`
/// too. moto cannot stand in for signing: it ignores `MessageType: DIGEST`, which the broker
/// sends, and hashes the digest again.
pub fn signing_with(kms: &LocalKms, active: &str, retired: &[&str]) -> AppSpec {
    AppSpec {
        settings: Settings {
            kms_key_id: Some(active.to_owned()),
            kms_retired_key_ids: retired.iter().map(|k| k.to_string()).collect(),
            ..Settings::default()
        },
        kms: Some(sdk_config_for(
            kms.url(),
            Credentials::new("t", "t", None, None, "tests"),
        )),
        ..AppSpec::default()
    }
}

/// A running broker and the servers it talks to.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub address: String,
    /// The GitLab issuer the policy trusts; mints the tests' tokens.
    pub issuer: LocalIssuer,
    /// A plain client, for requests the helpers below do not shape.
    pub client: reqwest::Client,
    /// The state the router serves, for tests that call the Lambda handler or the verifier.
    pub state: Arc<AppState>,
    /// Holds the policy files; removed when the app is dropped.
    dir: tempfile::TempDir,
}

/// The process's subscriber, once: the broker's text lines on stderr as the binary writes them
/// (`RUST_LOG`), and its audit lines, whatever `RUST_LOG` says, as JSON into [`audit_log`].
fn init_logs() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = tracing_subscriber::registry()
        .with(token_broker::telemetry::layer(
            false,
            &config::log_filter(),
            std::io::stderr,
        ))
        .with(token_broker::telemetry::layer(
            true,
            "audit=info",
            audit_log().clone(),
        ))
        .try_init();
}

fn audit_log() -> &'static Capture {
    static AUDIT: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
    AUDIT.get_or_init(Capture::default)
}

/// The audit line (its fields) of the request `request_id`; panics unless there is exactly one.
pub fn audit_line(request_id: &str) -> Value {
    let lines: Vec<Value> = audit_log()
        .text()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["request_id"] == request_id)
        .collect();
    assert_eq!(lines.len(), 1, "one audit line for {request_id}: {lines:?}");
    lines[0].clone()
}

/// `body` is credential_process JSON (`Version` 1) with every credential field non-empty.
pub fn assert_credential_process_json(body: &Value, what: &str) {
    assert_eq!(body["Version"], 1, "{what}: {body}");
    for field in [
        "AccessKeyId",
        "SecretAccessKey",
        "SessionToken",
        "Expiration",
    ] {
        assert!(
            body[field].as_str().is_some_and(|v| !v.is_empty()),
            "{what}: {field} in {body}"
        );
    }
}

/// A broker with [`AppSpec::default`].
pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppSpec::default()).await
}

/// Starts a broker as `spec` says: its policy written to a temporary directory, the state built
/// by `startup::build` as in the binary, and the router served on a free loopback port.
pub async fn spawn_app_with(spec: AppSpec) -> TestApp {
    init_logs();
    let issuer = match spec.issuer {
        Some(issuer) => issuer,
        None => LocalIssuer::start().await,
    };
    let dir = tempfile::tempdir().unwrap();
    for (relative, text) in &spec.files {
        let path = dir.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text.replace("{issuer}", issuer.url())).unwrap();
    }
    let settings = Settings {
        policy: Some(local_issuer::fixture::write_policy(
            dir.path(),
            &spec.policy,
            issuer.url(),
        )),
        ..spec.settings
    };
    let (address, state) = crate::serve::serve_broker(
        &settings,
        spec.sts.unwrap_or_else(moto::sdk_config),
        spec.kms.unwrap_or_else(moto::sdk_config),
        spec.operations,
    )
    .await;
    TestApp {
        address,
        issuer,
        client: reqwest::Client::new(),
        state,
        dir,
    }
}

/// Waits briefly, for tests that need a cooldown to pass.
pub async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

impl TestApp {
    /// The policy file this broker loaded.
    pub fn policy_path(&self) -> PathBuf {
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

    /// `POST /v1/token`: exchanges `subject_token` for a token for `audience`.
    pub async fn exchange(&self, subject_token: &str, audience: &str) -> reqwest::Response {
        local_issuer::requests::exchange(&self.client, &self.address, subject_token, audience).await
    }

    /// `POST /v1/credentials?{query}` with the token as Bearer.
    pub async fn credentials(&self, token: &str, query: &str) -> reqwest::Response {
        local_issuer::requests::credentials(&self.client, &self.address, token, query).await
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
