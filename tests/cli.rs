//! `token-broker policy check|test|explain`, run as the built binary: exit codes, output, and no
//! network or AWS needed. And the build script, which refuses to bundle what `check` refuses.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn broker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_token-broker"))
        .args(args)
        .current_dir(root())
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn fixture(name: &str) -> String {
    format!("crates/policy/tests/fixtures/lint/{name}.toml")
}

#[test]
fn check_exits_1_on_error_findings_and_names_rule_id_and_line() {
    for id in ["TB101", "TB102", "TB104", "TB105"] {
        let output = broker(&["policy", "check", &fixture(id)]);
        assert_eq!(output.status.code(), Some(1), "{id}");
        let text = stdout(&output);
        assert!(text.contains(&format!("error[{id} ")), "{id}: {text}");
        assert!(
            text.contains(&format!("{}:", fixture(id))),
            "{id}: file:line in {text}"
        );
    }
}

#[test]
fn warnings_pass_unless_denied() {
    for id in ["TB103", "TB106", "TB107", "TB108", "TB109"] {
        let output = broker(&["policy", "check", &fixture(id)]);
        assert_eq!(output.status.code(), Some(0), "{id}: {}", stdout(&output));
        assert!(stdout(&output).contains(&format!("warning[{id} ")));
        let output = broker(&["policy", "check", "--deny-warnings", &fixture(id)]);
        assert_eq!(output.status.code(), Some(1), "{id}");
    }
    let output = broker(&["policy", "check", "--deny-warnings", &fixture("clean")]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
}

#[test]
fn check_speaks_json_for_machines() {
    let output = broker(&["policy", "check", "--format", "json", &fixture("TB105")]);
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["errors"], 1);
    let finding = &report["findings"][0];
    assert_eq!(
        (
            finding["id"].as_str(),
            finding["severity"].as_str(),
            finding["line"].as_u64()
        ),
        (Some("TB105"), Some("error"), Some(10))
    );
}

