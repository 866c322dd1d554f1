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

/// One edit of a tree: in `file`, every `from` replaced by `to`; an empty `from` writes `to` as
/// the whole file (a new one).
type Edit<'a> = (&'a str, &'a str, &'a str);

const TREE_FILES: [&str; 3] = [
    "policy.toml",
    "policies/payments.toml",
    "policies/search.toml",
];

/// `tests/fixtures/diff-tree/old/`: a root policy delegating payments (namespace 77 or 78,
/// line 18) and search (namespace 90 and protected refs, tokens allowed, line 24).
fn tree_files() -> std::collections::HashMap<String, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diff-tree/old");
    TREE_FILES
        .iter()
        .map(|file| {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            ((*file).to_owned(), text)
        })
        .collect()
}

/// The fixture's old tree with `edits` applied, compiled.
fn edited_tree(edits: &[Edit]) -> Policy {
    let mut files = tree_files();
    for (file, from, to) in edits {
        if from.is_empty() {
            files.insert((*file).to_owned(), (*to).to_owned());
            continue;
        }
        let text = files.get_mut(*file).unwrap();
        assert!(text.contains(from), "{from:?} is not in {file}");
        *text = text.replace(from, to);
    }
    parse(
        Path::new("org/policy.toml"),
        &files["policy.toml"],
        &|path| {
            files
                .get(path)
                .cloned()
                .ok_or_else(|| format!("no such file {path:?}"))
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The Markdown header's count of widening changes, and the rows marked widening.
fn marked(delta: &Delta) -> (Option<usize>, usize) {
    let markdown = render_markdown(delta);
    let counted = markdown
        .split_once("**⚠ This change widens access** (")
        .and_then(|(_, rest)| rest.split_once(" widening change(s)"))
        .map(|(n, _)| n.parse().unwrap());
    let rows = markdown
        .lines()
        .filter(|l| l.starts_with("| ⚠ widens |"))
        .count();
    (counted, rows)
}

const SECOND_ISSUER: [Edit; 6] = [
    (
        "policy.toml",
        "[[issuer]]\nurl = \"https://gitlab.example.com\"\n",
        "[[issuer]]\nurl = \"https://gitlab.example.com\"\n\n[[issuer]]\nurl = \"https://gitlab.example.org\"\n",
    ),
    (
        "policy.toml",
        "project_id = \"100\"",
        "issuer = \"https://gitlab.example.com\"\nproject_id = \"100\"",
    ),
    (
        "policies/payments.toml",
        "project_id = \"7701\"",
        "issuer = \"https://gitlab.example.com\"\nproject_id = \"7701\"",
    ),
    (
        "policies/payments.toml",
        "namespace_id = \"77\"",
        "issuer = \"https://gitlab.example.com\"\nnamespace_id = \"77\"",
    ),
    (
        "policies/search.toml",
        "project_id = \"9001\"",
        "issuer = \"https://gitlab.example.com\"\nproject_id = \"9001\"",
    ),
    (
        "policy.toml",
        "require = { namespace_id = [\"77\", \"78\"] }",
        "require = { issuer = \"https://gitlab.example.com\", namespace_id = [\"77\", \"78\"] }",
    ),
];

const PAYMENTS_REQUIRE: &str = "require = { namespace_id = [\"77\", \"78\"] }";
const SEARCH_REQUIRE: &str = "require = { namespace_id = \"90\", ref_protected = \"true\" }";
const PAYMENTS_ARNS: &str = "role_arns = [\"arn:aws:iam::111122223333:role/payments-*\"]";
const SEARCH_TOKEN: &str = "[token.search-vault]\naudience = \"https://vault.example.com\"\n\n[[token.search-vault.allow]]\nproject_id = \"9001\"\nref_type = \"branch\"\nref = \"main\"\n";
const SEARCH_INDEX: &str = "[role.search-index]\narn = \"arn:aws:iam::444455556666:role/search-index\"\nmax_duration = \"30m\"\n\n[[role.search-index.allow]]\nproject_id = \"9001\"\nref_type = \"branch\"\nref = \"main\"\n";
const BILLING: &str = "[delegate.billing]\nfile = \"policies/billing.toml\"\nrequire = { namespace_id = \"95\" }\nrole_arns = [\"arn:aws:iam::555566667777:role/billing-*\"]\n";
const BILLING_FILE: &str = "[role.billing-report]\narn = \"arn:aws:iam::555566667777:role/billing-report\"\n\n[[role.billing-report.allow]]\nproject_id = \"9501\"\nref_protected = \"true\"\n";

#[test]
fn each_tree_edit_is_reported_with_its_file_and_widening_ones_are_marked() {
    let root = "policy.toml";
    let payments = "policies/payments.toml";
    let search = "policies/search.toml";
    let payments_file = tree_files()[payments].clone();
    let moved_to_root = [
        (search, SEARCH_INDEX, ""),
        (
            root,
            "[delegate.payments]",
            &format!("{SEARCH_INDEX}\n[delegate.payments]")[..],
        ),
    ];
    let with_shared = [(
        root,
        PAYMENTS_ARNS,
        "role_arns = [\"arn:aws:iam::111122223333:role/payments-*\", \"arn:aws:iam::111122223333:role/shared-*\"]",
    )];
    let issuer_org = [(
        root,
        "require = { issuer = \"https://gitlab.example.com\",",
        "require = { issuer = \"https://gitlab.example.org\",",
    )];
    let with_billing = format!("{BILLING}\n[delegate.search]");
    let team_file = format!(
        "{payments_file}\n[role.payments-x]\narn = \"arn:aws:iam::111122223333:role/payments-x\"\n\n[[role.payments-x.allow]]\nproject_id = \"7709\"\n"
    );
    /// (what, edits of the old tree, edits of the new, the change, widening?, a decision line)
    type Case<'a> = (
        &'a str,
        Vec<Edit<'a>>,
        Vec<Edit<'a>>,
        &'a str,
        bool,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "a require's pattern list grown",
            vec![],
            vec![(
                root,
                PAYMENTS_REQUIRE,
                "require = { namespace_id = [\"77\", \"78\", \"79\"] }",
            )],
            "WIDENS delegate \"payments\" require changed (line 20): namespace_id: \"77\" | \"78\" → \"77\" | \"78\" | \"79\"",
            true,
            Some(
                "project 7701 · namespace 79 · branch main (protected) · env production (protected): role \"payments-deploy\" deny → ALLOW",
            ),
        ),
        (
            "a pattern removed from a require's list",
            vec![],
            vec![(
                root,
                PAYMENTS_REQUIRE,
                "require = { namespace_id = [\"77\"] }",
            )],
            "delegate \"payments\" require changed (line 20): namespace_id: \"77\" | \"78\" → \"77\"",
            false,
            Some(
                "project 7701 · namespace 78 · branch main (protected) · env production (protected): role \"payments-deploy\" ALLOW → deny",
            ),
        ),
        (
            "a condition added to a require",
            vec![],
            vec![(
                root,
                PAYMENTS_REQUIRE,
                "require = { namespace_id = [\"77\", \"78\"], pipeline_source = \"push\" }",
            )],
            "delegate \"payments\" require changed (line 20): + pipeline_source = \"push\"",
            false,
            None,
        ),
        (
            "a condition removed from a require",
            vec![],
            vec![(root, SEARCH_REQUIRE, "require = { namespace_id = \"90\" }")],
            "WIDENS delegate \"search\" require changed (line 26): − ref_protected = \"true\"",
            true,
            Some("project 9001 · namespace 90 · branch main: role \"search-index\" deny → ALLOW"),
        ),
        (
            "a require's pattern made broader",
            vec![],
            vec![(root, "namespace_id = \"90\"", "namespace_id = \"9*\"")],
            "WIDENS delegate \"search\" require changed (line 26): namespace_id: \"90\" → \"9*\"",
            true,
            Some(
                "project 9001 · namespace 9x · branch main (protected): role \"search-index\" deny → ALLOW",
            ),
        ),
        (
            "a require's pattern edited, even to a narrower one, is not proven narrower",
            vec![(root, "namespace_id = \"90\"", "namespace_id = \"9*\"")],
            vec![],
            "WIDENS delegate \"search\" require changed (line 26): namespace_id: \"9*\" → \"90\"",
            true,
            Some(
                "project 9001 · namespace 9x · branch main (protected): role \"search-index\" ALLOW → deny",
            ),
        ),
        (
            "an issuer added to a require",
            SECOND_ISSUER[..5].to_vec(),
            SECOND_ISSUER.to_vec(),
            "delegate \"payments\" require changed (line 24): + issuer = \"https://gitlab.example.com\"",
            false,
            None,
        ),
        (
            "the require's issuer dropped",
            SECOND_ISSUER.to_vec(),
            SECOND_ISSUER[..5].to_vec(),
            "WIDENS delegate \"payments\" require changed (line 24): − issuer = \"https://gitlab.example.com\"",
            true,
            None,
        ),
        (
            "the require's issuer changed",
            SECOND_ISSUER.to_vec(),
            [&SECOND_ISSUER[..], &issuer_org].concat(),
            "WIDENS delegate \"payments\" require changed (line 24): issuer: \"https://gitlab.example.com\" → \"https://gitlab.example.org\"",
            true,
            None,
        ),
        (
            "a role_arns pattern added",
            vec![],
            with_shared.to_vec(),
            "WIDENS delegate \"payments\" role_arns: arn:aws:iam::111122223333:role/payments-* → arn:aws:iam::111122223333:role/payments-*, arn:aws:iam::111122223333:role/shared-*",
            true,
            None,
        ),
        (
            "a role_arns pattern removed",
            with_shared.to_vec(),
            vec![],
            "delegate \"payments\" role_arns: arn:aws:iam::111122223333:role/payments-*, arn:aws:iam::111122223333:role/shared-* → arn:aws:iam::111122223333:role/payments-*",
            false,
            None,
        ),
        (
            "a role_arns pattern changed",
            vec![],
            vec![(
                root,
                "iam::111122223333:role/payments-*",
                "iam::*:role/payments-*",
            )],
            "WIDENS delegate \"payments\" role_arns: arn:aws:iam::111122223333:role/payments-* → arn:aws:iam::*:role/payments-*",
            true,
            None,
        ),
        (
            "a delegate's max_duration raised",
            vec![],
            vec![(root, "max_duration = \"1h\"", "max_duration = \"2h\"")],
            "WIDENS delegate \"payments\" max_duration: 1h → 2h",
            true,
            None,
        ),
        (
            "a delegate's max_duration removed",
            vec![],
            vec![(root, "max_duration = \"1h\"\n", "")],
            "WIDENS delegate \"payments\" max_duration: 1h → none",
            true,
            None,
        ),
        (
            "a delegate's max_duration lowered",
            vec![(root, "max_duration = \"1h\"", "max_duration = \"2h\"")],
            vec![],
            "delegate \"payments\" max_duration: 2h → 1h",
            false,
            None,
        ),
        (
            "tokens allowed",
            vec![],
            vec![(
                root,
                "max_duration = \"1h\"",
                "max_duration = \"1h\"\ntokens = true",
            )],
            "WIDENS delegate \"payments\" tokens: false → true",
            true,
            None,
        ),
        (
            "tokens no longer allowed (and the file's token gone)",
            vec![],
            vec![(root, "tokens = true\n", ""), (search, SEARCH_TOKEN, "")],
            "delegate \"search\" tokens: true → false",
            false,
            Some(
                "project 9001 · namespace 90 · branch main (protected): token \"search-vault\" ALLOW → deny",
            ),
        ),
        (
            "a delegate added",
            vec![],
            vec![
                (root, "[delegate.search]", &with_billing),
                ("policies/billing.toml", "", BILLING_FILE),
            ],
            "WIDENS delegate \"billing\" added (line 24): policies/billing.toml with 1 grant(s)",
            true,
            Some(
                "project 9501 · namespace 95 · any ref (protected): role \"billing-report\" deny → ALLOW",
            ),
        ),
        (
            "a delegate removed",
            vec![],
            vec![(
                root,
                "[delegate.search]\nfile = \"policies/search.toml\"\nrequire = { namespace_id = \"90\", ref_protected = \"true\" }\nrole_arns = [\"arn:aws:iam::444455556666:role/search-*\"]\nmax_duration = \"30m\"\ntokens = true\naudiences = [\"https://vault.example.com\"]\n",
                "",
            )],
            "delegate \"search\" removed (was line 24): policies/search.toml (had 2 grant(s))",
            false,
            Some(
                "project 9001 · namespace 90 · branch main (protected): role \"search-index\" ALLOW → deny",
            ),
        ),
        (
            "a delegate's file changed, the same grants in it",
            vec![],
            vec![
                (
                    root,
                    "file = \"policies/payments.toml\"",
                    "file = \"teams/payments.toml\"",
                ),
                ("teams/payments.toml", "", &payments_file),
            ],
            "delegate \"payments\" file: policies/payments.toml → teams/payments.toml",
            false,
            None,
        ),
        (
            "a delegate's file changed, other grants in it",
            vec![],
            vec![
                (
                    root,
                    "file = \"policies/payments.toml\"",
                    "file = \"teams/payments.toml\"",
                ),
                ("teams/payments.toml", "", &team_file),
            ],
            "WIDENS delegate \"payments\" file: policies/payments.toml → teams/payments.toml",
            true,
            None,
        ),
        (
            "a role added in a delegated file",
            vec![],
            vec![(payments, "", &team_file)],
            "WIDENS role \"payments-x\" added in policies/payments.toml with 1 rule(s)",
            true,
            Some("project 7709 · namespace 77: role \"payments-x\" deny → ALLOW"),
        ),
        (
            "a rule changed in a delegated file",
            vec![],
            vec![(payments, "ref = \"main\"", "ref = \"*\"")],
            "WIDENS role \"payments-deploy\" rule 1 changed (line 7 of policies/payments.toml): ref: \"main\" → \"*\"",
            true,
            Some(
                "project 7701 · namespace 77 · branch x (protected) · env production (protected): role \"payments-deploy\" deny → ALLOW",
            ),
        ),
        (
            "a role's session shortened in a delegated file",
            vec![],
            vec![(payments, "max_duration = \"30m\"", "max_duration = \"15m\"")],
            "role \"payments-read\" max_duration in policies/payments.toml: 30m → 15m",
            false,
            None,
        ),
        (
            "a role removed from a delegated file",
            vec![],
            vec![(
                payments,
                "[role.payments-read]\narn = \"arn:aws:iam::111122223333:role/payments-read\"\nmax_duration = \"30m\"\n\n[[role.payments-read.allow]]\nnamespace_id = \"77\"\nref_protected = \"true\"\n",
                "",
            )],
            "role \"payments-read\" removed from policies/payments.toml (had 1 rule(s))",
            false,
            Some("namespace 77 · any ref (protected): role \"payments-read\" ALLOW → deny"),
        ),
        (
            "a role moved out of its delegate into the root policy",
            vec![],
            moved_to_root.to_vec(),
            "WIDENS role \"search-index\" moved from policies/search.toml (delegate \"search\") to the root policy",
            true,
            Some("project 9001 · branch main: role \"search-index\" deny → ALLOW"),
        ),
        (
            "a role moved from the root policy into a delegate",
            moved_to_root.to_vec(),
            vec![],
            "role \"search-index\" moved from the root policy to policies/search.toml (delegate \"search\")",
            false,
            Some("project 9001 · branch main: role \"search-index\" ALLOW → deny"),
        ),
    ];
    for (what, old, new, change, widening, decision) in cases {
        let delta = diff(&edited_tree(&old), &edited_tree(&new), &[]);
        let text = render_text(&delta);
        let (mark, line) = change
            .strip_prefix("WIDENS ")
            .map_or(("       ", change), |line| ("WIDENS ", line));
        assert!(
            text.lines().any(|l| l == format!("{mark}{line}")),
            "{what}: no change {change:?} in\n{text}"
        );
        assert_eq!(delta.widens(), widening, "{what}:\n{text}");
        if widening {
            assert!(
                text.starts_with("WIDENS"),
                "{what}: widening first:\n{text}"
            );
        }
        if let Some(decision) = decision {
            assert!(
                text.lines().any(|l| l == format!("  {decision}")),
                "{what}: no {decision:?} in\n{text}"
            );
        }
        let rows = delta.changes.iter().filter(|c| c.widening).count();
        let (counted, shown) = marked(&delta);
        assert_eq!(shown, rows, "{what}");
        assert_eq!(counted.unwrap_or(0), rows, "{what}");
    }
}

fn tree_fixture(side: &str) -> Policy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/diff-tree")
        .join(side)
        .join("policy.toml");
    token_broker_policy::load(&path).unwrap()
}

