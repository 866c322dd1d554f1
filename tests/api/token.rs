//! The broker as an OIDC issuer: tokens signed through KMS (RSA and P-256) verify with nothing
//! but what discovery and the JWKS publish; the policy decides who gets which audience; KMS trouble
//! only affects the token endpoint, as a retryable 503 or, when KMS refuses the key, a 500.
//! Signing runs against the local KMS stand-in (moto ignores `MessageType: DIGEST`); moto still
//! serves as a second, independent source of public keys.

use aws_sdk_sts::config::Credentials;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use local_issuer::kms::{KeySpec, KmsMode, LocalKms};
use serde_json::{Value, json};
use token_broker::config::Settings;

use crate::helpers::*;

/// A broker on [`POLICY`] signing with a fresh stand-in key of `spec`.
async fn app_signing(spec: KeySpec) -> (TestApp, LocalKms) {
    let (kms, key) = kms_stand_in(spec).await;
    (spawn_app_with(signing_with(&kms, &key, &[])).await, kms)
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
    assert_eq!(body["issued_token_type"], urn::JWT);
    assert_eq!(body["token_type"], "N_A");
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["expires_in"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn an_rsa_signed_token_verifies_with_the_published_key_and_carries_the_claims() {
    let (app, _kms) = app_signing(KeySpec::Rsa2048).await;
    let (claims, _) = app.claims(json!({}));
    let (token, expires_in) = issued_token(
        app.exchange(&app.issuer.mint(&claims), "sts.amazonaws.com")
            .await,
    )
    .await;
    let header = decode_header(&token).unwrap();
    assert_eq!(
        (format!("{:?}", header.alg), header.typ.as_deref()),
        ("RS256".into(), Some("JWT"))
    );

    let issued = verify_like_a_relying_party(&app, &token, "sts.amazonaws.com").await;
    // The broker's own sub, on the instance's host and numeric ids; GitLab's is provenance.
    let host =
        token_broker::policy::subject::escape(app.issuer.url().trim_start_matches("http://"));
    assert_eq!(
        issued["sub"],
        format!("{host}:project_id:4242:ref_type:branch:ref:main")
    );
    assert_eq!(issued["gitlab_sub"], claims["sub"]);
    assert_eq!(issued["gitlab_iss"], claims["iss"]);
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
    let (app, kms) = app_signing(KeySpec::EccNistP256).await;
    let (token, _) = app.token(json!({}));
    let (issued, _) = issued_token(app.exchange(&token, "sts.amazonaws.com").await).await;
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
    let signed = kms.sign_requests();
    assert_eq!(signed.len(), 1);
    assert_eq!(
        signed[0].signing_algorithm.as_deref(),
        Some("ECDSA_SHA_256")
    );
    assert_eq!(signed[0].message_type.as_deref(), Some("DIGEST"));
}

#[tokio::test]
async fn a_token_never_outlives_the_gitlab_token() {
    let (app, _kms) = app_signing(KeySpec::Rsa2048).await;
    let now = local_issuer::claims::now();
    let (gitlab, _) = app.token(json!({"iat": now - 3000, "nbf": now - 3005, "exp": now + 120}));
    let (token, expires_in) = issued_token(app.exchange(&gitlab, "sts.amazonaws.com").await).await;
    let claims = verify_like_a_relying_party(&app, &token, "sts.amazonaws.com").await;
    assert_eq!(claims["exp"].as_i64().unwrap(), now + 120);
    assert!(expires_in <= 120);
}

#[tokio::test]
async fn the_policy_decides_which_audiences_a_job_gets() {
    let (app, _kms) = app_signing(KeySpec::Rsa2048).await;
    let (token, _) = app.token(json!({}));
    let response = app.exchange(&token, "https://vault.example.com").await;
    app.assert_error(response, 400, "invalid_target", "no token for audience")
        .await;
    let (feature, _) = app.token(json!({"ref": "feature/x"}));
    let response = app.exchange(&feature, "sts.amazonaws.com").await;
    app.assert_error(response, 400, "invalid_target", "claim \"ref\"")
        .await;
}

#[tokio::test]
async fn malformed_exchanges_get_rfc_8693_errors() {
    let (app, _kms) = app_signing(KeySpec::Rsa2048).await;
    let (token, _) = app.token(json!({}));
    let url = format!("{}/v1/token", app.address);
    let response = app.exchange("x.y.z", "sts.amazonaws.com").await;
    app.assert_error(response, 400, "invalid_grant", "").await;
    let (expired, _) = app.token(json!({"exp": local_issuer::claims::now() - 600, "iat": local_issuer::claims::now() - 4000, "nbf": null}));
    app.assert_error(
        app.exchange(&expired, "sts.amazonaws.com").await,
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
                ("subject_token_type", urn::JWT),
                ("audience", "sts.amazonaws.com"),
            ],
            "unsupported_grant_type",
            "grant_type",
        ),
        (
            vec![
                ("grant_type", urn::TOKEN_EXCHANGE),
                ("subject_token_type", urn::JWT),
                ("audience", "sts.amazonaws.com"),
            ],
            "invalid_request",
            "subject_token",
        ),
        (
            vec![
                ("grant_type", urn::TOKEN_EXCHANGE),
                ("subject_token", &token),
                ("audience", "sts.amazonaws.com"),
            ],
            "invalid_request",
            "subject_token_type",
        ),
        (
            vec![
                ("grant_type", urn::TOKEN_EXCHANGE),
                ("subject_token", &token),
                ("subject_token_type", urn::SAML2),
                ("audience", "a"),
            ],
            "invalid_request",
            "subject_token_type",
        ),
        (
            vec![
                ("grant_type", urn::TOKEN_EXCHANGE),
                ("subject_token", &token),
                ("subject_token_type", urn::JWT),
            ],
            "invalid_request",
            "audience",
        ),
        (
            vec![
                ("grant_type", urn::TOKEN_EXCHANGE),
                ("subject_token", &token),
                ("subject_token_type", urn::JWT),
                ("audience", "a"),
                ("audience", "b"),
            ],
            "invalid_request",
            "repeated",
        ),
        (
            vec![
                ("grant_type", urn::TOKEN_EXCHANGE),
                ("subject_token", &token),
                ("subject_token_type", urn::JWT),
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
        .json(&json!({"grant_type": urn::TOKEN_EXCHANGE}))
        .send()
        .await
        .unwrap();
    app.assert_error(response, 415, "invalid_request", "x-www-form-urlencoded")
        .await;
}

#[tokio::test]
async fn during_rotation_the_active_key_signs_and_both_keys_are_published() {
    let kms = LocalKms::start().await;
    let old = kms.create_key(KeySpec::Rsa2048);
    let new = kms.create_key(KeySpec::EccNistP256);
    let app = spawn_app_with(signing_with(&kms, &new, &[&old])).await;
    let (token, _) = app.token(json!({}));
    let (issued, _) = issued_token(app.exchange(&token, "sts.amazonaws.com").await).await;
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
    // Port 1 is never served here (a freed ephemeral port can be taken by another test).
    let unreachable = sdk_config_for(
        "http://127.0.0.1:1",
        Credentials::new("t", "t", None, None, "tests"),
    );
    let settings = Settings {
        kms_key_id: Some(
            "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000".into(),
        ),
        ..Settings::default()
    };
    let app = spawn_app_with(AppSpec {
        settings,
        kms: Some(unreachable),
        ..Default::default()
    })
    .await;
    let (token, _) = app.token(json!({}));
    let response = app.exchange(&token, "sts.amazonaws.com").await;
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
        app.exchange(&token, "sts.amazonaws.com").await,
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

/// A token grant that copies `groups_direct`, which GitLab fills with up to 200 group paths.
const GROUPS_GRANT: &str = r#"
[token.groups]
audience = "https://groups.example.com"
max_ttl = "5m"
claims = ["project_id", "groups_direct"]

[[token.groups.allow]]
project_id = "4242"
"#;

#[tokio::test]
async fn a_token_over_kms_raw_message_limit_is_signed_as_a_digest_and_verifies() {
    let (kms, key) = kms_stand_in(KeySpec::Rsa2048).await;
    let policy = format!("{POLICY}{GROUPS_GRANT}");
    let app = spawn_app_with(AppSpec {
        policy,
        ..signing_with(&kms, &key, &[])
    })
    .await;
    let groups: Vec<String> = (0..150)
        .map(|n| format!("acme/platform-team-{n:03}"))
        .collect();
    let (gitlab, _) = app.token(json!({"groups_direct": groups}));
    let audience = "https://groups.example.com";
    let (token, _) = issued_token(app.exchange(&gitlab, audience).await).await;
    let (signing_input, _) = token.rsplit_once('.').unwrap();
    assert!(
        signing_input.len() > 4096,
        "{} bytes: over KMS's RAW limit",
        signing_input.len()
    );

    let claims = verify_like_a_relying_party(&app, &token, audience).await;
    assert_eq!(claims["groups_direct"], json!(groups));
    let signed = kms.sign_requests();
    assert_eq!(signed.len(), 1);
    assert_eq!(
        (signed[0].message_type.as_deref(), signed[0].message_len),
        (Some("DIGEST"), 32),
        "a SHA-256 digest, whatever the token's size"
    );
    assert_eq!(
        signed[0].signing_algorithm.as_deref(),
        Some("RSASSA_PKCS1_V1_5_SHA_256")
    );
}

/// (KMS's HTTP status, its error code, the broker's status.) KMS's documented statuses; the
/// SDK retries the throttling and 5xx rows before the broker sees them.
const KMS_ERRORS: [(u16, &str, u16); 12] = [
    (400, "ThrottlingException", 503),
    (500, "KMSInternalException", 503),
    (503, "DependencyTimeoutException", 503),
    (500, "KeyUnavailableException", 503),
    (502, "SomeNewServerError", 503),
    (400, "DisabledException", 500),
    (400, "KMSInvalidStateException", 500),
    (400, "AccessDeniedException", 500),
    (400, "InvalidKeyUsageException", 500),
    (400, "NotFoundException", 500),
    (400, "IncorrectKeyException", 500),
    (400, "LimitExceededException", 500),
];

#[tokio::test]
async fn kms_errors_are_a_503_when_a_retry_can_help_and_a_500_when_not() {
    // Brokers first, one after another: key generation would stall the others' start-up fetches
    // on this single-threaded runtime. Then the exchanges at once, as the SDK's retries wait.
    let mut brokers = Vec::new();
    for (kms_status, code, status) in KMS_ERRORS {
        let (app, kms) = app_signing(KeySpec::EccNistP256).await;
        kms.set_mode(KmsMode::Fail {
            status: kms_status,
            code,
        });
        brokers.push((app, kms, code, status));
    }
    let cases = brokers
        .iter()
        .map(|(app, kms, code, status)| assert_sign_error_maps(app, kms, code, *status));
    futures_util::future::join_all(cases).await;
}

/// Exchanges a token with `app`, whose KMS answers Sign with `code` (after handing out the public
/// key at start), and checks the answer: `status`, with Retry-After only on a 503, and KMS's code
/// but not its message.
async fn assert_sign_error_maps(app: &TestApp, kms: &LocalKms, code: &str, status: u16) {
    let (token, _) = app.token(json!({}));
    let response = app.exchange(&token, "sts.amazonaws.com").await;
    assert_eq!(response.status().as_u16(), status, "{code}");
    let (error, retry_after) = match status {
        503 => ("temporarily_unavailable", Some("5")),
        _ => ("server_error", None),
    };
    let got = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap());
    assert_eq!(got, retry_after, "{code}");
    let body = app.assert_error(response, status, error, code).await;
    let body = body.to_string();
    assert!(
        !body.contains("arn:aws:kms") && !body.contains("stand-in"),
        "{code}: KMS's message reached the caller: {body}"
    );
    assert!(!kms.sign_requests().is_empty(), "{code}: Sign was called");
}

#[tokio::test]
async fn when_kms_refuses_the_public_key_the_issuer_routes_are_500_until_it_is_fixed() {
    let (kms, key) = kms_stand_in(KeySpec::Rsa2048).await;
    kms.set_mode(KmsMode::Fail {
        status: 400,
        code: "AccessDeniedException",
    });
    let app = spawn_app_with(signing_with(&kms, &key, &[])).await;
    for path in [
        "/.well-known/jwks.json",
        "/.well-known/openid-configuration",
    ] {
        let response = app
            .client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert!(response.headers().get("retry-after").is_none(), "{path}");
        app.assert_error(response, 500, "server_error", "AccessDeniedException")
            .await;
    }
    let (token, _) = app.token(json!({}));
    let response = app.exchange(&token, "sts.amazonaws.com").await;
    assert!(response.headers().get("retry-after").is_none());
    app.assert_error(response, 500, "server_error", "AccessDeniedException")
        .await;
    assert!(kms.sign_requests().is_empty(), "no public key, no signing");

    kms.set_mode(KmsMode::Up);
    let (token, _) = app.token(json!({}));
    let (issued, _) = issued_token(app.exchange(&token, "sts.amazonaws.com").await).await;
    verify_like_a_relying_party(&app, &issued, "sts.amazonaws.com").await;
}

/// moto's keys as a second source: what the JWKS route publishes for a moto key verifies a
/// signature moto made itself (over a RAW message, which moto does hash correctly).
#[tokio::test]
async fn a_moto_kms_key_is_published_as_a_jwk_that_verifies_motos_signatures() {
    use aws_sdk_kms::primitives::Blob;
    use aws_sdk_kms::types::{MessageType, SigningAlgorithmSpec};
    use base64::Engine;

    let key = moto::kms_key(aws_sdk_kms::types::KeySpec::Rsa2048).await;
    let settings = Settings {
        kms_key_id: Some(key.clone()),
        ..Settings::default()
    };
    let app = spawn_app_with(AppSpec {
        settings,
        ..Default::default()
    })
    .await;
    let jwks = get_json(&app, format!("{}/.well-known/jwks.json", app.address)).await;
    let jwk: Jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
    let message = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJtb3RvIn0";
    let signature = aws_sdk_kms::Client::new(&moto::sdk_config())
        .sign()
        .key_id(&key)
        .message(Blob::new(&message[..]))
        .message_type(MessageType::Raw)
        .signing_algorithm(SigningAlgorithmSpec::RsassaPkcs1V15Sha256)
        .send()
        .await
        .unwrap()
        .signature
        .unwrap();
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature.as_ref());
    let key = DecodingKey::from_jwk(&jwk).unwrap();
    let verify = |message: &[u8]| {
        jsonwebtoken::crypto::verify(&signature, message, &key, Algorithm::RS256).unwrap()
    };
    assert!(verify(message));
    assert!(!verify(b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJldmUifQ"));
}

#[tokio::test]
async fn a_signature_that_does_not_verify_with_the_published_key_is_never_issued() {
    // The alias the broker signs with is moved to another key after the broker fetched (and
    // published) the public key: KMS now signs tokens that no relying party could verify.
    for spec in [KeySpec::Rsa2048, KeySpec::EccNistP256] {
        let kms = LocalKms::start().await;
        let (first, second) = (kms.create_key(spec), kms.create_key(spec));
        kms.set_alias("alias/token-broker", &first);
        let app = spawn_app_with(signing_with(&kms, "alias/token-broker", &[])).await;
        let (token, _) = app.token(json!({}));
        let response = app.exchange(&token, "sts.amazonaws.com").await;
        assert_eq!(response.status(), 200, "{spec:?}");
        kms.set_alias("alias/token-broker", &second);
        let (token, _) = app.token(json!({}));
        let response = app.exchange(&token, "sts.amazonaws.com").await;
        assert!(response.headers().get("retry-after").is_none(), "{spec:?}");
        let body = app
            .assert_error(response, 500, "server_error", "SignatureMismatch")
            .await;
        assert!(body.get("access_token").is_none(), "{spec:?}: {body}");
        assert_eq!(kms.sign_requests().len(), 2, "{spec:?}: KMS signed twice");
    }
}

#[tokio::test]
async fn a_kms_answer_without_a_usable_signature_issues_no_token() {
    // KMS's 200 with no signature, or bytes that are not a signature by the published key (for
    // P-256 not even DER): a 500 naming what was wrong, and nothing issued.
    for (spec, mode, code) in [
        (KeySpec::Rsa2048, KmsMode::NoSignature, "MissingSignature"),
        (
            KeySpec::EccNistP256,
            KmsMode::NoSignature,
            "MissingSignature",
        ),
        (
            KeySpec::Rsa2048,
            KmsMode::GarbageSignature,
            "SignatureMismatch",
        ),
        (
            KeySpec::EccNistP256,
            KmsMode::GarbageSignature,
            "MalformedSignature",
        ),
    ] {
        let (app, kms) = app_signing(spec).await;
        kms.set_mode(mode);
        let (token, _) = app.token(json!({}));
        let response = app.exchange(&token, "sts.amazonaws.com").await;
        assert!(response.headers().get("retry-after").is_none(), "{mode:?}");
        let body = app.assert_error(response, 500, "server_error", code).await;
        assert!(
            body.get("access_token").is_none(),
            "{spec:?} {mode:?}: {body}"
        );
        assert_eq!(
            kms.sign_requests().len(),
            1,
            "{spec:?} {mode:?}: asked once"
        );
    }
}
