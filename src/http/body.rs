//! What every route reads and writes: the media type a body must have, JSON responses no cache
//! may keep, and the `x-request-id` header.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use serde::Serialize;

use super::error::{ApiError, ErrorCode};

/// Refuses (415) a body whose Content-Type is not `expected` (parameters such as `charset` aside).
pub fn require_media_type(request: &Request<Bytes>, expected: &str) -> Result<(), ApiError> {
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if media_type.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("the request body must be {expected}"),
        ))
    }
}

/// A JSON response that no cache may keep (it may carry credentials).
pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Bytes> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Bytes::from(bytes));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `x-request-id`, the same id the body of an error and the audit line carry.
pub fn set_request_id(response: &mut Response<Bytes>, request_id: &str) {
    if let Ok(id) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", id);
    }
}

/// A caller-chosen name as an error message may repeat it: a misspelt parameter (`duration`) is
/// named, anything else is not, since a job that pastes its token into the query string would
/// otherwise get part of it back in the answer, and in its log.
pub fn caller_name(name: &str) -> String {
    let plain =
        (1..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if plain {
        name.to_owned()
    } else {
        "…".to_owned()
    }
}
