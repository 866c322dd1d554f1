//! The attack suite (issue 6): hostile tokens, requests and exchanges, one table per kind, one
//! file per surface: [`tokens`] (what a GitLab token can be made to say), [`requests`] (what a
//! `/v1/credentials` request can carry around a valid token) and [`exchanges`] (`/v1/token`).
//! Every row asserts the exact status and OAuth `error` (plus a word of the description), and that
//! nothing reached STS, or for `/v1/token` KMS either. Each row carries its own job id, so "not
//! called" is read from moto's recording while other tests run in parallel; each table also sends
//! one legitimate request that must show up in the recording, so those checks cannot pass
//! vacuously.
//!
//! Rows that would only repeat a token of `verification.rs` are left to it (each table function
//! names what it leaves there): the rows kept here include tokens refused at each verification
//! step, which is what proves those refusals never reach STS. Rows repeating `requests.rs` and
//! `credentials.rs` stay, as the only place those requests are shown not to reach STS.

mod exchanges;
mod requests;
mod tokens;

use serde_json::{Value, json};

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
