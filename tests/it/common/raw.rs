//! A raw TCP client for the cases an HTTP library hides: leaving mid-stream,
//! resetting, stalling half-way through the headers, uploading while the
//! server already answered.

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub async fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to gateway")
}

/// An HTTP/1.1 request head (with `Content-Length` when `body_len` is Some,
/// chunked otherwise) followed by nothing.
pub fn head(
    method: &str,
    path: &str,
    port: u16,
    headers: &[(&str, &str)],
    body_len: Option<usize>,
) -> Vec<u8> {
    let mut h = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    match body_len {
        Some(n) => h.push_str(&format!("Content-Length: {n}\r\n")),
        None => h.push_str("Transfer-Encoding: chunked\r\n"),
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// A whole HTTP/1.1 `POST` of a JSON `body` with a bearer `token`.
pub fn post_json(path: &str, port: u16, token: &str, body: &str) -> Vec<u8> {
    let auth = format!("Bearer {token}");
    let mut request = head(
        "POST",
        path,
        port,
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        Some(body.len()),
    );
    request.extend_from_slice(body.as_bytes());
    request
}

/// Reads until `acc` contains `needle`; false on EOF, error or timeout.
pub async fn read_until(
    stream: &mut TcpStream,
    acc: &mut Vec<u8>,
    needle: &[u8],
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut tmp = vec![0u8; 16 * 1024];
    loop {
        if acc.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut tmp)).await {
            Ok(Ok(n)) if n > 0 => acc.extend_from_slice(&tmp[..n]),
            _ => return false,
        }
    }
}

/// How a connection ended while we only read.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The server closed (EOF or reset) after this long.
    Closed(Duration),
    /// Still open at the timeout.
    StillOpen,
}

/// Reads (and keeps) everything until the server closes or `timeout` passes.
pub async fn read_to_end(stream: &mut TcpStream, acc: &mut Vec<u8>, timeout: Duration) -> End {
    let start = Instant::now();
    let mut tmp = vec![0u8; 16 * 1024];
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, stream.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return End::Closed(start.elapsed()),
            Ok(Ok(n)) => acc.extend_from_slice(&tmp[..n]),
            Err(_) => return End::StillOpen,
        }
    }
}

/// A parsed response (body de-chunked when chunked).
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// As a [`crate::common::Resp`], for the shared error-shape assertions.
    pub fn to_resp(&self) -> crate::common::Resp {
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &self.headers {
            if let (Ok(k), Ok(v)) = (
                reqwest::header::HeaderName::from_bytes(k.as_bytes()),
                reqwest::header::HeaderValue::from_str(v),
            ) {
                headers.append(k, v);
            }
        }
        crate::common::Resp {
            status: self.status,
            headers,
            body: self.body.clone(),
        }
    }
}

/// Parses the first response in `bytes` if its head arrived.
pub fn parse_response(bytes: &[u8]) -> Option<RawResponse> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &bytes[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(rest.len());
        rest[..len.min(rest.len())].to_vec()
    };
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

/// Best-effort decoding of a (possibly truncated) chunked body.
pub fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
        let size_txt = String::from_utf8_lossy(&rest[..p]);
        let Ok(size) = usize::from_str_radix(size_txt.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        if size == 0 {
            break;
        }
        let start = p + 2;
        let end = (start + size).min(rest.len());
        out.extend_from_slice(&rest[start..end]);
        if start + size + 2 > rest.len() {
            break;
        }
        rest = &rest[start + size + 2..];
    }
    out
}

/// Sends `head` then `body` (in 64 KiB pieces, framed chunked when `chunked`)
/// while reading the answer concurrently, as a client that keeps uploading
/// after the server answered. Returns the parsed response, if one came.
pub async fn upload(
    port: u16,
    head_bytes: Vec<u8>,
    body: Vec<u8>,
    chunked: bool,
) -> Option<RawResponse> {
    let stream = connect(port).await;
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        if wr.write_all(&head_bytes).await.is_err() {
            return;
        }
        for piece in body.chunks(64 * 1024) {
            let framed = if chunked {
                let mut v = format!("{:x}\r\n", piece.len()).into_bytes();
                v.extend_from_slice(piece);
                v.extend_from_slice(b"\r\n");
                v
            } else {
                piece.to_vec()
            };
            if wr.write_all(&framed).await.is_err() {
                return;
            }
        }
        if chunked {
            let _ = wr.write_all(b"0\r\n\r\n").await;
        }
        // Keep the write half open until the reader is done.
        tokio::time::sleep(Duration::from_secs(20)).await;
    });
    let mut acc = Vec::new();
    let mut tmp = vec![0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(r) = parse_response(&acc) {
            let complete = match r
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
            {
                Some(n) => r.body.len() >= n,
                None => false,
            };
            if complete {
                break;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rd.read(&mut tmp)).await {
            Ok(Ok(n)) if n > 0 => acc.extend_from_slice(&tmp[..n]),
            _ => break,
        }
    }
    writer.abort();
    parse_response(&acc)
}

/// What one raw exchange produced: everything the server sent, and how the
/// connection ended.
#[derive(Debug)]
pub struct Exchange {
    pub bytes: Vec<u8>,
    pub end: End,
}

impl Exchange {
    /// The first response, if its head arrived.
    pub fn response(&self) -> Option<RawResponse> {
        parse_response(&self.bytes)
    }

    pub fn status(&self) -> Option<u16> {
        self.response().map(|r| r.status)
    }

    /// How many response status lines the server sent (`HTTP/1.x NNN` at the
    /// start of the stream or right after a CRLF); an upper bound when a body
    /// happens to contain one.
    pub fn responses(&self) -> usize {
        count_status_lines(&self.bytes)
    }

    /// The server closed the connection (EOF or reset) within the timeout.
    pub fn closed(&self) -> bool {
        matches!(self.end, End::Closed(_))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).to_string()
    }
}

pub fn count_status_lines(bytes: &[u8]) -> usize {
    let starts =
        |at: usize| bytes[at..].starts_with(b"HTTP/1.1 ") || bytes[at..].starts_with(b"HTTP/1.0 ");
    let mut n = usize::from(starts(0));
    for i in 0..bytes.len().saturating_sub(1) {
        if &bytes[i..i + 2] == b"\r\n" && starts(i + 2) {
            n += 1;
        }
    }
    n
}

/// Connects, writes `request` (in 64 KiB pieces; a write error ends the
/// writing, not the exchange: the server may refuse before reading it all),
/// then reads until the server closes or `timeout` passes.
pub async fn exchange(port: u16, request: &[u8], timeout: Duration) -> Exchange {
    let mut stream = connect(port).await;
    for piece in request.chunks(64 * 1024) {
        if !matches!(
            tokio::time::timeout(timeout, stream.write_all(piece)).await,
            Ok(Ok(()))
        ) {
            break;
        }
    }
    let mut bytes = Vec::new();
    let end = read_to_end(&mut stream, &mut bytes, timeout).await;
    Exchange { bytes, end }
}
