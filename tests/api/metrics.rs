//! The EMF metric lines a broker writes, read from an in-memory sink and checked against the
//! structure CloudWatch's Embedded Metric Format specification requires; and that no line ever
//! carries a token, a credential or a value the caller chose.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use local_issuer::Mode;
use local_issuer::kms::{KeySpec, KmsMode, LocalKms};
use serde_json::{Map, Value, json};
use token_broker::metrics::Metrics;
use token_broker::startup::Operations;

use crate::helpers::*;

const NAMESPACE: &str = "TokenBroker/test";

/// The one place these tests start a broker: [`POLICY`], KMS the stand-in `kms`, JWKS refetched
/// on every unknown `kid` (no cooldown), metric lines kept in the returned sink.
async fn measured_app(kms: &LocalKms, key: &str) -> (TestApp, Metrics) {
    let metrics = Metrics::in_memory(NAMESPACE);
    let mut spec = signing_with(kms, key, &[]);
    spec.settings.jwks.cooldown = Duration::ZERO;
    spec.settings.jwks.failure_backoff = Duration::ZERO;
    spec.operations = Operations {
        metrics: metrics.clone(),
        ..Operations::default()
    };
    (spawn_app_with(spec).await, metrics)
}

/// Checks one line against the EMF specification: a JSON object with `_aws.Timestamp` (epoch
/// milliseconds) and a non-empty `_aws.CloudWatchMetrics`, each directive with a `Namespace`,
/// `Dimensions` (arrays of at most 30 keys, each a string member of the root) and `Metrics`
/// (at most 100, each `Name` a numeric member of the root, `Unit` a CloudWatch unit). Returns
/// the root.
fn emf(line: &str) -> Map<String, Value> {
    let root: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let root = root
        .as_object()
        .expect("the line is one JSON object")
        .clone();
    let aws = root["_aws"].as_object().expect("_aws is an object");
    let timestamp = aws["Timestamp"].as_u64().expect("_aws.Timestamp in ms");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    assert!(
        now.as_millis().abs_diff(u128::from(timestamp)) < 60_000,
        "{line}"
    );
    let directives = aws["CloudWatchMetrics"].as_array().expect("directives");
    assert!(!directives.is_empty(), "{line}");
    for directive in directives {
        assert_eq!(directive["Namespace"], NAMESPACE, "{line}");
        for set in directive["Dimensions"].as_array().expect("dimension sets") {
            let keys = set.as_array().expect("a dimension set is an array");
            assert!(keys.len() <= 30, "{line}");
            for key in keys {
                let key = key.as_str().expect("dimension keys are strings");
                assert!(root[key].is_string(), "dimension {key} is a member: {line}");
            }
        }
        let metrics = directive["Metrics"].as_array().expect("metric definitions");
        assert!(!metrics.is_empty() && metrics.len() <= 100, "{line}");
        for metric in metrics {
            let name = metric["Name"].as_str().expect("Name");
            assert!(root[name].is_number(), "metric {name} is a member: {line}");
            let unit = metric["Unit"].as_str().unwrap_or("None");
            assert!(["Count", "Milliseconds", "None"].contains(&unit), "{line}");
        }
    }
    root
}

/// The decision lines' roots, in order.
fn decisions(metrics: &Metrics) -> Vec<Map<String, Value>> {
    metrics
        .lines()
        .iter()
        .map(|line| emf(line))
        .filter(|root| root.contains_key("Decisions"))
        .collect()
}

