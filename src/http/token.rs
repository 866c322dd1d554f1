//! `POST /v1/token`: RFC 8693 token exchange. The form's parser and the answer; errors follow
//! RFC 8693 §2.2.2 / RFC 6749 §5.2 ([`exchange_error`]).

use std::collections::HashMap;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use serde_json::json;

use super::RequestMeta;
use super::body::{caller_name, json_response, require_media_type};
use super::discovery;
use super::error::{ApiError, ErrorCode, exchange_error};
use crate::oidc::token::MAX_TOKEN_BYTES;
use crate::secret::Secret;
use crate::startup::AppState;

/// The one grant type `/v1/token` serves (RFC 8693 §2.1).
pub(super) const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The token type of GitLab's ID token, and of the token the broker issues.
const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Also taken for the subject token: GitLab's is an OIDC ID token.
const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";

/// The parameters of a token exchange request.
#[derive(Debug)]
struct Exchange {
    subject_token: Secret,
    audience: String,
}

impl Exchange {
    fn parse(request: &Request<Bytes>) -> Result<Self, ApiError> {
        require_media_type(request, "application/x-www-form-urlencoded")?;
        let mut params: HashMap<String, String> = HashMap::new();
        for (name, value) in form_urlencoded::parse(request.body()) {
            if params
                .insert(name.to_string(), value.into_owned())
                .is_some()
            {
                return Err(ApiError::invalid_request(format!(
                    "parameter `{}` is repeated",
                    caller_name(&name)
                )));
            }
        }
        let get = |name: &str| params.get(name).map(String::as_str);
        // RFC 6749 §5.2: a missing parameter is a malformed request; a grant this endpoint does
        // not implement is `unsupported_grant_type`.
        let grant_type = get("grant_type")
            .filter(|g| !g.is_empty())
            .ok_or_else(|| ApiError::invalid_request("`grant_type` is required"))?;
        if grant_type != TOKEN_EXCHANGE {
            return Err(ApiError::new(
                ErrorCode::UnsupportedGrantType,
                format!("`grant_type` must be {TOKEN_EXCHANGE}"),
            ));
        }
        if get("actor_token").is_some() || get("actor_token_type").is_some() {
            return Err(ApiError::invalid_request(
                "delegation (`actor_token`) is not supported",
            ));
        }
        if !matches!(
            get("subject_token_type"),
            Some(TOKEN_TYPE_JWT | TOKEN_TYPE_ID_TOKEN)
        ) {
            return Err(ApiError::invalid_request(format!(
                "`subject_token_type` must be {TOKEN_TYPE_JWT} or {TOKEN_TYPE_ID_TOKEN}"
            )));
        }
        if get("requested_token_type").is_some_and(|t| t != TOKEN_TYPE_JWT) {
            return Err(ApiError::invalid_request(format!(
                "`requested_token_type` can only be {TOKEN_TYPE_JWT}"
            )));
        }
        let subject_token = get("subject_token").filter(|t| !t.is_empty());
        let subject_token = subject_token
            .ok_or_else(|| ApiError::invalid_request("`subject_token` is required"))?;
        if subject_token.len() > MAX_TOKEN_BYTES {
            return Err(ApiError::invalid_request(format!(
                "`subject_token` exceeds {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let audience = get("audience").filter(|a| !a.is_empty());
        let audience =
            audience.ok_or_else(|| ApiError::invalid_request("`audience` is required"))?;
        Ok(Self {
            subject_token: Secret::new(subject_token),
            audience: audience.to_owned(),
        })
    }
}

/// Runs the `POST /v1/token` (RFC 8693) form parser and nothing else. Exists only for the
/// fuzzer (`fuzz/`), which must reach this private parser without a broker; not part of the API.
#[doc(hidden)]
pub fn parse_token_exchange_request(request: &Request<Bytes>) -> Result<(), ApiError> {
    Exchange::parse(request).map(|_| ())
}

/// `POST /v1/token`: verify, decide, sign a token of the broker's own.
pub(super) async fn post(
    state: &AppState,
    request: &Request<Bytes>,
    meta: &RequestMeta,
) -> Result<Response<Bytes>, ApiError> {
    let exchange = Exchange::parse(request)?;
    let issuer = discovery::issuer(state, meta)?;
    let issued = state
        .broker
        .token(
            &exchange.subject_token,
            &exchange.audience,
            &issuer,
            &meta.request_id,
        )
        .await
        .map_err(exchange_error)?;
    let body = json!({
        "access_token": issued.token.expose(),
        "issued_token_type": TOKEN_TYPE_JWT,
        "token_type": "N_A",
        "expires_in": issued.expires_in,
    });
    Ok(json_response(StatusCode::OK, &body))
}
