//! `token-broker-policy`: the policy tooling alone (`check`, `test`, `explain`, `diff`,
//! `access`), the same code `token-broker policy` runs, in a binary that does not link the AWS
//! SDK. A policy review job builds this in seconds, and builds it whatever state the policy is
//! in: unlike `token-broker`, it has no build script that refuses a policy with errors, so the
//! review still writes its reports for exactly those policies.

use std::process::ExitCode;

use clap::Parser;

/// Check, test, explain, diff and list a token-broker policy file (no network, no AWS)
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    args: token_broker_policy::cli::Args,
}

fn main() -> ExitCode {
    token_broker_policy::cli::exec(Cli::parse().args)
}
