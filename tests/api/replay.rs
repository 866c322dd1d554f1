//! The replay guard (`token_uses`) against moto's DynamoDB: a token is exchanged at most
//! `token_uses` times per grant, across any number of concurrent requests; a use that issued
//! nothing is given back; a table that cannot be reached fails closed.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TimeToLiveSpecification,
};
use local_issuer::kms::{KeySpec, KmsMode, LocalKms};
use serde_json::json;
use token_broker::aws::replay::{
    HOLDERS_ATTRIBUTE, KEY_ATTRIBUTE, ReplayTable, TTL_ATTRIBUTE, UseKey,
};
use token_broker::policy::GrantKind;
use token_broker::startup::Operations;

use aws_sdk_sts::config::Credentials;

use crate::helpers::*;

/// [`POLICY`] with every grant limited to one use per token, and role `tagged` to two.
fn guarded_policy() -> String {
    format!("token_uses = 1\n{POLICY}").replacen(
        "session_tags = [\"ref\"]",
        "session_tags = [\"ref\"]\ntoken_uses = 2",
        1,
    )
}

/// A fresh replay table in moto, keyed and expiring as template.yaml's; returns its name.
pub async fn moto_table() -> String {
    let client = aws_sdk_dynamodb::Client::new(&moto::sdk_config());
    let name = format!("replay-{}", unique_job_id());
    client
        .create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(KEY_ATTRIBUTE)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(KEY_ATTRIBUTE)
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    client
        .update_time_to_live()
        .table_name(&name)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name(TTL_ATTRIBUTE)
                .enabled(true)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    name
}

/// The one place these tests start a broker: [`guarded_policy`], the replay table at `sdk`
/// (moto, or somewhere unreachable), and KMS the stand-in `kms` when given.
async fn guarded_app(
    table: &str,
    sdk: &aws_config::SdkConfig,
    kms: Option<(&LocalKms, &str)>,
) -> TestApp {
    let spec = match kms {
        Some((kms, key)) => signing_with(kms, key, &[]),
        None => AppSpec::default(),
    };
    let operations = Operations {
        replay: Some(ReplayTable::new(
            sdk,
            table.to_owned(),
            spec.settings.leeway,
        )),
        ..Operations::default()
    };
    spawn_app_with(AppSpec {
        policy: guarded_policy(),
        operations,
        ..spec
    })
    .await
}

async fn status_of(response: reqwest::Response) -> u16 {
    response.status().as_u16()
}

#[tokio::test]
async fn a_token_exchanged_once_is_refused_the_second_time_with_a_clear_403() {
    let app = guarded_app(&moto_table().await, &moto::sdk_config(), None).await;
    let (token, _) = app.token(json!({}));
    assert_eq!(
        status_of(app.credentials(&token, "role=read-only").await).await,
        200
    );
    let replay = app.credentials(&token, "role=read-only").await;
    app.assert_error(replay, 403, "access_denied", "already exchanged 1 time(s)")
        .await;
    let (fresh, _) = app.token(json!({}));
    assert_eq!(
        status_of(app.credentials(&fresh, "role=read-only").await).await,
        200,
        "another job's token has its own count"
    );
}

