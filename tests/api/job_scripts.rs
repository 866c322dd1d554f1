//! The job snippets users copy, run as GitLab runs them against a running broker: README.md's
//! `.gitlab-ci.yml` job, its `credential_process` profile and its `/v1/token` example, and the
//! jobs of `examples/gitlab-ci/`. Each is extracted from its file (a fenced block of the README,
//! `before_script` and `script` of a YAML job), never copied here, and runs under dash and
//! busybox sh (alpine's shell) with `-e` and GitLab Runner's prelude. `aws`, `apk` and the other
//! tools a job installs are stubs on `PATH` that record their arguments and the AWS credentials in
//! their environment. Allowed, a job reaches `aws` with the credentials; refused, it exits non-zero
//! before any `aws` and shows the broker's JSON error. A counting front end between the jobs and the
//! broker (as the Function URL is) shows that a 4xx answer is final (one request) and a 503 is
//! retried.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use local_issuer::kms::KeySpec;
use local_issuer::sts::{LocalSts, StsMode};
use serde_json::{Value, json};

use crate::helpers::*;

/// The shells a job runs under: alpine's busybox sh and Debian's dash (GitLab's `sh`), and bash,
/// which GitLab picks where the image has it (the broker's own pipeline, on `rust:*-bookworm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shell {
    Dash,
    Busybox,
    Bash,
}

const SHELLS: [Shell; 2] = [Shell::Dash, Shell::Busybox];

impl Shell {
    /// The program and the arguments that make it a shell.
    fn argv(self) -> Vec<String> {
        let (candidates, package): (&[&str], &str) = match self {
            Shell::Dash => (&["/usr/bin/dash", "/bin/dash"], "dash"),
            Shell::Busybox => (&["/bin/busybox", "/usr/bin/busybox"], "busybox-static"),
            Shell::Bash => (&["/usr/bin/bash", "/bin/bash"], "bash"),
        };
        let program = candidates
            .iter()
            .find(|path| Path::new(path).exists())
            .unwrap_or_else(|| {
                panic!(
                    "{self:?} is not installed (none of {candidates:?}): `scripts/test` installs \
                     it through scripts/apt-tools.sh (apt-get install {package})"
                )
            });
        let mut argv = vec![program.to_string()];
        if self == Shell::Busybox {
            argv.push("sh".to_owned());
        }
        argv
    }
}

/// What GitLab Runner writes before a job's script for a POSIX shell.
const GITLAB_PRELUDE: &str =
    "if set -o | grep pipefail > /dev/null; then set -o pipefail; fi; set -o errexit\n";

/// One stub for every tool a job calls or installs with: records `name<TAB>args<TAB>key id<TAB>
/// secret<TAB>session token`; `aws sts assume-role-with-web-identity` answers as the AWS CLI
/// does with `--output text`, or refuses as STS would when `STUB_STS_REFUSES` is set.
const STUB: &str = r#"#!/bin/sh
printf '%s\t%s\t%s\t%s\t%s\n' "${0##*/}" "$*" "${AWS_ACCESS_KEY_ID:-}" \
  "${AWS_SECRET_ACCESS_KEY:-}" "${AWS_SESSION_TOKEN:-}" >> "$STUB_LOG"
case "${0##*/} $1 $2" in
"aws sts assume-role-with-web-identity")
  if [ -n "${STUB_STS_REFUSES:-}" ]; then
    echo "An error occurred (AccessDenied) when calling the AssumeRoleWithWebIdentity operation: Not authorized to perform sts:AssumeRoleWithWebIdentity" >&2
    exit 254
  fi
  printf 'ASIASTUBSTUBSTUB1234\tstub/secret+key\tstub-session-token\n' ;;
esac
"#;

const STUBBED: [&str; 5] = ["aws", "apk", "apt-get", "rustup", "sam"];

/// The repository file `path`.
fn read(path: &str) -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// README.md's fenced code blocks, as (info string, body).
fn readme_blocks() -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in read("README.md").lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(info)) => open = Some((info.trim().to_owned(), String::new())),
            (Some(_), Some(rest)) if rest.trim().is_empty() => blocks.extend(open.take()),
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

