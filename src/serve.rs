//! `token-broker serve`: the router on a local HTTP/1.1 port, for development and tests.
//!
//! At most [`MAX_IN_FLIGHT`] exchanges run at once; requests beyond that wait for a turn (none is
//! refused), so a thousand connections hold a thousand small parsers and bodies, not a thousand
//! STS calls with their connections, SigV4 requests and XML documents.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::http::{ApiError, MAX_BODY_BYTES, RequestMeta, handle};
use crate::startup::AppState;

/// Exchanges handled at once; more wait. 64 keeps both cores busy when STS answers in
/// microseconds (the local stand-in) and allows ~3,000 exchanges/s at STS's 10-30 ms in a region.
pub const MAX_IN_FLIGHT: usize = 64;

/// Largest request head and buffered body hyper reads for one connection: a 16 KiB token in
/// `Authorization` plus the other headers fits; hyper's default is ~400 KiB.
const MAX_BUF_BYTES: usize = 64 * 1024;

/// Serves until `shutdown` completes; connections already open finish their request.
pub async fn run(listener: TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let turns = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let origin: Option<Arc<str>> = listener
        .local_addr()
        .ok()
        .map(|a| format!("http://{a}").into());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let (state, origin, turns) = (state.clone(), origin.clone(), turns.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                respond(state.clone(), origin.clone(), turns.clone(), request)
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(MAX_BUF_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection closed with an error");
            }
        });
    }
}

async fn respond(
    state: Arc<AppState>,
    origin: Option<Arc<str>>,
    turns: Arc<Semaphore>,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let meta = RequestMeta {
        request_id: uuid::Uuid::new_v4().to_string(),
        origin: origin.map(|o| o.to_string()),
    };
    let (parts, body) = request.into_parts();
    let response = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => {
            // Taken once the body is in (it is capped), so a slow sender holds no turn.
            let _turn = turns
                .acquire()
                .await
                .expect("the semaphore is never closed");
            handle(
                &state,
                http::Request::from_parts(parts, collected.to_bytes()),
                meta,
            )
            .await
        }
        Err(_) => ApiError::invalid_request(format!(
            "request body exceeds {MAX_BODY_BYTES} bytes or was cut off"
        ))
        .into_response(&meta.request_id),
    };
    Ok(response.map(Full::new))
}
