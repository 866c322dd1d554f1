//! The exchange end to end: allowed jobs get working credentials, STS gets exactly the inputs the
//! spec names, and denied jobs get a 403 that names their failing claim and no STS call.

use aws_sdk_sts::config::Credentials;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn allowed_exchange_returns_credentials_that_moto_accepts() {
    let app = spawn_app().await;
    let (token, job_id) = app.token(json!({}));

    let response = app.credentials(&token, "role=deploy-web-prod").await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_credential_process_json(&body, "the answer");
    let expiration = body["Expiration"].as_str().unwrap();
    assert!(
        expiration.ends_with('Z') && expiration.contains('T'),
        "RFC 3339: {expiration}"
    );
    let credentials = Credentials::new(
        body["AccessKeyId"].as_str().unwrap(),
        body["SecretAccessKey"].as_str().unwrap(),
        body["SessionToken"].as_str().map(str::to_owned),
        None,
        "broker",
    );
    let sts = aws_sdk_sts::Client::new(&moto::sdk_config_with(credentials));
    let identity = sts.get_caller_identity().send().await.unwrap();
    assert_eq!(
        identity.arn().unwrap(),
        format!("arn:aws:sts::123456789012:assumed-role/deploy-web-prod/gitlab-4242-{job_id}")
    );
}

