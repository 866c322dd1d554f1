//! Hostile `/v1/credentials` requests around a valid token: role names and durations in the
//! query, JSON bodies, Authorization headers. None may reach STS.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use super::*;

#[tokio::test]
async fn hostile_credentials_requests_are_refused_before_sts_is_called() {
    let app = spawn_app().await;
    let attacks = [
        hostile_queries(&app),
        hostile_bodies(&app),
        hostile_authorization_headers(&app),
    ]
    .into_iter()
    .flatten()
    .collect();
    let jobs = send_all(attacks).await;
    let control = control_request(&app).await;
    assert_only_the_control_reached_sts(control, &jobs).await;
}

/// Query strings a valid token is sent with: hostile role names and durations, parameters the
/// API does not have.
fn hostile_queries(app: &TestApp) -> Vec<Attack> {
    let mut attacks = Vec::new();
    let queries: Vec<(&str, String, _)> = vec![
        ("role with a glob", "role=deploy*".into(), "not a role name"),
        ("role *", "role=*".into(), "not a role name"),
        (
            "role with ?",
            "role=deploy-web-pro%3F".into(),
            "not a role name",
        ),
        (
            "role with a class",
            "role=%5Bd%5Deploy-web-prod".into(),
            "not a role name",
        ),
        (
            "role with ../",
            "role=../deploy-web-prod".into(),
            "not a role name",
        ),
        (
            "role with %2e%2e%2f",
            "role=%2e%2e%2fdeploy-web-prod".into(),
            "not a role name",
        ),
        (
            "role double-encoded",
            "role=%252e%252e%252fread-only".into(),
            "not a role name",
        ),
        (
            "role with a path inside",
            "role=read-only%2f..%2fdeploy-web-prod".into(),
            "not a role name",
        ),
        (
            "role of 65 characters",
            format!("role={}", "a".repeat(65)),
            "not a role name",
        ),
        (
            "role of 10,000 characters",
            format!("role={}", "a".repeat(10_000)),
            "not a role name",
        ),
        (
            "role with NUL",
            "role=read-only%00".into(),
            "not a role name",
        ),
        (
            "role with CRLF and a header",
            "role=read-only%0d%0aX-Injected:%20yes".into(),
            "not a role name",
        ),
        (
            "role with a Cyrillic р",
            "role=%D1%80ead-only".into(),
            "not a role name",
        ),
        ("role empty", "role=".into(), "not a role name"),
        (
            "role twice",
            "role=read-only&role=deploy-web-prod".into(),
            "repeated",
        ),
        (
            "a role ARN of the caller's choosing",
            "role=read-only&role_arn=arn:aws:iam::999999999999:role/admin".into(),
            "unknown query parameter",
        ),
        (
            "the token in the query string",
            "role=read-only&access_token=x".into(),
            "unknown query parameter",
        ),
        (
            "duration negative",
            "role=read-only&duration_seconds=-900".into(),
            "whole number",
        ),
        (
            "duration beyond u64",
            "role=read-only&duration_seconds=99999999999999999999999".into(),
            "whole number",
        ),
        (
            "duration that overflows i32",
            "role=read-only&duration_seconds=4294968196".into(),
            "between 900 and 43200",
        ),
        (
            "duration not a number",
            "role=read-only&duration_seconds=abc".into(),
            "whole number",
        ),
        (
            "duration a fraction",
            "role=read-only&duration_seconds=900.5".into(),
            "whole number",
        ),
        (
            "duration in exponent form",
            "role=read-only&duration_seconds=9e2".into(),
            "whole number",
        ),
        (
            "duration in hex",
            "role=read-only&duration_seconds=0x384".into(),
            "whole number",
        ),
        (
            "duration zero",
            "role=read-only&duration_seconds=0".into(),
            "between 900 and 43200",
        ),
        (
            "duration over 12 h",
            "role=read-only&duration_seconds=43201".into(),
            "between 900 and 43200",
        ),
    ];
    for (name, query, needle) in queries {
        let (token, job) = app.token(json!({}));
        attacks.push(attack(
            name,
            with_token(app, &query, &token),
            job,
            bad_request(needle),
        ));
    }

    attacks
}

