//! What each command does, in terms of the library's modules.

use crate::cli::{Command, ReportArgs, RevokeArgs, TokenCommand, UsageCommand};
use anyhow::{bail, Context};
use std::process::ExitCode;
use tollgate::config::check::{check_file, Severity};
use tollgate::config::{parse_duration, Config};
use tollgate::identity::{keygen, KeyAlg, Signer};

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Serve {
            config,
            daemon,
            upgrade,
        } => {
            let cfg = Config::load(&config)?;
            tollgate::oplog::init(cfg.server.log_format);
            let problems: Vec<_> = tollgate::config::check::check(&cfg)
                .into_iter()
                .filter(|p| p.severity == Severity::Error)
                .collect();
            if let Some(first) = problems.first() {
                bail!(
                    "{} (and {} more problem(s); run `tollgate check -c {}`)",
                    first.message,
                    problems.len() - 1,
                    config.display()
                );
            }
            tollgate::server::run(cfg, daemon, upgrade)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            let (cfg, mut problems) = check_file(&config);
            if let Some(cfg) = &cfg {
                problems.extend(tollgate::config::check::check_bindable(cfg));
                problems.extend(tollgate::config::check::check_store_reachable(cfg));
                problems.extend(tollgate::config::check::check_ledger_reachable(cfg));
            }
            let mut errors = 0;
            for p in &problems {
                match p.severity {
                    Severity::Error => {
                        errors += 1;
                        eprintln!("error: {}", p.message);
                    }
                    Severity::Warning => eprintln!("warning: {}", p.message),
                }
            }
            if errors > 0 {
                eprintln!("{}: {errors} error(s)", config.display());
                return Ok(ExitCode::from(1));
            }
            println!("{}: ok", config.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { dir, alg, kid } => {
            let alg: KeyAlg = alg
                .parse()
                .map_err(|_| anyhow::anyhow!("--alg must be RS256, ES256 or EdDSA"))?;
            keygen(&dir, alg, kid.as_deref())?;
            println!(
                "wrote {} (mode 0600) and {}",
                dir.join("private.pem").display(),
                dir.join("public.pem").display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { command } => match command {
            TokenCommand::Issue {
                config,
                sub,
                role,
                team,
                ttl,
            } => {
                let cfg = Config::load(&config)?;
                if cfg.identity.private_key.is_none() {
                    bail!("identity.private_key is not set in {}", config.display());
                }
                let ttl = match ttl {
                    Some(t) => parse_duration(&t)?,
                    None => cfg.identity.default_ttl.as_duration(),
                };
                if ttl.is_zero() {
                    bail!("--ttl must be positive");
                }
                let signer = Signer::from_config(&cfg.identity, &|p| cfg.path(p))?;
                let issued = signer.issue_with_team(&sub, role.as_deref(), team.as_deref(), ttl)?;
                println!("{}", issued.token);
                Ok(ExitCode::SUCCESS)
            }
            TokenCommand::Revoke(args) => revoke(args),
        },
        Command::Usage {
            command: UsageCommand::Report(args),
        } => usage_report(args),
    }
}

fn usage_report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    use tollgate::report::{self, DayRange, Source};
    let range = DayRange::parse(&args.from, &args.to)?;
    let cfg = Config::load(&args.config)?;
    let source = if !args.jsonl.is_empty() {
        Source::Jsonl(args.jsonl)
    } else {
        match cfg.usage.postgres_url {
            Some(url) => Source::Ledger(url),
            None => bail!(
                "no ledger: set usage.postgres_url in {} or pass --jsonl",
                args.config.display()
            ),
        }
    };
    let (report, stats) = report::build(&source, range, &args.by)?;
    for s in stats.iter().filter(|s| s.malformed > 0) {
        eprintln!(
            "warning: skipped {} malformed lines in {}",
            s.malformed,
            s.path.display()
        );
    }
    print!("{}", report::render(&report, args.format));
    Ok(ExitCode::SUCCESS)
}

fn revoke(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(&args.config)?;
    if cfg.store.redis_url.is_none() {
        bail!(
            "the in-process store lives inside the running gateway; revoke through its admin API \
             (POST /admin/revoke) or configure store.redis_url"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    rt.block_on(async {
        let store = tollgate::store::connect(&cfg.store)?;
        let now = tollgate::clock::now_ms() / 1000;
        match (&args.jti, &args.sub) {
            (Some(jti), _) => {
                store
                    .revoke_jti(jti, now + 400 * 86_400)
                    .await
                    .context("revocation failed")?;
                println!("revoked token {jti}");
            }
            (None, Some(sub)) => {
                store
                    .revoke_sub(sub, now)
                    .await
                    .context("revocation failed")?;
                println!("revoked every token of {sub} issued at or before {now}");
            }
            (None, None) => bail!("give --jti or --sub"),
        }
        Ok(ExitCode::SUCCESS)
    })
}
