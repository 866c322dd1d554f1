//! GitLab's report formats: Code Quality issues carry every field GitLab documents, with
//! fingerprints that are stable and distinct and follow a finding's content, not its place; JUnit
//! XML escapes what a case name can hold and is valid against the JUnit schema pytest ships.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[path = "support/junit.rs"]
mod junit;

use junit::validate_junit;
use token_broker_policy::Claims;
use token_broker_policy::cases::{self, CaseFailure, CaseRun, Outcome};
use token_broker_policy::lint::lint;
use token_broker_policy::report::{Paths, code_quality, junit, repository_path};

/// A single-file policy's files, named `policy.toml`.
fn policy_toml() -> Paths {
    Paths::as_given(Path::new("policy.toml"))
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/lint")
        .join(name)
}

#[test]
fn code_quality_issues_have_gitlabs_fields_and_stable_distinct_fingerprints() {
    let path = fixture("TB104.toml");
    let findings = lint(&token_broker_policy::load(&path).unwrap());
    assert!(!findings.is_empty());
    let report = code_quality(&policy_toml(), &findings, None);
    let issues = report.as_array().unwrap();
    assert_eq!(issues.len(), findings.len());
    for (issue, finding) in issues.iter().zip(&findings) {
        // https://docs.gitlab.com/ci/testing/code_quality/#code-quality-report-format
        assert!(
            issue["description"]
                .as_str()
                .unwrap()
                .contains(&finding.message)
        );
        assert_eq!(issue["check_name"], finding.id);
        assert!(
            ["info", "minor", "major", "critical", "blocker"]
                .contains(&issue["severity"].as_str().unwrap())
        );
        assert_eq!(issue["location"]["path"], "policy.toml");
        assert_eq!(issue["location"]["lines"]["begin"], finding.line);
        assert_eq!(issue["fingerprint"].as_str().unwrap().len(), 32);
    }
    let again = code_quality(&policy_toml(), &findings, None);
    assert_eq!(report, again, "fingerprints are stable across runs");
    let mut prints: Vec<&str> = issues
        .iter()
        .map(|i| i["fingerprint"].as_str().unwrap())
        .collect();
    prints.sort_unstable();
    prints.dedup();
    assert_eq!(prints.len(), issues.len(), "fingerprints are distinct");

    let broken = code_quality(
        &policy_toml(),
        &[],
        Some(("policy.toml", 7, "unknown key `arm`")),
    );
    assert_eq!(broken[0]["check_name"], "compile");
    assert_eq!(broken[0]["severity"], "blocker");
    assert_eq!(broken[0]["location"]["lines"]["begin"], 7);
}

