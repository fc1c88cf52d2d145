//! Mints many identity tokens at once for load tests (`scripts/load.sh`):
//! `tollgate token issue` signs one per process start, which is far too slow
//! for the 100,000 distinct users of the memory test.
//!
//! ```sh
//! cargo build --release --example mint_tokens
//! target/release/examples/mint_tokens -c bench.yaml --count 2000 --users 500 \
//!     [--prefix user] [--first 0] [--role user] [--ttl-secs 86400] > tokens.txt
//! ```
//!
//! Prints one token per line; token `i` (counting from `--first`) belongs to
//! subject `{prefix}-{i % users}`, so a user holds `count / users` tokens.
//! Signs with the config's `identity.private_key` on every core.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use tollgate::config::Config;
use tollgate::identity::Signer;

struct Args {
    config: String,
    count: usize,
    users: usize,
    first: usize,
    prefix: String,
    role: String,
    ttl: Duration,
}

const USAGE: &str = "usage: mint_tokens -c CONFIG --count N [--users U] [--first I] [--prefix P] [--role R] [--ttl-secs S]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        config: String::new(),
        count: 0,
        users: 0,
        first: 0,
        prefix: "user".into(),
        role: "user".into(),
        ttl: Duration::from_secs(86_400),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "-c" | "--config" => a.config = value()?,
            "--count" => a.count = number(value()?)?,
            "--users" => a.users = number(value()?)?,
            "--first" => a.first = number(value()?)?,
            "--prefix" => a.prefix = value()?,
            "--role" => a.role = value()?,
            "--ttl-secs" => a.ttl = Duration::from_secs(number(value()?)? as u64),
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    if a.config.is_empty() || a.count == 0 {
        return Err(USAGE.into());
    }
    if a.users == 0 {
        a.users = a.count;
    }
    Ok(a)
}

fn run(a: &Args) -> anyhow::Result<()> {
    let cfg = Config::load(Path::new(&a.config))?;
    let signer = Signer::from_config(&cfg.identity, &|p| cfg.path(p))?;
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(a.count);
    let per = a.count.div_ceil(workers);
    // Each worker signs a contiguous range; printed in order afterwards.
    let parts: Vec<anyhow::Result<Vec<String>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let signer = &signer;
                s.spawn(move || {
                    let lo = a.first + w * per;
                    let hi = (lo + per).min(a.first + a.count);
                    (lo..hi)
                        .map(|i| {
                            let sub = format!("{}-{}", a.prefix, i % a.users);
                            Ok(signer.issue(&sub, Some(&a.role), a.ttl)?.token)
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a signing thread panicked")))
            })
            .collect()
    });
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for part in parts {
        for token in part? {
            out.write_all(token.as_bytes())?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mint_tokens: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mint_tokens: {e:#}");
            ExitCode::from(1)
        }
    }
}
