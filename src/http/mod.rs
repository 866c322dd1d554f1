//! The router, shared by Lambda and `token-broker serve`: request parsing, the error → status
//! mapping, and response bodies. The only module that knows HTTP.

use bytes::Bytes;
use http::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::broker::{BrokerError, CredentialsRequest, Issued};
use crate::oidc::token::MAX_TOKEN_BYTES;
use crate::secret::Secret;
use crate::startup::AppState;

/// Largest request body read: room for a form that carries a token of the largest size taken.
pub const MAX_BODY_BYTES: usize = MAX_TOKEN_BYTES + 4 * 1024;
/// Seconds a caller should wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "5";

mod issuer;

#[doc(hidden)]
pub use issuer::parse_token_exchange_request;

/// What the transport knows about a request that the HTTP message does not carry.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// Lambda's request id, or a fresh UUID locally.
    pub request_id: String,
    /// The broker's public base URL as the transport knows it (in Lambda `https://` plus the
    /// Function URL domain AWS reports, under `serve` the listen address); never a client header.
    pub origin: Option<String>,
}

/// An error response in the OAuth style.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    description: String,
    /// The methods a 405's `Allow` header lists.
    allow: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        description: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            description: description.into(),
            allow: None,
        }
    }

    /// 405, with the route's methods in `Allow` (RFC 9110 §15.5.6).
    fn method_not_allowed(allow: &'static str) -> Self {
        let mut error = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            format!("method not allowed: use {allow}"),
        );
        error.allow = Some(allow);
        error
    }

    /// 400 `invalid_request`.
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn invalid_token(description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_token", description)
    }

    /// The response, with `request_id` in the body and in `x-request-id`.
    pub fn into_response(self, request_id: &str) -> Response<Bytes> {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
            error_description: &'a str,
            request_id: &'a str,
        }
        let body = Body {
            error: self.code,
            error_description: &self.description,
            request_id,
        };
        let mut response = json_response(self.status, &body);
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer error="invalid_token""#),
            );
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
        }
        if let Some(allow) = self.allow {
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        set_request_id(&mut response, request_id);
        response
    }
}

impl From<BrokerError> for ApiError {
    fn from(error: BrokerError) -> Self {
        use crate::aws::sts::StsError;
        let description = error.to_string();
        match error {
            BrokerError::InvalidToken(e) if e.is_retryable() => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                description,
            ),
            BrokerError::InvalidToken(_) => Self::invalid_token(description),
            BrokerError::AccessDenied(_) => {
                Self::new(StatusCode::FORBIDDEN, "access_denied", description)
            }
            BrokerError::Sts(StsError::Unavailable { .. }) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                description,
            ),
            BrokerError::Sts(StsError::Refused { .. }) => {
                Self::new(StatusCode::BAD_GATEWAY, "server_error", description)
            }
            BrokerError::Kms(crate::aws::kms::KmsError::Unavailable { .. }) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                description,
            ),
            // A key KMS refuses stays refused until someone fixes it: no Retry-After.
            BrokerError::Kms(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                description,
            ),
            BrokerError::NoSigningKey => Self::new(StatusCode::NOT_FOUND, "not_found", description),
        }
    }
}

/// Routes one request. Never panics on input; every failure is a JSON error.
pub async fn handle(
    state: &AppState,
    request: Request<Bytes>,
    meta: RequestMeta,
) -> Response<Bytes> {
    // Lambda hands over bodies of up to 6 MB; no route needs more than 16 KiB.
    let routed = if request.body().len() > MAX_BODY_BYTES {
        Err(ApiError::invalid_request(format!(
            "request body exceeds {MAX_BODY_BYTES} bytes"
        )))
    } else {
        route(state, &request, &meta).await
    };
    match routed {
        Ok(mut response) => {
            set_request_id(&mut response, &meta.request_id);
            response
        }
        Err(error) => error.into_response(&meta.request_id),
    }
}

/// `x-request-id`, the same id the body of an error and the audit line carry.
fn set_request_id(response: &mut Response<Bytes>, request_id: &str) {
    if let Ok(id) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", id);
    }
}

async fn route(
    state: &AppState,
    request: &Request<Bytes>,
    meta: &RequestMeta,
) -> Result<Response<Bytes>, ApiError> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ok"}),
        )),
        (&Method::POST, "/v1/credentials") => credentials(state, request, meta).await,
        (&Method::POST, "/v1/token") => issuer::token(state, request, meta).await,
        (&Method::GET, "/.well-known/openid-configuration") => issuer::discovery(state, meta).await,
        (&Method::GET, "/.well-known/jwks.json") => issuer::jwks(state).await,
        (_, "/v1/credentials" | "/v1/token") => Err(ApiError::method_not_allowed("POST")),
        (_, "/healthz" | "/.well-known/openid-configuration" | "/.well-known/jwks.json") => {
            Err(ApiError::method_not_allowed("GET"))
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route",
        )),
    }
}

async fn credentials(
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
        check_role_name(&role)?;
        let duration_seconds = one_of(
            "duration_seconds",
            query.duration_seconds,
            body.duration_seconds,
        )?;
        if let Some(seconds) = duration_seconds
            && !(900..=43_200).contains(&seconds)
        {
            return Err(ApiError::invalid_request(
                "`duration_seconds` must be between 900 and 43200",
            ));
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
                    "query parameter `{name}` is repeated"
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
                        shortened(&name)
                    )));
                }
            }
        }
        Ok(parsed)
    }
}

/// A caller-chosen name, cut to a length that keeps an error message readable.
fn shortened(name: &str) -> String {
    const MAX_CHARS: usize = 64;
    match name.char_indices().nth(MAX_CHARS) {
        Some((at, _)) => format!("{}…", &name[..at]),
        None => name.to_owned(),
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

fn check_role_name(role: &str) -> Result<(), ApiError> {
    let legal = (1..=64).contains(&role.len())
        && role
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if legal {
        Ok(())
    } else {
        Err(ApiError::invalid_request("`role` is not a role name"))
    }
}

/// The bearer token, size-capped before anything else reads it.
fn bearer_token(request: &Request<Bytes>) -> Result<Secret, ApiError> {
    let mut values = request.headers().get_all(AUTHORIZATION).iter();
    let header = match (values.next(), values.next()) {
        (Some(value), None) => value,
        (None, _) => {
            return Err(ApiError::invalid_token(
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
        .map_err(|_| ApiError::invalid_token("the Authorization header is not ASCII"))?;
    match text.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Secret::new(token.trim()))
        }
        _ => Err(ApiError::invalid_token(
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

/// Refuses (415) a body whose Content-Type is not `expected` (parameters such as `charset` aside).
fn require_media_type(request: &Request<Bytes>, expected: &str) -> Result<(), ApiError> {
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
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            format!("the request body must be {expected}"),
        ))
    }
}

/// A JSON response that no cache may keep (it may carry credentials).
fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Bytes> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Bytes::from(bytes));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