/// The one README block of language `info` that contains `needle`.
fn readme_block(info: &str, needle: &str) -> String {
    let found: Vec<String> = readme_blocks()
        .into_iter()
        .filter(|(lang, body)| lang == info && body.contains(needle))
        .map(|(_, body)| body)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "README.md should have exactly one ```{info} block containing {needle:?}"
    );
    found.into_iter().next().unwrap()
}

/// A job's shell script as GitLab runs it: `before_script` then `script`, in one shell.
fn job_script(yaml: &str, job: &str) -> String {
    let doc: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    let job = &doc[job];
    assert!(job.is_mapping(), "no such job in {yaml}");
    let mut lines = Vec::new();
    for key in ["before_script", "script"] {
        for item in job[key].as_sequence().into_iter().flatten() {
            lines.push(item.as_str().expect("script items are strings").to_owned());
        }
    }
    lines.join("\n")
}

/// The jobs that get credentials from the broker: README.md's and examples/gitlab-ci/consumer.yml's.
fn credential_jobs() -> Vec<(&'static str, String)> {
    vec![
        (
            "README.md job",
            job_script(&readme_block("yaml", "id_tokens:"), "deploy"),
        ),
        (
            "consumer.yml",
            job_script(
                &read("examples/gitlab-ci/consumer.yml"),
                "deploy-production",
            ),
        ),
    ]
}

/// README.md's AWS CLI profile.
fn profile() -> String {
    readme_block("ini", "credential_process")
}

/// The command of the profile's `credential_process`, which the AWS CLI splits like a POSIX shell
/// and runs as `sh -c '<script>'`: the script.
fn credential_process_script() -> String {
    let profile = profile();
    let line = profile
        .lines()
        .find_map(|line| line.strip_prefix("credential_process = "))
        .expect("a credential_process line");
    let script = line
        .strip_prefix("sh -c '")
        .and_then(|rest| rest.strip_suffix('\''))
        .expect("credential_process = sh -c '…'");
    assert!(!script.contains('\''), "one single-quoted word: {script}");
    script.to_owned()
}

/// What a stub was called with.
#[derive(Debug)]
struct Call {
    program: String,
    args: String,
    key_id: String,
    secret: String,
    session_token: String,
}

/// How a script ended.
#[derive(Debug)]
struct Outcome {
    shell: Shell,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    calls: Vec<Call>,
    /// Files the script left in `TMPDIR`.
    leftovers: Vec<String>,
    /// Requests that reached the front end (throttled ones included).
    requests: usize,
}

impl Outcome {
    fn aws_calls(&self) -> Vec<&Call> {
        self.calls.iter().filter(|c| c.program == "aws").collect()
    }

    fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    fn assert_succeeded(&self, what: &str) {
        let shell = self.shell;
        assert_eq!(self.code, Some(0), "{what} under {shell:?}: {self:?}");
        assert!(
            self.leftovers.is_empty(),
            "{what} under {shell:?} left {self:?}"
        );
    }

