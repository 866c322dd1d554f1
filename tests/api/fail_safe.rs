//! The paths real deployments hit when something is off: STS's role-chaining cap that moto does
//! not enforce, genuine GitLab tokens with unusual claims, error answers a caller can act on, and
//! callers from projects the policy does not know, who must learn nothing about it.

use aws_sdk_sts::config::Credentials;
use local_issuer::sts::{LocalSts, StsMode};
use serde_json::{Value, json};
use token_broker::broker::NOTHING_ADMITTED;

use crate::helpers::*;

/// The test policy plus a role whose `max_duration` is over STS's role-chaining cap.
fn policy_with_a_long_role() -> String {
    format!(
        r#"{POLICY}
[role.long]
arn = "arn:aws:iam::123456789012:role/long"
max_duration = "4h"

[[role.long.allow]]
project_id = "4242"
"#
    )
}

async fn duration_sent_to_sts(app: &TestApp) -> (Value, String) {
    let (token, job_id) = app.token(json!({"exp": local_issuer::claims::now() + 4 * 3600}));
    let response = app
        .credentials(&token, "role=long&duration_seconds=7200")
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let calls = recorded_assume_roles(&format!("gitlab-4242-{job_id}")).await;
    assert_eq!(calls.len(), 1);
    (body, calls[0]["DurationSeconds"].clone())
}

#[tokio::test]
async fn with_a_role_session_the_broker_never_asks_sts_for_more_than_an_hour() {
    // In Lambda the broker's own credentials always carry a session token: every AssumeRole is
    // role chaining, which STS refuses above 3,600 s (moto does not).
    let session = Credentials::new("testing", "testing", Some("session".into()), None, "t");
    let app = spawn_app_with(AppSpec {
        policy: policy_with_a_long_role(),
        sts: Some(moto::sdk_config_with(session)),
        ..Default::default()
    })
    .await;
    let (body, sent) = duration_sent_to_sts(&app).await;
    assert_eq!(sent, "3600");
    assert_eq!(body["DurationSeconds"], 3600);
}

#[tokio::test]
async fn with_long_term_credentials_a_long_role_gets_the_session_it_asks_for() {
    let app = spawn_app_with(AppSpec {
        policy: policy_with_a_long_role(),
        ..Default::default()
    })
    .await;
    let (body, sent) = duration_sent_to_sts(&app).await;
    assert_eq!(sent, "7200");
    assert_eq!(body["DurationSeconds"], 7200);
}

#[tokio::test]
async fn a_token_listing_200_direct_groups_gets_credentials() {
    let app = spawn_app().await;
    let groups: Vec<String> = (0..200)
        .map(|i| format!("acme/platform-engineering/team-{i:03}/services"))
        .collect();
    let (token, _) = app.token(json!({ "groups_direct": groups }));
    assert!(
        (11 * 1024..16 * 1024).contains(&token.len()),
        "a token the size GitLab issues with 200 groups: {} bytes",
        token.len()
    );
    let response = app.credentials(&token, "role=read-only").await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_genuine_token_with_an_unusable_login_gets_a_source_identity_from_its_user_id() {
    let app = spawn_app().await;
    let cases = [
        (json!({}), "ada"),
        (json!({"user_login": null}), "user_id=1001"),
        (json!({"user_login": "a".repeat(65)}), "user_id=1001"),
        (json!({"user_login": "ädä"}), "user_id=1001"),
        (json!({"user_login": "ada lovelace"}), "user_id=1001"),
        (json!({"user_login": "aws:admin"}), "user_id=1001"),
        (json!({"user_login": "x"}), "user_id=1001"),
        (json!({"user_login": 7}), "user_id=1001"),
    ];
    for (overrides, expected) in cases {
        let (token, job_id) = app.token(overrides.clone());
        let response = app.credentials(&token, "role=read-only").await;
        assert_eq!(response.status(), 200, "{overrides}");
        let calls = recorded_assume_roles(&format!("gitlab-4242-{job_id}")).await;
        assert_eq!(calls[0]["SourceIdentity"], expected, "{overrides}");
    }
}

#[tokio::test]
async fn a_failed_env_request_carries_its_request_id_like_every_other_error() {
    let sts = LocalSts::start_on("127.0.0.1:0").await;
    sts.set_mode(StsMode::ServerError);
    let app = spawn_app_with(sts_at(sts.url())).await;
    let (token, _) = app.token(json!({}));
    let response = app.credentials(&token, "role=read-only&format=env").await;
    app.assert_error(response, 503, "temporarily_unavailable", "STS")
        .await;
}

#[tokio::test]
async fn a_token_header_that_is_not_json_is_told_so() {
    let app = spawn_app().await;
    let (claims, _) = app.claims(json!({}));
    let token = app.issuer.mint(&claims);
    let payload_and_signature = token.split_once('.').unwrap().1;
    let header = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        "alg=RS256",
    );
    let response = app
        .credentials(
            &format!("{header}.{payload_and_signature}"),
            "role=read-only",
        )
        .await;
    app.assert_error(response, 401, "invalid_token", "header is not JSON")
        .await;
}

