//! Wiring only: configuration, telemetry, state, then the Lambda runtime or a CLI command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};
use token_broker::config::Settings;
use token_broker::{AppState, aws, bundled, cli, lambda, policy, serve, telemetry};

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
    /// Check, test and explain a policy file (no network, no AWS).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Compile and lint; exit 1 on errors (and on warnings with --deny-warnings).
    Check {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "human")]
        format: cli::Format,
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Run decision cases (default: policy.tests.toml beside the policy); exit 1 on a failure.
    Test {
        file: PathBuf,
        cases: Option<PathBuf>,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Policy { command }) = &cli.command {
        return match command {
            PolicyCommand::Check {
                file,
                format,
                deny_warnings,
            } => cli::check(file, *format, *deny_warnings),
            PolicyCommand::Test { file, cases } => cli::test(file, cases.clone()),
            PolicyCommand::Explain { file, claims, role } => {
                cli::explain_claims(file, claims, role.as_deref())
            }
        };
    }
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
        Some(Command::Policy { .. }) => unreachable!("handled before the runtime starts"),
        None if settings.in_lambda => runtime.block_on(run_lambda(settings)),
        None => fail("no command given: try `token-broker serve --help`"),
    }
}

/// Loads the policy and builds the state (fetching keys), logging how long init took: the part
/// of a Lambda cold start that is ours.
async fn state(settings: &Settings) -> Result<Arc<AppState>, String> {
    let started = Instant::now();
    let policy = match &settings.policy {
        Some(path) => policy::load(path),
        None => bundled::policy(),
    }
    .map_err(|e| e.to_string())?;
    let sdk = aws::sdk_config().await;
    let state = Arc::new(AppState::build(policy, settings, &sdk).await);
    tracing::info!(
        init_ms = started.elapsed().as_secs_f64() * 1000.0,
        "initialized"
    );
    Ok(state)
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
