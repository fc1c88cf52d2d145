//! Command line: parsing and dispatch only.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use tollgate::report::{Format, GroupField};

#[derive(Parser, Debug)]
#[command(
    name = "tollgate",
    version,
    about = "LLM egress gateway: verified identity, per-user limits, credential swap, exact usage records",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway
    Serve {
        /// Config file (YAML)
        #[arg(short = 'c', long = "conf")]
        config: PathBuf,
        /// Run in the background (fork; writes server.pid_file)
        #[arg(short = 'd', long)]
        daemon: bool,
        /// Take over the listeners of a running instance (graceful upgrade)
        #[arg(short = 'u', long)]
        upgrade: bool,
    },
    /// Validate a config: files readable, keys parse, env vars present, URLs valid.
    /// Prints every problem; exits 1 on any error, 0 when clean
    Check {
        #[arg(short = 'c', long = "conf")]
        config: PathBuf,
    },
    /// Write a signing key pair (private.pem mode 0600, public.pem) into DIR
    Keygen {
        /// Directory to create the keys in (created if missing)
        #[arg(long)]
        dir: PathBuf,
        /// Key algorithm: RS256 (2048-bit), ES256 or EdDSA
        #[arg(long, default_value = "RS256")]
        alg: String,
        /// Key id to print for the config's `keys` list
        #[arg(long)]
        kid: Option<String>,
    },
    /// Issue or revoke identity tokens
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Usage reports from the ledger or the usage logs
    Usage {
        #[command(subcommand)]
        command: UsageCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum UsageCommand {
    /// Sum requests, the four token kinds and cost over UTC days FROM..TO
    /// (inclusive), grouped by the --by fields, most expensive first.
    /// Reads the ledger (usage.postgres_url), or the --jsonl files when given
    Report(ReportArgs),
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Config file (YAML); its usage.postgres_url is the ledger
    #[arg(short = 'c', long = "conf")]
    pub config: PathBuf,
    /// First UTC day, YYYY-MM-DD
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub from: String,
    /// Last UTC day (included), YYYY-MM-DD
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub to: String,
    /// Group by this field; repeat (or separate with commas) to nest groups,
    /// outermost first. Without --by: one row of totals
    #[arg(long, value_enum, value_delimiter = ',')]
    pub by: Vec<GroupField>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Read this usage log instead of the ledger; repeat for several files
    /// (rotated files and gzip included)
    #[arg(long, value_name = "PATH")]
    pub jsonl: Vec<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Sign a token with identity.private_key and print it
    Issue {
        #[arg(short = 'c', long = "conf")]
        config: PathBuf,
        /// Subject (the user or service the token identifies)
        #[arg(long)]
        sub: String,
        /// Role claim (selects the limits tier, e.g. user, admin)
        #[arg(long)]
        role: Option<String>,
        /// Team claim (identity.claims.team: the team whose limits also apply)
        #[arg(long)]
        team: Option<String>,
        /// Lifetime, e.g. 30m, 24h (default: identity.default_ttl)
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Revoke one token (--jti) or every token of a subject issued up to now (--sub)
    Revoke(RevokeArgs),
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    #[arg(short = 'c', long = "conf")]
    pub config: PathBuf,
    /// Token id to revoke
    #[arg(long, conflicts_with = "sub", required_unless_present = "sub")]
    pub jti: Option<String>,
    /// Subject whose tokens issued up to now are revoked
    #[arg(long)]
    pub sub: Option<String>,
}
