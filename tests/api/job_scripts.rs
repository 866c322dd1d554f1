//! The job snippets users copy, run as GitLab runs them against a running broker: the CI/CD
//! component `templates/aws-credentials.yml` in its `env` and `profile` modes, the jobs that use it
//! (its header's example and `examples/gitlab-ci/consumer.yml`, which takes its `before_script` by
//! `!reference`), README.md's job without the component and its `/v1/token` example, and
//! `examples/gitlab-ci/broker.yml`'s deploy job. Each is extracted from its file, never copied
//! here: a component is rendered with its inputs as GitLab renders it, a job's `variables:` are
//! exported before its `before_script` and `script`. Each runs under dash, busybox sh (alpine's
//! shell) and bash, with `-e` and GitLab Runner's prelude, that shell also being `sh` on `PATH`.
//! `aws`, `apk` and the other tools a job installs are stubs that record their arguments and the
//! AWS credentials in their environment; the profile mode's `credential_process` runs under the
//! real AWS CLI against moto. Allowed, a job reaches `aws` with the broker's credentials, never
//! the runner's own; refused, it exits non-zero before any `aws` and shows the broker's JSON
//! error. A front end between the jobs and the broker (as the Function URL is) counts requests and
//! can throttle, answer an empty 200 or cut a 200 short: a 4xx is final, a 503 is retried, and
//! neither an empty nor a cut-short 200 reaches `aws` or shows a byte of a secret. The examples
//! and the components are valid by GitLab's schema.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use local_issuer::kms::KeySpec;
use local_issuer::sts::{LocalSts, StsMode};
use regex::Regex;
use serde::Deserialize;
use serde_json::{Value, json};
use serde_yaml::value::TaggedValue;
use serde_yaml::{Mapping, Value as Yaml};
use tempfile::TempDir;

use crate::helpers::*;

/// The shells a job runs under: alpine's busybox sh and Debian's dash (GitLab's `sh`), and bash,
/// which GitLab picks where the image has it (the broker's own pipeline, on `rust:*-bookworm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shell {
    Dash,
    Busybox,
    Bash,
}

const SHELLS: [Shell; 3] = [Shell::Dash, Shell::Busybox, Shell::Bash];

impl Shell {
    /// The shell's executable.
    fn program(self) -> &'static str {
        let (candidates, package): (&[&'static str], &str) = match self {
            Shell::Dash => (&["/usr/bin/dash", "/bin/dash"], "dash"),
            Shell::Busybox => (&["/bin/busybox", "/usr/bin/busybox"], "busybox-static"),
            Shell::Bash => (&["/usr/bin/bash", "/bin/bash"], "bash"),
        };
        candidates
            .iter()
            .find(|path| Path::new(path).exists())
            .unwrap_or_else(|| {
                panic!(
                    "{self:?} is not installed (none of {candidates:?}): `scripts/test` installs \
                     it through scripts/apt-tools.sh (apt-get install {package})"
                )
            })
    }

