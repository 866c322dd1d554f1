//! `token-broker serve`: the broker's router on a local HTTP/1.1 port, for development, the demo
//! and the job-script tests.

use std::net::SocketAddr;
use std::process::ExitCode;

use crate::cli::{PolicyFile, block_on, fail};
use crate::config::{self, Settings};
use crate::{serve, startup, telemetry};

/// Arguments of `serve`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    policy: PolicyFile,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

/// Serves until Ctrl-C. Exit 2 when the settings, the policy or the address are unusable.
pub fn exec(args: Args) -> ExitCode {
    match args.policy.settings() {
        Ok(settings) => block_on(run(settings, args.listen)),
        Err(error) => fail(&error),
    }
}

async fn run(settings: Settings, listen: SocketAddr) -> ExitCode {
    telemetry::init(false, &config::log_filter());
    let state = match startup::build_from_env(&settings).await {
        Ok(state) => state,
        Err(error) => return fail(&error),
    };
    let listener = match serve::bind(listen) {
        Ok(listener) => listener,
        Err(error) => return fail(&format!("cannot listen on {listen}: {error}")),
    };
    let address = listener.local_addr().map_or(listen, |a| a);
    let policy = settings
        .policy
        .as_ref()
        .map_or("bundled".into(), |p| p.display().to_string());
    tracing::info!(%address, %policy, "token-broker listening");
    serve::run(listener, state, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    ExitCode::SUCCESS
}
