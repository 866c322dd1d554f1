//! `token-broker policy …` and `token-broker-policy …` (one code, two binaries): check, test,
//! explain, diff and access, the policy tooling a deploy pipeline and a merge request review run. Needs no network and no AWS; prints for people by default,
//! JSON for machines with `--format json`, and GitLab's report formats where GitLab reads them.

mod access;
mod diff;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;

use crate::cases;
use crate::explain::explain;
use crate::lint::{Finding, Severity, lint, render_human};
use crate::report::{code_quality, junit, junit_error, repository_path};
use crate::{Claims, Policy, PolicyError, load};

/// Arguments of `policy`: which of its subcommands to run.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Compile and lint; exit 1 on errors (and on warnings with --deny-warnings).
    Check {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Run decision cases (default: policy.tests.toml beside the policy); exit 1 on a failure.
    Test {
        file: PathBuf,
        cases: Option<PathBuf>,
        /// Also write the results as JUnit XML (GitLab's test report) to this file.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
    },
    /// Show which rules match a decoded token's claims and why the others do not.
    Explain {
        file: PathBuf,
        /// JSON file with the token's claims (including `iss`).
        #[arg(long)]
        claims: PathBuf,
        /// Only this role or token (by its name).
        #[arg(long)]
        role: Option<String>,
    },
    /// The access a change adds or removes, from OLD to NEW; widening changes first.
    Diff(diff::Args),
    /// Who can get what: every rule as a table, or what one project can get.
    Access(access::Args),
}

/// Runs the chosen `policy` subcommand; exit 1 when the policy or a case fails.
pub fn exec(args: Args) -> ExitCode {
    match args.command {
        Command::Check {
            file,
            format,
            deny_warnings,
        } => check(&file, format, deny_warnings),
        Command::Test { file, cases, junit } => test(&file, cases, junit.as_deref()),
        Command::Explain { file, claims, role } => explain_claims(&file, &claims, role.as_deref()),
        Command::Diff(args) => diff::exec(args),
        Command::Access(args) => access::exec(args),
    }
}

/// Output format of `policy check`: `human` (the default) for people, `json` for pipelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `error[TB101 name]: …` lines with `file:line`, as `build.rs` prints them.
    Human,
    /// One JSON object with the findings and the error and warning counts.
    Json,
    /// GitLab Code Quality (CodeClimate) JSON, for `artifacts:reports:codequality`.
    Codequality,
}

/// Output format of `policy diff` and `policy access`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Report {
    /// Lines for a terminal or a job log.
    Text,
    /// Tables for a merge request note or artifact.
    Markdown,
    /// One JSON object, for machines.
    Json,
}

/// `result`'s value, or exit 1 after saying on stderr why there is none: how every `policy`
/// subcommand fails on a file it cannot use.
fn or_exit<T>(result: Result<T, String>) -> Result<T, ExitCode> {
    result.map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::FAILURE
    })
}

/// `file`'s policy, or exit 1 after saying why it does not load.
fn load_or_exit(file: &Path) -> Result<Policy, ExitCode> {
    or_exit(load(file).map_err(|e| e.to_string()))
}

/// The decision cases `policy test` and `policy diff` read unless told another file.
fn cases_beside(policy: &Path) -> PathBuf {
    policy.with_file_name("policy.tests.toml")
}