    /// The program and the arguments that make it a shell.
    fn argv(self) -> Vec<String> {
        let mut argv = vec![self.program().to_owned()];
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

/// What the component's `env` mode needs besides `sh` and curl (and GitLab's prelude, `grep`):
/// an image without curl has these.
const TOOLS_BUT_CURL: [&str; 6] = ["mkdir", "cat", "mktemp", "rm", "grep", "head"];

/// The runner's own AWS keys, in the environment before the job starts: no `aws` call may get
/// them, whatever the broker answers.
fn runners_own_keys() -> [(&'static str, String); 3] {
    [
        ("AWS_ACCESS_KEY_ID", "AKIARUNNERSOWN".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", RUNNERS_SECRET.to_owned()),
        ("AWS_SESSION_TOKEN", "runners-own-session".to_owned()),
    ]
}

const RUNNERS_SECRET: &str = "runners-own-secret";

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

/// The one README block of language `info` that contains every one of `needles`.
fn readme_block(info: &str, needles: &[&str]) -> String {
    let found: Vec<String> = readme_blocks()
        .into_iter()
        .filter(|(lang, body)| lang == info && needles.iter().all(|n| body.contains(n)))
        .map(|(_, body)| body)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "README.md should have exactly one ```{info} block containing {needles:?}"
    );
    found.into_iter().next().unwrap()
}

/// The YAML documents of `text` (a component has two: its `spec:`, then its configuration).
fn yaml_documents(text: &str) -> Vec<Yaml> {
    serde_yaml::Deserializer::from_str(text)
        .map(|document| Yaml::deserialize(document).unwrap())
        .collect()
}

/// The two documents of the component at `path` (in this repository).
fn component_documents(path: &str) -> (Yaml, Yaml) {
    let documents = yaml_documents(&read(path));
    let count = documents.len();
    let [spec, config]: [Yaml; 2] = documents.try_into().unwrap_or_else(|_| {
        panic!("{path}: `spec:`, `---`, then the configuration, not {count} documents")
    });
    (spec, config)
}

/// The component at `path` as GitLab includes it with the inputs `given`: every input given or
/// defaulted, then each `$[[ inputs.NAME ]]` replaced.
fn render_component(path: &str, given: &Mapping) -> Mapping {
    let (spec, config) = component_documents(path);
    let inputs = component_inputs(path, &spec, given);
    let rendered = interpolate(&config, &inputs);
    let text = serde_yaml::to_string(&rendered).unwrap();
    assert!(
        !text.contains("$[["),
        "{path}: an interpolation GitLab does not do:\n{text}"
    );
    rendered.as_mapping().expect("a configuration").clone()
}

/// The value of each input `spec` declares, given or its default. Where GitLab refuses the
/// pipeline (a required input missing, an unknown one, a value outside its `options` or its
/// `regex`), this panics.
fn component_inputs(path: &str, spec: &Yaml, given: &Mapping) -> HashMap<String, Yaml> {
    let declared = spec["spec"]["inputs"]
        .as_mapping()
        .unwrap_or_else(|| panic!("{path} declares no `spec: inputs:`"));
    for key in given.keys() {
        assert!(declared.contains_key(key), "{path} has no input {key:?}");
    }
    let mut inputs = HashMap::new();
    for (key, declaration) in declared {
        let key = key.as_str().expect("input names are strings");
        let value = given
            .get(key)
            .or_else(|| declaration.get("default"))
            .unwrap_or_else(|| panic!("{path}: the input {key} is required"));
        if let Some(options) = declaration.get("options").and_then(Yaml::as_sequence) {
            assert!(
                options.contains(value),
                "{path}: {key} = {value:?} is not one of {options:?}"
            );
        }
        if let Some(pattern) = declaration.get("regex").and_then(Yaml::as_str) {
            assert!(
                Regex::new(pattern).unwrap().is_match(&scalar(value)),
                "{path}: {key} = {value:?} does not match {pattern}"
            );
        }
        inputs.insert(key.to_owned(), value.clone());
    }
    inputs
}

/// A scalar as text, as GitLab puts it into a string.
fn scalar(value: &Yaml) -> String {
    match value {
        Yaml::String(text) => text.clone(),
        Yaml::Number(number) => number.to_string(),
        Yaml::Bool(flag) => flag.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

static INPUT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\$\[\[\s*inputs\.([A-Za-z0-9_-]+)\s*\]\]").unwrap());

/// `value` with each `$[[ inputs.NAME ]]` replaced, in keys as in values: a string that is only
/// that takes the input's value (an array input stays an array), one that contains it its text.
fn interpolate(value: &Yaml, inputs: &HashMap<String, Yaml>) -> Yaml {
    let input = |name: &str| {
        inputs
            .get(name)
            .unwrap_or_else(|| panic!("no input {name}"))
    };
    match value {
        Yaml::String(text) => match INPUT.captures(text) {
            Some(whole) if whole[0].len() == text.len() => input(&whole[1]).clone(),
            _ => Yaml::String(
                INPUT
                    .replace_all(text, |c: &regex::Captures| scalar(input(&c[1])))
                    .into_owned(),
            ),
        },
        Yaml::Sequence(items) => items.iter().map(|i| interpolate(i, inputs)).collect(),
        Yaml::Mapping(entries) => Yaml::Mapping(
            entries
                .iter()
                .map(|(k, v)| (interpolate(k, inputs), interpolate(v, inputs)))
                .collect(),
        ),
        Yaml::Tagged(tagged) => Yaml::Tagged(Box::new(TaggedValue {
            tag: tagged.tag.clone(),
            value: interpolate(&tagged.value, inputs),
        })),
        other => other.clone(),
    }
}

/// `over` merged into `base` as GitLab's `extends:` merges: mappings key by key, anything else
/// (a script, a list) replaced.
fn merge(base: &mut Mapping, over: Mapping) {
    for (key, value) in over {
        if let (Some(Yaml::Mapping(inner)), Yaml::Mapping(value)) = (base.get_mut(&key), &value) {
            merge(inner, value.clone());
            continue;
        }
        base.insert(key, value);
    }
}

/// `export NAME="value"`. GitLab expands `$NAME` and `${NAME}` in a variable's value from the
/// job's other variables (`$$` is a `$`); the shell does here, from the same environment.
fn export(name: &str, value: &Yaml) -> String {
    assert!(
        Regex::new("^[A-Za-z_][A-Za-z0-9_]*$")
            .unwrap()
            .is_match(name),
        "a variable name: {name:?}"
    );
    let value = match value {
        Yaml::Mapping(long_form) => scalar(&long_form["value"]),
        short_form => scalar(short_form),
    };
    let mut quoted = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        let next = chars.peek().copied();
        match c {
            '$' if next == Some('$') => {
                chars.next();
                quoted.push_str("\\$");
            }
            '$' if next.is_some_and(|n| n.is_ascii_alphabetic() || n == '_' || n == '{') => {
                quoted.push('$')
            }
            '$' | '"' | '\\' | '`' => {
                quoted.push('\\');
                quoted.push(c);
            }
            c => quoted.push(c),
        }
    }
    format!("export {name}=\"{quoted}\"")
}

/// A pipeline file as GitLab reads it: its own jobs and those of the components it includes,
/// by `local:` path or as `component: <host>/<project>/<name>@<version>` (this repository's
/// `templates/<name>.yml`).
struct Pipeline {
    doc: Mapping,
}

impl Pipeline {
    fn parse(yaml: &str) -> Self {
        Self::new(serde_yaml::from_str(yaml).unwrap())
    }

    fn new(doc: Yaml) -> Self {
        let mut doc = doc.as_mapping().expect("a pipeline is a mapping").clone();
        let includes = match doc.remove("include") {
            None => Vec::new(),
            Some(Yaml::Sequence(items)) => items,
            Some(one) => vec![one],
        };
        for include in includes {
            let path = included_path(&include);
            let inputs = include
                .get("inputs")
                .and_then(Yaml::as_mapping)
                .cloned()
                .unwrap_or_default();
            for (key, job) in render_component(&path, &inputs) {
                assert!(!doc.contains_key(&key), "{key:?} is defined twice");
                doc.insert(key, job);
            }
        }
        Self { doc }
    }

    /// Job `name` with the jobs it `extends:` merged under its own keys.
    fn job(&self, name: &str) -> Mapping {
        let own = self
            .doc
            .get(name)
            .and_then(Yaml::as_mapping)
            .unwrap_or_else(|| panic!("no job {name:?}"))
            .clone();
        let parents: Vec<String> = match own.get("extends") {
            None => Vec::new(),
            Some(Yaml::String(parent)) => vec![parent.clone()],
            Some(Yaml::Sequence(parents)) => parents.iter().map(scalar).collect(),
            Some(other) => panic!("{name}: extends: {other:?}"),
        };
        let mut job = Mapping::new();
        for parent in &parents {
            merge(&mut job, self.job(parent));
        }
        merge(&mut job, own);
        job.remove("extends");
        job
    }

    /// Job `name`'s shell script as GitLab Runner runs it: the pipeline's and the job's
    /// `variables:` exported, then its `before_script` and `script`, in one shell.
    fn script(&self, name: &str) -> String {
        let job = self.job(name);
        let mut variables = self
            .doc
            .get("variables")
            .and_then(Yaml::as_mapping)
            .cloned()
            .unwrap_or_default();
        if let Some(own) = job.get("variables").and_then(Yaml::as_mapping) {
            merge(&mut variables, own.clone());
        }
        let mut lines: Vec<String> = variables
            .iter()
            .map(|(name, value)| export(name.as_str().unwrap(), value))
            .collect();
        for key in ["before_script", "script"] {
            if let Some(items) = job.get(key) {
                self.script_lines(items, &mut lines);
            }
        }
        lines.join("\n")
    }

    /// Appends the lines of a script item: a string, a list (GitLab flattens nested ones), or a
    /// `!reference [job, key, …]` to one.
    fn script_lines(&self, item: &Yaml, lines: &mut Vec<String>) {
        match item {
            Yaml::String(line) => lines.push(line.clone()),
            Yaml::Sequence(items) => {
                for item in items {
                    self.script_lines(item, lines);
                }
            }
            Yaml::Tagged(tagged) if tagged.tag == "!reference" => {
                self.script_lines(&self.reference(&tagged.value), lines)
            }
            other => panic!("a script item is a string, a list or a !reference: {other:?}"),
        }
    }

    /// What `!reference [job, key, …]` points at.
    fn reference(&self, path: &Yaml) -> Yaml {
        let path: Vec<String> = path
            .as_sequence()
            .expect("!reference [job, key, …]")
            .iter()
            .map(scalar)
            .collect();
        let (job, keys) = path.split_first().expect("!reference [job, key, …]");
        let mut value = Yaml::Mapping(self.job(job));
        for key in keys {
            value = value
                .get(key.as_str())
                .unwrap_or_else(|| panic!("!reference {path:?}: no {key}"))
                .clone();
        }
        value
    }
}

/// The repository file an `include:` entry names.
fn included_path(include: &Yaml) -> String {
    if let Some(local) = include.get("local").and_then(Yaml::as_str) {
        return local.trim_start_matches('/').to_owned();
    }
    let component = include["component"].as_str().unwrap_or_else(|| {
        panic!("only components and local files are included here: {include:?}")
    });
    let name = component
        .rsplit('/')
        .next()
        .and_then(|last| last.split('@').next())
        .unwrap();
    format!("templates/{name}.yml")
}

/// The component's usage example, from its header comment: an `include:` of it with the inputs
/// it requires, and a job `deploy` that `extends:` its hidden job (`env` mode, the default).
fn component_example() -> Yaml {
    let text = read("templates/aws-credentials.yml");
    let example: Vec<&str> = text
        .lines()
        .skip_while(|line| *line != "#   include:")
        .take_while(|line| line.starts_with("#   "))
        .map(|line| &line[4..])
        .collect();
    assert!(
        !example.is_empty(),
        "templates/aws-credentials.yml's header shows its use, from `#   include:`"
    );
    serde_yaml::from_str(&example.join("\n")).unwrap()
}

/// The script of the component example's job with `inputs` added to its include and `script` as
/// its own.
fn component_job(inputs: &[(&str, &str)], script: &[&str]) -> String {
    let mut doc = component_example();
    for (name, value) in inputs {
        doc["include"][0]["inputs"][*name] = Yaml::from(*value);
    }
    doc["deploy"]["script"] = script.iter().map(|line| Yaml::from(*line)).collect();
    Pipeline::new(doc).script("deploy")
}

/// The component in `profile` mode; its script shows the AWS variables the job's commands get.
fn profile_mode_job() -> String {
    component_job(&[("mode", "profile")], &["env | grep '^AWS_' | sort"])
}

/// The jobs that get AWS credentials from the broker, as (what, pipeline, job): README.md's job
/// without the component, the component's example (`env` mode), and consumer.yml's job, which
/// takes the component's `before_script` by `!reference`.
fn credential_pipelines() -> Vec<(&'static str, Pipeline, &'static str)> {
    vec![
        (
            "README.md job",
            Pipeline::parse(&readme_block("yaml", &["id_tokens:", "BROKER_ID_TOKEN"])),
            "deploy",
        ),
        (
            "the component (env mode)",
            Pipeline::new(component_example()),
            "deploy",
        ),
        (
            "consumer.yml",
            Pipeline::parse(&read("examples/gitlab-ci/consumer.yml")),
            "deploy-production",
        ),
    ]
}

/// The credential jobs' scripts, as (what, script).
fn credential_jobs() -> Vec<(&'static str, String)> {
    credential_pipelines()
        .into_iter()
        .map(|(what, pipeline, job)| (what, pipeline.script(job)))
        .collect()
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
    /// The files in `$CI_PROJECT_DIR/.token-broker`, sorted.
    project_files: Vec<String>,
    /// Requests that reached the front end (throttled ones included).
    requests: usize,
    /// The job's directory (`CI_PROJECT_DIR`), kept for what runs after the job.
    dir: TempDir,
    /// The front end the job talked to, still running.
    front: Front,
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

    /// Non-zero exit, no `aws` (nor `sam`) call, no temporary file left behind.
    fn assert_stopped_before_aws(&self, what: &str) {
        let shell = self.shell;
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "{what} under {shell:?} must fail: {self:?}"
        );
        assert!(
            self.calls
                .iter()
                .all(|c| c.program != "aws" && c.program != "sam"),
            "{what} under {shell:?} ran AWS commands: {self:?}"
        );
        assert!(
            self.leftovers.is_empty(),
            "{what} under {shell:?} left {self:?}"
        );
    }

    /// Stopped before `aws`, with the broker's error `code` shown once.
    fn assert_failed_closed(&self, what: &str, code: &str) {
        self.assert_stopped_before_aws(what);
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
    }

    /// `command` with the job's environment: this shell as `sh` first on `PATH`, then the
    /// stubs and the system's tools, its `HOME`, `TMPDIR` and ID token `token`.
    fn command_after(&self, program: impl AsRef<std::ffi::OsStr>, token: &str) -> Command {
        let mut command = Command::new(program);
        command
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", self.bin().display()))
            .env("HOME", self.dir.path())
            .env("TMPDIR", self.dir.path().join("tmp"))
            .env("TOKEN_BROKER_ID_TOKEN", token)
            .current_dir(self.dir.path());
        command
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// The AWS variables the job's `env | grep '^AWS_'` printed.
    fn exported_aws_variables(&self) -> BTreeMap<String, String> {
        self.stdout
            .lines()
            .filter(|line| line.starts_with("AWS_"))
            .filter_map(|line| line.split_once('='))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect()
    }

    /// Runs `credential_process` of `config` as the AWS CLI does: split into words as by
    /// Python's `shlex.split`, the program from `PATH` (`sh`: this shell), with `token`.
    async fn credential_process(&self, config: &str, token: &str) -> Ran {
        let line = config
            .lines()
            .find_map(|line| line.strip_prefix("credential_process = "))
            .unwrap_or_else(|| panic!("no credential_process in {config}"));
        let words = shell_words(line);
        let program = self.bin().join(&words[0]);
        assert!(program.exists(), "{} is not on PATH: {line}", words[0]);
        let mut command = self.command_after(program, token);
        command.args(&words[1..]);
        run_off_the_runtime(command).await
    }

    /// The AWS CLI (the tools venv's) asking STS (moto) who it is, with the job's exported AWS
    /// variables and `token`.
    async fn aws_cli(&self, exported: &BTreeMap<String, String>, token: &str) -> Ran {
        let mut command = self.command_after(aws_cli_path(), token);
        command
            .args(["--region", "us-east-1", "--endpoint-url", &moto::endpoint()])
            .args(["sts", "get-caller-identity", "--output", "json"])
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(exported);
        run_off_the_runtime(command).await
    }
}

/// What a command after the job did.
#[derive(Debug)]
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn run_off_the_runtime(command: Command) -> Ran {
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let (code, stdout, stderr) = run_with_deadline(command, dir.path());
        Ran {
            code,
            stdout,
            stderr,
        }
    })
    .await
    .unwrap()
}

/// `line` split into words as Python's `shlex.split` splits it (which the AWS CLI uses for
/// `credential_process`): bare, single-quoted, or double-quoted with `\"` and `\\`.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => words.extend(word.take()),
            '\'' => {
                let word = word.get_or_insert_with(String::new);
                for c in chars.by_ref().take_while(|c| *c != '\'') {
                    word.push(c);
                }
            }
            '"' => {
                let word = word.get_or_insert_with(String::new);
                loop {
                    match chars.next().expect("a closing \"") {
                        '"' => break,
                        '\\' => {
                            let escaped = chars.next().expect("a character after \\");
                            if !matches!(escaped, '"' | '\\') {
                                word.push('\\');
                            }
                            word.push(escaped);
                        }
                        c => word.push(c),
                    }
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

fn aws_cli_path() -> PathBuf {
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
    aws
}

/// How a script is run.
#[derive(Clone)]
struct Run {
    /// The job's script.
    script: String,
    /// As a GitLab job: `-e` and GitLab Runner's prelude; otherwise plain `sh -c`.
    as_job: bool,
    /// The job's variables besides `TOKEN_BROKER_URL` and `CI_PROJECT_DIR`.
    env: Vec<(&'static str, String)>,
    /// The broker; `TOKEN_BROKER_URL` is a counting front end to it.
    broker: String,
    trailing_slash: bool,
    /// How many requests the front end answers itself with a 503 before the others.
    throttle: usize,
    /// What the front end does with the requests it does not throttle.
    front: FrontMode,
    /// Whether `PATH` holds only the shell, [`TOOLS_BUT_CURL`] and the stubs (an image without
    /// curl).
    without_curl: bool,
}

impl Run {
    /// A job with the ID token `token` under both names the jobs use: README.md's
    /// `BROKER_ID_TOKEN` and the component's `TOKEN_BROKER_ID_TOKEN`.
    fn job(script: &str, broker: &str, token: &str) -> Self {
        Self {
            script: script.to_owned(),
            as_job: true,
            env: vec![
                ("BROKER_ID_TOKEN", token.to_owned()),
                ("TOKEN_BROKER_ID_TOKEN", token.to_owned()),
                ("CI_JOB_ID", "1".to_owned()),
                ("CI_PIPELINE_ID", "1".to_owned()),
                ("CI", "true".to_owned()),
            ],
            broker: broker.to_owned(),
            trailing_slash: false,
            throttle: 0,
            front: FrontMode::Forward,
            without_curl: false,
        }
    }

    fn with_trailing_slash(mut self) -> Self {
        self.trailing_slash = true;
        self
    }

    /// Runs under `shell` in a fresh directory with the stubs first on `PATH` (blocking).
    fn under(&self, shell: Shell) -> Outcome {
        let front = Front::start(&self.broker, self.throttle, self.front);
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        fs::create_dir(&tmp).unwrap();
        let path = self.tools(shell, &dir.path().join("bin"));
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
            .env("PATH", path)
            .env("HOME", dir.path())
            .env("TMPDIR", &tmp)
            .env("STUB_LOG", &log)
            .env("TOKEN_BROKER_URL", url)
            .env("CI_PROJECT_DIR", dir.path())
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(dir.path());
        let (code, stdout, stderr) = run_with_deadline(command, dir.path());
        Outcome {
            shell,
            code,
            stdout,
            stderr,
            calls: calls(&log),
            leftovers: file_names(&tmp),
            project_files: file_names(&dir.path().join(".token-broker")),
            requests: front.requests(),
            dir,
            front,
        }
    }

    /// Fills `bin` with the stubs and `shell` as `sh` (the component runs its helper with `sh`,
    /// and so does the AWS CLI its `credential_process`); the job's `PATH`.
    fn tools(&self, shell: Shell, bin: &Path) -> String {
        fs::create_dir(bin).unwrap();
        for name in STUBBED {
            write_executable(&bin.join(name), STUB);
        }
        symlink(shell.program(), bin.join("sh")).unwrap();
        if !self.without_curl {
            return format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display());
        }
        for tool in TOOLS_BUT_CURL {
            symlink(installed(tool), bin.join(tool)).unwrap();
        }
        bin.display().to_string()
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

/// The system's `tool`.
fn installed(tool: &str) -> PathBuf {
    ["/usr/local/bin", "/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(tool))
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("{tool} is not installed"))
}

/// The calls the stubs recorded in `log`.
fn calls(log: &Path) -> Vec<Call> {
    fs::read_to_string(log)
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
        .collect()
}

/// The names of the files in `dir` (none when it does not exist), sorted.
fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
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

/// What the front end does with the requests it does not throttle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FrontMode {
    /// Passes them to the broker, and its answers back.
    Forward,
    /// Answers each itself with an empty 200 (a proxy or CDN gone wrong): nothing reaches the
    /// broker (this one also answers the requests it would throttle).
    EmptyOk,
    /// Passes each to the broker, then only its answer's head and the first half of its body
    /// back before closing the connection, as a connection lost mid-answer does: curl exits 18.
    CutShort,
}

/// One of the broker's answers the front end cut short, whole.
#[derive(Clone, Debug)]
struct WholeAnswer {
    head: String,
    body: String,
}

/// A front end between a job and the broker, as the Function URL is: counts the requests,
/// answers the first `throttle` itself with a 503 and `Retry-After: 1`, and does with the others
/// what its [`FrontMode`] says (which a test may change between two commands of a job).
#[derive(Debug)]
struct Front {
    url: String,
    requests: Arc<AtomicUsize>,
    mode: Arc<Mutex<FrontMode>>,
    cut: Arc<Mutex<Vec<WholeAnswer>>>,
}

/// What starts every request the jobs send.
const REQUEST_START: &[u8] = b"POST /v1/";

impl Front {
    fn start(broker: &str, throttle: usize, mode: FrontMode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let front = Self {
            url: format!("http://{}", listener.local_addr().unwrap()),
            requests: Arc::new(AtomicUsize::new(0)),
            mode: Arc::new(Mutex::new(mode)),
            cut: Arc::new(Mutex::new(Vec::new())),
        };
        let target = broker.trim_start_matches("http://").to_owned();
        let (counted, modes, cut) = (
            front.requests.clone(),
            front.mode.clone(),
            front.cut.clone(),
        );
        let throttled = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let (counted, target, cut) = (counted.clone(), target.clone(), cut.clone());
                let throttle_this = throttled.fetch_add(1, Ordering::SeqCst) < throttle;
                let mode = *modes.lock().unwrap();
                std::thread::spawn(move || match mode {
                    FrontMode::EmptyOk => answer(client, &counted, "200 OK", ""),
                    _ if throttle_this => {
                        answer(client, &counted, "503 Service Unavailable", THROTTLED)
                    }
                    FrontMode::Forward => forward(client, &target, &counted),
                    FrontMode::CutShort => cut_short(client, &target, &counted, &cut),
                });
            }
        });
        front
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn set_mode(&self, mode: FrontMode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// The answers it cut short so far, whole.
    fn cut_answers(&self) -> Vec<WholeAnswer> {
        self.cut.lock().unwrap().clone()
    }
}

/// The body of a throttling 503 from the front end.
const THROTTLED: &str = r#"{"message":"Rate exceeded"}"#;

/// The value of header `name` (lowercase) in `head` (lowercased).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// Reads one HTTP message from `stream`: its head and its body (as long as its Content-Length,
/// or `None` when the head has none); `None` when the connection ends first. Answers a client's
/// `Expect: 100-continue` as a server does.
fn read_message(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut message = Vec::new();
    let mut buf = [0u8; 8192];
    let mut read_more = |stream: &mut TcpStream, message: &mut Vec<u8>| match stream.read(&mut buf)
    {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            message.extend_from_slice(&buf[..n]);
            Some(())
        }
    };
    let head_end = loop {
        if let Some(end) = message.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        read_more(stream, &mut message)?;
    };
    let head = String::from_utf8_lossy(&message[..head_end]).into_owned();
    let lowercase = head.to_ascii_lowercase();
    let length: usize = header(&lowercase, "content-length").map_or(0, |n| n.parse().unwrap());
    if header(&lowercase, "expect") == Some("100-continue") && message.len() < head_end + length {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").ok()?;
    }
    while message.len() < head_end + length {
        read_more(stream, &mut message)?;
    }
    Some((head, message[head_end..].to_vec()))
}

/// Reads one request and answers it with `status` and `body` (and `Retry-After: 1`), closing
/// the connection.
fn answer(mut client: TcpStream, counted: &AtomicUsize, status: &str, body: &str) {
    if read_message(&mut client).is_none() {
        return;
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

/// Passes one request to the broker and, of its answer, only the head and the first half of the
/// body back, then closes the connection; keeps the whole answer in `cut`.
fn cut_short(
    mut client: TcpStream,
    target: &str,
    counted: &AtomicUsize,
    cut: &Mutex<Vec<WholeAnswer>>,
) {
    let Some((head, body)) = read_message(&mut client) else {
        return;
    };
    counted.fetch_add(1, Ordering::SeqCst);
    // The front end answered the client's Expect itself; the broker gets the body at once.
    let head: String = head
        .split_inclusive("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("expect:"))
        .collect();
    let mut server = TcpStream::connect(target).unwrap();
    server.write_all(head.as_bytes()).unwrap();
    server.write_all(&body).unwrap();
    let (head, body) = read_message(&mut server).expect("the broker's answer");
    let body = String::from_utf8(body).unwrap();
    // Kept before the client learns anything: once the job has ended, its answer is here.
    cut.lock().unwrap().push(WholeAnswer {
        head: head.clone(),
        body: body.clone(),
    });
    let _ = client.write_all(head.as_bytes());
    let _ = client.write_all(&body.as_bytes()[..body.len() / 2]);
    let _ = client.flush();
    let _ = client.shutdown(Shutdown::Both);
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

/// The secret values in one of the broker's answers: `SecretAccessKey` and `SessionToken` (JSON
/// credentials), `access_token` (the token endpoint's), `AWS_SECRET_ACCESS_KEY` and
/// `AWS_SESSION_TOKEN` (`format=env`).
fn secrets_in(body: &str) -> Vec<String> {
    if let Ok(json) = serde_json::from_str::<Value>(body) {
        return ["SecretAccessKey", "SessionToken", "access_token"]
            .iter()
            .filter_map(|key| json[key].as_str())
            .map(str::to_owned)
            .collect();
    }
    body.lines()
        .filter_map(|line| {
            ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]
                .iter()
                .find_map(|name| line.strip_prefix(&format!("export {name}=")))
        })
        .map(|value| value.trim_matches('\'').to_owned())
        .collect()
}

/// Nothing of the secrets of the 200s in `answers` (at least one) is in `output`: not 12
/// characters in a row of one.
fn assert_shows_no_secret(output: &str, answers: &[WholeAnswer], what: &str) {
    assert!(!answers.is_empty(), "{what}: no answer was cut short");
    for answer in answers {
        assert!(
            answer.head.starts_with("HTTP/1.1 200"),
            "{what}: the broker did not answer 200: {answer:?}"
        );
        let secrets = secrets_in(&answer.body);
        assert!(!secrets.is_empty(), "{what}: no secret in {answer:?}");
        for secret in secrets {
            for piece in secret.as_bytes().windows(12) {
                let piece = std::str::from_utf8(piece).unwrap();
                assert!(
                    !output.contains(piece),
                    "{what} shows {piece:?} of an answer cut short:\n{output}"
                );
            }
        }
    }
}

/// The job said that curl got no complete answer, and that curl exited 18 (a partial file), as
/// the front end means it to.
fn assert_says_the_answer_was_cut_short(outcome: &Outcome, what: &str) {
    assert!(
        outcome.stderr.contains("no complete answer")
            && Regex::new(r"curl exit (status )?18\b")
                .unwrap()
                .is_match(&outcome.stderr),
        "{what} says why: {outcome:?}"
    );
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
            && call.secret != RUNNERS_SECRET
            && !call.session_token.is_empty(),
        "{what}: `aws {}` ran without the broker's credentials: {call:?}",
        call.args
    );
}

/// Each credential job asks GitLab for an ID token for the policy's audience, and sends that one:
/// every `…ID_TOKEN` variable its script reads is the one its `id_tokens:` declares.
#[test]
fn every_credential_job_sends_the_id_token_it_asks_gitlab_for() {
    let reads = Regex::new(r"\$\{?([A-Z_]*ID_TOKEN)\b").unwrap();
    for (what, pipeline, name) in credential_pipelines() {
        let job = pipeline.job(name);
        let id_tokens = job
            .get("id_tokens")
            .and_then(Yaml::as_mapping)
            .unwrap_or_else(|| panic!("{what} has no id_tokens: {job:?}"));
        assert_eq!(id_tokens.len(), 1, "{what}: {id_tokens:?}");
        let (variable, token) = id_tokens.iter().next().unwrap();
        assert_eq!(token["aud"], AUDIENCE, "{what}: {token:?}");
        let script = pipeline.script(name);
        let read: Vec<&str> = reads
            .captures_iter(&script)
            .map(|c| c.get(1).unwrap().as_str())
            .collect();
        assert!(!read.is_empty(), "{what} sends no ID token");
        assert!(
            read.iter().all(|name| *name == variable.as_str().unwrap()),
            "{what} reads {read:?}, asks for {variable:?}"
        );
    }
}

/// The credential jobs, allowed, under dash, busybox sh and bash, with and without a trailing `/`
/// on TOKEN_BROKER_URL, and with the runner's own AWS keys in the environment: exit 0, every
/// `aws` step ran with the credentials from STS, one request each, and no file is left behind
/// (the component's helper included).
#[tokio::test]
async fn the_gitlab_jobs_run_aws_with_the_brokers_credentials() {
    let app = spawn_app().await;
    for (job, script) in credential_jobs() {
        for trailing_slash in [false, true] {
            let (token, job_id) = allowed_token(&app);
            let mut run = Run::job(&script, &app.address, &token);
            run.trailing_slash = trailing_slash;
            run.env.extend(runners_own_keys());
            for outcome in run.under_each(&SHELLS).await {
                let what = format!("{job} (trailing slash: {trailing_slash})");
                outcome.assert_succeeded(&what);
                let aws = outcome.aws_calls();
                assert!(!aws.is_empty(), "{what}: no aws step ran: {outcome:?}");
                for call in aws {
                    assert_has_credentials(call, &what);
                }
                assert_eq!(outcome.requests, 1, "{what}: {outcome:?}");
                assert!(outcome.project_files.is_empty(), "{what} left {outcome:?}");
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
/// and the job would otherwise go on with the runner's own credentials.
#[tokio::test]
async fn the_gitlab_jobs_stop_before_aws_when_the_answer_holds_no_credentials() {
    let app = spawn_app().await;
    for (job, script) in credential_jobs() {
        let (token, _) = allowed_token(&app);
        let mut run = Run::job(&script, &app.address, &token);
        run.front = FrontMode::EmptyOk;
        run.env.extend(runners_own_keys());
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

/// When the broker keeps answering 503 (STS throttles it), the jobs retry three times, honouring
/// `Retry-After`, then fail closed with the last answer's `temporarily_unavailable`.
#[tokio::test]
async fn the_gitlab_jobs_give_up_after_three_retries_and_fail_closed() {
    let sts = LocalSts::start_on("127.0.0.1:0").await;
    sts.set_mode(StsMode::Throttling);
    let app = spawn_app_with(sts_at(sts.url())).await;
    let runs: Vec<(&str, Run)> = credential_jobs()
        .into_iter()
        .map(|(job, script)| (job, Run::job(&script, &app.address, &allowed_token(&app).0)))
        .collect();
    // All jobs at once: each spends most of its time waiting out retries.
    let outcomes =
        futures_util::future::join_all(runs.iter().map(|(_, run)| run.under_each(&SHELLS))).await;
    for ((job, _), outcomes) in runs.iter().zip(outcomes) {
        for outcome in outcomes {
            outcome.assert_failed_closed(job, "temporarily_unavailable");
            assert_eq!(outcome.requests, 4, "{job}: --retry 3: {outcome:?}");
        }
    }
}

/// A 200 cut short (the connection lost mid-answer: curl exits 18) ends every credential job,
/// and the component in `profile` mode, before any `aws` step, without a retry, and nothing of
/// the answer's secrets reaches the job log, though half of it reached the job.
#[tokio::test]
async fn the_gitlab_jobs_stop_before_aws_and_show_no_secret_when_a_200_is_cut_short() {
    let app = spawn_app().await;
    let mut jobs = credential_jobs();
    jobs.push(("the component (profile mode)", profile_mode_job()));
    for (job, script) in jobs {
        let (token, _) = allowed_token(&app);
        let mut run = Run::job(&script, &app.address, &token);
        run.front = FrontMode::CutShort;
        for outcome in run.under_each(&SHELLS).await {
            outcome.assert_stopped_before_aws(job);
            assert_says_the_answer_was_cut_short(&outcome, job);
            assert_shows_no_secret(&outcome.output(), &outcome.front.cut_answers(), job);
            assert_eq!(outcome.requests, 1, "{job}: {outcome:?}");
        }
    }
}

/// Without curl in the image, the component says so and ends the job before any `aws` step.
#[test]
fn the_component_says_curl_is_missing_and_stops_before_aws() {
    let script = Pipeline::new(component_example()).script("deploy");
    let mut run = Run::job(&script, "http://127.0.0.1:9", "a-gitlab-id-token");
    run.without_curl = true;
    for shell in SHELLS {
        let outcome = run.under(shell);
        outcome.assert_stopped_before_aws("the component without curl");
        assert!(
            outcome.stderr.contains("curl is not installed"),
            "the component says why: {outcome:?}"
        );
        assert_eq!(outcome.requests, 0, "{outcome:?}");
    }
}

/// The component in `profile` mode, allowed, under dash, busybox sh and bash, with the runner's
/// own AWS keys in the environment: its before_script asks the broker once, then leaves the job
/// only AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE and AWS_PROFILE, a config with no secret in
/// it. Its `credential_process`, run as the AWS CLI runs it, prints the credential JSON; the AWS
/// CLI itself gets the assumed role `deploy-web-prod` from STS with it. When the token is refused
/// later, or an answer is cut short, `credential_process` fails with nothing on stdout, the
/// broker's error (and never a secret) on stderr, where the AWS CLI shows it.
#[tokio::test]
async fn the_components_profile_mode_gives_the_aws_cli_a_profile_that_asks_the_broker() {
    let app = spawn_app().await;
    let (token, _) = allowed_token(&app);
    let refused = refused_token(&app);
    let mut run = Run::job(&profile_mode_job(), &app.address, &token).with_trailing_slash();
    run.env.extend(runners_own_keys());
    // What an EKS (IRSA) or ECS runner has, which the AWS tools would try before the profile:
    // gone, as the exact set of exported AWS variables below shows.
    run.env.extend([
        (
            "AWS_ROLE_ARN",
            "arn:aws:iam::123456789012:role/runner".to_owned(),
        ),
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "/var/run/secrets/token".to_owned(),
        ),
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://169.254.170.2/creds".to_owned(),
        ),
    ]);
    for outcome in run.under_each(&SHELLS).await {
        let what = format!("profile mode under {:?}", outcome.shell);
        outcome.assert_succeeded(&what);
        assert_eq!(outcome.requests, 1, "{what}: one start-up check");
        assert_eq!(
            outcome.project_files,
            ["aws-config-1", "aws-credentials-1", "credentials-1.sh"],
            "{what}: {outcome:?}"
        );
        let config = assert_exports_only_the_profile(&outcome, &token, &what);

        let ran = outcome.credential_process(&config, &token).await;
        assert_prints_credentials(&ran, &what);
        let ran = outcome
            .aws_cli(&outcome.exported_aws_variables(), &token)
            .await;
        assert_eq!(ran.code, Some(0), "{what}: the AWS CLI: {ran:?}");
        let identity: Value = serde_json::from_str(&ran.stdout).unwrap();
        assert!(
            identity["Arn"]
                .as_str()
                .is_some_and(|arn| arn.contains(":assumed-role/deploy-web-prod/")),
            "{what}: {identity}"
        );

        let ran = outcome.credential_process(&config, &refused).await;
        assert_prints_only_an_error(&ran, &what);
        assert!(ran.stderr.contains(r#""error":"access_denied""#), "{ran:?}");
        assert_eq!(ran.stderr.matches(r#""error":"#).count(), 1, "{ran:?}");
        let ran = outcome
            .aws_cli(&outcome.exported_aws_variables(), &refused)
            .await;
        assert_prints_only_an_error(&ran, &what);
        assert!(
            ran.stderr.contains("access_denied"),
            "{what}: the AWS CLI shows the broker's reason: {ran:?}"
        );

        outcome.front.set_mode(FrontMode::CutShort);
        let ran = outcome.credential_process(&config, &token).await;
        assert_prints_only_an_error(&ran, &what);
        let output = format!("{}{}", ran.stdout, ran.stderr);
        assert_shows_no_secret(&output, &outcome.front.cut_answers(), &what);
        assert_eq!(outcome.front.requests(), 6, "{what}: no retries");
        assert!(
            file_names(&outcome.dir.path().join("tmp")).is_empty(),
            "{what}: credential_process leaves no file"
        );
    }
}

/// The job exported AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE (empty) and AWS_PROFILE, and
/// none of the runner's keys; the config, returned, holds the profile and not the ID token.
fn assert_exports_only_the_profile(outcome: &Outcome, token: &str, what: &str) -> String {
    let files = outcome.dir.path().join(".token-broker");
    let expected: BTreeMap<String, String> = [
        (
            "AWS_CONFIG_FILE",
            files.join("aws-config-1").display().to_string(),
        ),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            files.join("aws-credentials-1").display().to_string(),
        ),
        ("AWS_PROFILE", "token-broker".to_owned()),
        // No instance metadata behind the profile, and JS v2 reads the config file.
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ("AWS_SDK_LOAD_CONFIG", "1".to_owned()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect();
    assert_eq!(outcome.exported_aws_variables(), expected, "{what}");
    assert_eq!(
        fs::read_to_string(files.join("aws-credentials-1")).unwrap(),
        "",
        "{what}"
    );
    let config = fs::read_to_string(files.join("aws-config-1")).unwrap();
    assert!(
        config.starts_with("[profile token-broker]\ncredential_process = "),
        "{what}: {config}"
    );
    assert!(!config.contains(token), "{what}: {config}");
    config
}

/// Exit 0, the credential JSON the AWS tools read on stdout, nothing on stderr.
fn assert_prints_credentials(ran: &Ran, what: &str) {
    assert_eq!(ran.code, Some(0), "{what}: credential_process: {ran:?}");
    assert!(ran.stderr.is_empty(), "{what}: {ran:?}");
    let credentials: Value = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {ran:?}"));
    assert_credential_process_json(&credentials, what);
}

/// Non-zero, nothing on stdout (where the AWS tools look for credentials).
fn assert_prints_only_an_error(ran: &Ran, what: &str) {
    assert!(matches!(ran.code, Some(c) if c != 0), "{what}: {ran:?}");
    assert!(ran.stdout.is_empty(), "{what}: {ran:?}");
}

/// Refused, the component in `profile` mode fails the job in its before_script, before any `aws`
/// step, with the broker's error, after one request, and writes no profile.
#[tokio::test]
async fn the_components_profile_mode_fails_in_before_script_when_refused() {
    let app = spawn_app().await;
    let run = Run::job(&profile_mode_job(), &app.address, &refused_token(&app));
    for outcome in run.under_each(&SHELLS).await {
        outcome.assert_failed_closed("profile mode", "access_denied");
        assert_eq!(outcome.requests, 1, "a 403 is not retried: {outcome:?}");
        assert!(
            !outcome
                .project_files
                .iter()
                .any(|f| f.starts_with("aws-config")),
            "no profile is written: {outcome:?}"
        );
        assert!(!outcome.stdout.contains("AWS_PROFILE="), "{outcome:?}");
    }
}

/// README.md's `/v1/token` example (a job of its own, with `-e`): allowed, `aws sts
/// assume-role-with-web-identity` gets the broker's JWT for `sts.amazonaws.com`; refused, the
/// script exits non-zero before `aws`, showing the broker's error, after one request; cut short,
/// it exits non-zero before `aws` without a piece of the token.
#[tokio::test]
async fn the_token_exchange_example_stops_before_aws_when_refused_or_cut_short() {
    // The KMS stand-in, not moto: moto hashes the digest the broker sends again, so its
    // signatures do not verify and the broker would refuse to issue them.
    let (kms, key) = kms_stand_in(KeySpec::Rsa2048).await;
    let app = spawn_app_with(signing_with(&kms, &key, &[])).await;
    let script = readme_block("sh", &["/v1/token"]);
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

    let (token, _) = allowed_token(&app);
    let mut run = Run::job(&script, &app.address, &token);
    run.front = FrontMode::CutShort;
    for outcome in run.under_each(&SHELLS).await {
        let what = "the /v1/token example (cut short)";
        outcome.assert_stopped_before_aws(what);
        assert_says_the_answer_was_cut_short(&outcome, what);
        assert_shows_no_secret(&outcome.output(), &outcome.front.cut_answers(), what);
        assert_eq!(outcome.requests, 1, "{outcome:?}");
    }
}

/// examples/gitlab-ci/broker.yml's deploy job (bash, as GitLab runs it on `rust:*-bookworm`):
/// when STS refuses the web identity, it stops before `sam` instead of exporting empty
/// credentials; when STS answers, `sam` runs with them.
#[tokio::test]
async fn the_broker_deploy_job_stops_before_sam_when_sts_refuses() {
    let script = Pipeline::parse(&read("examples/gitlab-ci/broker.yml")).script("deploy");
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

/// Both example pipelines and both components are valid GitLab CI by GitLab's schema (vendored in
/// check-jsonschema, so offline), `!reference` tags read as GitLab reads them. check-jsonschema
/// reads one document per file, so a component's two are checked apart: its `spec:` (which the
/// schema describes) as written, its configuration as GitLab renders it for the component's
/// example inputs (policy-review's `paths: $[[ inputs.changes ]]` only becomes a list then).
#[test]
fn the_gitlab_ci_examples_and_components_match_gitlabs_schema() {
    let venv = std::env::var("TOOLS_VENV")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv").to_owned());
    let checker = PathBuf::from(venv).join("bin/check-jsonschema");
    assert!(
        checker.exists(),
        "{} missing: `scripts/test` installs it (scripts/requirements-tools.txt)",
        checker.display()
    );
    let rendered = tempfile::tempdir().unwrap();
    let repository = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![
        repository.join("examples/gitlab-ci/consumer.yml"),
        repository.join("examples/gitlab-ci/broker.yml"),
    ];
    let example_inputs = component_example()["include"][0]["inputs"]
        .as_mapping()
        .unwrap()
        .clone();
    for (name, inputs) in [
        ("aws-credentials", example_inputs),
        ("policy-review", Mapping::new()),
    ] {
        let path = format!("templates/{name}.yml");
        let (spec, _) = component_documents(&path);
        let spec_file = rendered.path().join(format!("templates-{name}.spec.yml"));
        fs::write(&spec_file, serde_yaml::to_string(&spec).unwrap()).unwrap();
        let config = serde_yaml::to_string(&render_component(&path, &inputs)).unwrap();
        let config_file = rendered
            .path()
            .join(format!("templates-{name}.rendered.yml"));
        fs::write(&config_file, config).unwrap();
        files.extend([spec_file, config_file]);
    }
    let output = Command::new(checker)
        .args(["--builtin-schema", "vendor.gitlab-ci"])
        .args(["--data-transform", "gitlab-ci"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The ID token goes only to an https URL (http only on loopback) of plain URL characters: a
/// URL a pipeline variable could set to a stranger's host, or one that would carry shell syntax
/// into the profile's credential_process line, is refused before any request.
#[tokio::test]
async fn the_component_sends_the_token_only_to_an_https_url_of_plain_characters() {
    let app = spawn_app().await;
    let (token, _) = allowed_token(&app);
    for (url, said) in [
        ("http://broker.example.com", "must be https://"),
        ("ftp://broker.example.com", "must be https://"),
        (
            "https://broker.example.com/$(id)",
            "characters a URL does not need",
        ),
        (
            "https://broker.example.com/`id`",
            "characters a URL does not need",
        ),
        (
            "https://broker.example.com/x' y",
            "characters a URL does not need",
        ),
    ] {
        for mode in ["env", "profile"] {
            let job = component_job(&[("mode", mode)], &["aws sts get-caller-identity"]);
            let mut run = Run::job(&job, &app.address, &token);
            run.env.push(("TOKEN_BROKER_URL", url.to_owned()));
            for outcome in run.under_each(&SHELLS).await {
                let what = format!("{url} in {mode} mode under {:?}", outcome.shell);
                assert_ne!(outcome.code, Some(0), "{what}: {outcome:?}");
                assert!(outcome.aws_calls().is_empty(), "{what}: {outcome:?}");
                assert!(outcome.stderr.contains(said), "{what}: {outcome:?}");
                assert_eq!(outcome.requests, 0, "{what}");
            }
        }
    }
}
