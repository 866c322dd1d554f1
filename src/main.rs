//! Wiring only: configuration, telemetry, state, then the Lambda runtime or a CLI command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use token_broker::config::Settings;
use token_broker::{AppState, aws, bundled, lambda, policy, serve, telemetry};

#[derive(Parser)]
#[command(
    version,
    about = "Turns GitLab CI ID tokens into short-lived, policy-scoped AWS credentials"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the broker's HTTP API on a local port (the same router as in Lambda).
    Serve {
        /// Policy file [env: TOKEN_BROKER_POLICY; default: the policy bundled at build time]
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Run as an AWS Lambda function (the default when AWS_LAMBDA_RUNTIME_API is set).
    Lambda,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => return fail(&error),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match cli.command {
        Some(Command::Serve { policy, listen }) => {
            if policy.is_some() {
                settings.policy = policy;
            }
            runtime.block_on(run_serve(settings, listen))
        }
        Some(Command::Lambda) => runtime.block_on(run_lambda(settings)),
        None if settings.in_lambda => runtime.block_on(run_lambda(settings)),
        None => fail("no command given: try `token-broker serve --help`"),
    }
}

async fn state(settings: &Settings) -> Result<Arc<AppState>, String> {
    let policy = match &settings.policy {
        Some(path) => policy::load(path),
        None => bundled::policy(),
    }
    .map_err(|e| e.to_string())?;
    let sdk = aws::sdk_config().await;
    Ok(Arc::new(AppState::build(policy, settings, &sdk).await))
}

async fn run_serve(settings: Settings, listen: SocketAddr) -> ExitCode {
    telemetry::init(false);
    let state = match state(&settings).await {
        Ok(state) => state,
        Err(error) => return fail(&error),
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
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

async fn run_lambda(settings: Settings) -> ExitCode {
    telemetry::init(true);
    let state = match state(&settings).await {
        Ok(state) => state,
        Err(error) => return fail(&error),
    };
    match lambda::run(state).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&format!("Lambda runtime stopped: {error}")),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("token-broker: {message}");
    ExitCode::from(2)
}
