//! `usage.postgres_url`: parsed exactly as the ledger will connect with it,
//! and printable only with its password hidden (it ends up in error
//! messages and the operational log otherwise).

use std::str::FromStr;

const HIDDEN: &str = "***";

/// Parses a URL (`postgres://user:pass@host:port/db?opt=v`) or a key/value
/// string (`host=… user=…`), as `tokio_postgres` does.
pub fn parse(url: &str) -> Result<tokio_postgres::Config, String> {
    let cfg = tokio_postgres::Config::from_str(url).map_err(|e| {
        // The parser's messages name options, never values; scrub anyway so
        // a future version quoting the input cannot leak the password.
        scrub(&e.to_string(), url)
    })?;
    if cfg.get_hosts().is_empty() {
        return Err("no host: give one, e.g. postgres://tollgate@127.0.0.1:5432/tollgate".into());
    }
    if cfg.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        // Every connection would fail, and records pile up in the spool.
        return Err(
            "sslmode=require: TLS to Postgres is not supported yet (plain TCP only)".into(),
        );
    }
    Ok(cfg)
}

/// `url` with its password (URL userinfo, `?password=`, or `password=` in a
/// key/value string) replaced by `***`.
pub fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", redact_url_rest(rest)),
        None => redact_key_values(url),
    }
}

/// Registers the password with the operational log's redaction, so that no
/// dependency's log line can print it either.
pub fn register_password(cfg: &tokio_postgres::Config) {
    if let Some(pw) = cfg.get_password() {
        if let Ok(pw) = std::str::from_utf8(pw) {
            crate::oplog::register_secret(pw);
        }
    }
}

fn scrub(text: &str, url: &str) -> String {
    match parse_password(url) {
        Some(pw) if !pw.is_empty() => text.replace(&pw, HIDDEN),
        _ => text.to_string(),
    }
}

fn parse_password(url: &str) -> Option<String> {
    let cfg = tokio_postgres::Config::from_str(url).ok()?;
    cfg.get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

fn redact_url_rest(rest: &str) -> String {
    // The authority ends at the first '/' or '?'; userinfo is what comes
    // before its last '@' (a password may itself contain '@' percent-encoded
    // or not).
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{HIDDEN}@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k == "password" => format!("{k}={HIDDEN}"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{authority}{tail}")
}

/// `password=secret` or `password = 'se cret'` in libpq's key/value form.
fn redact_key_values(s: &str) -> String {
    let Some(at) = s.find("password") else {
        return s.to_string();
    };
    let after = &s[at + "password".len()..];
    let trimmed = after.trim_start();
    let Some(value) = trimmed.strip_prefix('=') else {
        return s.to_string();
    };
    let value = value.trim_start();
    let value_start = s.len() - value.len();
    let value_len = if let Some(quoted) = value.strip_prefix('\'') {
        let mut escaped = false;
        let mut len = None;
        for (i, c) in quoted.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '\'' if !escaped => {
                    len = Some(i + 2);
                    break;
                }
                _ => escaped = false,
            }
        }
        len.unwrap_or(value.len())
    } else {
        value.find(char::is_whitespace).unwrap_or(value.len())
    };
    let rest = &s[value_start + value_len..];
    format!("{}{HIDDEN}{}", &s[..value_start], redact_key_values(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_hidden() {
        for (url, want) in [
            (
                "postgres://tollgate:s3cret@127.0.0.1:5432/tollgate",
                "postgres://tollgate:***@127.0.0.1:5432/tollgate",
            ),
            (
                "postgresql://u:p@ss@db/x?sslmode=disable&password=again",
                "postgresql://u:***@db/x?sslmode=disable&password=***",
            ),
            (
                "postgres://tollgate@127.0.0.1/t",
                "postgres://tollgate@127.0.0.1/t",
            ),
            ("postgres://h", "postgres://h"),
            (
                "host=db user=t password=s3cret dbname=x",
                "host=db user=t password=*** dbname=x",
            ),
            (
                "host=db password = 'a b\\' c' user=t",
                "host=db password = *** user=t",
            ),
        ] {
            assert_eq!(redacted(url), want, "{url}");
        }
    }

    #[test]
    fn parse_accepts_both_forms_and_needs_a_host() {
        assert!(parse("postgres://tollgate:pw@127.0.0.1:5432/tollgate").is_ok());
        assert!(parse("host=127.0.0.1 user=t").is_ok());
        assert!(parse("postgres://").is_err());
        let e = parse("postgres://u:hunter2hunter2@h:notaport/db").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(parse("nonsense without equals").is_err());
        assert!(parse("postgres://h/db?sslmode=require").is_err());
        assert!(parse("postgres://h/db?sslmode=disable").is_ok());
    }
}