/// `tests/fixtures/diff-tree/`: a guardrail loosened, a delegate added with its role, a rule
/// widened in a team's file (widening); a delegate removed with its role and token, a session
/// shortened in a team's file (not).
#[test]
fn a_tree_change_lists_widening_rows_first_and_the_header_counts_them() {
    let delta = diff(&tree_fixture("old"), &tree_fixture("new"), &[]);
    let rows: Vec<(bool, Scope, &str, Option<&str>)> = delta
        .changes
        .iter()
        .map(|c| (c.widening, c.kind, c.grant.as_str(), c.file.as_deref()))
        .collect();
    let payments = Some("policies/payments.toml");
    assert_eq!(
        rows,
        [
            (true, Scope::Delegate, "payments", None),
            (true, Scope::Delegate, "billing", None),
            (
                true,
                Scope::Grant(GrantKind::Role),
                "payments-deploy",
                payments
            ),
            (
                true,
                Scope::Grant(GrantKind::Role),
                "billing-report",
                Some("policies/billing.toml")
            ),
            (false, Scope::Delegate, "search", None),
            (
                false,
                Scope::Grant(GrantKind::Role),
                "search-index",
                Some("policies/search.toml")
            ),
            (
                false,
                Scope::Grant(GrantKind::Token),
                "search-vault",
                Some("policies/search.toml")
            ),
            (
                false,
                Scope::Grant(GrantKind::Role),
                "payments-read",
                payments
            ),
        ]
    );
    assert_eq!(marked(&delta), (Some(4), 4));
    let markdown = render_markdown(&delta);
    assert_eq!(
        markdown.lines().filter(|l| l.starts_with("|  |")).count(),
        4,
        "{markdown}"
    );
    let text = render_text(&delta);
    assert_eq!(text.lines().filter(|l| l.starts_with("WIDENS")).count(), 4);
    // The jobs the loosened guardrail and the new delegate let in, and those that lose access.
    let decisions: Vec<(&str, bool)> = delta
        .decisions
        .iter()
        .map(|d| (d.grant.as_str(), d.after))
        .collect();
    assert_eq!(
        decisions,
        [
            ("payments-deploy", true),
            ("payments-deploy", true),
            ("billing-report", true),
            ("search-index", false),
            ("search-vault", false),
        ]
    );
}

