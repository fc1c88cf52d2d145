//! Connection strings without their passwords, for messages an operator
//! sees (terminals and logs are not places for the ledger's password).

const MASK: &str = "***";

/// `url` with any password replaced by `***`: the password of a URL's
/// user info, a `password=` query parameter, or a `password=` key of the
/// `key=value` form libpq also accepts.
pub fn redact_url(url: &str) -> String {
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
                            out.push_str(MASK);
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
        out.push_str(MASK);
        pos = value_start + value_len;
    }
    out.push_str(&s[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(redact_url(input), want, "{input}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_drops_the_user_info_password(
            user in "[a-z]{1,8}", pass in "[a-zA-Z0-9]{6,12}", junk in "\\PC{0,40}"
        ) {
            let _ = redact_url(&junk);
            let url = format!("postgres://{user}:{pass}@host:5432/db?{junk}");
            let red = redact_url(&url);
            proptest::prop_assert!(!red.contains(&format!(":{pass}@")), "{}", red);
        }
    }
}
