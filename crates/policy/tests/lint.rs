//! One fixture policy per lint proves it fires; a clean policy proves no false positive.

use std::path::Path;

use token_broker_policy::lint::{LINTS, Severity, lint, render_human, rule_content};

fn findings(fixture: &str) -> Vec<token_broker_policy::lint::Finding> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/lint")
        .join(fixture);
    lint(&token_broker_policy::load(&path).unwrap())
}

#[test]
fn every_lint_fires_on_its_fixture() {
    for (id, ..) in LINTS {
        let found = findings(&format!("{id}.toml"));
        assert!(
            found.iter().any(|f| f.id == *id),
            "{id} did not fire: {found:#?}"
        );
    }
}

#[test]
fn the_clean_policy_has_no_finding() {
    assert_eq!(findings("clean.toml"), vec![]);
}

#[test]
fn findings_carry_line_rule_and_a_hint() {
    let typo = findings("TB105.toml")
        .into_iter()
        .find(|f| f.id == "TB105")
        .unwrap();
    assert_eq!((typo.rule, typo.line), (Some(1), 10));
    assert!(
        typo.message.contains("did you mean \"project_id\""),
        "{}",
        typo.message
    );
    let shadowed = findings("TB106.toml")
        .into_iter()
        .find(|f| f.id == "TB106")
        .unwrap();
    assert_eq!(shadowed.rule, Some(2));
    assert!(shadowed.message.contains("rule 1"), "{}", shadowed.message);
}

#[test]
fn allow_path_only_waives_the_unpinned_identity_lint() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lint/TB101.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "project_path = \"acme/web\"",
        "project_path = \"acme/web\"\nallow_path_only = true",
    );
    let policy = token_broker_policy::parse(&path, &text, &|_| Err("none".into())).unwrap();
    assert!(lint(&policy).iter().all(|f| f.id != "TB101"));
}

/// A policy whose one rule is otherwise clean, plus `line`.
fn with_condition(line: &str) -> String {
    format!(
        "audience = \"a\"\n[[issuer]]\nurl = \"https://gitlab.example.com\"\n\
         [role.deploy]\narn = \"arn:aws:iam::123456789012:role/deploy\"\n\
         [[role.deploy.allow]]\nnamespace_id = \"72\"\nref_type = \"branch\"\n\
         ref_protected = \"true\"\n{line}\n"
    )
}

fn ids(text: &str) -> Vec<&'static str> {
    let policy =
        token_broker_policy::parse(Path::new("policy.toml"), text, &|_| Err("none".into()))
            .unwrap();
    lint(&policy).into_iter().map(|f| f.id).collect()
}

