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

/// `url` with any password replaced by `***`: the password of a URL's
/// user info, a `password=` query parameter, or a `password=` key of the
/// `key=value` form libpq also accepts.
pub fn redacted(url: &str) -> String {
    match url.find("://") {
        Some(i) => {
            let rest_start = i + 3;
            let rest = &url[rest_start..];
            let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let authority = &rest[..auth_end];
            let mut out = String::with_capacity(url.len());
            out.push_str(&url[..rest_start]);
            match authority.rfind('@') {
                Some(at) => {
                    let userinfo = &authority[..at];
                    match userinfo.find(':') {
                        Some(c) => {
                            out.push_str(&userinfo[..=c]);
                            out.push_str(HIDDEN);
                        }
                        None => out.push_str(userinfo),
                    }
                    out.push_str(&authority[at..]);
                }
                None => out.push_str(authority),
            }
            out.push_str(&mask_password_values(&rest[auth_end..], &['&', '#']));
            out
        }
        None => mask_password_values(url, &[' ', '\t', '\n']),
    }
}

/// Masks the value after every `password` `=` (spaces allowed around `=`,
/// a value quoted with `'` runs to the closing quote).
fn mask_password_values(s: &str, ends: &[char]) -> String {
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut pos = 0;
    while let Some(found) = lower[pos..].find("password") {
        let key_end = pos + found + "password".len();
        out.push_str(&s[pos..key_end]);
        let after = &s[key_end..];
        let trimmed = after.trim_start_matches([' ', '\t']);
        let Some(value) = trimmed.strip_prefix('=') else {
            pos = key_end;
            continue;
        };
        let value = value.trim_start_matches([' ', '\t']);
        let value_start = s.len() - value.len();
        out.push_str(&s[key_end..value_start]);
        let value_len = if let Some(q) = value.strip_prefix('\'') {
            // libpq quoting: `\'` and `\\` escape; the value ends at an
            // unescaped quote (or at the end of a torn string).
            let mut escaped = false;
            let mut len = q.len();
            for (i, ch) in q.char_indices() {
                match ch {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '\'' => {
                        len = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
            1 + len
        } else {
            value.find(ends).unwrap_or(value.len())
        };
        out.push_str(HIDDEN);
        pos = value_start + value_len;
    }
    out.push_str(&s[pos..]);
    out
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

    #[test]
    fn masks_passwords_in_every_form() {
        let cases = [
            (
                "postgres://tollgate:s3cr%40t@db.internal:5432/tollgate",
                "postgres://tollgate:***@db.internal:5432/tollgate",
            ),
            (
                "postgresql://u:p@ss@h/db?sslmode=disable",
                "postgresql://u:***@h/db?sslmode=disable",
            ),
            (
                "postgres://tollgate@127.0.0.1:5432/tollgate",
                "postgres://tollgate@127.0.0.1:5432/tollgate",
            ),
            (
                "postgres://h/db?user=u&password=hunter2&sslmode=disable",
                "postgres://h/db?user=u&password=***&sslmode=disable",
            ),
            (
                "host=db user=u password=hunter2 dbname=x",
                "host=db user=u password=*** dbname=x",
            ),
            (
                "host=db password = 'a b\\' c' dbname=x",
                "host=db password = *** dbname=x",
            ),
            ("host=db PASSWORD=x", "host=db PASSWORD=***"),
            ("password='torn", "password=***"),
        ];
        for (input, want) in cases {
            assert_eq!(redacted(input), want, "{input}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_drops_the_user_info_password(
            user in "[a-z]{1,8}", pass in "[a-zA-Z0-9]{6,12}", junk in "\\PC{0,40}"
        ) {
            let _ = redacted(&junk);
            let url = format!("postgres://{user}:{pass}@host:5432/db?{junk}");
            let red = redacted(&url);
            proptest::prop_assert!(!red.contains(&format!(":{pass}@")), "{}", red);
        }
    }
}
