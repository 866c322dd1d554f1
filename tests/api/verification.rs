//! Token verification through the HTTP API: every refusal is a 401 `invalid_token` (or a 503 when
//! keys cannot be had), and keys only ever come from the policy's JWKS URL.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use local_issuer::{LocalIssuer, Mode, SigningKey};
use serde_json::json;
use token_broker::config::Settings;

use crate::helpers::*;

#[tokio::test]
async fn tokens_failing_a_claim_check_are_rejected_with_401() {
    let app = spawn_app().await;
    let now = local_issuer::claims::now();
    let cases = [
        (
            "wrong aud",
            json!({"aud": "https://other.example.com"}),
            "aud",
        ),
        ("missing aud", json!({"aud": null}), "aud"),
        ("aud list without ours", json!({"aud": ["a", "b"]}), "aud"),
        (
            "expired",
            json!({"iat": now - 7200, "nbf": now - 7205, "exp": now - 3600}),
            "expired",
        ),
        ("not yet valid", json!({"nbf": now + 600}), "not valid yet"),
        (
            "issued in the future",
            json!({"iat": now + 600, "nbf": null}),
            "future",
        ),
        ("no exp", json!({"exp": null}), "exp"),
        (
            "exp as string",
            json!({"exp": (now + 600).to_string()}),
            "exp",
        ),
        (
            "nbf after exp",
            json!({"nbf": now + 30, "exp": now + 20}),
            "exp",
        ),
        (
            "OAuth login token, no CI claims",
            json!({"project_id": null, "namespace_id": null, "job_id": null, "pipeline_id": null, "ref": null, "ref_type": null, "sub": "1001"}),
            "project_id",
        ),
        (
            "no pipeline_id",
            json!({"pipeline_id": null}),
            "pipeline_id",
        ),
        (
            "project_id as number",
            json!({"project_id": 4242}),
            "project_id",
        ),
        (
            "project_id not digits",
            json!({"project_id": "42a"}),
            "project_id",
        ),
    ];
    for (name, overrides, needle) in cases {
        let (token, _) = app.token(overrides);
        let response = app.credentials(&token, "role=read-only").await;
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some(r#"Bearer error="invalid_token""#),
            "{name}"
        );
        app.assert_error(response, 401, "invalid_token", needle)
            .await;
    }
}

#[tokio::test]
async fn a_token_from_an_untrusted_issuer_is_rejected() {
    let app = spawn_app().await;
    let stranger = LocalIssuer::start().await;
    let token = stranger.mint(&stranger.claims(AUDIENCE, unique_job_id()));
    let response = app.credentials(&token, "role=read-only").await;
    app.assert_error(response, 401, "invalid_token", "issuer is not trusted")
        .await;
    assert_eq!(
        stranger.jwks_requests(),
        0,
        "never fetch keys of an issuer the policy does not name"
    );

    // The trusted issuer's URL with a trailing slash or another case is another issuer.
    for iss in [
        format!("{}/", app.issuer.url()),
        app.issuer.url().to_uppercase(),
    ] {
        let (token, _) = app.token(json!({"iss": iss}));
        let response = app.credentials(&token, "role=read-only").await;
        app.assert_error(response, 401, "invalid_token", "issuer")
            .await;
    }
}

#[tokio::test]
async fn forged_signatures_and_algorithms_are_rejected() {
    let app = spawn_app().await;
    let (claims, _) = app.claims(json!({}));
    let kid = app.issuer.kid();
    let attacker = SigningKey::generate().with_kid(kid.clone());
    let good = app.issuer.mint(&claims);
    let (head, rest) = good.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let tampered_claims = local_issuer::claims::with(claims.clone(), &json!({"project_id": "1"}));
    let none_header = |alg: &str| {
        URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT", "kid": kid}).to_string())
    };
    let payload = local_issuer::keys::b64_json(&claims);
    let cases = [
        (
            "attacker key under the issuer's kid",
            attacker.mint(&json!({"alg": "RS256", "kid": kid}), &claims),
        ),
        (
            "payload changed after signing",
            format!(
                "{head}.{}.{signature}",
                local_issuer::keys::b64_json(&tampered_claims)
            ),
        ),
        ("signature stripped", format!("{head}.{payload}.")),
        ("alg none", format!("{}.{payload}.", none_header("none"))),
        ("alg None", format!("{}.{payload}.x", none_header("None"))),
        (
            "HS256 with the public key (DER) as secret",
            forge::hmac_token(
                &app.issuer.public_der(),
                &json!({"alg": "HS256", "kid": kid}),
                &claims,
            ),
        ),
        (
            "HS256 with the public JWK as secret",
            forge::hmac_token(
                app.issuer.public_jwk().to_string().as_bytes(),
                &json!({"alg": "HS256", "kid": kid}),
                &claims,
            ),
        ),
        ("extra segment", format!("{good}.x")),
        (
            "no kid",
            app.issuer
                .mint_with_header(&json!({"alg": "RS256"}), &claims),
        ),
        (
            "crit header",
            app.issuer.mint_with_header(
                &json!({"alg": "RS256", "kid": kid, "crit": ["exp"]}),
                &claims,
            ),
        ),
        (
            "duplicate alg in header",
            format!(
                "{}.{payload}.{signature}",
                URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"RS256","alg":"HS256","kid":"{kid}"}}"#))
            ),
        ),
    ];
    for (name, token) in cases {
        let response = app.credentials(&token, "role=read-only").await;
        assert_eq!(response.status(), 401, "{name}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_token", "{name}");
    }
}

