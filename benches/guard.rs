//! The guard over a realistic 100 KB Messages body (a coding agent's
//! conversation: system prompt, many user and assistant turns, tool
//! results), with every built-in rule: the common case where nothing
//! matches, and one with matches to redact; and the 4.5 KB body of
//! `scripts/load.sh`, the cost added to an ordinary request. One more
//! splits the no-match case: the walk alone (lexing, walking, decoding the
//! text), without the rules.
//!
//! `cargo bench --bench guard -- --warm-up-time 1 --measurement-time 3`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};
use std::time::Duration;
use tollgate::config::{GuardAction, GuardBuiltin, GuardConfig, GuardRuleConfig, GuardScan};
use tollgate::guard::Guard;
use tollgate::providers::Endpoint;

const BENIGN: &str = include_str!("../tests/fixtures/guard/benign_prompts.txt");
const TARGET: usize = 100 * 1024;

fn guard(scan: GuardScan, pii: GuardAction, secrets: GuardAction) -> Guard {
    let rule = |name: &str, builtin, action| GuardRuleConfig {
        name: name.into(),
        builtin: Some(builtin),
        pattern: None,
        action,
    };
    let cfg = GuardConfig {
        scan,
        rules: vec![
            rule(
                "injection",
                GuardBuiltin::PromptInjection,
                GuardAction::Block,
            ),
            rule("secrets", GuardBuiltin::Secrets, secrets),
            rule("pii", GuardBuiltin::Pii, pii),
        ],
    };
    Guard::from_config(&cfg).expect("compiles").expect("on")
}

/// Turns of ordinary engineering text until the body is ~100 KB; every
/// `every`-th user turn gets `extra` appended.
fn body(extra: &str, every: usize) -> Vec<u8> {
    let prompts: Vec<String> = BENIGN
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.replace("\\n", "\n"))
        .collect();
    let mut messages: Vec<Value> = Vec::new();
    let mut size = 0;
    let mut i = 0;
    while size < TARGET {
        let p = &prompts[i % prompts.len()];
        let mut user = format!("{p}\n\n{}", prompts[(i * 7 + 3) % prompts.len()]);
        if !extra.is_empty() && i % every == 0 {
            user.push(' ');
            user.push_str(extra);
        }
        let answer = format!(
            "Here is what I found.\n```\n{}\n```\nDoes that help?",
            prompts[(i * 13 + 5) % prompts.len()]
        );
        let tool = prompts[(i * 3 + 1) % prompts.len()].clone();
        let turn = [
            json!({"role": "user", "content": [{"type": "text", "text": user}]}),
            json!({"role": "assistant", "content": [
                {"type": "text", "text": answer},
                {"type": "tool_use", "id": format!("t{i}"), "name": "read_file", "input": {"path": "src/main.rs"}}
            ]}),
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": format!("t{i}"), "content": tool}
            ]}),
        ];
        size += turn.iter().map(|m| m.to_string().len() + 1).sum::<usize>();
        messages.extend(turn);
        i += 1;
    }
    messages.push(json!({"role": "user", "content": "Thanks, please summarise."}));
    serde_json::to_vec(&json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "system": "You are a careful senior engineer. Answer briefly, with code where it helps.",
        "messages": messages
    }))
    .expect("json")
}

fn bench(c: &mut Criterion) {
    let clean = body("", 1);
    let dirty = body(
        "Contact jane.doe@acme-corp.com or +44 20 7946 0958; token ghp_FAKEabcdefghijklmnopqrstuvwxyz0123456789",
        10,
    );
    let blocking = guard(GuardScan::All, GuardAction::Redact, GuardAction::Block);
    let user = guard(GuardScan::User, GuardAction::Redact, GuardAction::Block);
    let redacting = guard(GuardScan::All, GuardAction::Redact, GuardAction::Redact);
    assert!(blocking
        .check(Endpoint::Messages, &clean)
        .matched
        .is_empty());
    assert!(redacting
        .check(Endpoint::Messages, &dirty)
        .redacted
        .is_some());

    let mut g = c.benchmark_group("guard");
    g.throughput(Throughput::Bytes(clean.len() as u64));
    g.bench_function("100k_no_match/scan_all", |b| {
        b.iter(|| blocking.check(Endpoint::Messages, black_box(&clean)))
    });
    // The same without the rules: lexing, walking and decoding the text
    // (the rest of `scan_all` is the RegexSet).
    g.bench_function("100k_no_match/scan_all_walk_only", |b| {
        b.iter(|| blocking.text_len(Endpoint::Messages, black_box(&clean)))
    });
    g.bench_function("100k_no_match/scan_user", |b| {
        b.iter(|| user.check(Endpoint::Messages, black_box(&clean)))
    });
    g.throughput(Throughput::Bytes(dirty.len() as u64));
    g.bench_function("100k_with_matches/redact", |b| {
        b.iter(|| redacting.check(Endpoint::Messages, black_box(&dirty)))
    });
    // The 4.5 KB body `scripts/load.sh` sends: the guard's cost per
    // ordinary request.
    let load = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/load/request_anthropic.json"
    ))
    .expect("load body");
    g.throughput(Throughput::Bytes(load.len() as u64));
    g.bench_function("load_body_4.5k/scan_all", |b| {
        b.iter(|| blocking.check(Endpoint::Messages, black_box(&load)))
    });
    g.finish();
    println!(
        "bodies: clean {} bytes, with matches {} bytes",
        clean.len(),
        dirty.len()
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
