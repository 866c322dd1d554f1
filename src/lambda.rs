//! The Lambda entry: a Function URL event (payload v2) becomes an `http::Request<Bytes>` for the
//! shared router, and its response goes back to the runtime.

use std::sync::Arc;

use bytes::Bytes;
use lambda_http::request::RequestContext;
use lambda_http::{Body, Error, RequestExt, service_fn};

use crate::http::{RequestMeta, handle};
use crate::startup::AppState;

/// Runs the Lambda runtime loop until the runtime stops it.
pub async fn run(state: Arc<AppState>) -> Result<(), Error> {
    lambda_http::run(service_fn(move |event: lambda_http::Request| {
        let state = state.clone();
        async move { Ok::<_, Error>(invoke(&state, event).await) }
    }))
    .await
}

/// The invocation's id (Function URLs use the same one in the event), so a caller's
/// `request_id` finds the log lines in CloudWatch.
fn request_id(event: &lambda_http::Request) -> String {
    let from_runtime = event
        .lambda_context_ref()
        .map(|context| context.request_id.clone());
    let from_event = match event.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(context)) => context.request_id.clone(),
        _ => None,
    };
    from_runtime
        .into_iter()
        .chain(from_event)
        .find(|id| !id.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// `https://` plus the Function URL domain from the event's request context, which AWS fills in
/// (unlike the Host header, which the caller chooses).
fn origin(event: &lambda_http::Request) -> Option<String> {
    match event.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(context)) => context
            .domain_name
            .as_ref()
            .map(|domain| format!("https://{domain}")),
        _ => None,
    }
}

/// Handles one event; public so tests can drive it with Function URL fixtures.
pub async fn invoke(state: &AppState, event: lambda_http::Request) -> lambda_http::Response<Body> {
    let request_id = request_id(&event);
    let origin = origin(&event);
    let (parts, body) = event.into_parts();
    let body = match body {
        Body::Empty => Bytes::new(),
        Body::Text(text) => Bytes::from(text),
        Body::Binary(bytes) => Bytes::from(bytes),
        _ => Bytes::new(),
    };
    let response = handle(
        state,
        http::Request::from_parts(parts, body),
        RequestMeta { request_id, origin },
    )
    .await;
    response.map(|bytes| match String::from_utf8(bytes.to_vec()) {
        Ok(text) => Body::Text(text),
        Err(error) => Body::Binary(error.into_bytes()),
    })
}
