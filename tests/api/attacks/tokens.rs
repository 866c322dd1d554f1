//! Hostile GitLab tokens at `/v1/credentials`: forged, algorithm-confused, tampered, with
//! hostile headers, kids, keys or claims, of another kind or issuer; and genuine tokens of jobs
//! the policy must refuse. None may reach STS.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use local_issuer::{LocalIssuer, SigningKey};
use serde_json::{Value, json};
use token_broker::broker::NOTHING_ADMITTED;

use super::*;

#[tokio::test]
async fn forged_and_confused_tokens_are_rejected_before_sts_is_called() {
    let app = spawn_app().await;
    let attacker = LocalIssuer::start().await;
    let rows = [
        algorithm_confusion(&app),
        tampered_tokens(&app),
        hostile_kids(&app),
        keys_from_elsewhere(&app, &attacker),
        hostile_headers(&app, &attacker),
        duplicate_claims(&app),
        malformed_claims(&app),
        tokens_of_other_kinds(&app),
    ]
    .concat();
    let attacks = rows
        .into_iter()
        .map(|(name, token, job, expected)| {
            attack(
                name,
                with_token(&app, "role=read-only", &token),
                job,
                expected,
            )
        })
        .collect();
    let jobs = send_all(attacks).await;
    let control = control_request(&app).await;
    assert_only_the_control_reached_sts(control, &jobs).await;
    assert_eq!(
        attacker.jwks_requests(),
        0,
        "keys named by a token or of an untrusted issuer are never fetched"
    );
    assert_eq!(
        app.issuer.jwks_requests(),
        1,
        "the start-up fetch only: unknown kids within the cooldown fetch nothing"
    );
}

/// `none` in any case, and HMAC keyed with the issuer's public key as PEM, DER and JWK JSON
/// (`verification.rs` has `none`/`None` as such and HS256 with the DER and the JWK).
fn algorithm_confusion(app: &TestApp) -> Vec<TokenRow> {
    let kid = app.issuer.kid();
    let none =
        |alg: &str| local_issuer::keys::b64_json(&json!({"alg": alg, "typ": "JWT", "kid": kid}));
    let mut rows = Vec::new();
    for alg in ["none", "NONE"] {
        let (claims, job) = app.claims(json!({}));
        let token = format!(
            "{}.{}.AAAA",
            none(alg),
            local_issuer::keys::b64_json(&claims)
        );
        let name = format!("alg {alg} with a signature");
        rows.push(row(name, token, job, invalid_token("not a JWS header")));
    }
    let pem = forge::public_pem(&app.issuer.public_der());
    assert_pem_is_the_issuers_key(app, &pem);
    let key_forms: [(&str, Vec<u8>); 3] = [
        ("PEM", pem.into_bytes()),
        ("DER", app.issuer.public_der()),
        ("JWK JSON", app.issuer.public_jwk().to_string().into_bytes()),
    ];
    for alg in ["HS256", "HS384", "HS512"] {
        for (form, secret) in &key_forms {
            if alg == "HS256" && *form != "PEM" {
                continue; // verification.rs: HS256 keyed with the DER and with the JWK
            }
            let (claims, job) = app.claims(json!({}));
            let token = forge::hmac_token(
                secret,
                &json!({"alg": alg, "typ": "JWT", "kid": kid}),
                &claims,
            );
            let name = format!("{alg} keyed with the issuer's public key ({form})");
            rows.push(row(
                name,
                token,
                job,
                invalid_token("algorithm is not accepted"),
            ));
        }
    }
    rows
}

