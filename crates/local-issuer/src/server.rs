//! The HTTP side: GitLab's JWKS and discovery paths, plus `POST /-/mint` for the demo script.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::serve::{Handler, json as json_response};
use crate::{Mode, Shared, claims};

impl Handler for Shared {
    async fn respond(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/oauth/discovery/keys") => jwks(self).await,
            (&Method::GET, "/.well-known/openid-configuration") => json_response(&json!({
                "issuer": self.issuer,
                "jwks_uri": format!("{}/oauth/discovery/keys", self.issuer),
                "id_token_signing_alg_values_supported": ["RS256"],
            })),
            (&Method::POST, "/-/mint") => mint(self, request).await,
            _ => status(StatusCode::NOT_FOUND, ""),
        }
    }
}

async fn jwks(shared: &Shared) -> Response<Full<Bytes>> {
    shared.jwks_requests.fetch_add(1, Ordering::SeqCst);
    let mode = *shared.mode.read().expect("mode lock");
    match mode {
        Mode::Up => {}
        Mode::Down => return status(StatusCode::SERVICE_UNAVAILABLE, ""),
        Mode::Slow(delay) => tokio::time::sleep(delay).await,
        Mode::Huge(bytes) => {
            let padding = "x".repeat(bytes);
            return json_response(&json!({"keys": [], "padding": padding}));
        }
        Mode::Garbage => return status(StatusCode::OK, "<html>not a key set</html>"),
        Mode::EmptyKeys => return json_response(&json!({"keys": []})),
        Mode::DuplicateKid => {}
        Mode::RedirectTo(port) => {
            let mut response = status(StatusCode::FOUND, "");
            let location = format!("http://127.0.0.1:{port}/oauth/discovery/keys");
            response.headers_mut().insert(
                hyper::header::LOCATION,
                location.parse().expect("a loopback URL is a header value"),
            );
            return response;
        }
    }
    let mut keys: Vec<Value> = shared
        .keys
        .read()
        .expect("keys lock")
        .iter()
        .map(|k| k.jwk())
        .collect();
    if mode == Mode::DuplicateKid
        && let Some(kid) = keys.last().and_then(|k| k["kid"].as_str())
    {
        let impostor = crate::SigningKey::generate().with_kid(kid.to_owned());
        keys.push(impostor.jwk());
    }
    json_response(&json!({ "keys": keys }))
}

/// Mints a token for the default CI job with the JSON body's overrides (`null` removes a claim).
async fn mint(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let Ok(body) = Limited::new(request.into_body(), 64 * 1024).collect().await else {
        return status(StatusCode::BAD_REQUEST, "body too large");
    };
    let overrides: Value = serde_json::from_slice(&body.to_bytes()).unwrap_or(json!({}));
    let audience = overrides
        .get("aud")
        .and_then(Value::as_str)
        .unwrap_or("token-broker")
        .to_owned();
    let job_id = claims::now() as u64 % 1_000_000_000;
    let claims = claims::with(
        claims::ci_job(&shared.issuer, &audience, job_id),
        &overrides,
    );
    let keys = shared.keys.read().expect("keys lock");
    let key = keys.last().expect("a key");
    let token = key.mint(
        &json!({"alg": "RS256", "typ": "JWT", "kid": key.kid()}),
        &claims,
    );
    status(StatusCode::OK, &token)
}

fn status(code: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = code;
    response
}
