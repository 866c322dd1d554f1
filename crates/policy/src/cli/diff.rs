//! `policy diff OLD NEW`: the access a policy change adds or removes, for the merge request that
//! makes it. Exit 0, or 2 with `--fail-on-widening` when the change widens access; 1 when a file
//! does not load.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{Report, cases_beside, load_or_exit, or_exit};
use crate::cases;
use crate::diff::{diff, render_json, render_markdown, render_text};

/// Arguments of `policy diff`.
#[derive(clap::Args)]
pub struct Args {
    /// The policy as it is (in a merge request: the target branch's).
    old: PathBuf,
    /// The policy as it would be.
    new: PathBuf,
    #[arg(long, value_enum, default_value = "text")]
    format: Report,
    /// Decision cases whose jobs are probed too [default: policy.tests.toml beside NEW, if any]
    #[arg(long, value_name = "FILE")]
    cases: Option<PathBuf>,
    /// Exit 2 when the change widens access (an allow added, a longer session, another ARN…).
    #[arg(long)]
    fail_on_widening: bool,
}

/// Prints the delta from `args.old` to `args.new`.
pub fn exec(args: Args) -> ExitCode {
    let loaded = load_or_exit(&args.old).and_then(|old| {
        let new = load_or_exit(&args.new)?;
        let jobs = or_exit(case_jobs(&new, &args.new, args.cases.as_deref()))?;
        Ok((old, new, jobs))
    });
    let (old, new, jobs) = match loaded {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let delta = diff(&old, &new, &jobs);
    match args.format {
        Report::Text => print!("{}", render_text(&delta)),
        Report::Markdown => print!("{}", render_markdown(&delta)),
        Report::Json => println!("{}", render_json(&delta)),
    }
    if args.fail_on_widening && delta.widens() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// The jobs of the decision cases: the named file, else `policy.tests.toml` beside the new
/// policy when there is one, and the cases beside each team file of the new tree. Their outcome
/// does not matter here (`policy test` judges it).
fn case_jobs(
    policy: &crate::Policy,
    new: &Path,
    cases_file: Option<&Path>,
) -> Result<Vec<crate::Claims>, String> {
    let beside = cases_beside(new);
    let mut files: Vec<PathBuf> = match cases_file {
        Some(path) => vec![path.to_owned()],
        None if beside.exists() => vec![beside],
        None => Vec::new(),
    };
    files.extend(
        policy
            .delegates
            .iter()
            .map(|delegate| cases::for_delegate(new, delegate))
            .filter(|path| path.exists()),
    );
    let mut jobs = Vec::new();
    for path in files {
        let outcome = cases::run(policy, &path)?;
        jobs.extend(outcome.cases.into_iter().map(|case| case.claims));
    }
    Ok(jobs)
}