/// A genuine token with its segments changed after signing (`verification.rs` has the payload
/// changed, the signature stripped, and an extra segment).
fn tampered_tokens(app: &TestApp) -> Vec<TokenRow> {
    let (claims, job) = app.claims(json!({}));
    let genuine = app.issuer.mint(&claims);
    let (signed, signature) = genuine.rsplit_once('.').unwrap();
    let standard = STANDARD.encode(URL_SAFE_NO_PAD.decode(signature).unwrap());
    vec![
        row(
            "signature segment missing",
            signed.to_owned(),
            job,
            invalid_token("three"),
        ),
        row(
            "five segments, JWE-shaped",
            format!("{genuine}.AAAA.AAAA"),
            job,
            invalid_token("three"),
        ),
        row(
            "signature in standard base64",
            format!("{signed}.{standard}"),
            job,
            invalid_token("base64url"),
        ),
    ]
}

/// Hostile `kid`s on tokens signed by the trusted key, so only the kid is wrong (`verification.rs`
/// has no kid at all).
fn hostile_kids(app: &TestApp) -> Vec<TokenRow> {
    let unknown = invalid_token("kid is not among");
    let kids: [(&str, Value, Expected); 7] = [
        (
            "kid with path traversal",
            json!("../../etc/passwd"),
            unknown,
        ),
        ("kid with SQL", json!("' OR 1=1 --"), unknown),
        (
            "kid of 200 characters",
            json!("k".repeat(200)),
            invalid_token("kid"),
        ),
        (
            "kid of 17 KB, over the token limit",
            json!("k".repeat(17_408)),
            bad_request("16384"),
        ),
        ("kid empty", json!(""), invalid_token("names no key")),
        (
            "kid as a number",
            json!(7),
            invalid_token("not a JWS header"),
        ),
        (
            "kid of a key the issuer never had",
            json!(SigningKey::generate().kid()),
            unknown,
        ),
    ];
    kids.into_iter()
        .map(|(name, kid, expected)| {
            let (claims, job) = app.claims(json!({}));
            let header = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
            row(
                name,
                app.issuer.mint_with_header(&header, &claims),
                job,
                expected,
            )
        })
        .collect()
}

/// Keys the token offers itself (`jku`, `x5u`, `jwk`, `x5c`), each on its own (`verification.rs`
/// has them together, a stranger's key under the issuer's kid, and an untrusted issuer).
fn keys_from_elsewhere(app: &TestApp, attacker: &LocalIssuer) -> Vec<TokenRow> {
    let kid = app.issuer.kid();
    let headers = [
        (
            "jku naming the attacker's JWKS, attacker-signed",
            json!({"alg": "RS256", "kid": attacker.kid(), "jku": attacker.jwks_url()}),
            "kid is not among",
        ),
        (
            "x5u naming the attacker's JWKS, attacker-signed",
            json!({"alg": "RS256", "kid": attacker.kid(), "x5u": attacker.jwks_url()}),
            "kid is not among",
        ),
        (
            "jwk embedding the attacker's key under the issuer's kid",
            json!({"alg": "RS256", "kid": kid, "jwk": attacker.public_jwk()}),
            "signature does not verify",
        ),
        (
            "x5c carrying the attacker's key under the issuer's kid",
            json!({"alg": "RS256", "kid": kid, "x5c": [STANDARD.encode(attacker.public_der())]}),
            "signature does not verify",
        ),
    ];
    headers
        .into_iter()
        .map(|(name, header, needle)| {
            let (claims, job) = app.claims(json!({}));
            let token = attacker.mint_with_header(&header, &claims);
            row(name, token, job, invalid_token(needle))
        })
        .collect()
}

