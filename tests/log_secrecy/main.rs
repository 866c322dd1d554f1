//! Secrets never reach the logs, even with every target at `trace`: not the GitLab token (nor its
//! signature), not the credentials STS returns (AccessKeyId included), not the tokens the broker
//! issues, not the broker's own AWS credentials. The AWS SDK logs whole requests and responses at
//! trace level and lambda_runtime the raw event, so this is what the telemetry's caps are for.
//!
//! Two ways in: the router in-process, captured in both formats at once by the layers
//! `telemetry::init` installs; and the built binary as a Lambda function, against a stand-in for
//! the Lambda Runtime API, with its stderr and stdout captured.

mod broker;
#[path = "../common/serve.rs"]
mod serve;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use broker::Broker;
use local_issuer::capture::Capture;
use local_issuer::kms::{KeySpec, LocalKms};
use local_issuer::{forge, moto, urn};
use serde_json::{Value, json};
use token_broker::config::Settings;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Every target at trace, and the chattiest crates named explicitly on top: neither may lift the
/// caps on what they log.
const FILTER: &str =
    "trace,aws_smithy_runtime=trace,aws_sigv4=trace,hyper=trace,lambda_runtime=trace";

/// The process-wide subscriber: the broker's JSON and text layers, each into its own capture.
/// Installed before any app is built (building one calls `telemetry::init`, which then does
/// nothing), and global, so events on every thread are captured.
fn captured_logs() -> &'static [(&'static str, Capture); 2] {
    static LOGS: OnceLock<[(&str, Capture); 2]> = OnceLock::new();
    LOGS.get_or_init(|| {
        let (json, text) = (Capture::default(), Capture::default());
        tracing_subscriber::registry()
            .with(token_broker::telemetry::layer(true, FILTER, json.clone()))
            .with(token_broker::telemetry::layer(false, FILTER, text.clone()))
            .try_init()
            .expect("no subscriber is installed before this one");
        [("JSON", json), ("text", text)]
    })
}

/// Secret strings, by what they are, in every form a log line could carry them.
#[derive(Default)]
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn add(&mut self, what: impl Into<String>, value: &str) {
        assert!(value.len() >= 16, "{value:?} is too short to search for");
        self.0.push((what.into(), value.to_owned()));
    }

    /// A JWS, its signature segment, and the signature's bytes as base64 and as a `Debug` list
    /// (how the SDK prints a `Blob`).
    fn token(&mut self, what: &str, token: &str) {
        self.add(what, token);
        let signature = token.rsplit('.').next().unwrap();
        self.add(format!("{what}'s signature"), signature);
        let bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
        self.add(
            format!("{what}'s signature in base64"),
            &STANDARD_NO_PAD.encode(&bytes)[..64],
        );
        let list = format!("{:?}", &bytes[..8]);
        self.add(
            format!("{what}'s signature as a byte list"),
            list.trim_end_matches(']'),
        );
    }

    /// The credentials of a credential_process answer.
    fn credentials(&mut self, what: &str, body: &Value) {
        for field in ["AccessKeyId", "SecretAccessKey", "SessionToken"] {
            self.add(format!("{what} {field}"), body[field].as_str().unwrap());
        }
    }

    fn assert_absent_from(&self, logs: &str, source: &str) {
        let found: Vec<&str> = self
            .0
            .iter()
            .filter(|(_, value)| logs.contains(value.as_str()))
            .map(|(what, _)| what.as_str())
            .collect();
        let lines: Vec<&str> = logs
            .lines()
            .filter(|line| self.0.iter().any(|(_, v)| line.contains(v.as_str())))
            .take(3)
            .collect();
        assert!(
            found.is_empty(),
            "{source} logs carry {found:?}; first lines:\n{}",
            lines.join("\n")
        );
    }
}

/// The broker's own AWS credentials, as a Lambda function's role would give it.
fn broker_credentials() -> (&'static str, &'static str, &'static str) {
    (
        "ASIABROKEROWNKEY0001",
        "broker-own-secret-access-key-0123456789abcdef",
        "broker-own-session-token-IQoJb3JpZ2luX2VjEAAaCXVzLWVhc3QtMSJHMEUCIQ",
    )
}

