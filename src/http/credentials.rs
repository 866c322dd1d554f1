//! `POST /v1/credentials`: its parameters (query string, optional JSON body, bearer token),
//! and its two renderings, credential_process JSON and shell `export` lines.

use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use serde::Deserialize;

use super::RequestMeta;
use super::body::{caller_name, json_response, require_media_type};
use super::error::{ApiError, ErrorCode};
use crate::aws::names::{RoleName, SessionDuration};
use crate::broker::{CredentialsRequest, Issued};
use crate::oidc::token::MAX_TOKEN_BYTES;
use crate::secret::Secret;
use crate::startup::AppState;

/// `POST /v1/credentials`: verify, decide, assume the role, render JSON or `export` lines.
pub(super) async fn post(
    state: &AppState,
    request: &Request<Bytes>,
    meta: &RequestMeta,
) -> Result<Response<Bytes>, ApiError> {
    let params = CredentialsParams::parse(request)?;
    let token = bearer_token(request)?;
    let issued = state
        .broker
        .credentials(&token, &params.request, &meta.request_id)
        .await?;
    Ok(match params.format {
        Format::Json => credentials_json(&issued),
        Format::Env => credentials_env(&issued),
    })
}

/// Runs the `POST /v1/credentials` request parsers (query string, JSON body and the
/// `Authorization` header) and nothing else. Exists only for the fuzzer (`fuzz/`), which must
/// reach these private parsers without a broker; not part of the API.
#[doc(hidden)]
pub fn parse_credentials_request(request: &Request<Bytes>) -> Result<(), ApiError> {
    let params = CredentialsParams::parse(request);
    let token = bearer_token(request);
    params?;
    token?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Env,
}

/// The parameters of `POST /v1/credentials`, from the query string and an optional JSON body.
#[derive(Debug)]
struct CredentialsParams {
    request: CredentialsRequest,
    format: Format,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBody {
    role: Option<String>,
    duration_seconds: Option<u64>,
}

impl CredentialsParams {
    fn parse(request: &Request<Bytes>) -> Result<Self, ApiError> {
        let query = Query::parse(request.uri().query().unwrap_or(""))?;
        let body = json_body(request)?;
        let role = one_of("role", query.role, body.role)?
            .ok_or_else(|| ApiError::invalid_request("`role` is required (query or JSON body)"))?;
        RoleName::parse(&role)
            .map_err(|_| ApiError::invalid_request("`role` is not a role name"))?;
        let duration_seconds = one_of(
            "duration_seconds",
            query.duration_seconds,
            body.duration_seconds,
        )?;
        if let Some(seconds) = duration_seconds {
            SessionDuration::parse(Duration::from_secs(seconds))
                .map_err(|why| ApiError::invalid_request(format!("`duration_seconds` {why}")))?;
        }
        Ok(Self {
            request: CredentialsRequest {
                role,
                duration_seconds,
            },
            format: query.format,
        })
    }
}

struct Query {
    role: Option<String>,
    duration_seconds: Option<u64>,
    format: Format,
}

impl Query {
    fn parse(query: &str) -> Result<Self, ApiError> {
        let mut parsed = Self {
            role: None,
            duration_seconds: None,
            format: Format::Json,
        };
        let mut seen = std::collections::HashSet::new();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if !seen.insert(name.clone()) {
                return Err(ApiError::invalid_request(format!(
                    "query parameter `{}` is repeated",
                    caller_name(&name)
                )));
            }
            match name.as_ref() {
                "role" => parsed.role = Some(value.into_owned()),
                "duration_seconds" => {
                    let seconds = value.parse().map_err(|_| {
                        ApiError::invalid_request(
                            "`duration_seconds` must be a whole number of seconds",
                        )
                    })?;
                    parsed.duration_seconds = Some(seconds);
                }
                "format" => {
                    parsed.format = match value.as_ref() {
                        "json" => Format::Json,
                        "env" => Format::Env,
                        _ => return Err(ApiError::invalid_request("`format` is `json` or `env`")),
                    }
                }
                _ => {
                    return Err(ApiError::invalid_request(format!(
                        "unknown query parameter `{}` (known: role, duration_seconds, format)",
                        caller_name(&name)
                    )));
                }
            }
        }
        Ok(parsed)
    }
}

fn json_body(request: &Request<Bytes>) -> Result<JsonBody, ApiError> {
    let body = request.body();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(JsonBody::default());
    }
    require_media_type(request, "application/json")?;
    serde_json::from_slice(body).map_err(|_| {
        ApiError::invalid_request(
            "the body must be a JSON object with `role` and optional `duration_seconds`",
        )
    })
}

fn one_of<T: PartialEq>(
    name: &str,
    query: Option<T>,
    body: Option<T>,
) -> Result<Option<T>, ApiError> {
    match (query, body) {
        (Some(_), Some(_)) => Err(ApiError::invalid_request(format!(
            "`{name}` is given in both the query and the body"
        ))),
        (query, body) => Ok(query.or(body)),
    }
}

/// The bearer token, size-capped before anything else reads it.
fn bearer_token(request: &Request<Bytes>) -> Result<Secret, ApiError> {
    let mut values = request.headers().get_all(AUTHORIZATION).iter();
    let header = match (values.next(), values.next()) {
        (Some(value), None) => value,
        (None, _) => {
            return Err(invalid_token(
                "missing `Authorization: Bearer <GitLab ID token>`",
            ));
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_request(
                "more than one Authorization header",
            ));
        }
    };
    if header.len() > MAX_TOKEN_BYTES + 7 {
        return Err(ApiError::invalid_request(format!(
            "the token exceeds {MAX_TOKEN_BYTES} bytes"
        )));
    }
    let text = header
        .to_str()
        .map_err(|_| invalid_token("the Authorization header is not ASCII"))?;
    match text.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Secret::new(token.trim()))
        }
        _ => Err(invalid_token(
            "the Authorization header must be `Bearer <token>`",
        )),
    }
}

/// credential_process output, plus informational fields the AWS tools ignore.
fn credentials_json(issued: &Issued) -> Response<Bytes> {
    let credentials = &issued.credentials;
    let body = serde_json::json!({
        "Version": 1,
        "AccessKeyId": credentials.access_key_id,
        "SecretAccessKey": credentials.secret_access_key.expose(),
        "SessionToken": credentials.session_token.expose(),
        "Expiration": credentials.expiration,
        "Role": issued.role,
        "AssumedRoleArn": credentials.assumed_role_arn,
        "SessionName": issued.session_name,
        "DurationSeconds": issued.duration_seconds,
    });
    json_response(StatusCode::OK, &body)
}

/// `export` lines for `eval "$(curl …)"`. Values are single-quoted; the STS adapter lets only
/// base64 characters through, so no value can end the quote.
fn credentials_env(issued: &Issued) -> Response<Bytes> {
    let credentials = &issued.credentials;
    let lines = [
        ("AWS_ACCESS_KEY_ID", credentials.access_key_id.as_str()),
        (
            "AWS_SECRET_ACCESS_KEY",
            credentials.secret_access_key.expose(),
        ),
        ("AWS_SESSION_TOKEN", credentials.session_token.expose()),
        ("AWS_CREDENTIAL_EXPIRATION", credentials.expiration.as_str()),
    ];
    let text: String = lines
        .iter()
        .map(|(name, value)| format!("export {name}='{value}'\n"))
        .collect();
    let mut response = Response::new(Bytes::from(text));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn invalid_token(description: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidToken, description)
}