#[test]
fn junit_lists_every_case_and_escapes_names_and_traces() {
    let case = |name: &str, problem: Option<&str>| CaseRun {
        name: name.into(),
        claims: Claims::from_pairs("https://gitlab.example.com", []),
        failure: problem.map(|problem| CaseFailure {
            problem: problem.into(),
            trace: Vec::new(),
        }),
    };
    let outcome = Outcome {
        cases: vec![
            case("main deploys", None),
            case(
                "a <tag> & \"quote\"",
                Some("expected allow, but: ref = \"a<b\""),
            ),
        ],
    };
    let xml = junit(Path::new("policy.tests.toml"), &outcome);
    assert!(
        xml.contains(r#"<testsuite name="policy.tests.toml" tests="2" failures="1" errors="0""#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"name="a &lt;tag&gt; &amp; &quot;quote&quot;""#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<failure message="expected allow, but: ref = &quot;a&lt;b&quot;">"#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<testcase classname="policy.tests.toml" name="main deploys"/>"#),
        "{xml}"
    );
}

#[test]
fn junit_keeps_cases_apart_that_share_a_name() {
    let run = |failure: Option<&str>| CaseRun {
        name: "same name".into(),
        claims: Claims::from_pairs("https://gitlab.example.com", []),
        failure: failure.map(|problem| CaseFailure {
            problem: problem.into(),
            trace: Vec::new(),
        }),
    };
    let outcome = Outcome {
        cases: vec![run(None), run(Some("expected deny"))],
    };
    let xml = junit(Path::new("policy.tests.toml"), &outcome);
    assert_eq!(xml.matches("<failure ").count(), 1, "{xml}");
    assert!(
        xml.contains(r#"<testcase classname="policy.tests.toml" name="same name"/>"#),
        "the passing case stays a pass: {xml}"
    );
}

/// A policy of two roles whose rules draw findings; `rules` are `deploy`'s `[[…allow]]` bodies,
/// in order, and `build_first` puts the `build` role above `deploy` in the file.
fn two_roles(rules: &[&str], build_first: bool) -> String {
    let deploy: String = std::iter::once(
        "[role.deploy]\narn = \"arn:aws:iam::123456789012:role/deploy\"\nsession_tags = [\"ref\"]\n\n"
            .to_owned(),
    )
    .chain(rules.iter().map(|r| format!("[[role.deploy.allow]]\n{r}\n\n")))
    .collect();
    let build = "[role.build]\narn = \"arn:aws:iam::123456789012:role/build\"\n\
                 max_duration = \"2h\"\n\n[[role.build.allow]]\nproject_path = \"acme/*\"\n\n";
    let (first, second) = if build_first {
        (build, deploy.as_str())
    } else {
        (deploy.as_str(), build)
    };
    format!(
        "audience = \"a\"\n\n[[issuer]]\nurl = \"https://gitlab.example.com\"\n\n{first}{second}"
    )
}

const UNPROTECTED: &str = "project_id = \"4242\"\nref_type = \"branch\"\nref = \"main\"";
const TYPOS: &str = "namespace_id = \"72\"\nrefprotected = \"true\"\nenviroment = \"prod\"\nref = \"*\"\nproject_path = \"*/*\"";
/// `UNPROTECTED` with its conditions in another order.
const UNPROTECTED_REORDERED: &str = "ref = \"main\"\nref_type = \"branch\"\nproject_id = \"4242\"";

/// Each finding's fingerprint, keyed by what the finding says apart from rule numbers and lines.
fn prints(text: &str) -> Vec<(String, usize, String)> {
    let policy =
        token_broker_policy::parse(Path::new("policy.toml"), text, &|_| Err("none".into()))
            .unwrap();
    let findings = lint(&policy);
    let report = code_quality(&policy_toml(), &findings, None);
    findings
        .iter()
        .zip(report.as_array().unwrap())
        .map(|(f, issue)| {
            let print = issue["fingerprint"].as_str().unwrap().to_owned();
            (
                print,
                f.line,
                format!("{} {} {:?}", f.id, f.grant, f.subject),
            )
        })
        .collect()
}

fn fingerprint_set(prints: &[(String, usize, String)]) -> BTreeSet<&str> {
    prints.iter().map(|(print, ..)| print.as_str()).collect()
}

#[test]
fn fingerprints_survive_a_rule_inserted_above() {
    let before = prints(&two_roles(&[UNPROTECTED, TYPOS], false));
    let inserted = "namespace_id = \"99\"\nref = \"main\"";
    let after = prints(&two_roles(&[inserted, UNPROTECTED, TYPOS], false));
    let (old, new) = (fingerprint_set(&before), fingerprint_set(&after));
    assert!(old.is_subset(&new), "{before:#?}\n{after:#?}");
    // The inserted rule draws TB103 and TB104 of its own, and nothing kept its line.
    assert_eq!(new.len(), old.len() + 2, "{after:#?}");
    let moved = |(print, line, _): &(String, usize, String)| {
        after.iter().any(|(p, l, _)| p == print && l != line)
    };
    assert!(
        before.iter().filter(|f| f.1 > 10).all(moved),
        "{before:#?}\n{after:#?}"
    );
}

#[test]
fn fingerprints_survive_rules_reordered_and_roles_moved() {
    let before = prints(&two_roles(&[UNPROTECTED, TYPOS], false));
    for (what, text) in [
        ("rules swapped", two_roles(&[TYPOS, UNPROTECTED], false)),
        ("roles moved", two_roles(&[UNPROTECTED, TYPOS], true)),
        (
            "conditions reordered",
            two_roles(&[UNPROTECTED_REORDERED, TYPOS], false),
        ),
    ] {
        let after = prints(&text);
        assert_eq!(
            fingerprint_set(&before),
            fingerprint_set(&after),
            "{what}:\n{before:#?}\n{after:#?}"
        );
        let lines = |p: &[(String, usize, String)]| p.iter().map(|f| f.1).collect::<Vec<_>>();
        if what != "conditions reordered" {
            assert_ne!(lines(&before), lines(&after), "{what} moved nothing");
        }
    }
}

#[test]
fn fingerprints_tell_apart_findings_of_one_lint_on_different_rules_or_claims() {
    // TB103 on both rules; TB105 twice and TB102 twice on the second.
    let found = prints(&two_roles(&[UNPROTECTED, TYPOS], false));
    let count = |id: &str| found.iter().filter(|f| f.2.starts_with(id)).count();
    assert_eq!(
        (count("TB103 deploy"), count("TB105"), count("TB102")),
        (2, 2, 2)
    );
    assert_eq!(fingerprint_set(&found).len(), found.len(), "{found:#?}");
}

#[test]
fn identical_rules_still_get_distinct_fingerprints_and_the_first_keeps_its_own() {
    let once = prints(&two_roles(&[UNPROTECTED], false));
    let thrice = prints(&two_roles(&[UNPROTECTED, UNPROTECTED, UNPROTECTED], false));
    assert_eq!(fingerprint_set(&thrice).len(), thrice.len(), "{thrice:#?}");
    assert!(
        fingerprint_set(&once).is_subset(&fingerprint_set(&thrice)),
        "{once:#?}\n{thrice:#?}"
    );
}

#[test]
fn a_compile_error_keeps_its_fingerprint_when_its_line_moves() {
    let at = |line| {
        code_quality(
            &policy_toml(),
            &[],
            Some(("policy.toml", line, "unknown key `arm`")),
        )
    };
    assert_eq!(at(7)[0]["fingerprint"], at(12)[0]["fingerprint"]);
    assert_eq!(at(12)[0]["location"]["lines"]["begin"], 12);
    let other = code_quality(
        &policy_toml(),
        &[],
        Some(("policy.toml", 7, "unknown key `ar`")),
    );
    assert_ne!(at(7)[0]["fingerprint"], other[0]["fingerprint"]);
}

#[test]
fn role_findings_point_at_the_key_they_are_about() {
    // `ref = "*"` pins no ref, so the `ref` session tag draws TB108.
    let text = two_roles(&[TYPOS], false);
    let line_of = |key: &str| text.lines().position(|l| l.starts_with(key)).unwrap() + 1;
    let policy =
        token_broker_policy::parse(Path::new("policy.toml"), &text, &|_| Err("none".into()))
            .unwrap();
    let findings = lint(&policy);
    let line = |id: &str| findings.iter().find(|f| f.id == id).map(|f| f.line);
    assert_eq!(
        line("TB108"),
        Some(line_of("session_tags")),
        "{findings:#?}"
    );
    assert_eq!(
        line("TB109"),
        Some(line_of("max_duration")),
        "{findings:#?}"
    );
    let report = code_quality(&policy_toml(), &findings, None);
    let tb109 = report
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["check_name"] == "TB109")
        .unwrap();
    assert_eq!(tb109["location"]["lines"]["begin"], line_of("max_duration"));
}

/// A directory under the system's temporary one, removed when dropped (the crate has no
/// `tempfile`, and these tests need only a few files).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tb-report-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.0.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn repository_path_is_relative_to_the_nearest_git_root_with_slashes() {
    let scratch = Scratch::new("repo");
    std::fs::create_dir_all(scratch.0.join(".git")).unwrap();
    let policy = scratch.write("deploy/prod/policy.toml", "");
    assert_eq!(repository_path(&policy), "deploy/prod/policy.toml");
    let roundabout = scratch.0.join("deploy/../deploy/prod/./policy.toml");
    assert_eq!(repository_path(&roundabout), "deploy/prod/policy.toml");

    // A submodule or worktree has a `.git` file, and is the nearer root.
    scratch.write("deploy/.git", "gitdir: ../.git/modules/deploy\n");
    assert_eq!(repository_path(&policy), "prod/policy.toml");
}

