//! The Lambda entry point: real Function URL events (payload v2) through `lambda::invoke`, and
//! the built binary under `cargo lambda watch`, the local Lambda runtime emulator.

use serde_json::{Value, json};
use token_broker::lambda;

use crate::helpers::*;

const CREDENTIALS_EVENT: &str = include_str!("../fixtures/function-url-credentials.json");

fn event(token: &str, query: &str, body: Option<&str>) -> lambda_http::Request {
    let mut event: Value = serde_json::from_str(CREDENTIALS_EVENT).unwrap();
    event["headers"]["authorization"] = json!(format!("Bearer {token}"));
    event["rawQueryString"] = json!(query);
    if let Some(body) = body {
        event["body"] = json!(body);
        event["headers"]["content-type"] = json!("application/json");
    }
    lambda_http::request::from_str(&event.to_string()).unwrap()
}

fn body_json(response: &lambda_http::Response<lambda_http::Body>) -> Value {
    match response.body() {
        lambda_http::Body::Text(text) => serde_json::from_str(text).unwrap(),
        other => panic!("expected a text body, got {other:?}"),
    }
}

#[tokio::test]
async fn a_function_url_event_gets_credentials() {
    let app = spawn_app().await;
    let (token, job_id) = app.token(json!({}));
    let response = lambda::invoke(&app.state, event(&token, "role=deploy-web-prod", None)).await;
    assert_eq!(response.status(), 200);
    let body = body_json(&response);
    assert_eq!(body["Version"], 1);
    assert_eq!(body["SessionName"], format!("gitlab-4242-{job_id}"));
    assert_eq!(
        recorded_assume_roles(&format!("gitlab-4242-{job_id}"))
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn a_function_url_event_with_a_json_body_and_a_bad_token_gets_oauth_errors() {
    let app = spawn_app().await;
    let (token, _) = app.token(json!({}));
    let response = lambda::invoke(
        &app.state,
        event(&token, "", Some(r#"{"role":"read-only"}"#)),
    )
    .await;
    assert_eq!(response.status(), 200);
    let response = lambda::invoke(&app.state, event("x.y.z", "role=read-only", None)).await;
    assert_eq!(response.status(), 401);
    let body = body_json(&response);
    assert_eq!(body["error"], "invalid_token");
    assert_eq!(
        body["request_id"], "3f1c9f7e-5a59-4a5e-9a57-1e0b8f8a8e11",
        "Lambda's request id"
    );
}

/// The real binary under the local Lambda emulator: `cargo lambda watch` builds it, runs it
/// against its Runtime API, and serves Function URL requests at `/lambda-url/<function>/…`.
#[tokio::test]
async fn the_built_binary_answers_function_url_requests_under_cargo_lambda_watch() {
    let app = spawn_app().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let policy = app.policy_path();
    let env = format!(
        "TOKEN_BROKER_POLICY={},AWS_ENDPOINT_URL={},AWS_ACCESS_KEY_ID=testing,AWS_SECRET_ACCESS_KEY=testing,AWS_REGION=us-east-1,RUST_LOG=info",
        policy.display(),
        moto::endpoint()
    );
    let mut emulator = std::process::Command::new("cargo");
    emulator
        .args([
            "lambda",
            "watch",
            "--ignore-changes",
            "--quiet",
            "--package",
            "token-broker",
            "--bin",
            "token-broker",
        ])
        .args([
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
            &port.to_string(),
            "--env-var",
            &env,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::null());
    let mut emulator = ChildGroup::spawn(emulator);

    let base = format!("http://127.0.0.1:{port}/lambda-url/token-broker");
    let client = reqwest::Client::new();
    // The first invocation compiles the function; allow for a cold build on two cores.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        assert!(
            emulator.is_running(),
            "cargo lambda watch exited; is cargo-lambda installed (scripts/tools.sh)?"
        );
        let health = client
            .get(format!("{base}/healthz"))
            .timeout(std::time::Duration::from_secs(300))
            .send()
            .await;
        if health.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the emulated function never answered /healthz"
        );
        sleep_ms(500).await;
    }

    let (token, job_id) = app.token(json!({}));
    let response = client
        .post(format!("{base}/v1/credentials?role=deploy-web-prod"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["SessionName"], format!("gitlab-4242-{job_id}"));
    assert_eq!(
        recorded_assume_roles(&format!("gitlab-4242-{job_id}"))
            .await
            .len(),
        1
    );

    let response = client
        .post(format!("{base}/v1/credentials?role=deploy-web-prod"))
        .bearer_auth("x.y.z")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

/// A child process in its own process group, ended with the whole group when dropped (cargo
/// lambda runs the function as its own child).
struct ChildGroup(std::process::Child);

impl ChildGroup {
    fn spawn(mut command: std::process::Command) -> Self {
        use std::os::unix::process::CommandExt;
        Self(
            command
                .process_group(0)
                .spawn()
                .expect("spawn cargo lambda watch"),
        )
    }

    /// `kill -0` would also succeed on the exited, unreaped emulator: ask for its exit status.
    fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for ChildGroup {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = std::process::Command::new("kill")
            .args(["-TERM", "--", &group])
            .status();
        let _ = self.0.wait();
    }
}

/// In Lambda the issuer is `https://` plus the Function URL domain AWS puts in the event, not the
/// Host header a caller chooses.
#[tokio::test]
async fn in_lambda_the_issuer_is_the_function_url_domain() {
    let kms = aws_sdk_kms::Client::new(&moto::sdk_config());
    let key = kms
        .create_key()
        .key_spec(aws_sdk_kms::types::KeySpec::Rsa2048)
        .key_usage(aws_sdk_kms::types::KeyUsageType::SignVerify)
        .send()
        .await
        .unwrap();
    let settings = token_broker::config::Settings {
        kms_key_id: key.key_metadata.map(|m| m.key_id),
        ..Default::default()
    };
    let app = spawn_app_with(AppSpec {
        settings,
        ..Default::default()
    })
    .await;
    let mut event: Value = serde_json::from_str(CREDENTIALS_EVENT).unwrap();
    event["rawPath"] = json!("/.well-known/openid-configuration");
    event["rawQueryString"] = json!("");
    event["requestContext"]["http"]["method"] = json!("GET");
    event["headers"]["host"] = json!("attacker.example.com");
    let request = lambda_http::request::from_str(&event.to_string()).unwrap();
    let response = lambda::invoke(&app.state, request).await;
    assert_eq!(response.status(), 200);
    let discovery = body_json(&response);
    let expected = "https://abcdefghijklmnopqrstuvwxyz012345.lambda-url.eu-west-1.on.aws";
    assert_eq!(discovery["issuer"], expected);
    assert_eq!(
        discovery["jwks_uri"],
        format!("{expected}/.well-known/jwks.json")
    );
}

/// A Function URL passes bodies of up to 6 MB; every route refuses more than 20 KiB before
/// parsing, so a huge form cannot eat the function's time.
#[tokio::test]
async fn in_lambda_a_huge_body_is_refused_on_every_route() {
    let app = spawn_app().await;
    let form = "audience=a&".repeat(40_000);
    for path in ["/v1/token", "/v1/credentials"] {
        let mut event: Value = serde_json::from_str(CREDENTIALS_EVENT).unwrap();
        event["rawPath"] = json!(path);
        event["body"] = json!(form);
        event["headers"]["content-type"] = json!("application/x-www-form-urlencoded");
        let started = std::time::Instant::now();
        let response = lambda::invoke(
            &app.state,
            lambda_http::request::from_str(&event.to_string()).unwrap(),
        )
        .await;
        assert_eq!(response.status(), 400, "{path}");
        assert!(
            body_json(&response)["error_description"]
                .as_str()
                .unwrap()
                .contains("20480")
        );
        assert!(
            started.elapsed() < std::time::Duration::from_millis(500),
            "{path}"
        );
    }
}