#[tokio::test]
async fn another_grant_counts_the_same_token_within_its_own_limit() {
    let app = guarded_app(&moto_table().await, &moto::sdk_config(), None).await;
    let (token, _) = app.token(json!({}));
    assert_eq!(
        status_of(app.credentials(&token, "role=read-only").await).await,
        200
    );
    for use_number in 1..=2 {
        let response = app.credentials(&token, "role=tagged").await;
        assert_eq!(status_of(response).await, 200, "use {use_number} of 2");
    }
    let third = app.credentials(&token, "role=tagged").await;
    app.assert_error(third, 403, "access_denied", r#"role "tagged""#)
        .await;
    let again = app.credentials(&token, "role=read-only").await;
    assert_eq!(again.status(), 403);
    app.assert_error(again, 403, "access_denied", "already exchanged 1 time(s)")
        .await;
}

#[tokio::test]
async fn fifty_concurrent_exchanges_of_one_token_issue_exactly_token_uses_credentials() {
    let app = guarded_app(&moto_table().await, &moto::sdk_config(), None).await;
    for (role, limit) in [("read-only", 1), ("tagged", 2)] {
        let (token, job_id) = app.token(json!({}));
        let query = format!("role={role}");
        let requests = (0..50).map(|_| app.credentials(&token, &query));
        let statuses: Vec<u16> = futures_util::future::join_all(
            futures_util::future::join_all(requests)
                .await
                .into_iter()
                .map(status_of),
        )
        .await;
        let issued = statuses.iter().filter(|s| **s == 200).count();
        let refused = statuses.iter().filter(|s| **s == 403).count();
        assert_eq!(
            (issued, refused),
            (limit, 50 - limit),
            "{role}: {statuses:?}"
        );
        let calls = recorded_assume_roles(&format!("gitlab-4242-{job_id}")).await;
        assert_eq!(
            calls.len(),
            limit,
            "{role}: STS is called only for the uses taken"
        );
    }
}

#[tokio::test]
async fn a_use_sts_failed_is_given_back_too() {
    let sts = local_issuer::sts::LocalSts::start_on("127.0.0.1:0").await;
    sts.set_mode(local_issuer::sts::StsMode::ServerError);
    let spec = sts_at(sts.url());
    let operations = Operations {
        replay: Some(ReplayTable::new(
            &moto::sdk_config(),
            moto_table().await,
            spec.settings.leeway,
        )),
        ..Operations::default()
    };
    let app = spawn_app_with(AppSpec {
        policy: guarded_policy(),
        operations,
        ..spec
    })
    .await;
    let (token, _) = app.token(json!({}));
    let failed = app.credentials(&token, "role=read-only").await;
    app.assert_error(failed, 503, "temporarily_unavailable", "STS")
        .await;
    sts.set_mode(local_issuer::sts::StsMode::Ok);
    assert_eq!(
        status_of(app.credentials(&token, "role=read-only").await).await,
        200,
        "the failed attempt did not spend the token's one use"
    );
    let replay = app.credentials(&token, "role=read-only").await;
    app.assert_error(replay, 403, "access_denied", "already exchanged 1 time(s)")
        .await;
}

#[tokio::test]
async fn a_use_that_issued_nothing_is_given_back_so_the_job_can_retry() {
    let (kms, key) = kms_stand_in(KeySpec::Rsa2048).await;
    let app = guarded_app(&moto_table().await, &moto::sdk_config(), Some((&kms, &key))).await;
    let (token, _) = app.token(json!({}));
    kms.set_mode(KmsMode::Fail {
        status: 400,
        code: "DisabledException",
    });
    assert_eq!(
        status_of(app.exchange(&token, "sts.amazonaws.com").await).await,
        500
    );
    kms.set_mode(KmsMode::Up);
    assert_eq!(
        status_of(app.exchange(&token, "sts.amazonaws.com").await).await,
        200,
        "the failed attempt did not spend the token's one use"
    );
    let replay = app.exchange(&token, "sts.amazonaws.com").await;
    assert_eq!(replay.status(), 400, "invalid_target: already used");
    app.assert_error(replay, 400, "invalid_target", "already exchanged 1 time(s)")
        .await;
}

#[tokio::test]
async fn an_unreachable_table_fails_closed_with_503_and_sts_is_never_called() {
    let unreachable = sdk_config_for(
        "http://127.0.0.1:1",
        Credentials::new("testing", "testing", None, None, "tests"),
    );
    let app = guarded_app("replay", &unreachable, None).await;
    let response = fails_closed(&app).await;
    assert_eq!(response.headers()["retry-after"], "5");
    app.assert_error(response, 503, "temporarily_unavailable", "replay guard")
        .await;
}

/// A credentials request the guard cannot count: its answer, after checking STS was never called.
async fn fails_closed(app: &TestApp) -> reqwest::Response {
    let (token, job_id) = app.token(json!({}));
    let response = app.credentials(&token, "role=read-only").await;
    assert!(
        recorded_assume_roles(&format!("gitlab-4242-{job_id}"))
            .await
            .is_empty()
    );
    response
}

#[tokio::test]
async fn a_table_dynamodb_refuses_fails_closed_with_500_and_no_retry_after() {
    // No such table in moto: ResourceNotFoundException, which no retry will cure.
    let app = guarded_app("no-such-replay-table", &moto::sdk_config(), None).await;
    let response = fails_closed(&app).await;
    assert!(response.headers().get("retry-after").is_none());
    app.assert_error(response, 500, "server_error", "ResourceNotFoundException")
        .await;
}

#[tokio::test]
async fn a_grant_with_token_uses_refuses_a_token_without_jti() {
    let app = guarded_app(&moto_table().await, &moto::sdk_config(), None).await;
    let (token, _) = app.token(json!({"jti": null}));
    let response = app.credentials(&token, "role=read-only").await;
    app.assert_error(response, 403, "access_denied", r#"claim "jti""#)
        .await;
}

#[tokio::test]
async fn each_count_expires_when_its_token_can_no_longer_be_accepted() {
    let table = moto_table().await;
    let app = guarded_app(&table, &moto::sdk_config(), None).await;
    let (claims, _) = app.claims(json!({}));
    let token = app.issuer.mint(&claims);
    assert_eq!(
        status_of(app.credentials(&token, "role=read-only").await).await,
        200
    );
    let key = UseKey::new(
        GrantKind::Role,
        "read-only",
        app.issuer.url(),
        claims["jti"].as_str().unwrap(),
    );
    let item = aws_sdk_dynamodb::Client::new(&moto::sdk_config())
        .get_item()
        .table_name(&table)
        .key(
            KEY_ATTRIBUTE,
            aws_sdk_dynamodb::types::AttributeValue::S(key.id().to_owned()),
        )
        .send()
        .await
        .unwrap()
        .item
        .expect("one item for the token and grant");
    let number = |name: &str| item[name].as_n().unwrap().parse::<u64>().unwrap();
    assert_eq!(
        item[HOLDERS_ATTRIBUTE].as_ss().unwrap().len(),
        1,
        "one use held"
    );
    assert_eq!(number(TTL_ATTRIBUTE), claims["exp"].as_u64().unwrap() + 60);
    assert_eq!(item["grant"].as_s().unwrap(), "role:read-only");
    assert!(
        !item
            .values()
            .any(|v| v.as_s().is_ok_and(|s| s.contains(&token))),
        "the token itself is never stored"
    );
}

/// A DynamoDB endpoint that answers every request with `status` and `body`.
async fn dynamodb_answering(status: u16, body: &'static str) -> String {
    use http_body_util::Full;
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |_request| {
                    let mut response = hyper::Response::new(Full::new(bytes::Bytes::from(body)));
                    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                    response.headers_mut().insert(
                        "content-type",
                        "application/x-amz-json-1.0".parse().unwrap(),
                    );
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    url
}

#[tokio::test]
async fn a_throttled_table_is_a_503_a_table_answering_garbage_a_500_and_neither_reaches_sts() {
    const THROTTLED: &str = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"The level of configured provisioned throughput for the table was exceeded."}"#;
    for (status, body, answer, error, code) in [
        (
            400,
            THROTTLED,
            503,
            "temporarily_unavailable",
            "ProvisionedThroughputExceededException",
        ),
        (
            200,
            "<html>not DynamoDB</html>",
            500,
            "server_error",
            "BadResponse",
        ),
    ] {
        let url = dynamodb_answering(status, body).await;
        let sdk = sdk_config_for(&url, Credentials::new("t", "t", None, None, "tests"));
        let app = guarded_app("token-uses", &sdk, None).await;
        let response = fails_closed(&app).await;
        let retry_after = response.headers().get("retry-after").cloned();
        assert_eq!(retry_after.is_some(), answer == 503, "{code}");
        app.assert_error(response, answer, error, code).await;
    }
}