#[test]
fn repository_path_falls_back_to_the_path_as_given() {
    let scratch = Scratch::new("norepo");
    let outside = scratch.write("policy.toml", "");
    let missing = Path::new("no/such/dir/policy.toml");
    assert_eq!(repository_path(missing), "no/such/dir/policy.toml");
    // The system's temporary directory is in no repository (were it, this would name its path).
    assert_eq!(repository_path(&outside), outside.display().to_string());
}

/// The outcome of running `cases` against a policy with one role, `deploy`, whose rule 1
/// allows `main` of project 4242.
fn run_cases(scratch: &Scratch, cases: &str) -> (PathBuf, Outcome) {
    let policy = scratch.write(
        "policy.toml",
        "audience = \"a\"\n[[issuer]]\nurl = \"https://gitlab.example.com\"\n\
         [role.deploy]\narn = \"arn:aws:iam::123456789012:role/deploy\"\n\
         [[role.deploy.allow]]\nproject_id = \"4242\"\nref = \"main\"\n",
    );
    let cases_file = scratch.write("policy.tests.toml", cases);
    let policy = token_broker_policy::load(&policy).unwrap();
    let outcome = cases::run(&policy, &cases_file).unwrap();
    (cases_file, outcome)
}

const CASES: &str = r#"
[[case]]
name = "main <deploys> & \"is\" allowed"
role = "deploy"
claims = { project_id = "4242", ref = "main" }
expect = "allow"

