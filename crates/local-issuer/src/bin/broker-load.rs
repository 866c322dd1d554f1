//! `broker-load`: drives `POST /v1/credentials` over C keep-alive connections until N exchanges are
//! done, then prints throughput, latency percentiles and errors. A load generator of our own so
//! the figures need nothing outside the workspace.
//!
//! usage: broker-load URL TOKEN_FILE REQUESTS CONCURRENCY

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

struct Args {
    url: hyper::Uri,
    token: String,
    requests: usize,
    concurrency: usize,
}

fn args() -> Args {
    let mut argv = std::env::args().skip(1);
    let usage = "usage: broker-load URL TOKEN_FILE REQUESTS CONCURRENCY";
    let url = argv.next().expect(usage).parse().expect("a URL");
    let token = std::fs::read_to_string(argv.next().expect(usage))
        .expect("token file")
        .trim()
        .to_owned();
    let requests = argv
        .next()
        .expect(usage)
        .parse()
        .expect("a number of requests");
    let concurrency = argv.next().expect(usage).parse().expect("a concurrency");
    Args {
        url,
        token,
        requests,
        concurrency,
    }
}

#[tokio::main]
async fn main() {
    let args = Arc::new(args());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| tokio::spawn(worker(args.clone(), next.clone())))
        .collect();
    let mut latencies = Vec::with_capacity(args.requests);
    let mut errors = 0;
    for worker in workers {
        let (mut done, failed) = worker.await.expect("worker");
        latencies.append(&mut done);
        errors += failed;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!("requests:    {}", latencies.len() + errors);
    println!("errors:      {errors}");
    println!("elapsed:     {:.2} s", elapsed.as_secs_f64());
    println!(
        "throughput:  {:.0} exchanges/s",
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    println!("latency p50: {:?}", percentile(0.50));
    println!("latency p99: {:?}", percentile(0.99));
    println!(
        "latency max: {:?}",
        latencies.last().copied().unwrap_or_default()
    );
    if errors > 0 {
        std::process::exit(1);
    }
}

/// One keep-alive connection sending requests until the shared count runs out; a failed or closed
/// connection is replaced.
async fn worker(args: Arc<Args>, next: Arc<AtomicUsize>) -> (Vec<Duration>, usize) {
    let authority = args
        .url
        .authority()
        .expect("URL with host:port")
        .as_str()
        .to_owned();
    let authorization = format!("Bearer {}", args.token);
    let (mut latencies, mut errors) = (Vec::new(), 0);
    let mut sender = None;
    while next.fetch_add(1, Ordering::SeqCst) < args.requests {
        if sender.is_none() {
            let stream = tokio::net::TcpStream::connect(&authority)
                .await
                .expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let (s, connection) = http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(connection);
            sender = Some(s);
        }
        let request = hyper::Request::post(args.url.clone())
            .header("host", &authority)
            .header("authorization", &authorization)
            .body(Empty::<Bytes>::new())
            .expect("request");
        let started = Instant::now();
        let outcome = sender
            .as_mut()
            .expect("connected")
            .send_request(request)
            .await;
        match outcome {
            Ok(response) => {
                let ok = response.status() == 200;
                // The broker closes connections when all its slots are taken; reconnect.
                if response
                    .headers()
                    .get(hyper::header::CONNECTION)
                    .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"))
                {
                    sender = None;
                }
                let _ = response.into_body().collect().await;
                if ok {
                    latencies.push(started.elapsed());
                } else {
                    errors += 1;
                }
            }
            Err(_) => {
                errors += 1;
                sender = None;
            }
        }
    }
    (latencies, errors)
}
