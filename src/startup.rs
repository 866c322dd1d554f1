//! Building the application state: policy, verifier, AWS adapters. The one way a broker is put
//! together, used by the `serve` and `lambda` commands and by the black-box tests alike, so the
//! tests exercise the wiring that ships.

use std::sync::Arc;
use std::time::Instant;

use aws_config::SdkConfig;

use crate::aws::kms::Kms;
use crate::aws::replay::ReplayTable;
use crate::aws::sts::Sts;
use crate::broker::Broker;
use crate::bundled;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::oidc::Verifier;
use crate::policy::{self, LazyPolicy};

/// Everything a request needs, built once per process and shared by reference.
pub struct AppState {
    /// The exchange.
    pub broker: Broker,
    /// `ISSUER_URL`, when configured; otherwise each adapter derives it.
    pub issuer_url: Option<String>,
}

/// The parts of a broker that serve the people who run it rather than its callers: the replay
/// guard's table and where metric lines go. Default: neither.
#[derive(Debug, Default)]
pub struct Operations {
    /// The table that counts token uses; needed when the policy sets `token_uses`.
    pub replay: Option<ReplayTable>,
    /// Where EMF metric lines go.
    pub metrics: Metrics,
}

impl Operations {
    /// What `settings` ask for: the replay table (`TOKEN_BROKER_REPLAY_TABLE`) reached through
    /// `sdk`, and metric lines on stdout when a namespace is set.
    fn from_settings(settings: &Settings, sdk: &SdkConfig) -> Self {
        Self {
            replay: settings
                .replay_table
                .clone()
                .map(|table| ReplayTable::new(sdk, table, settings.leeway)),
            metrics: Metrics::stdout(settings.metrics_namespace.as_deref()),
        }
    }
}

/// Builds the state for `settings`: loads the policy (the file in `settings.policy`, else the one
/// bundled at build time), points STS at `sts` and, when `settings.kms_key_id` is set, KMS at
/// `kms`, adds `operations`, and fetches the issuers' keys and the KMS public keys at once so the
/// first request finds them cached (failures there are left for the first request to retry). In
/// production `sts` and `kms` are the same configuration; tests point them at different local
/// stand-ins. Logs how long it took: the part of a Lambda cold start that is ours. Fails only on
/// a policy that does not load.
pub async fn build(
    settings: &Settings,
    sts: &SdkConfig,
    kms: &SdkConfig,
    operations: Operations,
) -> Result<Arc<AppState>, String> {
    let started = Instant::now();
    let policy = Arc::new(load_policy(settings)?);
    if policy.guards_replay() && operations.replay.is_none() {
        tracing::error!(
            "the policy sets token_uses but no replay table is configured \
             (TOKEN_BROKER_REPLAY_TABLE): those grants answer 500 until one is"
        );
    }
    let verifier = Verifier::new(
        policy.root().clone(),
        settings.leeway,
        settings.jwks.clone(),
    )
    .with_metrics(operations.metrics.clone());
    let kms = settings
        .kms_key_id
        .clone()
        .map(|active| Kms::new(kms, active, settings.kms_retired_key_ids.clone()));
    let sts = Sts::new(sts);
    // Whether the broker's own credentials make AssumeRole role chaining (the 1 h cap) is found
    // out once, here, rather than on the first request.
    tokio::join!(
        verifier.prefetch(),
        prefetch_kms_keys(kms.as_ref()),
        sts.session_cap()
    );
    let broker = Broker::new(policy, verifier, sts, kms)
        .with_replay_table(operations.replay)
        .with_metrics(operations.metrics);
    let state = AppState {
        broker,
        issuer_url: settings.issuer_url.clone(),
    };
    tracing::info!(
        init_ms = started.elapsed().as_secs_f64() * 1000.0,
        process_cpu_ms = process_cpu_ms(),
        "initialized"
    );
    Ok(Arc::new(state))
}

/// [`build`] as the binary runs it: every AWS client from the environment's one configuration
/// (`aws::sdk_config`), and the replay table and metrics as `settings` say.
pub async fn build_from_env(settings: &Settings) -> Result<Arc<AppState>, String> {
    let sdk = crate::aws::sdk_config().await;
    let operations = Operations::from_settings(settings, &sdk);
    build(settings, &sdk, &sdk, operations).await
}

/// CPU time (user and system, every thread, exited ones included) the process has spent since it
/// was started, in milliseconds: at the end of init, what a cold start costs in CPU, which under
/// Lambda's CPU share is what its wall time is made of. Unlike `init_ms` it includes the runtime,
/// the SDK configuration and everything before [`build`].
fn process_cpu_ms() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer it is given, which points to one.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return f64::NAN;
    }
    // SAFETY: initialized by the successful call above (and zeroed before it).
    let usage = unsafe { usage.assume_init() };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// A policy file named at run time is compiled whole, as `policy check` compiles it; the bundled
/// one compiles its delegated files on first use (`bundled::policy`).
fn load_policy(settings: &Settings) -> Result<LazyPolicy, String> {
    match &settings.policy {
        Some(path) => policy::load(path).map(LazyPolicy::from),
        None => bundled::policy(),
    }
    .map_err(|e| e.to_string())
}

/// A KMS outage at start must not stop the broker: credentials need no KMS.
async fn prefetch_kms_keys(kms: Option<&Kms>) {
    if let Some(kms) = kms
        && let Err(error) = kms.keys().await
    {
        tracing::warn!(%error, "KMS public keys not fetched at start; retrying on first use");
    }
}
