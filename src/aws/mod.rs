//! AWS adapters. Each owns its SDK client; nothing outside this module sees an SDK type, and SDK
//! errors are reduced to their error code before they leave it (messages can carry ARNs).

mod direct;
pub(crate) mod http;
pub mod jwk;
pub mod kms;
pub mod replay;
pub mod sts;

pub use token_broker_policy::names;

use std::time::Duration;

use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_sts::config::http::HttpResponse;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};

/// The SDK configuration from the standard environment (region, credentials, and
/// `AWS_ENDPOINT_URL` for a local emulator), with timeouts that keep a request from hanging, over
/// the process's one HTTP client.
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http::sdk_client())
        .timeout_config(timeouts())
        .load()
        .await
}

/// `sdk` as each adapter's client uses it: without stalled-stream protection. That protection
/// ends a response whose body stops for 5 s, and every attempt ends at 3 s anyway
/// ([`timeouts`]; the replay table's at 1 s), so it only cost time: 2.6 µs of the 78 µs an
/// in-process exchange takes (its interceptors and body wrapper; BENCHMARKS.md).
pub(crate) fn client_config(sdk: &SdkConfig) -> SdkConfig {
    sdk.to_builder()
        .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
        .build()
}

/// Connect 2 s, each attempt 3 s, a whole operation with its retries 8 s.
pub fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(Duration::from_secs(3))
        .operation_timeout(Duration::from_secs(8))
        .build()
}

/// An AWS call's failure reduced to its error code (the message is dropped: it can name ARNs)
/// and whether a retry could succeed.
pub(crate) struct Failure {
    pub(crate) code: String,
    pub(crate) retryable: bool,
}

/// What every adapter asks of an SDK error. Retryable: the service's `transient` codes (its
/// throttling and internal errors), any 5xx, timeouts and connection failures. Not retryable:
/// every other code (a missing table or key, a denied permission, a refusal), and an answer that
/// is not the service's (a proxy's 4xx page): retrying cannot help until someone fixes it.
pub(crate) fn failure<E: ProvideErrorMetadata>(
    error: &SdkError<E, HttpResponse>,
    transient: &[&str],
) -> Failure {
    let server_error = error
        .raw_response()
        .is_some_and(|response| response.status().is_server_error());
    let (code, retryable) = match error {
        SdkError::ServiceError(service) => {
            // No code: the answer was not the service's error document (a proxy's page, or a
            // 200 whose body is not the service's), which is what `BadResponse` means below.
            let code = service.err().code().unwrap_or("BadResponse");
            (code.to_owned(), transient.contains(&code))
        }
        SdkError::TimeoutError(_) => ("Timeout".to_owned(), true),
        SdkError::DispatchFailure(_) => ("ConnectionFailure".to_owned(), true),
        SdkError::ResponseError(_) => ("BadResponse".to_owned(), false),
        _ => ("RequestNotSent".to_owned(), false),
    };
    Failure {
        code,
        retryable: retryable || server_error,
    }
}