#[tokio::test]
async fn a_wrong_method_is_a_405_that_names_the_allowed_one() {
    let app = spawn_app().await;
    let cases = [
        (reqwest::Method::GET, "/v1/credentials", "POST"),
        (reqwest::Method::PUT, "/v1/token", "POST"),
        (reqwest::Method::POST, "/healthz", "GET"),
        (reqwest::Method::DELETE, "/.well-known/jwks.json", "GET"),
        (
            reqwest::Method::POST,
            "/.well-known/openid-configuration",
            "GET",
        ),
    ];
    for (method, path, allowed) in cases {
        let response = app
            .client
            .request(method.clone(), format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["allow"], allowed, "{method} {path}");
        app.assert_error(response, 405, "invalid_request", allowed)
            .await;
    }
}

async fn exchange_form(app: &TestApp, form: &[(&str, &str)]) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/token", app.address))
        .form(form)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_missing_grant_type_is_a_malformed_request_and_another_one_unsupported() {
    let app = spawn_app().await;
    let (token, _) = app.token(json!({}));
    let base = [
        ("subject_token", token.as_str()),
        ("subject_token_type", urn::JWT),
        ("audience", "sts.amazonaws.com"),
    ];
    let response = exchange_form(&app, &base).await;
    app.assert_error(response, 400, "invalid_request", "`grant_type` is required")
        .await;
    let mut other = base.to_vec();
    other.push(("grant_type", "client_credentials"));
    let response = exchange_form(&app, &other).await;
    app.assert_error(response, 400, "unsupported_grant_type", "grant_type")
        .await;
}

#[tokio::test]
async fn an_unknown_query_parameter_is_named() {
    let app = spawn_app().await;
    let (token, _) = app.token(json!({}));
    let response = app
        .credentials(&token, "role=read-only&duration=3600")
        .await;
    app.assert_error(
        response,
        400,
        "invalid_request",
        "unknown query parameter `duration`",
    )
    .await;
    // A token pasted into the query string (as a name, or twice) never comes back in the answer.
    for query in [
        format!("role=read-only&{token}"),
        format!("role=read-only&{token}&{token}"),
    ] {
        let response = app.credentials(&token, &query).await;
        let body = app
            .assert_error(response, 400, "invalid_request", "query parameter `…`")
            .await;
        let signature = token.rsplit('.').next().unwrap();
        assert!(!body.to_string().contains(&signature[..16]), "{body}");
        assert!(!body.to_string().contains("eyJ"), "{body}");
    }
}

#[tokio::test]
async fn a_token_pasted_twice_into_the_exchange_form_never_comes_back() {
    let app = spawn_app().await;
    let (token, _) = app.token(json!({}));
    let form = [
        ("grant_type", urn::TOKEN_EXCHANGE),
        ("subject_token", token.as_str()),
        ("subject_token_type", urn::JWT),
        ("audience", "sts.amazonaws.com"),
        (token.as_str(), ""),
        (token.as_str(), ""),
    ];
    let response = exchange_form(&app, &form).await;
    let body = app
        .assert_error(
            response,
            400,
            "invalid_request",
            "parameter `…` is repeated",
        )
        .await;
    assert!(!body.to_string().contains("eyJ"), "{body}");
}

#[tokio::test]
async fn a_token_for_another_audience_is_not_told_the_brokers_audience() {
    let app = spawn_app().await;
    let (token, _) = app.token(json!({"aud": "https://vault.example.com"}));
    let response = app.credentials(&token, "role=read-only").await;
    let body = app
        .assert_error(response, 401, "invalid_token", "`aud`")
        .await;
    assert!(!body.to_string().contains(AUDIENCE), "{body}");
}

/// What a caller from a project no rule names is told, for every kind of request it can make.
async fn answers_to_a_stranger(app: &TestApp, overrides: Value) -> Vec<Value> {
    let mut bodies = Vec::new();
    for role in ["deploy-web-prod", "read-only", "admin"] {
        let (token, _) = app.token(overrides.clone());
        let response = app.credentials(&token, &format!("role={role}")).await;
        bodies.push(
            app.assert_error(response, 403, "access_denied", NOTHING_ADMITTED)
                .await,
        );
    }
    bodies
}

#[tokio::test]
async fn a_project_no_rule_names_learns_nothing_about_the_policy() {
    let app = spawn_app().await;
    let stranger = json!({
        "project_id": "31337", "project_path": "mallory/web",
        "namespace_id": "666", "namespace_path": "mallory",
    });
    for body in answers_to_a_stranger(&app, stranger).await {
        let description = body["error_description"].as_str().unwrap();
        assert_eq!(
            description, NOTHING_ADMITTED,
            "no role, rule or claim named"
        );
    }
    // A job of an admitted project keeps the precise reason.
    let (token, _) = app.token(json!({"ref": "feature/x"}));
    let response = app.credentials(&token, "role=deploy-web-prod").await;
    app.assert_error(
        response,
        403,
        "access_denied",
        "claim \"ref\" = \"feature/x\"",
    )
    .await;
}
