//! One fixture policy per lint proves it fires; a clean policy proves no false positive.

#[path = "support/example.rs"]
mod example;

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
            fixture_text("TB110.toml"),
            Err(&[
                "policy.toml:11: error[TB110 job-project-admits-forks] rule 1 names the project only by job_project_id",
            ]),
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

/// A policy whose one role has one rule of `conditions` (TOML lines).
fn one_rule(conditions: &[&str]) -> String {
    format!(
        "audience = \"a\"\n[[issuer]]\nurl = \"https://gitlab.example.com\"\n\
         [role.deploy]\narn = \"arn:aws:iam::123456789012:role/deploy\"\n\
         [[role.deploy.allow]]\n{}\n",
        conditions.join("\n")
    )
}

#[test]
fn job_project_admits_forks_unless_the_code_is_pinned_or_fork_pipelines_are_kept_out() {
    // (the rule's conditions, TB110 fires, TB101 fires)
    let cases: &[(&[&str], bool, bool)] = &[
        // Where the job runs, not whose code: a fork's merge request run in 4242 passes.
        (&[r#"job_project_id = "4242""#], true, false),
        (&[r#"job_namespace_id = "72""#], true, false),
        (
            &[
                r#"job_project_id = "4242""#,
                r#"ref_type = "branch""#,
                r#"ref = "main""#,
            ],
            true,
            false,
        ),
        // A path only: renamable (TB101) and the fork's code passes (TB110).
        (&[r#"job_project_path = "acme/web""#], true, true),
        (
            &[r#"job_project_path = "acme/web""#, "allow_path_only = true"],
            true,
            false,
        ),
        (
            &[
                r#"job_namespace_path = "acme""#,
                r#"job_project_path = "acme/web""#,
            ],
            true,
            true,
        ),
        // The code's project pinned too: the fork's project_id fails.
        (
            &[r#"job_project_id = "4242""#, r#"project_id = "4242""#],
            false,
            false,
        ),
        (
            &[r#"job_namespace_id = "72""#, r#"namespace_id = "72""#],
            false,
            false,
        ),
        (
            &[r#"job_project_id = "4242""#, r#"project_id = "*""#],
            true,
            false,
        ),
        (
            &[r#"job_project_id = "4242""#, r#"project_path = "acme/web""#],
            true,
            false,
        ),
        (
            &[
                r#"job_project_id = "4242""#,
                r#"project_path = "acme/web""#,
                "allow_path_only = true",
            ],
            false,
            false,
        ),
        // Fork pipelines kept out: no fork's merge request runs on a protected ref or environment,
        // nor as a push.
        (
            &[r#"job_project_id = "4242""#, r#"ref_protected = "true""#],
            false,
            false,
        ),
        (
            &[
                r#"job_project_id = "4242""#,
                r#"environment_protected = "true""#,
            ],
            false,
            false,
        ),
        (
            &[
                r#"job_project_id = "4242""#,
                r#"ref_protected = ["true", "false"]"#,
            ],
            true,
            false,
        ),
        (
            &[r#"job_project_id = "4242""#, r#"pipeline_source = "push""#],
            false,
            false,
        ),
        (
            &[
                r#"job_project_id = "4242""#,
                r#"pipeline_source = ["push", "web"]"#,
            ],
            false,
            false,
        ),
        (
            &[
                r#"job_project_id = "4242""#,
                r#"pipeline_source = "merge_request_event""#,
            ],
            true,
            false,
        ),
        (
            &[
                r#"job_project_id = "4242""#,
                r#"pipeline_source = ["push", "*_event"]"#,
            ],
            true,
            false,
        ),
        // A child pipeline of a fork's merge-request pipeline runs the fork's code as well.
        (
            &[
                r#"job_project_id = "4242""#,
                r#"pipeline_source = "parent_pipeline""#,
            ],
            true,
            false,
        ),
        // No job_* claim: TB110 has nothing to say, TB101 what it always said.
        (&[r#"project_id = "4242""#], false, false),
        (&[r#"project_path = "acme/web""#], false, true),
    ];
    for (conditions, tb110, tb101) in cases {
        let found = ids(&one_rule(conditions));
        assert_eq!(
            (found.contains(&"TB110"), found.contains(&"TB101")),
            (*tb110, *tb101),
            "{conditions:?}: {found:?}"
        );
    }
}

#[test]
fn job_project_admits_forks_is_an_error_on_token_grants_too_and_says_what_to_do() {
    let text = one_rule(&[]).replace(
        "[role.deploy]\narn = \"arn:aws:iam::123456789012:role/deploy\"\n[[role.deploy.allow]]\n",
        "[token.aws]\naudience = \"sts.amazonaws.com\"\n[[token.aws.allow]]\njob_namespace_id = \"72\"\n",
    );
    let policy =
        token_broker_policy::parse(Path::new("p.toml"), &text, &|_| Err("none".into())).unwrap();
    let found = lint(&policy);
    let tb110 = found.iter().find(|f| f.id == "TB110").expect("TB110");
    assert_eq!(
        (tb110.severity, tb110.grant.as_str(), tb110.rule),
        (Severity::Error, "aws", Some(1))
    );
    assert!(
        tb110.message.starts_with(
            "rule 1 names the group only by job_namespace_id, which a fork's merge-request pipeline"
        ),
        "{}",
        tb110.message
    );
    assert!(tb110.message.contains("pin project_id or namespace_id"));
}

#[test]
fn conditions_on_claims_gitlab_sends_as_arrays_or_objects_never_match() {
    for (line, fires) in [
        (r#"groups_direct = "acme""#, true),
        (r#"job_config = "x""#, true),
        (r#"user_identities = "github""#, true),
        (r#"job_source = "pipeline""#, false),
        (r#"job_namespace_path = "acme""#, false),
    ] {
        let found = ids(&with_condition(line));
        assert_eq!(found.contains(&"TB105"), fires, "{line}: {found:?}");
    }
}

// The token GitLab (18.4 and later) issues to a fork's merge-request pipeline run in the parent
// project, against every policy this repository ships.

fn repository(relative: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

/// examples/policy/claims/fork-merge-request.json: mallory/web (9999) is a fork of acme/web
/// (4242), and its merge request's pipeline runs in acme/web; with `overrides` applied.
fn fork_merge_request(issuer: &str, overrides: &[(&str, &str)]) -> token_broker_policy::Claims {
    let text =
        std::fs::read_to_string(repository("examples/policy/claims/fork-merge-request.json"))
            .unwrap();
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).unwrap();
    for (name, value) in overrides {
        object.insert((*name).to_owned(), (*value).into());
    }
    token_broker_policy::Claims::from_json(issuer, &object)
}

/// policy.toml with its example role uncommented (README, "Deploying", step 1).
fn bundled_policy_with_its_example() -> String {
    example::uncommented(&std::fs::read_to_string(repository("policy.toml")).unwrap())
}

/// Every policy this repository ships, compiled: name, policy.
fn shipped_policies() -> Vec<(&'static str, token_broker_policy::Policy)> {
    let read_beside = |dir: &'static str| {
        move |path: &str| {
            std::fs::read_to_string(repository(dir).join(path)).map_err(|e| e.to_string())
        }
    };
    let demo = std::fs::read_to_string(repository("examples/demo-policy.toml"))
        .unwrap()
        .replace("{issuer}", "https://gitlab.example.com");
    vec![
        (
            "examples/policy/policy.toml",
            token_broker_policy::load(&repository("examples/policy/policy.toml")).unwrap(),
        ),
        (
            "examples/demo-policy.toml",
            token_broker_policy::parse(
                Path::new("demo-policy.toml"),
                &demo,
                &read_beside("examples"),
            )
            .unwrap(),
        ),
        (
            "policy.toml, example uncommented",
            token_broker_policy::parse(
                Path::new("policy.toml"),
                &bundled_policy_with_its_example(),
                &read_beside("."),
            )
            .unwrap(),
        ),
    ]
}

#[test]
fn every_shipped_policy_denies_a_forks_merge_request_run_in_the_parent_project() {
    // The job as it comes, and as strong as a fork can make it: naming the protected production
    // environment, run by a maintainer of acme/web who may deploy there.
    let variants: &[(&str, &[(&str, &str)])] = &[
        ("as it comes", &[]),
        (
            "naming production",
            &[
                ("environment", "production"),
                ("environment_protected", "true"),
            ],
        ),
        // As the issue that asked for this token describes it: the merge request's own ref.
        (
            "on its merge request ref",
            &[
                ("ref", "refs/merge-requests/7/head"),
                ("ref_path", "refs/merge-requests/7/head"),
            ],
        ),
    ];
    let mut policies = shipped_policies();
    policies.push((
        "examples/delegation/policy.toml (a tree)",
        token_broker_policy::load(&repository("examples/delegation/policy.toml")).unwrap(),
    ));
    for (name, policy) in policies {
        let issuer = policy.issuers[0].url.clone();
        for (variant, overrides) in variants {
            let claims = fork_merge_request(&issuer, overrides);
            for grant in policy.grants() {
                let decision = grant.decide(&claims);
                assert!(
                    !decision.is_allow(),
                    "{name}: {} {:?} admits a fork's merge request ({variant}): {decision:?}",
                    grant.kind,
                    grant.name
                );
            }
        }
        assert!(
            lint(&policy).iter().all(|f| f.id != "TB110"),
            "{name}: {:#?}",
            lint(&policy)
        );
    }
}

#[test]
fn the_same_job_on_the_parents_own_protected_main_is_admitted_so_the_denial_is_about_the_fork() {
    for (name, policy) in shipped_policies() {
        let issuer = policy.issuers[0].url.clone();
        let parent = fork_merge_request(
            &issuer,
            &[
                ("project_id", "4242"),
                ("project_path", "acme/web"),
                ("namespace_id", "72"),
                ("namespace_path", "acme"),
                ("pipeline_source", "push"),
                ("ref_protected", "true"),
                ("environment", "production"),
                ("environment_protected", "true"),
            ],
        );
        let decision = policy.decide("deploy-web-prod", &parent);
        assert!(decision.is_ok(), "{name}: {decision:?}");
    }
}
