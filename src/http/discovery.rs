//! The broker as an OIDC issuer: its discovery document and the JWK set of its KMS keys, both
//! cacheable, and the issuer URL the token route signs as.

use std::collections::BTreeSet;

use bytes::Bytes;
use http::header::CACHE_CONTROL;
use http::{HeaderValue, Response, StatusCode};
use serde_json::json;

use super::RequestMeta;
use super::body::json_response;
use super::error::{ApiError, ErrorCode};
use crate::broker::BrokerError;
use crate::policy::{PROVENANCE_CLAIMS, REGISTERED_CLAIMS};
use crate::startup::AppState;

/// Discovery and keys change only with a deploy or a key rotation.
const PUBLIC_CACHE: &str = "public, max-age=300";

/// `GET /.well-known/openid-configuration`.
pub(super) async fn configuration(
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
        .chain(policy.token_claims())
        .collect();
    let document = json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "token_endpoint": format!("{issuer}/v1/token"),
        "grant_types_supported": [super::token::TOKEN_EXCHANGE],
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
pub(super) fn issuer(state: &AppState, meta: &RequestMeta) -> Result<String, ApiError> {
    state
        .issuer_url
        .clone()
        .or_else(|| meta.origin.clone())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::ServerError,
                "the broker's issuer URL is unknown: set ISSUER_URL",
            )
        })
}
