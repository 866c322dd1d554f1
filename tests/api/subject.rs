//! The `sub` of re-issued tokens, as an AWS IAM trust policy sees it: built from the instance and
//! numeric ids, so that the trust policies in `examples/iam/` admit exactly the jobs they name
//! and never a renamed, re-registered, look-alike or other-instance project; and a token an
//! independent JOSE library (Python's joserfc) verifies against the published JWKS.

use std::path::Path;
use std::process::Command;

use base64::Engine;
use local_issuer::LocalIssuer;
use local_issuer::kms::{KeySpec, LocalKms};
use serde_json::{Value, json};

use crate::helpers::*;

/// Two trusted instances; the AWS grant admits protected branches and tags of 4242 and of the
/// look-alike 42420 on the first, and 4242 on the second.
const POLICY: &str = r#"
audience = "https://token-broker.example.com"

[[issuer]]
url = "{issuer}"

[[issuer]]
url = "{second}"

[token.aws]
audience = "sts.amazonaws.com"
subject = "{issuer_host}:project_id:{project_id}:ref_type:{ref_type}:ref:{ref}:environment:{environment}"

[[token.aws.allow]]
issuer = "{issuer}"
project_id = ["4242", "42420"]
ref_type = ["branch", "tag"]
ref_protected = "true"

[[token.aws.allow]]
issuer = "{second}"
project_id = "4242"
ref_type = "branch"
ref_protected = "true"
"#;

struct Brokers {
    app: TestApp,
    second: LocalIssuer,
    _kms: LocalKms,
}

async fn broker_with_two_instances() -> Brokers {
    let (kms, key) = kms_stand_in(KeySpec::Rsa2048).await;
    let second = LocalIssuer::start().await;
    let app = spawn_app_with(AppSpec {
        policy: POLICY.replace("{second}", second.url()),
        ..signing_with(&kms, &key, &[])
    })
    .await;
    Brokers {
        app,
        second,
        _kms: kms,
    }
}

