//! Every tool sees the tree: `check` lints each file of a policy tree and names the file of each
//! finding (human, JSON, Code Quality), weighs a team's rules with their guardrail and lints the
//! guardrail itself (TB111); `test` runs the cases kept beside each file, one JUnit suite each;
//! `explain` says in which file each rule is and how the guardrail fared.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "support/junit.rs"]
mod junit;

use junit::validate_junit;
use token_broker_policy::explain::explain_in;
use token_broker_policy::lint::{Finding, Kind, Severity, lint, render_human};
use token_broker_policy::report::{Paths, code_quality};
use token_broker_policy::{Claims, Policy, PolicyError, cases, load, parse};

const GITLAB: &str = "https://gitlab.example.com";

/// The repository's root: the tests run the binary from there, as README's samples do.
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `crates/policy/tests/fixtures/lint/tree/policy.toml`, as named from the repository's root.
const TREE: &str = "crates/policy/tests/fixtures/lint/tree/policy.toml";

fn tree_fixture() -> Policy {
    load(&repository().join(TREE)).unwrap()
}

/// A root policy with one delegate, `payments`, whose `require` is `require` (an inline table's
/// body), and its file `policies/payments.toml`, of one role whose rule is `rule` (TOML lines)
/// and whose `session_tags` are `tags`.
fn team_tree(require: &str, rule: &str, tags: &str) -> Result<Policy, PolicyError> {
    let root = format!(
        "audience = \"a\"\n\n[[issuer]]\nurl = \"{GITLAB}\"\n\n[delegate.payments]\n\
         file = \"policies/payments.toml\"\nrequire = {{ {require} }}\n\
         role_arns = [\"arn:aws:iam::111122223333:role/payments-*\"]\n"
    );
    let team = format!(
        "[role.payments-deploy]\narn = \"arn:aws:iam::111122223333:role/payments-deploy\"\n\
         session_tags = [{tags}]\n\n[[role.payments-deploy.allow]]\n{rule}\n"
    );
    let files = HashMap::from([("policies/payments.toml".to_owned(), team)]);
    parse(Path::new("org/policy.toml"), &root, &|path| {
        files.get(path).cloned().ok_or_else(|| format!("no {path}"))
    })
}

fn ids(findings: &[Finding]) -> Vec<&'static str> {
    findings.iter().map(|f| f.id).collect()
}

#[test]
fn a_finding_in_a_delegated_file_names_the_file_and_its_line_there() {
    let findings = lint(&tree_fixture());
    let placed: Vec<_> = findings
        .iter()
        .map(|f| (f.id, f.kind, f.grant.as_str(), f.file.as_deref(), f.line))
        .collect();
    // The root's first (the guardrail, at its `require` line), then the team's file's; the
    // search team's rule is protected by its guardrail, so its file has none.
    assert_eq!(
        placed,
        [
            ("TB111", Kind::Delegate, "search", None, 26),
            (
                "TB103",
                Kind::Role,
                "payments-deploy",
                Some("policies/payments.toml"),
                5
            ),
            (
                "TB104",
                Kind::Role,
                "payments-deploy",
                Some("policies/payments.toml"),
                5
            ),
        ]
    );
    let root = Path::new("org/policy.toml");
    assert_eq!(findings[0].path_in(root), root);
    assert_eq!(
        findings[1].display_with_path(root),
        "org/policies/payments.toml:5: warning[TB103 unprotected] rule 1 trusts unprotected refs: \
         require ref_protected = \"true\" or environment_protected = \"true\""
    );
}

