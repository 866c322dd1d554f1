//! `serve` with more callers than it holds connections for: the rest wait in the accept queue,
//! keep-alive callers give their slot up while others wait, and every request is answered.

use futures_util::future::join_all;
use local_issuer::sts::LocalSts;
use serde_json::json;
use token_broker::serve::{MAX_CONNECTIONS, READ_TIMEOUT};

use crate::helpers::*;

#[tokio::test]
async fn more_keep_alive_callers_than_connection_slots_are_all_answered() {
    let sts = LocalSts::start_on("127.0.0.1:0").await;
    let app = spawn_app_with(sts_at(sts.url())).await;
    let (token, _) = app.token(json!({}));
    let callers = (0..MAX_CONNECTIONS + 44).map(|_| {
        // One client per caller: its own keep-alive connection, reopened when the broker closes it.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .expect("client");
        let (address, token) = (app.address.clone(), token.clone());
        async move {
            let mut answers = Vec::new();
            for _ in 0..3 {
                let response = local_issuer::requests::credentials(
                    &client,
                    &address,
                    &token,
                    "role=read-only",
                )
                .await;
                let closed = response
                    .headers()
                    .get("connection")
                    .is_some_and(|v| v == "close");
                answers.push((response.status().as_u16(), closed));
            }
            answers
        }
    });
    let answers: Vec<_> = join_all(callers).await.into_iter().flatten().collect();
    assert_eq!(answers.len(), (MAX_CONNECTIONS + 44) * 3);
    assert!(answers.iter().all(|(status, _)| *status == 200));
    assert!(
        answers.iter().any(|(_, closed)| *closed),
        "with every slot taken, answers close their connection"
    );
}

#[tokio::test]
async fn a_body_that_never_arrives_is_refused_after_the_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let started = std::time::Instant::now();
    stream
        .write_all(
            b"POST /v1/credentials?role=read-only HTTP/1.1\r\nhost: broker\r\n\
              content-type: application/json\r\ncontent-length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        READ_TIMEOUT + std::time::Duration::from_secs(5),
        stream.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "the connection was not closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("not received within 10 s"), "{answer}");
    assert!(started.elapsed() >= READ_TIMEOUT, "{:?}", started.elapsed());
}
