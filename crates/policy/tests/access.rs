//! `policy access` on the example policy: every rule as a row, and one project's view.

use std::path::Path;

use token_broker_policy::access::{Query, access, access_for, render_markdown, render_text};

fn example() -> token_broker_policy::Policy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy/policy.toml");
    token_broker_policy::load(&path).unwrap()
}

#[test]
fn every_rule_of_the_example_is_a_row_saying_who_which_refs_and_environments() {
    let rows = access(&example());
    let deploy = rows.iter().find(|r| r.grant == "deploy-web-prod").unwrap();
    assert_eq!(deploy.who, "project_id 4242");
    assert_eq!(deploy.refs, "branch main (protected)");
    assert_eq!(deploy.environments, "production (protected)");
    assert!(
        deploy
            .gives
            .contains("role/token-broker-target-deploy-web-prod"),
        "{}",
        deploy.gives
    );
    let publish = rows
        .iter()
        .find(|r| r.grant == "publish-artifacts")
        .unwrap();
    assert_eq!(publish.who, "namespace_id 72 · project_path acme/*");
    assert_eq!(publish.refs, "tag v* | release-* (protected)");
    assert_eq!(publish.environments, "any");
    let text = render_text(&rows);
    assert!(text.contains("role \"deploy-web-prod\" → arn:aws:iam::123456789012:role/token-broker-target-deploy-web-prod (≤ 3600 s)"), "{text}");
    assert_eq!(render_markdown(&rows).lines().count(), rows.len() + 2);
}

#[test]
fn one_projects_view_keeps_the_rules_that_can_admit_it() {
    let policy = example();
    let grants = |query: &Query| -> Vec<String> {
        access_for(&policy, query)
            .iter()
            .map(|r| format!("{} {}", r.grant, r.rule))
            .collect()
    };
    let project = |id: &str| Query {
        project_id: id.into(),
        ..Query::default()
    };
    let all_4242 = grants(&project("4242"));
    assert!(
        all_4242.contains(&"deploy-web-prod 1".to_string()),
        "{all_4242:?}"
    );
    assert!(
        all_4242.contains(&"aws-web-identity 1".to_string()),
        "{all_4242:?}"
    );
    // Namespace 72's rule may admit any project in it, 4242 included.
    assert!(
        all_4242.contains(&"publish-artifacts 1".to_string()),
        "{all_4242:?}"
    );
    let other = grants(&project("9999"));
    assert!(
        !other.iter().any(|g| g.starts_with("deploy-web-prod")),
        "{other:?}"
    );
    let feature = grants(&Query {
        project_id: "4242".into(),
        git_ref: Some("feature/x".into()),
        environment: None,
    });
    assert!(
        !feature.iter().any(|g| g.starts_with("deploy-web-prod")),
        "{feature:?}"
    );
    assert!(
        !feature.iter().any(|g| g.starts_with("publish-artifacts")),
        "{feature:?}"
    );
}

#[test]
fn the_markdown_table_renders_policy_values_as_text_never_as_markup() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy/policy.toml"),
    )
    .unwrap()
    .replace(
        "project_path = \"acme/*\"",
        "project_path = \"acme/@all<img src=x>|(y)\"",
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy");
    let policy = token_broker_policy::parse(&dir.join("policy.toml"), &text, &|file| {
        std::fs::read_to_string(dir.join(file)).map_err(|e| e.to_string())
    })
    .unwrap();
    let markdown = render_markdown(&access(&policy));
    assert!(
        markdown.contains(r"acme/\@all\<img src=x\>\|\(y\)"),
        "{markdown}"
    );
    for line in markdown.lines() {
        assert_eq!(line.replace(r"\|", "").matches('|').count(), 8, "{line}");
    }
}
