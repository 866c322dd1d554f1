//! `policy access FILE`: who can get what, as a table; with `--project`, what one project can get
//! and on which conditions.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{Report, load_or_exit};
use crate::access::{Query, access, access_for, render_json, render_markdown, render_text};

/// Arguments of `policy access`.
#[derive(clap::Args)]
pub struct Args {
    file: PathBuf,
    #[arg(long, value_enum, default_value = "text")]
    format: Report,
    /// Only the rules that can admit this project id.
    #[arg(long, value_name = "ID")]
    project: Option<String>,
    /// With --project: only rules that can admit a job on this ref (branch or tag name).
    #[arg(long = "ref", value_name = "REF", requires = "project")]
    git_ref: Option<String>,
    /// With --project: only rules that can admit a job deploying to this environment.
    #[arg(long, value_name = "NAME", requires = "project")]
    environment: Option<String>,
}

/// Prints the table; exit 1 when the policy does not load.
pub fn exec(args: Args) -> ExitCode {
    let policy = match load_or_exit(&args.file) {
        Ok(policy) => policy,
        Err(code) => return code,
    };
    let rows = match args.project {
        None => access(&policy),
        Some(project_id) => access_for(
            &policy,
            &Query {
                project_id,
                git_ref: args.git_ref,
                environment: args.environment,
            },
        ),
    };
    match args.format {
        Report::Text => print!("{}", render_text(&rows)),
        Report::Markdown => print!("{}", render_markdown(&rows)),
        Report::Json => println!("{}", render_json(&rows)),
    }
    ExitCode::SUCCESS
}
