//! Request handling: malformed or oversized input gets a 400-class JSON error before any token
//! work, and the other routes answer as documented.

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn healthz_answers_without_touching_dependencies() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/v2/anything", app.address))
        .send()
        .await
        .unwrap();
    app.assert_error(response, 404, "not_found", "").await;
    let response = app
        .client
        .get(format!("{}/v1/credentials", app.address))
        .send()
        .await
        .unwrap();
    app.assert_error(response, 405, "invalid_request", "method")
        .await;
}

#[tokio::test]
async fn a_missing_or_malformed_bearer_token_is_a_401() {
    let app = spawn_app().await;
    let url = format!("{}/v1/credentials?role=read-only", app.address);
    let response = app.client.post(&url).send().await.unwrap();
    assert!(response.headers().contains_key("www-authenticate"));
    app.assert_error(response, 401, "invalid_token", "Authorization")
        .await;
    for header in ["Basic abc", "Bearer", "Bearer ", "token abc"] {
        let response = app
            .client
            .post(&url)
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        app.assert_error(response, 401, "invalid_token", "").await;
    }
    for token in ["not-a-jwt", "a.b", "a.b.c.d", "a.b+c.d"] {
        let response = app.credentials(token, "role=read-only").await;
        app.assert_error(response, 401, "invalid_token", "").await;
    }
}

#[tokio::test]
async fn malformed_and_oversized_requests_are_400s() {
    let app = spawn_app().await;
    let (token, _) = app.token(json!({}));
    let cases = [
        ("", "`role` is required"),
        ("role=", "not a role name"),
        ("role=../admin", "not a role name"),
        ("role=deploy*", "not a role name"),
        ("role=read-only&role=deploy-web-prod", "repeated"),
        ("role=read-only&duration_seconds=-1", "whole number"),
        ("role=read-only&duration_seconds=abc", "whole number"),
        (
            "role=read-only&duration_seconds=99999999999999999999999",
            "whole number",
        ),
        (
            "role=read-only&duration_seconds=100",
            "between 900 and 43200",
        ),
        (
            "role=read-only&duration_seconds=43201",
            "between 900 and 43200",
        ),
        ("role=read-only&format=yaml", "`format`"),
        ("role=read-only&admin=true", "unknown query parameter"),
    ];
    for (query, needle) in cases {
        let response = app.credentials(&token, query).await;
        app.assert_error(response, 400, "invalid_request", needle)
            .await;
    }
    let url = format!("{}/v1/credentials", app.address);
    let bodies: Vec<(&str, Vec<u8>, &str)> = vec![
        ("application/json", b"{".to_vec(), "JSON object"),
        (
            "application/json",
            br#"{"role": 7}"#.to_vec(),
            "JSON object",
        ),
        (
            "application/json",
            br#"{"role": "read-only", "duration_seconds": "900"}"#.to_vec(),
            "JSON object",
        ),
        (
            "application/json",
            br#"{"role": "read-only", "extra": 1}"#.to_vec(),
            "JSON object",
        ),
        (
            "application/json",
            br#"["read-only"]"#.to_vec(),
            "JSON object",
        ),
        (
            "application/json",
            vec![0xff, 0xfe, b'{', b'}'],
            "JSON object",
        ),
        (
            "application/json",
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
            "JSON object",
        ),
        (
            "application/json",
            format!(r#"{{"role":"{}"}}"#, "a".repeat(21_000)).into_bytes(),
            "exceeds 20480",
        ),
    ];
    for (content_type, body, needle) in bodies {
        let response = app
            .client
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        app.assert_error(response, 400, "invalid_request", needle)
            .await;
    }
    let response = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body("role=read-only")
        .send()
        .await
        .unwrap();
    app.assert_error(response, 415, "invalid_request", "application/json")
        .await;
    let response = app
        .client
        .post(format!("{url}?role=read-only"))
        .bearer_auth(&token)
        .json(&json!({"role": "read-only"}))
        .send()
        .await
        .unwrap();
    app.assert_error(response, 400, "invalid_request", "both")
        .await;
}

#[tokio::test]
async fn an_oversized_token_is_refused_before_it_is_parsed() {
    let app = spawn_app().await;
    let (claims, _) = app.claims(json!({"padding": "x".repeat(17_000)}));
    let token = app.issuer.mint(&claims);
    let response = app.credentials(&token, "role=read-only").await;
    app.assert_error(response, 400, "invalid_request", "16384")
        .await;
}