fn broker_secrets() -> Secrets {
    let (key, secret, session) = broker_credentials();
    let mut secrets = Secrets::default();
    secrets.add("the broker's own AccessKeyId", key);
    secrets.add("the broker's own SecretAccessKey", secret);
    secrets.add("the broker's own SessionToken", session);
    secrets
}

fn request_id(response: &reqwest::Response) -> String {
    response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// A token whose signature does not verify: the issuer's kid, another key.
fn forged_token(app: &Broker) -> String {
    let claims = app.claims(json!({}));
    forge::signed_by_a_stranger(&app.issuer.kid(), &claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_credential_reaches_the_logs_in_either_format_even_at_trace_level() {
    let logs = captured_logs();
    tracing::trace!(target: "log_secrecy", "trace events of other targets are captured");
    let kms = LocalKms::start().await;
    let app = app_with_its_own_credentials(&kms).await;
    let mut secrets = broker_secrets();
    let mut request_ids = credentials_exchanges(&app, &mut secrets).await;
    request_ids.extend(token_exchanges(&app, &mut secrets).await);

    for (format, capture) in logs {
        let text = capture.text();
        assert!(
            text.contains("trace events of other targets are captured"),
            "{format}: the filter lets trace through"
        );
        for id in &request_ids {
            assert!(
                text.contains(id.as_str()),
                "{format}: no audit line for {id}"
            );
        }
        secrets.assert_absent_from(&text, format);
    }
}

/// A broker with a KMS key, whose AWS SDK holds session credentials of its own, as in Lambda.
/// KMS is the stand-in: moto hashes the digest the broker sends again, so its signatures do not
/// verify and the broker would issue no token.
async fn app_with_its_own_credentials(kms: &LocalKms) -> Broker {
    let settings = Settings {
        kms_key_id: Some(kms.create_key(KeySpec::Rsa2048)),
        ..Settings::default()
    };
    let (id, secret, session) = broker_credentials();
    let own = aws_sdk_sts::config::Credentials::new(id, secret, Some(session.into()), None, "t");
    let kms = moto::sdk_config_for(kms.url(), own.clone());
    Broker::start(settings, moto::sdk_config_with(own), kms).await
}

/// Credentials as JSON and as env lines, a denial and a forged token; returns the request ids.
async fn credentials_exchanges(app: &Broker, secrets: &mut Secrets) -> Vec<String> {
    let mut request_ids = Vec::new();
    let token = app.token(json!({}));
    let response = app.credentials(&token, "role=deploy-web-prod").await;
    assert_eq!(response.status(), 200);
    request_ids.push(request_id(&response));
    secrets.token("an allowed GitLab token", &token);
    secrets.credentials("credentials", &response.json().await.unwrap());

    let token = app.token(json!({}));
    let response = app.credentials(&token, "role=read-only&format=env").await;
    assert_eq!(response.status(), 200);
    request_ids.push(request_id(&response));
    secrets.token("a GitLab token asking for env lines", &token);
    for line in response.text().await.unwrap().lines() {
        let (name, value) = line.trim_start_matches("export ").split_once('=').unwrap();
        if name != "AWS_CREDENTIAL_EXPIRATION" {
            secrets.add(format!("env {name}"), value.trim_matches('\''));
        }
    }

    let token = app.token(json!({"ref": "feature/x", "ref_protected": "false"}));
    let response = app.credentials(&token, "role=deploy-web-prod").await;
    assert_eq!(response.status(), 403);
    request_ids.push(request_id(&response));
    secrets.token("a denied GitLab token", &token);

    let forged = forged_token(app);
    let response = app.credentials(&forged, "role=read-only").await;
    assert_eq!(response.status(), 401);
    request_ids.push(request_id(&response));
    secrets.token("a forged token", &forged);
    request_ids
}

/// A token issued and a token refused by `/v1/token`; returns the request ids.
async fn token_exchanges(app: &Broker, secrets: &mut Secrets) -> Vec<String> {
    let token = app.token(json!({}));
    let response = app.exchange(&token, "sts.amazonaws.com").await;
    assert_eq!(response.status(), 200);
    let issued_id = request_id(&response);
    secrets.token("an exchanged GitLab token", &token);
    let body: Value = response.json().await.unwrap();
    secrets.token("the issued token", body["access_token"].as_str().unwrap());

    let token = app.token(json!({"ref_protected": "false"}));
    let response = app.exchange(&token, "sts.amazonaws.com").await;
    assert_eq!(response.status(), 400);
    secrets.token("a GitLab token refused a token", &token);
    vec![issued_id, request_id(&response)]
}

/// A stand-in for the Lambda Runtime API: hands out queued events at `invocation/next` and
/// passes on what the function posts back.
struct RuntimeApi {
    address: String,
    events: tokio::sync::mpsc::UnboundedSender<(String, Value)>,
    posted: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
}

struct RuntimeShared {
    events: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<(String, Value)>>,
    posted: tokio::sync::mpsc::UnboundedSender<(String, Vec<u8>)>,
}

impl RuntimeApi {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (events, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let (posted_tx, posted) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(RuntimeShared {
            events: tokio::sync::Mutex::new(events_rx),
            posted: posted_tx,
        });
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        runtime_api(shared.clone(), request)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            address,
            events,
            posted,
        }
    }

    /// Invokes the function with `event` and returns the Function URL response it posted.
    async fn invoke(&mut self, request_id: &str, event: Value) -> Value {
        self.events.send((request_id.to_owned(), event)).unwrap();
        let (path, body) = tokio::time::timeout(Duration::from_secs(60), self.posted.recv())
            .await
            .expect("the function answers within a minute")
            .unwrap();
        assert_eq!(
            path,
            format!("/2018-06-01/runtime/invocation/{request_id}/response"),
            "{}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).unwrap()
    }
}

async fn runtime_api(
    shared: Arc<RuntimeShared>,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    let path = request.uri().path().to_owned();
    if path == "/2018-06-01/runtime/invocation/next" {
        let next = shared.events.lock().await.recv().await;
        let Some((id, event)) = next else {
            return Ok(hyper::Response::new(Default::default()));
        };
        let deadline = (local_issuer::claims::now() + 60) * 1000;
        let response = hyper::Response::builder()
            .header("lambda-runtime-aws-request-id", id)
            .header("lambda-runtime-deadline-ms", deadline.to_string())
            .header(
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:us-east-1:123456789012:function:token-broker",
            )
            .header("content-type", "application/json")
            .body(event.to_string().into())
            .unwrap();
        return Ok(response);
    }
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let _ = shared.posted.send((path, body.to_vec()));
    let mut response = hyper::Response::new(Default::default());
    *response.status_mut() = hyper::StatusCode::ACCEPTED;
    Ok(response)
}

const FUNCTION_URL_EVENT: &str = include_str!("../fixtures/function-url-credentials.json");

/// A Function URL event (payload v2) for `POST {path}?{query}` with `headers` and `body`.
fn function_url_event(
    request_id: &str,
    path: &str,
    query: &str,
    headers: Value,
    body: Option<String>,
) -> Value {
    let mut event: Value = serde_json::from_str(FUNCTION_URL_EVENT).unwrap();
    event["rawPath"] = json!(path);
    event["requestContext"]["http"]["path"] = json!(path);
    event["requestContext"]["requestId"] = json!(request_id);
    event["rawQueryString"] = json!(query);
    event["queryStringParameters"] = json!({});
    for (name, value) in headers.as_object().unwrap() {
        event["headers"][name] = value.clone();
    }
    if let Some(body) = body {
        event["body"] = json!(body);
    }
    event
}

fn bearer(token: &str) -> Value {
    json!({"authorization": format!("Bearer {token}")})
}

/// The function's answer: status and body.
fn answer(response: &Value) -> (u64, Value) {
    let status = response["statusCode"].as_u64().unwrap();
    let body = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    (status, body)
}

/// A child process's stdout and stderr, read into one buffer on threads of their own.
fn capture_output(child: &mut Child) -> (Capture, Vec<std::thread::JoinHandle<()>>) {
    let capture = Capture::default();
    let readers: Vec<Box<dyn Read + Send>> = vec![
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ];
    let threads = readers
        .into_iter()
        .map(|mut reader| {
            let mut capture = capture.clone();
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = reader.read_to_end(&mut bytes);
                let _ = std::io::Write::write_all(&mut capture, &bytes);
            })
        })
        .collect();
    (capture, threads)
}

/// The function's process, killed when the test ends, however it ends.
struct Function(Child);

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The function binary under the runtime API stand-in; STS at moto, KMS at `kms` (the stand-in:
/// moto's signatures over a digest do not verify) signing with `key`.
fn lambda_function(
    runtime: &RuntimeApi,
    policy: &std::path::Path,
    kms: &LocalKms,
    key: &str,
) -> Command {
    let (id, secret, session) = broker_credentials();
    let mut command = Command::new(env!("CARGO_BIN_EXE_token-broker"));
    command
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", &runtime.address)
        .env("AWS_LAMBDA_FUNCTION_NAME", "token-broker")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("TOKEN_BROKER_POLICY", policy)
        .env("KMS_KEY_ID", key)
        .env("AWS_ENDPOINT_URL", moto::endpoint())
        .env("AWS_ENDPOINT_URL_KMS", kms.url())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", id)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_SESSION_TOKEN", session)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", FILTER)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_function_at_trace_level_logs_no_token_or_credential() {
    captured_logs();
    let kms = LocalKms::start().await;
    let key = kms.create_key(KeySpec::Rsa2048);
    // This app only provides the issuer and a policy file naming it; the binary is the broker.
    let app = Broker::start_default().await;
    let mut runtime = RuntimeApi::start().await;
    let mut function = Function(
        lambda_function(&runtime, &app.policy_path(), &kms, &key)
            .spawn()
            .unwrap(),
    );
    let (output, readers) = capture_output(&mut function.0);
    let mut secrets = broker_secrets();

    let allowed = app.token(json!({}));
    let denied = app.token(json!({"ref": "feature/x", "ref_protected": "false"}));
    let forged = forged_token(&app);
    let cases = [
        (
            "an allowed GitLab token",
            allowed,
            "role=deploy-web-prod",
            200,
        ),
        ("a denied GitLab token", denied, "role=deploy-web-prod", 403),
        ("a forged token", forged, "role=read-only", 401),
    ];
    let mut request_ids = Vec::new();
    for (n, (what, token, query, status)) in cases.into_iter().enumerate() {
        let id = format!("log-secrecy-{n}");
        let event = function_url_event(&id, "/v1/credentials", query, bearer(&token), None);
        let (got, body) = answer(&runtime.invoke(&id, event).await);
        assert_eq!(got, status, "{what}: {body}");
        secrets.token(what, &token);
        if status == 200 {
            secrets.credentials("credentials", &body);
        }
        request_ids.push(id);
    }

    let token = app.token(json!({}));
    let id = "log-secrecy-exchange".to_owned();
    let event = token_exchange_event(&id, &token);
    let (status, body) = answer(&runtime.invoke(&id, event).await);
    assert_eq!(status, 200, "{body}");
    secrets.token("an exchanged GitLab token", &token);
    secrets.token("the issued token", body["access_token"].as_str().unwrap());
    request_ids.push(id);

    drop(function);
    for reader in readers {
        reader.join().unwrap();
    }
    let logs = output.text();
    for id in request_ids {
        assert!(logs.contains(&id), "no audit line for {id}:\n{logs}");
    }
    secrets.assert_absent_from(&logs, "the Lambda function's");
}

/// A Function URL event for `POST /v1/token` exchanging `token` for an AWS web-identity token.
fn token_exchange_event(request_id: &str, token: &str) -> Value {
    let form = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", urn::TOKEN_EXCHANGE),
            ("subject_token", token),
            ("subject_token_type", urn::JWT),
            ("audience", "sts.amazonaws.com"),
        ])
        .finish();
    let headers = json!({"content-type": "application/x-www-form-urlencoded"});
    function_url_event(request_id, "/v1/token", "", headers, Some(form))
}