async fn exchange(app: &TestApp, subject_token: &str) -> Value {
    let response = app.exchange(subject_token, "sts.amazonaws.com").await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// IAM's `StringLike`: `*` any run of characters (`:` included), `?` any one character, over the
/// whole string. `StringEquals` is plain equality.
fn string_like(pattern: &str, value: &str) -> bool {
    let (p, v): (Vec<char>, Vec<char>) = (pattern.chars().collect(), value.chars().collect());
    let mut matches = vec![vec![false; v.len() + 1]; p.len() + 1];
    matches[0][0] = true;
    for i in 1..=p.len() {
        matches[i][0] = matches[i - 1][0] && p[i - 1] == '*';
        for j in 1..=v.len() {
            matches[i][j] = match p[i - 1] {
                '*' => matches[i - 1][j] || matches[i][j - 1],
                '?' => matches[i - 1][j - 1],
                c => matches[i - 1][j - 1] && c == v[j - 1],
            };
        }
    }
    matches[p.len()][v.len()]
}

/// The `sub` condition of a trust policy in `examples/iam/`: (operator, value).
fn sub_condition(file: &str) -> (String, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/iam")
        .join(file);
    let document: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let conditions = document["Statement"][0]["Condition"].as_object().unwrap();
    conditions
        .iter()
        .find_map(|(operator, keys)| {
            let (_, value) = keys
                .as_object()?
                .iter()
                .find(|(key, _)| key.ends_with(":sub"))?;
            Some((operator.clone(), value.as_str()?.to_owned()))
        })
        .expect("a sub condition")
}

fn admits(condition: &(String, String), issuer_host: &str, sub: &str) -> bool {
    // The examples name the instance gitlab.example.com; here it is the local issuer.
    let pattern = condition.1.replace("gitlab.example.com", issuer_host);
    match condition.0.as_str() {
        "StringEquals" => pattern == sub,
        "StringLike" => string_like(&pattern, sub),
        other => panic!("unexpected operator {other}"),
    }
}

#[test]
fn iam_string_like_is_a_whole_string_glob() {
    let cases = [
        ("a:*", "a:b:c", true),
        ("a:*", "ab:c", false),
        ("a:?", "a:b", true),
        ("a:?", "a:bc", false),
        ("a", "a:b", false),
    ];
    for (pattern, value, expected) in cases {
        assert_eq!(string_like(pattern, value), expected, "{pattern} {value}");
    }
}

#[tokio::test]
async fn the_example_trust_policies_admit_exactly_the_jobs_they_name() {
    let Brokers { app, second, .. } = broker_with_two_instances().await;
    let main_production = sub_condition("web-identity-main-production.json");
    let any_branch = sub_condition("web-identity-any-branch.json");
    let host =
        token_broker::policy::subject::escape(app.issuer.url().trim_start_matches("http://"));
    let production = json!({"ref": "main", "environment": "production"});
    // (what, second instance?, claims, admitted by main-production, by any-branch)
    let cases = [
        (
            "main deploying to production",
            false,
            production.clone(),
            true,
            true,
        ),
        (
            "main without an environment",
            false,
            json!({"environment": null}),
            false,
            true,
        ),
        (
            "a feature branch in production",
            false,
            json!({"ref": "feature/x"}),
            false,
            true,
        ),
        (
            "the project renamed, same id",
            false,
            json!({"project_path": "acme/new-name", "namespace_path": "acme"}),
            true,
            true,
        ),
        (
            "the old path re-registered: a look-alike id",
            false,
            json!({"project_id": "42420", "project_path": "acme/web"}),
            false,
            false,
        ),
        (
            "a tag of the project",
            false,
            json!({"ref_type": "tag", "ref": "main"}),
            false,
            false,
        ),
        (
            "project 4242 of another instance",
            true,
            production.clone(),
            false,
            false,
        ),
        (
            "a ref that spells out the production suffix",
            false,
            json!({"ref": "main:environment:production", "environment": null}),
            false,
            true,
        ),
    ];
    for (what, on_second, overrides, in_production, on_any_branch) in cases {
        // GitLab's default claims are main, protected, deploying to production.
        let issuer = if on_second { &second } else { &app.issuer };
        let token = issuer.mint(&local_issuer::claims::with(
            issuer.claims(AUDIENCE, unique_job_id()),
            &overrides,
        ));
        let issued = exchange(&app, &token).await;
        let sub = payload(issued["access_token"].as_str().unwrap())["sub"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            admits(&main_production, &host, &sub),
            in_production,
            "{what}: {sub}"
        );
        assert_eq!(
            admits(&any_branch, &host, &sub),
            on_any_branch,
            "{what}: {sub}"
        );
    }
}

#[tokio::test]
async fn an_independent_jose_library_verifies_the_token_and_sees_the_brokers_sub() {
    let Brokers { app, .. } = broker_with_two_instances().await;
    let (token, _) = app.token(json!({"environment": "production"}));
    let issued = exchange(&app, &token).await;
    let script = r#"
import json, sys, urllib.request
from joserfc import jwt
from joserfc.jwk import KeySet
issuer, token = sys.argv[1], sys.argv[2]
keys = KeySet.import_key_set(json.load(urllib.request.urlopen(issuer + "/.well-known/jwks.json")))
verified = jwt.decode(token, keys, algorithms=["RS256", "ES256"])
jwt.JWTClaimsRegistry(
    iss={"essential": True, "value": issuer},
    aud={"essential": True, "value": "sts.amazonaws.com"},
    sub={"essential": True},
    exp={"essential": True},
).validate(verified.claims)
print(json.dumps(verified.claims))
"#;
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let args = [
        "-c".to_string(),
        script.to_string(),
        app.address.clone(),
        issued["access_token"].as_str().unwrap().to_string(),
    ];
    // Off the test's runtime: that runtime also serves the JWKS the script fetches.
    let output = tokio::task::spawn_blocking({
        let python = python.clone();
        move || Command::new(python).args(args).output()
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{}: {e} (scripts/test installs it)", python.display()));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let claims: Value = serde_json::from_slice(&output.stdout).unwrap();
    let host =
        token_broker::policy::subject::escape(app.issuer.url().trim_start_matches("http://"));
    assert_eq!(
        claims["sub"],
        format!("{host}:project_id:4242:ref_type:branch:ref:main:environment:production")
    );
    assert_eq!(claims["gitlab_iss"], app.issuer.url());
    assert_eq!(
        claims["gitlab_sub"],
        "project_path:acme/web:ref_type:branch:ref:main"
    );
}