#[tokio::test]
async fn sts_receives_session_name_source_identity_tags_policy_and_duration() {
    let app = spawn_app().await;
    let (token, job_id) = app.token(json!({}));

    let response = app.credentials(&token, "role=deploy-web-prod").await;
    assert_eq!(response.status(), 200);

    let calls = recorded_assume_roles(&format!("gitlab-4242-{job_id}")).await;
    assert_eq!(calls.len(), 1, "exactly one AssumeRole");
    let call = &calls[0];
    assert_eq!(
        call["RoleArn"],
        "arn:aws:iam::123456789012:role/deploy-web-prod"
    );
    assert_eq!(call["SourceIdentity"], "ada");
    let duration: i64 = call["DurationSeconds"].parse().unwrap();
    assert!(
        (3590..=3600).contains(&duration),
        "min(role 1h, token ~1h left): {duration}"
    );
    let policy: Value = serde_json::from_str(&call["Policy"]).unwrap();
    assert_eq!(
        policy,
        serde_json::from_str::<Value>(SESSION_POLICY).unwrap()
    );
    let tags: Vec<(String, String)> = (1..=3)
        .map(|i| {
            (
                call[&format!("Tags.member.{i}.Key")].clone(),
                call[&format!("Tags.member.{i}.Value")].clone(),
            )
        })
        .collect();
    assert_eq!(
        tags,
        [
            ("gitlab:project_id", "4242"),
            ("gitlab:ref", "main"),
            ("gitlab:environment", "production")
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
    assert!(!call.contains_key("Tags.member.4.Key"));
}

#[tokio::test]
async fn duration_is_the_smallest_of_request_role_and_token_lifetime() {
    let app = spawn_app().await;
    let cases = [
        // (token lifetime left, requested, expected range)
        (3600, "&duration_seconds=1200", 1200..=1200),
        (3600, "&duration_seconds=43200", 3590..=3600),
        (1500, "", 1490..=1500),
        (300, "", 900..=900),
    ];
    for (left, requested, expected) in cases {
        let now = local_issuer::claims::now();
        let (token, job_id) =
            app.token(json!({"iat": now - 10, "nbf": now - 15, "exp": now + left}));
        let response = app
            .credentials(&token, &format!("role=deploy-web-prod{requested}"))
            .await;
        assert_eq!(response.status(), 200, "{left} {requested}");
        let body: Value = response.json().await.unwrap();
        let sent: i64 =
            recorded_assume_roles(&format!("gitlab-4242-{job_id}")).await[0]["DurationSeconds"]
                .parse()
                .unwrap();
        assert!(expected.contains(&sent), "{left} {requested}: sent {sent}");
        assert_eq!(body["DurationSeconds"], sent);
    }
}

#[tokio::test]
async fn role_and_duration_can_come_in_a_json_body() {
    let app = spawn_app().await;
    let (token, job_id) = app.token(json!({}));
    let response = app
        .client
        .post(format!("{}/v1/credentials", app.address))
        .bearer_auth(&token)
        .json(&json!({"role": "read-only", "duration_seconds": 900}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let calls = recorded_assume_roles(&format!("gitlab-4242-{job_id}")).await;
    assert_eq!(
        calls[0]["RoleArn"],
        "arn:aws:iam::123456789012:role/read-only"
    );
    assert_eq!(calls[0]["DurationSeconds"], "900");
    assert!(!calls[0].contains_key("Policy") && !calls[0].contains_key("Tags.member.1.Key"));
}

#[tokio::test]
async fn format_env_returns_export_lines_for_eval() {
    let app = spawn_app().await;
    let (token, _) = app.token(json!({}));
    let response = app.credentials(&token, "role=read-only&format=env").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    let names: Vec<&str> = text.lines().map(|l| l.split('=').next().unwrap()).collect();
    assert_eq!(
        names,
        [
            "export AWS_ACCESS_KEY_ID",
            "export AWS_SECRET_ACCESS_KEY",
            "export AWS_SESSION_TOKEN",
            "export AWS_CREDENTIAL_EXPIRATION"
        ]
    );
    assert!(
        text.lines()
            .all(|l| l.ends_with('\'') && l.matches('\'').count() == 2),
        "{text}"
    );
}

#[tokio::test]
async fn jobs_outside_the_policy_are_denied_with_their_failing_claim_and_sts_is_not_called() {
    let app = spawn_app().await;
    let cases = [
        ("wrong project", json!({"project_id": "9999"}), "project_id"),
        (
            "wrong ref",
            json!({"ref": "feature/x", "ref_path": "refs/heads/feature/x"}),
            "ref",
        ),
        (
            "unprotected ref",
            json!({"ref_protected": "false"}),
            "ref_protected",
        ),
        (
            "tag named like the branch",
            json!({"ref_type": "tag"}),
            "ref_type",
        ),
        (
            "branch named like a release tag",
            json!({"ref": "v1.0", "environment": null}),
            "ref_type",
        ),
        (
            "no environment",
            json!({"environment": null}),
            "environment",
        ),
    ];
    for (name, overrides, claim) in cases {
        let (claims, job_id) = app.claims(overrides);
        let token = app.issuer.mint(&claims);
        let response = app.credentials(&token, "role=deploy-web-prod").await;
        let body = app
            .assert_error(
                response,
                403,
                "access_denied",
                &format!("claim \"{claim}\""),
            )
            .await;
        assert!(
            !body.to_string().contains("4242\\\" does"),
            "{name}: must not reveal other rules' values"
        );
        // Exactly the failing claim and the caller's own value of it, nothing of the rule's.
        let description = body["error_description"].as_str().unwrap();
        let told = description
            .strip_prefix(&format!("role \"deploy-web-prod\": claim \"{claim}\""))
            .unwrap_or_else(|| panic!("{name}: {description}"));
        let rule = match claims.get(claim) {
            Some(value) => told.strip_prefix(&format!(" = {value} does not satisfy rule ")),
            None => told
                .strip_prefix(" is missing (rule ")
                .and_then(|rest| rest.strip_suffix(')')),
        };
        assert!(
            rule.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
            "{name}: {description}"
        );
        assert!(
            recorded_assume_roles(&format!("gitlab-4242-{job_id}"))
                .await
                .is_empty(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn an_unknown_role_is_denied() {
    let app = spawn_app().await;
    let (token, _) = app.token(json!({}));
    let response = app.credentials(&token, "role=admin").await;
    app.assert_error(response, 403, "access_denied", "not defined")
        .await;
}

#[tokio::test]
async fn claim_values_sts_would_refuse_are_denied_not_rewritten() {
    let app = spawn_app().await;
    let cases = [
        ("tagged", json!({"ref": "feat;x"}), "ref"),
        ("tagged", json!({"ref": "x".repeat(257)}), "ref"),
        (
            "read-only",
            json!({"user_login": null, "user_id": null}),
            "user_id",
        ),
    ];
    for (role, overrides, claim) in cases {
        let (token, job_id) = app.token(overrides);
        let response = app.credentials(&token, &format!("role={role}")).await;
        app.assert_error(
            response,
            403,
            "access_denied",
            &format!("claim \"{claim}\""),
        )
        .await;
        assert!(
            recorded_assume_roles(&format!("gitlab-4242-{job_id}"))
                .await
                .is_empty()
        );
    }
    let (token, _) = app.token(json!({"ref": "release/1.0+build@x"}));
    assert_eq!(
        app.credentials(&token, "role=tagged").await.status(),
        200,
        "legal tag characters pass"
    );
}

#[tokio::test]
async fn policy_explain_and_the_403_give_the_same_reason() {
    let app = spawn_app().await;
    let (claims, _) = app.claims(json!({"ref": "feature/x", "ref_protected": "false"}));
    let claims_file = app.policy_path().with_file_name("claims.json");
    std::fs::write(&claims_file, claims.to_string()).unwrap();
    let explain = std::process::Command::new(env!("CARGO_BIN_EXE_token-broker"))
        .args([
            "policy",
            "explain",
            app.policy_path().to_str().unwrap(),
            "--claims",
            claims_file.to_str().unwrap(),
        ])
        .args(["--role", "deploy-web-prod"])
        .output()
        .unwrap();
    let explained = String::from_utf8(explain.stdout).unwrap();
    let reason = explained
        .lines()
        .next()
        .unwrap()
        .split_once("DENY: ")
        .unwrap()
        .1
        .to_owned();
    assert!(reason.contains("claim \"ref\""), "{explained}");

    let response = app
        .credentials(&app.issuer.mint(&claims), "role=deploy-web-prod")
        .await;
    let body = app.assert_error(response, 403, "access_denied", "").await;
    assert_eq!(body["error_description"], reason);
}

/// A fork's merge-request pipeline run in the parent project (GitLab ≥ 18.2.2: `project_*` name
/// the fork, `job_project_*` the parent), as it comes and naming the protected production
/// environment: every role of the test policy refuses it and STS is never called (its token
/// grant is refused at the policy level: crates/policy/tests/lint.rs).
#[tokio::test]
async fn a_forks_merge_request_run_in_the_parent_project_gets_nothing() {
    let app = spawn_app().await;
    let job_id = unique_job_id();
    let fork = local_issuer::claims::fork_merge_request(app.issuer.url(), AUDIENCE, job_id);
    for overrides in [
        json!({}),
        json!({"environment": "production", "environment_protected": "true"}),
        json!({"ref": "refs/merge-requests/7/head", "ref_path": "refs/merge-requests/7/head"}),
    ] {
        let token = app
            .issuer
            .mint(&local_issuer::claims::with(fork.clone(), &overrides));
        for role in ["deploy-web-prod", "read-only", "tagged"] {
            let response = app.credentials(&token, &format!("role={role}")).await;
            assert_eq!(response.status(), 403, "{role} {overrides}");
        }
    }
    assert!(
        recorded_assume_roles(&format!("gitlab-9999-{job_id}"))
            .await
            .is_empty()
    );
}
