//! `broker-floor [ADDRESS]`: the benchmarks' floor, a do-nothing HTTP/1.1 server that answers
//! every request with the same canned credentials JSON. It does no TLS, no JWT, no AWS call and
//! no allocation worth the name, so started the way the broker is started (same quota, same
//! client) it shows what the rig itself costs: process start, the first accept, a CFS period.
//!
//! Standard library only (one thread per connection, keep-alive), so its own start is a few
//! hundred microseconds of CPU. Listens on ADDRESS (default 127.0.0.1:8080); prints nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

const BODY: &str = r#"{"AccessKeyId":"ASIAIOSFODNN7EXAMPLE","SecretAccessKey":"wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY","SessionToken":"FwoGZXIvYXdzEXAMPLESESSIONTOKEN","Expiration":"2030-01-01T00:00:00Z","Version":1}"#;

fn main() {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = TcpListener::bind(&address).expect("bind");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = serve(stream);
        });
    }
}

/// Answers requests on one connection until the client closes it.
fn serve(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    loop {
        let Some(body_len) = read_head(&mut reader)? else {
            return Ok(());
        };
        std::io::copy(&mut (&mut reader).take(body_len), &mut std::io::sink())?;
        writer.write_all(response.as_bytes())?;
    }
}

/// Reads one request head; its `content-length`, or `None` at the end of the connection.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Option<u64>> {
    let (mut line, mut body_len, mut first) = (String::new(), 0, true);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let header = line.trim_end();
        if header.is_empty() && !first {
            return Ok(Some(body_len));
        }
        first = false;
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            body_len = value.trim().parse().unwrap_or(0);
        }
    }
}
