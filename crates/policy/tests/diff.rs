//! `policy diff`: each edit of the example policy, what the delta says about it, whether it is
//! marked widening, and which decisions it changes; a policy compared with itself says nothing.

use std::path::Path;

use token_broker_policy::diff::{
    Delta, Scope, What, diff, render_json, render_markdown, render_text,
};
use token_broker_policy::{GrantKind, Policy, parse};

fn example() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy/policy.toml");
    std::fs::read_to_string(path).unwrap()
}

fn compile(text: &str) -> Policy {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy");
    parse(&dir.join("policy.toml"), text, &|file| {
        std::fs::read_to_string(dir.join(file)).map_err(|e| e.to_string())
    })
    .unwrap()
}

/// The delta of one edit (every `from` replaced by `to`) of the example policy.
fn delta_of(from: &str, to: &str) -> Delta {
    let old = example();
    assert!(old.contains(from), "{from:?} is not in the example");
    let new = old.replace(from, to);
    diff(&compile(&old), &compile(&new), &[])
}

const DEPLOY_RULE: &str = "project_id = \"4242\"\nref_type = \"branch\"\nref = \"main\"\nref_protected = \"true\"\nenvironment = \"production\"";

#[test]
fn a_policy_compared_with_itself_reports_nothing() {
    let policy = compile(&example());
    let delta = diff(&policy, &policy, &[]);
    assert!(delta.is_empty(), "{delta:#?}");
    assert!(!delta.widens());
    assert_eq!(render_text(&delta), "no access changes\n");
    assert!(render_markdown(&delta).contains("No access changes."));
}

#[test]
fn each_edit_is_reported_and_widening_ones_are_marked() {
    /// (what, from, to, the change's description, widening?, a decision line that must appear)
    type Case<'a> = (&'a str, &'a str, &'a str, &'a str, bool, Option<&'a str>);
    let cases: [Case; 14] = [
        (
            "the issuer's keys fetched from elsewhere",
            "url = \"https://gitlab.example.com\"",
            "url = \"https://gitlab.example.com\"\njwks_url = \"https://keys.example.net/jwks\"",
            "trust \"https://gitlab.example.com\" jwks_url: https://gitlab.example.com/oauth/discovery/keys → https://keys.example.net/jwks",
            true,
            None,
        ),
        (
            "another algorithm accepted",
            "url = \"https://gitlab.example.com\"",
            "url = \"https://gitlab.example.com\"\nalgorithms = [\"RS256\", \"ES256\"]",
            "trust \"https://gitlab.example.com\" algorithms: [RS256] → [RS256, ES256]",
            true,
            None,
        ),
        (
            "tokens minted for another service accepted",
            "audience = \"https://token-broker.example.com\"",
            "audience = \"https://other-service.example.com\"",
            "trust \"policy\" audience: https://token-broker.example.com → https://other-service.example.com",
            true,
            None,
        ),
        (
            "a session tag added",
            "session_tags = [\"project_id\", \"namespace_id\"]",
            "session_tags = [\"project_id\", \"namespace_id\", \"pipeline_source\"]",
            "role \"publish-artifacts\" session_tags: project_id, namespace_id → project_id, namespace_id, pipeline_source",
            true,
            None,
        ),
        (
            "a use limit set",
            "max_duration = \"30m\"",
            "max_duration = \"30m\"\ntoken_uses = 1",
            "role \"publish-artifacts\" token_uses: unlimited → 1",
            false,
            None,
        ),
        (
            "a rule added",
            "[token.aws-web-identity]",
            "[[role.deploy-web-prod.allow]]\nproject_id = \"5555\"\nref_type = \"branch\"\nref = \"main\"\nref_protected = \"true\"\nenvironment = \"production\"\n\n[token.aws-web-identity]",
            "role \"deploy-web-prod\" rule 2 added",
            true,
            Some(
                "project 5555 · branch main (protected) · env production: role \"deploy-web-prod\" deny → ALLOW",
            ),
        ),
        (
            "a glob widening main to *",
            DEPLOY_RULE,
            "project_id = \"4242\"\nref_type = \"branch\"\nref = \"*\"\nref_protected = \"true\"\nenvironment = \"production\"",
            "role \"deploy-web-prod\" rule 1 changed",
            true,
            Some(
                "project 4242 · branch x (protected) · env production (protected): role \"deploy-web-prod\" deny → ALLOW",
            ),
        ),
        (
            "a condition added narrows",
            "ref = [\"v*\", \"release-*\"]\nref_protected = \"true\"",
            "ref = [\"v*\", \"release-*\"]\nref_protected = \"true\"\npipeline_source = \"push\"",
            "role \"publish-artifacts\" rule 1 changed",
            false,
            None,
        ),
        (
            "a condition dropped widens",
            "environment_protected = \"true\"\n",
            "",
            "role \"deploy-web-prod\" rule 1 changed",
            true,
            Some(
                "project 4242 · branch main (protected) · env production: role \"deploy-web-prod\" deny → ALLOW",
            ),
        ),
        (
            "a role renamed",
            "role.publish-artifacts",
            "role.publish",
            "role \"publish\" added with 1 rule(s)",
            true,
            Some("role \"publish\" deny → ALLOW"),
        ),
        (
            "a role's ARN changed",
            "role/token-broker-target-publish-artifacts",
            "role/admin",
            "role \"publish-artifacts\" arn: arn:aws:iam::123456789012:role/token-broker-target-publish-artifacts → arn:aws:iam::123456789012:role/admin",
            true,
            None,
        ),
        (
            "a longer session",
            "max_duration = \"30m\"",
            "max_duration = \"1h\"",
            "role \"publish-artifacts\" max_duration: 30m → 1h",
            true,
            None,
        ),
        (
            "a shorter session",
            "max_duration = \"1h\"",
            "max_duration = \"15m\"",
            "role \"deploy-web-prod\" max_duration: 1h → 15m",
            false,
            None,
        ),
        (
            "a session policy dropped",
            "session_policy = \"policies/deploy-web-prod.json\"\n",
            "",
            "role \"deploy-web-prod\" session_policy:",
            true,
            None,
        ),
    ];
    for (what, from, to, change, widening, decision) in cases {
        let delta = delta_of(from, to);
        let text = render_text(&delta);
        let found = delta
            .changes
            .iter()
            .find(|c| {
                render_text(&Delta {
                    changes: vec![(*c).clone()],
                    decisions: vec![],
                })
                .contains(change)
            })
            .unwrap_or_else(|| panic!("{what}: no change {change:?} in\n{text}"));
        assert_eq!(found.widening, widening, "{what}:\n{text}");
        assert_eq!(delta.widens(), widening, "{what}:\n{text}");
        if let Some(decision) = decision {
            assert!(
                text.contains(decision),
                "{what}: no {decision:?} in\n{text}"
            );
        }
        if widening {
            let first = text.lines().next().unwrap();
            assert!(
                first.starts_with("WIDENS"),
                "{what}: widening first:\n{text}"
            );
        }
    }
}

