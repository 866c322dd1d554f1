//! The broker as an OIDC issuer, against moto KMS: tokens signed by KMS (RSA and P-256) verify
//! with nothing but what discovery and the JWKS publish; the policy decides who gets which
//! audience; KMS trouble only affects the token endpoint.

use aws_sdk_kms::types::{KeySpec, KeyUsageType};
use aws_sdk_sts::config::Credentials;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
use local_issuer::LocalIssuer;
use serde_json::{Value, json};
use token_broker::aws::kms::Kms;
use token_broker::aws::sts::Sts;
use token_broker::config::Settings;

use crate::helpers::*;

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

async fn kms_key(spec: KeySpec) -> String {
    let kms = aws_sdk_kms::Client::new(&moto_sdk_config());
    let key = kms
        .create_key()
        .key_spec(spec)
        .key_usage(KeyUsageType::SignVerify)
        .send()
        .await
        .unwrap();
    key.key_metadata.unwrap().key_id
}

async fn app_with_keys(active: &str, retired: &[&str]) -> TestApp {
    let settings = Settings {
        kms_key_id: Some(active.to_owned()),
        kms_retired_key_ids: retired.iter().map(|k| k.to_string()).collect(),
        ..Settings::default()
    };
    spawn_app_with(POLICY, settings).await
}

async fn exchange(app: &TestApp, subject_token: &str, audience: &str) -> reqwest::Response {
    let form = [
        ("grant_type", EXCHANGE),
        ("subject_token", subject_token),
        ("subject_token_type", JWT),
        ("audience", audience),
    ];
    app.client
        .post(format!("{}/v1/token", app.address))
        .form(&form)
        .send()
        .await
        .unwrap()
}

