//! Hostile token exchanges at `/v1/token` (RFC 8693): subject tokens that must not verify,
//! subjects asking for audiences the policy does not grant, malformed exchange requests. None may
//! reach KMS or STS.

use local_issuer::LocalIssuer;
use local_issuer::kms::{KeySpec, LocalKms};
use serde_json::json;
use token_broker::broker::NOTHING_ADMITTED;

use super::*;

/// A form's fields, in order, repeats allowed.
type Form<'a> = Vec<(&'a str, &'a str)>;
/// An audience the test policy grants to project 4242's protected main.
const GRANTED: &str = "https://attack-target.example.com";
/// The test policy plus a token grant that copies `job_id`, so KMS `Sign` calls can be told apart.
const TOKEN_GRANT: &str = r#"
[token.attack-target]
audience = "https://attack-target.example.com"
claims = ["job_id"]

[[token.attack-target.allow]]
project_id = "4242"
ref_type = "branch"
ref = "main"
ref_protected = "true"
"#;

fn exchange(app: &TestApp, form: &[(&str, &str)]) -> reqwest::RequestBuilder {
    app.client
        .post(format!("{}/v1/token", app.address))
        .form(form)
}

fn subject(app: &TestApp, token: &str, audience: &str) -> reqwest::RequestBuilder {
    exchange(
        app,
        &[
            ("grant_type", urn::TOKEN_EXCHANGE),
            ("subject_token", token),
            ("subject_token_type", urn::JWT),
            ("audience", audience),
        ],
    )
}

#[tokio::test]
async fn hostile_token_exchanges_reach_neither_kms_nor_sts() {
    let kms = LocalKms::start().await;
    let key = kms.create_key(KeySpec::Rsa2048);
    let app = spawn_app_with(AppSpec {
        policy: format!("{POLICY}{TOKEN_GRANT}"),
        ..signing_with(&kms, &key, &[])
    })
    .await;
    let attacker = LocalIssuer::start().await;
    let attacks = [
        forged_subject_tokens(&app, &attacker),
        subjects_the_policy_refuses(&app),
        malformed_exchanges(&app, &attacker),
    ]
    .into_iter()
    .flatten()
    .collect();
    let jobs = send_all(attacks).await;
    // This KMS serves this test alone, so any Sign request so far came from a hostile exchange.
    assert_eq!(
        kms.sign_requests(),
        vec![],
        "KMS signed for a hostile exchange"
    );

    let (token, _) = app.token(json!({}));
    let response = subject(&app, &token, GRANTED).send().await.unwrap();
    assert_eq!(response.status(), 200, "the control exchange");
    assert_eq!(
        kms.sign_requests().len(),
        1,
        "the control exchange is signed once"
    );
    let sessions = recorded_session_names().await;
    for job in jobs {
        let suffix = format!("-{job}");
        assert!(
            !sessions.iter().any(|s| s.ends_with(&suffix)),
            "STS for {job}"
        );
    }
    assert_eq!(attacker.jwks_requests(), 0);
}

fn invalid_grant(needle: &'static str) -> Expected {
    (400, "invalid_grant", needle)
}