#[test]
fn match_everything_fires_on_identifying_claims_whose_patterns_are_only_wildcards() {
    let cases: &[(&str, bool)] = &[
        (r#"ref = "main""#, false),
        (r#"ref = "v*""#, false),
        (r#"ref = "release-*""#, false),
        (r#"ref = "*-*""#, false),
        (r#"ref = "[a-z]*""#, false),
        (r#"ref = "*""#, true),
        (r#"ref = "**""#, true),
        (r#"ref = "?*""#, true),
        (r#"ref = "*?""#, true),
        (r#"ref = "***""#, true),
        (r#"ref = "**/*""#, true),
        (r#"ref = "?""#, true),
        (r#"ref = ["main", "?*"]"#, true),
        (r#"project_path = "*/*""#, true),
        (r#"project_path = "acme/*""#, false),
        (r#"environment = "?*""#, true),
        (r#"environment = "production""#, false),
        // Not a claim that says which job this is: no finding.
        (r#"sha = "*""#, false),
        (r#"runner_environment = "**""#, false),
    ];
    for (line, fires) in cases {
        let found = ids(&with_condition(line));
        assert_eq!(found.contains(&"TB102"), *fires, "{line}: {found:?}");
    }
}

#[test]
fn role_chaining_cap_warns_on_sessions_over_an_hour() {
    let cases: &[(&str, Option<&str>)] = &[
        ("15m", None),
        ("1h", None),
        ("3600s", None),
        ("3601s", Some(r#"max_duration = "3601s""#)),
        ("90m", Some(r#"max_duration = "90m""#)),
        ("4h", Some(r#"max_duration = "4h""#)),
    ];
    for (duration, expected) in cases {
        let text = with_condition(r#"ref = "main""#).replace(
            "role/deploy\"\n",
            &format!("role/deploy\"\nmax_duration = \"{duration}\"\n"),
        );
        let policy =
            token_broker_policy::parse(Path::new("p.toml"), &text, &|_| Err("none".into()))
                .unwrap();
        let found: Vec<_> = lint(&policy)
            .into_iter()
            .filter(|f| f.id == "TB109")
            .collect();
        match (expected, found.as_slice()) {
            (None, []) => {}
            (Some(asked), [finding]) => {
                assert_eq!(finding.severity, Severity::Warning, "{duration}");
                assert!(finding.message.starts_with(asked), "{}", finding.message);
                assert!(
                    finding
                        .message
                        .contains("role chaining, which STS caps at 1 h; sessions will be 1 h"),
                    "{}",
                    finding.message
                );
            }
            _ => panic!("{duration}: expected {expected:?}, found {found:#?}"),
        }
    }
}

fn fixture_text(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/lint")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

/// What the build does with a policy: bundle it with these warnings, or refuse it with a report
/// holding these lines.
type Outcome = Result<&'static [&'static str], &'static [&'static str]>;

#[test]
fn bundle_check_refuses_error_findings_and_passes_warnings() {
    let both = fixture_text("TB101.toml").replace("ref_type = \"branch\"\n", "");
    let cases: &[(String, Outcome)] = &[
        (fixture_text("clean.toml"), Ok(&[])),
        (fixture_text("TB103.toml"), Ok(&["TB103"])),
        (fixture_text("TB109.toml"), Ok(&["TB109"])),
        (
            fixture_text("TB104.toml"),
            Err(&["policy.toml:10: error[TB104 ref-without-ref-type] rule 1"]),
        ),
        (
            both,
            Err(&[
                "policy.toml:10: error[TB101 unpinned-identity] rule 1",
                "policy.toml:10: error[TB104 ref-without-ref-type] rule 1",
                "policy.toml: 2 error(s), 0 warning(s)",
            ]),
        ),
        (
            fixture_text("clean.toml").replace("ref = \"main\"", "ref = \"main[\""),
            Err(&[
                "the bundled policy is invalid: policy.toml:15:7: condition \"ref\": unclosed `[`",
            ]),
        ),
    ];
    for (text, expected) in cases {
        let outcome =
            token_broker_policy::lint::bundle_check(Path::new("policy.toml"), text, &|_| {
                Err("none".into())
            });
        match (outcome, expected) {
            (Ok(findings), Ok(ids)) => {
                let found: Vec<_> = findings.iter().map(|f| f.id).collect();
                assert_eq!(found, *ids);
            }
            (Err(report), Err(lines)) => {
                for line in *lines {
                    assert!(report.contains(line), "{line:?} not in {report}");
                }
            }
            (outcome, _) => panic!("expected {expected:?}, got {outcome:?} for\n{text}"),
        }
    }
}

#[test]
fn check_and_the_build_render_a_finding_the_same_way() {
    let path = Path::new("crates/policy/tests/fixtures/lint/TB105.toml");
    let policy =
        token_broker_policy::parse(path, &fixture_text("TB105.toml"), &|_| Err("none".into()))
            .unwrap();
    assert_eq!(
        render_human(path, &lint(&policy)),
        "role \"deploy\"\n  crates/policy/tests/fixtures/lint/TB105.toml:10: error[TB105 unknown-claim] \
         rule 1: GitLab issues no claim \"projectid\", so the rule never matches; did you mean \"project_id\"?\n\
         crates/policy/tests/fixtures/lint/TB105.toml: 1 error(s), 0 warning(s)\n"
    );
}

#[test]
fn role_findings_sit_on_the_line_of_the_key_they_are_about() {
    // `session_tags` for TB107 and TB108, `max_duration` for TB109: not the first rule's line,
    // where they sat before they had a line of their own.
    for (id, line) in [("TB107", 10), ("TB108", 10), ("TB109", 9)] {
        let found = findings(&format!("{id}.toml"))
            .into_iter()
            .find(|f| f.id == id)
            .unwrap();
        assert_eq!((found.rule, found.line), (None, line), "{id}");
    }
    let spread = fixture_text("TB108.toml").replace(
        "session_tags = [\"ref\"]",
        "session_tags = [\n  \"project_id\",\n  \"ref\",\n]",
    );
    let policy =
        token_broker_policy::parse(Path::new("p.toml"), &spread, &|_| Err("none".into())).unwrap();
    let tb108 = lint(&policy).into_iter().find(|f| f.id == "TB108").unwrap();
    assert_eq!(tb108.line, 10, "the key's line, not the tag's");
}

#[test]
fn rule_content_ignores_the_order_conditions_and_patterns_are_written_in() {
    let content = |rule: &str| {
        let text = with_condition(rule);
        let policy =
            token_broker_policy::parse(Path::new("p.toml"), &text, &|_| Err("none".into()))
                .unwrap();
        rule_content(&policy.roles[0].grant.rules[0])
    };
    let cases = [
        (r#"ref = ["main", "v*"]"#, r#"ref = ["v*", "main"]"#, true),
        (r#"ref = ["main", "v*"]"#, r#"ref = ["main"]"#, false),
        (
            r#"ref = "main""#,
            "ref = \"main\"\nallow_path_only = true",
            false,
        ),
        (r#"ref = "main""#, r#"environment = "main""#, false),
    ];
    for (a, b, same) in cases {
        assert_eq!(content(a) == content(b), same, "{a} / {b}");
    }
    let reordered = with_condition(r#"ref = "main""#).replace(
        "namespace_id = \"72\"\nref_type = \"branch\"\n",
        "ref_type = \"branch\"\nnamespace_id = \"72\"\n",
    );
    let policy =
        token_broker_policy::parse(Path::new("p.toml"), &reordered, &|_| Err("none".into()))
            .unwrap();
    assert_eq!(
        rule_content(&policy.roles[0].grant.rules[0]),
        content(r#"ref = "main""#)
    );
}
