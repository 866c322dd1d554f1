//! `token-broker lambda`: the broker as an AWS Lambda function behind a Function URL. Also what
//! runs when the Lambda runtime starts the binary without arguments.

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, PolicyFile, block_on_this_thread, fail};
use crate::config::{self, Settings};
use crate::{lambda, startup, telemetry};

/// Arguments of `lambda`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    policy: PolicyFile,
}

/// Runs the Lambda runtime loop until the runtime stops it. Exit 2 when the settings or the
/// policy are unusable, or the runtime fails.
pub fn exec(args: Args) -> ExitCode {
    match args.policy.settings() {
        Ok(settings) => block_on_this_thread(run(settings)),
        Err(error) => fail(&error),
    }
}

/// `lambda` with its arguments from the environment alone, when the Lambda runtime started the
/// binary without any; `None` outside Lambda, where a missing command is a mistake.
pub fn implied() -> Option<Command> {
    config::in_lambda()
        .then(|| Cli::parse_from(["token-broker", "lambda"]).command)
        .flatten()
}

async fn run(settings: Settings) -> ExitCode {
    telemetry::init(true, &config::log_filter());
    let state = match startup::build_from_env(&settings).await {
        Ok(state) => state,
        Err(error) => return fail(&error),
    };
    match lambda::run(state).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&format!("Lambda runtime stopped: {error}")),
    }
}
