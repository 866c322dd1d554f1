//! Delegation: a team's file under the root policy's guardrail. The guardrail holds whatever
//! shape a team's rule has, and every breach of a delegate's limits is a compile error at its
//! place in the team's file.

use std::collections::HashMap;
use std::path::Path;

use token_broker_policy::{Claims, Denial, Policy, PolicyError, parse};

const GITLAB: &str = "https://gitlab.example.com";

const ROOT: &str = r#"audience = "https://token-broker.example.com"

[[issuer]]
url = "https://gitlab.example.com"

[delegate.payments]
file = "policies/payments.toml"
require = { namespace_id = ["77", "78"] }
role_arns = ["arn:aws:iam::111122223333:role/payments-*"]
max_duration = "1h"
"#;

/// Parses `root` with the files of `tree` (path → text) beside it.
fn tree(root: &str, files: &[(&str, &str)]) -> Result<Policy, PolicyError> {
    let files: HashMap<String, String> = files
        .iter()
        .map(|(path, text)| ((*path).to_owned(), (*text).to_owned()))
        .collect();
    parse(Path::new("org/policy.toml"), root, &|path| {
        files
            .get(path)
            .cloned()
            .ok_or_else(|| format!("no such file {path:?}"))
    })
}

fn team(rules: &str) -> String {
    format!(
        "[role.payments-deploy]\narn = \"arn:aws:iam::111122223333:role/payments-deploy\"\n\n{rules}"
    )
}

fn claims(pairs: &[(&str, &str)]) -> Claims {
    Claims::from_pairs(GITLAB, pairs.iter().copied())
}

/// Team rules of every shape (a project id, a namespace id, a glob on the path, a bare ref
/// condition, another team's project): each admits a job only inside the guardrail's
/// namespaces, and a job outside them that the rule matches is told the guardrail failed.
#[test]
fn the_guardrail_holds_for_every_rule_shape() {
    let shapes = [
        "project_id = \"9999\"\nref_protected = \"true\"",
        "namespace_id = \"666\"",
        "project_path = \"**\"\nallow_path_only = true",
        "project_path = \"other-team/*\"\nallow_path_only = true",
        "ref = \"*\"\nref_type = \"branch\"",
        "namespace_id = [\"77\", \"666\"]",
    ];
    for shape in shapes {
        let file = team(&format!("[[role.payments-deploy.allow]]\n{shape}\n"));
        let policy = tree(ROOT, &[("policies/payments.toml", &file)]).unwrap();
        let outside = claims(&[
            ("project_id", "9999"),
            ("namespace_id", "666"),
            ("project_path", "other-team/web"),
            ("ref", "main"),
            ("ref_type", "branch"),
            ("ref_protected", "true"),
        ]);
        match policy.decide("payments-deploy", &outside) {
            Err(Denial::Guardrail {
                delegate, failure, ..
            }) => {
                assert_eq!(delegate, "payments", "{shape}");
                assert_eq!(failure.claim, "namespace_id", "{shape}");
                assert_eq!(failure.value.as_deref(), Some("666"), "{shape}");
            }
            other => panic!("{shape}: {other:?}"),
        }
        // The same job inside the guardrail: the rule decides, as in the root policy.
        let inside = claims(&[
            ("project_id", "9999"),
            ("namespace_id", "77"),
            ("project_path", "other-team/web"),
            ("ref", "main"),
            ("ref_type", "branch"),
            ("ref_protected", "true"),
        ]);
        let decided = policy.decide("payments-deploy", &inside);
        let rule_admits = !shape.starts_with("namespace_id = \"666\"");
        assert_eq!(decided.is_ok(), rule_admits, "{shape}: {decided:?}");
    }
}

/// A job the team's rule does not match is told about the rule, not the guardrail; the
/// guardrail only ever takes away.
#[test]
fn the_guardrail_never_admits_what_no_rule_does() {
    let file = team("[[role.payments-deploy.allow]]\nproject_id = \"7701\"\n");
    let policy = tree(ROOT, &[("policies/payments.toml", &file)]).unwrap();
    let job = claims(&[("project_id", "7702"), ("namespace_id", "77")]);
    match policy.decide("payments-deploy", &job) {
        Err(Denial::NoRuleMatched { closest, .. }) => assert_eq!(closest.claim, "project_id"),
        other => panic!("{other:?}"),
    }
    let message = policy
        .decide(
            "payments-deploy",
            &claims(&[("project_id", "7701"), ("namespace_id", "5")]),
        )
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        "role \"payments-deploy\": rule 1 matches, but claim \"namespace_id\" = \"5\" is outside the guardrail of delegate \"payments\""
    );
}

