//! The replay guard when DynamoDB's answers go wrong: a stand-in in front of moto's DynamoDB
//! applies a write (moto does it) and then answers late (after the SDK's 1 s attempt timeout,
//! so the SDK sends it again), answers and drops the connection halfway, or throttles. Scenario
//! by scenario, the credentials issued for one token never exceed its `token_uses`, a job's
//! first use is never refused because of its own retried write, and the audit line says what
//! happened to the use.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sts::config::Credentials;
use local_issuer::sts::{LocalSts, StsMode};
use serde_json::{Value, json};
use token_broker::aws::replay::ReplayTable;
use token_broker::startup::Operations;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::*;
use crate::replay::moto_table;

/// A write to the replay table, told apart by its update expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    Reserve,
    Release,
}

/// What the stand-in does to one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// moto applies it; the answer comes after the SDK's attempt timeout (1 s).
    AppliedAnsweredLate,
    /// moto applies it; the stand-in sends the head and half the body, then drops the connection.
    AppliedThenDropped,
    /// Not applied: 400 `ThrottlingException`.
    Throttled,
    /// Held past the operation's 2 s, then applied (by then the broker has given up on it and
    /// given the use back); its answer goes to nobody.
    AppliedAfterGivingUp,
}

/// The stand-in: passes requests to moto, applying the queued faults to the writes they name,
/// in order; counts the writes that reached moto.
#[derive(Clone)]
struct DynamoFront {
    url: String,
    faults: Arc<Mutex<VecDeque<(Write, Fault)>>>,
    applied: Arc<Mutex<Vec<Write>>>,
}

impl DynamoFront {
    async fn start(faults: &[(Write, Fault)]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = Self {
            url: format!("http://{}", listener.local_addr().unwrap()),
            faults: Arc::new(Mutex::new(faults.iter().copied().collect())),
            applied: Arc::default(),
        };
        let serving = front.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serving.clone().connection(stream));
            }
        });
        front
    }

    fn applied(&self, write: Write) -> usize {
        self.applied
            .lock()
            .unwrap()
            .iter()
            .filter(|w| **w == write)
            .count()
    }

    fn faults_left(&self) -> usize {
        self.faults.lock().unwrap().len()
    }

    /// One keep-alive connection: request after request until the client closes it or a
    /// fault drops it.
    async fn connection(self, mut stream: TcpStream) {
        while let Some((head, body)) = read_request(&mut stream).await {
            let write = if body.windows(12).any(|w| w == b"ADD #holders") {
                Some(Write::Reserve)
            } else if body.windows(15).any(|w| w == b"DELETE #holders") {
                Some(Write::Release)
            } else {
                None
            };
            let fault = write.and_then(|write| {
                let mut faults = self.faults.lock().unwrap();
                (faults.front().map(|(w, _)| *w) == Some(write))
                    .then(|| faults.pop_front().unwrap().1)
            });
            if fault == Some(Fault::Throttled) {
                let body = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate of requests exceeds the allowed throughput."}"#;
                respond(&mut stream, "400 Bad Request", body.as_bytes(), body.len()).await;
                continue;
            }
            if fault == Some(Fault::AppliedAfterGivingUp) {
                tokio::time::sleep(Duration::from_millis(2500)).await;
            }
            let (status, answer) = forward(&head, body).await;
            if let Some(write) = write {
                self.applied.lock().unwrap().push(write);
            }
            match fault {
                Some(Fault::AppliedAnsweredLate | Fault::AppliedAfterGivingUp) => {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    respond(&mut stream, &status, &answer, answer.len()).await;
                    return;
                }
                Some(Fault::AppliedThenDropped) => {
                    let half = &answer[..answer.len() / 2];
                    respond(&mut stream, &status, half, answer.len()).await;
                    return;
                }
                _ => respond(&mut stream, &status, &answer, answer.len()).await,
            }
        }
    }
}

/// The request's head (lines) and body, or `None` when the client closed the connection.
async fn read_request(stream: &mut TcpStream) -> Option<(Vec<(String, String)>, Vec<u8>)> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    let end = loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        bytes.extend_from_slice(&buf[..n]);
    };
    let head: Vec<(String, String)> = String::from_utf8_lossy(&bytes[..end])
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = head
        .iter()
        .find(|(name, _)| name == "content-length")
        .map_or(0, |(_, value)| value.parse().unwrap());
    while bytes.len() < end + length {
        let n = stream.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        bytes.extend_from_slice(&buf[..n]);
    }
    Some((head, bytes[end..end + length].to_vec()))
}

