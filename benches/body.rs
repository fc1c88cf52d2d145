//! Request body inspection, done once per request before it goes upstream:
//! model, output cap, `stream` and the input-token estimate of a 4.5 KB chat
//! body (the same body `scripts/load.sh` sends), and the OpenAI streaming
//! rewrite (`stream_options.include_usage`).
//!
//! `cargo bench --bench body`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;
use tollgate::providers::body::{inspect, rewrite_for_usage};
use tollgate::providers::Endpoint;

const LOAD_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/load/");

fn read(name: &str) -> Vec<u8> {
    std::fs::read(format!("{LOAD_DIR}{name}")).expect("request body readable")
}

fn bodies(c: &mut Criterion) {
    let anthropic = read("request_anthropic.json");
    let openai = read("request_openai.json");
    let mut openai_stream: serde_json::Value = serde_json::from_slice(&openai).expect("json");
    openai_stream["stream"] = serde_json::Value::Bool(true);
    let openai_stream = serde_json::to_vec(&openai_stream).expect("json");

    let mut g = c.benchmark_group("body");
    g.throughput(Throughput::Bytes(anthropic.len() as u64));
    g.bench_function("inspect/anthropic_4.5k", |b| {
        b.iter(|| inspect(Endpoint::Messages, black_box(&anthropic)).expect("valid body"))
    });
    g.throughput(Throughput::Bytes(openai.len() as u64));
    g.bench_function("inspect/openai_4.5k", |b| {
        b.iter(|| inspect(Endpoint::ChatCompletions, black_box(&openai)).expect("valid body"))
    });
    let info = inspect(Endpoint::ChatCompletions, &openai_stream).expect("valid body");
    assert!(info.stream);
    g.throughput(Throughput::Bytes(openai_stream.len() as u64));
    g.bench_function("rewrite_include_usage/openai_4.5k", |b| {
        b.iter(|| {
            rewrite_for_usage(Endpoint::ChatCompletions, black_box(&openai_stream), &info)
                .expect("rewritten")
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bodies
}
criterion_main!(benches);
