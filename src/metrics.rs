//! CloudWatch metrics as Embedded Metric Format (EMF) lines: one JSON object per line on stdout,
//! which CloudWatch Logs turns into metrics with no API call and no latency added to a request.
//!
//! One line per decision carries `Decisions` (by `Outcome`, and by `Outcome` with `Role` or
//! `Audience`), `ExchangeLatency`, `StsErrors` and `KmsErrors`; one line per failed JWKS fetch
//! carries `JwksFetchFailures`. Dimension values are policy names or fixed words, never what a
//! caller sent: a role or audience the policy does not know is counted as `unknown`, so no caller
//! can create metrics (each distinct dimension value is a billed metric). A line never carries a
//! token, a credential or a claim.
//!
//! Written only when a namespace is configured (`TOKEN_BROKER_METRICS_NAMESPACE`, which
//! template.yaml sets). The line goes to stdout on its own, not inside a tracing event, because
//! CloudWatch extracts metrics only from a log event that is itself the EMF object.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// What is counted as `unknown` in place of a role or audience the policy does not name.
pub const UNKNOWN: &str = "unknown";

/// How a decision ended, as the `Outcome` dimension names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Credentials or a token were issued.
    Allow,
    /// A verified caller was refused (policy, claim, or a replayed token).
    Deny,
    /// The GitLab token failed a check.
    InvalidToken,
    /// The broker or an upstream (JWKS, STS, KMS, DynamoDB) failed.
    Error,
}

impl Outcome {
    /// The dimension value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::InvalidToken => "invalid_token",
            Self::Error => "error",
        }
    }
}

/// What a decision was about, by a name from the policy (or [`UNKNOWN`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// `/v1/credentials`: the `Role` dimension.
    Role(&'a str),
    /// `/v1/token`: the `Audience` dimension.
    Audience(&'a str),
}

/// One decision, as counted.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'a> {
    /// How it ended.
    pub outcome: Outcome,
    /// The role or audience, already reduced to a policy name or [`UNKNOWN`].
    pub subject: Subject<'a>,
    /// From the request reaching the broker to its answer.
    pub latency: Duration,
    /// Whether STS failed (refused, throttled, down).
    pub sts_error: bool,
    /// Whether KMS failed.
    pub kms_error: bool,
}

/// Where metric lines go.
#[derive(Clone)]
enum Sink {
    Off,
    Stdout,
    Memory(Arc<Mutex<Vec<String>>>),
}

/// The metrics handle every part of the broker that counts something holds; cheap to clone.
/// [`Metrics::default`] writes nothing.
#[derive(Clone)]
pub struct Metrics {
    namespace: String,
    sink: Sink,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            namespace: String::new(),
            sink: Sink::Off,
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sink = match self.sink {
            Sink::Off => "off",
            Sink::Stdout => "stdout",
            Sink::Memory(_) => "memory",
        };
        write!(f, "Metrics({:?} to {sink})", self.namespace)
    }
}

impl Metrics {
    /// Lines in `namespace` on stdout when a namespace is given, else nothing.
    pub fn stdout(namespace: Option<&str>) -> Self {
        match namespace {
            Some(namespace) => Self {
                namespace: namespace.to_owned(),
                sink: Sink::Stdout,
            },
            None => Self::default(),
        }
    }

    /// Lines in `namespace` kept in memory, for tests; [`Metrics::lines`] reads them.
    pub fn in_memory(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            sink: Sink::Memory(Arc::default()),
        }
    }

    /// Every line written so far, when kept in memory; otherwise none.
    pub fn lines(&self) -> Vec<String> {
        match &self.sink {
            Sink::Memory(lines) => lines.lock().expect("metric lines lock").clone(),
            _ => Vec::new(),
        }
    }

    /// Whether lines are written at all; callers skip building one when not.
    pub fn is_on(&self) -> bool {
        !matches!(self.sink, Sink::Off)
    }

    /// Counts one decision.
    pub fn decision(&self, decision: &Decision<'_>) {
        if !self.is_on() {
            return;
        }
        self.write(decision_line(&self.namespace, decision, now_millis()));
    }

    /// Counts one failed JWKS fetch.
    pub fn jwks_fetch_failure(&self) {
        if matches!(self.sink, Sink::Off) {
            return;
        }
        self.write(jwks_line(&self.namespace, now_millis()));
    }

    fn write(&self, line: Value) {
        let line = line.to_string();
        match &self.sink {
            Sink::Off => {}
            // One write of the whole line, newline included, so that no other output on stdout
            // can land inside it. A failed write loses one data point, never a request.
            Sink::Stdout => {
                let _ = std::io::stdout()
                    .lock()
                    .write_all(format!("{line}\n").as_bytes());
            }
            Sink::Memory(lines) => lines.lock().expect("metric lines lock").push(line),
        }
    }
}

/// The EMF object of a decision: `Decisions` by `[Outcome]` and `[Outcome, Role|Audience]`; the
/// latency and upstream error counts without dimensions, which is what the alarms and the
/// dashboard's percentiles read.
fn decision_line(namespace: &str, decision: &Decision<'_>, timestamp_ms: u64) -> Value {
    let (name, value) = match decision.subject {
        Subject::Role(role) => ("Role", role),
        Subject::Audience(audience) => ("Audience", audience),
    };
    json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [["Outcome"], ["Outcome", name]],
                    "Metrics": [{"Name": "Decisions", "Unit": "Count"}],
                },
                {
                    "Namespace": namespace,
                    "Dimensions": [[]],
                    "Metrics": [
                        {"Name": "ExchangeLatency", "Unit": "Milliseconds"},
                        {"Name": "StsErrors", "Unit": "Count"},
                        {"Name": "KmsErrors", "Unit": "Count"},
                    ],
                },
            ],
        },
        "Outcome": decision.outcome.as_str(),
        name: value,
        "Decisions": 1,
        "ExchangeLatency": (decision.latency.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        "StsErrors": u8::from(decision.sts_error),
        "KmsErrors": u8::from(decision.kms_error),
    })
}

/// The EMF object of one failed JWKS fetch, without dimensions.
fn jwks_line(namespace: &str, timestamp_ms: u64) -> Value {
    json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [[]],
                "Metrics": [{"Name": "JwksFetchFailures", "Unit": "Count"}],
            }],
        },
        "JwksFetchFailures": 1,
    })
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_line_names_every_dimension_and_metric_as_a_member() {
        let decision = Decision {
            outcome: Outcome::Deny,
            subject: Subject::Audience("sts.amazonaws.com"),
            latency: Duration::from_micros(12_345),
            sts_error: false,
            kms_error: true,
        };
        let line = decision_line("TokenBroker/test", &decision, 1_700_000_000_000);
        assert_eq!(line["Outcome"], "deny");
        assert_eq!(line["Audience"], "sts.amazonaws.com");
        assert_eq!(line["ExchangeLatency"], 12.345);
        assert_eq!(
            (&line["StsErrors"], &line["KmsErrors"]),
            (&json!(0), &json!(1))
        );
        assert_eq!(line["_aws"]["Timestamp"], 1_700_000_000_000_u64);
    }

    #[test]
    fn nothing_is_written_without_a_namespace() {
        let metrics = Metrics::stdout(None);
        assert!(matches!(metrics.sink, Sink::Off));
        metrics.jwks_fetch_failure();
        assert!(metrics.lines().is_empty());
    }
}