/// Compiles and lints `file`. Exit 1 on a compile error or an error finding (or any warning
/// with `deny_warnings`), else 0.
fn check(file: &Path, format: Format, deny_warnings: bool) -> ExitCode {
    let (findings, compile_error): (_, Option<PolicyError>) = match load(file) {
        Ok(policy) => (lint(&policy), None),
        Err(error) => (Vec::new(), Some(error)),
    };
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    let message = compile_error.as_ref().map(PolicyError::to_string);
    match format {
        Format::Json => println!(
            "{}",
            check_json(file, &findings, message.as_deref(), errors, warnings)
        ),
        Format::Human => print!("{}", check_human(file, &findings, message.as_deref())),
        Format::Codequality => {
            let compile_error = compile_error.as_ref().map(|e| (e.line, e.message.as_str()));
            // Paths as GitLab shows them in the merge request: from the repository's root.
            let path = repository_path(file);
            println!(
                "{}",
                code_quality(Path::new(&path), &findings, compile_error)
            );
        }
    }
    let failed = compile_error.is_some() || errors > 0 || (deny_warnings && warnings > 0);
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn check_json(
    file: &Path,
    findings: &[Finding],
    compile_error: Option<&str>,
    errors: usize,
    warnings: usize,
) -> String {
    let findings: Vec<_> = findings
        .iter()
        .map(|f| {
            json!({"id": f.id, "name": f.name, "severity": f.severity.to_string(), "kind": f.kind.to_string(), "grant": f.grant,
                   "rule": f.rule, "line": f.line, "message": f.message})
        })
        .collect();
    json!({"file": file.display().to_string(), "compile_error": compile_error, "findings": findings,
           "errors": errors + usize::from(compile_error.is_some()), "warnings": warnings})
    .to_string()
}

/// Shares its rendering with `build.rs`, so a refused build reads exactly like `check`.
fn check_human(file: &Path, findings: &[Finding], compile_error: Option<&str>) -> String {
    match compile_error {
        Some(error) => format!("error[compile]: {error}\n"),
        None => render_human(file, findings),
    }
}

/// Runs the decision cases in `cases_file` (default: `policy.tests.toml` beside the policy), and
/// writes them as JUnit XML to `junit_file` when asked.
fn test(file: &Path, cases_file: Option<PathBuf>, junit_file: Option<&Path>) -> ExitCode {
    let cases_file = cases_file.unwrap_or_else(|| cases_beside(file));
    let loaded = load(file)
        .map_err(|e| {
            (
                "the policy compiles",
                "the policy does not compile",
                e.to_string(),
            )
        })
        .and_then(|p| {
            cases::run(&p, &cases_file).map_err(|e| {
                (
                    "the decision cases load",
                    "the decision cases do not load",
                    e,
                )
            })
        });
    let outcome = match loaded {
        Ok(outcome) => outcome,
        Err((case, problem, reason)) => {
            eprintln!("error: {reason}");
            // The report GitLab shows still says why: a policy that does not compile is when
            // the merge request most needs one.
            if let Some(path) = junit_file {
                let report = junit_error(&cases_file, case, &format!("{problem}: {reason}"));
                if let Err(error) = std::fs::write(path, report) {
                    eprintln!("error: {}: {error}", path.display());
                }
            }
            return ExitCode::FAILURE;
        }
    };
    for (name, failure) in outcome.failures() {
        println!("FAIL {name:?}: {}", failure.problem);
        for explanation in &failure.trace {
            print!("{}", indent(&explanation.to_string()));
        }
    }
    println!(
        "policy cases: {} passed, {} failed",
        outcome.passed(),
        outcome.cases.len() - outcome.passed()
    );
    if let Some(path) = junit_file
        && let Err(error) = std::fs::write(path, junit(&cases_file, &outcome))
    {
        eprintln!("error: {}: {error}", path.display());
        return ExitCode::FAILURE;
    }
    if outcome.failures().next().is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Shows, for the claims in `claims_file`, how every role (or `role`) decides and why.
fn explain_claims(file: &Path, claims_file: &Path, role: Option<&str>) -> ExitCode {
    let loaded = load_or_exit(file).and_then(|p| Ok((p, or_exit(read_claims(claims_file))?)));
    let (policy, claims): (Policy, Claims) = match loaded {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let explanations = explain(&policy, &claims, role);
    if explanations.is_empty() {
        eprintln!(
            "error: no role {:?} in {}",
            role.unwrap_or_default(),
            file.display()
        );
        return ExitCode::FAILURE;
    }
    for explanation in explanations {
        print!("{explanation}");
    }
    ExitCode::SUCCESS
}

/// A decoded ID token's claims; `iss` says which issuer they come from.
fn read_claims(path: &Path) -> Result<Claims, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let object = value
        .as_object()
        .ok_or_else(|| format!("{}: not a JSON object", path.display()))?;
    let issuer = object
        .get("iss")
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("{}: no string `iss`", path.display()))?;
    Ok(Claims::from_json(issuer, object))
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("    {line}\n")).collect()
}