#[test]
fn a_policy_that_does_not_compile_fails_check_with_file_line_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, "audience = \"a\"\n[[issuer]]\nurl = \"https://gitlab.com\"\n[role.x]\narn = \"arn:aws:iam::123456789012:role/x\"\nmax_duration = \"13h\"\n").unwrap();
    let output = broker(&["policy", "check", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).contains("policy.toml:6:16: max_duration"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn the_shipped_policies_pass_check_and_their_cases() {
    for policy in ["policy.toml", "examples/policy/policy.toml"] {
        let output = broker(&["policy", "check", "--deny-warnings", policy]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{policy}: {}",
            stdout(&output)
        );
        let output = broker(&["policy", "test", policy]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{policy}: {}",
            stdout(&output)
        );
        assert!(stdout(&output).contains(" passed, 0 failed"));
    }
}

#[test]
fn the_demo_policy_passes_check() {
    // scripts/demo fills in the local GitLab stand-in's URL; any loopback URL will do here.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("examples/demo-policy.toml")).unwrap();
    let file = dir.path().join("demo-policy.toml");
    std::fs::write(&file, text.replace("{issuer}", "http://127.0.0.1:9")).unwrap();
    let session_policy = "demo-session-policy.json";
    std::fs::copy(
        root().join("examples").join(session_policy),
        dir.path().join(session_policy),
    )
    .unwrap();
    let output = broker(&["policy", "check", "--deny-warnings", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
}

/// The build script cargo compiled for this package, run as `cargo build` runs it, but with an
/// `OUT_DIR` of its own: running it through cargo with another `TOKEN_BROKER_BUNDLED_POLICY`
/// would make the next build of the shared target dir rerun it and recompile the crate.
fn build_script(policy: &str, out_dir: &Path) -> Output {
    Command::new(compiled_build_script())
        .env("CARGO_MANIFEST_DIR", root())
        .env("OUT_DIR", out_dir)
        .env("TOKEN_BROKER_BUNDLED_POLICY", root().join(policy))
        .output()
        .unwrap()
}

/// The newest `build-script-build` of this package: cargo keeps one per build configuration
/// (test, clippy, …) beside this test's `OUT_DIR`, and just rebuilt the one for this test run.
fn compiled_build_script() -> PathBuf {
    let build_dir = Path::new(env!("OUT_DIR")).ancestors().nth(2).unwrap();
    let ours = |dir: &Path| {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        name.strip_prefix("token-broker-")
            .is_some_and(|hash| hash.chars().all(|c| c.is_ascii_hexdigit()))
    };
    std::fs::read_dir(build_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|dir| ours(dir))
        .map(|dir| dir.join("build-script-build"))
        .filter_map(|script| Some((script.metadata().ok()?.modified().ok()?, script)))
        .max()
        .expect("cargo built token-broker's build script")
        .1
}

#[test]
fn the_build_refuses_to_bundle_a_policy_with_error_findings() {
    let out = tempfile::tempdir().unwrap();
    let output = build_script(&fixture("TB104"), out.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let line = format!(
        "{}:10: error[TB104 ref-without-ref-type] rule 1",
        fixture("TB104")
    );
    assert!(stderr.contains(&line), "{stderr}");
    assert!(!out.path().join("bundled_policy.rs").exists());
}

#[test]
fn the_build_bundles_a_policy_with_warnings_and_shows_them() {
    let out = tempfile::tempdir().unwrap();
    let output = build_script(&fixture("TB109"), out.path());
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let warning = format!(
        "cargo::warning={}:11: warning[TB109 role-chaining-cap] max_duration = \"4h\"",
        fixture("TB109")
    );
    assert!(stdout(&output).contains(&warning), "{}", stdout(&output));
    assert!(out.path().join("bundled_policy.rs").exists());
}

#[test]
fn a_broken_case_fails_with_a_readable_trace() {
    let dir = tempfile::tempdir().unwrap();
    let cases: PathBuf = dir.path().join("cases.toml");
    std::fs::write(
        &cases,
        r#"
[[case]]
name = "feature branches deploy (wrong on purpose)"
role = "deploy-web-prod"
claims = { project_id = "4242", namespace_id = "72", ref = "feature/x", ref_type = "branch", ref_protected = "false" }
expect = "allow"
"#,
    )
    .unwrap();
    let output = broker(&[
        "policy",
        "test",
        "examples/policy/policy.toml",
        cases.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(
        text.contains("FAIL \"feature branches deploy (wrong on purpose)\": expected allow"),
        "{text}"
    );
    assert!(
        text.contains("rule 1 (line 17): fails: environment is missing"),
        "{text}"
    );
    assert!(text.contains(r#"ref = "feature/x" is not main"#), "{text}");
    assert!(text.contains("policy cases: 0 passed, 1 failed"), "{text}");
}

#[test]
fn explain_shows_matching_and_failing_rules() {
    let output = broker(&[
        "policy",
        "explain",
        "examples/policy/policy.toml",
        "--claims",
        "examples/policy/claims/main-production.json",
    ]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    assert!(
        text.contains("role \"deploy-web-prod\": ALLOW (rule 1)"),
        "{text}"
    );
    assert!(text.contains("role \"publish-artifacts\": DENY"), "{text}");
    assert!(text.contains("ref_type = \"branch\" is not tag"), "{text}");
    let output = broker(&[
        "policy",
        "explain",
        "examples/policy/policy.toml",
        "--claims",
        "examples/policy/claims/main-production.json",
        "--role",
        "nope",
    ]);
    assert_eq!(output.status.code(), Some(1));
}

/// `serve` (or, in Lambda, the binary started without arguments) with `env` set, as far as
/// loading the policy: a missing file stops it before it touches the network.
fn start_broker(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_token-broker"))
        .args(args)
        .current_dir(root())
        .env_remove("TOKEN_BROKER_POLICY")
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn the_policy_file_comes_from_token_broker_policy_unless_policy_is_given() {
    let from_env = [("TOKEN_BROKER_POLICY", "no/such/policy-from-env.toml")];
    let serve = ["serve", "--listen", "127.0.0.1:0"];
    for (what, output) in [
        ("serve", start_broker(&serve, &from_env)),
        (
            "no command in Lambda",
            start_broker(
                &[],
                &[from_env[0], ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")],
            ),
        ),
    ] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{what}: {stderr}");
        assert!(stderr.contains("policy-from-env.toml"), "{what}: {stderr}");
    }
    let flag = [&serve[..], &["--policy", "no/such/policy-from-flag.toml"]].concat();
    let output = start_broker(&flag, &from_env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("policy-from-flag.toml"), "{stderr}");
    assert!(!stderr.contains("policy-from-env.toml"), "{stderr}");
}