    /// Non-zero exit, no `aws` (nor `sam`) call, the broker's error `code` shown once, no
    /// temporary file left behind.
    fn assert_failed_closed(&self, what: &str, code: &str) {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "{what} must fail: {self:?}"
        );
        assert!(
            self.calls
                .iter()
                .all(|c| c.program != "aws" && c.program != "sam"),
            "{what} ran AWS commands after a refusal: {self:?}"
        );
        let output = self.output();
        assert!(
            output.contains(&format!(r#""error":"{code}""#)),
            "{what} does not show the broker's error: {self:?}"
        );
        assert_eq!(
            output.matches(r#""error":"#).count(),
            1,
            "{what} shows one answer, not every retry's: {self:?}"
        );
        assert!(self.leftovers.is_empty(), "{what} left {self:?}");
    }
}

/// How a script is run.
#[derive(Clone)]
struct Run {
    /// The script (the job's, or `credential_process`'s).
    script: String,
    /// As a GitLab job: `-e` and GitLab Runner's prelude; otherwise plain `sh -c`.
    as_job: bool,
    /// The job's variables besides `TOKEN_BROKER_URL`.
    env: Vec<(&'static str, String)>,
    /// The broker; `TOKEN_BROKER_URL` is a counting front end to it.
    broker: String,
    trailing_slash: bool,
    /// How many requests the front end answers itself with a 503 before passing them on.
    throttle: usize,
    /// Whether the front end answers every request itself with an empty `200` (a proxy or CDN
    /// gone wrong), so that nothing reaches the broker.
    empty_ok: bool,
}

impl Run {
    fn job(script: &str, broker: &str, token: &str) -> Self {
        Self {
            script: script.to_owned(),
            as_job: true,
            env: vec![
                ("BROKER_ID_TOKEN", token.to_owned()),
                ("CI_JOB_ID", "1".to_owned()),
                ("CI_PIPELINE_ID", "1".to_owned()),
                ("CI", "true".to_owned()),
            ],
            broker: broker.to_owned(),
            trailing_slash: false,
            throttle: 0,
            empty_ok: false,
        }
    }

    fn with_trailing_slash(mut self) -> Self {
        self.trailing_slash = true;
        self
    }

    /// Runs under `shell` in a fresh directory with the stubs first on `PATH` (blocking).
    fn under(&self, shell: Shell) -> Outcome {
        let front = Front::start(&self.broker, self.throttle, self.empty_ok);
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let tmp = dir.path().join("tmp");
        fs::create_dir(&bin).unwrap();
        fs::create_dir(&tmp).unwrap();
        for name in STUBBED {
            write_executable(&bin.join(name), STUB);
        }
        // broker.yml's deploy job sources it (the venv's tools on PATH); here the stubs are.
        fs::create_dir(dir.path().join("scripts")).unwrap();
        fs::write(dir.path().join("scripts/tools.sh"), "").unwrap();
        let log = dir.path().join("calls.log");
        let url = format!(
            "{}{}",
            front.url,
            if self.trailing_slash { "/" } else { "" }
        );
        let script = if self.as_job {
            format!("{GITLAB_PRELUDE}{}", self.script)
        } else {
            self.script.clone()
        };
        let argv = shell.argv();
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        if self.as_job {
            command.arg("-e");
        }
        command
            .arg("-c")
            .arg(script)
            .env_clear()
            .env(
                "PATH",
                format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()),
            )
            .env("HOME", dir.path())
            .env("TMPDIR", &tmp)
            .env("STUB_LOG", &log)
            .env("TOKEN_BROKER_URL", url)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(dir.path());
        let (code, stdout, stderr) = run_with_deadline(command, dir.path());
        let calls = fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let fields: Vec<&str> = line.split('\t').collect();
                assert_eq!(fields.len(), 5, "{line}");
                Call {
                    program: fields[0].to_owned(),
                    args: fields[1].to_owned(),
                    key_id: fields[2].to_owned(),
                    secret: fields[3].to_owned(),
                    session_token: fields[4].to_owned(),
                }
            })
            .collect();
        let leftovers = fs::read_dir(&tmp)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        Outcome {
            shell,
            code,
            stdout,
            stderr,
            calls,
            leftovers,
            requests: front.requests.load(Ordering::SeqCst),
        }
    }

    /// Runs under every shell in `shells` at once, off the runtime that serves the broker.
    async fn under_each(&self, shells: &[Shell]) -> Vec<Outcome> {
        let handles: Vec<_> = shells
            .iter()
            .map(|&shell| {
                let run = self.clone();
                tokio::task::spawn_blocking(move || run.under(shell))
            })
            .collect();
        let mut outcomes = Vec::new();
        for handle in handles {
            outcomes.push(handle.await.unwrap());
        }
        outcomes
    }
}

fn write_executable(path: &Path, content: &str) {
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs `command`, killing it after a minute; its exit code, stdout and stderr.
fn run_with_deadline(mut command: Command, dir: &Path) -> (Option<i32>, String, String) {
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running after 60 s: {}",
                fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code(),
        fs::read_to_string(out).unwrap(),
        fs::read_to_string(err).unwrap(),
    )
}

/// A front end between a job and the broker, as the Function URL is: passes requests on and
/// counts them, after answering the first `throttle` itself with a 503 and `Retry-After: 1`;
/// with `empty_ok`, it answers every request itself with an empty 200.
struct Front {
    url: String,
    requests: Arc<AtomicUsize>,
}

/// What starts every request the jobs send.
const REQUEST_START: &[u8] = b"POST /v1/";

