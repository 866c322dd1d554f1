//! The policy compiler (`token_broker_policy::parse`: TOML, then compile), the linter and
//! `explain` on every policy that compiles, and glob patterns. Contract: never panic; a compile
//! error points inside the text; a rule whose conditions are all plain values allows claims made
//! of exactly those values; `*`, `?` and classes never match `/`.
//!
//! Input: any UTF-8 text, read as a whole as the policy file, and split at its first newline
//! into a glob pattern and a value to match.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use token_broker_policy::{Claims, Decision, Pattern, Policy, explain, lint};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, value) = text.split_once('\n').unwrap_or((text, ""));
    glob(pattern, value);
    policy(text);
});

fn glob(source: &str, value: &str) {
    let Ok(pattern) = Pattern::compile(source) else {
        return;
    };
    assert_eq!(pattern.source(), source);
    let matched = pattern.matches(value);
    if !source.contains(['*', '?', '[', '\\']) {
        assert_eq!(matched, source == value, "plain text compares as text");
    }
    if matched && !source.contains("**") {
        // Every `/` of a match is a literal `/` of the pattern.
        assert!(
            value.matches('/').count() <= source.matches('/').count(),
            "{source:?} matched {value:?} across a `/`"
        );
    }
}

fn policy(text: &str) {
    // Every session policy file reads as an empty JSON policy.
    let read = |_: &str| Ok("{}".to_owned());
    let policy = match token_broker_policy::parse(Path::new("policy.toml"), text, &read) {
        Ok(policy) => policy,
        Err(error) => {
            assert!(
                error.line <= text.matches('\n').count() + 1,
                "error line {} past the end: {error}",
                error.line
            );
            let _ = error.to_string();
            return;
        }
    };
    for finding in lint::lint(&policy) {
        let _ = format!("{finding:?}");
    }
    let issuer = policy
        .issuers
        .first()
        .map_or("https://gitlab.example.com", |i| i.url.as_str());
    let job = Claims::from_pairs(issuer, GITLAB_JOB.iter().copied());
    for explanation in explain::explain(&policy, &job, None) {
        let _ = explanation.to_string();
    }
    exact_rules_allow_their_values(&policy);
}

/// A rule of only plain values allows a token that carries exactly those values.
fn exact_rules_allow_their_values(policy: &Policy) {
    for grant in policy.grants() {
        'rules: for rule in &grant.rules {
            let mut pairs = Vec::new();
            for condition in &rule.conditions {
                match condition.patterns.first() {
                    Some(Pattern::Exact(text)) => {
                        pairs.push((condition.claim.as_str(), text.as_str()));
                    }
                    _ => continue 'rules,
                }
            }
            let claims = Claims::from_pairs(rule.issuer.as_str(), pairs);
            let decision = grant.decide(&claims);
            assert!(
                matches!(decision, Decision::Allow { .. }),
                "{} {:?} rule {} denies its own values: {decision:?}",
                grant.kind,
                grant.name,
                rule.number
            );
            for explanation in explain::explain(policy, &claims, Some(&grant.name)) {
                let _ = explanation.to_string();
            }
        }
    }
}

/// A CI job on protected `main` of `acme/web`, as GitLab sends its claims.
const GITLAB_JOB: &[(&str, &str)] = &[
    ("namespace_id", "72"),
    ("namespace_path", "acme"),
    ("project_id", "4242"),
    ("project_path", "acme/web"),
    ("user_id", "1001"),
    ("user_login", "ada"),
    ("pipeline_id", "1234567"),
    ("pipeline_source", "push"),
    ("job_id", "987"),
    ("ref", "main"),
    ("ref_type", "branch"),
    ("ref_path", "refs/heads/main"),
    ("ref_protected", "true"),
    ("environment", "production"),
    ("environment_protected", "true"),
    ("deployment_tier", "production"),
    ("runner_id", "12270852"),
    ("runner_environment", "gitlab-hosted"),
    ("project_visibility", "private"),
    ("sub", "project_path:acme/web:ref_type:branch:ref:main"),
    ("aud", "https://token-broker.example.com"),
];