#[test]
fn a_removed_rule_narrows_and_names_the_jobs_that_lose_access() {
    let delta = delta_of(
        "[[token.aws-web-identity.allow]]\nproject_id = \"4242\"\nref_type = \"branch\"\nref = \"main\"\nref_protected = \"true\"",
        "[[token.aws-web-identity.allow]]\nproject_id = \"4242\"\nref_type = \"branch\"\nref = \"main\"\nref_protected = \"true\"\n\n[[token.aws-web-identity.allow]]\nproject_id = \"9\"",
    );
    assert!(delta.widens());
    let old = example().replacen(
        "[[token.aws-web-identity.allow]]\nproject_id = \"4242\"\nref_type = \"branch\"\nref = \"main\"\nref_protected = \"true\"",
        "[[token.aws-web-identity.allow]]\nproject_id = \"4242\"\nref_type = \"branch\"\nref = \"main\"\nref_protected = \"true\"\n\n[[token.aws-web-identity.allow]]\nproject_id = \"9\"",
        1,
    );
    let narrowed = diff(&compile(&old), &compile(&example()), &[]);
    assert!(!narrowed.widens(), "{narrowed:#?}");
    let removed = &narrowed.changes[0];
    assert_eq!(removed.kind, Scope::Grant(GrantKind::Token));
    assert!(matches!(&removed.what, What::RuleRemoved(rule) if rule.text == "project_id = \"9\""));
    assert!(
        narrowed
            .decisions
            .iter()
            .any(|d| d.probe == "project 9" && d.before && !d.after),
        "{narrowed:#?}"
    );
}

#[test]
fn the_reports_agree_and_markdown_cannot_be_broken_out_of() {
    let delta = delta_of(
        "[token.aws-web-identity]",
        "[[role.deploy-web-prod.allow]]\nproject_id = \"5555\"\nref = \"a|b<script>\"\n\n[token.aws-web-identity]",
    );
    let markdown = render_markdown(&delta);
    assert!(
        markdown.contains("**⚠ This change widens access**"),
        "{markdown}"
    );
    assert!(!markdown.contains("<script>"), "{markdown}");
    for line in markdown.lines().filter(|l| l.starts_with('|')) {
        let unescaped = line.replace("\\|", "");
        let cells = unescaped.matches('|').count();
        assert!(cells == 4 || cells == 5, "a cell broke out: {line}");
    }
    let json = render_json(&delta);
    assert_eq!(json["widening"], true);
    assert_eq!(json["changes"][0]["change"], "rule_added");
    assert_eq!(json["changes"][0]["after"]["number"], 2);
    assert!(
        json["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["after"] == "allow")
    );
}
