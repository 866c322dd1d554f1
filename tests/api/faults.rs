//! Fault injection: the local GitLab issuer and a local STS stand-in made to misbehave (down,
//! slow past the timeout, oversized, garbage, connection reset, throttling). Every request ends
//! within its timeouts with the documented status, cached keys keep serving, and no task is left
//! behind.

use std::time::{Duration, Instant};

use aws_config::timeout::TimeoutConfig;
use local_issuer::sts::{LocalSts, StsMode};
use local_issuer::{LocalIssuer, Mode};
use serde_json::json;
use token_broker::config::Settings;
use token_broker::oidc::JwksSettings;

use crate::helpers::*;

/// A broker whose STS is the stand-in, with timeouts short enough for a test (the real ones: 3 s
/// an attempt, 8 s in all).
async fn app_on_stand_in(sts: &LocalSts) -> TestApp {
    let mut spec = sts_at(sts.url());
    spec.sts = spec.sts.map(|sdk| {
        sdk.to_builder()
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_millis(300))
                    .operation_attempt_timeout(Duration::from_millis(400))
                    .operation_timeout(Duration::from_millis(1500))
                    .build(),
            )
            .build()
    });
    spawn_app_with(spec).await
}

#[tokio::test]
async fn sts_faults_end_in_bounded_503s_and_leave_no_task_behind() {
    let sts = LocalSts::start_on("127.0.0.1:0").await;
    let app = app_on_stand_in(&sts).await;
    let (token, _) = app.token(json!({}));
    assert_eq!(
        app.credentials(&token, "role=read-only").await.status(),
        200,
        "the stand-in answers"
    );
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    for (mode, needle) in [
        (StsMode::Throttling, "Throttling"),
        (StsMode::ServerError, "InternalFailure"),
        (StsMode::Slow, "Timeout"),
        (StsMode::Reset, "Connection"),
        // After the resets the client has no pooled connection, so this one is new. Nothing but
        // the attempt timeout ends a body that stops: the SDK's stalled-stream protection is
        // off (aws::client_config).
        (StsMode::StalledBody, "Timeout"),
    ] {
        sts.set_mode(mode);
        let client = reqwest::Client::new();
        let started = Instant::now();
        let response = client
            .post(format!("{}/v1/credentials?role=read-only", app.address))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{mode:?} took {:?}",
            started.elapsed()
        );
        assert_eq!(response.headers()["retry-after"], "5", "{mode:?}");
        // The SDK retries throttling and 5xx with backoff, so whether the code or the timeout
        // ends the call depends on timing; either way it is a bounded, retryable 503.
        let body = app
            .assert_error(
                response,
                503,
                "temporarily_unavailable",
                "STS is unavailable",
            )
            .await;
        let description = body["error_description"].as_str().unwrap();
        assert!(
            description.contains(needle) || description.contains("Timeout"),
            "{mode:?}: {description}"
        );
    }
    sts.set_mode(StsMode::Ok);
    assert_eq!(
        app.credentials(&token, "role=read-only").await.status(),
        200,
        "recovers at once"
    );
    sleep_ms(300).await;
    let tasks_after = metrics.num_alive_tasks();
    assert!(
        tasks_after <= tasks_before + 2,
        "tasks before {tasks_before}, after {tasks_after}"
    );
}

#[tokio::test]
async fn sts_answers_that_hold_no_usable_credentials_are_refused_in_every_format() {
    let sts = LocalSts::start_on("127.0.0.1:0").await;
    let app = app_on_stand_in(&sts).await;
    let (token, _) = app.token(json!({}));
    for (mode, code) in [
        (StsMode::MalformedCredentials, "MalformedCredentials"),
        (StsMode::NoCredentials, "MalformedCredentials"),
        (StsMode::Garbage, "BadResponse"),
    ] {
        sts.set_mode(mode);
        let calls = sts.calls();
        for format in ["json", "env"] {
            let response = app
                .credentials(&token, &format!("role=read-only&format={format}"))
                .await;
            assert!(
                response.headers().get("retry-after").is_none(),
                "{mode:?} {format}"
            );
            let body = app.assert_error(response, 502, "server_error", code).await;
            assert!(
                !body.to_string().contains("FwoG"),
                "{mode:?} {format}: {body}"
            );
        }
        // Not retried: the same answer would come back.
        assert_eq!(sts.calls(), calls + 2, "{mode:?}");
    }
}

#[tokio::test]
async fn a_jwks_endpoint_that_is_slow_huge_garbage_or_empty_is_a_bounded_503_without_cached_keys() {
    for mode in [
        Mode::Slow(Duration::from_secs(30)),
        Mode::Huge(10 * 1024 * 1024),
        Mode::Garbage,
        Mode::EmptyKeys,
        Mode::Down,
    ] {
        let issuer = LocalIssuer::start().await;
        issuer.set_mode(mode);
        let settings = Settings {
            jwks: JwksSettings {
                timeout: Duration::from_millis(500),
                ..Default::default()
            },
            ..Default::default()
        };
        let started = Instant::now();
        let app = spawn_app_with(AppSpec {
            issuer: Some(issuer),
            settings,
            ..Default::default()
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{mode:?}: start-up fetch is bounded"
        );
        let (token, _) = app.token(json!({}));
        let response = app.credentials(&token, "role=read-only").await;
        // An answer that is not a usable key set is a failed fetch, not a verdict on the token.
        assert_eq!(response.headers()["retry-after"], "5", "{mode:?}");
        app.assert_error(response, 503, "temporarily_unavailable", "keys")
            .await;
    }
}

#[tokio::test]
async fn a_jwks_endpoint_that_redirects_is_not_followed() {
    // If the fetch followed the redirect, whoever controls the target would choose the keys: the
    // token below, signed by that stranger under its own kid, would verify.
    let stranger = LocalIssuer::start().await;
    let port = url::Url::parse(stranger.url())
        .ok()
        .and_then(|url| url.port())
        .expect("the stranger listens on a loopback port");
    let issuer = LocalIssuer::start().await;
    issuer.set_mode(Mode::RedirectTo(port));
    let app = spawn_app_with(AppSpec {
        issuer: Some(issuer),
        ..Default::default()
    })
    .await;
    let (claims, _) = app.claims(json!({}));
    let forged = stranger.mint(&claims);
    let response = app.credentials(&forged, "role=read-only").await;
    app.assert_error(response, 503, "temporarily_unavailable", "keys")
        .await;
    assert_eq!(stranger.jwks_requests(), 0, "the redirect was not followed");
    assert!(
        app.issuer.jwks_requests() >= 1,
        "the policy's jwks_url was asked"
    );
}

#[tokio::test]
async fn a_key_replaced_under_the_same_kid_is_refused_without_refetching() {
    // GitLab's kids are key thumbprints, so a new key under an old kid is a misbehaving issuer.
    // The cached key stays authoritative until it ages out (1 h): a bad signature under a known
    // kid must not trigger fetches, or forged tokens could make the broker hammer GitLab.
    let app = spawn_app().await;
    let (good, _) = app.token(json!({}));
    assert_eq!(app.credentials(&good, "role=read-only").await.status(), 200);
    app.issuer.replace_key_keeping_kid();
    let (replaced, _) = app.token(json!({}));
    for _ in 0..5 {
        let response = app.credentials(&replaced, "role=read-only").await;
        app.assert_error(response, 401, "invalid_token", "signature")
            .await;
    }
    assert_eq!(
        app.issuer.jwks_requests(),
        1,
        "no refetch for a bad signature"
    );
}
