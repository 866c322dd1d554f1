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
