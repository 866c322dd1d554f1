//! Every error the API answers: one [`ErrorCode`] per OAuth error the broker sends, with its wire
//! string and status, and the two mappings from the use case's errors side by side: bearer-token
//! style for `/v1/credentials` and the discovery routes, RFC 8693 for `/v1/token`.

use bytes::Bytes;
use http::header::{ALLOW, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use serde::Serialize;

use super::body::{json_response, set_request_id};
use crate::aws::kms::KmsError;
use crate::aws::replay::ReplayError;
use crate::aws::sts::StsError;
use crate::broker::BrokerError;

/// Seconds a caller should wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "5";

/// An OAuth error (RFC 6749 §5.2, RFC 6750 §3.1, RFC 8693 §2.2.2) and the status it goes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 400: a parameter is missing, repeated, unknown or malformed.
    InvalidRequest,
    /// 401: the bearer token failed a check.
    InvalidToken,
    /// 403: the policy admits nothing for the request.
    AccessDenied,
    /// 404: no such route, or no signing key for the issuer routes.
    NotFound,
    /// 405: the route exists for another method.
    MethodNotAllowed,
    /// 415: the body is not the route's media type.
    UnsupportedMediaType,
    /// 400 on `/v1/token`: the subject token failed a check.
    InvalidGrant,
    /// 400 on `/v1/token`: the policy issues no token for that audience to this caller.
    InvalidTarget,
    /// 400 on `/v1/token`: a grant type other than token exchange.
    UnsupportedGrantType,
    /// 500: the broker is misconfigured (a `token_uses` limit without a replay table) or KMS
    /// refuses its key; retrying cannot help.
    ServerError,
    /// 502: STS refused the call or answered something unusable.
    BadGateway,
    /// 503: an upstream (JWKS, STS, KMS, the replay table) is throttled, failing or slow; retry
    /// after `Retry-After`.
    TemporarilyUnavailable,
}

impl ErrorCode {
    /// The `error` member of the body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest | Self::MethodNotAllowed | Self::UnsupportedMediaType => {
                "invalid_request"
            }
            Self::InvalidToken => "invalid_token",
            Self::AccessDenied => "access_denied",
            Self::NotFound => "not_found",
            Self::InvalidGrant => "invalid_grant",
            Self::InvalidTarget => "invalid_target",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::ServerError | Self::BadGateway => "server_error",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidRequest
            | Self::InvalidGrant
            | Self::InvalidTarget
            | Self::UnsupportedGrantType => StatusCode::BAD_REQUEST,
            Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::AccessDenied => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// An error response: the code, a description that never echoes a token or an AWS message,
/// and for a 405 the methods the route takes.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    description: String,
    allow: Option<&'static str>,
}

impl ApiError {
    /// An error of `code` saying `description`.
    pub fn new(code: ErrorCode, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            allow: None,
        }
    }

    /// 400 `invalid_request`.
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, description)
    }

    /// 405, with the route's methods in `Allow` (RFC 9110 §15.5.6).
    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut error = Self::new(
            ErrorCode::MethodNotAllowed,
            format!("method not allowed: use {allow}"),
        );
        error.allow = Some(allow);
        error
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
            error: self.code.as_str(),
            error_description: &self.description,
            request_id,
        };
        let mut response = json_response(self.code.status(), &body);
        let headers = response.headers_mut();
        match self.code {
            ErrorCode::InvalidToken => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer error="invalid_token""#),
                );
            }
            ErrorCode::TemporarilyUnavailable => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
            }
            _ => {}
        }
        if let Some(allow) = self.allow {
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        set_request_id(&mut response, request_id);
        response
    }
}

/// `/v1/credentials` and the issuer's discovery routes: a bad token is a bearer-token 401, a
/// refusal 403; upstream trouble is 503 when a retry could help and 500/502 when it cannot.
impl From<BrokerError> for ApiError {
    fn from(error: BrokerError) -> Self {
        let code = match &error {
            BrokerError::InvalidToken(e) if e.is_retryable() => ErrorCode::TemporarilyUnavailable,
            BrokerError::InvalidToken(_) => ErrorCode::InvalidToken,
            BrokerError::AccessDenied(_) => ErrorCode::AccessDenied,
            BrokerError::Sts(StsError::Unavailable { .. }) => ErrorCode::TemporarilyUnavailable,
            BrokerError::Sts(StsError::Refused { .. }) => ErrorCode::BadGateway,
            BrokerError::Kms(KmsError::Unavailable { .. }) => ErrorCode::TemporarilyUnavailable,
            // A key KMS refuses stays refused until someone fixes it: no Retry-After.
            BrokerError::Kms(KmsError::Refused { .. }) => ErrorCode::ServerError,
            BrokerError::NoSigningKey => ErrorCode::NotFound,
            // Fail closed: without its table the guard cannot tell a replay from a first use.
            BrokerError::Replay(ReplayError::Unavailable { .. }) => {
                ErrorCode::TemporarilyUnavailable
            }
            // A table that is missing or not ours to write stays so until someone fixes it.
            BrokerError::Replay(ReplayError::NotConfigured | ReplayError::Refused { .. }) => {
                ErrorCode::ServerError
            }
        };
        Self::new(code, error.to_string())
    }
}

/// `/v1/token` (RFC 8693 §2.2.2): a bad subject token is `invalid_grant` and an audience the
/// policy does not grant `invalid_target`, both 400; everything else as for credentials.
pub fn exchange_error(error: BrokerError) -> ApiError {
    let code = match &error {
        BrokerError::InvalidToken(e) if !e.is_retryable() => ErrorCode::InvalidGrant,
        BrokerError::AccessDenied(_) => ErrorCode::InvalidTarget,
        _ => return error.into(),
    };
    ApiError::new(code, error.to_string())
}
