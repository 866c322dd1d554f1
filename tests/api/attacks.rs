//! The attack suite (issue 6): hostile tokens and requests, one table per kind. Every row asserts
//! the exact status and OAuth `error` (plus a word of the description), and that nothing reached
//! STS, or for `/v1/token` KMS either. Each row carries its own job id, so "not called" is read from
//! moto's recording while other tests run in parallel; each table also sends one legitimate
//! request that must show up in the recording, so those checks cannot pass vacuously.
//!
//! Many rows repeat single checks from `verification.rs`, `requests.rs` and `credentials.rs`; here
//! they are consolidated, and every one also proves that no AWS call was made.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use local_issuer::kms::{KeySpec, LocalKms};
use local_issuer::{LocalIssuer, SigningKey};
use serde_json::{Value, json};
use token_broker::broker::NOTHING_ADMITTED;

use crate::helpers::*;

/// Status, OAuth `error`, and a word of `error_description`.
type Expected = (u16, &'static str, &'static str);

/// One hostile request and the answer the broker must give it.
struct Attack {
    name: String,
    request: reqwest::RequestBuilder,
    /// The job id of the token the request carries (or of the valid token sent along).
    job_id: u64,
    expected: Expected,
}

fn attack(
    name: impl Into<String>,
    request: reqwest::RequestBuilder,
    job_id: u64,
    expected: Expected,
) -> Attack {
    Attack {
        name: name.into(),
        request,
        job_id,
        expected,
    }
}

fn invalid_token(needle: &'static str) -> Expected {
    (401, "invalid_token", needle)
}

fn denied(needle: &'static str) -> Expected {
    (403, "access_denied", needle)
}

fn bad_request(needle: &'static str) -> Expected {
    (400, "invalid_request", needle)
}

