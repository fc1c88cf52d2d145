//! The crash journal's cost on the request path: one entry serialised and
//! copied into a mapped slot (the journal thread running, as in the
//! gateway), and the release a sink makes per record.
//!
//! `cargo bench --bench journal`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::borrow::Cow;
use std::time::Duration;
use tollgate::journal::{Entry, Held, Journal, Reserved, SINK_LOG};

fn entry(id: &str) -> Entry<'_> {
    Entry {
        request_id: Cow::Borrowed(id),
        ts: Cow::Borrowed("2026-12-06T21:00:00.000Z"),
        sub: Cow::Borrowed("alice.smith@example.com"),
        role: Some(Cow::Borrowed("user")),
        tier: Cow::Borrowed("user"),
        team: Some(Cow::Borrowed("research")),
        jti: Cow::Borrowed("3f2a9c1e8b7d4a6f0e5c3b1a9d8e7f6c"),
        provider: Cow::Borrowed("anthropic"),
        model: Some(Cow::Borrowed("claude-sonnet-4-5-20250929")),
        endpoint: Cow::Borrowed("messages"),
        path: Cow::Borrowed("/v1/messages"),
        stream: true,
        upstream_model: Some(Cow::Borrowed("claude-sonnet-4-5-20250929")),
        own: Held {
            slot: true,
            reservation: Some(Reserved {
                tokens: 4_200,
                usd: 0.0651,
                at_ms: 1_765_054_800_000,
                held: true,
            }),
        },
        team_scope: Held {
            slot: true,
            reservation: Some(Reserved {
                tokens: 4_200,
                usd: 0.0651,
                at_ms: 1_765_054_800_000,
                held: true,
            }),
        },
    }
}

fn journal(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let j = Journal::open(dir.path(), Duration::from_millis(100), false, false).expect("journal");
    j.start();
    let mut g = c.benchmark_group("journal");
    let mut out = Vec::with_capacity(1024);
    let e = entry("req_0123456789abcdef0123456789abcdef");
    g.bench_function("serialize_entry", |b| {
        b.iter(|| {
            out.clear();
            black_box(&e).write_line(&mut out);
            black_box(out.len())
        })
    });
    let mut n = 0u64;
    g.bench_function("append_and_done", |b| {
        b.iter(|| {
            n += 1;
            let id = format!("req_{n:032x}");
            let a = j.append(black_box(&entry(&id)));
            j.written(SINK_LOG, a.map(|a| a.slot).into_iter());
            black_box(a)
        })
    });
    let held = j.append(&entry("req_held")).map(|a| a.slot);
    g.bench_function("done_stale", |b| {
        b.iter(|| j.written(SINK_LOG, black_box(held).into_iter()))
    });
    g.finish();
}

criterion_group!(benches, journal);
criterion_main!(benches);