/// Every breach of a delegate's limits, at its place in the team's file (`file:line:column`),
/// and a name defined twice with both places.
#[test]
fn every_breach_is_a_compile_error_at_its_place_in_the_teams_file() {
    let rule = "\n[[role.payments-deploy.allow]]\nproject_id = \"7701\"\n";
    // What breaks the limit, the team's file, where the error is, what it says.
    type Case<'a> = (&'a str, String, (&'a str, usize, usize), &'a str);
    let cases: [Case; 6] = [
        (
            "an ARN outside role_arns",
            format!(
                "[role.payments-deploy]\narn = \"arn:aws:iam::111122223333:role/search-x\"\n{rule}"
            ),
            ("org/policies/payments.toml", 2, 7),
            "is outside what delegate \"payments\" may grant",
        ),
        (
            "another account",
            format!(
                "[role.payments-deploy]\narn = \"arn:aws:iam::999999999999:role/payments-x\"\n{rule}"
            ),
            ("org/policies/payments.toml", 2, 7),
            "role_arns: arn:aws:iam::111122223333:role/payments-*",
        ),
        (
            "a duration over the cap",
            format!("{}max_duration = \"2h\"\n{rule}", team("")),
            ("org/policies/payments.toml", 4, 16),
            "max_duration 2h is over delegate \"payments\"'s cap of 1h",
        ),
        (
            "a token grant where none is allowed",
            format!(
                "{}{rule}\n[token.vault]\naudience = \"https://vault.example.com\"\n\n[[token.vault.allow]]\nproject_id = \"7701\"\n",
                team("")
            ),
            ("org/policies/payments.toml", 8, 8),
            "delegate \"payments\" may not define tokens",
        ),
        (
            "the root's own keys",
            format!("audience = \"x\"\n\n{}{rule}", team("")),
            ("org/policies/payments.toml", 1, 1),
            "unknown field `audience`",
        ),
        (
            "a rule without conditions",
            format!("{}\n[[role.payments-deploy.allow]]\n", team("")),
            ("org/policies/payments.toml", 5, 1),
            "a rule needs at least one claim condition",
        ),
    ];
    for (what, file, (path, line, column), message) in cases {
        let error = tree(ROOT, &[("policies/payments.toml", &file)]).unwrap_err();
        assert_eq!(
            (error.file.to_str().unwrap(), error.line, error.column),
            (path, line, column),
            "{what}: {error}"
        );
        assert!(error.message.contains(message), "{what}: {error}");
    }
}

#[test]
fn a_role_name_used_in_two_files_is_refused_with_both_places() {
    let root = format!(
        "{ROOT}\n[delegate.search]\nfile = \"policies/search.toml\"\nrequire = {{ namespace_id = \"90\" }}\nrole_arns = [\"arn:aws:iam::*:role/*\"]\n"
    );
    let payments = team("[[role.payments-deploy.allow]]\nproject_id = \"7701\"\n");
    let search = "# search\n[role.payments-deploy]\narn = \"arn:aws:iam::444455556666:role/search-x\"\n\n[[role.payments-deploy.allow]]\nproject_id = \"9001\"\n";
    let error = tree(
        &root,
        &[
            ("policies/payments.toml", &payments),
            ("policies/search.toml", search),
        ],
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "org/policies/search.toml:2:7: role \"payments-deploy\" is defined twice: here and in policies/payments.toml, line 1"
    );
    // And against the root's own roles.
    let root_role = format!(
        "{ROOT}\n[role.payments-deploy]\narn = \"arn:aws:iam::111122223333:role/payments-root\"\n\n[[role.payments-deploy.allow]]\nproject_id = \"1\"\n"
    );
    let error = tree(&root_role, &[("policies/payments.toml", &payments)]).unwrap_err();
    assert!(
        error
            .message
            .contains("is defined twice: here and in the root policy, line 12"),
        "{error}"
    );
}

/// Session policies are named relative to the file that names them.
#[test]
fn a_team_files_session_policy_is_read_beside_it() {
    let file = format!(
        "{}session_policy = \"payments-scope.json\"\n\n[[role.payments-deploy.allow]]\nproject_id = \"7701\"\n",
        team("")
    );
    let policy = tree(
        ROOT,
        &[
            ("policies/payments.toml", &file),
            (
                "policies/payments-scope.json",
                r#"{"Version":"2012-10-17","Statement":[]}"#,
            ),
        ],
    )
    .unwrap();
    assert!(policy.roles[0].session_policy.is_some());
}

