//! Token verification: cold (`verify_uncached`: header, key lookup, signature,
//! claims) and cached (`verify`: a hash lookup in the verified-token cache),
//! for each algorithm `tollgate keygen` writes.
//!
//! `cargo bench --bench identity`

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tollgate::config::Config;
use tollgate::identity::{keygen, KeyAlg, Signer, Verifier};

/// Tokens cycled through in the "many tokens" cached case: every one is in
/// the cache, but they are spread over memory as real callers' are.
const POOL: usize = 1000;

/// `cargo test --benches` runs each benchmark once without `--bench`: keep
/// its setup small there.
fn pool_size() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        POOL
    } else {
        10
    }
}

struct Env {
    _dir: tempfile::TempDir,
    verifier: Verifier,
    tokens: Vec<String>,
}

fn env(alg: KeyAlg) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    keygen(dir.path(), alg, Some("k1")).expect("keygen");
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
identity:
  issuer: tollgate
  audience: llm-gateway
  algorithms: [{alg}]
  keys:
    - {{ kid: k1, public_key: {dir}/public.pem }}
  private_key: {dir}/private.pem
  signing_kid: k1
providers: []
"#,
        alg = alg.name(),
        dir = dir.path().display()
    );
    let cfg = Config::parse(&yaml).expect("bench config parses");
    let resolve = |p: &Path| -> PathBuf { p.to_path_buf() };
    let verifier = Verifier::from_config(&cfg.identity, &resolve).expect("verifier");
    let signer = Signer::from_config(&cfg.identity, &resolve).expect("signer");
    let tokens = (0..pool_size())
        .map(|i| {
            signer
                .issue(
                    &format!("user-{i}@example.com"),
                    Some("user"),
                    Duration::from_secs(3600),
                )
                .expect("issue")
                .token
        })
        .collect();
    Env {
        _dir: dir,
        verifier,
        tokens,
    }
}

fn verification(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify");
    for alg in [KeyAlg::Rs256, KeyAlg::Es256, KeyAlg::EdDsa] {
        let e = env(alg);
        let one = e.tokens[0].clone();
        assert!(e.verifier.verify_uncached(&one).is_ok(), "token verifies");

        g.bench_with_input(BenchmarkId::new("cold", alg.name()), &one, |b, t| {
            b.iter(|| e.verifier.verify_uncached(black_box(t)).expect("valid"))
        });

        // Same token again and again: the best case of the cache.
        e.verifier.verify(&one).expect("valid");
        g.bench_with_input(BenchmarkId::new("cached_one", alg.name()), &one, |b, t| {
            b.iter(|| e.verifier.verify(black_box(t)).expect("valid"))
        });

        // A pool of tokens, each already cached, taken in turn.
        for t in &e.tokens {
            e.verifier.verify(t).expect("valid");
        }
        g.bench_function(
            BenchmarkId::new(format!("cached_pool{POOL}"), alg.name()),
            |b| {
                let mut i = 0usize;
                b.iter(|| {
                    i = (i + 1) % e.tokens.len();
                    e.verifier.verify(black_box(&e.tokens[i])).expect("valid")
                })
            },
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = verification
}
criterion_main!(benches);