/// Subject tokens that must not verify: RFC 8693 calls that `invalid_grant`.
fn forged_subject_tokens(app: &TestApp, attacker: &LocalIssuer) -> Vec<Attack> {
    let kid = app.issuer.kid();
    let now = local_issuer::claims::now();
    let mut rows: Vec<TokenRow> = Vec::new();
    let (claims, job) = app.claims(json!({}));
    let header = local_issuer::keys::b64_json(&json!({"alg": "none", "kid": kid}));
    let token = format!("{header}.{}.AAAA", local_issuer::keys::b64_json(&claims));
    rows.push(row("alg none", token, job, invalid_grant("JWS")));
    let (claims, job) = app.claims(json!({}));
    let pem = forge::public_pem(&app.issuer.public_der());
    let token = forge::hmac_token(
        pem.as_bytes(),
        &json!({"alg": "HS256", "typ": "JWT", "kid": kid}),
        &claims,
    );
    rows.push(row(
        "HS256 keyed with the issuer's PEM",
        token,
        job,
        invalid_grant("algorithm"),
    ));
    let (claims, job) = app.claims(json!({}));
    let genuine = app.issuer.mint(&claims);
    let parts: Vec<&str> = genuine.split('.').collect();
    let extended = local_issuer::claims::with(claims, &json!({"exp": now + 86_400}));
    let token = format!(
        "{}.{}.{}",
        parts[0],
        local_issuer::keys::b64_json(&extended),
        parts[2]
    );
    rows.push(row(
        "payload changed after signing",
        token,
        job,
        invalid_grant("signature"),
    ));
    let (claims, job) = app.claims(json!({}));
    let header = json!({"alg": "RS256", "kid": attacker.kid(), "jku": attacker.jwks_url()});
    let token = attacker.mint_with_header(&header, &claims);
    rows.push(row(
        "attacker-signed, jku naming the attacker's keys",
        token,
        job,
        invalid_grant("kid"),
    ));
    let (claims, job) = app.claims(json!({}));
    let header = json!({"alg": "RS256", "kid": kid}).to_string();
    let payload = forge::with_leading_members(&claims, r#""aud":"https://elsewhere.example.com""#);
    let token = forge::signed_text(&app.issuer, &header, &payload);
    rows.push(row("aud twice", token, job, invalid_grant("duplicate")));
    // A login token has no job_id; this one carries one so a KMS call would be noticed.
    let job = unique_job_id();
    let login = json!({"iss": app.issuer.url(), "sub": "1001", "aud": AUDIENCE, "iat": now, "exp": now + 120, "job_id": job.to_string()});
    rows.push(row(
        "OAuth login ID token",
        app.issuer.mint(&login),
        job,
        invalid_grant("project_id"),
    ));
    let expired = json!({"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600});
    let (token, job) = app.token(expired);
    rows.push(row("expired", token, job, invalid_grant("expired")));
    rows.into_iter()
        .map(|(name, token, job, expected)| {
            attack(name, subject(app, &token, GRANTED), job, expected)
        })
        .collect()
}

/// Valid subject tokens asking for what the policy does not grant them: `invalid_target`.
fn subjects_the_policy_refuses(app: &TestApp) -> Vec<Attack> {
    let cases = [
        (
            "fork merge request",
            fork_merge_request(),
            GRANTED,
            NOTHING_ADMITTED,
        ),
        (
            "unprotected branch",
            json!({"ref_protected": "false"}),
            GRANTED,
            "ref_protected",
        ),
        (
            "an audience no grant names",
            json!({}),
            "https://vault.example.com",
            "no token",
        ),
        ("the broker's own audience", json!({}), AUDIENCE, "no token"),
        ("a glob as audience", json!({}), "*", "no token"),
    ];
    cases
        .into_iter()
        .map(|(name, overrides, audience, needle)| {
            let (token, job) = app.token(overrides);
            let expected = (400, "invalid_target", needle);
            attack(name, subject(app, &token, audience), job, expected)
        })
        .collect()
}

/// Exchange requests that are malformed around a valid subject token.
fn malformed_exchanges(app: &TestApp, attacker: &LocalIssuer) -> Vec<Attack> {
    let (claims, _) = app.claims(json!({}));
    let forged = attacker.mint(&claims);
    let (token, job) = app.token(json!({}));
    let saml = urn::SAML2;
    let access_token = urn::ACCESS_TOKEN;
    let base = [
        ("grant_type", urn::TOKEN_EXCHANGE),
        ("subject_token", token.as_str()),
        ("subject_token_type", urn::JWT),
        ("audience", GRANTED),
    ];
    let with = |changes: &[(&'static str, &'static str)]| -> Form {
        let mut form: Form = base.to_vec();
        form.extend_from_slice(changes);
        form
    };
    let replaced = |name: &str, value: &'static str| -> Form {
        base.iter()
            .map(|(n, v)| (*n, if *n == name { value } else { *v }))
            .collect()
    };
    let forms: Vec<(&str, Form, Expected)> = vec![
        (
            "audience twice",
            with(&[("audience", "https://vault.example.com")]),
            bad_request("repeated"),
        ),
        (
            "another grant type",
            replaced("grant_type", "client_credentials"),
            (400, "unsupported_grant_type", "grant_type"),
        ),
        (
            "delegation with an actor token",
            with(&[("actor_token", "x.y.z")]),
            bad_request("actor_token"),
        ),
        (
            "an access token requested",
            with(&[("requested_token_type", access_token)]),
            bad_request("requested_token_type"),
        ),
        (
            "a SAML subject token type",
            replaced("subject_token_type", saml),
            bad_request("subject_token_type"),
        ),
    ];
    let mut attacks: Vec<Attack> = forms
        .into_iter()
        .map(|(name, form, expected)| attack(name, exchange(app, &form), job, expected))
        .collect();
    let mut doubled = base.to_vec();
    doubled.push(("subject_token", forged.as_str()));
    attacks.push(attack(
        "subject token twice, a forged one second",
        exchange(app, &doubled),
        job,
        bad_request("repeated"),
    ));
    // Over the token cap, yet small enough for the body cap: the token's own limit answers.
    let (oversized, job) = app.token(json!({"padding": "x".repeat(12_000)}));
    attacks.push(attack(
        "subject token over 16 KiB",
        subject(app, &oversized, GRANTED),
        job,
        bad_request("16384"),
    ));
    let (token, job) = app.token(json!({}));
    let without_subject = [
        ("grant_type", urn::TOKEN_EXCHANGE),
        ("subject_token_type", urn::JWT),
        ("audience", GRANTED),
    ];
    attacks.push(attack(
        "the subject token as Bearer instead of in the form",
        exchange(app, &without_subject).bearer_auth(&token),
        job,
        bad_request("subject_token"),
    ));
    let (token, job) = app.token(json!({}));
    let body = json!({"grant_type": urn::TOKEN_EXCHANGE, "subject_token": token, "subject_token_type": urn::JWT, "audience": GRANTED});
    attacks.push(attack(
        "a JSON body",
        app.client
            .post(format!("{}/v1/token", app.address))
            .json(&body),
        job,
        (415, "invalid_request", "x-www-form-urlencoded"),
    ));
    attacks
}
