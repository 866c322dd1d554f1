//! The CI/CD components in a GitLab CI emulator: gitlab-ci-local (pinned in
//! `scripts/gitlab-ci-local/`, installed by `scripts/test`) with `--force-shell-executor`, which
//! renders `include: local` with `inputs:`, evaluates `workflow:` and `rules:` (`changes:` against
//! `origin/main`) and runs the jobs' scripts with bash. It mints no ID token, so the local
//! issuer's token is passed as the job's `TOKEN_BROKER_ID_TOKEN` variable.
//!
//! - `templates/aws-credentials.yml`, through `examples/gitlab-ci/consumer.yml` as it ships (its
//!   `include: component:` pointed at the local file), against the running broker and moto: an
//!   allowed job's `aws` works, a refused one stops with the broker's error before its script,
//!   an answer cut short fails the job with no secret in its log, and `profile` mode gives the
//!   AWS CLI and botocore credentials they fetch again when they need them.
//! - `templates/policy-review.yml`, through `examples/gitlab-ci/broker.yml`'s include, in a copy
//!   of this repository: merge-request and branch pipelines, reports for a policy with errors,
//!   and one merge request note, posted to a stand-in of GitLab's notes API and updated in place.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use local_issuer::moto;
use serde_json::{Value, json};

use crate::helpers::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn tool(path: &str, installed_by: &str) -> PathBuf {
    let path = Path::new(ROOT).join(path);
    assert!(
        path.exists(),
        "{} missing: `scripts/test` installs it ({installed_by})",
        path.display()
    );
    path
}

fn gitlab_ci_local() -> PathBuf {
    tool(
        "scripts/gitlab-ci-local/node_modules/.bin/gitlab-ci-local",
        "scripts/node-tools.sh",
    )
}

