//! A policy tree served by the broker: a team's role under its delegate's guardrail. A job the
//! team's rule admits gets credentials only inside the guardrail; outside it the 403 says the
//! guardrail is what failed (the caller's project is named by a rule, so it is told, as for any
//! denial); a caller no rule names learns nothing of the tree.

use serde_json::json;

use crate::helpers::*;

const ROOT: &str = r#"
audience = "https://token-broker.example.com"

[[issuer]]
url = "{issuer}"

[delegate.web]
file = "teams/web.toml"
require = { namespace_id = "72", ref_protected = "true" }
role_arns = ["arn:aws:iam::123456789012:role/web-*"]
max_duration = "1h"
"#;

/// The web team's file: one rule that names the project by path only (its glob would reach
/// any namespace, were it not for the guardrail).
const WEB: &str = r#"
[role.web-deploy]
arn = "arn:aws:iam::123456789012:role/web-deploy"

[[role.web-deploy.allow]]
project_path = "*/web"
allow_path_only = true
ref_type = "branch"
ref = "main"
"#;

async fn tree_app() -> TestApp {
    spawn_app_with(AppSpec {
        policy: ROOT.to_owned(),
        files: vec![("teams/web.toml".to_owned(), WEB.to_owned())],
        ..AppSpec::default()
    })
    .await
}

#[tokio::test]
async fn a_team_role_admits_jobs_only_inside_its_guardrail() {
    let app = tree_app().await;
    // acme/web in namespace 72, protected main: the rule and the guardrail hold.
    let (token, job_id) = app.token(json!({"project_path": "acme/web", "namespace_id": "72"}));
    let response = app.credentials(&token, "role=web-deploy").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        recorded_assume_roles(&format!("gitlab-4242-{job_id}"))
            .await
            .len(),
        1
    );

    // evil/web in namespace 666: the team's glob matches, the guardrail does not.
    let (token, job_id) = app.token(json!({"project_path": "evil/web", "namespace_id": "666"}));
    let response = app.credentials(&token, "role=web-deploy").await;
    app.assert_error(
        response,
        403,
        "access_denied",
        "role \"web-deploy\": rule 1 matches, but claim \"namespace_id\" = \"666\" is outside the guardrail of delegate \"web\"",
    )
    .await;
    assert!(
        recorded_assume_roles(&format!("gitlab-4242-{job_id}"))
            .await
            .is_empty()
    );

    // In namespace 72 but from an unprotected ref: the guardrail's second condition.
    let (token, _) = app
        .token(json!({"project_path": "acme/web", "namespace_id": "72", "ref_protected": "false"}));
    let response = app.credentials(&token, "role=web-deploy").await;
    app.assert_error(
        response,
        403,
        "access_denied",
        "claim \"ref_protected\" = \"false\" is outside the guardrail",
    )
    .await;
}

#[tokio::test]
async fn a_caller_no_rule_names_learns_nothing_of_the_tree() {
    let app = tree_app().await;
    let (token, _) = app.token(json!({"project_path": "evil/site", "namespace_id": "666"}));
    let response = app.credentials(&token, "role=web-deploy").await;
    let body = app.assert_error(response, 403, "access_denied", "").await;
    let description = body["error_description"].as_str().unwrap();
    assert!(
        !description.contains("guardrail") && !description.contains("web\""),
        "{description}"
    );
}
