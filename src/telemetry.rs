//! Logging: JSON lines in Lambda (its JSON log format, one object per event), readable text
//! locally. `RUST_LOG` filters; the default is `info`. Nothing here ever formats a secret: the
//! types that hold secrets redact themselves.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls are ignored (tests build many apps).
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_ansi(false)
            .try_init()
    } else {
        builder.with_target(true).try_init()
    };
}