#[tokio::test]
async fn duplicate_claims_are_rejected_even_when_signed() {
    let app = spawn_app().await;
    let (claims, _) = app.claims(json!({}));
    let mut text = claims.to_string();
    text.insert_str(1, r#""aud":"https://elsewhere.example.com","#);
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(json!({"alg": "RS256", "kid": app.issuer.kid()}).to_string()),
        URL_SAFE_NO_PAD.encode(&text)
    );
    let response = app
        .credentials(&app.issuer.sign_input(&input), "role=read-only")
        .await;
    app.assert_error(response, 401, "invalid_token", "duplicate")
        .await;
}

#[tokio::test]
async fn jku_and_jwk_headers_are_ignored() {
    let app = spawn_app().await;
    let attacker_issuer = LocalIssuer::start().await;
    let (claims, _) = app.claims(json!({}));
    // Signed by the attacker, pointing at the attacker's keys: the broker never looks there.
    let forged = attacker_issuer.mint_with_header(
        &json!({"alg": "RS256", "kid": attacker_issuer.kid(), "jku": attacker_issuer.jwks_url(), "jwk": attacker_issuer.public_jwk(), "x5u": attacker_issuer.jwks_url()}),
        &claims,
    );
    let response = app.credentials(&forged, "role=read-only").await;
    assert_eq!(response.status(), 401);
    assert_eq!(attacker_issuer.jwks_requests(), 0);
    // Signed by the real issuer, the same headers change nothing.
    let genuine = app.issuer.mint_with_header(
        &json!({"alg": "RS256", "kid": app.issuer.kid(), "jku": attacker_issuer.jwks_url()}),
        &claims,
    );
    assert_eq!(
        app.credentials(&genuine, "role=read-only").await.status(),
        200
    );
}

#[tokio::test]
async fn an_unknown_kid_refetches_once_then_is_rejected() {
    let app = spawn_app().await;
    assert_eq!(app.issuer.jwks_requests(), 1, "keys are fetched at start");
    let (claims, _) = app.claims(json!({}));
    let stranger = SigningKey::generate();
    let token = stranger.mint(&json!({"alg": "RS256", "kid": stranger.kid()}), &claims);

    // The start-up fetch is within the cooldown, so no refetch at all.
    let response = app.credentials(&token, "role=read-only").await;
    app.assert_error(response, 401, "invalid_token", "kid")
        .await;
    assert_eq!(app.issuer.jwks_requests(), 1);

    // With the cooldown passed, 50 concurrent misses share one refetch.
    let settings = Settings {
        jwks: token_broker::oidc::JwksSettings {
            cooldown: Duration::from_millis(200),
            ..Default::default()
        },
        ..Default::default()
    };
    let app = spawn_app_with(AppSpec {
        settings,
        ..Default::default()
    })
    .await;
    let (claims, _) = app.claims(json!({}));
    let token = stranger.mint(&json!({"alg": "RS256", "kid": stranger.kid()}), &claims);
    sleep_ms(250).await;
    let misses = (0..50).map(|_| app.credentials(&token, "role=read-only"));
    let statuses: Vec<u16> = futures_util::future::join_all(misses)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(
        app.issuer.jwks_requests(),
        2,
        "one start-up fetch and one shared refetch"
    );
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_after_the_cooldown() {
    let settings = Settings {
        jwks: token_broker::oidc::JwksSettings {
            cooldown: Duration::from_millis(100),
            ..Default::default()
        },
        ..Default::default()
    };
    let app = spawn_app_with(AppSpec {
        settings,
        ..Default::default()
    })
    .await;
    let new_kid = app.issuer.rotate();
    sleep_ms(150).await;
    let (token, _) = app.token(json!({}));
    assert!(token.starts_with(
        &URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"RS256","kid":"{new_kid}""#))[..20]
    ));
    assert_eq!(
        app.credentials(&token, "role=read-only").await.status(),
        200
    );
    assert_eq!(app.issuer.jwks_requests(), 2);
}

/// Each fault gets its own broker, so no failure backoff from an earlier fault hides the next
/// one: the start-up fetch succeeds, then a token with a made-up `kid` (what anyone can send)
/// makes the broker refetch from the misbehaving endpoint. That fetch fails, whatever the
/// endpoint answered, so the caller with the made-up kid gets a retryable 503, the genuine job
/// still gets credentials from the cached key, and the failure backoff keeps a second made-up
/// kid from fetching again.
#[tokio::test]
async fn cached_keys_keep_working_when_the_jwks_endpoint_fails() {
    let settings = Settings {
        jwks: token_broker::oidc::JwksSettings {
            cooldown: Duration::ZERO,
            timeout: Duration::from_millis(500),
            ..Default::default()
        },
        ..Default::default()
    };
    for mode in [
        Mode::Down,
        Mode::Garbage,
        Mode::EmptyKeys,
        Mode::DuplicateKid,
        Mode::Huge(200_000),
        Mode::Slow(Duration::from_secs(5)),
    ] {
        let app = spawn_app_with(AppSpec {
            settings: settings.clone(),
            ..Default::default()
        })
        .await;
        assert_eq!(app.issuer.jwks_requests(), 1, "{mode:?}: start-up fetch");
        app.issuer.set_mode(mode);
        let (claims, _) = app.claims(json!({}));
        let made_up = |kid: &str| {
            app.issuer
                .mint_with_header(&json!({"alg": "RS256", "typ": "JWT", "kid": kid}), &claims)
        };
        let started = std::time::Instant::now();
        let response = app
            .credentials(&made_up("made-up-1"), "role=read-only")
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{mode:?}: the fetch is time-capped"
        );
        assert_eq!(response.headers()["retry-after"], "5", "{mode:?}");
        app.assert_error(response, 503, "temporarily_unavailable", "keys")
            .await;
        assert_eq!(app.issuer.jwks_requests(), 2, "{mode:?}: one refetch");
        let (token, _) = app.token(json!({}));
        let response = app.credentials(&token, "role=read-only").await;
        assert_eq!(response.status(), 200, "{mode:?}: cached keys survive");
        let response = app
            .credentials(&made_up("made-up-2"), "role=read-only")
            .await;
        assert_eq!(response.status(), 503, "{mode:?}");
        assert_eq!(
            app.issuer.jwks_requests(),
            2,
            "{mode:?}: the failure backoff holds"
        );
    }
}