#[test]
fn a_delegate_added_lists_its_guardrail_and_grants_and_each_grant_is_a_row_of_its_own() {
    let delta = diff(&tree_fixture("old"), &tree_fixture("new"), &[]);
    let text = render_text(&delta);
    let (_, added) = text
        .split_once(
            "WIDENS delegate \"billing\" added (line 24): policies/billing.toml with 1 grant(s)\n",
        )
        .unwrap();
    let listed: Vec<&str> = added.lines().take(5).map(str::trim).collect();
    assert_eq!(
        listed,
        [
            "require (line 26): namespace_id = \"95\", ref_protected = \"true\"",
            "role_arns: arn:aws:iam::555566667777:role/billing-*",
            "max_duration: 1h",
            "tokens: false",
            "role \"billing-report\" with 1 rule(s)",
        ],
        "{text}"
    );
    assert!(
        text.contains("WIDENS role \"billing-report\" added in policies/billing.toml with 1 rule(s)\n         rule 1 (line 7): project_id = \"9501\", ref = \"main\", ref_type = \"branch\"\n"),
        "{text}"
    );
}

#[test]
fn json_names_the_file_of_each_change_and_rule_and_details_delegates() {
    let json = render_json(&diff(&tree_fixture("old"), &tree_fixture("new"), &[]));
    let changes = json["changes"].as_array().unwrap();
    let find = |grant: &str| changes.iter().find(|c| c["grant"] == grant).unwrap();
    let require = find("payments");
    assert_eq!(
        (&require["kind"], &require["change"], &require["file"]),
        (&json!("delegate"), &json!("require_changed"), &Value::Null)
    );
    assert_eq!(require["before"]["line"], 20);
    assert_eq!(
        require["after"]["text"],
        "namespace_id = \"77\" | \"78\" | \"79\""
    );
    let rule = find("payments-deploy");
    assert_eq!(rule["file"], "policies/payments.toml");
    assert_eq!(rule["after"]["file"], "policies/payments.toml");
    assert_eq!(rule["after"]["line"], 7);
    let added = &find("billing")["delegate"];
    assert_eq!(find("billing")["change"], "delegate_added");
    assert_eq!(added["file"], "policies/billing.toml");
    assert_eq!(added["max_duration"], "1h");
    assert_eq!(
        added["grants"],
        json!([{"kind": "role", "grant": "billing-report", "rules": 1}])
    );
    assert_eq!(find("search")["change"], "delegate_removed");
    assert_eq!(find("search")["widening"], false);
    // The root policy's own changes name no file.
    let own = render_json(&delta_of("max_duration = \"30m\"", "max_duration = \"1h\""));
    assert_eq!(own["changes"][0]["file"], Value::Null);
}