fn venv_bin() -> PathBuf {
    tool(".venv/bin/aws", "scripts/tools.sh")
        .parent()
        .unwrap()
        .to_owned()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(["-c", "user.name=ci", "-c", "user.email=ci@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A project's repository with `main` pushed to a bare `origin` (gitlab-ci-local evaluates
/// `rules:changes` against `origin/main`, as GitLab compares a merge request to its target).
struct Repo {
    dir: tempfile::TempDir,
    _origin: tempfile::TempDir,
}

/// What one emulated pipeline did.
#[derive(Debug)]
struct Pipeline {
    success: bool,
    log: String,
}

impl Pipeline {
    /// The lines one job printed (gitlab-ci-local prefixes each with the job's name).
    fn job(&self, name: &str) -> String {
        let prefix = format!("{name} ");
        self.log
            .lines()
            .filter(|line| line.starts_with(&prefix))
            .map(|line| format!("{line}\n"))
            .collect()
    }

    fn ran(&self, name: &str) -> bool {
        self.log
            .lines()
            .any(|line| line.starts_with(&format!("{name} ")) && line.contains("starting shell"))
    }
}

impl Repo {
    fn new(files: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let origin = tempfile::tempdir().unwrap();
        git(origin.path(), &["init", "-q", "--bare", "-b", "main"]);
        git(dir.path(), &["init", "-q", "-b", "main"]);
        let repo = Self {
            dir,
            _origin: origin,
        };
        repo.commit(files, "first");
        let origin = repo._origin.path().to_str().unwrap().to_owned();
        git(repo.path(), &["remote", "add", "origin", &origin]);
        git(repo.path(), &["push", "-q", "origin", "main"]);
        git(repo.path(), &["remote", "set-head", "origin", "main"]);
        repo
    }

    /// A copy of this repository's tracked files (as they are in the work tree) and `extra`.
    fn copy_of_this_one(extra: &[(&str, String)]) -> Self {
        let listed = git(Path::new(ROOT), &["ls-files", "-co", "--exclude-standard"]);
        let mut files: Vec<(&str, String)> = Vec::new();
        let mut texts = Vec::new();
        for path in listed.lines() {
            if path.starts_with("scripts/gitlab-ci-local/") || !Path::new(ROOT).join(path).is_file()
            {
                continue;
            }
            if let Ok(text) = fs::read_to_string(Path::new(ROOT).join(path)) {
                texts.push((path, text));
            }
        }
        files.extend(texts);
        files.extend(extra.iter().cloned());
        Self::new(&files)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, files: &[(&str, String)]) {
        for (path, text) in files {
            let full = self.path().join(path);
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(full, text).unwrap();
        }
    }

    /// The jobs GitLab would create for a pipeline with `variables`: `workflow:` and `rules:`
    /// evaluated, nothing run (gitlab-ci-local runs a job it is named to run whatever its
    /// rules say, so rules are judged here).
    fn jobs(&self, variables: &[(&str, String)]) -> Vec<String> {
        let listing = self.run(&["--list"], variables, None);
        assert!(listing.success, "{}", listing.log);
        listing
            .log
            .lines()
            .skip_while(|line| !line.starts_with("name "))
            .skip(1)
            .take_while(|line| line.contains(" on_success ") || line.contains(" manual "))
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    /// Commits `files` (and nothing a pipeline left in the work tree).
    fn commit(&self, files: &[(&str, String)], message: &str) -> String {
        self.write(files);
        for (path, _) in files {
            git(self.path(), &["add", "--", path]);
        }
        git(
            self.path(),
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        git(self.path(), &["rev-parse", "HEAD"])
    }

    /// Runs the pipeline (or `jobs`) with `variables`, in a clean environment whose `PATH` has
    /// `bin` (stubs), the venv's tools (the AWS CLI) and the system's.
    fn run(&self, jobs: &[&str], variables: &[(&str, String)], bin: Option<&Path>) -> Pipeline {
        // One pipeline at a time: gitlab-ci-local's shell executor keeps state outside the
        // project (two pipelines with a job of the same name ran in each other's files).
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let mut command = Command::new(gitlab_ci_local());
        command
            .arg("--force-shell-executor")
            .arg("--ignore-predefined-vars=CI_PIPELINE_SOURCE,CI_OPEN_MERGE_REQUESTS,CI_PROJECT_ID,CI_API_V4_URL");
        for (name, value) in variables {
            command.arg("--variable").arg(format!("{name}={value}"));
        }
        // Jobs last: the options before them take lists.
        command.args(jobs);
        let path = [bin.map(Path::to_path_buf), Some(venv_bin())]
            .into_iter()
            .flatten()
            .map(|p| p.display().to_string())
            .chain(std::env::var("PATH").ok())
            .collect::<Vec<_>>()
            .join(":");
        let home = self.path().join(".home");
        fs::create_dir_all(&home).unwrap();
        let output = command
            .env_clear()
            .env("PATH", path)
            .env("HOME", home)
            // The toolchain the policy review builds with: HOME is the job's own.
            .env("CARGO_HOME", cargo_home())
            .env("RUSTUP_HOME", rustup_home())
            .envs(std::env::var("RUSTUP_TOOLCHAIN").map(|t| ("RUSTUP_TOOLCHAIN", t)))
            .env("FORCE_COLOR", "0")
            .current_dir(self.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Pipeline {
            success: output.status.success(),
            log: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }
}

/// `examples/gitlab-ci/consumer.yml` as it ships, including the component from the project's
/// own copy instead of the catalog.
fn consumer_pipeline() -> String {
    let shipped =
        fs::read_to_string(Path::new(ROOT).join("examples/gitlab-ci/consumer.yml")).unwrap();
    let include = "  - component: $CI_SERVER_FQDN/platform/token-broker/aws-credentials@1.0.0\n";
    assert!(
        shipped.contains(include),
        "consumer.yml includes the component"
    );
    shipped.replace(include, "  - local: templates/aws-credentials.yml\n")
}

fn component(name: &str) -> String {
    fs::read_to_string(Path::new(ROOT).join("templates").join(name)).unwrap()
}

/// A consumer project: the component, a pipeline, a `public/` to sync.
fn consumer(pipeline: String) -> Repo {
    Repo::new(&[
        (
            "templates/aws-credentials.yml",
            component("aws-credentials.yml"),
        ),
        (".gitlab-ci.yml", pipeline),
        ("public/index.html", "<h1>acme</h1>\n".to_owned()),
    ])
}

/// `apk`, which consumer.yml's alpine job installs its tools with: the host has them already.
fn stub_bin() -> tempfile::TempDir {
    let bin = tempfile::tempdir().unwrap();
    let apk = bin.path().join("apk");
    fs::write(&apk, "#!/bin/sh\nexit 0\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut fs::metadata(&apk).unwrap().permissions(),
        0o755,
    );
    fs::set_permissions(&apk, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    bin
}

/// The variables a consumer job gets: its ID token, the broker, and moto as AWS.
fn job_variables(token: &str, broker: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TOKEN_BROKER_ID_TOKEN", token.to_owned()),
        ("TOKEN_BROKER_URL", format!("{broker}/")),
        ("AWS_ENDPOINT_URL", moto::endpoint()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
}

/// The bucket consumer.yml syncs to, in moto.
fn make_bucket(name: &str) {
    let output = Command::new(venv_bin().join("aws"))
        .args(["s3api", "create-bucket", "--bucket", name])
        .env("AWS_ENDPOINT_URL", moto::endpoint())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() || stderr.contains("BucketAlready"),
        "{stderr}"
    );
}

/// consumer.yml's `deploy-production` job as shipped, in a consumer project of its own, with
/// `token` as its ID token and the broker at `broker`.
async fn run_consumer_job(token: &str, broker: &str) -> Pipeline {
    let repo = consumer(consumer_pipeline());
    let bin = stub_bin();
    let vars = job_variables(token, broker);
    tokio::task::spawn_blocking(move || repo.run(&["deploy-production"], &vars, Some(bin.path())))
        .await
        .unwrap()
}

/// consumer.yml, allowed: the component's before_script loads the broker's credentials, and the
/// job's `aws` commands run as the role (moto answers for the assumed role) and sync the site.
#[tokio::test]
async fn the_shipped_consumer_job_gets_credentials_through_the_component() {
    let app = spawn_app().await;
    make_bucket("acme-web-prod");
    let (token, job_id) = app.token(json!({}));
    let pipeline = run_consumer_job(&token, &app.address).await;
    assert!(pipeline.success, "{}", pipeline.log);
    let log = pipeline.job("deploy-production");
    assert!(
        log.contains(":assumed-role/deploy-web-prod/"),
        "get-caller-identity ran as the role: {log}"
    );
    assert!(log.contains("upload: public/index.html"), "{log}");
    assert_eq!(
        recorded_assume_roles(&format!("gitlab-4242-{job_id}"))
            .await
            .len(),
        1,
        "env mode exchanges the token once"
    );
}

/// Refused (a feature branch asking for the production role): the job fails in the component's
/// before_script with the broker's JSON error, and its script never runs.
#[tokio::test]
async fn a_refused_job_fails_with_the_brokers_error_before_its_script() {
    let app = spawn_app().await;
    let (token, _) = app.token(json!({"ref": "feature/x", "ref_protected": "false"}));
    let pipeline = run_consumer_job(&token, &app.address).await;
    assert!(!pipeline.success, "{}", pipeline.log);
    let log = pipeline.job("deploy-production");
    assert!(log.contains(r#""error":"access_denied""#), "{log}");
    assert!(log.contains("the broker refused (HTTP 403)"), "{log}");
    assert!(!log.contains("$ aws "), "the script ran: {log}");
}

/// The broker's `env` answer, cut short after its head and part of its body: what a proxy or a
/// dropped connection leaves. curl exits 18; the job fails and its log holds no byte of it.
#[tokio::test]
async fn an_answer_cut_short_fails_the_job_and_no_secret_reaches_its_log() {
    let secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYCUTSHORTSECRET";
    let body = format!(
        "export AWS_ACCESS_KEY_ID='ASIACUTSHORT1234ABCD'\nexport AWS_SECRET_ACCESS_KEY='{secret}'\nexport AWS_SESS"
    );
    let front = cut_short_server(body, 4096);
    let pipeline = run_consumer_job("a.token.of-the-job", &front).await;
    assert!(!pipeline.success, "{}", pipeline.log);
    let log = pipeline.job("deploy-production");
    assert!(log.contains("no complete answer"), "{log}");
    assert!(log.contains("curl exit status 18"), "{log}");
    for piece in secret.as_bytes().chunks(8) {
        let piece = std::str::from_utf8(piece).unwrap();
        assert!(
            !pipeline.log.contains(piece),
            "{piece:?} leaked: {}",
            pipeline.log
        );
    }
    assert!(!pipeline.log.contains("ASIACUTSHORT"), "{}", pipeline.log);
    assert!(!log.contains("$ aws "), "the script ran: {log}");
}

/// Answers every request with a 200 that announces `length` bytes and sends only `body`, then
/// closes the connection. Its URL.
fn cut_short_server(body: String, length: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Some((_, mut client)) = read_request(client) else {
                continue;
            };
            let _ = write!(
                client,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {length}\r\n\r\n{body}"
            );
        }
    });
    url
}

/// `profile` mode with 900 s sessions: the start-up check, then each `aws` command runs the
/// component's helper as its credential_process, and botocore (the AWS CLI's SDK), in one
/// process, fetches new credentials when the ones it holds near their expiry: within its 15-minute
/// refresh window, which a 900 s session always is. Every call succeeds as the role, each with
/// credentials of its own exchange.
#[tokio::test]
async fn profile_mode_fetches_new_credentials_when_the_tools_need_them() {
    let app = spawn_app().await;
    let pipeline_yaml = r#"include:
  - local: templates/aws-credentials.yml
    inputs:
      role: deploy-web-prod
      audience: https://token-broker.example.com
      mode: profile
      duration: "900"

long-job:
  environment: production
  extends: .token-broker-credentials
  script:
    - aws sts get-caller-identity --query Arn --output text
    - aws sts get-caller-identity --query Arn --output text
    - |
      python3 - <<'EOF'
      import botocore.session
      session = botocore.session.Session()
      sts = session.create_client("sts")
      for call in range(3):
          arn = sts.get_caller_identity()["Arn"]
          key = session.get_credentials().get_frozen_credentials().access_key
          print(f"sdk call {call}: {arn} with {key}")
      EOF
"#;
    let repo = consumer(pipeline_yaml.to_owned());
    let (token, job_id) = app.token(json!({}));
    let vars = job_variables(&token, &app.address);
    let pipeline = tokio::task::spawn_blocking(move || repo.run(&["long-job"], &vars, None))
        .await
        .unwrap();
    assert!(pipeline.success, "{}", pipeline.log);
    let log = pipeline.job("long-job");
    assert!(
        log.contains("AWS profile token-broker fetches credentials for deploy-web-prod"),
        "{log}"
    );
    let cli_calls = log
        .lines()
        .filter(|line| {
            line.ends_with(&format!(
                "assumed-role/deploy-web-prod/gitlab-4242-{job_id}"
            ))
        })
        .count();
    assert_eq!(cli_calls, 2, "{log}");
    let sdk_keys: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("sdk call") && line.contains(":assumed-role/deploy-web-prod/"))
        .filter_map(|line| line.rsplit(' ').next())
        .collect();
    assert_eq!(sdk_keys.len(), 3, "{log}");
    let distinct: std::collections::BTreeSet<_> = sdk_keys.iter().collect();
    assert_eq!(distinct.len(), 3, "each SDK call after a refresh: {log}");
    let exchanges = recorded_assume_roles(&format!("gitlab-4242-{job_id}")).await;
    assert!(
        exchanges.len() >= 1 + 2 + 3,
        "start-up check, two CLI commands, three SDK refreshes: {}",
        exchanges.len()
    );
    for exchange in &exchanges {
        assert_eq!(
            exchange.get("DurationSeconds").map(String::as_str),
            Some("900")
        );
    }
}

// ---- the policy review ----

/// GitLab's merge request notes API, as far as the review uses it: list (paged), create,
/// update, for one token. Every request it served, and the notes it holds.
#[derive(Clone, Default)]
struct NotesApi {
    notes: Arc<Mutex<BTreeMap<u64, String>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

const REVIEW_TOKEN: &str = "glpat-review-token";

impl NotesApi {
    /// Serves on a free port; `CI_API_V4_URL` for the pipeline.
    fn start(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/v4", listener.local_addr().unwrap());
        let api = self.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if let Some((request, client)) = read_request(client) {
                    api.answer(request, client);
                }
            }
        });
        url
    }

    fn answer(&self, request: Request, mut client: TcpStream) {
        let path = request
            .target
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned();
        self.requests
            .lock()
            .unwrap()
            .push(format!("{} {}", request.method, path));
        let (status, body) = if request.header("private-token") != Some(REVIEW_TOKEN) {
            ("401 Unauthorized", json!({"message": "401 Unauthorized"}))
        } else if !path.starts_with("/api/v4/projects/4242/merge_requests/7/notes") {
            ("404 Not Found", json!({"message": "404 Not Found"}))
        } else {
            self.notes_call(&request, &path)
        };
        let body = body.to_string();
        let _ = write!(
            client,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }

    fn notes_call(&self, request: &Request, path: &str) -> (&'static str, Value) {
        let mut notes = self.notes.lock().unwrap();
        let id = path
            .rsplit('/')
            .next()
            .and_then(|id| id.parse::<u64>().ok());
        let text = || {
            serde_json::from_slice::<Value>(&request.body).unwrap()["body"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        match (request.method.as_str(), id) {
            ("GET", None) => {
                let page: usize = request
                    .query("page")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(1);
                let per_page: usize = request
                    .query("per_page")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(20);
                let listed: Vec<Value> = notes
                    .iter()
                    .skip((page - 1) * per_page)
                    .take(per_page)
                    .map(|(id, body)| json!({"id": id, "body": body}))
                    .collect();
                ("200 OK", Value::Array(listed))
            }
            ("POST", None) => {
                let id = 1000 + notes.len() as u64;
                notes.insert(id, text());
                ("201 Created", json!({"id": id}))
            }
            ("PUT", Some(id)) if notes.contains_key(&id) => {
                notes.insert(id, text());
                ("200 OK", json!({"id": id}))
            }
            _ => ("404 Not Found", json!({"message": "404 Not Found"})),
        }
    }
}

/// One HTTP/1.1 request.
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn query(&self, name: &str) -> Option<String> {
        let query = self.target.split_once('?')?.1;
        form_urlencoded::parse(query.as_bytes())
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.into_owned())
    }
}

fn read_request(client: TcpStream) -> Option<(Request, TcpStream)> {
    let mut reader = BufReader::new(client.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((
        Request {
            method,
            target,
            headers,
            body,
        },
        client,
    ))
}

/// The pipeline of the broker's repository as shipped (examples/gitlab-ci/broker.yml, which
/// includes the review component), in a copy of this repository. Its `test` and `deploy` jobs
/// are not run here: they are the whole suite and a deployment.
fn broker_repo() -> Repo {
    let pipeline =
        fs::read_to_string(Path::new(ROOT).join("examples/gitlab-ci/broker.yml")).unwrap();
    Repo::copy_of_this_one(&[(".gitlab-ci.yml", pipeline)])
}

/// The merge request's variables, as GitLab sets them for a merge-request pipeline.
fn merge_request_variables(base: &str, notes_api: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CI_PIPELINE_SOURCE", "merge_request_event".to_owned()),
        ("CI_MERGE_REQUEST_IID", "7".to_owned()),
        ("CI_MERGE_REQUEST_TARGET_BRANCH_NAME", "main".to_owned()),
        ("CI_MERGE_REQUEST_DIFF_BASE_SHA", base.to_owned()),
        ("CI_PROJECT_ID", "4242".to_owned()),
        ("CI_API_V4_URL", notes_api.to_owned()),
        ("POLICY_REVIEW_TOKEN", REVIEW_TOKEN.to_owned()),
        // The review builds token-broker-policy; one target directory for every run of it, and
        // this machine's crates (broker.yml points CARGO_HOME into the project for its cache).
        ("CARGO_TARGET_DIR", review_target_dir()),
        ("CARGO_HOME", cargo_home()),
    ]
}

fn cargo_home() -> String {
    std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()))
}

fn rustup_home() -> String {
    std::env::var("RUSTUP_HOME")
        .unwrap_or_else(|_| format!("{}/.rustup", std::env::var("HOME").unwrap_or_default()))
}

fn review_target_dir() -> String {
    Path::new(ROOT)
        .join("target/gitlab-ci-local")
        .display()
        .to_string()
}

/// The broker's repository with a merge request from `branch`, which commits `policy`; the
/// merge-request pipeline's variables.
fn policy_merge_request(
    branch: &str,
    policy: String,
    notes_api: &str,
) -> (Repo, Vec<(&'static str, String)>) {
    let repo = broker_repo();
    let base = git(repo.path(), &["rev-parse", "HEAD"]);
    git(repo.path(), &["checkout", "-q", "-b", branch]);
    repo.commit(&[("policy.toml", policy)], branch);
    let vars = merge_request_variables(&base, notes_api);
    (repo, vars)
}

/// A policy change that widens access and has an error finding (TB104: `ref` without
/// `ref_type`).
const WIDENING_ROLE: &str = r#"
[role.deploy-web-prod]
arn = "arn:aws:iam::123456789012:role/token-broker-target-deploy-web-prod"

[[role.deploy-web-prod.allow]]
project_id = "4242"
ref = "main"
ref_protected = "true"
"#;

fn policy_with(extra: &str) -> String {
    fs::read_to_string(Path::new(ROOT).join("policy.toml")).unwrap() + extra
}

/// A merge request whose policy has an error finding and widens access: the review job writes
/// both reports (Code Quality with the finding, JUnit with the cases) and then fails; the diff job
/// posts one note, and a second pipeline for the same merge request updates that note instead of
/// adding one; a note GitLab refuses fails the job. A branch pipeline for the same push has no
/// diff job.
#[tokio::test]
async fn a_policy_merge_request_gets_its_reports_and_one_note_updated_in_place() {
    let api = NotesApi::default();
    let api_url = api.start();
    tokio::task::spawn_blocking(move || {
        let (repo, vars) = policy_merge_request("widen", policy_with(WIDENING_ROLE), &api_url);
        let jobs = ["policy-review", "policy-diff"];

        let first = repo.run(&jobs, &vars, None);
        assert!(
            !first.success,
            "the error finding fails the review: {}",
            first.log
        );
        let review = first.job("policy-review");
        assert!(review.contains("error[TB104"), "{review}");
        let artifacts = repo.path().join(".gitlab-ci-local/artifacts/policy-review");
        let quality: Value = serde_json::from_str(
            &fs::read_to_string(artifacts.join("gl-code-quality-report.json")).unwrap(),
        )
        .unwrap();
        let ids: Vec<&str> = quality
            .as_array()
            .unwrap()
            .iter()
            .map(|issue| issue["check_name"].as_str().unwrap())
            .collect();
        assert!(ids.contains(&"TB104"), "{quality}");
        assert!(
            quality[0]["location"]["path"] == "policy.toml",
            "paths relative to the repository: {quality}"
        );
        let junit = fs::read_to_string(artifacts.join("policy-tests.xml")).unwrap();
        assert!(junit.contains("<testsuite"), "{junit}");
        assert!(first.ran("policy-diff"), "{}", first.log);
        let notes = api.notes.lock().unwrap().clone();
        assert_eq!(notes.len(), 1, "{notes:?}\n{}", first.log);
        let (&id, body) = notes.iter().next().unwrap();
        assert!(
            body.starts_with("<!-- token-broker policy review: policy.toml -->"),
            "{body}"
        );
        assert!(body.contains("This change widens access"), "{body}");
        assert!(body.contains("deploy-web-prod"), "{body}");

        // Another push to the merge request: the same note, updated.
        repo.commit(
            &[(
                "policy.toml",
                policy_with(
                    &WIDENING_ROLE
                        .replace("ref = \"main\"", "ref = \"main\"\nref_type = \"branch\""),
                ),
            )],
            "fix the finding",
        );
        let second = repo.run(&jobs, &vars, None);
        assert!(second.success, "{}", second.log);
        let notes = api.notes.lock().unwrap().clone();
        assert_eq!(
            notes.keys().copied().collect::<Vec<_>>(),
            vec![id],
            "{notes:?}"
        );
        assert!(
            !notes[&id].contains("ref-without-ref-type"),
            "{}",
            notes[&id]
        );
        let requests = api.requests.lock().unwrap().clone();
        assert_eq!(
            requests.iter().filter(|r| r.starts_with("POST")).count(),
            1,
            "{requests:?}"
        );
        assert_eq!(
            requests.iter().filter(|r| r.starts_with("PUT")).count(),
            1,
            "{requests:?}"
        );

        // GitLab refuses the note (a revoked token): the diff job fails and shows GitLab's answer,
        // and the note stays as it was.
        let mut revoked = vars.clone();
        revoked.retain(|(name, _)| *name != "POLICY_REVIEW_TOKEN");
        revoked.push(("POLICY_REVIEW_TOKEN", "glpat-revoked".to_owned()));
        let refused = repo.run(&["policy-diff"], &revoked, None);
        assert!(!refused.success, "{}", refused.log);
        assert!(
            refused.job("policy-diff").contains("401 Unauthorized"),
            "{}",
            refused.log
        );
        assert_eq!(
            api.notes
                .lock()
                .unwrap()
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            vec![id]
        );

        // The branch pipeline of the same push: review only; and none while a merge request is open.
        let branch_vars = [
            ("CARGO_TARGET_DIR", review_target_dir()),
            ("CARGO_HOME", cargo_home()),
        ];
        let branch = repo.jobs(&branch_vars);
        assert!(branch.contains(&"policy-review".to_owned()), "{branch:?}");
        assert!(!branch.contains(&"policy-diff".to_owned()), "{branch:?}");
        assert!(repo.jobs(&vars).contains(&"policy-diff".to_owned()));
    })
    .await
    .unwrap();
}

/// A policy that does not compile (the case where `cargo build` of the broker stops at its build
/// script): the review still writes both reports, each holding the compile error, and fails.
/// A merge request that does not touch the policy gets no diff job and no note.
#[tokio::test]
async fn a_policy_that_does_not_compile_still_gets_both_reports() {
    let api = NotesApi::default();
    let api_url = api.start();
    tokio::task::spawn_blocking(move || {
        let (repo, vars) =
            policy_merge_request("broken", policy_with("\n[role.x]\narn = 42\n"), &api_url);
        let run = repo.run(&["policy-review"], &vars, None);
        assert!(!run.success, "{}", run.log);
        let artifacts = repo.path().join(".gitlab-ci-local/artifacts/policy-review");
        let quality = fs::read_to_string(artifacts.join("gl-code-quality-report.json")).unwrap();
        assert!(quality.contains("\"check_name\":\"compile\""), "{quality}");
        let junit = fs::read_to_string(artifacts.join("policy-tests.xml")).unwrap();
        assert!(junit.contains("does not compile"), "{junit}");

        git(repo.path(), &["checkout", "-q", "main"]);
        git(repo.path(), &["checkout", "-q", "-b", "docs"]);
        repo.commit(&[("README.md", "docs only\n".to_owned())], "docs");
        let docs = repo.jobs(&vars);
        assert!(docs.contains(&"policy-review".to_owned()), "{docs:?}");
        assert!(
            !docs.contains(&"policy-diff".to_owned()),
            "no diff job, so no note: {docs:?}"
        );
    })
    .await
    .unwrap();
}

/// The review's `workflow:rules`: a merge request's pushes get a merge-request pipeline and no
/// branch pipeline beside it; other branches and tags get branch pipelines. gitlab-ci-local 4.65
/// does not evaluate `workflow:` itself, so its rule engine judges the same rules as a probe
/// job's `rules:` (a pipeline exists exactly when the probe job would).
#[tokio::test]
async fn the_review_runs_one_pipeline_per_push() {
    let template = component("policy-review.yml");
    let config: serde_yaml::Value = serde_yaml::Deserializer::from_str(&template)
        .nth(1)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .unwrap();
    let rules = config["workflow"]["rules"].clone();
    assert!(rules.is_sequence(), "{template}");
    let mut probe = serde_yaml::Mapping::new();
    probe.insert("script".into(), vec!["true"].into());
    probe.insert("rules".into(), rules);
    let mut pipeline = serde_yaml::Mapping::new();
    pipeline.insert("pipeline-exists".into(), probe.into());
    let repo = Repo::new(&[(".gitlab-ci.yml", serde_yaml::to_string(&pipeline).unwrap())]);
    tokio::task::spawn_blocking(move || {
        let exists = |variables: &[(&str, String)]| !repo.jobs(variables).is_empty();
        let merge_request = [("CI_PIPELINE_SOURCE", "merge_request_event".to_owned())];
        assert!(exists(&merge_request), "a merge request's pipeline");
        assert!(exists(&[]), "a branch without a merge request");
        let open = [("CI_OPEN_MERGE_REQUESTS", "acme/broker!7".to_owned())];
        assert!(
            !exists(&open),
            "no branch pipeline beside the merge request's"
        );
    })
    .await
    .unwrap();
}