/// Sends the request on to moto as it came; moto's status line and body.
async fn forward(head: &[(String, String)], body: Vec<u8>) -> (String, Vec<u8>) {
    let mut request = reqwest::Client::new().post(moto::endpoint()).body(body);
    for (name, value) in head {
        if !matches!(name.as_str(), "host" | "content-length" | "connection") {
            request = request.header(name, value);
        }
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let status = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    (status, response.bytes().await.unwrap().to_vec())
}

/// Writes a response announcing `length` body bytes and sending `body`.
async fn respond(stream: &mut TcpStream, status: &str, body: &[u8], length: usize) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-1.0\r\nContent-Length: {length}\r\n\r\n"
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let _ = stream.flush().await;
}

/// A broker whose every grant allows one use per token, its replay table in moto behind
/// `front`, and STS the stand-in `sts`.
async fn app_behind(front: &DynamoFront, sts: &LocalSts) -> TestApp {
    let table = moto_table().await;
    let sdk = sdk_config_for(&front.url, Credentials::new("t", "t", None, None, "tests"));
    let spec = sts_at(sts.url());
    let operations = Operations {
        replay: Some(ReplayTable::new(&sdk, table, spec.settings.leeway)),
        ..Operations::default()
    };
    spawn_app_with(AppSpec {
        policy: format!("token_uses = 1\n{POLICY}"),
        operations,
        ..spec
    })
    .await
}

/// One exchange of `token` for `deploy-web-prod`: its status and audit line.
async fn exchange(app: &TestApp, token: &str) -> (u16, Value) {
    let response = app.credentials(token, "role=deploy-web-prod").await;
    let status = response.status().as_u16();
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    (status, audit_line(&request_id))
}

/// A token's first exchange whose reservation DynamoDB applied but whose answer came late, or
/// was cut off: the SDK sends the same reservation again, which finds its own use and succeeds.
/// The job gets its credentials (never "already exchanged" for its own write), and the token's
/// second exchange is refused: one credential in all.
#[tokio::test]
async fn a_reservation_whose_answer_was_late_or_cut_off_is_one_use_not_two() {
    for fault in [Fault::AppliedAnsweredLate, Fault::AppliedThenDropped] {
        let sts = LocalSts::start_on("127.0.0.1:0").await;
        let front = DynamoFront::start(&[(Write::Reserve, fault)]).await;
        let app = app_behind(&front, &sts).await;
        let (token, _) = app.token(json!({}));

        let (status, audit) = exchange(&app, &token).await;
        assert_eq!(status, 200, "{fault:?}: {audit}");
        assert_eq!(audit["outcome"], "allow", "{audit}");
        assert_eq!(audit["token_use"], "counted", "{audit}");
        assert!(
            audit["use_id"].as_str().is_some_and(|id| id.len() == 36),
            "{audit}"
        );
        assert_eq!(
            front.applied(Write::Reserve),
            2,
            "{fault:?}: the SDK sent it again"
        );
        assert_eq!(front.faults_left(), 0);

        let (status, audit) = exchange(&app, &token).await;
        assert_eq!(status, 403, "{fault:?}: {audit}");
        assert_eq!(audit["token_use"], "limit_reached", "{audit}");
        assert_eq!(
            sts.calls(),
            1,
            "{fault:?}: one credential for token_uses = 1"
        );
    }
}