/// `(Outcome, Role or Audience)` of a decision line.
fn dimensions(root: &Map<String, Value>) -> (String, String) {
    let subject = root.get("Role").or_else(|| root.get("Audience")).unwrap();
    (
        root["Outcome"].as_str().unwrap().to_owned(),
        subject.as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn every_decision_writes_one_emf_line_counted_by_outcome_and_policy_name() {
    let (kms, key) = kms_stand_in(KeySpec::Rsa2048).await;
    let (app, metrics) = measured_app(&kms, &key).await;
    let (token, _) = app.token(json!({}));
    let (feature, _) = app.token(json!({"ref": "feature/x"}));
    let (other_aud, _) = app.token(json!({"aud": "https://elsewhere.example"}));
    assert_eq!(
        app.credentials(&token, "role=read-only").await.status(),
        200
    );
    assert_eq!(
        app.credentials(&feature, "role=deploy-web-prod")
            .await
            .status(),
        403
    );
    assert_eq!(
        app.credentials(&other_aud, "role=read-only").await.status(),
        401
    );
    assert_eq!(
        app.exchange(&token, "sts.amazonaws.com").await.status(),
        200
    );
    kms.set_mode(KmsMode::Fail {
        status: 500,
        code: "KMSInternalException",
    });
    assert_eq!(
        app.exchange(&token, "sts.amazonaws.com").await.status(),
        503
    );

    let lines = decisions(&metrics);
    let seen: Vec<(String, String)> = lines.iter().map(dimensions).collect();
    let expected = [
        ("allow", "read-only"),
        ("deny", "deploy-web-prod"),
        ("invalid_token", "read-only"),
        ("allow", "sts.amazonaws.com"),
        ("error", "sts.amazonaws.com"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(seen, expected);
    for line in &lines {
        assert_eq!(line["Decisions"], 1);
        assert!(line["ExchangeLatency"].as_f64().unwrap() >= 0.0);
        assert_eq!(line["StsErrors"], 0);
    }
    assert_eq!(lines[4]["KmsErrors"], 1, "the KMS failure is counted");
    assert_eq!(lines[3]["KmsErrors"], 0);
}

#[tokio::test]
async fn no_metric_line_carries_a_token_a_credential_or_a_value_the_caller_chose() {
    let (kms, key) = kms_stand_in(KeySpec::Rsa2048).await;
    let (app, metrics) = measured_app(&kms, &key).await;
    let (token, _) = app.token(json!({}));
    let response = app.credentials(&token, "role=read-only").await;
    let credentials: Value = response.json().await.unwrap();
    let chosen_role = "attacker-chosen-role-7f3a";
    let chosen_audience = "https://attacker-chosen.example/7f3a";
    assert_eq!(
        app.credentials(&token, &format!("role={chosen_role}"))
            .await
            .status(),
        403
    );
    assert_eq!(app.exchange(&token, chosen_audience).await.status(), 400);
    let issued = app.exchange(&token, "sts.amazonaws.com").await;
    let issued: Value = issued.json().await.unwrap();

    let lines = metrics.lines();
    assert_eq!(decisions(&metrics).len(), 4);
    let secrets = [
        token.as_str(),
        credentials["AccessKeyId"].as_str().unwrap(),
        credentials["SecretAccessKey"].as_str().unwrap(),
        credentials["SessionToken"].as_str().unwrap(),
        issued["access_token"].as_str().unwrap(),
        chosen_role,
        chosen_audience,
        "attacker-chosen",
        "acme/web",
    ];
    for line in &lines {
        for secret in secrets {
            assert!(!line.contains(secret), "{secret:?} in {line}");
        }
    }
    let subjects: Vec<String> = decisions(&metrics)
        .iter()
        .map(|root| dimensions(root).1)
        .collect();
    assert_eq!(
        subjects,
        ["read-only", "unknown", "unknown", "sts.amazonaws.com"]
    );
}

#[tokio::test]
async fn a_failed_jwks_fetch_writes_a_jwks_fetch_failures_line() {
    let (kms, key) = kms_stand_in(KeySpec::Rsa2048).await;
    let (app, metrics) = measured_app(&kms, &key).await;
    app.issuer.set_mode(Mode::Down);
    app.issuer.rotate();
    let (token, _) = app.token(json!({}));
    let response = app.credentials(&token, "role=read-only").await;
    assert_eq!(response.status(), 503);
    let failures: Vec<_> = metrics
        .lines()
        .iter()
        .map(|line| emf(line))
        .filter(|root| root.contains_key("JwksFetchFailures"))
        .collect();
    assert_eq!(failures.len(), 1, "{:?}", metrics.lines());
    assert_eq!(failures[0]["JwksFetchFailures"], 1);
    let decided: Vec<_> = decisions(&metrics).iter().map(dimensions).collect();
    assert_eq!(decided, [("error".to_owned(), "read-only".to_owned())]);
}

#[tokio::test]
async fn a_failed_sts_call_is_counted_as_an_sts_error() {
    let sts = local_issuer::sts::LocalSts::start_on("127.0.0.1:0").await;
    sts.set_mode(local_issuer::sts::StsMode::ServerError);
    let metrics = Metrics::in_memory(NAMESPACE);
    let mut spec = sts_at(sts.url());
    spec.operations = Operations {
        metrics: metrics.clone(),
        ..Operations::default()
    };
    let app = spawn_app_with(spec).await;
    let (token, _) = app.token(json!({}));
    let response = app.credentials(&token, "role=read-only").await;
    assert_eq!(response.status(), 503);
    let lines = decisions(&metrics);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(dimensions(&lines[0]), ("error".into(), "read-only".into()));
    assert_eq!(lines[0]["StsErrors"], 1, "the STS failure is counted");
    assert_eq!(lines[0]["KmsErrors"], 0);
}
