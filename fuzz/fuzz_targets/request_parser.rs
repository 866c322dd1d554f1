//! The request parsers of `POST /v1/credentials` (query string, JSON body, `Authorization`) and
//! `POST /v1/token` (RFC 8693 form body). Contract: never panic, and every refusal is a 4xx
//! response with a JSON body.
//!
//! Input, split on the first three newlines: `QUERY \n CONTENT-TYPE \n AUTHORIZATION \n BODY`.
//! An empty CONTENT-TYPE or AUTHORIZATION line sends no such header; NUL bytes in AUTHORIZATION
//! separate several `Authorization` headers. BODY is the rest, any bytes. Both parsers read the
//! same request.

#![no_main]

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Uri};
use libfuzzer_sys::fuzz_target;
use token_broker::http::{ApiError, parse_credentials_request, parse_token_exchange_request};

fuzz_target!(|data: &[u8]| {
    let mut fields = data.splitn(4, |&b| b == b'\n');
    let query = fields.next().unwrap_or_default();
    let content_type = fields.next().unwrap_or_default();
    let authorization = fields.next().unwrap_or_default();
    let body = fields.next().unwrap_or_default();

    let Some(request) = request(query, content_type, authorization, body) else {
        // The HTTP layer cannot represent it, so it never reaches the parsers.
        return;
    };
    if let Err(error) = parse_credentials_request(&request) {
        check_error(error);
    }
    if let Err(error) = parse_token_exchange_request(&request) {
        check_error(error);
    }
});

fn request(
    query: &[u8],
    content_type: &[u8],
    authorization: &[u8],
    body: &[u8],
) -> Option<Request<Bytes>> {
    let mut target = b"/v1/credentials".to_vec();
    if !query.is_empty() {
        target.push(b'?');
        target.extend_from_slice(query);
    }
    let uri = Uri::from_maybe_shared(Bytes::from(target)).ok()?;
    let mut request = Request::new(Bytes::copy_from_slice(body));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    if !content_type.is_empty() {
        headers.insert(CONTENT_TYPE, HeaderValue::from_bytes(content_type).ok()?);
    }
    if !authorization.is_empty() {
        for value in authorization.split(|&b| b == 0) {
            headers.append(AUTHORIZATION, HeaderValue::from_bytes(value).ok()?);
        }
    }
    Some(request)
}

/// A refusal is the caller's fault (4xx) and renders as a JSON error object.
fn check_error(error: ApiError) {
    let response = error.into_response("fuzz");
    assert!(
        response.status().is_client_error(),
        "a request parser answered {}",
        response.status()
    );
    let body: serde_json::Value =
        serde_json::from_slice(response.body()).expect("an error body is JSON");
    assert!(
        body["error"].is_string(),
        "an error body has `error`: {body}"
    );
}