/// `crit` extensions (`verification.rs` has `crit` naming `exp`), and header members named twice (parsers that keep the first and parsers
/// that keep the last would disagree about what was signed). Signed by the trusted key.
fn hostile_headers(app: &TestApp, attacker: &LocalIssuer) -> Vec<TokenRow> {
    let kid = app.issuer.kid();
    let critical = [(
        "crit b64=false, an unencoded payload",
        json!({"alg": "RS256", "kid": kid, "b64": false, "crit": ["b64"]}),
    )];
    let mut rows: Vec<TokenRow> = critical
        .into_iter()
        .map(|(name, header)| {
            let (claims, job) = app.claims(json!({}));
            row(
                name,
                app.issuer.mint_with_header(&header, &claims),
                job,
                invalid_token("crit"),
            )
        })
        .collect();
    let doubled = [
        (
            "alg twice, RS256 then HS256",
            format!(r#"{{"alg":"RS256","alg":"HS256","kid":"{kid}"}}"#),
        ),
        (
            "alg twice, HS256 then RS256",
            format!(r#"{{"alg":"HS256","alg":"RS256","kid":"{kid}"}}"#),
        ),
        (
            "kid twice, the attacker's then the issuer's",
            format!(
                r#"{{"alg":"RS256","kid":"{}","kid":"{kid}"}}"#,
                attacker.kid()
            ),
        ),
    ];
    for (name, header) in doubled {
        let (claims, job) = app.claims(json!({}));
        let token = forge::signed_text(&app.issuer, &header, &claims.to_string());
        rows.push(row(name, token, job, invalid_token("repeats a member")));
    }
    rows
}

/// Claims named twice in a payload the trusted key signed (`verification.rs` has `aud` twice).
fn duplicate_claims(app: &TestApp) -> Vec<TokenRow> {
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": app.issuer.kid()}).to_string();
    let doubled = [
        (
            "project_id twice, another project first",
            r#""project_id":"1""#,
            "duplicate",
        ),
        (
            "iss twice, another issuer first",
            r#""iss":"https://gitlab.com""#,
            "iss",
        ),
    ];
    doubled
        .into_iter()
        .map(|(name, extra, needle)| {
            let (claims, job) = app.claims(json!({}));
            let token = forge::signed_text(
                &app.issuer,
                &header,
                &forge::with_leading_members(&claims, extra),
            );
            row(name, token, job, invalid_token(needle))
        })
        .collect()
}

/// Claims of the wrong type or form, signed by the trusted key (`verification.rs` has wrong and
/// missing `aud`s, `exp` as a string, expired, future and inverted times, `iss` with a trailing
/// slash or in upper case, and `project_id` as a number).
fn malformed_claims(app: &TestApp) -> Vec<TokenRow> {
    let now = local_issuer::claims::now();
    let url = app.issuer.url();
    let cases = [
        (
            "project_id as an array",
            json!({"project_id": ["4242"]}),
            "project_id",
        ),
        (
            "project_id as an object",
            json!({"project_id": {"id": "4242"}}),
            "project_id",
        ),
        ("ref as a boolean", json!({"ref": true}), "ref"),
        (
            "job_id not digits",
            json!({"job_id": "1; DROP TABLE"}),
            "job_id",
        ),
        (
            "namespace_id with a sign",
            json!({"namespace_id": "-72"}),
            "namespace_id",
        ),
        (
            "exp as a fraction",
            json!({"exp": now as f64 + 600.5}),
            "exp",
        ),
        ("iss as an array", json!({"iss": [url]}), "iss"),
    ];
    cases
        .into_iter()
        .map(|(name, overrides, needle)| {
            let (token, job) = app.token(overrides);
            row(name, token, job, invalid_token(needle))
        })
        .collect()
}

/// Signed by the trusted key, but not a CI job's token of a sane size.
fn tokens_of_other_kinds(app: &TestApp) -> Vec<TokenRow> {
    let now = local_issuer::claims::now();
    // gitlab.com signs its OAuth sign-in ID tokens with the same keys; they name a user.
    let login = json!({
        "iss": app.issuer.url(), "sub": "1001", "aud": AUDIENCE, "iat": now, "exp": now + 120,
        "auth_time": now - 30, "sub_legacy": "2435223452345", "name": "Ada",
        "nickname": "ada", "preferred_username": "ada", "email": "ada@example.com",
        "email_verified": true, "groups_direct": ["acme"],
    });
    let (oversized, job) = app.token(json!({"padding": "x".repeat(17_000)}));
    vec![
        row(
            "OAuth login ID token, no CI claims",
            app.issuer.mint(&login),
            unique_job_id(),
            invalid_token("project_id"),
        ),
        row("token over 16 KiB", oversized, job, bad_request("16384")),
    ]
}

/// The PEM built above really is the issuer's key: its SPKI verifies the issuer's own token.
fn assert_pem_is_the_issuers_key(app: &TestApp, pem: &str) {
    let (claims, _) = app.claims(json!({}));
    let token = app.issuer.mint(&claims);
    let (input, signature) = token.rsplit_once('.').unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let spki = STANDARD.decode(body).unwrap();
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        &spki,
    )
    .verify(
        input.as_bytes(),
        &URL_SAFE_NO_PAD.decode(signature).unwrap(),
    )
    .expect("the PEM is the issuer's key");
}

#[tokio::test]
async fn jobs_the_policy_does_not_allow_are_denied_before_sts_is_called() {
    let app = spawn_app().await;
    let release_tag = |path: &str| json!({"project_path": path, "ref_type": "tag", "ref": "v1.0", "project_id": "4343"});
    let cases = [
        (
            "Cyrillic а in the path against acme/*",
            "deploy-web-prod",
            release_tag("\u{430}cme/web"),
            "project_path",
        ),
        (
            "fullwidth solidus in the path",
            "deploy-web-prod",
            release_tag("acme\u{ff0f}web"),
            "project_path",
        ),
        (
            "nested project under acme/* (a * never crosses /)",
            "deploy-web-prod",
            release_tag("acme/web/evil"),
            "project_path",
        ),
        (
            "upper-case path",
            "deploy-web-prod",
            release_tag("ACME/web"),
            "project_path",
        ),
        (
            "path of the namespace, ids of another one (renamed or re-registered)",
            "deploy-web-prod",
            json!({"namespace_id": "555", "project_id": "5555", "ref_type": "tag", "ref": "v1.0"}),
            NOTHING_ADMITTED,
        ),
        (
            "project path kept, project id changed",
            "read-only",
            json!({"project_id": "5555"}),
            "project_id",
        ),
        (
            "fork merge request, loosest role",
            "read-only",
            fork_merge_request(),
            NOTHING_ADMITTED,
        ),
        (
            "fork merge request, production role",
            "deploy-web-prod",
            fork_merge_request(),
            NOTHING_ADMITTED,
        ),
        (
            "unprotected branch",
            "deploy-web-prod",
            json!({"ref_protected": "false"}),
            "ref_protected",
        ),
        (
            "tag named like the branch",
            "deploy-web-prod",
            json!({"ref_type": "tag", "ref": "main"}),
            "ref_type",
        ),
        (
            "branch named like a release tag",
            "deploy-web-prod",
            json!({"ref": "v1.0"}),
            "\"ref\"",
        ),
        (
            "another environment",
            "deploy-web-prod",
            json!({"environment": "staging"}),
            "environment",
        ),
        // NUL and newline are legal in a JSON string and GitLab signs what it is given, so the
        // token verifies; the exact comparison with "main" is what refuses it (403, not 401).
        (
            "NUL after the branch name",
            "deploy-web-prod",
            json!({"ref": "main\u{0}"}),
            "\"ref\"",
        ),
        (
            "newline after the branch name",
            "deploy-web-prod",
            json!({"ref": "main\n"}),
            "\"ref\"",
        ),
        (
            "Cyrillic а in the branch name",
            "deploy-web-prod",
            json!({"ref": "m\u{430}in"}),
            "\"ref\"",
        ),
        // A role that passes `ref` as a session tag refuses values STS would reject.
        (
            "NUL in a claim passed as a session tag",
            "tagged",
            json!({"ref": "main\u{0}"}),
            "legal session tag",
        ),
        (
            "newline in a claim passed as a session tag",
            "tagged",
            json!({"ref": "main\nx"}),
            "legal session tag",
        ),
        (
            "no usable login and no user_id to derive a source identity from",
            "read-only",
            json!({"user_login": "aws:admin", "user_id": null}),
            "user_id",
        ),
        (
            "no usable login and a user_id that is not a number",
            "read-only",
            json!({"user_login": "ada\nroot", "user_id": "1001\n"}),
            "user_id",
        ),
        (
            "role the policy does not define",
            "admin",
            json!({}),
            "not defined",
        ),
        (
            "role name in another case",
            "Deploy-Web-Prod",
            json!({}),
            "not defined",
        ),
    ];
    let attacks = cases
        .into_iter()
        .map(|(name, role, overrides, needle)| {
            let (token, job) = app.token(overrides);
            let request = with_token(&app, &format!("role={role}"), &token);
            attack(name, request, job, denied(needle))
        })
        .collect();
    let jobs = send_all(attacks).await;
    let control = control_request(&app).await;
    assert_only_the_control_reached_sts(control, &jobs).await;
}

/// Two trusted GitLab instances; each rule names its issuer.
const TWO_ISSUERS: &str = r#"
audience = "https://token-broker.example.com"

[[issuer]]
url = "{issuer}"

[[issuer]]
url = "{second}"

[role.web]
arn = "arn:aws:iam::123456789012:role/web"

[[role.web.allow]]
issuer = "{issuer}"
project_id = "4242"

[role.shared]
arn = "arn:aws:iam::123456789012:role/shared"

[[role.shared.allow]]
issuer = "{issuer}"
project_id = "4242"

[[role.shared.allow]]
issuer = "{second}"
project_id = "1"
"#;

#[tokio::test]
async fn a_second_trusted_issuers_token_never_satisfies_the_first_issuers_rules() {
    let first = LocalIssuer::start().await;
    let second = LocalIssuer::start().await;
    let policy = TWO_ISSUERS.replace("{second}", second.url());
    let app = spawn_app_with(AppSpec {
        policy,
        issuer: Some(first),
        ..Default::default()
    })
    .await;
    // Claims identical to what the first issuer's rules allow, but signed by the second.
    let mut attacks = Vec::new();
    // No rule of the second issuer names project 4242: its callers learn nothing of the policy.
    for (role, needle) in [("web", NOTHING_ADMITTED), ("shared", NOTHING_ADMITTED)] {
        let job = unique_job_id();
        let token = second.mint(&second.claims(AUDIENCE, job));
        let request = with_token(&app, &format!("role={role}"), &token);
        attacks.push(attack(
            format!("second issuer's project 4242 asks for {role}"),
            request,
            job,
            denied(needle),
        ));
    }
    let jobs = send_all(attacks).await;
    let (token, control) = app.token(json!({}));
    assert_eq!(app.credentials(&token, "role=web").await.status(), 200);
    assert_only_the_control_reached_sts(control, &jobs).await;
}

#[tokio::test]
async fn an_aud_list_that_contains_the_broker_is_accepted() {
    // DESIGN: `aud` must *contain* the broker's audience (RFC 7519 §4.1.3); GitLab sends a list
    // when a job asks for several audiences.
    let app = spawn_app().await;
    let (token, job) = app.token(json!({"aud": ["https://vault.example.com", AUDIENCE]}));
    let response = app.credentials(&token, "role=read-only").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        recorded_assume_roles(&format!("gitlab-4242-{job}"))
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn a_token_valid_until_the_year_3000_gets_credentials_capped_at_the_role_maximum() {
    // Only GitLab's key can sign such a token; the broker accepts it (it checks no maximum token
    // lifetime) but never lets the credentials outlive the role's max_duration (read-only: 30m).
    let app = spawn_app().await;
    let year_3000 = 32_503_680_000_i64;
    for requested in ["", "&duration_seconds=43200"] {
        let (token, job) = app.token(json!({"exp": year_3000}));
        let response = app
            .credentials(&token, &format!("role=read-only{requested}"))
            .await;
        assert_eq!(response.status(), 200, "{requested}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["DurationSeconds"], 1800, "{requested}");
        let calls = recorded_assume_roles(&format!("gitlab-4242-{job}")).await;
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["DurationSeconds"], "1800", "{requested}");
    }
}
