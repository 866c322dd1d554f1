//! `token-broker policy check|test|explain`, run as the built binary: exit codes, output, and no
//! network or AWS needed. And the build script, which refuses to bundle what `check` refuses.

#[path = "../crates/policy/tests/support/example.rs"]
mod example;

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
        // `file:LINE: error[…`, not just the summary line's `file: 1 error(s)`.
        let located = text.lines().any(|line| {
            line.trim_start()
                .strip_prefix(&format!("{}:", fixture(id)))
                .and_then(|rest| rest.split_once(": error["))
                .is_some_and(|(line_number, _)| line_number.parse::<usize>().is_ok())
        });
        assert!(located, "{id}: file:line in {text}");
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
        "cargo::warning={}:9: warning[TB109 role-chaining-cap] max_duration = \"4h\"",
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

/// The example policy (with its session policies) copied into `dir`, edited by `edit`.
fn example_copy(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let from = root().join("examples/policy");
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    for entry in std::fs::read_dir(from.join("policies")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join("policies").join(entry.file_name())).unwrap();
    }
    let text = std::fs::read_to_string(from.join("policy.toml")).unwrap();
    let path = dir.join("policy.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

#[test]
fn diff_shows_the_access_a_change_adds_and_can_fail_the_pipeline_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let old = example_copy(&dir.path().join("old"), |t| t);
    let new = example_copy(&dir.path().join("new"), |t| {
        t.replacen("ref = \"main\"", "ref = \"*\"", 1)
    });
    let (old, new) = (old.to_str().unwrap(), new.to_str().unwrap());

    let output = broker(&["policy", "diff", old, new]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    assert!(
        text.starts_with(
            "WIDENS role \"deploy-web-prod\" rule 1 changed (line 17): ref: \"main\" → \"*\"\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("project 4242 · branch x (protected) · env production (protected): role \"deploy-web-prod\" deny → ALLOW"),
        "{text}"
    );
    let failing = broker(&["policy", "diff", "--fail-on-widening", old, new]);
    assert_eq!(failing.status.code(), Some(2));
    let narrowing = broker(&["policy", "diff", "--fail-on-widening", new, old]);
    assert_eq!(narrowing.status.code(), Some(0), "{}", stdout(&narrowing));

    let same = broker(&["policy", "diff", "--fail-on-widening", old, old]);
    assert_eq!(
        (same.status.code(), stdout(&same).as_str()),
        (Some(0), "no access changes\n")
    );

    let json = broker(&["policy", "diff", "--format", "json", old, new]);
    let delta: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(delta["widening"], true);
    let before = delta["changes"][0]["before"]["text"].as_str().unwrap();
    assert!(before.contains("ref = \"main\""), "{before}");
    let markdown = stdout(&broker(&[
        "policy", "diff", "--format", "markdown", old, new,
    ]));
    assert!(
        markdown.starts_with("### Policy access changes"),
        "{markdown}"
    );
}

#[test]
fn check_writes_gitlab_code_quality_json() {
    let output = broker(&[
        "policy",
        "check",
        "--format",
        "codequality",
        &fixture("TB104"),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let issues: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let issue = &issues.as_array().unwrap()[0];
    assert_eq!(issue["check_name"], "TB104");
    assert_eq!(issue["severity"], "critical");
    assert_eq!(issue["location"]["path"], fixture("TB104"));
    assert!(issue["location"]["lines"]["begin"].as_u64().unwrap() > 0);
    assert!(issue["fingerprint"].is_string());
    let broken = broker(&["policy", "check", "--format", "codequality", "Cargo.toml"]);
    let issues: serde_json::Value = serde_json::from_slice(&broken.stdout).unwrap();
    assert_eq!(issues[0]["check_name"], "compile");
}

#[test]
fn test_writes_junit_that_an_independent_parser_reads() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.toml");
    std::fs::write(
        &cases,
        r#"
[[case]]
name = "main deploys to production"
role = "deploy-web-prod"
claims = { project_id = "4242", namespace_id = "72", ref = "main", ref_type = "branch", ref_protected = "true", environment = "production", environment_protected = "true" }
expect = "allow"

[[case]]
name = "feature <branches> & \"friends\" deploy (wrong on purpose)"
role = "deploy-web-prod"
claims = { project_id = "4242", namespace_id = "72", ref = "feature/x", ref_type = "branch", ref_protected = "false" }
expect = "allow"
"#,
    )
    .unwrap();
    let junit = dir.path().join("junit.xml");
    let output = broker(&[
        "policy",
        "test",
        "--junit",
        junit.to_str().unwrap(),
        "examples/policy/policy.toml",
        cases.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let script = r#"
import json, sys
from junitparser import JUnitXml, Failure
xml = JUnitXml.fromfile(sys.argv[1])
cases = [c for suite in xml for c in suite]
print(json.dumps({"tests": xml.tests, "failures": xml.failures,
    "cases": [[c.name, [r.message for r in c.result if isinstance(r, Failure)]] for c in cases]}))
"#;
    let parsed = Command::new(root().join(".venv/bin/python"))
        .args(["-c", script, junit.to_str().unwrap()])
        .output()
        .expect(".venv/bin/python (scripts/test installs junitparser)");
    assert!(
        parsed.status.success(),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&parsed.stdout).unwrap();
    assert_eq!(
        (report["tests"].as_u64(), report["failures"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(report["cases"][0][0], "main deploys to production");
    assert_eq!(report["cases"][0][1], serde_json::json!([]));
    assert_eq!(
        report["cases"][1][0],
        "feature <branches> & \"friends\" deploy (wrong on purpose)"
    );
    assert!(
        report["cases"][1][1][0]
            .as_str()
            .unwrap()
            .starts_with("expected allow")
    );
}

#[test]
fn access_lists_who_can_get_what_and_one_projects_view() {
    let all = stdout(&broker(&[
        "policy",
        "access",
        "examples/policy/policy.toml",
    ]));
    assert!(all.contains("rule 1 (line 31): namespace_id 72 · project_path acme/* · tag v* | release-* (protected) · env any"), "{all}");
    let feature = broker(&[
        "policy",
        "access",
        "--project",
        "4242",
        "--ref",
        "feature/x",
        "examples/policy/policy.toml",
    ]);
    assert_eq!(feature.status.code(), Some(0));
    assert!(
        !stdout(&feature).contains("deploy-web-prod"),
        "{}",
        stdout(&feature)
    );
    let orphan = broker(&[
        "policy",
        "access",
        "--ref",
        "main",
        "examples/policy/policy.toml",
    ]);
    assert_eq!(orphan.status.code(), Some(2), "--ref needs --project");
    assert!(String::from_utf8_lossy(&orphan.stderr).contains("--project"));
}

/// Behind an egress proxy the broker's one HTTP client sends HTTPS through `HTTPS_PROXY`: the
/// JWKS fetch at start is a `CONNECT` to the proxy (the issuer's host is never resolved here, so
/// only the proxy could have been asked). Plain HTTP never is, `HTTP_PROXY` or not: with no
/// credentials in the environment the SDK asks the instance-metadata endpoint for the broker's
/// own, and that request, and the credentials in its answer, must not pass through a proxy.
/// Nor does HTTPS to loopback however it is spelt: no `CONNECT` for issuers at `127.1`,
/// `0x7f000001`, `[::ffff:127.0.0.1]` or `localhost.`, and the last is fetched from its local
/// listener directly. (rustls takes no host that ends in a number but is not a plain IP address
/// as a TLS server name, so the first two fail before connecting anywhere; through a proxy their
/// `CONNECT` went out first.)
#[test]
fn https_goes_through_the_proxy_and_instance_metadata_never_does() {
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let (seen, requests) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        for stream in proxy.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut line = String::new();
            let _ = BufReader::new(&stream).read_line(&mut line);
            let _ = stream.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n");
            let _ = seen.send(line);
        }
    });
    // Loopback issuers: each listener reports the connections it accepts (and then drops them).
    let loopback: Vec<_> = ["127.1", "0x7f000001", "[::ffff:127.0.0.1]", "localhost."]
        .into_iter()
        .map(|host| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("https://{host}:{}", listener.local_addr().unwrap().port());
            let (accepted, connections) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let _ = accepted.send(stream.is_ok());
                }
            });
            (url, connections)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    let mut text = String::from(
        r#"audience = "https://token-broker.example.com"
[[issuer]]
url = "https://gitlab.invalid"
[role.read-only]
arn = "arn:aws:iam::123456789012:role/read-only"
[[role.read-only.allow]]
issuer = "https://gitlab.invalid"
project_id = "1"
"#,
    );
    for (url, _) in &loopback {
        text.push_str(&format!("[[issuer]]\nurl = \"{url}\"\n"));
    }
    std::fs::write(&policy, text).unwrap();
    let mut broker = Command::new(env!("CARGO_BIN_EXE_token-broker"))
        .args(["serve", "--listen", "127.0.0.1:0", "--policy"])
        .arg(&policy)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("HTTPS_PROXY", &proxy_url)
        .env("HTTP_PROXY", &proxy_url)
        .env("AWS_REGION", "us-east-1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Start-up fetches the JWKS and asks for the broker's credentials (instance metadata times
    // out after 1 s a try); whatever reached the proxy has by then.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut lines = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match requests.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    let _ = broker.kill();
    let _ = broker.wait();
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("CONNECT gitlab.invalid:443 ")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .all(|line| line.starts_with("CONNECT gitlab.invalid:443 ")),
        "only the JWKS went through the proxy: {lines:?}"
    );
    let (localhost, connections) = loopback.last().unwrap();
    assert!(
        connections.try_iter().any(|accepted| accepted),
        "{localhost}'s JWKS is fetched from it directly"
    );
}

/// README.md's console samples (blocks of `$ token-broker …` lines, each followed by what it
/// prints and, when it fails, `(exit N)`), run against the built binary from the repository's
/// root: every line of output and the exit status as the README shows them, so the samples
/// cannot drift from what the tools print.
#[test]
fn the_readme_console_samples_are_what_the_binary_prints() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut samples: Vec<(String, String, i32)> = Vec::new();
    let (mut in_block, mut in_sample) = (false, false);
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            in_sample = false;
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(command) = line.strip_prefix("$ token-broker ") {
            samples.push((command.to_owned(), String::new(), 0));
            in_sample = true;
        } else if in_sample && let Some(last) = samples.last_mut() {
            match line
                .strip_prefix("(exit ")
                .and_then(|rest| rest.strip_suffix(')'))
            {
                Some(code) => last.2 = code.parse().unwrap(),
                None => {
                    last.1.push_str(line);
                    last.1.push('\n');
                }
            }
        }
    }
    assert!(samples.len() >= 7, "{samples:?}");
    for (command, expected, code) in samples {
        let args: Vec<&str> = command.split_whitespace().collect();
        let output = broker(&args);
        let printed = stdout(&output);
        assert_eq!(
            printed, expected,
            "`token-broker {command}` prints otherwise than README.md shows"
        );
        assert_eq!(output.status.code(), Some(code), "`token-broker {command}`");
    }
}

