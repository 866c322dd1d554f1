//! Table tests for compile and decide, always mixing matching and non-matching cases.

use std::path::Path;

use super::*;
use crate::Claims;

const GITLAB: &str = "https://gitlab.example.com";

const POLICY: &str = concat!(
    r#"
audience = "https://token-broker.example.com"

[[issuer]]
url = "https://gitlab.example.com"

"#,
    include_str!("../tests/fixtures/deploy-web-prod.toml"),
    r#"
[role.nightly]
arn = "arn:aws:iam::123456789012:role/ci/nightly"
max_duration = "30m"

[[role.nightly.allow]]
project_id = ["4242", "4343"]
ref = "release/**"
"#
);

fn compile(text: &str) -> Result<Policy, PolicyError> {
    parse(Path::new("policy.toml"), text, &|path| match path {
        "policies/deploy-web-prod.json" => {
            Ok(r#"{ "Version": "2012-10-17", "Statement": [] }"#.into())
        }
        "policies/big.json" => Ok(format!(
            r#"{{"Version":"2012-10-17","Sid":"{}"}}"#,
            "x".repeat(3000)
        )),
        "policies/broken.json" => Ok("{ not json".into()),
        other => Err(format!("no such file {other}")),
    })
}

fn job(pairs: &[(&str, &str)]) -> Claims {
    let mut all = vec![
        ("project_id", "4242"),
        ("namespace_id", "72"),
        ("project_path", "acme/web"),
        ("ref", "main"),
        ("ref_type", "branch"),
        ("ref_protected", "true"),
        ("environment", "production"),
    ];
    for (k, v) in pairs {
        all.retain(|(name, _)| name != k);
        if !v.is_empty() {
            all.push((k, v));
        }
    }
    Claims::from_pairs(GITLAB, all)
}

#[test]
fn the_design_example_compiles_with_its_defaults() {
    let policy = compile(POLICY).unwrap();
    assert_eq!(
        policy.issuers[0].jwks_url,
        "https://gitlab.example.com/oauth/discovery/keys"
    );
    assert_eq!(policy.issuers[0].algorithms, vec![Algorithm::RS256]);
    let role = policy.role("deploy-web-prod").unwrap();
    assert_eq!(role.max_duration.as_secs(), 3600);
    assert_eq!(
        role.session_policy.as_deref(),
        Some(r#"{"Statement":[],"Version":"2012-10-17"}"#)
    );
    assert_eq!(role.grant.rules[1].line, 20);
}

/// What `Policy::decide` said, as `Grant::decide` says it.
fn decision<G>(result: Result<Admitted<'_, G>, Denial>) -> Decision {
    result.into()
}

#[test]
fn the_decision_hands_back_the_role_or_token_that_admitted() {
    let policy = compile(POLICY).unwrap();
    let admitted = policy.decide("deploy-web-prod", &job(&[])).unwrap();
    assert_eq!(admitted.grant.grant.name, "deploy-web-prod");
    assert_eq!(admitted.rule, 1);
}

#[test]
fn decisions_follow_the_rules_and_deny_by_default() {
    let policy = compile(POLICY).unwrap();
    let allow = |rule| Decision::Allow { rule };
    let cases: Vec<(&str, Claims, Option<Decision>)> = vec![
        ("deploy-web-prod", job(&[]), Some(allow(1))),
        ("deploy-web-prod", job(&[("ref", "feature")]), None),
        ("deploy-web-prod", job(&[("ref_protected", "false")]), None),
        ("deploy-web-prod", job(&[("environment", "")]), None),
        ("deploy-web-prod", job(&[("project_id", "4243")]), None),
        (
            "deploy-web-prod",
            job(&[("ref_type", "tag"), ("ref", "v1.2")]),
            Some(allow(2)),
        ),
        (
            "deploy-web-prod",
            job(&[("ref_type", "tag"), ("ref", "release-7")]),
            Some(allow(2)),
        ),
        (
            "deploy-web-prod",
            job(&[("ref_type", "branch"), ("ref", "v1.2")]),
            None,
        ),
        (
            "deploy-web-prod",
            job(&[("ref_type", "tag"), ("ref", "main")]),
            None,
        ),
        (
            "deploy-web-prod",
            job(&[
                ("ref_type", "tag"),
                ("ref", "v1"),
                ("project_path", "acme/sub/web"),
            ]),
            None,
        ),
        (
            "deploy-web-prod",
            job(&[("ref_type", "tag"), ("ref", "v1"), ("namespace_id", "73")]),
            None,
        ),
        ("nightly", job(&[("ref", "release/a/b")]), Some(allow(1))),
        ("nightly", job(&[("ref", "release")]), None),
        (
            "nightly",
            job(&[("project_id", "4343"), ("ref", "release/x")]),
            Some(allow(1)),
        ),
        (
            "nightly",
            job(&[("project_id", "4344"), ("ref", "release/x")]),
            None,
        ),
        ("missing", job(&[]), None),
    ];
    for (role, claims, expected) in cases {
        let decision = decision(policy.decide(role, &claims));
        match expected {
            Some(allowed) => assert_eq!(decision, allowed, "{role} {claims:?}"),
            None => assert!(
                matches!(decision, Decision::Deny(_)),
                "{role} {claims:?} gave {decision:?}"
            ),
        }
    }
}

#[test]
fn a_denial_names_the_failing_claim_of_the_closest_rule_only() {
    let policy = compile(POLICY).unwrap();
    let Decision::Deny(denial) =
        decision(policy.decide("deploy-web-prod", &job(&[("ref", "feature")])))
    else {
        panic!("should deny");
    };
    assert_eq!(
        denial.to_string(),
        r#"role "deploy-web-prod": claim "ref" = "feature" does not satisfy rule 1"#
    );
    assert!(
        !denial.to_string().contains("main"),
        "must not reveal the expected value"
    );
    let Decision::Deny(denial) =
        decision(policy.decide("deploy-web-prod", &job(&[("environment", "")])))
    else {
        panic!("should deny");
    };
    assert_eq!(denial.claim(), Some("environment"));
    assert!(denial.to_string().contains("missing"));
}

#[test]
fn a_rule_only_accepts_tokens_of_its_issuer() {
    let text = POLICY.replace(
        "[[issuer]]\nurl = \"https://gitlab.example.com\"\n",
        "[[issuer]]\nurl = \"https://gitlab.example.com\"\n[[issuer]]\nurl = \"https://other.example.com\"\n",
    );
    let error = compile(&text).unwrap_err();
    assert!(
        error.message.contains("every rule must name its `issuer`"),
        "{error}"
    );
    let text = text
        .replace(
            "project_id = \"4242\"\nref_type",
            "issuer = \"https://gitlab.example.com\"\nproject_id = \"4242\"\nref_type",
        )
        .replace(
            "namespace_id = \"72\"",
            "issuer = \"https://gitlab.example.com\"\nnamespace_id = \"72\"",
        )
        .replace(
            "project_id = [\"4242\", \"4343\"]",
            "issuer = \"https://other.example.com\"\nproject_id = [\"4242\", \"4343\"]",
        );
    let policy = compile(&text).unwrap();
    let from_other = Claims::from_pairs(
        "https://other.example.com",
        [
            ("project_id", "4242"),
            ("ref", "main"),
            ("ref_type", "branch"),
            ("ref_protected", "true"),
            ("environment", "production"),
        ],
    );
    assert!(matches!(
        decision(policy.decide("deploy-web-prod", &from_other)),
        Decision::Deny(Denial::NoRuleForIssuer { .. })
    ));
    let nightly_other = Claims::from_pairs(
        "https://other.example.com",
        [("project_id", "4242"), ("ref", "release/1")],
    );
    assert_eq!(
        decision(policy.decide("nightly", &nightly_other)),
        Decision::Allow { rule: 1 }
    );
    assert!(matches!(
        decision(policy.decide("nightly", &job(&[("ref", "release/1")]))),
        Decision::Deny(_)
    ));
}

#[test]
fn broken_policies_fail_with_file_line_and_reason() {
    // Each case edits the example policy once: (text to replace, replacement, expected message).
    let cases: &[(&str, &str, &str)] = &[
        (
            "url = \"https://gitlab.example.com\"",
            "url = \"http://gitlab.example.com\"",
            "must use https",
        ),
        (
            "url = \"https://gitlab.example.com\"",
            "url = \"https://gitlab.example.com\"\nalgorithms = [\"HS256\"]",
            "not accepted",
        ),
        (
            "url = \"https://gitlab.example.com\"",
            "url = \"https://gitlab.example.com\"\nalgorithms = [\"none\"]",
            "not accepted",
        ),
        (
            "role/deploy-web-prod\"",
            "user/deploy-web-prod\"",
            "not an IAM role ARN",
        ),
        (
            "max_duration = \"1h\"",
            "max_duration = \"13h\"",
            "outside STS's range",
        ),
        (
            "max_duration = \"1h\"",
            "max_duration = \"1d\"",
            "not a duration",
        ),
        ("ref = \"main\"", "ref = \"ma[in\"", "unclosed"),
        ("ref = \"main\"", "ref = []", "empty list"),
        (
            "ref_protected = \"true\"",
            "ref_protected = true",
            "compared as strings",
        ),
        ("ref = \"main\"", "Ref = \"main\"", "not a claim name"),
        (
            "policies/deploy-web-prod.json",
            "policies/broken.json",
            "not JSON",
        ),
        (
            "policies/deploy-web-prod.json",
            "policies/big.json",
            "at most 2048",
        ),
        (
            "policies/deploy-web-prod.json",
            "policies/none.json",
            "no such file",
        ),
        (
            "[\"project_id\", \"ref\", \"environment\"]",
            "[\"ref\", \"ref\"]",
            "listed twice",
        ),
        (
            "max_duration = \"1h\"",
            "max_duration = \"1h\"\nunknown_key = 1",
            "unknown field",
        ),
        (
            "[role.nightly]",
            "[role.\"bad name\"]\narn = \"arn:aws:iam::123456789012:role/x\"\n[role.nightly]",
            "role name",
        ),
        (
            "[[role.nightly.allow]]\n",
            "[[role.nightly.allow]]\nissuer = \"https://elsewhere.example.com\"\n",
            "not one of the [[issuer]]",
        ),
        (
            "[[role.nightly.allow]]\nproject_id = [\"4242\", \"4343\"]\nref = \"release/**\"",
            "[[role.nightly.allow]]",
            "at least one claim condition",
        ),
        (
            "audience = \"https://token-broker.example.com\"",
            "audience = \" \"",
            "audience",
        ),
        (
            "audience = \"https://token-broker.example.com\"",
            "",
            "missing field `audience`",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(POLICY.contains(from), "case {expected:?} edits nothing");
        let error = compile(&POLICY.replacen(from, to, 1)).expect_err(expected);
        assert!(
            error.message.contains(expected),
            "{expected:?} not in {error}"
        );
        assert!(error.to_string().starts_with("policy.toml:"), "{error}");
    }
    let error = compile("audience = \"x\"\n").unwrap_err();
    assert!(error.message.contains("trusts no issuer"), "{error}");
    let error = compile(&POLICY.replacen("ref = \"main\"", "ref = \"ma[in\"", 1)).unwrap_err();
    assert_eq!((error.line, error.column), (16, 7), "{error}");
}

#[test]
fn http_issuers_are_only_accepted_on_loopback() {
    for (url, ok) in [
        ("http://127.0.0.1:8080", true),
        ("http://localhost:3000", true),
        ("http://[::1]:3000", true),
        ("http://gitlab.example.com", false),
        ("http://10.0.0.1", false),
        ("https://gitlab.example.com", true),
        ("ftp://gitlab.example.com", false),
        ("https://user@gitlab.example.com", false),
    ] {
        let text = format!("audience = \"a\"\n[[issuer]]\nurl = \"{url}\"\n");
        assert_eq!(compile(&text).is_ok(), ok, "{url}");
    }
}

const TOKENS: &str = r#"
[token.aws-web-identity]
audience = "sts.amazonaws.com"
max_ttl = "10m"
claims = ["project_id", "ref", "environment"]

[[token.aws-web-identity.allow]]
project_id = "4242"
ref_type = "branch"
ref = "main"
ref_protected = "true"

[token.vault]
audience = "https://vault.example.com"

[[token.vault.allow]]
namespace_id = "72"
"#;

#[test]
fn tokens_compile_with_defaults_and_decide_by_audience() {
    let policy = compile(&format!("{POLICY}{TOKENS}")).unwrap();
    let web = policy.token_for("sts.amazonaws.com").unwrap();
    assert_eq!(
        (web.grant.name.as_str(), web.max_ttl.as_secs()),
        ("aws-web-identity", 600)
    );
    assert_eq!(web.claims, ["project_id", "ref", "environment"]);
    assert_eq!(
        policy
            .token_for("https://vault.example.com")
            .unwrap()
            .max_ttl
            .as_secs(),
        900
    );
    let cases = [
        ("sts.amazonaws.com", job(&[]), true),
        ("sts.amazonaws.com", job(&[("ref", "dev")]), false),
        ("sts.amazonaws.com", job(&[("ref_type", "tag")]), false),
        (
            "https://vault.example.com",
            job(&[("project_id", "1")]),
            true,
        ),
        (
            "https://vault.example.com",
            job(&[("namespace_id", "73")]),
            false,
        ),
        ("https://other.example.com", job(&[]), false),
    ];
    for (audience, claims, allowed) in cases {
        let decision = decision(policy.decide_token(audience, &claims));
        assert_eq!(
            matches!(decision, Decision::Allow { .. }),
            allowed,
            "{audience} {claims:?}"
        );
    }
    let Decision::Deny(denial) =
        decision(policy.decide_token("https://other.example.com", &job(&[])))
    else {
        panic!()
    };
    assert_eq!(
        denial.to_string(),
        r#"the policy issues no token for audience "https://other.example.com""#
    );
    let Decision::Deny(denial) =
        decision(policy.decide_token("sts.amazonaws.com", &job(&[("ref", "dev")])))
    else {
        panic!()
    };
    assert!(
        denial
            .to_string()
            .starts_with(r#"token "aws-web-identity": claim "ref""#),
        "{denial}"
    );
}

#[test]
fn broken_token_entries_are_refused() {
    let cases = [
        (
            "claims = [\"project_id\", \"ref\", \"environment\"]",
            "claims = [\"sub\"]",
            "its own",
        ),
        (
            "claims = [\"project_id\", \"ref\", \"environment\"]",
            "claims = [\"ref\", \"ref\"]",
            "listed twice",
        ),
        ("max_ttl = \"10m\"", "max_ttl = \"30s\"", "max_ttl"),
        ("max_ttl = \"10m\"", "max_ttl = \"13h\"", "max_ttl"),
        (
            "audience = \"https://vault.example.com\"",
            "audience = \"sts.amazonaws.com\"",
            "two [token] entries",
        ),
        (
            "audience = \"https://vault.example.com\"",
            "audience = \"\"",
            "non-empty",
        ),
    ];
    for (from, to, expected) in cases {
        let text = format!("{POLICY}{}", TOKENS.replacen(from, to, 1));
        let error = compile(&text).expect_err(expected);
        assert!(
            error.message.contains(expected),
            "{expected:?} not in {error}"
        );
        assert!(error.line > 0, "{error}");
    }
}

#[test]
fn an_indexed_grant_decides_exactly_like_a_full_scan() {
    let mut text = String::from(
        "audience = \"a\"\n[[issuer]]\nurl = \"https://gitlab.example.com\"\n[role.r]\narn = \"arn:aws:iam::123456789012:role/r\"\n",
    );
    for i in 0..60 {
        let rule = match i % 4 {
            0 => format!("project_id = \"{}\"\nref = \"main\"", 100 + i),
            1 => format!(
                "project_id = [\"{}\", \"{}\"]\nref = \"release/*\"",
                100 + i,
                200 + i
            ),
            2 => format!("namespace_id = \"{}\"\nref_type = \"tag\"", 300 + i),
            _ => format!("project_path = \"group-{i}/*\"\nallow_path_only = true"),
        };
        text.push_str(&format!("[[role.r.allow]]\n{rule}\n"));
    }
    let policy = compile(&text).unwrap();
    let grant = &policy.role("r").unwrap().grant;
    assert!(grant.index.is_some(), "60 rules are indexed");
    let mut jobs = Vec::new();
    for id in [100, 101, 104, 105, 205, 109, 302, 306, 999] {
        for (r, rt, path) in [
            ("main", "branch", "x/y"),
            ("release/1", "branch", "group-3/web"),
            ("v1", "tag", "group-7/a"),
        ] {
            let (id, ns) = (id.to_string(), (id + 200).to_string());
            jobs.push(Claims::from_pairs(
                GITLAB,
                [
                    ("project_id", id.as_str()),
                    ("namespace_id", ns.as_str()),
                    ("ref", r),
                    ("ref_type", rt),
                    ("project_path", path),
                ],
            ));
        }
    }
    let mut allowed = 0;
    for job in &jobs {
        let scan = grant
            .rules
            .iter()
            .find(|rule| rule.issuer == job.issuer() && rule.evaluate(job).is_none())
            .map(|rule| rule.number);
        match grant.decide(job) {
            Decision::Allow { rule } => {
                allowed += 1;
                assert_eq!(Some(rule), scan, "{job:?}");
            }
            Decision::Deny(_) => assert_eq!(scan, None, "{job:?}"),
        }
    }
    assert!(
        allowed > 5 && allowed < jobs.len(),
        "mixed allow and deny: {allowed}/{}",
        jobs.len()
    );
}

#[test]
fn token_uses_defaults_to_no_limit_and_a_grant_overrides_the_policy_default() {
    let uses = |policy: &Policy, role: &str| policy.role(role).unwrap().grant.token_uses;
    let plain = compile(POLICY).unwrap();
    assert_eq!(uses(&plain, "deploy-web-prod"), None);
    assert!(!plain.guards_replay());

    let global = compile(&format!("token_uses = 1\n{POLICY}")).unwrap();
    assert_eq!(uses(&global, "deploy-web-prod"), Some(1));
    assert_eq!(uses(&global, "nightly"), Some(1));
    assert!(global.guards_replay());

    let text = format!("token_uses = 1\n{POLICY}{TOKENS}")
        .replacen(
            "max_duration = \"30m\"",
            "max_duration = \"30m\"\ntoken_uses = \"unlimited\"",
            1,
        )
        .replacen(
            "max_duration = \"1h\"",
            "max_duration = \"1h\"\ntoken_uses = 2",
            1,
        );
    let mixed = compile(&text).unwrap();
    assert_eq!(uses(&mixed, "deploy-web-prod"), Some(2));
    assert_eq!(uses(&mixed, "nightly"), None);
    let token = mixed.token_for("sts.amazonaws.com").unwrap();
    assert_eq!(token.grant.token_uses, Some(1));
}

#[test]
fn a_token_uses_that_is_not_a_count_or_unlimited_is_refused_at_its_line() {
    for bad in ["0", "-1", "1001", "\"once\"", "1.5", "true"] {
        let text = POLICY.replacen(
            "max_duration = \"30m\"",
            &format!("max_duration = \"30m\"\ntoken_uses = {bad}"),
            1,
        );
        let error = compile(&text).expect_err(bad);
        assert!(error.message.contains("token_uses"), "{bad}: {error}");
        assert!(error.line > 0, "{bad}: {error}");
    }
}
