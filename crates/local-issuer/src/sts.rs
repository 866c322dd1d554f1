//! A fast local STS stand-in: answers every AssumeRole with a canned success document (or, when
//! told to, with STS's throttling or server errors, slowly, or by dropping the connection). For
//! load tests and fault injection, where moto (Python) would be the bottleneck or could not fail
//! on demand.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::serve::{self, Handler};

/// How the stand-in answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StsMode {
    /// A valid AssumeRole response.
    Ok = 0,
    /// 400 `Throttling`.
    Throttling = 1,
    /// 500 `InternalFailure`.
    ServerError = 2,
    /// A valid response after 10 s.
    Slow = 3,
    /// The connection is closed without an answer.
    Reset = 4,
    /// A 200 whose session token holds shell syntax: a broken or hostile upstream.
    MalformedCredentials = 5,
    /// On a new connection: a 200 with half its body, then nothing (a peer hung mid-answer).
    StalledBody = 6,
    /// A 200 whose body is not STS's XML (a proxy's HTML page).
    Garbage = 7,
    /// A 200 AssumeRole answer without its `Credentials` element.
    NoCredentials = 8,
}

struct Shared {
    mode: AtomicU8,
    calls: AtomicUsize,
}

/// A running stand-in.
pub struct LocalSts {
    url: String,
    shared: Arc<Shared>,
}

const ASSUME_ROLE_OK: &str = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult><SourceIdentity>ada</SourceIdentity><AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/stand-in/gitlab-session</Arn><AssumedRoleId>AROA3XFRBF535PLBIFPI4:gitlab-session</AssumedRoleId></AssumedRoleUser><Credentials><AccessKeyId>ASIAIOSFODNN7EXAMPLE</AccessKeyId><SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY</SecretAccessKey><SessionToken>FwoGZXIvYXdzEXAMPLESESSIONTOKEN</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration></Credentials><PackedPolicySize>6</PackedPolicySize></AssumeRoleResult><ResponseMetadata><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ResponseMetadata></AssumeRoleResponse>"#;

fn error_body(code: &str) -> String {
    format!(
        r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>{code}</Code><Message>stand-in</Message></Error><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ErrorResponse>"#
    )
}

impl LocalSts {
    /// Starts on `address` (e.g. `127.0.0.1:0`).
    pub async fn start_on(address: &str) -> Self {
        let (listener, url) = serve::bind(address).await;
        let shared = Arc::new(Shared {
            mode: AtomicU8::new(StsMode::Ok as u8),
            calls: AtomicUsize::new(0),
        });
        serve::spawn(listener, shared.clone());
        Self { url, shared }
    }

    /// The endpoint URL, for `AWS_ENDPOINT_URL`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Requests received so far.
    pub fn calls(&self) -> usize {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// Changes how it answers from now on.
    pub fn set_mode(&self, mode: StsMode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }
}

impl Handler for Shared {
    async fn respond(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        // Read to the end, as STS does: a body left unread makes hyper close the connection
        // after the answer, and every client call would then pay for a new one.
        let _ = request.into_body().collect().await;
        answer(self).await
    }

    fn drops_connection(&self) -> bool {
        let reset = self.mode.load(Ordering::SeqCst) == StsMode::Reset as u8;
        if reset {
            self.calls.fetch_add(1, Ordering::SeqCst);
        }
        reset
    }

    fn stalled_answer(&self) -> Option<Vec<u8>> {
        if self.mode.load(Ordering::SeqCst) != StsMode::StalledBody as u8 {
            return None;
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        let half = &ASSUME_ROLE_OK[..ASSUME_ROLE_OK.len() / 2];
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/xml\r\ncontent-length: {}\r\n\r\n",
            ASSUME_ROLE_OK.len()
        );
        Some([head.as_bytes(), half.as_bytes()].concat())
    }
}

async fn answer(shared: &Shared) -> Response<Full<Bytes>> {
    shared.calls.fetch_add(1, Ordering::SeqCst);
    let (status, body) = match shared.mode.load(Ordering::SeqCst) {
        1 => (StatusCode::BAD_REQUEST, error_body("Throttling")),
        2 => (
            StatusCode::INTERNAL_SERVER_ERROR,
            error_body("InternalFailure"),
        ),
        3 => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            (StatusCode::OK, ASSUME_ROLE_OK.to_owned())
        }
        5 => (
            StatusCode::OK,
            ASSUME_ROLE_OK.replace(
                "FwoGZXIvYXdzEXAMPLESESSIONTOKEN",
                "FwoG'\"$(touch /tmp/pwned)\"",
            ),
        ),
        7 => (StatusCode::OK, "<html>not STS</html>".to_owned()),
        8 => {
            let (open, close) = ("<Credentials>", "</Credentials>");
            let start = ASSUME_ROLE_OK.find(open).expect("credentials");
            let end = ASSUME_ROLE_OK.find(close).expect("credentials") + close.len();
            (
                StatusCode::OK,
                format!("{}{}", &ASSUME_ROLE_OK[..start], &ASSUME_ROLE_OK[end..]),
            )
        }
        _ => (StatusCode::OK, ASSUME_ROLE_OK.to_owned()),
    };
    serve::response(status, "text/xml", body)
}