impl Front {
    fn start(broker: &str, throttle: usize, empty_ok: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let target = broker.trim_start_matches("http://").to_owned();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let throttled = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let (counted, target) = (counted.clone(), target.clone());
                let throttle_this = throttled.fetch_add(1, Ordering::SeqCst) < throttle;
                std::thread::spawn(move || {
                    if empty_ok {
                        answer(client, &counted, "200 OK", "");
                    } else if throttle_this {
                        answer(client, &counted, "503 Service Unavailable", THROTTLED);
                    } else {
                        forward(client, &target, &counted);
                    }
                });
            }
        });
        Self { url, requests }
    }
}

/// The body of a throttling 503 from the front end.
const THROTTLED: &str = r#"{"message":"Rate exceeded"}"#;

/// Reads one request and answers it with `status` and `body` (and `Retry-After: 1`), closing
/// the connection.
fn answer(mut client: TcpStream, counted: &AtomicUsize, status: &str, body: &str) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |n| n.trim().parse().unwrap());
    while request.len() < head_end + length {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    counted.fetch_add(1, Ordering::SeqCst);
    let _ = write!(
        client,
        "HTTP/1.1 {status}\r\nRetry-After: 1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.flush();
}

/// Passes the connection's bytes both ways, counting the requests in the client's.
fn forward(mut client: TcpStream, target: &str, counted: &AtomicUsize) {
    let Ok(mut server) = TcpStream::connect(target) else {
        return;
    };
    let (mut to_client, mut from_server) =
        (client.try_clone().unwrap(), server.try_clone().unwrap());
    let answers = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_server, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Write);
    });
    // The last bytes of the previous read, shorter than REQUEST_START: a request line split
    // between two reads is counted once.
    let mut window: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        window.extend_from_slice(&buf[..n]);
        let found = window
            .windows(REQUEST_START.len())
            .filter(|w| *w == REQUEST_START)
            .count();
        counted.fetch_add(found, Ordering::SeqCst);
        window.drain(..window.len().saturating_sub(REQUEST_START.len() - 1));
        if server.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = server.shutdown(Shutdown::Write);
    let _ = answers.join();
}

/// A token the policy admits for `deploy-web-prod` (project 4242, protected `main`, production).
fn allowed_token(app: &TestApp) -> (String, u64) {
    app.token(json!({}))
}

/// A token from a feature branch: `deploy-web-prod` refuses it (403), and no token grant admits it.
fn refused_token(app: &TestApp) -> String {
    app.token(json!({"ref": "feature/x", "ref_protected": "false"}))
        .0
}

fn assert_has_credentials(call: &Call, what: &str) {
    assert!(
        call.key_id.starts_with("ASIA")
            && !call.secret.is_empty()
            && !call.session_token.is_empty(),
        "{what}: `aws {}` ran without the broker's credentials: {call:?}",
        call.args
    );
}

/// README.md's job and consumer.yml's, allowed, under dash and busybox sh, with and without a
/// trailing `/` on TOKEN_BROKER_URL: exit 0, every `aws` step ran with the credentials from STS,
/// one request each, and the credentials file is gone.
#[tokio::test]
async fn the_gitlab_jobs_run_aws_with_the_brokers_credentials() {
    let app = spawn_app().await;
    for (job, script) in credential_jobs() {
        for trailing_slash in [false, true] {
            let (token, job_id) = allowed_token(&app);
            let mut run = Run::job(&script, &app.address, &token);
            run.trailing_slash = trailing_slash;
            for outcome in run.under_each(&SHELLS).await {
                let what = format!("{job} (trailing slash: {trailing_slash})");
                outcome.assert_succeeded(&what);
                let aws = outcome.aws_calls();
                assert!(!aws.is_empty(), "{what}: no aws step ran: {outcome:?}");
                for call in aws {
                    assert_has_credentials(call, &what);
                }
                assert_eq!(outcome.requests, 1, "{what}: {outcome:?}");
            }
            assert_eq!(
                recorded_assume_roles(&format!("gitlab-4242-{job_id}"))
                    .await
                    .len(),
                SHELLS.len(),
                "{job}: one AssumeRole per run"
            );
        }
    }
}

