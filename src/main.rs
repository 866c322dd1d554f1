//! Parses the command line and dispatches to the command; each command wires its own run
//! (`cli::serve`, `cli::lambda`, `cli::policy`).

use std::process::ExitCode;

use clap::Parser;
use token_broker::cli::{self, Cli, Command};

fn main() -> ExitCode {
    match Cli::parse().command.or_else(cli::lambda::implied) {
        Some(Command::Serve(args)) => cli::serve::exec(args),
        Some(Command::Lambda(args)) => cli::lambda::exec(args),
        Some(Command::Policy(args)) => token_broker_policy::cli::exec(args),
        None => cli::fail("no command given: try `token-broker serve --help`"),
    }
}
