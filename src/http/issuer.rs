//! The broker as an OIDC issuer: RFC 8693 token exchange (`POST /v1/token`), discovery and the
//! JWK set of its KMS keys. Errors follow RFC 8693 §2.2.2 / RFC 6749 §5.2.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use http::header::CACHE_CONTROL;
use http::{HeaderValue, Request, Response, StatusCode};
use serde_json::json;

use super::{ApiError, RequestMeta, json_response, require_media_type};
use crate::broker::BrokerError;
use crate::oidc::token::MAX_TOKEN_BYTES;
use crate::policy::{PROVENANCE_CLAIMS, REGISTERED_CLAIMS};
use crate::secret::Secret;
use crate::startup::AppState;

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
/// Discovery and keys change only with a deploy or a key rotation.
const PUBLIC_CACHE: &str = "public, max-age=300";

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
                    "parameter `{name}` is repeated"
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
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
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

/// `POST /v1/token`.
pub(super) async fn token(
    state: &AppState,
    request: &Request<Bytes>,
    meta: &RequestMeta,
) -> Result<Response<Bytes>, ApiError> {
    let exchange = Exchange::parse(request)?;
    let issuer = issuer(state, meta)?;
    let issued = state
        .broker
        .token(
            &exchange.subject_token,
            &exchange.audience,
            &issuer,
            &meta.request_id,
        )
        .await
        .map_err(token_error)?;
    let body = json!({
        "access_token": issued.token.expose(),
        "issued_token_type": TOKEN_TYPE_JWT,
        "token_type": "N_A",
        "expires_in": issued.expires_in,
    });
    Ok(json_response(StatusCode::OK, &body))
}

/// RFC 8693 §2.2.2: a bad subject token is `invalid_grant`, an audience the policy does not
/// grant is `invalid_target`.
fn token_error(error: BrokerError) -> ApiError {
    let description = error.to_string();
    match error {
        BrokerError::InvalidToken(e) if !e.is_retryable() => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
        }
        BrokerError::AccessDenied(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_target", description)
        }
        other => other.into(),
    }
}

/// `GET /.well-known/openid-configuration`.
pub(super) async fn discovery(
    state: &AppState,
    meta: &RequestMeta,
) -> Result<Response<Bytes>, ApiError> {
    let kms = state.broker.kms().ok_or(BrokerError::NoSigningKey)?;
    let keys = kms.keys().await.map_err(BrokerError::from)?;
    let issuer = issuer(state, meta)?;
    let algorithms: BTreeSet<&str> = keys.all.iter().map(|k| k.algorithm.jws()).collect();
    let policy = state.broker.policy();
    let claims: BTreeSet<&str> = REGISTERED_CLAIMS
        .into_iter()
        .chain(PROVENANCE_CLAIMS)
        .chain(
            policy
                .tokens
                .iter()
                .flat_map(|t| t.claims.iter().map(String::as_str)),
        )
        .collect();
    let document = json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "token_endpoint": format!("{issuer}/v1/token"),
        "grant_types_supported": [TOKEN_EXCHANGE],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algorithms,
        "claims_supported": claims,
    });
    Ok(cacheable(json_response(StatusCode::OK, &document)))
}

/// `GET /.well-known/jwks.json`: the active key and any retired keys.
pub(super) async fn jwks(state: &AppState) -> Result<Response<Bytes>, ApiError> {
    let kms = state.broker.kms().ok_or(BrokerError::NoSigningKey)?;
    let keys = kms.keys().await.map_err(BrokerError::from)?;
    let jwks: Vec<&serde_json::Value> = keys.all.iter().map(|k| &k.jwk).collect();
    Ok(cacheable(json_response(
        StatusCode::OK,
        &json!({ "keys": jwks }),
    )))
}

fn cacheable(mut response: Response<Bytes>) -> Response<Bytes> {
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static(PUBLIC_CACHE));
    response
}

/// `ISSUER_URL`, else what the transport says the broker's address is.
fn issuer(state: &AppState, meta: &RequestMeta) -> Result<String, ApiError> {
    state
        .issuer_url
        .clone()
        .or_else(|| meta.origin.clone())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the broker's issuer URL is unknown: set ISSUER_URL",
            )
        })
}