#[tokio::test]
async fn without_any_cached_key_a_down_jwks_endpoint_is_a_retryable_503() {
    let issuer = LocalIssuer::start().await;
    issuer.set_mode(Mode::Down);
    let app = spawn_app_with(AppSpec {
        issuer: Some(issuer),
        ..Default::default()
    })
    .await;
    let (token, _) = app.token(json!({}));
    let response = app.credentials(&token, "role=read-only").await;
    assert_eq!(response.headers()["retry-after"], "5");
    app.assert_error(response, 503, "temporarily_unavailable", "keys")
        .await;
}

/// A key rotation seen by 1,000 requests at once costs GitLab exactly one JWKS fetch: every miss
/// waits for the one fetch in flight and then finds the new key.
#[tokio::test]
async fn a_thousand_concurrent_requests_with_a_new_kid_cause_one_jwks_fetch() {
    let settings = Settings {
        jwks: token_broker::oidc::JwksSettings {
            cooldown: Duration::from_millis(50),
            ..Default::default()
        },
        ..Default::default()
    };
    let app = spawn_app_with(AppSpec {
        settings,
        ..Default::default()
    })
    .await;
    assert_eq!(app.issuer.jwks_requests(), 1);
    app.issuer.rotate();
    sleep_ms(60).await;
    let tokens: Vec<token_broker::secret::Secret> = (0..1000)
        .map(|_| token_broker::secret::Secret::new(app.token(json!({})).0))
        .collect();
    let verifier = app.state.broker.verifier();
    let results = futures_util::future::join_all(tokens.iter().map(|t| verifier.verify(t))).await;
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    assert_eq!(
        app.issuer.jwks_requests(),
        2,
        "one start-up fetch and one for the new kid"
    );
}

/// An issuer pinned to RS256 and PS256 publishes an RSA key with `"alg": "RS256"`: that key must
/// not verify a PS256 token, though PS256 is pinned and the signature is the key's own.
#[tokio::test]
async fn a_key_whose_jwk_names_its_alg_verifies_only_that_alg() {
    let policy = POLICY.replace(
        "url = \"{issuer}\"",
        "url = \"{issuer}\"\nalgorithms = [\"RS256\", \"PS256\"]",
    );
    let app = spawn_app_with(AppSpec {
        policy,
        ..Default::default()
    })
    .await;
    let (claims, _) = app.claims(json!({}));
    let response = app
        .credentials(&app.issuer.mint_ps256(&claims), "role=read-only")
        .await;
    app.assert_error(response, 401, "invalid_token", "algorithm")
        .await;
    let (token, _) = app.token(json!({}));
    assert_eq!(
        app.credentials(&token, "role=read-only").await.status(),
        200
    );
}
