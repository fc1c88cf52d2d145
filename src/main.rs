//! `tollgate` binary: parses the command line and dispatches.

mod cli;
mod commands;

use clap::Parser;
use std::process::ExitCode;

// Pingora allocates and frees buffers, headers and futures for every
// request; with glibc's malloc that was ~15 % of the proxy's CPU
// (docs/performance.md). mimalloc's per-thread free lists cost a fraction;
// `tollgate::allocator` says why it is not entered through the `mimalloc`
// crate.
#[global_allocator]
static ALLOCATOR: tollgate::allocator::Allocator = tollgate::allocator::Allocator;

fn main() -> ExitCode {
    // A bug must not print a backtrace (or anything it holds) to operators;
    // one line, then exit 1.
    std::panic::set_hook(Box::new(|info| {
        let loc = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error{loc}; please report it");
    }));
    let cli = cli::Cli::parse();
    match commands::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// `anyhow`'s context chain on one line, without repeating a cause that an
/// outer message already spells out.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if !out.contains(&msg) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&msg);
        }
    }
    out.replace(['\n', '\r'], " ")
}