/// Sends every attack at once and asserts each answer; returns the attacks' job ids. All
/// mismatches are reported together, by name.
async fn send_all(attacks: Vec<Attack>) -> Vec<u64> {
    let count = attacks.len();
    let (rows, requests): (Vec<_>, Vec<_>) = attacks
        .into_iter()
        .map(|a| ((a.name, a.job_id, a.expected), a.request))
        .unzip();
    let responses = futures_util::future::join_all(requests.into_iter().map(|r| r.send())).await;
    let mut failures = Vec::new();
    for ((name, _, expected), response) in rows.iter().zip(responses) {
        let failure = match response {
            Ok(response) => mismatch(response, *expected).await,
            Err(error) => Some(format!("not sent: {error}")),
        };
        if let Some(failure) = failure {
            failures.push(format!("  {name}: {failure}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} attacks were not answered as expected:\n{}",
        failures.len(),
        failures.join("\n")
    );
    rows.iter().map(|(_, job_id, _)| *job_id).collect()
}

/// What is wrong with `response`, if anything.
async fn mismatch(response: reqwest::Response, expected: Expected) -> Option<String> {
    let (status, error, needle) = expected;
    let got = response.status().as_u16();
    let challenge = response.headers().get("www-authenticate").cloned();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let description = body["error_description"].as_str().unwrap_or_default();
    let request_id = body["request_id"].as_str().unwrap_or_default();
    if got != status || body["error"] != error || !description.contains(needle) {
        return Some(format!(
            "expected {status} {error} mentioning {needle:?}, got {got} {body}"
        ));
    }
    if request_id.is_empty() {
        return Some(format!("no request_id in {body}"));
    }
    if status == 401 && challenge.is_none() {
        return Some("a 401 without WWW-Authenticate".into());
    }
    None
}

/// Asserts that the legitimate `control` job reached STS and none of `attacks` did.
async fn assert_only_the_control_reached_sts(control: u64, attacks: &[u64]) {
    let sessions = recorded_session_names().await;
    let reached = |job: u64| {
        let suffix = format!("-{job}");
        sessions.iter().any(|s| s.ends_with(&suffix))
    };
    assert!(reached(control), "the control request must be recorded");
    let leaked: Vec<_> = attacks.iter().filter(|job| reached(**job)).collect();
    assert!(leaked.is_empty(), "STS was called for jobs {leaked:?}");
}

/// A legitimate credentials request, which must succeed.
async fn control_request(app: &TestApp) -> u64 {
    let (token, job_id) = app.token(json!({}));
    let response = app.credentials(&token, "role=read-only").await;
    assert_eq!(response.status(), 200, "the control request");
    job_id
}

fn post_credentials(app: &TestApp, query: &str) -> reqwest::RequestBuilder {
    app.client
        .post(format!("{}/v1/credentials?{query}", app.address))
}

fn with_token(app: &TestApp, query: &str, token: &str) -> reqwest::RequestBuilder {
    post_credentials(app, query).bearer_auth(token)
}

/// A hostile token for `/v1/credentials?role=read-only` (a role its claims would otherwise get):
/// name, token, job id, and the answer it must get.
type TokenRow = (String, String, u64, Expected);

fn row(name: impl Into<String>, token: String, job_id: u64, expected: Expected) -> TokenRow {
    (name.into(), token, job_id, expected)
}

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

/// `none` in any case, and HMAC keyed with the issuer's public key as PEM, DER and JWK JSON.
fn algorithm_confusion(app: &TestApp) -> Vec<TokenRow> {
    let kid = app.issuer.kid();
    let none =
        |alg: &str| local_issuer::keys::b64_json(&json!({"alg": alg, "typ": "JWT", "kid": kid}));
    let mut rows = Vec::new();
    let (claims, job) = app.claims(json!({}));
    let token = format!(
        "{}.{}.",
        none("none"),
        local_issuer::keys::b64_json(&claims)
    );
    rows.push(row(
        "alg none, empty signature",
        token,
        job,
        invalid_token("base64url"),
    ));
    for alg in ["none", "None", "NONE"] {
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

/// A genuine token, changed after signing.
fn tampered_tokens(app: &TestApp) -> Vec<TokenRow> {
    let (claims, job) = app.claims(json!({}));
    let genuine = app.issuer.mint(&claims);
    let parts: Vec<&str> = genuine.split('.').collect();
    let later = local_issuer::claims::now() + 86_400;
    let extended = local_issuer::claims::with(claims, &json!({"exp": later}));
    let (signed, signature) = genuine.rsplit_once('.').unwrap();
    let standard = STANDARD.encode(URL_SAFE_NO_PAD.decode(signature).unwrap());
    vec![
        row(
            "payload changed after signing (exp a day later)",
            format!(
                "{}.{}.{}",
                parts[0],
                local_issuer::keys::b64_json(&extended),
                parts[2]
            ),
            job,
            invalid_token("signature does not verify"),
        ),
        row(
            "signature stripped",
            format!("{signed}."),
            job,
            invalid_token("base64url"),
        ),
        row(
            "signature segment missing",
            signed.to_owned(),
            job,
            invalid_token("three"),
        ),
        row(
            "extra segment",
            format!("{genuine}.AAAA"),
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

/// Hostile `kid`s on tokens signed by the trusted key, so only the kid is wrong.
fn hostile_kids(app: &TestApp) -> Vec<TokenRow> {
    let unknown = invalid_token("kid is not among");
    let kids: [(&str, Value, Expected); 8] = [
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
        ("no kid", Value::Null, invalid_token("names no key")),
        (
            "kid of a key the issuer never had",
            json!(SigningKey::generate().kid()),
            unknown,
        ),
    ];
    kids.into_iter()
        .map(|(name, kid, expected)| {
            let (claims, job) = app.claims(json!({}));
            let mut header = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
            if kid.is_null() {
                header.as_object_mut().unwrap().remove("kid");
            }
            row(
                name,
                app.issuer.mint_with_header(&header, &claims),
                job,
                expected,
            )
        })
        .collect()
}

/// Keys the token offers itself (`jku`, `x5u`, `jwk`, `x5c`), and keys of strangers.
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
    let mut rows: Vec<TokenRow> = headers
        .into_iter()
        .map(|(name, header, needle)| {
            let (claims, job) = app.claims(json!({}));
            let token = attacker.mint_with_header(&header, &claims);
            row(name, token, job, invalid_token(needle))
        })
        .collect();
    let (claims, job) = app.claims(json!({}));
    let impostor = SigningKey::generate().with_kid(kid.clone());
    rows.push(row(
        "attacker's key under the issuer's kid",
        impostor.mint(&json!({"alg": "RS256", "kid": kid}), &claims),
        job,
        invalid_token("signature does not verify"),
    ));
    let job = unique_job_id();
    rows.push(row(
        "token of an issuer the policy does not name",
        attacker.mint(&attacker.claims(AUDIENCE, job)),
        job,
        invalid_token("issuer is not trusted"),
    ));
    rows
}

/// `crit` extensions, and header members named twice (parsers that keep the first and parsers
/// that keep the last would disagree about what was signed). Signed by the trusted key.
fn hostile_headers(app: &TestApp, attacker: &LocalIssuer) -> Vec<TokenRow> {
    let kid = app.issuer.kid();
    let critical = [
        (
            "crit naming exp",
            json!({"alg": "RS256", "kid": kid, "crit": ["exp"]}),
        ),
        (
            "crit b64=false, an unencoded payload",
            json!({"alg": "RS256", "kid": kid, "b64": false, "crit": ["b64"]}),
        ),
    ];
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

/// Claims named twice in a payload the trusted key signed.
fn duplicate_claims(app: &TestApp) -> Vec<TokenRow> {
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": app.issuer.kid()}).to_string();
    let doubled = [
        (
            "aud twice, another audience first",
            r#""aud":"https://elsewhere.example.com""#,
            "duplicate",
        ),
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

/// Claims of the wrong type, form or time, signed by the trusted key.
fn malformed_claims(app: &TestApp) -> Vec<TokenRow> {
    let now = local_issuer::claims::now();
    let url = app.issuer.url();
    let cases = [
        (
            "project_id as a number",
            json!({"project_id": 4242}),
            "project_id",
        ),
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
            "exp as a string",
            json!({"exp": (now + 600).to_string()}),
            "exp",
        ),
        (
            "exp as a fraction",
            json!({"exp": now as f64 + 600.5}),
            "exp",
        ),
        (
            "expired an hour ago",
            json!({"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}),
            "expired",
        ),
        (
            "issued in the future",
            json!({"iat": now + 600, "nbf": null}),
            "future",
        ),
        (
            "nbf after exp",
            json!({"nbf": now + 30, "exp": now + 20}),
            "exp",
        ),
        ("iss as an array", json!({"iss": [url]}), "iss"),
        (
            "iss with a trailing slash",
            json!({"iss": format!("{url}/")}),
            "issuer is not trusted",
        ),
        (
            "iss in upper case",
            json!({"iss": url.to_uppercase()}),
            "issuer is not trusted",
        ),
        (
            "aud list without the broker",
            json!({"aud": ["https://a.example.com", "https://b.example.com"]}),
            "aud",
        ),
        (
            "aud of another relying party",
            json!({"aud": "https://vault.example.com"}),
            "aud",
        ),
        ("no aud", json!({"aud": null}), "aud"),
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

/// A fork's merge-request pipeline: the fork's project, namespace and path, the parent's in
/// `job_project_*`.
fn fork_merge_request() -> Value {
    json!({
        "project_id": "9999", "project_path": "mallory/web",
        "namespace_id": "666", "namespace_path": "mallory",
        "job_project_id": "4242", "job_project_path": "acme/web",
        "job_namespace_id": "72", "job_namespace_path": "acme",
        "pipeline_source": "merge_request_event", "ref_protected": "false",
        "sub": "project_path:mallory/web:ref_type:branch:ref:main",
    })
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
