//! `policy access` on the example policy: every rule as a row, and one project's view.

use std::path::Path;

use token_broker_policy::access::{
    Query, access, access_for, render_json, render_markdown, render_text,
};

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

/// A role asking for 2 h, a rule with a typo in a claim name, and a token whose only rule has
/// one: `tests/fixtures/access/policy.toml`.
fn fixture() -> token_broker_policy::Policy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/access/policy.toml");
    token_broker_policy::load(&path).unwrap()
}

const CAPPED: &str = "arn:aws:iam::123456789012:role/token-broker-target-deploy-web-prod (≤ 3600 s; asks 7200 s, capped at 1 h by role chaining)";

#[test]
fn rules_that_can_never_match_are_listed_apart_with_the_lint_that_proves_it() {
    let rows = access(&fixture());
    let never: Vec<String> = rows
        .iter()
        .filter(|r| !r.can_match())
        .map(|r| format!("{} {} {:?}", r.grant, r.rule, r.never_matches[0].lint))
        .collect();
    assert_eq!(
        never,
        [
            "deploy-web-prod 2 \"TB105\"",
            "aws-web-identity 1 \"TB105\""
        ]
    );
    let text = render_text(&rows);
    let (admitting, apart) = text.split_once("\nrules that can never match:\n").unwrap();
    assert_eq!(
        admitting,
        format!(
            "role \"deploy-web-prod\" → {CAPPED}\n  rule 1 (line 12): project_id 4242 · branch main (protected) · env production\nrole \"read-only\" → arn:aws:iam::123456789012:role/token-broker-target-read-only (≤ 1800 s)\n  rule 1 (line 29): namespace_id 72 · any branch (protected) · env any\n"
        ),
        "{text}"
    );
    assert_eq!(
        apart,
        "  role \"deploy-web-prod\" rule 2 (line 19): never matches [TB105: GitLab issues no claim \"projectid\"; did you mean \"project_id\"?]\n  token \"aws-web-identity\" rule 1 (line 37): never matches [TB105: GitLab issues no claim \"pipeline_sorce\"; did you mean \"pipeline_source\"?]\n",
        "{text}"
    );
}

#[test]
fn markdown_and_json_keep_the_rules_that_can_never_match_apart_too() {
    let rows = access(&fixture());
    let markdown = render_markdown(&rows);
    let (table, apart) = markdown
        .split_once("\n**Rules that can never match** (they admit no one):\n\n")
        .unwrap();
    assert_eq!(table.lines().count(), 2 + 2, "{markdown}");
    assert!(!table.contains("projectid"), "{markdown}");
    assert_eq!(apart.lines().count(), 2 + 2, "{markdown}");
    assert!(
        apart.contains("| role deploy-web-prod | 2 (line 19) | \\[TB105: GitLab issues no claim \"projectid\"; did you mean \"project\\_id\"?\\] |"),
        "{markdown}"
    );

    let json = render_json(&rows);
    let grants = |list: &str| -> Vec<String> {
        json[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| format!("{} {}", r["grant"].as_str().unwrap(), r["rule"]))
            .collect()
    };
    assert_eq!(grants("access"), ["deploy-web-prod 1", "read-only 1"]);
    assert_eq!(
        grants("never_matches"),
        ["deploy-web-prod 2", "aws-web-identity 1"]
    );
    assert_eq!(json["never_matches"][0]["findings"][0]["lint"], "TB105");
    assert_eq!(
        json["never_matches"][1]["findings"][0]["reason"],
        "GitLab issues no claim \"pipeline_sorce\"; did you mean \"pipeline_source\"?"
    );
}

#[test]
fn a_project_whose_only_rule_never_matches_is_told_nothing_admits_it_and_why() {
    let rows = access_for(
        &fixture(),
        &Query {
            project_id: "4343".into(),
            git_ref: Some("main".into()),
            environment: None,
        },
    );
    // read-only's namespace rule is kept, on its condition; the rule meant for 4343 only apart.
    let text = render_text(&rows);
    assert!(text.starts_with("role \"read-only\""), "{text}");
    let deploy: Vec<_> = rows
        .into_iter()
        .filter(|r| r.grant == "deploy-web-prod")
        .collect();
    assert_eq!(
        render_text(&deploy),
        "no role or token admits this\n\nrules that can never match:\n  role \"deploy-web-prod\" rule 2 (line 19): never matches [TB105: GitLab issues no claim \"projectid\"; did you mean \"project_id\"?]\n"
    );
}

