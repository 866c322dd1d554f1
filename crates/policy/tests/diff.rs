//! `policy diff`: each edit of the example policy, what the delta says about it, whether it is
//! marked widening, and which decisions it changes; a policy compared with itself says nothing.

use std::path::Path;

use serde_json::{Value, json};
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
    let cases: [Case; 19] = [
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
            "a session tag removed",
            "session_tags = [\"project_id\", \"namespace_id\"]",
            "session_tags = [\"project_id\"]",
            "role \"publish-artifacts\" session_tags: project_id, namespace_id → project_id",
            true,
            None,
        ),
        (
            "the same session tags in another order",
            "session_tags = [\"project_id\", \"namespace_id\"]",
            "session_tags = [\"namespace_id\", \"project_id\"]",
            "role \"publish-artifacts\" session_tags: project_id, namespace_id → namespace_id, project_id",
            false,
            None,
        ),
        (
            "a copied claim removed",
            "claims = [\"project_id\", \"project_path\", \"ref\", \"environment\"]",
            "claims = [\"project_id\", \"project_path\", \"ref\"]",
            "token \"aws-web-identity\" claims: project_id, project_path, ref, environment → project_id, project_path, ref",
            true,
            None,
        ),
        (
            "a copied claim added",
            "claims = [\"project_id\", \"project_path\", \"ref\", \"environment\"]",
            "claims = [\"project_id\", \"project_path\", \"ref\", \"environment\", \"pipeline_source\"]",
            "token \"aws-web-identity\" claims: project_id, project_path, ref, environment → project_id, project_path, ref, environment, pipeline_source",
            true,
            None,
        ),
        (
            "a session policy added",
            "session_tags = [\"project_id\", \"namespace_id\"]",
            "session_tags = [\"project_id\", \"namespace_id\"]\nsession_policy = \"policies/deploy-web-prod.json\"",
            "role \"publish-artifacts\" session_policy: none → {",
            false,
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

/// A session policy with one statement of each kind a change can touch.
const SESSION_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[
    {"Sid":"Deploy","Effect":"Allow","Action":["s3:PutObject","s3:DeleteObject"],
     "Resource":"arn:aws:s3:::acme-web-prod/*",
     "Condition":{"StringEquals":{"aws:RequestedRegion":"eu-west-1"}}},
    {"Effect":"Allow","Action":"cloudfront:CreateInvalidation","Resource":"*"},
    {"Effect":"Allow","NotAction":["iam:*","organizations:*"],"Resource":"*"},
    {"Effect":"Deny","Action":["s3:DeleteBucket","s3:PutBucketPolicy"],"Resource":"*"}
]}"#;

/// The delta when deploy-web-prod's session policy goes from `before` to `after`: a compiled
/// policy's session policy is edited in place, which also lets text that is not JSON through.
fn session_policy_delta(before: &str, after: &str) -> Delta {
    let with = |document: &str| {
        let mut policy = compile(&example());
        let role = policy
            .roles
            .iter_mut()
            .find(|r| r.grant.name == "deploy-web-prod")
            .unwrap();
        role.session_policy = Some(document.to_owned());
        policy
    };
    diff(&with(before), &with(after), &[])
}

fn edited(edit: fn(&mut Value)) -> String {
    let mut document: Value = serde_json::from_str(SESSION_POLICY).unwrap();
    edit(&mut document);
    document.to_string()
}