#[test]
fn a_team_rule_is_linted_as_it_decides_with_its_guardrail() {
    // (require, the team's rule, session tags, the findings on the team's rule)
    let cases: &[(&str, &str, &str, &[&str])] = &[
        // The guardrail pins the namespace: the rule needs no id of its own.
        (
            r#"namespace_id = "77""#,
            "ref_type = \"branch\"\nref = \"main\"",
            "",
            &["TB103"],
        ),
        // Nor protection, when the guardrail requires it.
        (
            r#"namespace_id = "77", ref_protected = "true""#,
            r#"project_id = "7701""#,
            "",
            &[],
        ),
        (
            r#"namespace_id = "77", environment_protected = "true""#,
            r#"project_id = "7701""#,
            "",
            &[],
        ),
        // Nor ref_type, when the guardrail fixes it.
        (
            r#"namespace_id = "77", ref_type = "branch""#,
            "project_id = \"7701\"\nref = \"main\"\nref_protected = \"true\"",
            "",
            &[],
        ),
        (
            r#"namespace_id = "77""#,
            "project_id = \"7701\"\nref = \"main\"\nref_protected = \"true\"",
            "",
            &["TB104"],
        ),
        // Where the job runs, with whose code it is pinned by the guardrail: no fork gets in.
        (
            r#"namespace_id = "77""#,
            "job_project_id = \"7701\"\nref_type = \"branch\"",
            "",
            &["TB103"],
        ),
        // A guardrail that pins only where the job runs: a team rule that names no code and
        // does not keep forks out admits a fork's merge request run in the namespace.
        (
            r#"job_namespace_id = "77""#,
            "ref_type = \"branch\"\nref = \"main\"",
            "",
            &["TB103", "TB110"],
        ),
        (
            r#"job_namespace_id = "77""#,
            "project_id = \"7701\"",
            "",
            &["TB103"],
        ),
        (
            r#"job_namespace_id = "77""#,
            "ref_type = \"branch\"\nref_protected = \"true\"",
            "",
            &[],
        ),
        // Session tags on claims the guardrail requires, or pins.
        (
            r#"namespace_id = "77", environment = "production""#,
            "project_id = \"7701\"\nref_protected = \"true\"",
            r#""environment""#,
            &[],
        ),
        (
            r#"namespace_id = "77""#,
            "project_id = \"7701\"\nref_protected = \"true\"",
            r#""environment""#,
            &["TB107", "TB108"],
        ),
        // What the rule itself says is the rule's: a typo, or a pattern that names nothing. The
        // guardrail's own conditions are not the rule's.
        (
            r#"namespace_id = "77", ref_protected = "true""#,
            "project_id = \"7701\"\nenviroment = \"production\"",
            "",
            &["TB105"],
        ),
        (
            r#"namespace_id = "77", ref_protected = "true", environment = "*""#,
            "project_id = \"7701\"\nproject_path = \"*/*\"",
            "",
            &["TB102"],
        ),
    ];
    for (require, rule, tags, expected) in cases {
        let policy = team_tree(require, rule, tags).unwrap();
        let found: Vec<Finding> = lint(&policy)
            .into_iter()
            .filter(|f| f.kind == Kind::Role)
            .collect();
        assert_eq!(ids(&found), *expected, "{require} / {rule}: {found:#?}");
        assert!(
            found
                .iter()
                .all(|f| f.file.as_deref() == Some("policies/payments.toml")),
            "{found:#?}"
        );
    }
}