#[test]
fn sessions_are_shown_as_long_as_role_chaining_lets_them_be_in_every_format() {
    let rows = access(&fixture());
    let gives = |grant: &str| {
        rows.iter()
            .find(|r| r.grant == grant)
            .unwrap()
            .gives
            .clone()
    };
    // 2 h asked, 1 h given; 30 min asked and given; a token's lifetime is not a role session.
    assert_eq!(gives("deploy-web-prod"), CAPPED);
    assert_eq!(
        gives("read-only"),
        "arn:aws:iam::123456789012:role/token-broker-target-read-only (≤ 1800 s)"
    );
    assert_eq!(gives("aws-web-identity"), "aud sts.amazonaws.com (≤ 900 s)");
    assert!(render_text(&rows).contains(CAPPED));
    assert!(
        render_markdown(&rows)
            .contains(r"\(≤ 3600 s; asks 7200 s, capped at 1 h by role chaining\)"),
        "{}",
        render_markdown(&rows)
    );
    assert_eq!(render_json(&rows)["access"][0]["gives"], CAPPED);
    // Exactly 1 h is no cap.
    let example = access(&example());
    assert!(
        example[0].gives.ends_with("(≤ 3600 s)"),
        "{}",
        example[0].gives
    );
}

/// `tests/fixtures/access-tree/`: a root role, and two delegates' files (payments: namespace 77
/// or 78; search: namespace 90, protected refs, a push or web pipeline), one rule of which has
/// a typo in a claim name.
fn tree_fixture() -> token_broker_policy::Policy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/access-tree/policy.toml");
    token_broker_policy::load(&path).unwrap()
}

#[test]
fn a_delegated_grant_says_where_it_comes_from_and_its_guardrail_is_part_of_who_gets_it() {
    let rows = access(&tree_fixture());
    let text = render_text(&rows);
    assert_eq!(
        text,
        "role \"platform-deploy\" → arn:aws:iam::123456789012:role/token-broker-target-platform-deploy (≤ 3600 s)
  rule 1 (line 12): project_id 100 · branch main (protected) · env any
role \"payments-deploy\" (delegate payments, policies/payments.toml) → arn:aws:iam::111122223333:role/payments-deploy (≤ 3600 s)
  rule 1 (line 6): namespace_id 77 | 78 (guardrail) · project_id 7701 · branch main (protected) · env production (protected)
role \"payments-read\" (delegate payments, policies/payments.toml) → arn:aws:iam::111122223333:role/payments-read (≤ 1800 s)
  rule 1 (line 18): namespace_id 77 | 78 (guardrail) · namespace_id 77 · any ref · env any
role \"search-index\" (delegate search, policies/search.toml) → arn:aws:iam::444455556666:role/search-index (≤ 1800 s)
  rule 1 (line 8): namespace_id 90 (guardrail) · project_id 9001 · ref_protected true (guardrail) · branch main · env any · pipeline_source push | web (guardrail)
token \"search-vault\" (delegate search, policies/search.toml) → aud https://vault.example.com (≤ 900 s)
  rule 1 (line 16): namespace_id 90 (guardrail) · project_id 9001 · ref_protected true (guardrail) · env any · pipeline_source push | web (guardrail)

rules that can never match:
  role \"payments-read\" rule 2 (line 21 of policies/payments.toml): never matches [TB105: GitLab issues no claim \"projectid\"; did you mean \"project_id\"?]
"
    );
    let row = |grant: &str| rows.iter().find(|r| r.grant == grant).unwrap();
    assert_eq!(
        (
            row("platform-deploy").delegate.as_deref(),
            row("platform-deploy").file.as_deref()
        ),
        (None, None)
    );
    assert_eq!(
        (
            row("search-vault").delegate.as_deref(),
            row("search-vault").file.as_deref()
        ),
        (Some("search"), Some("policies/search.toml"))
    );
    // A guardrail on refs where the rule names none: no "any ref" beside it.
    assert_eq!(row("search-vault").refs, "ref_protected true (guardrail)");
}