/// README.md, "Deploying", step 1 as written: uncomment policy.toml's example role, then check
/// (warnings denied) and run the shipped cases: both pass (the shipped case holds before and
/// after the role exists).
#[test]
fn deploying_step_one_works_as_written_with_the_example_role_uncommented() {
    let policy = std::fs::read_to_string(root().join("policy.toml")).unwrap();
    let edited = example::uncommented(&policy);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.toml"), edited).unwrap();
    std::fs::copy(
        root().join("policy.tests.toml"),
        dir.path().join("policy.tests.toml"),
    )
    .unwrap();
    let policy = dir.path().join("policy.toml");
    let policy = policy.to_str().unwrap();
    let check = broker(&["policy", "check", "--deny-warnings", policy]);
    assert!(check.status.success(), "{}", stdout(&check));
    let test = broker(&["policy", "test", policy]);
    assert!(test.status.success(), "{}", stdout(&test));
    assert!(
        stdout(&test).contains("1 passed, 0 failed"),
        "{}",
        stdout(&test)
    );
}

/// A policy tree through `token-broker policy`: the shipped example passes `check` with warnings
/// denied and its cases in each of its three files; a tree with findings has each one in its own
/// file, in Code Quality from the repository's root; `explain` places a team's rule in its file
/// and says how its guardrail fared.
#[test]
fn every_policy_command_sees_the_whole_tree() {
    let example = "examples/delegation/policy.toml";
    let check = broker(&["policy", "check", "--deny-warnings", example]);
    assert_eq!(check.status.code(), Some(0), "{}", stdout(&check));
    let test = broker(&["policy", "test", example]);
    assert_eq!(test.status.code(), Some(0), "{}", stdout(&test));
    for file in ["policy", "policies/payments", "policies/search"] {
        let counted = format!("examples/delegation/{file}.tests.toml: ");
        assert!(stdout(&test).contains(&counted), "{}", stdout(&test));
    }

    let tree = "crates/policy/tests/fixtures/lint/tree/policy.toml";
    let output = broker(&["policy", "check", "--format", "codequality", tree]);
    assert_eq!(output.status.code(), Some(1));
    let issues: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let placed: Vec<(&str, &str)> = issues
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["check_name"].as_str().unwrap(),
                i["location"]["path"].as_str().unwrap(),
            )
        })
        .collect();
    let payments = "crates/policy/tests/fixtures/lint/tree/policies/payments.toml";
    assert_eq!(
        placed,
        [("TB111", tree), ("TB103", payments), ("TB104", payments)]
    );

    let dir = tempfile::tempdir().unwrap();
    let claims = dir.path().join("moved.json");
    std::fs::write(
        &claims,
        r#"{"iss": "https://gitlab.example.com", "project_id": "7701", "namespace_id": "666",
            "ref_type": "branch", "ref": "main", "ref_protected": "true",
            "environment": "production", "environment_protected": "true"}"#,
    )
    .unwrap();
    let explain = broker(&[
        "policy",
        "explain",
        example,
        "--claims",
        claims.to_str().unwrap(),
        "--role",
        "payments-deploy",
    ]);
    assert_eq!(explain.status.code(), Some(0));
    assert_eq!(
        stdout(&explain),
        "role \"payments-deploy\": DENY: role \"payments-deploy\": rule 1 matches, but claim \
         \"namespace_id\" = \"666\" is outside the guardrail of delegate \"payments\"\n  \
         rule 1 (policies/payments.toml line 9): matches\n  \
         guardrail of delegate \"payments\" (policy.toml line 22): fails: namespace_id = \"666\" is not 77 | 78\n"
    );
}