#[test]
fn a_guardrail_that_pins_no_id_is_an_error_at_its_require_line() {
    // (require, TB111 fires)
    let cases = [
        (r#"namespace_id = "77""#, false),
        (r#"namespace_id = ["77", "78"]"#, false),
        (r#"project_id = "7701""#, false),
        // Where the job runs, not whose code: a fork run in the team's project would pass.
        (r#"job_namespace_id = "77""#, true),
        (r#"job_project_id = "7701""#, true),
        (r#"namespace_path = "payments""#, true),
        (r#"namespace_id = "7*""#, true),
        (r#"namespace_id = ["77", "7*"]"#, true),
        (r#"ref_protected = "true""#, true),
        (
            r#"ref_protected = "true", project_path = "payments/*""#,
            true,
        ),
    ];
    for (require, fires) in cases {
        let policy = team_tree(
            require,
            "project_id = \"7701\"\nref_protected = \"true\"",
            "",
        )
        .unwrap();
        let found: Vec<Finding> = lint(&policy)
            .into_iter()
            .filter(|f| f.id == "TB111")
            .collect();
        assert_eq!(found.len(), usize::from(fires), "{require}: {found:#?}");
        if let [finding] = found.as_slice() {
            assert_eq!(
                (
                    finding.kind,
                    finding.grant.as_str(),
                    finding.file.as_deref()
                ),
                (Kind::Delegate, "payments", None)
            );
            assert_eq!(finding.line, 8, "the root's `require` line");
            assert_eq!(finding.severity, Severity::Error);
            assert!(
                finding.message.contains("\"policies/payments.toml\""),
                "{}",
                finding.message
            );
        }
    }
}

#[test]
fn the_shipped_tree_is_clean() {
    let policy = load(&repository().join("examples/delegation/policy.toml")).unwrap();
    assert_eq!(lint(&policy), vec![]);
}

#[test]
fn human_output_groups_the_findings_by_file_the_roots_first() {
    let root = Path::new(TREE);
    let text = render_human(root, &lint(&tree_fixture()));
    let dir = "crates/policy/tests/fixtures/lint/tree";
    assert_eq!(
        text,
        format!(
            "{dir}/policy.toml\n  delegate \"search\"\n    {dir}/policy.toml:26: error[TB111 guardrail-pins-no-id] \
             require pins no id of the code (an exact project_id or namespace_id), so the rules of \
             \"policies/search.toml\" can admit any project, or a fork run in the team's: pin the \
             team's namespace_id to exact values\n\
             {dir}/policies/payments.toml\n  role \"payments-deploy\"\n    {dir}/policies/payments.toml:5: \
             warning[TB103 unprotected] rule 1 trusts unprotected refs: require ref_protected = \"true\" \
             or environment_protected = \"true\"\n    {dir}/policies/payments.toml:5: \
             error[TB104 ref-without-ref-type] rule 1 matches ref without fixing ref_type: a tag can be \
             named like a branch\n{dir}/policy.toml: 2 error(s), 1 warning(s)\n"
        )
    );
}

#[test]
fn code_quality_names_each_findings_file_and_its_fingerprint_includes_it() {
    let root = repository().join(TREE);
    let policy = tree_fixture();
    let findings = lint(&policy);
    let paths = Paths::in_repository(&root, policy.delegates.iter().map(|d| d.file.as_str()));
    let report = code_quality(&paths, &findings, None);
    let located: Vec<(&str, u64)> = report
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["location"]["path"].as_str().unwrap(),
                i["location"]["lines"]["begin"].as_u64().unwrap(),
            )
        })
        .collect();
    let dir = "crates/policy/tests/fixtures/lint/tree";
    let payments = format!("{dir}/policies/payments.toml");
    assert_eq!(
        located,
        [
            (format!("{dir}/policy.toml").as_str(), 26),
            (payments.as_str(), 5),
            (payments.as_str(), 5)
        ]
    );
    // The same finding on the same rule in another file is another finding.
    let mut moved = findings[1].clone();
    moved.file = None;
    let fingerprint =
        |f: &Finding| code_quality(&paths, std::slice::from_ref(f), None)[0]["fingerprint"].clone();
    assert_ne!(fingerprint(&findings[1]), fingerprint(&moved));
    // Named as given, a delegated file is beside the root.
    let as_given = code_quality(
        &Paths::as_given(Path::new("org/policy.toml")),
        &findings,
        None,
    );
    assert_eq!(
        as_given[1]["location"]["path"],
        "org/policies/payments.toml"
    );
}

/// The moved project of the example's cases: payments-api (7701), now in namespace 666.
fn moved_project() -> Claims {
    Claims::from_pairs(
        GITLAB,
        [
            ("project_id", "7701"),
            ("namespace_id", "666"),
            ("ref_type", "branch"),
            ("ref", "main"),
            ("ref_protected", "true"),
            ("environment", "production"),
            ("environment_protected", "true"),
        ],
    )
}

#[test]
fn explain_names_each_rules_file_and_line_and_how_the_guardrail_fared() {
    let root = repository().join("examples/delegation/policy.toml");
    let policy = load(&root).unwrap();
    let text = |claims: &Claims, name: &str| -> String {
        explain_in(&policy, &root, claims, Some(name))
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(
        text(&moved_project(), "payments-deploy"),
        "role \"payments-deploy\": DENY: role \"payments-deploy\": rule 1 matches, but claim \
         \"namespace_id\" = \"666\" is outside the guardrail of delegate \"payments\"\n  \
         rule 1 (policies/payments.toml line 9): matches\n  \
         guardrail of delegate \"payments\" (policy.toml line 22): fails: namespace_id = \"666\" is not 77 | 78\n"
    );
    // Inside the search team's namespace, the guardrail holds and the rule decides.
    let inside = Claims::from_pairs(
        GITLAB,
        [
            ("project_id", "7701"),
            ("namespace_id", "90"),
            ("ref_type", "branch"),
            ("ref", "main"),
            ("ref_protected", "true"),
        ],
    );
    assert_eq!(
        text(&inside, "search-vault"),
        "token \"search-vault\": DENY: token \"search-vault\": claim \"project_id\" = \"7701\" does not satisfy rule 1\n  \
         rule 1 (policies/search.toml line 17): fails: project_id = \"7701\" is not 9001\n  \
         guardrail of delegate \"search\" (policy.toml line 28): holds\n"
    );
    // The root's own roles read as they always have.
    assert!(
        text(&moved_project(), "platform-deploy").contains("\n  rule 1 (line 14): fails:"),
        "{}",
        text(&moved_project(), "platform-deploy")
    );
}

#[test]
fn explain_says_when_the_guardrail_wants_another_issuer() {
    let policy = team_tree(
        &format!(r#"issuer = "{GITLAB}", namespace_id = "77""#),
        "project_id = \"7701\"\nref_protected = \"true\"",
        "",
    )
    .unwrap();
    let elsewhere = Claims::from_pairs("https://other.example.com", [("namespace_id", "77")]);
    let explanation = &token_broker_policy::explain::explain(&policy, &elsewhere, None)[0];
    let guardrail = explanation.to_string();
    assert!(
        guardrail.ends_with(&format!(
            "  guardrail of delegate \"payments\" (root policy line 8): fails: iss = \"https://other.example.com\" is not {GITLAB}\n"
        )),
        "{guardrail}"
    );
}

#[test]
fn a_delegated_files_cases_are_beside_it_named_for_it() {
    let root = Path::new("org/policy.toml");
    let policy = team_tree(r#"namespace_id = "77""#, r#"project_id = "7701""#, "").unwrap();
    assert_eq!(
        cases::for_delegate(root, &policy.delegates[0]),
        Path::new("org/policies/payments.tests.toml")
    );
}

/// `token-broker-policy ARGS` from the repository's root.
fn policy_tool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_token-broker-policy"))
        .args(args)
        .current_dir(repository())
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn check_json_names_each_findings_file() {
    let output = policy_tool(&["check", "--format", "json", TREE]);
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let files: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["file"].as_str().unwrap())
        .collect();
    let dir = "crates/policy/tests/fixtures/lint/tree";
    assert_eq!(
        files,
        [
            format!("{dir}/policy.toml"),
            format!("{dir}/policies/payments.toml"),
            format!("{dir}/policies/payments.toml")
        ]
    );
    assert_eq!(report["findings"][0]["kind"], "delegate");
    assert_eq!(
        (report["errors"].as_u64(), report["warnings"].as_u64()),
        (Some(2), Some(1))
    );
}

/// A directory under the system's temporary one, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tb-tree-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// The example tree, with its cases, copied here.
    fn example(name: &str) -> Self {
        let scratch = Self::new(name);
        let example = repository().join("examples/delegation");
        for file in [
            "policy.toml",
            "policy.tests.toml",
            "policies/payments.toml",
            "policies/payments.tests.toml",
            "policies/search.toml",
            "policies/search.tests.toml",
        ] {
            scratch.write(file, &std::fs::read_to_string(example.join(file)).unwrap());
        }
        scratch
    }

    fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.0.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    fn path(&self, relative: &str) -> String {
        self.0.join(relative).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_compile_error_in_a_delegated_file_is_reported_in_that_file() {
    let scratch = Scratch::example("compile");
    scratch.write(
        "policies/search.toml",
        "[role.search-index]\narn = \"arn:aws:iam::999999999999:role/search-index\"\n",
    );
    let output = policy_tool(&[
        "check",
        "--format",
        "codequality",
        &scratch.path("policy.toml"),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let issues: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(issues[0]["check_name"], "compile");
    // The system's temporary directory is in no repository: the path as given.
    assert_eq!(
        issues[0]["location"]["path"],
        scratch.path("policies/search.toml")
    );
    assert_eq!(issues[0]["location"]["lines"]["begin"], 2);
}

#[test]
fn test_runs_the_cases_of_every_file_and_says_how_each_went() {
    let output = policy_tool(&["test", "examples/delegation/policy.toml"]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert_eq!(
        stdout(&output),
        "examples/delegation/policy.tests.toml: 4 passed, 0 failed\n\
         examples/delegation/policies/payments.tests.toml: 6 passed, 0 failed\n\
         examples/delegation/policies/search.tests.toml: 5 passed, 0 failed\n\
         policy cases: 15 passed, 0 failed\n"
    );
}

const WRONG: &str = r#"
[[case]]
name = "a moved project deploys (wrong on purpose)"
role = "payments-deploy"
claims = { project_id = "7701", namespace_id = "666", ref_type = "branch", ref = "main", ref_protected = "true", environment = "production", environment_protected = "true" }
expect = "allow"
"#;

#[test]
fn a_failing_team_case_fails_the_run_under_its_file_with_the_guardrail_in_its_trace() {
    let scratch = Scratch::example("failing");
    let cases = scratch.path("policies/payments.tests.toml");
    let text = std::fs::read_to_string(&cases).unwrap();
    scratch.write("policies/payments.tests.toml", &format!("{text}{WRONG}"));
    let output = policy_tool(&["test", &scratch.path("policy.toml")]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    let expected = format!(
        "{cases}: 6 passed, 1 failed\n\
         FAIL \"a moved project deploys (wrong on purpose)\": expected allow, but: role \"payments-deploy\": \
         rule 1 matches, but claim \"namespace_id\" = \"666\" is outside the guardrail of delegate \"payments\"\n"
    );
    assert!(text.contains(&expected), "{text}");
    assert!(
        text.contains(
            "      rule 1 (policies/payments.toml line 9): matches\n      \
             guardrail of delegate \"payments\" (policy.toml line 22): fails: namespace_id = \"666\" is not 77 | 78\n"
        ),
        "{text}"
    );
    assert!(
        text.ends_with("policy cases: 15 passed, 1 failed\n"),
        "{text}"
    );
}

#[test]
fn junit_has_one_suite_per_cases_file_valid_against_the_junit_10_schema() {
    let scratch = Scratch::example("junit");
    scratch.write("policies/search.tests.toml", "[[case]]\nname = 1\n");
    let cases = scratch.path("policies/payments.tests.toml");
    let text = std::fs::read_to_string(&cases).unwrap();
    scratch.write("policies/payments.tests.toml", &format!("{text}{WRONG}"));
    let junit = scratch.path("junit.xml");
    let output = policy_tool(&["test", "--junit", &junit, &scratch.path("policy.toml")]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    // A cases file that does not load is said, and the others still run.
    assert!(
        text.contains(&format!(
            "{}: not run\n",
            scratch.path("policies/search.tests.toml")
        )),
        "{text}"
    );
    assert!(
        text.ends_with("policy cases: 10 passed, 1 failed, 1 cases file(s) not run\n"),
        "{text}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    validate_junit(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
    let suites: Vec<&str> = xml
        .lines()
        .filter(|line| line.trim_start().starts_with("<testsuite "))
        .collect();
    assert_eq!(suites.len(), 3, "{xml}");
    for (suite, (file, tests, failures)) in suites.iter().zip([
        ("policy.tests.toml", 4, 0),
        ("policies/payments.tests.toml", 7, 1),
        ("policies/search.tests.toml", 1, 1),
    ]) {
        let head = format!(
            "<testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\">",
            scratch.path(file)
        );
        assert_eq!(suite.trim_start(), head);
    }
    assert!(
        xml.starts_with(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites tests=\"12\" failures=\"2\" errors=\"0\">\n"
        ),
        "{xml}"
    );
    assert!(
        xml.contains("name=\"the decision cases load\">\n      <failure message=\"the decision cases do not load: "),
        "{xml}"
    );
}
