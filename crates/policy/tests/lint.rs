//! One fixture policy per lint proves it fires; a clean policy proves no false positive.

use std::path::Path;

use token_broker_policy::lint::{LINTS, lint};

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
