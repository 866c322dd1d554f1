//! The policy as the broker runs it (`LazyPolicy`, read from a `Bundle`): it decides exactly as
//! the policy compiled whole, on the example tree and on a tree of `scripts/gen-policy-tree`,
//! compiles a delegated file only when one of its grants is asked for, tells
//! `admits_project` the same without compiling any, and denies the grants of a file that does
//! not compile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use token_broker_policy::lazy::Bundle;
use token_broker_policy::{Claims, Denial, LazyPolicy, Policy, Rule, load};

const GITLAB: &str = "https://gitlab.example.com";

fn repository(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// The tree at `root`, compiled whole and bundled (as `build.rs` does) and read back.
fn both(root: &Path) -> (Policy, LazyPolicy, Bundle) {
    let whole = load(root).unwrap();
    let text = std::fs::read_to_string(root).unwrap();
    let dir = root.parent().unwrap().to_owned();
    let read = move |relative: &str| {
        std::fs::read_to_string(dir.join(relative)).map_err(|e| e.to_string())
    };
    let bundle = Bundle::build(root, &text, &read).unwrap();
    assert_eq!(bundle.eager_because(), None);
    let lazy = LazyPolicy::from_bundle(root, bundle.bytes().to_vec()).unwrap();
    (whole, lazy, bundle)
}

/// What a decision says, as the broker uses it.
fn role_decision(policy: &Policy, role: &str, claims: &Claims) -> Result<(String, usize), Denial> {
    policy
        .decide(role, claims)
        .map(|a| (a.grant.grant.name.clone(), a.rule))
}

fn lazy_role_decision(
    policy: &LazyPolicy,
    role: &str,
    claims: &Claims,
) -> Result<(String, usize), Denial> {
    policy
        .decide(role, claims)
        .map(|a| (a.grant.grant.name.clone(), a.rule))
}

fn claims(issuer: &str, pairs: &[(&str, &str)]) -> Claims {
    Claims::from_pairs(issuer, pairs.iter().copied())
}

#[test]
fn the_example_tree_decides_as_compiled_whole_and_compiles_only_the_files_it_needs() {
    let (whole, lazy, _) = both(&repository("examples/delegation/policy.toml"));
    assert_eq!(lazy.files_compiled(), 0);
    let job = |pairs: &[(&str, &str)]| claims(GITLAB, pairs);
    let deploy = job(&[
        ("project_id", "7701"),
        ("namespace_id", "77"),
        ("ref", "main"),
        ("ref_type", "branch"),
        ("ref_protected", "true"),
        ("environment", "production"),
        ("environment_protected", "true"),
    ]);
    let elsewhere = job(&[
        ("project_id", "7701"),
        ("namespace_id", "666"),
        ("ref", "main"),
        ("ref_type", "branch"),
        ("ref_protected", "true"),
        ("environment", "production"),
        ("environment_protected", "true"),
    ]);
    let stranger = job(&[("project_id", "1"), ("namespace_id", "2"), ("ref", "main")]);
    let indexer = job(&[
        ("project_id", "9001"),
        ("namespace_id", "90"),
        ("ref", "main"),
        ("ref_type", "branch"),
        ("ref_protected", "true"),
    ]);
    let platform = job(&[
        ("project_id", "100"),
        ("namespace_id", "1"),
        ("ref", "main"),
        ("ref_type", "branch"),
        ("ref_protected", "true"),
    ]);
    // (role, job, allowed, admitted: whether the job's project is named anywhere)
    let cases = [
        ("payments-deploy", &deploy, true, true),
        ("payments-read", &deploy, true, true),
        ("payments-deploy", &elsewhere, false, true),
        ("payments-deploy", &stranger, false, false),
        ("search-index", &indexer, true, true),
        ("search-index", &deploy, false, true),
        ("platform-deploy", &platform, true, true),
        ("platform-deploy", &deploy, false, true),
        ("no-such-role", &deploy, false, true),
        ("no-such-role", &stranger, false, false),
    ];
    for (role, job, allowed, admitted) in cases {
        let decision = lazy_role_decision(&lazy, role, job);
        assert_eq!(decision, role_decision(&whole, role, job), "{role} {job:?}");
        assert_eq!(decision.is_ok(), allowed, "{role} {job:?}: {decision:?}");
        assert_eq!(lazy.admits_project(job), admitted, "{role} {job:?}");
        assert_eq!(whole.admits_project(job), admitted, "{role} {job:?}");
    }
    assert!(matches!(
        lazy.decide("payments-deploy", &elsewhere),
        Err(Denial::Guardrail { ref delegate, .. }) if delegate == "payments"
    ));
    // Both team files were needed above; the token of the search file comes from its file.
    assert_eq!(lazy.files_compiled(), 2);
    let token = lazy
        .decide_token("https://vault.example.com", &indexer)
        .map(|a| a.rule);
    let whole_token = whole
        .decide_token("https://vault.example.com", &indexer)
        .map(|a| a.rule);
    assert_eq!(token, whole_token);
    assert_eq!(token, Ok(1));
    assert_eq!(lazy.guards_replay(), whole.guards_replay());
    assert_eq!(lazy.audience(), whole.audience);
    assert_eq!(lazy.issuers(), whole.issuers.as_slice());
}

#[test]
fn a_decision_compiles_the_one_file_that_defines_the_grant() {
    let (_, lazy, _) = both(&repository("examples/delegation/policy.toml"));
    let stranger = claims(GITLAB, &[("project_id", "1"), ("namespace_id", "2")]);
    assert!(!lazy.admits_project(&stranger));
    assert!(lazy.decide("no-such-role", &stranger).is_err());
    assert!(lazy.decide("platform-deploy", &stranger).is_err());
    // Metric dimensions name what was asked from the index alone.
    assert_eq!(lazy.role_name("payments-deploy"), Some("payments-deploy"));
    assert_eq!(lazy.role_name("platform-deploy"), Some("platform-deploy"));
    assert_eq!(lazy.role_name("payments"), None);
    let vault = "https://vault.example.com";
    assert_eq!(lazy.token_audience(vault), Some(vault));
    assert_eq!(lazy.token_audience("https://vault.example.org"), None);
    assert_eq!(lazy.files_compiled(), 0, "no delegated grant was asked for");
    assert!(lazy.decide("search-index", &stranger).is_err());
    assert_eq!(lazy.files_compiled(), 1);
}

/// `admits_project` on delegated rules of every shape it reads: exact ids, a glob on an id,
/// a path-only rule, a rule that names no id or path (it names every project).
#[test]
fn admits_project_answers_from_the_index_as_the_whole_policy_does() {
    let dir = tempfile_dir("admits");
    let root = "audience = \"https://broker.example.com\"\n\n[[issuer]]\nurl = \"https://gitlab.example.com\"\n\n[[issuer]]\nurl = \"https://gitlab.other.example\"\n\n[role.own]\narn = \"arn:aws:iam::123456789012:role/own\"\n\n[[role.own.allow]]\nissuer = \"https://gitlab.example.com\"\nproject_id = \"100\"\n\n[delegate.a]\nfile = \"a.toml\"\nrequire = { namespace_id = \"77\" }\nrole_arns = [\"arn:aws:iam::111122223333:role/*\"]\n\n[delegate.b]\nfile = \"b/b.toml\"\nrequire = { issuer = \"https://gitlab.other.example\", namespace_id = \"90\" }\nrole_arns = [\"arn:aws:iam::111122223333:role/*\"]\ntokens = true\naudiences = [\"https://vault.example.com\"]\n";
    let a = "[role.a-exact]\narn = \"arn:aws:iam::111122223333:role/a-exact\"\n\n[[role.a-exact.allow]]\nissuer = \"https://gitlab.example.com\"\nproject_id = [\"7701\", \"7702\"]\nnamespace_id = \"78\"\n\n[role.a-glob]\narn = \"arn:aws:iam::111122223333:role/a-glob\"\n\n[[role.a-glob.allow]]\nissuer = \"https://gitlab.example.com\"\nproject_id = \"88*\"\n\n[role.a-path]\narn = \"arn:aws:iam::111122223333:role/a-path\"\n\n[[role.a-path.allow]]\nissuer = \"https://gitlab.example.com\"\nproject_path = \"docs/*\"\nnamespace_path = \"docs\"\nallow_path_only = true\n";
    let b = "[token.b-any]\naudience = \"https://vault.example.com\"\n\n[[token.b-any.allow]]\nissuer = \"https://gitlab.other.example\"\nref_protected = \"true\"\n";
    std::fs::write(dir.join("policy.toml"), root).unwrap();
    std::fs::write(dir.join("a.toml"), a).unwrap();
    std::fs::create_dir_all(dir.join("b")).unwrap();
    std::fs::write(dir.join("b/b.toml"), b).unwrap();
    let (whole, lazy, _) = both(&dir.join("policy.toml"));
    let other = "https://gitlab.other.example";
    // (issuer, project_id, namespace_id, project_path, namespace_path, admitted)
    let cases = [
        (GITLAB, "100", "1", "x/y", "x", true),
        (other, "100", "1", "x/y", "x", true),
        (GITLAB, "7702", "1", "x/y", "x", true),
        (GITLAB, "1", "78", "x/y", "x", true),
        (GITLAB, "1", "77", "x/y", "x", false),
        (GITLAB, "8812", "1", "x/y", "x", true),
        (GITLAB, "9812", "1", "x/y", "x", false),
        (GITLAB, "1", "1", "docs/site", "docs", true),
        (GITLAB, "1", "1", "docs/site", "other", false),
        (GITLAB, "1", "1", "other/site", "docs", false),
        (GITLAB, "7701", "78", "x/y", "x", true),
        (
            "https://gitlab.com",
            "7701",
            "78",
            "docs/site",
            "docs",
            false,
        ),
    ];
    for (issuer, project, namespace, path, namespace_path, admitted) in cases {
        let job = claims(
            issuer,
            &[
                ("project_id", project),
                ("namespace_id", namespace),
                ("project_path", path),
                ("namespace_path", namespace_path),
            ],
        );
        assert_eq!(whole.admits_project(&job), admitted, "whole: {job:?}");
        assert_eq!(lazy.admits_project(&job), admitted, "lazy: {job:?}");
    }
    // The file `b` names every project of the other issuer (a rule with no id or path).
    let anyone = claims(other, &[("project_id", "5")]);
    assert_eq!(
        (whole.admits_project(&anyone), lazy.admits_project(&anyone)),
        (true, true)
    );
    assert_eq!(lazy.files_compiled(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

static COMPILE_ERRORS: AtomicUsize = AtomicUsize::new(0);

/// A bundle whose team file no longer compiles (here: a role's ARN changed to another account
/// inside the bundle, as no build writes it) denies that file's grants, says why, tells the
/// hook once, and leaves the other files and `admits_project` alone.
#[test]
fn a_file_that_does_not_compile_when_first_used_is_denied_and_reported() {
    let (_, _, bundle) = both(&repository("examples/delegation/policy.toml"));
    let good = b"arn:aws:iam::111122223333:role/payments-deploy";
    let bad = b"arn:aws:iam::999999999999:role/payments-deploy";
    let mut bytes = bundle.bytes().to_vec();
    let at = bytes
        .windows(good.len())
        .position(|w| w == good)
        .expect("the team file is in the bundle");
    bytes[at..at + good.len()].copy_from_slice(bad);
    let lazy = LazyPolicy::from_bundle(Path::new("policy.toml"), bytes)
        .unwrap()
        .on_compile_error(|_| {
            COMPILE_ERRORS.fetch_add(1, Ordering::SeqCst);
        });
    let job = claims(
        GITLAB,
        &[
            ("project_id", "7701"),
            ("namespace_id", "77"),
            ("ref_protected", "true"),
        ],
    );
    for role in ["payments-read", "payments-deploy"] {
        match lazy.decide(role, &job) {
            Err(Denial::Unavailable { delegate, .. }) => assert_eq!(delegate, "payments"),
            other => panic!("{role}: {other:?}"),
        }
    }
    assert_eq!(COMPILE_ERRORS.load(Ordering::SeqCst), 1);
    let error = lazy.compile_all().unwrap_err();
    assert!(
        error
            .message
            .contains("outside what delegate \"payments\" may grant"),
        "{error}"
    );
    assert!(
        lazy.decide("search-index", &job).is_err(),
        "decided from its own file"
    );
    assert!(lazy.admits_project(&job));
}

#[test]
fn a_damaged_bundle_does_not_load() {
    let (_, _, bundle) = both(&repository("examples/delegation/policy.toml"));
    let bytes = bundle.bytes();
    for damaged in [&bytes[..bytes.len() - 3], &bytes[4..], &[][..]] {
        let error = LazyPolicy::from_bundle(Path::new("policy.toml"), damaged.to_vec());
        assert!(error.is_err());
    }
}

/// A tree of `scripts/gen-policy-tree` (60 team files of 10 roles of 3 rules, so it holds every
/// shape it writes: two namespaces, protected-ref guardrails, tokens, `token_uses`, session
/// policies, path-only rules). For every rule of every delegated grant, a job made to match it
/// (each condition's sample value inside the guardrail), the same job from another namespace
/// (the guardrail fails, or no rule matches) and from another project: each asked for every
/// grant of its team and a few others, lazily and whole, with the same answers.
#[test]
fn a_generated_tree_decides_as_compiled_whole() {
    let dir = tempfile_dir("generated");
    let status = std::process::Command::new("python3")
        .arg(repository("scripts/gen-policy-tree"))
        .args([dir.to_str().unwrap(), "60", "10", "3"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("python3 runs scripts/gen-policy-tree");
    assert!(status.success());
    let (whole, lazy, _) = both(&dir.join("policy.toml"));
    assert_eq!(whole.roles.len(), 2 + 600);
    assert!(whole.guards_replay() && lazy.guards_replay());
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    let names: Vec<&str> = whole.roles.iter().map(|r| r.grant.name.as_str()).collect();
    for grant in whole.grants().filter(|g| g.delegate.is_some()) {
        let delegate = grant.delegate.as_ref().unwrap();
        let team: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| n.starts_with(&format!("{}-", delegate.name)))
            .chain(["platform-deploy", "team-0001-read", "no-such-role"])
            .collect();
        for rule in &grant.rules {
            for job in variants(rule, &delegate.require.conditions) {
                let admitted = whole.admits_project(&job);
                assert_eq!(lazy.admits_project(&job), admitted, "{job:?}");
                *outcomes
                    .entry(if admitted { "admitted" } else { "not admitted" })
                    .or_default() += 1;
                for role in &team {
                    let decision = lazy_role_decision(&lazy, role, &job);
                    assert_eq!(
                        decision,
                        role_decision(&whole, role, &job),
                        "{role} {job:?}"
                    );
                    *outcomes.entry(outcome(&decision)).or_default() += 1;
                }
                for token in &whole.tokens {
                    let audience = &token.audience;
                    let lazy_token = lazy.decide_token(audience, &job).map(|a| a.rule);
                    let whole_token = whole.decide_token(audience, &job).map(|a| a.rule);
                    assert_eq!(lazy_token, whole_token, "{audience} {job:?}");
                }
            }
        }
    }
    for seen in [
        "allow",
        "guardrail",
        "no rule matched",
        "unknown",
        "admitted",
        "not admitted",
    ] {
        assert!(
            outcomes.get(seen).is_some_and(|n| *n > 0),
            "{seen}: {outcomes:?}"
        );
    }
    let claims: std::collections::BTreeSet<&str> = lazy.token_claims().collect();
    assert_eq!(
        claims.into_iter().collect::<Vec<_>>(),
        ["project_path", "ref"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn outcome(decision: &Result<(String, usize), Denial>) -> &'static str {
    match decision {
        Ok(_) => "allow",
        Err(Denial::Guardrail { .. }) => "guardrail",
        Err(Denial::NoRuleMatched { .. }) => "no rule matched",
        Err(Denial::Unknown { .. }) => "unknown",
        Err(Denial::NoRuleForIssuer { .. }) => "no rule for issuer",
        Err(Denial::Unavailable { .. }) => "unavailable",
    }
}

/// A job matching `rule` inside a guardrail of `require`, and the same job from namespace 666
/// and from project 1.
fn variants(rule: &Rule, require: &[token_broker_policy::Condition]) -> Vec<Claims> {
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for condition in require.iter().chain(&rule.conditions) {
        let sample = condition.patterns[0]
            .sample()
            .expect("a value the pattern matches");
        values.insert(condition.claim.clone(), sample);
    }
    values.entry("ref".into()).or_insert_with(|| "main".into());
    values
        .entry("project_id".into())
        .or_insert_with(|| "424242".into());
    let job = |changes: &[(&str, &str)]| {
        let mut values = values.clone();
        for (claim, value) in changes {
            values.insert((*claim).to_owned(), (*value).to_owned());
        }
        Claims::from_pairs(
            rule.issuer.clone(),
            values.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
    };
    vec![
        job(&[]),
        job(&[("namespace_id", "666")]),
        job(&[("project_id", "1")]),
    ]
}

/// A new directory under the system's temporary directory, for this test alone.
fn tempfile_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("token-broker-lazy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
