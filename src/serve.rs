//! `token-broker serve`: the router on a local HTTP/1.1 port, for development and tests.
//!
//! At most [`MAX_CONNECTIONS`] connections are open at once and at most [`MAX_IN_FLIGHT`]
//! exchanges run at once; what is beyond either waits (none is refused). Connections beyond the
//! first wait in the kernel's accept queue, their requests in socket buffers rather than in our
//! memory, and requests beyond the second wait for a turn, so a thousand callers cost a few hundred
//! small parsers and at most 64 STS calls with their SigV4 requests and XML documents.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;

use crate::http::{ApiError, MAX_BODY_BYTES, RequestMeta, handle};
use crate::startup::AppState;

/// Exchanges handled at once; more wait. 64 keeps both cores busy when STS answers in
/// microseconds (the local stand-in) and allows ~3,000 exchanges/s at STS's 10-30 ms in a region.
pub const MAX_IN_FLIGHT: usize = 64;

/// Connections served at once. While all are taken, each answer closes its connection
/// (`Connection: close`), so keep-alive callers cannot hold every slot while others wait in the
/// accept queue; HTTP clients reconnect by themselves.
pub const MAX_CONNECTIONS: usize = 256;

/// How long a request's head, and then its body, may take to arrive: a caller that sends slowly
/// would otherwise hold one of the [`MAX_CONNECTIONS`] slots for as long as it likes.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head and buffered body hyper reads for one connection: a 16 KiB token in
/// `Authorization` plus the other headers fits; hyper's default is ~400 KiB.
const MAX_BUF_BYTES: usize = 64 * 1024;

/// Connections the kernel holds for us while every slot is taken. Linux caps it at
/// `net.core.somaxconn` (4,096 by default); Tokio's own `bind` asks for 1,024.
const ACCEPT_QUEUE: u32 = 4096;

/// A listener on `address` with an accept queue of [`ACCEPT_QUEUE`].
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(ACCEPT_QUEUE)
}

/// Serves until `shutdown` completes; connections already open finish their request.
pub async fn run(listener: TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let shared = Shared {
        state,
        origin: listener
            .local_addr()
            .ok()
            .map(|a| format!("http://{a}").into()),
        turns: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
    };
    loop {
        // No slot, no accept: the next connection waits in the kernel's queue.
        let slot = tokio::select! {
            slot = shared.slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => return,
        };
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
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| respond(shared.clone(), request));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .max_buf_size(MAX_BUF_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection closed with an error");
            }
            drop(slot);
        });
    }
}

/// What every request of every connection shares.
#[derive(Clone)]
struct Shared {
    state: Arc<AppState>,
    /// `http://` and the listener's address, for the discovery document.
    origin: Option<Arc<str>>,
    /// Exchanges running now ([`MAX_IN_FLIGHT`]).
    turns: Arc<Semaphore>,
    /// Connections open now ([`MAX_CONNECTIONS`]).
    slots: Arc<Semaphore>,
}

async fn respond(
    shared: Shared,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let meta = RequestMeta {
        request_id: uuid::Uuid::new_v4().to_string(),
        origin: shared.origin.map(|o| o.to_string()),
    };
    let (parts, body) = request.into_parts();
    let body = tokio::time::timeout(READ_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect());
    let response = match body.await {
        Ok(Ok(collected)) => {
            // Taken once the body is in (it is capped), so a slow sender holds no turn.
            let _turn = shared
                .turns
                .acquire()
                .await
                .expect("the semaphore is never closed");
            handle(
                &shared.state,
                http::Request::from_parts(parts, collected.to_bytes()),
                meta,
            )
            .await
        }
        Ok(Err(_)) => ApiError::invalid_request(format!(
            "request body exceeds {MAX_BODY_BYTES} bytes or was cut off"
        ))
        .into_response(&meta.request_id),
        Err(_) => ApiError::invalid_request(format!(
            "request body not received within {} s",
            READ_TIMEOUT.as_secs()
        ))
        .into_response(&meta.request_id),
    };
    let mut response = response.map(Full::new);
    if shared.slots.available_permits() == 0 {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    Ok(response)
}