#[test]
fn markdown_has_a_delegate_column_when_a_grant_is_delegated_and_json_a_delegate_and_file() {
    let rows = access(&tree_fixture());
    let markdown = render_markdown(&rows);
    let (table, apart) = markdown
        .split_once("\n**Rules that can never match** (they admit no one):\n\n")
        .unwrap();
    assert!(
        table.starts_with(
            "| grant | delegate | gives | rule | who | refs | environments | also |\n"
        ),
        "{markdown}"
    );
    for line in table.lines() {
        assert_eq!(line.replace(r"\|", "").matches('|').count(), 9, "{line}");
    }
    assert!(
        table.contains("| role platform-deploy |  | arn:"),
        "the root's grants have an empty delegate cell: {markdown}"
    );
    assert!(
        table.contains("| role payments-deploy | payments \\(policies/payments.toml\\) | arn:"),
        "{markdown}"
    );
    assert!(
        apart.contains("| role payments-read | 2 (line 21 of policies/payments.toml) |"),
        "{markdown}"
    );

    let json = render_json(&rows);
    let access = json["access"].as_array().unwrap();
    assert_eq!(access[0]["delegate"], serde_json::Value::Null);
    assert_eq!(access[0]["file"], serde_json::Value::Null);
    assert_eq!(access[1]["delegate"], "payments");
    assert_eq!(access[1]["file"], "policies/payments.toml");
    assert_eq!(
        access[1]["who"],
        "namespace_id 77 | 78 (guardrail) · project_id 7701"
    );
    assert_eq!(json["never_matches"][0]["file"], "policies/payments.toml");
}

/// A root policy with two issuers whose `search` delegate's guardrail pins one of them, a
/// project list and a ref; `rule` is the team's one rule.
fn guarded(rule: &str) -> token_broker_policy::Policy {
    let root = r#"audience = "https://token-broker.example.com"

[[issuer]]
url = "https://gitlab.example.com"

[[issuer]]
url = "https://gitlab.example.org"

[delegate.search]
file = "search.toml"
require = { issuer = "https://gitlab.example.com", project_id = ["9001", "9002"], ref = "main" }
role_arns = ["arn:aws:iam::444455556666:role/search-*"]
"#;
    let team = format!(
        "[role.search-index]\narn = \"arn:aws:iam::444455556666:role/search-index\"\n\n[[role.search-index.allow]]\nissuer = \"https://gitlab.example.com\"\n{rule}\n"
    );
    token_broker_policy::parse(Path::new("org/policy.toml"), root, &|path| {
        (path == "search.toml")
            .then(|| team.clone())
            .ok_or_else(|| format!("no such file {path:?}"))
    })
    .unwrap()
}

#[test]
fn one_projects_view_keeps_a_delegated_rule_only_where_its_guardrail_admits_the_project_too() {
    // (the team's rule, project, ref, listed?)
    let cases = [
        ("namespace_id = \"90\"", "9001", None, true),
        ("namespace_id = \"90\"", "9002", Some("main"), true),
        ("namespace_id = \"90\"", "7777", None, false),
        ("namespace_id = \"90\"", "9001", Some("feature/x"), false),
        ("project_id = \"9001\"", "9001", Some("main"), true),
        ("project_id = \"9001\"", "9002", None, false),
        ("project_id = [\"9001\", \"7777\"]", "7777", None, false),
    ];
    for (rule, project, git_ref, listed) in cases {
        let query = Query {
            project_id: project.into(),
            git_ref: git_ref.map(Into::into),
            environment: None,
        };
        let rows = access_for(&guarded(rule), &query);
        assert_eq!(
            rows.len(),
            usize::from(listed),
            "{rule} {project} {git_ref:?}"
        );
    }
}

#[test]
fn a_guardrails_issuer_and_other_conditions_are_shown_where_the_rules_would_be() {
    let rows = access(&guarded(
        "namespace_id = \"90\"\npipeline_source = \"push\"",
    ));
    let row = &rows[0];
    assert_eq!(
        row.who,
        "project_id 9001 | 9002 (guardrail) · namespace_id 90"
    );
    assert_eq!(row.refs, "ref main (guardrail)");
    assert_eq!(row.environments, "any");
    assert_eq!(
        row.also,
        "issuer https://gitlab.example.com · issuer https://gitlab.example.com (guardrail) · pipeline_source push"
    );
}