/// The delegate entry itself: a file outside the root's directory, a guardrail without
/// conditions, an empty or malformed role_arns.
#[test]
fn a_delegate_entry_is_checked_in_the_root_policy() {
    let cases = [
        (
            "file = \"policies/payments.toml\"",
            "file = \"../payments.toml\"",
            "no `..`",
        ),
        (
            "require = { namespace_id = [\"77\", \"78\"] }",
            "require = {}",
            "a guardrail needs at least one claim condition",
        ),
        (
            "role_arns = [\"arn:aws:iam::111122223333:role/payments-*\"]",
            "role_arns = []",
            "name at least one role ARN",
        ),
        (
            "role_arns = [\"arn:aws:iam::111122223333:role/payments-*\"]",
            "role_arns = [\"payments-*\"]",
            "is not a role ARN pattern",
        ),
    ];
    for (from, to, message) in cases {
        let root = ROOT.replace(from, to);
        let error = tree(&root, &[("policies/payments.toml", &team(""))]).unwrap_err();
        assert_eq!(
            error.file.to_str().unwrap(),
            "org/policy.toml",
            "{to}: {error}"
        );
        assert!(error.message.contains(message), "{to}: {error}");
    }
}

/// What a team's file could loosen besides its rules, refused: a token's subject (a team could
/// write another project's identity into it), an audience the root did not hand out, a token
/// living longer than the cap, a looser `token_uses` than the root's default, and a session
/// policy outside the tree.
#[test]
fn a_team_file_cannot_loosen_what_the_root_decides() {
    let root = ROOT.replace(
        "max_duration = \"1h\"\n",
        "max_duration = \"1h\"\ntokens = true\naudiences = [\"https://vault.example.com\"]\n",
    );
    let token = |extra: &str| {
        format!(
            "[token.vault]\naudience = \"https://vault.example.com\"\n{extra}\n[[token.vault.allow]]\nproject_id = \"7701\"\n"
        )
    };
    let allowed = tree(&root, &[("policies/payments.toml", &token(""))]);
    assert!(allowed.is_ok(), "{allowed:?}");
    let cases = [
        (
            root.clone(),
            token(
                "subject = \"{issuer_host}:project_id:100:ref_type:branch:ref:main:{project_id}\"",
            ),
            "may not set `subject`",
        ),
        (
            root.clone(),
            token("").replace("https://vault.example.com", "sts.amazonaws.com"),
            "is not one delegate \"payments\" may issue tokens for",
        ),
        (
            root.clone(),
            token("max_ttl = \"2h\""),
            "max_ttl 2h is over delegate \"payments\"'s cap of 1h",
        ),
        (
            format!("token_uses = 1\n{root}"),
            token("token_uses = \"unlimited\""),
            "may lower it, not raise or lift it",
        ),
        (
            format!("token_uses = 1\n{root}"),
            team("token_uses = 2\n[[role.payments-deploy.allow]]\nproject_id = \"7701\"\n"),
            "may lower it, not raise or lift it",
        ),
        (
            root.clone(),
            team(
                "session_policy = \"../../etc/scope.json\"\n[[role.payments-deploy.allow]]\nproject_id = \"7701\"\n",
            ),
            "must be a path below it",
        ),
    ];
    for (root, file, message) in cases {
        let error = tree(&root, &[("policies/payments.toml", &file)]).unwrap_err();
        assert_eq!(
            error.file.to_str().unwrap(),
            "org/policies/payments.toml",
            "{message}: {error}"
        );
        assert!(error.message.contains(message), "{message}: {error}");
    }
    // Stricter than the root's default is the team's to choose.
    let stricter = format!("token_uses = 2\n{root}");
    let file = team("token_uses = 1\n[[role.payments-deploy.allow]]\nproject_id = \"7701\"\n");
    assert!(tree(&stricter, &[("policies/payments.toml", &file)]).is_ok());
}

/// `policy diff` marks an audience handed to a team as widening, one taken back as not.
#[test]
fn diff_marks_an_audience_handed_to_a_team_as_widening() {
    let with = |audiences: &str| {
        let root = ROOT.replace(
            "max_duration = \"1h\"\n",
            &format!("max_duration = \"1h\"\ntokens = true\naudiences = [{audiences}]\n"),
        );
        tree(
            &root,
            &[(
                "policies/payments.toml",
                &team("[[role.payments-deploy.allow]]\nproject_id = \"7701\"\n"),
            )],
        )
        .unwrap()
    };
    let one = with("\"https://vault.example.com\"");
    let two = with("\"https://vault.example.com\", \"sts.amazonaws.com\"");
    let widened = token_broker_policy::diff::diff(&one, &two, &[]);
    let text = token_broker_policy::diff::render_text(&widened);
    assert!(widened.widens(), "{text}");
    assert!(
        text.contains("WIDENS delegate \"payments\" audiences"),
        "{text}"
    );
    let narrowed = token_broker_policy::diff::diff(&two, &one, &[]);
    assert!(
        !narrowed.widens(),
        "{}",
        token_broker_policy::diff::render_text(&narrowed)
    );
}