/// The build bundles a whole delegated tree (the example's, and 30 team files of
/// `scripts/gen-policy-tree`), and what the broker reads back from the bundle decides as the
/// tree compiled whole does: a team's role, its guardrail, the root's own role, an unknown one.
#[test]
fn a_delegated_tree_round_trips_through_the_build_script() {
    let generated = tempfile::tempdir().unwrap();
    let status = Command::new("python3")
        .arg(root().join("scripts/gen-policy-tree"))
        .args([generated.path().to_str().unwrap(), "30"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let job = |project: &str, namespace: &str| {
        token_broker::Claims::from_pairs(
            "https://gitlab.example.com",
            [
                ("project_id", project),
                ("namespace_id", namespace),
                ("ref", "main"),
                ("ref_type", "branch"),
                ("ref_protected", "true"),
                ("environment", "production"),
                ("environment_protected", "true"),
            ],
        )
    };
    let trees = [
        (
            root().join("examples/delegation/policy.toml"),
            vec![
                ("payments-deploy", job("7701", "77"), true),
                ("payments-deploy", job("7701", "666"), false),
                ("search-index", job("7701", "77"), false),
                ("platform-deploy", job("100", "1"), true),
                ("no-such-role", job("7701", "77"), false),
            ],
        ),
        (
            generated.path().join("policy.toml"),
            vec![
                ("team-0030-deploy-prod", job("1003001", "20030"), true),
                ("team-0030-deploy-prod", job("1003001", "666"), false),
                ("team-0029-deploy-prod", job("1003001", "20030"), false),
                ("deploy-web-prod", job("4242", "72"), true),
                ("no-such-role", job("4242", "72"), false),
            ],
        ),
    ];
    for (policy, jobs) in trees {
        let out = tempfile::tempdir().unwrap();
        let output = build_script(policy.to_str().unwrap(), out.path());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        assert!(
            !stdout(&output).contains("cargo::warning="),
            "bundled lazily, without findings: {}",
            stdout(&output)
        );
        let bundle = std::fs::read(out.path().join("bundled_policy.bin")).unwrap();
        let bundled = token_broker::policy::LazyPolicy::from_bundle(&policy, bundle).unwrap();
        let whole = token_broker::policy::load(&policy).unwrap();
        for (role, claims, allowed) in jobs {
            let decided = bundled.decide(role, &claims).map(|a| a.rule);
            assert_eq!(
                decided,
                whole.decide(role, &claims).map(|a| a.rule),
                "{role}"
            );
            assert_eq!(decided.is_ok(), allowed, "{role}: {decided:?}");
            assert_eq!(
                bundled.admits_project(&claims),
                whole.admits_project(&claims),
                "{role}"
            );
        }
        assert!(bundled.files_compiled() <= 2, "only the files asked about");
        bundled.compile_all().unwrap();
    }
}

/// A team file that breaks its guardrail fails the build, at its place in the team's file.
#[test]
fn a_broken_team_file_fails_the_build_at_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let from = root().join("examples/delegation");
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    for file in [
        "policy.toml",
        "policies/payments.toml",
        "policies/search.toml",
    ] {
        let text = std::fs::read_to_string(from.join(file)).unwrap();
        let text = text.replace(
            "arn:aws:iam::111122223333:role/payments-deploy",
            "arn:aws:iam::999999999999:role/payments-deploy",
        );
        std::fs::write(dir.path().join(file), text).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let output = build_script(dir.path().join("policy.toml").to_str().unwrap(), out.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let place = format!(
        "{}:5:7: arn \"arn:aws:iam::999999999999:role/payments-deploy\" is outside what delegate \"payments\" may grant",
        dir.path().join("policies/payments.toml").display()
    );
    assert!(stderr.contains(&place), "{stderr}");
    assert!(!out.path().join("bundled_policy.rs").exists());
}
