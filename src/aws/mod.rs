//! AWS adapters. Each owns its SDK client; nothing outside this module sees an SDK type, and SDK
//! errors are reduced to their error code before they leave it (messages can carry ARNs).

pub mod jwk;
pub mod kms;
pub mod replay;
pub mod sts;

pub use token_broker_policy::names;

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

/// The SDK configuration from the standard environment (region, credentials, and
/// `AWS_ENDPOINT_URL` for a local emulator), with timeouts that keep a request from hanging.
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeouts())
        .load()
        .await
}

/// Connect 2 s, each attempt 3 s, a whole operation with its retries 8 s.
pub fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(Duration::from_secs(3))
        .operation_timeout(Duration::from_secs(8))
        .build()
}
