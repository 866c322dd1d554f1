//! The router, shared by Lambda and `token-broker serve`, and the only module that knows HTTP:
//! [`handle`] caps the body and stamps the request id, [`route`] picks the route. Each route
//! lives in its own file with its parsers and renderers; [`error`] maps failures to statuses.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};

use crate::oidc::token::MAX_TOKEN_BYTES;
use crate::startup::AppState;

mod body;
mod credentials;
mod discovery;
mod error;
mod token;

pub use credentials::parse_credentials_request;
pub use error::{ApiError, ErrorCode};
pub use token::parse_token_exchange_request;

/// Largest request body read: room for a form that carries a token of the largest size taken.
pub const MAX_BODY_BYTES: usize = MAX_TOKEN_BYTES + 4 * 1024;

/// What the transport knows about a request that the HTTP message does not carry.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// Lambda's request id, or a fresh UUID locally.
    pub request_id: String,
    /// The broker's public base URL as the transport knows it (in Lambda `https://` plus the
    /// Function URL domain AWS reports, under `serve` the listen address); never a client header.
    pub origin: Option<String>,
}

/// Routes one request. Never panics on input; every failure is a JSON error.
pub async fn handle(
    state: &AppState,
    request: Request<Bytes>,
    meta: RequestMeta,
) -> Response<Bytes> {
    // Lambda hands over bodies of up to 6 MB; no route needs more than MAX_BODY_BYTES.
    let routed = if request.body().len() > MAX_BODY_BYTES {
        Err(ApiError::invalid_request(format!(
            "request body exceeds {MAX_BODY_BYTES} bytes"
        )))
    } else {
        route(state, &request, &meta).await
    };
    match routed {
        Ok(mut response) => {
            body::set_request_id(&mut response, &meta.request_id);
            response
        }
        Err(error) => error.into_response(&meta.request_id),
    }
}

async fn route(
    state: &AppState,
    request: &Request<Bytes>,
    meta: &RequestMeta,
) -> Result<Response<Bytes>, ApiError> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => Ok(body::json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ok"}),
        )),
        (&Method::POST, "/v1/credentials") => credentials::post(state, request, meta).await,
        (&Method::POST, "/v1/token") => token::post(state, request, meta).await,
        (&Method::GET, "/.well-known/openid-configuration") => {
            discovery::configuration(state, meta).await
        }
        (&Method::GET, "/.well-known/jwks.json") => discovery::jwks(state).await,
        (_, "/v1/credentials" | "/v1/token") => Err(ApiError::method_not_allowed("POST")),
        (_, "/healthz" | "/.well-known/openid-configuration" | "/.well-known/jwks.json") => {
            Err(ApiError::method_not_allowed("GET"))
        }
        _ => Err(ApiError::new(ErrorCode::NotFound, "no such route")),
    }
}