/// Refused (a feature branch asking for the production role), the same jobs exit non-zero before
/// any `aws` step, show the broker's `access_denied` JSON, and ask exactly once: a 403 is final.
#[tokio::test]
async fn the_gitlab_jobs_stop_before_aws_with_the_brokers_error_when_refused() {
    let app = spawn_app().await;
    for (job, script) in credential_jobs() {
        let token = refused_token(&app);
        let started = Instant::now();
        let run = Run::job(&script, &app.address, &token).with_trailing_slash();
        for outcome in run.under_each(&SHELLS).await {
            outcome.assert_failed_closed(job, "access_denied");
            assert!(
                outcome.stderr.contains("deploy-web-prod"),
                "{job}: the description names the role: {outcome:?}"
            );
            assert_eq!(
                outcome.requests, 1,
                "{job}: a 403 is not retried: {outcome:?}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{job}: a refusal ends the job at once"
        );
    }
}

/// A 200 that holds no credentials (an empty page from a proxy or CDN in front of the broker)
/// ends the jobs before any `aws` step, with or without `-e`: sourcing an empty file succeeds,
/// and the job would otherwise go on with whatever credentials the runner has.
#[tokio::test]
async fn the_gitlab_jobs_stop_before_aws_when_the_answer_holds_no_credentials() {
    let app = spawn_app().await;
    for (job, script) in credential_jobs() {
        let (token, _) = allowed_token(&app);
        let mut run = Run::job(&script, &app.address, &token);
        run.empty_ok = true;
        run.env.extend([
            ("AWS_ACCESS_KEY_ID", "AKIARUNNERSOWN".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "runners-own-secret".to_owned()),
        ]);
        for as_job in [true, false] {
            run.as_job = as_job;
            for outcome in run.under_each(&SHELLS).await {
                let what = format!("{job} (-e: {as_job})");
                assert_ne!(outcome.code, Some(0), "{what}: {outcome:?}");
                assert!(outcome.aws_calls().is_empty(), "{what}: {outcome:?}");
                assert!(
                    outcome.stderr.contains("no credentials"),
                    "{what} says why: {outcome:?}"
                );
                assert!(outcome.leftovers.is_empty(), "{what} left {outcome:?}");
            }
        }
    }
}

/// A front end that throttles once (a 503 with `Retry-After: 1`, as Lambda's does) is retried,
/// and the job then gets its credentials, with only the second answer loaded.
#[tokio::test]
async fn the_gitlab_jobs_retry_a_503_and_then_succeed() {
    let app = spawn_app().await;
    for (job, script) in credential_jobs() {
        let (token, _) = allowed_token(&app);
        let mut run = Run::job(&script, &app.address, &token);
        run.throttle = 1;
        for outcome in run.under_each(&SHELLS).await {
            outcome.assert_succeeded(job);
            assert_eq!(outcome.requests, 2, "{job}: retried once: {outcome:?}");
            for call in outcome.aws_calls() {
                assert_has_credentials(call, job);
            }
            assert!(!outcome.aws_calls().is_empty(), "{outcome:?}");
        }
    }
}

/// When the broker keeps answering 503 (STS throttles it), the job retries three times, honouring
/// `Retry-After`, then fails closed with the last answer's `temporarily_unavailable`.
#[tokio::test]
async fn the_readme_job_gives_up_after_three_retries_and_fails_closed() {
    let sts = LocalSts::start_on("127.0.0.1:0").await;
    sts.set_mode(StsMode::Throttling);
    let app = spawn_app_with(sts_at(sts.url())).await;
    let (job, script) = credential_jobs().remove(0);
    let (token, _) = allowed_token(&app);
    for outcome in Run::job(&script, &app.address, &token)
        .under_each(&SHELLS)
        .await
    {
        outcome.assert_failed_closed(job, "temporarily_unavailable");
        assert_eq!(outcome.requests, 4, "{job}: --retry 3: {outcome:?}");
    }
}

/// The profile's `credential_process`, run as the AWS CLI runs it (`sh -c '…'`, under dash and
/// busybox sh): allowed, stdout is the credential JSON; refused, stdout is empty, the exit status
/// non-zero and the broker's JSON error on stderr, where the AWS CLI shows it.
#[tokio::test]
async fn the_credential_process_prints_credentials_or_only_an_error() {
    let app = spawn_app().await;
    let script = credential_process_script();
    let (token, _) = allowed_token(&app);
    let mut run = Run::job(&script, &app.address, &token).with_trailing_slash();
    run.as_job = false;
    for outcome in run.under_each(&SHELLS).await {
        outcome.assert_succeeded("credential_process");
        let credentials: Value = serde_json::from_str(&outcome.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {outcome:?}"));
        assert_eq!(credentials["Version"], 1, "{credentials}");
        for field in [
            "AccessKeyId",
            "SecretAccessKey",
            "SessionToken",
            "Expiration",
        ] {
            assert!(
                credentials[field].as_str().is_some_and(|v| !v.is_empty()),
                "{field} in {credentials}"
            );
        }
        assert!(outcome.stderr.is_empty(), "{outcome:?}");
        assert_eq!(outcome.requests, 1);
    }

    run.env[0].1 = refused_token(&app);
    for outcome in run.under_each(&SHELLS).await {
        outcome.assert_failed_closed("credential_process", "access_denied");
        assert!(outcome.stdout.trim().is_empty(), "{outcome:?}");
        assert!(outcome.stderr.contains(r#""error":"access_denied""#));
        assert_eq!(outcome.requests, 1, "a 403 is not retried");
    }
}

/// The AWS CLI itself, with README.md's profile as its config file: allowed, it calls STS with the
/// broker's credentials; refused, it fails and its message carries the broker's error.
#[tokio::test]
async fn the_aws_cli_uses_the_readme_profile() {
    let app = spawn_app().await;
    let aws = Path::new(
        &std::env::var("TOOLS_VENV")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv").to_owned()),
    )
    .join("bin/aws");
    assert!(
        aws.exists(),
        "{} missing: `scripts/test` installs the AWS CLI (scripts/tools.sh)",
        aws.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    fs::write(&config, profile()).unwrap();
    for shell in SHELLS {
        // The AWS CLI runs `sh` from PATH: make it this shell.
        let bin = dir.path().join(format!("{shell:?}"));
        fs::create_dir(&bin).unwrap();
        let argv = shell.argv();
        let sh = if argv.len() == 1 {
            format!("#!/bin/sh\nexec {} \"$@\"\n", argv[0])
        } else {
            format!("#!/bin/sh\nexec {} sh \"$@\"\n", argv[0])
        };
        write_executable(&bin.join("sh"), &sh);
        for (token, allowed) in [(allowed_token(&app).0, true), (refused_token(&app), false)] {
            let mut command = Command::new(&aws);
            command
                .args(["--profile", "deploy", "--region", "us-east-1"])
                .args(["--endpoint-url", &moto::endpoint()])
                .args(["sts", "get-caller-identity", "--output", "json"])
                .env_clear()
                .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
                .env("HOME", dir.path())
                .env("AWS_CONFIG_FILE", &config)
                .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .env("BROKER_ID_TOKEN", token)
                .env("TOKEN_BROKER_URL", format!("{}/", app.address));
            let work = tempfile::tempdir().unwrap();
            let (code, stdout, stderr) =
                tokio::task::spawn_blocking(move || run_with_deadline(command, work.path()))
                    .await
                    .unwrap();
            if allowed {
                assert_eq!(code, Some(0), "{shell:?}: {stderr}");
                let identity: Value = serde_json::from_str(&stdout).unwrap();
                assert!(
                    identity["Arn"]
                        .as_str()
                        .is_some_and(|arn| arn.contains(":assumed-role/deploy-web-prod/")),
                    "{identity}"
                );
            } else {
                assert_ne!(code, Some(0), "{shell:?}: {stdout}");
                assert!(stdout.is_empty(), "{shell:?}: {stdout}");
                assert!(
                    stderr.contains("access_denied"),
                    "{shell:?}: the AWS CLI shows the broker's reason: {stderr}"
                );
            }
        }
    }
}

/// README.md's `/v1/token` example (a job of its own, with `-e`): allowed, `aws sts
/// assume-role-with-web-identity` gets the broker's JWT for `sts.amazonaws.com`; refused, the
/// script exits non-zero before `aws`, showing the broker's error, after one request.
#[tokio::test]
async fn the_token_exchange_example_stops_before_aws_when_refused() {
    // The KMS stand-in, not moto: moto hashes the digest the broker sends again, so its
    // signatures do not verify and the broker would refuse to issue them.
    let (kms, key) = kms_stand_in(KeySpec::Rsa2048).await;
    let app = spawn_app_with(signing_with(&kms, &key, &[])).await;
    let script = readme_block("sh", "/v1/token");
    let (token, _) = allowed_token(&app);
    let run = Run::job(&script, &app.address, &token).with_trailing_slash();
    for outcome in run.under_each(&SHELLS).await {
        outcome.assert_succeeded("the /v1/token example");
        let aws = outcome.aws_calls();
        assert_eq!(aws.len(), 1, "{outcome:?}");
        assert!(
            aws[0].args.starts_with("sts assume-role-with-web-identity"),
            "{outcome:?}"
        );
        let jwt = aws[0]
            .args
            .split_once("--web-identity-token ")
            .expect("--web-identity-token")
            .1;
        let claims = jwt.split('.').nth(1).expect("a JWT");
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(claims)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["aud"], "sts.amazonaws.com", "{claims}");
        assert_eq!(outcome.requests, 1);
    }

    let run = Run::job(&script, &app.address, &refused_token(&app));
    for outcome in run.under_each(&SHELLS).await {
        outcome.assert_failed_closed("the /v1/token example", "invalid_target");
        assert_eq!(outcome.requests, 1, "a 400 is not retried: {outcome:?}");
    }
}

/// examples/gitlab-ci/broker.yml's deploy job (bash, as GitLab runs it on `rust:*-bookworm`):
/// when STS refuses the web identity, it stops before `sam` instead of exporting empty
/// credentials; when STS answers, `sam` runs with them.
#[tokio::test]
async fn the_broker_deploy_job_stops_before_sam_when_sts_refuses() {
    let script = job_script(&read("examples/gitlab-ci/broker.yml"), "deploy");
    let mut run = Run::job(&script, "http://127.0.0.1:9", "unused");
    run.env.extend([
        (
            "DEPLOY_ROLE_ARN",
            "arn:aws:iam::123456789012:role/deploy".to_owned(),
        ),
        ("AWS_DEPLOY_ID_TOKEN", "a-gitlab-id-token".to_owned()),
    ]);
    // Bash only: the job sources scripts/tools.sh, which needs bash (as does `source`).
    let shells = [Shell::Bash];
    for outcome in run.under_each(&shells).await {
        outcome.assert_succeeded("broker.yml deploy");
        let sam: Vec<&Call> = outcome
            .calls
            .iter()
            .filter(|c| c.program == "sam")
            .collect();
        assert_eq!(sam.len(), 3, "{outcome:?}");
        for call in sam {
            assert_eq!(call.key_id, "ASIASTUBSTUBSTUB1234", "{call:?}");
            assert_eq!(call.secret, "stub/secret+key", "{call:?}");
            assert_eq!(call.session_token, "stub-session-token", "{call:?}");
        }
    }

    run.env.push(("STUB_STS_REFUSES", "1".to_owned()));
    for outcome in run.under_each(&shells).await {
        assert!(
            matches!(outcome.code, Some(c) if c != 0),
            "broker.yml deploy must fail: {outcome:?}"
        );
        assert!(
            outcome.calls.iter().all(|c| c.program != "sam"),
            "sam ran after STS refused: {outcome:?}"
        );
        assert!(outcome.stderr.contains("AccessDenied"), "{outcome:?}");
    }
}

/// Both example pipelines are valid GitLab CI, by GitLab's schema (vendored in check-jsonschema,
/// so offline).
#[test]
fn the_gitlab_ci_examples_match_gitlabs_schema() {
    let venv = std::env::var("TOOLS_VENV")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv").to_owned());
    let checker = PathBuf::from(venv).join("bin/check-jsonschema");
    assert!(
        checker.exists(),
        "{} missing: `scripts/test` installs it (scripts/requirements-tools.txt)",
        checker.display()
    );
    let output = Command::new(checker)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--builtin-schema", "vendor.gitlab-ci"])
        .args([
            "examples/gitlab-ci/consumer.yml",
            "examples/gitlab-ci/broker.yml",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
