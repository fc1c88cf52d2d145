//! Usage accounting on the response path: SSE stream parsing (MB/s) and JSON
//! usage extraction for both providers, fed in realistic chunk sizes, and the
//! usage-record serialisation done once per request.
//!
//! `cargo bench --bench usage`

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use tollgate::providers::Dialect;
use tollgate::usage::{BodyKind, Meter, UsageRecord};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}{name}")).expect("fixture readable")
}

/// A long stream made from a real one: its opening events, its content
/// deltas repeated until the stream has `target` bytes, then its closing
/// events (which carry the final usage).
fn long_stream(real: &[u8], is_delta: impl Fn(&str) -> bool, target: usize) -> Vec<u8> {
    let text = std::str::from_utf8(real).expect("utf-8 fixture");
    let events: Vec<&str> = text.split_inclusive("\n\n").collect();
    let first = events
        .iter()
        .position(|e| is_delta(e))
        .expect("a delta event");
    let last = events.iter().rposition(|e| is_delta(e)).expect("a delta");
    let deltas: Vec<&str> = events[first..=last]
        .iter()
        .copied()
        .filter(|e| is_delta(e))
        .collect();
    let mut out = String::new();
    events[..first].iter().for_each(|e| out.push_str(e));
    let mut i = 0;
    while out.len() < target {
        out.push_str(deltas[i % deltas.len()]);
        i += 1;
    }
    events[last + 1..].iter().for_each(|e| out.push_str(e));
    out.into_bytes()
}

fn meter(kind: Dialect, body: BodyKind, bytes: &[u8], chunk: usize) -> tollgate::usage::Metered {
    let mut m = Meter::new(kind, body);
    for c in bytes.chunks(chunk) {
        m.feed(c);
    }
    m.finish().clone()
}

fn sse(c: &mut Criterion) {
    let anthropic = fixture("anthropic_stream.sse");
    let openai = fixture("openai_stream.sse");
    let streams = [
        ("anthropic_fixture", Dialect::Anthropic, anthropic.clone()),
        ("openai_fixture", Dialect::Openai, openai.clone()),
        (
            "anthropic_long",
            Dialect::Anthropic,
            long_stream(
                &anthropic,
                |e| e.contains("content_block_delta"),
                128 * 1024,
            ),
        ),
        (
            "openai_long",
            Dialect::Openai,
            long_stream(&openai, |e| e.contains(r#""delta":{"content""#), 128 * 1024),
        ),
    ];
    let mut g = c.benchmark_group("sse");
    for (name, kind, bytes) in &streams {
        let m = meter(*kind, BodyKind::Sse, bytes, 256);
        assert!(
            m.complete && m.usage.total() > 0,
            "{name}: usage read: {m:?}"
        );
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        // 256 B: one event per read, as a slow token stream arrives;
        // 4 KiB and 16 KiB: coalesced reads (a TLS record is at most 16 KiB).
        for chunk in [256usize, 4096, 16384] {
            if chunk >= 2 * bytes.len() {
                continue; // same as the previous size: the whole body at once
            }
            g.bench_with_input(
                BenchmarkId::new(*name, format!("chunk{chunk}")),
                bytes,
                |b, bytes| b.iter(|| meter(*kind, BodyKind::Sse, black_box(bytes), chunk)),
            );
        }
    }
    g.finish();
}

fn json(c: &mut Criterion) {
    let anthropic = fixture("anthropic_message.json");
    let openai = fixture("openai_chat.json");
    // A long answer: the scanner must skip 32 KiB of content before `usage`.
    let text = String::from_utf8(anthropic.clone()).expect("utf-8");
    let long_text = "Lorem ipsum dolor sit amet, \\\"quoted\\\" text. ".repeat(32 * 1024 / 44);
    let large = text
        .replacen("\"text\": \"", &format!("\"text\": \"{long_text}"), 1)
        .into_bytes();
    let bodies = [
        ("anthropic", Dialect::Anthropic, anthropic),
        ("openai", Dialect::Openai, openai),
        ("anthropic_32k", Dialect::Anthropic, large),
    ];
    let mut g = c.benchmark_group("json");
    for (name, kind, bytes) in &bodies {
        let m = meter(*kind, BodyKind::Json, bytes, 4096);
        assert!(
            m.complete && m.usage.total() > 0,
            "{name}: usage read: {m:?}"
        );
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        for chunk in [1460usize, 16384] {
            g.bench_with_input(
                BenchmarkId::new(*name, format!("chunk{chunk}")),
                bytes,
                |b, bytes| b.iter(|| meter(*kind, BodyKind::Json, black_box(bytes), chunk)),
            );
        }
    }
    g.finish();
}

fn record(c: &mut Criterion) {
    let r = UsageRecord {
        ts: UsageRecord::now_rfc3339(),
        request_id: "01JDQ8Z5T3S9V7Y2K4M6N8P0R2".into(),
        sub: "alice.smith@example.com".into(),
        role: Some("user".into()),
        tier: "user".into(),
        team: None,
        jti: "3f2a9c1e8b7d4a6f0e5c3b1a9d8e7f6c".into(),
        provider: "anthropic".into(),
        model: Some("claude-sonnet-4-5-20250929".into()),
        path: "/v1/messages".into(),
        status: Some(200),
        stream: true,
        input_tokens: 2095,
        output_tokens: 503,
        cache_creation_input_tokens: 1200,
        cache_read_input_tokens: 4096,
        cost_usd: 0.0189123,
        duration_ms: 4512,
        ttfb_ms: Some(312),
        client_disconnected: false,
        usage_complete: true,
        endpoint: "messages",
        attempts: 1,
        upstream_model: Some("claude-sonnet-4-5-20250929".into()),
        cache_hit: false,
        interrupted: false,
        guard: Vec::new(),
        journal: None,
    };
    let mut g = c.benchmark_group("record");
    let mut out = Vec::with_capacity(1024);
    g.bench_function("write_json_line", |b| {
        b.iter(|| {
            out.clear();
            black_box(&r).write_json_line(&mut out);
            black_box(out.len())
        })
    });
    g.bench_function("now_rfc3339", |b| b.iter(UsageRecord::now_rfc3339));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = sse, json, record
}
criterion_main!(benches);