#[test]
fn a_session_policy_edit_narrows_only_when_it_provably_takes_something_out() {
    /// (what, the edit of SESSION_POLICY, widening?)
    type Case = (&'static str, fn(&mut Value), bool);
    let cases: [Case; 16] = [
        (
            "an action removed from an Allow",
            |d| d["Statement"][0]["Action"] = json!(["s3:PutObject"]),
            false,
        ),
        (
            "an Allow's action list made a single string",
            |d| d["Statement"][0]["Action"] = json!("s3:DeleteObject"),
            false,
        ),
        (
            "an Allow statement removed",
            |d| {
                d["Statement"].as_array_mut().unwrap().remove(1);
            },
            false,
        ),
        (
            "an Allow with NotAction removed whole",
            |d| {
                d["Statement"].as_array_mut().unwrap().remove(2);
            },
            false,
        ),
        (
            "statements reordered, one narrowed",
            |d| {
                let statements = d["Statement"].as_array_mut().unwrap();
                statements.reverse();
                statements[3]["Action"] = json!(["s3:DeleteObject"]);
            },
            false,
        ),
        (
            "an action added to an Allow",
            |d| {
                d["Statement"][0]["Action"] =
                    json!(["s3:PutObject", "s3:DeleteObject", "s3:GetObject"])
            },
            true,
        ),
        (
            "an action widened to a wildcard",
            |d| d["Statement"][0]["Action"] = json!(["s3:Put*", "s3:DeleteObject"]),
            true,
        ),
        (
            "a statement added",
            |d| {
                d["Statement"].as_array_mut().unwrap().push(json!(
                    {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}
                ));
            },
            true,
        ),
        (
            "a Resource changed",
            |d| d["Statement"][0]["Resource"] = json!("arn:aws:s3:::acme-web-*/*"),
            true,
        ),
        (
            "a Condition removed",
            |d| {
                d["Statement"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("Condition");
            },
            true,
        ),
        (
            "an Effect changed",
            |d| d["Statement"][3]["Effect"] = json!("Allow"),
            true,
        ),
        (
            "a Deny removed",
            |d| {
                d["Statement"].as_array_mut().unwrap().remove(3);
            },
            true,
        ),
        (
            "an action removed from a Deny",
            |d| d["Statement"][3]["Action"] = json!(["s3:DeleteBucket"]),
            true,
        ),
        (
            "an action removed from a NotAction",
            |d| d["Statement"][2]["NotAction"] = json!(["iam:*"]),
            true,
        ),
        (
            "NotAction turned into Action",
            |d| {
                let statement = d["Statement"][1].as_object_mut().unwrap();
                let actions = statement.remove("Action").unwrap();
                statement.insert("NotAction".into(), actions);
            },
            true,
        ),
        (
            "the Version changed",
            |d| d["Version"] = json!("2008-10-17"),
            true,
        ),
    ];
    for (what, edit, widening) in cases {
        let delta = session_policy_delta(SESSION_POLICY, &edited(edit));
        let [change] = delta.changes.as_slice() else {
            panic!("{what}: one change expected, got {delta:#?}");
        };
        assert!(
            matches!(
                change.what,
                What::Setting {
                    name: "session_policy",
                    ..
                }
            ),
            "{what}: {change:?}"
        );
        assert_eq!(change.widening, widening, "{what}");
        assert_eq!(delta.widens(), widening, "{what}");
        let mark = render_text(&delta);
        assert_eq!(mark.starts_with("WIDENS"), widening, "{what}: {mark}");
    }
}

#[test]
fn a_session_policy_that_is_not_json_or_is_removed_widens() {
    let not_json = session_policy_delta(SESSION_POLICY, "{\"Version\": ");
    assert!(not_json.changes[0].widening, "{not_json:#?}");
    let was_not_json = session_policy_delta("Statement: []", SESSION_POLICY);
    assert!(was_not_json.changes[0].widening, "{was_not_json:#?}");
    let unchanged = session_policy_delta(SESSION_POLICY, SESSION_POLICY);
    assert!(unchanged.is_empty(), "{unchanged:#?}");

    let mut without = compile(&example());
    without.roles[0].session_policy = None;
    let removed = diff(&compile(&example()), &without, &[]);
    assert!(removed.widens(), "{removed:#?}");
    let added = diff(&without, &compile(&example()), &[]);
    assert!(!added.widens(), "{added:#?}");
}

fn fixture(name: &str) -> Policy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/diff")
        .join(name);
    token_broker_policy::load(&path).unwrap()
}

#[test]
fn the_markdown_header_counts_exactly_the_rows_marked_widening() {
    // Three widening changes, two that are not, and jobs newly allowed: the old header counted
    // those jobs too, so it said more than the rows it sat above.
    let mut new = fixture("new.toml");
    new.tokens[0].grant.token_uses = Some(1);
    let delta = diff(&fixture("old.toml"), &new, &[]);
    let widening = delta.changes.iter().filter(|c| c.widening).count();
    assert_eq!((widening, delta.changes.len()), (3, 5), "{delta:#?}");
    assert!(delta.decisions.iter().any(|d| d.after), "{delta:#?}");

    let markdown = render_markdown(&delta);
    let marked = markdown
        .lines()
        .filter(|l| l.starts_with("| ⚠ widens |"))
        .count();
    let unmarked = markdown.lines().filter(|l| l.starts_with("|  |")).count();
    assert_eq!((marked, unmarked), (3, 2), "{markdown}");
    assert!(
        markdown.contains(
            "**⚠ This change widens access** (3 widening change(s), marked ⚠ and listed first)."
        ),
        "{markdown}"
    );
    let text = render_text(&delta);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("WIDENS")).count(),
        3,
        "{text}"
    );
}
