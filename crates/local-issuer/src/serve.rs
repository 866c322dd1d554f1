//! The accept loop every stand-in shares: one task per connection, HTTP/1.1, each request answered
//! by the stand-in's [`Handler`]. Stand-ins differ in what they answer, never in how they serve.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a stand-in answers.
pub(crate) trait Handler: Send + Sync + 'static {
    /// The answer to one request.
    fn respond(
        &self,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send;

    /// Whether to drop a new connection unanswered, as a crashed peer would. Default: never.
    fn drops_connection(&self) -> bool {
        false
    }

    /// Bytes to answer a new connection's request with by hand, after which the connection
    /// stalls (nothing more sent, nothing closed) until the client closes it or a minute
    /// passes, as a peer that hung mid-answer would. Default: none.
    fn stalled_answer(&self) -> Option<Vec<u8>> {
        None
    }
}

/// A listener on `address` (`127.0.0.1:0` for a free port) and its base URL.
pub(crate) async fn bind(address: &str) -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .expect("bind a stand-in");
    let url = format!("http://{}", listener.local_addr().expect("local address"));
    (listener, url)
}

/// Serves `handler` on `listener` in a background task, which lives as long as its runtime.
pub(crate) fn spawn<H: Handler>(listener: tokio::net::TcpListener, handler: Arc<H>) {
    tokio::spawn(serve(listener, handler));
}

async fn serve<H: Handler>(listener: tokio::net::TcpListener, handler: Arc<H>) {
    while let Ok((stream, _)) = listener.accept().await {
        if handler.drops_connection() {
            // Linger zero: closing sends a TCP reset, as a crashed or overloaded peer would.
            let _ = stream.set_zero_linger();
            continue;
        }
        if let Some(answer) = handler.stalled_answer() {
            tokio::spawn(async move {
                let mut stream = stream;
                let mut request = vec![0; 64 * 1024];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(&answer).await;
                // Until the client gives up and closes (or a minute passes).
                let _ =
                    tokio::time::timeout(Duration::from_secs(60), stream.read(&mut request)).await;
            });
            continue;
        }
        let handler = handler.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let service = service_fn(move |request| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler.respond(request).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A response with `status`, `content_type` and `body`.
pub(crate) fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// `200` with `value` as `application/json`.
pub(crate) fn json(value: &Value) -> Response<Full<Bytes>> {
    response(StatusCode::OK, "application/json", value.to_string())
}
