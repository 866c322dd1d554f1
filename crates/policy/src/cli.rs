//! `token-broker policy …` and `token-broker-policy …` (one code, two binaries): check, test,
//! explain, diff and access, the policy tooling a deploy pipeline and a merge request review run. Needs no network and no AWS; prints for people by default,
//! JSON for machines with `--format json`, and GitLab's report formats where GitLab reads them.
//! A policy tree is one policy to every command: `check` lints every file of it and names the
//! file of each finding, `test` runs the cases kept beside each file, `explain` says in which
//! file each rule is and how its guardrail fared.

mod access;
mod diff;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;

use crate::cases::{self, Outcome};
use crate::explain::explain_in;
use crate::lint::{Finding, Severity, lint, render_human};
use crate::report::{Paths, Suite, code_quality, junit_suites, repository_path};
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
    /// Run decision cases (default: policy.tests.toml beside the policy), and those beside each
    /// delegated file (NAME.tests.toml beside NAME.toml); exit 1 on a failure.
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

/// Compiles and lints `file` and every file it delegates to. Exit 1 on a compile error or an
/// error finding (or any warning with `deny_warnings`), else 0.
fn check(file: &Path, format: Format, deny_warnings: bool) -> ExitCode {
    let (policy, compile_error): (Option<Policy>, Option<PolicyError>) = match load(file) {
        Ok(policy) => (Some(policy), None),
        Err(error) => (None, Some(error)),
    };
    let findings = policy.as_ref().map(lint).unwrap_or_default();
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
            // Paths as GitLab shows them in the merge request: from the repository's root; a
            // compile error in a delegated file is in that file.
            let delegated = policy.iter().flat_map(|p| &p.delegates);
            let paths = Paths::in_repository(file, delegated.map(|d| d.file.as_str()));
            let error_path = compile_error.as_ref().map(|e| repository_path(&e.file));
            let compile_error = compile_error
                .as_ref()
                .zip(error_path.as_deref())
                .map(|(e, path)| (path, e.line, e.message.as_str()));
            println!("{}", code_quality(&paths, &findings, compile_error));
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
                   "file": f.path_in(file).display().to_string(), "rule": f.rule, "line": f.line, "message": f.message})
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

/// One cases file of a `policy test` run, and how it went.
struct CasesRun {
    file: PathBuf,
    result: Result<Outcome, NotRun>,
}

/// Why a cases file could not run: what failed (the JUnit case's name), the loader's `reason`
/// (what stderr says), and `problem`, the two together (the JUnit failure).
struct NotRun {
    what: &'static str,
    reason: String,
    problem: String,
}

impl NotRun {
    fn new(what: &'static str, problem: &str, reason: String) -> Self {
        Self {
            what,
            problem: format!("{problem}: {reason}"),
            reason,
        }
    }
}

impl CasesRun {
    fn suite(&self) -> Suite<'_> {
        match &self.result {
            Ok(outcome) => Suite::Ran {
                cases_file: &self.file,
                outcome,
            },
            Err(not_run) => Suite::Failed {
                cases_file: &self.file,
                what: not_run.what,
                reason: &not_run.problem,
            },
        }
    }

    fn failed(&self) -> bool {
        self.result
            .as_ref()
            .map_or(true, |outcome| outcome.failures().next().is_some())
    }
}

/// Runs the decision cases of `file`'s policy: those in `cases_file` (default:
/// `policy.tests.toml` beside the policy), then for each delegated file those beside it, when
/// it has any ([`cases::for_delegate`]); writes them as JUnit XML to `junit_file` when asked,
/// one suite per cases file. Exit 1 when a case fails or a cases file cannot run.
fn test(file: &Path, cases_file: Option<PathBuf>, junit_file: Option<&Path>) -> ExitCode {
    let root_cases = cases_file.unwrap_or_else(|| cases_beside(file));
    let runs = match load(file) {
        // The report GitLab shows still says why: a policy that does not compile is when the
        // merge request most needs one.
        Err(error) => vec![CasesRun {
            file: root_cases,
            result: Err(NotRun::new(
                "the policy compiles",
                "the policy does not compile",
                error.to_string(),
            )),
        }],
        Ok(policy) => {
            let delegated = policy
                .delegates
                .iter()
                .map(|d| cases::for_delegate(file, d))
                .filter(|path| path.exists());
            std::iter::once(root_cases)
                .chain(delegated)
                .map(|path| CasesRun {
                    result: cases::run_in(&policy, file, &path).map_err(|e| {
                        NotRun::new(
                            "the decision cases load",
                            "the decision cases do not load",
                            e,
                        )
                    }),
                    file: path,
                })
                .collect()
        }
    };
    print_runs(&runs);
    let mut failed = runs.iter().any(CasesRun::failed);
    if let Some(path) = junit_file {
        let suites: Vec<Suite<'_>> = runs.iter().map(CasesRun::suite).collect();
        if let Err(error) = std::fs::write(path, junit_suites(&suites)) {
            eprintln!("error: {}: {error}", path.display());
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// What `policy test` prints: each failing case with its trace, then the counts; for several
/// cases files, each file's counts before its failures. Why a file could not run goes to stderr.
fn print_runs(runs: &[CasesRun]) {
    let several = runs.len() > 1;
    let (mut passed, mut failed, mut unrun) = (0, 0, 0);
    for run in runs {
        let outcome = match &run.result {
            Ok(outcome) => outcome,
            Err(not_run) => {
                eprintln!("error: {}", not_run.reason);
                if several {
                    println!("{}: not run", run.file.display());
                }
                unrun += 1;
                continue;
            }
        };
        let file_failed = outcome.cases.len() - outcome.passed();
        if several {
            println!(
                "{}: {} passed, {file_failed} failed",
                run.file.display(),
                outcome.passed()
            );
        }
        for (name, failure) in outcome.failures() {
            println!("FAIL {name:?}: {}", failure.problem);
            for explanation in &failure.trace {
                print!("{}", indent(&explanation.to_string()));
            }
        }
        (passed, failed) = (passed + outcome.passed(), failed + file_failed);
    }
    match (several, unrun) {
        // One cases file that could not run: its error says it all, as it always has.
        (false, 1) => {}
        (_, 0) => println!("policy cases: {passed} passed, {failed} failed"),
        (_, n) => {
            println!("policy cases: {passed} passed, {failed} failed, {n} cases file(s) not run")
        }
    }
}

/// Shows, for the claims in `claims_file`, how every role (or `role`) decides and why.
fn explain_claims(file: &Path, claims_file: &Path, role: Option<&str>) -> ExitCode {
    let loaded = load_or_exit(file).and_then(|p| Ok((p, or_exit(read_claims(claims_file))?)));
    let (policy, claims): (Policy, Claims) = match loaded {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let explanations = explain_in(&policy, file, &claims, role);
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