/// `GET url` and its JSON body.
async fn get_json(app: &TestApp, url: impl reqwest::IntoUrl) -> Value {
    app.client
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Verifies `token` the way a relying party would: discovery → jwks_uri → the key named by `kid`.
async fn verify_like_a_relying_party(app: &TestApp, token: &str, audience: &str) -> Value {
    let discovery = get_json(
        app,
        format!("{}/.well-known/openid-configuration", app.address),
    )
    .await;
    let issuer = discovery["issuer"].as_str().unwrap();
    assert_eq!(issuer, app.address);
    let jwks = get_json(app, discovery["jwks_uri"].as_str().unwrap()).await;
    let header = decode_header(token).unwrap();
    let kid = header.kid.clone().unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("the token's kid is published");
    let jwk: Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
    let algs: Vec<String> = discovery["id_token_signing_alg_values_supported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert!(algs.contains(&format!("{:?}", header.alg)), "{algs:?}");
    decode::<Value>(token, &DecodingKey::from_jwk(&jwk).unwrap(), &validation)
        .unwrap()
        .claims
}

async fn issued_token(response: reqwest::Response) -> (String, u64) {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["issued_token_type"], JWT);
    assert_eq!(body["token_type"], "N_A");
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["expires_in"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn an_rsa_signed_token_verifies_with_the_published_key_and_carries_the_claims() {
    let key = kms_key(KeySpec::Rsa2048).await;
    let app = app_with_keys(&key, &[]).await;
    let (claims, _) = app.claims(json!({}));
    let (token, expires_in) =
        issued_token(exchange(&app, &app.issuer.mint(&claims), "sts.amazonaws.com").await).await;
    let header = decode_header(&token).unwrap();
    assert_eq!(
        (format!("{:?}", header.alg), header.typ.as_deref()),
        ("RS256".into(), Some("JWT"))
    );

    let issued = verify_like_a_relying_party(&app, &token, "sts.amazonaws.com").await;
    assert_eq!(issued["sub"], claims["sub"], "sub keeps GitLab's format");
    assert_eq!(issued["iss"], app.address);
    assert_eq!(issued["aud"], "sts.amazonaws.com");
    assert_eq!(
        (
            &issued["project_id"],
            &issued["ref"],
            &issued["environment"]
        ),
        (&json!("4242"), &json!("main"), &json!("production"))
    );
    assert_eq!(
        issued["runner_id"], 12270852,
        "copied claims keep GitLab's types"
    );
    assert!(
        issued.get("user_email").is_none(),
        "only the listed claims are copied"
    );
    let (iat, exp) = (
        issued["iat"].as_u64().unwrap(),
        issued["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 600, "max_ttl");
    assert_eq!(issued["nbf"], issued["iat"]);
    assert!((598..=600).contains(&expires_in));
    assert_eq!(issued["jti"].as_str().unwrap().len(), 36);
}

#[tokio::test]
async fn a_p256_signed_token_verifies_as_es256() {
    let key = kms_key(KeySpec::EccNistP256).await;
    let app = app_with_keys(&key, &[]).await;
    let (token, _) = app.token(json!({}));
    let (issued, _) = issued_token(exchange(&app, &token, "sts.amazonaws.com").await).await;
    assert_eq!(
        format!("{:?}", decode_header(&issued).unwrap().alg),
        "ES256"
    );
    let claims = verify_like_a_relying_party(&app, &issued, "sts.amazonaws.com").await;
    assert_eq!(claims["project_id"], "4242");
    assert_eq!(
        issued.rsplit('.').next().map(|s| s.len()),
        Some(86),
        "64-byte r‖s, base64url"
    );
}

#[tokio::test]
async fn a_token_never_outlives_the_gitlab_token() {
    let key = kms_key(KeySpec::Rsa2048).await;
    let app = app_with_keys(&key, &[]).await;
    let now = local_issuer::claims::now();
    let (gitlab, _) = app.token(json!({"iat": now - 3000, "nbf": now - 3005, "exp": now + 120}));
    let (token, expires_in) =
        issued_token(exchange(&app, &gitlab, "sts.amazonaws.com").await).await;
    let claims = verify_like_a_relying_party(&app, &token, "sts.amazonaws.com").await;
    assert_eq!(claims["exp"].as_i64().unwrap(), now + 120);
    assert!(expires_in <= 120);
}

#[tokio::test]
async fn the_policy_decides_which_audiences_a_job_gets() {
    let key = kms_key(KeySpec::Rsa2048).await;
    let app = app_with_keys(&key, &[]).await;
    let (token, _) = app.token(json!({}));
    let response = exchange(&app, &token, "https://vault.example.com").await;
    app.assert_error(response, 400, "invalid_target", "no token for audience")
        .await;
    let (feature, _) = app.token(json!({"ref": "feature/x"}));
    let response = exchange(&app, &feature, "sts.amazonaws.com").await;
    app.assert_error(response, 400, "invalid_target", "claim \"ref\"")
        .await;
}

#[tokio::test]
async fn malformed_exchanges_get_rfc_8693_errors() {
    let key = kms_key(KeySpec::Rsa2048).await;
    let app = app_with_keys(&key, &[]).await;
    let (token, _) = app.token(json!({}));
    let url = format!("{}/v1/token", app.address);
    let response = exchange(&app, "x.y.z", "sts.amazonaws.com").await;
    app.assert_error(response, 400, "invalid_grant", "").await;
    let (expired, _) = app.token(json!({"exp": local_issuer::claims::now() - 600, "iat": local_issuer::claims::now() - 4000, "nbf": null}));
    app.assert_error(
        exchange(&app, &expired, "sts.amazonaws.com").await,
        400,
        "invalid_grant",
        "expired",
    )
    .await;
    // (form, expected error, a word of its description)
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![
                ("grant_type", "client_credentials"),
                ("subject_token", &token),
                ("subject_token_type", JWT),
                ("audience", "sts.amazonaws.com"),
            ],
            "unsupported_grant_type",
            "grant_type",
        ),
        (
            vec![
                ("grant_type", EXCHANGE),
                ("subject_token_type", JWT),
                ("audience", "sts.amazonaws.com"),
            ],
            "invalid_request",
            "subject_token",
        ),
        (
            vec![
                ("grant_type", EXCHANGE),
                ("subject_token", &token),
                ("audience", "sts.amazonaws.com"),
            ],
            "invalid_request",
            "subject_token_type",
        ),
        (
            vec![
                ("grant_type", EXCHANGE),
                ("subject_token", &token),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:saml2",
                ),
                ("audience", "a"),
            ],
            "invalid_request",
            "subject_token_type",
        ),
        (
            vec![
                ("grant_type", EXCHANGE),
                ("subject_token", &token),
                ("subject_token_type", JWT),
            ],
            "invalid_request",
            "audience",
        ),
        (
            vec![
                ("grant_type", EXCHANGE),
                ("subject_token", &token),
                ("subject_token_type", JWT),
                ("audience", "a"),
                ("audience", "b"),
            ],
            "invalid_request",
            "repeated",
        ),
        (
            vec![
                ("grant_type", EXCHANGE),
                ("subject_token", &token),
                ("subject_token_type", JWT),
                ("audience", "a"),
                ("actor_token", &token),
            ],
            "invalid_request",
            "actor_token",
        ),
    ];
    for (form, code, needle) in cases {
        let response = app.client.post(&url).form(&form).send().await.unwrap();
        app.assert_error(response, 400, code, needle).await;
    }
    let response = app
        .client
        .post(&url)
        .json(&json!({"grant_type": EXCHANGE}))
        .send()
        .await
        .unwrap();
    app.assert_error(response, 415, "invalid_request", "x-www-form-urlencoded")
        .await;
}

#[tokio::test]
async fn during_rotation_the_active_key_signs_and_both_keys_are_published() {
    let old = kms_key(KeySpec::Rsa2048).await;
    let new = kms_key(KeySpec::EccNistP256).await;
    let app = app_with_keys(&new, &[&old]).await;
    let (token, _) = app.token(json!({}));
    let (issued, _) = issued_token(exchange(&app, &token, "sts.amazonaws.com").await).await;
    let response = app
        .client
        .get(format!("{}/.well-known/jwks.json", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["cache-control"], "public, max-age=300");
    let jwks: Value = response.json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(
        (keys[0]["kty"].as_str(), keys[1]["kty"].as_str()),
        (Some("EC"), Some("RSA"))
    );
    assert_eq!(
        decode_header(&issued).unwrap().kid.as_deref(),
        keys[0]["kid"].as_str(),
        "the active key signs"
    );
    verify_like_a_relying_party(&app, &issued, "sts.amazonaws.com").await;
    let discovery: Value = get_json(
        &app,
        format!("{}/.well-known/openid-configuration", app.address),
    )
    .await;
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        json!(["ES256", "RS256"])
    );
    for claim in ["project_id", "runner_id", "sub", "jti"] {
        assert!(
            discovery["claims_supported"]
                .as_array()
                .unwrap()
                .contains(&json!(claim)),
            "{claim}"
        );
    }
}

#[tokio::test]
async fn with_kms_unreachable_tokens_are_503_and_credentials_still_work() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = sdk_config_for(
        &format!("http://127.0.0.1:{port}"),
        Credentials::new("t", "t", None, None, "tests"),
    );
    let kms = Kms::new(
        &unreachable,
        "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000".into(),
        vec![],
    );
    let app = spawn_app_parts(
        LocalIssuer::start().await,
        POLICY,
        Settings::default(),
        Sts::new(&moto_sdk_config()),
        Some(kms),
    )
    .await;
    let (token, _) = app.token(json!({}));
    let response = exchange(&app, &token, "sts.amazonaws.com").await;
    assert_eq!(response.headers()["retry-after"], "5");
    let body = app
        .assert_error(response, 503, "temporarily_unavailable", "KMS")
        .await;
    assert!(!body.to_string().contains("arn:aws:kms"), "{body}");
    let response = app
        .client
        .get(format!("{}/.well-known/jwks.json", app.address))
        .send()
        .await
        .unwrap();
    app.assert_error(response, 503, "temporarily_unavailable", "KMS")
        .await;
    assert_eq!(
        app.credentials(&token, "role=read-only").await.status(),
        200
    );
}

#[tokio::test]
async fn without_a_signing_key_the_issuer_routes_are_404() {
    let app = spawn_app().await;
    let (token, _) = app.token(json!({}));
    app.assert_error(
        exchange(&app, &token, "sts.amazonaws.com").await,
        404,
        "not_found",
        "KMS_KEY_ID",
    )
    .await;
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/jwks.json",
    ] {
        let response = app
            .client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        app.assert_error(response, 404, "not_found", "KMS_KEY_ID")
            .await;
    }
}
