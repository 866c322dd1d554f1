//! moto, the AWS emulator the tests run against: where it is, SDK configurations pointing at it,
//! and readers of its request recording, from which tests learn what the broker sent to STS and
//! KMS (and, by a job's absence, that a refused request sent nothing). `scripts/test` starts moto
//! with recording on and sets `MOTO_ENDPOINT`.

use std::collections::HashMap;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use base64::Engine;
use serde_json::Value;

/// moto's URL, from `MOTO_ENDPOINT`; panics with how to start it when unset.
pub fn endpoint() -> String {
    std::env::var("MOTO_ENDPOINT")
        .expect("MOTO_ENDPOINT is not set: run the tests with `scripts/test`, which starts moto")
}

/// SDK configuration for moto with dummy credentials.
pub fn sdk_config() -> SdkConfig {
    sdk_config_with(Credentials::new("testing", "testing", None, None, "tests"))
}

/// SDK configuration for moto signing with `credentials` (session credentials, say).
pub fn sdk_config_with(credentials: Credentials) -> SdkConfig {
    sdk_config_for(&endpoint(), credentials)
}

/// SDK configuration for any local endpoint (a stand-in from this crate, or a dead port), in
/// `us-east-1`. Carries the SDK's default timeouts; a broker under test gets its own.
pub fn sdk_config_for(endpoint: &str, credentials: Credentials) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .build()
}

/// A fresh KMS key in moto that signs (`RSA_2048` or `ECC_NIST_P256`); returns its id.
pub async fn kms_key(spec: aws_sdk_kms::types::KeySpec) -> String {
    let kms = aws_sdk_kms::Client::new(&sdk_config());
    let key = kms
        .create_key()
        .key_spec(spec)
        .key_usage(aws_sdk_kms::types::KeyUsageType::SignVerify)
        .send()
        .await
        .expect("moto creates a KMS key");
    key.key_metadata.expect("key metadata").key_id
}

/// moto's request recording: each request's `X-Amz-Target` header (`TrentService.Sign` for KMS;
/// empty for STS, whose query protocol names the action in the body) and its decoded body.
pub async fn recorded_requests() -> Vec<(String, Vec<u8>)> {
    let url = format!("{}/moto-api/recorder/download-recording", endpoint());
    let text = reqwest::get(url)
        .await
        .expect("moto's recording")
        .text()
        .await
        .expect("moto's recording as text");
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|entry| recorded_request(&entry))
        .collect()
}

fn recorded_request(entry: &Value) -> Option<(String, Vec<u8>)> {
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
}

/// The AssumeRole calls moto recorded for `session_name`, each as its form parameters.
pub async fn recorded_assume_roles(session_name: &str) -> Vec<HashMap<String, String>> {
    recorded_requests()
        .await
        .into_iter()
        .map(|(_, body)| form(&body))
        .filter(|form| form.get("Action").is_some_and(|a| a == "AssumeRole"))
        .filter(|form| {
            form.get("RoleSessionName")
                .is_some_and(|n| n == session_name)
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
            let form = form(&body);
            (form.get("Action")? == "AssumeRole")
                .then(|| form.get("RoleSessionName").cloned())
                .flatten()
        })
        .collect()
}

fn form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}
