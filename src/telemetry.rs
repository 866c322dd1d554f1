//! Logging: JSON lines in Lambda (its JSON log format, one object per event), readable text
//! locally. The caller passes the filter (`RUST_LOG`, read by `config`); the default is `info`.
//! Nothing here ever formats a secret: the types that hold secrets redact themselves, and
//! dependencies that log secrets below `info` are capped at `info` whatever the filter asks for.

use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, layer::SubscriberExt};

/// Crates (by name prefix) that log secrets at `debug` or `trace`, found by
/// `tests/log_secrecy.rs`: the AWS SDK prints response bodies (KMS `Sign`'s signature, so the
/// issued token; with `LOG_SENSITIVE_BODIES` set even AssumeRole's credentials) and the broker's
/// own credentials' identity, the SigV4 signer the identity it signs with, and lambda_runtime the
/// raw Lambda event, whose `authorization` header is the caller's GitLab token. The HTTP stacks
/// underneath see the same bytes. None of them has anything to say below `info` that we need.
const CAPPED_CRATES: [&str; 6] = ["aws_", "lambda_", "hyper", "h2", "rustls", "tower"];

/// Installs the global subscriber once, filtered by `filter` (`RUST_LOG` syntax, from
/// [`crate::config::log_filter`]); later calls are ignored (tests build many apps).
pub fn init(json: bool, filter: &str) {
    let _ = Registry::default()
        .with(layer(json, filter, std::io::stderr))
        .try_init();
}

/// The formatting layer [`init`] installs, writing to `writer`. `filter` has `RUST_LOG` syntax;
/// empty or invalid means `info`. The crates in [`CAPPED_CRATES`] never log below `info`, even
/// when `filter` names them. Public so a test can capture exactly what the broker would log, in
/// both formats at once (a process has only one global subscriber).
pub fn layer<S, W>(json: bool, filter: &str, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a> + 'static,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter)
        .ok()
        .filter(|_| !filter.trim().is_empty())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // A separate filter rather than directives added to the EnvFilter: a more specific
    // directive in RUST_LOG (`aws_smithy_runtime::client=trace`) would win over an added one.
    let filter = filter.and(filter_fn(within_cap));
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    if json {
        layer
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_ansi(false)
            .with_filter(filter)
            .boxed()
    } else {
        layer.with_target(true).with_filter(filter).boxed()
    }
}

/// Whether an event or span may be logged at all: anything at `info` or above, and anything of a
/// crate that is not capped.
fn within_cap(metadata: &Metadata<'_>) -> bool {
    *metadata.level() <= Level::INFO || !is_capped(metadata.target())
}

fn is_capped(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    CAPPED_CRATES.iter().any(|prefix| krate.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_that_log_secrets_are_capped_and_the_broker_is_not() {
        let cases = [
            ("aws_smithy_runtime::client::orchestrator", true),
            ("aws_sigv4::http_request::sign", true),
            ("aws_config", true),
            ("lambda_runtime::layers::api_response", true),
            ("hyper_util::client::legacy", true),
            ("h2::codec", true),
            ("aws_smithy_http_client::client::connect", true),
            ("rustls::client::hs", true),
            ("token_broker::oidc::jwks", false),
            ("audit", false),
            ("log_secrecy", false),
        ];
        for (target, capped) in cases {
            assert_eq!(is_capped(target), capped, "{target}");
        }
    }
}
