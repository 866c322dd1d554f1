//! The command line: the clap tree, and one module per subcommand holding its arguments and its
//! `exec` side by side. `main` only parses and dispatches; the broker itself is put together by
//! `startup`, which the tests use too.

pub mod lambda;
pub mod serve;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::TypedValueParser;
use clap::{Parser, Subcommand};

use crate::config::Settings;

/// Turns GitLab CI ID tokens into short-lived, policy-scoped AWS credentials
#[derive(Parser)]
#[command(version)]
pub struct Cli {
    /// `None` when started without arguments, as the Lambda runtime starts it.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands; each variant's doc comment is its `--help` summary.
#[derive(Subcommand)]
pub enum Command {
    /// Serve the broker's HTTP API on a local port (the same router as in Lambda).
    Serve(serve::Args),
    /// Run as an AWS Lambda function (the default when AWS_LAMBDA_RUNTIME_API is set).
    Lambda(lambda::Args),
    /// Check, test and explain a policy file (no network, no AWS).
    Policy(token_broker_policy::cli::Args),
}

/// `--policy`, shared by the commands that run the broker.
#[derive(clap::Args)]
pub struct PolicyFile {
    /// Policy file [default: the policy bundled at build time]
    // Parsed as an OsString, which may be empty, rather than as a PathBuf, which clap refuses
    // empty: an empty TOKEN_BROKER_POLICY means unset, as an empty variable does in `config`.
    #[arg(
        long,
        env = "TOKEN_BROKER_POLICY",
        value_parser = clap::builder::OsStringValueParser::new().map(PathBuf::from)
    )]
    policy: Option<PathBuf>,
}

impl PolicyFile {
    /// Settings from the environment, with this policy file.
    fn settings(self) -> Result<Settings, String> {
        Ok(Settings {
            policy: self.policy.filter(|path| !path.as_os_str().is_empty()),
            ..Settings::from_env()?
        })
    }
}

/// Runs `command` to completion on a multi-threaded runtime. Built here rather than by
/// `#[tokio::main]` so that `policy` subcommands, which need no runtime, never start one.
fn block_on(command: impl Future<Output = ExitCode>) -> ExitCode {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(command)
}

/// Runs `command` to completion on the calling thread alone. For the Lambda runtime loop, which
/// handles one invocation at a time on a fraction of a core: without worker threads to wake and
/// hand work between, a warm exchange costs about a seventh less CPU (BENCHMARKS.md).
fn block_on_this_thread(command: impl Future<Output = ExitCode>) -> ExitCode {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(command)
}

/// Reports on stderr why the broker could not start; exit code 2, as for usage errors.
pub fn fail(message: &str) -> ExitCode {
    eprintln!("token-broker: {message}");
    ExitCode::from(2)
}
