//! STS failures, from a local STS stand-in that answers AssumeRole with STS's own error
//! documents (moto never refuses an AssumeRole). Callers see the error code only: STS messages
//! name ARNs.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::helpers::*;

/// A local endpoint that answers every request with `status` and an STS error of `code`.
async fn failing_sts(status: u16, code: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let body = format!(
                        r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>{code}</Code><Message>User: arn:aws:sts::111122223333:assumed-role/broker/x is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::123456789012:role/deploy-web-prod</Message></Error><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ErrorResponse>"#
                    );
                    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                    response
                        .headers_mut()
                        .insert("content-type", "text/xml".parse().unwrap());
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, calls)
}

async fn app_with_sts(status: u16, code: &'static str) -> (TestApp, Arc<AtomicUsize>) {
    let (url, calls) = failing_sts(status, code).await;
    let app = spawn_app_with(sts_at(&url)).await;
    (app, calls)
}

#[tokio::test]
async fn a_target_role_that_does_not_trust_the_broker_is_a_502_with_the_code_only() {
    let (app, calls) = app_with_sts(403, "AccessDenied").await;
    let (token, _) = app.token(json!({}));
    let response = app.credentials(&token, "role=read-only").await;
    let body = app
        .assert_error(response, 502, "server_error", "AccessDenied")
        .await;
    assert!(
        !body.to_string().contains("arn:aws"),
        "STS's message must not reach the caller: {body}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a refusal is not retried");
}

#[tokio::test]
async fn sts_throttling_and_server_errors_are_retryable_503s() {
    for (status, code) in [
        (400, "Throttling"),
        (500, "InternalFailure"),
        (503, "ServiceUnavailable"),
    ] {
        let (app, calls) = app_with_sts(status, code).await;
        let (token, _) = app.token(json!({}));
        let response = app.credentials(&token, "role=read-only").await;
        assert_eq!(response.headers()["retry-after"], "5");
        let body = app
            .assert_error(response, 503, "temporarily_unavailable", code)
            .await;
        assert!(!body.to_string().contains("arn:aws"), "{body}");
        assert!(calls.load(Ordering::SeqCst) >= 1, "{code}");
    }
}

#[tokio::test]
async fn an_unreachable_sts_is_a_503() {
    // Port 1 (tcpmux) is privileged and never served here: a port picked free and released
    // again can be taken by another test's server before STS is called.
    let app = spawn_app_with(sts_at("http://127.0.0.1:1")).await;
    let (token, _) = app.token(json!({}));
    let response = app.credentials(&token, "role=read-only").await;
    app.assert_error(
        response,
        503,
        "temporarily_unavailable",
        "ConnectionFailure",
    )
    .await;
}