/// The audit line of `request_id` in each format: its `decision`, or `token rejected` when the
/// token failed before any decision.
fn audit_lines(request_id: &str) -> Vec<(&'static str, String)> {
    captured_logs()
        .iter()
        .map(|(format, capture)| {
            let text = capture.text();
            let line = text
                .lines()
                .find(|line| {
                    line.contains(request_id)
                        && (line.contains("decision") || line.contains("token rejected"))
                })
                .unwrap_or_else(|| panic!("{format}: no audit line for {request_id}"))
                .to_owned();
            (*format, line)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_told_nothing_is_audited_with_the_full_reason() {
    captured_logs();
    let app = Broker::start_default().await;
    let stranger =
        json!({"project_id": "31337", "namespace_id": "666", "project_path": "mallory/web"});
    let token = app.token(stranger);
    let response = app.credentials(&token, "role=deploy-web-prod").await;
    assert_eq!(response.status(), 403);
    let id = request_id(&response);
    let body = response.text().await.unwrap();
    assert!(
        body.contains(token_broker::broker::NOTHING_ADMITTED),
        "{body}"
    );
    for (format, line) in audit_lines(&id) {
        assert!(
            line.contains("deny") && line.contains("deploy-web-prod") && line.contains("31337"),
            "{format}: {line}"
        );
        // The structured denial's failing claim is a field of its own, for log queries.
        let (claim_field, plain) = match format {
            "JSON" => (r#""claim":"project_id""#, line.clone()),
            _ => ("claim=\"project_id\"", without_colours(&line)),
        };
        assert!(plain.contains(claim_field), "{format}: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_env_request_that_fails_is_audited_as_an_error() {
    captured_logs();
    let sts = local_issuer::sts::LocalSts::start_on("127.0.0.1:0").await;
    sts.set_mode(local_issuer::sts::StsMode::ServerError);
    let t = aws_sdk_sts::config::Credentials::new("t", "t", None, None, "t");
    let sdk = moto::sdk_config_for(sts.url(), t);
    let app = Broker::start(Settings::default(), sdk.clone(), sdk).await;
    let token = app.token(json!({}));
    let response = app.credentials(&token, "role=read-only&format=env").await;
    assert_eq!(response.status(), 503);
    for (format, line) in audit_lines(&request_id(&response)) {
        assert!(
            line.contains("error") && !line.contains("allow"),
            "{format}: {line}"
        );
        let outcome = match format {
            "JSON" => r#""outcome":"error""#,
            _ => "outcome=\"error\"",
        };
        assert!(without_colours(&line).contains(outcome), "{format}: {line}");
    }
}

/// `text` without its ANSI colour sequences (`ESC [ … m`).
fn without_colours(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_cannot_be_checked_for_want_of_keys_is_audited_as_an_error() {
    // The same `outcome` as the `Decisions{Outcome=error}` metric line of that request.
    captured_logs();
    let issuer = local_issuer::LocalIssuer::start().await;
    issuer.set_mode(local_issuer::Mode::Down);
    let moto = moto::sdk_config();
    let app = Broker::start_with(issuer, Settings::default(), moto.clone(), moto).await;
    let token = app.token(json!({}));
    let response = app.credentials(&token, "role=read-only").await;
    assert_eq!(response.status(), 503);
    for (format, line) in audit_lines(&request_id(&response)) {
        let outcome = match format {
            "JSON" => r#""outcome":"error""#,
            _ => "outcome=\"error\"",
        };
        assert!(without_colours(&line).contains(outcome), "{format}: {line}");
    }
}