/// Exchange A fails at STS; its release is applied but answered late, so the SDK applies it
/// twice. Then B and C race: exactly one gets credentials. (With a counter, the second release
/// gave back a use A never had, and both did.)
#[tokio::test]
async fn a_release_applied_twice_gives_back_only_its_own_use() {
    let sts = LocalSts::start_on("127.0.0.1:0").await;
    let front = DynamoFront::start(&[(Write::Release, Fault::AppliedAnsweredLate)]).await;
    let app = app_behind(&front, &sts).await;
    let (token, _) = app.token(json!({}));

    sts.set_mode(StsMode::Throttling);
    let (status, audit) = exchange(&app, &token).await;
    assert_eq!(status, 503, "{audit}");
    assert_eq!(audit["token_use"], "given_back", "{audit}");
    assert_eq!(
        front.applied(Write::Release),
        2,
        "the SDK sent the release again"
    );
    sts.set_mode(StsMode::Ok);
    let issued_before = sts.calls();

    let (b, c) = tokio::join!(exchange(&app, &token), exchange(&app, &token));
    let mut statuses = [b.0, c.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 403], "{b:?} {c:?}");
    assert_eq!(
        sts.calls() - issued_before,
        1,
        "one credential for token_uses = 1"
    );
    let mut uses = [b.1["token_use"].clone(), c.1["token_use"].clone()];
    uses.sort_by_key(Value::to_string);
    assert_eq!(uses, [json!("counted"), json!("limit_reached")]);
}

/// A throttle in the middle (the first reservation refused with ThrottlingException, not
/// applied): the SDK retries, the job gets its credentials, and that is its one use.
#[tokio::test]
async fn a_throttled_reservation_is_retried_and_counts_once() {
    let sts = LocalSts::start_on("127.0.0.1:0").await;
    let front = DynamoFront::start(&[(Write::Reserve, Fault::Throttled)]).await;
    let app = app_behind(&front, &sts).await;
    let (token, _) = app.token(json!({}));
    let (status, audit) = exchange(&app, &token).await;
    assert_eq!(status, 200, "{audit}");
    assert_eq!(front.applied(Write::Reserve), 1);
    assert_eq!(exchange(&app, &token).await.0, 403);
    assert_eq!(sts.calls(), 1);
}

/// Every attempt of a reservation applied but answered late: the exchange runs out of time and
/// fails closed with a retryable 503 (STS never called), and gives the use back by its id, so
/// the job's retry, a new exchange, gets its credentials: still one in all.
#[tokio::test]
async fn a_reservation_that_never_answers_is_a_503_whose_use_the_jobs_retry_gets() {
    let sts = LocalSts::start_on("127.0.0.1:0").await;
    let late = (Write::Reserve, Fault::AppliedAnsweredLate);
    let front = DynamoFront::start(&[late, late, late]).await;
    let app = app_behind(&front, &sts).await;
    let (token, _) = app.token(json!({}));

    let (status, audit) = exchange(&app, &token).await;
    assert_eq!(status, 503, "{audit}");
    assert_eq!(audit["outcome"], "error", "{audit}");
    assert_eq!(audit["token_use"], "given_back", "{audit}");
    assert_eq!(sts.calls(), 0);
    // The attempts the SDK gave up on may still land; wait for them, as the job's retry would.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    front.faults.lock().unwrap().clear();

    let (status, audit) = exchange(&app, &token).await;
    assert_eq!(status, 200, "{audit}");
    assert_eq!(exchange(&app, &token).await.0, 403);
    assert_eq!(sts.calls(), 1);
}

/// The worst case of a reservation without an answer: DynamoDB applies it only after the broker
/// gave up on it (503) and gave the use back. The release marked the id released, so the late
/// reservation takes nothing: the job's retry gets its credentials, a third exchange is refused,
/// one credential in all.
#[tokio::test]
async fn a_reservation_applied_after_the_broker_gave_it_back_takes_nothing() {
    let sts = LocalSts::start_on("127.0.0.1:0").await;
    let late = (Write::Reserve, Fault::AppliedAfterGivingUp);
    let front = DynamoFront::start(&[late, late, late]).await;
    let app = app_behind(&front, &sts).await;
    let (token, _) = app.token(json!({}));

    let (status, audit) = exchange(&app, &token).await;
    assert_eq!(status, 503, "{audit}");
    assert_eq!(audit["token_use"], "given_back", "{audit}");
    // Every held attempt reaches moto only now, after the release.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(
        front.applied(Write::Reserve) >= 1,
        "the late write was applied"
    );
    front.faults.lock().unwrap().clear();

    let (status, audit) = exchange(&app, &token).await;
    assert_eq!(status, 200, "the job's retry finds its use free: {audit}");
    assert_eq!(exchange(&app, &token).await.0, 403);
    assert_eq!(sts.calls(), 1);
}
