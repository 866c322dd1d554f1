//! GitLab's report formats: Code Quality issues carry every field GitLab documents, with
//! fingerprints that are stable and distinct; JUnit XML escapes what a case name can hold.

use std::path::Path;

use token_broker_policy::Claims;
use token_broker_policy::cases::{CaseFailure, CaseRun, Outcome};
use token_broker_policy::lint::lint;
use token_broker_policy::report::{code_quality, junit};

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
    let report = code_quality(Path::new("policy.toml"), &findings, None);
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
    let again = code_quality(Path::new("policy.toml"), &findings, None);
    assert_eq!(report, again, "fingerprints are stable across runs");
    let mut prints: Vec<&str> = issues
        .iter()
        .map(|i| i["fingerprint"].as_str().unwrap())
        .collect();
    prints.sort_unstable();
    prints.dedup();
    assert_eq!(prints.len(), issues.len(), "fingerprints are distinct");

    let broken = code_quality(
        Path::new("policy.toml"),
        &[],
        Some((7, "unknown key `arm`")),
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
        xml.contains(r#"<testsuite name="policy.tests.toml" tests="2" failures="1">"#),
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