/// JSON bodies of the wrong shape, type, encoding, size or media type.
fn hostile_bodies(app: &TestApp) -> Vec<Attack> {
    let mut attacks = Vec::new();
    let object = "the body must be a JSON object";
    let too_deep_objects = format!("{}1{}", r#"{"role":"#.repeat(1000), "}".repeat(1000));
    let utf16: Vec<u8> =
        r#"{"role":"read-only"}"#.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let bodies: Vec<(&str, &str, Vec<u8>, Expected)> = vec![
        (
            "role a number",
            "application/json",
            br#"{"role":7}"#.to_vec(),
            bad_request(object),
        ),
        (
            "role an array",
            "application/json",
            br#"{"role":["read-only"]}"#.to_vec(),
            bad_request(object),
        ),
        (
            "role null",
            "application/json",
            br#"{"role":null}"#.to_vec(),
            bad_request("required"),
        ),
        (
            "duration a string",
            "application/json",
            br#"{"role":"read-only","duration_seconds":"900"}"#.to_vec(),
            bad_request(object),
        ),
        (
            "duration negative",
            "application/json",
            br#"{"role":"read-only","duration_seconds":-900}"#.to_vec(),
            bad_request(object),
        ),
        (
            "duration a fraction",
            "application/json",
            br#"{"role":"read-only","duration_seconds":900.5}"#.to_vec(),
            bad_request(object),
        ),
        (
            "duration beyond f64",
            "application/json",
            br#"{"role":"read-only","duration_seconds":1e400}"#.to_vec(),
            bad_request(object),
        ),
        (
            "role twice",
            "application/json",
            br#"{"role":"read-only","role":"deploy-web-prod"}"#.to_vec(),
            bad_request(object),
        ),
        (
            "an extra member naming a role ARN",
            "application/json",
            br#"{"role":"read-only","role_arn":"arn:aws:iam::999999999999:role/admin"}"#.to_vec(),
            bad_request(object),
        ),
        (
            "two JSON documents",
            "application/json",
            br#"{"role":"read-only"}{"role":"deploy-web-prod"}"#.to_vec(),
            bad_request(object),
        ),
        (
            "10,000 nested arrays",
            "application/json",
            "[".repeat(10_000).into_bytes(),
            bad_request(object),
        ),
        (
            "1,000 nested objects",
            "application/json",
            too_deep_objects.into_bytes(),
            bad_request(object),
        ),
        (
            "non-UTF-8 bytes",
            "application/json",
            b"{\"role\":\"read\xff-only\"}".to_vec(),
            bad_request(object),
        ),
        (
            "UTF-16 JSON",
            "application/json",
            utf16,
            bad_request(object),
        ),
        (
            "UTF-8 byte order mark",
            "application/json",
            b"\xef\xbb\xbf{\"role\":\"read-only\"}".to_vec(),
            bad_request(object),
        ),
        (
            "body over 20 KiB",
            "application/json",
            format!(r#"{{"role":"{}"}}"#, "a".repeat(21_000)).into_bytes(),
            bad_request("exceeds 20480"),
        ),
        (
            "text/plain body",
            "text/plain",
            b"role=read-only".to_vec(),
            (415, "invalid_request", "application/json"),
        ),
        (
            "form-encoded body",
            "application/x-www-form-urlencoded",
            b"role=read-only".to_vec(),
            (415, "invalid_request", "application/json"),
        ),
        (
            "a media type that starts like JSON",
            "application/jsonp",
            br#"{"role":"read-only"}"#.to_vec(),
            (415, "invalid_request", "application/json"),
        ),
    ];
    for (name, content_type, body, expected) in bodies {
        let (token, job) = app.token(json!({}));
        let request = post_credentials(app, "")
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(body);
        attacks.push(attack(name, request, job, expected));
    }
    let (token, job) = app.token(json!({}));
    attacks.push(attack(
        "JSON body without a content type",
        post_credentials(app, "")
            .bearer_auth(&token)
            .body(r#"{"role":"read-only"}"#),
        job,
        (415, "invalid_request", "application/json"),
    ));
    let (token, job) = app.token(json!({}));
    attacks.push(attack(
        "role in both the query and the body",
        with_token(app, "role=read-only", &token).json(&json!({"role": "deploy-web-prod"})),
        job,
        bad_request("both"),
    ));

    attacks
}

/// Authorization headers that are doubled, stuffed, of another scheme, not ASCII or too long.
fn hostile_authorization_headers(app: &TestApp) -> Vec<Attack> {
    let mut attacks = Vec::new();
    let (token, job) = app.token(json!({}));
    let (other, _) = app.token(json!({}));
    attacks.push(attack(
        "two Authorization headers",
        post_credentials(app, "role=read-only")
            .header("authorization", format!("Bearer {token}"))
            .header("authorization", format!("Bearer {other}")),
        job,
        bad_request("more than one"),
    ));
    let (token, job) = app.token(json!({}));
    attacks.push(attack(
        "two tokens in one header",
        post_credentials(app, "role=read-only")
            .header("authorization", format!("Bearer {token} {token}")),
        job,
        invalid_token("three"),
    ));
    let (token, job) = app.token(json!({}));
    attacks.push(attack(
        "Basic scheme",
        post_credentials(app, "role=read-only").header(
            "authorization",
            format!("Basic {}", STANDARD.encode(&token)),
        ),
        job,
        invalid_token("Bearer"),
    ));
    let (token, job) = app.token(json!({}));
    let mut latin1 = format!("Bearer {token}").into_bytes();
    latin1.push(0xe9);
    attacks.push(attack(
        "non-ASCII bytes in the header",
        post_credentials(app, "role=read-only").header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(&latin1).unwrap(),
        ),
        job,
        invalid_token("not ASCII"),
    ));
    let (token, job) = app.token(json!({}));
    attacks.push(attack(
        "header over 16 KiB",
        post_credentials(app, "role=read-only").header(
            "authorization",
            format!("Bearer {token}{}", "A".repeat(16_384)),
        ),
        job,
        bad_request("16384"),
    ));

    attacks
}

#[tokio::test]
async fn the_bearer_scheme_is_matched_without_regard_to_case() {
    // RFC 7235 §2.1: the auth-scheme is case-insensitive.
    let app = spawn_app().await;
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let (token, job) = app.token(json!({}));
        let response = post_credentials(&app, "role=read-only")
            .header("authorization", format!("{scheme} {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{scheme}");
        assert_eq!(
            recorded_assume_roles(&format!("gitlab-4242-{job}"))
                .await
                .len(),
            1,
            "{scheme}"
        );
    }
}
