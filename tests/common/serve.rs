//! The broker as the binary builds it, served for a test: shared by the `api` and `log_secrecy`
//! test binaries (each includes this file), so both exercise the wiring that ships.

use std::sync::Arc;

use aws_config::SdkConfig;
use token_broker::AppState;
use token_broker::config::Settings;
use token_broker::startup::{self, Operations};

/// Builds the state with `startup::build` from `settings`, STS and KMS where `sts` and `kms`
/// say, and serves it on a free loopback port in the background. Returns `http://<address>` and
/// the state.
pub async fn serve_broker(
    settings: &Settings,
    sts: SdkConfig,
    kms: SdkConfig,
    operations: Operations,
) -> (String, Arc<AppState>) {
    let (sts, kms) = (with_broker_timeouts(sts), with_broker_timeouts(kms));
    let state = startup::build(settings, &sts, &kms, operations)
        .await
        .unwrap();
    let listener = token_broker::serve::bind(([127, 0, 0, 1], 0).into()).unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(token_broker::serve::run(
        listener,
        state.clone(),
        std::future::pending(),
    ));
    (address, state)
}

/// `sdk` with the timeouts `aws::sdk_config` gives the binary, so faults end as they would there;
/// unless the test chose timeouts of its own (short ones, to keep a fault test fast).
fn with_broker_timeouts(sdk: SdkConfig) -> SdkConfig {
    if sdk.timeout_config().is_some() {
        return sdk;
    }
    sdk.to_builder()
        .timeout_config(token_broker::aws::timeouts())
        .build()
}