[[case]]
name = "main is denied (wrong on purpose) <&>"
role = "deploy"
claims = { project_id = "4242", ref = "main" }
expect = "deny"
"#;

#[test]
fn junit_says_no_case_errored_and_puts_the_problem_before_the_trace() {
    let scratch = Scratch::new("junit-order");
    let (cases_file, outcome) = run_cases(&scratch, CASES);
    let xml = junit(&cases_file, &outcome);
    assert!(
        xml.contains(r#"<testsuites tests="2" failures="1" errors="0">"#),
        "{xml}"
    );
    assert!(
        xml.contains(r#" tests="2" failures="1" errors="0" skipped="0">"#),
        "{xml}"
    );
    let text = xml
        .split_once("<failure ")
        .and_then(|(_, rest)| rest.split_once('>'))
        .and_then(|(_, rest)| rest.split_once("</failure>"))
        .map(|(text, _)| text)
        .unwrap();
    let (problem, trace) = text
        .split_once("\n\n")
        .expect("a blank line after the problem");
    assert_eq!(problem, "expected deny, but rule 1 allows");
    assert!(
        trace.starts_with("role &quot;deploy&quot;: ALLOW (rule 1)\n  rule 1 (line "),
        "{trace}"
    );
}

#[test]
fn junit_is_valid_against_the_junit_10_schema() {
    let scratch = Scratch::new("junit-xsd");
    let (cases_file, outcome) = run_cases(&scratch, CASES);
    assert_eq!((outcome.cases.len(), outcome.passed()), (2, 1));
    let xml = junit(&cases_file, &outcome);
    validate_junit(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));

    let passing = run_cases(&scratch, &CASES[..CASES.rfind("[[case]]").unwrap()]);
    let xml = junit(&passing.0, &passing.1);
    validate_junit(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
}

#[test]
fn the_schema_check_can_fail() {
    // Without `errors`, which the schema requires of a testsuite: proves xmllint is not
    // accepting everything.
    let xml = "<testsuites><testsuite name=\"s\" tests=\"0\" failures=\"0\"/></testsuites>";
    let error = validate_junit(xml).unwrap_err();
    assert!(error.contains("errors"), "{error}");
}

#[test]
fn cases_that_cannot_run_are_one_failed_case_valid_against_the_junit_10_schema() {
    let xml = token_broker_policy::report::junit_error(
        Path::new("policy.tests.toml"),
        "the policy compiles",
        "the policy does not compile: policy.toml:3:7: role \"x\": `arn` must be a string <&>",
    );
    assert!(xml.contains(r#"failures="1""#), "{xml}");
    assert!(
        xml.contains("<failure message=\"the policy does not compile: policy.toml:3:7"),
        "{xml}"
    );
    assert!(xml.contains("&lt;&amp;&gt;"), "{xml}");
    validate_junit(&xml).unwrap();
}
