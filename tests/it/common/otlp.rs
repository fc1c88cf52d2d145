//! A fake OpenTelemetry collector: accepts `POST /v1/traces` (OTLP/HTTP,
//! protobuf) and keeps every span it decodes; or, as `hanging`, accepts
//! connections and never answers.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One received span with its resource's `service.name`.
#[derive(Clone, Debug)]
pub struct Received {
    pub service: String,
    pub span: Span,
}

impl Received {
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    pub fn attr(&self, key: &str) -> Option<any_value::Value> {
        attr(&self.span.attributes, key)
    }
    pub fn str(&self, key: &str) -> Option<String> {
        match self.attr(key)? {
            any_value::Value::StringValue(s) => Some(s),
            _ => None,
        }
    }
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.attr(key)? {
            any_value::Value::IntValue(n) => Some(n),
            _ => None,
        }
    }
    pub fn float(&self, key: &str) -> Option<f64> {
        match self.attr(key)? {
            any_value::Value::DoubleValue(n) => Some(n),
            _ => None,
        }
    }
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.clone())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    /// Answers every export with 200 and records its spans.
    pub fn start() -> Self {
        Self::spawn(false)
    }

    /// Reads requests and never answers them.
    pub fn hanging() -> Self {
        Self::spawn(true)
    }

    fn spawn(hang: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind collector");
        let addr = listener.local_addr().expect("addr");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let keep = spans.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let keep = keep.clone();
                std::thread::spawn(move || serve(conn, &keep, hang));
            }
        });
        Self { addr, spans }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Spans whose `tollgate.request_id` is `id` (the request span), and
    /// the spans under it.
    pub async fn wait_request(
        &self,
        request_id: &str,
        attempts: usize,
    ) -> (Received, Vec<Received>) {
        crate::common::eventually(Duration::from_secs(15), "the request's spans", || {
            let all = self.spans();
            let req = all
                .iter()
                .find(|s| s.str("tollgate.request_id").as_deref() == Some(request_id))?
                .clone();
            let children: Vec<Received> = all
                .iter()
                .filter(|s| s.parent_id() == req.span_id() && s.trace_id() == req.trace_id())
                .cloned()
                .collect();
            (children.len() >= attempts).then_some((req, children))
        })
        .await
    }
}

fn serve(mut conn: TcpStream, keep: &Mutex<Vec<Received>>, hang: bool) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        // One request: headers, then content-length bytes.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        if hang {
            std::thread::sleep(Duration::from_secs(60));
            return;
        }
        let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
        if head.starts_with("post /v1/traces") {
            if let Ok(req) = ExportTraceServiceRequest::decode(body.as_slice()) {
                let mut got = keep.lock().unwrap();
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .as_ref()
                        .and_then(|r| attr(&r.attributes, "service.name"))
                        .and_then(|v| match v {
                            any_value::Value::StringValue(s) => Some(s),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for span in ss.spans {
                            got.push(Received {
                                service: service.clone(),
                                span,
                            });
                        }
                    }
                }
            }
        }
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if conn.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
