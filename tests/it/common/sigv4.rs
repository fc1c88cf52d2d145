//! An independent AWS Signature Version 4 verifier (header-signed requests,
//! non-S3 rules), written from AWS's specification with SHA-256 from `sha2`
//! and an HMAC written here: it shares no code with the gateway's signer
//! (nor with the `aws-sigv4` crate), so it catches the gateway's mistakes
//! instead of repeating them.
//!
//! The canonical request is rebuilt from what the fake received: the method,
//! the path as sent (normalized, then each segment URI-encoded once more:
//! non-S3 services "double-encode", so `v1%3A0` on the wire is `v1%253A0`),
//! the query (decoded, re-encoded, sorted), the signed headers' values
//! (trimmed, inner runs of spaces collapsed, repeats joined by `,`) and the
//! SHA-256 of the exact body bytes received.

use crate::common::fake_provider::Recorded;
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// HMAC-SHA256 (RFC 2104), block size 64.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(data);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// `kSigning` = HMAC chain over "AWS4"+secret, date, region, service, "aws4_request".
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, service.as_bytes());
    hmac_sha256(&k_service, b"aws4_request")
}

/// URI-encodes every byte but the unreserved `A-Za-z0-9-_.~` (uppercase hex).
pub fn uri_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-decodes (a `%` not followed by two hex digits stays as it is;
/// `+` is not a space).
pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hexv = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hexv(b[i + 1]), hexv(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The canonical URI of a path as it was sent (without the query): dot
/// segments resolved and empty segments dropped (a trailing slash kept),
/// then every segment URI-encoded again (the non-S3 double encoding).
pub fn canonical_uri(path: &str) -> String {
    let pieces: Vec<&str> = path.split('/').collect();
    let mut out: Vec<&str> = Vec::new();
    for seg in &pieces {
        match *seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let trailing = matches!(pieces.last(), Some(&"" | &"." | &".."));
    let mut uri = String::from("/");
    uri.push_str(
        &out.iter()
            .map(|s| uri_encode(s.as_bytes()))
            .collect::<Vec<_>>()
            .join("/"),
    );
    if trailing && !out.is_empty() {
        uri.push('/');
    }
    uri
}

/// The canonical query string: each name and value decoded, re-encoded,
/// pairs sorted by name then value, a missing `=` meaning an empty value.
pub fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k)),
                uri_encode(&percent_decode(v)),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A header value in canonical form: trimmed, runs of spaces and tabs as one space.
pub fn canonical_header_value(v: &str) -> String {
    v.split([' ', '\t'])
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    pub access_key: String,
    pub date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

/// Parses `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
/// SignedHeaders=a;b;c, Signature=HEX` (each component exactly once).
pub fn parse_authorization(value: &str) -> Result<Authorization, String> {
    let rest = value
        .strip_prefix(ALGORITHM)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| format!("authorization does not start with {ALGORITHM:?}: {value:?}"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("authorization component without '=': {part:?}"))?;
        let slot = match k {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            other => return Err(format!("unknown authorization component {other:?}")),
        };
        if slot.replace(v.to_string()).is_some() {
            return Err(format!("authorization component {k} given twice"));
        }
    }
    let credential = credential.ok_or("authorization has no Credential")?;
    let signed = signed.ok_or("authorization has no SignedHeaders")?;
    let signature = signature.ok_or("authorization has no Signature")?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key, date, region, service, terminator] = scope.as_slice() else {
        return Err(format!(
            "Credential is not AKID/date/region/service/aws4_request: {credential:?}"
        ));
    };
    if *terminator != "aws4_request" {
        return Err(format!(
            "credential scope ends with {terminator:?}, not aws4_request"
        ));
    }
    let signed_headers: Vec<String> = signed.split(';').map(str::to_string).collect();
    if signed_headers.iter().any(|h| h.is_empty()) {
        return Err(format!("SignedHeaders has an empty name: {signed:?}"));
    }
    if signed_headers
        .iter()
        .any(|h| h.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(format!("SignedHeaders is not lowercase: {signed:?}"));
    }
    if signed_headers.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!(
            "SignedHeaders is not sorted without repeats: {signed:?}"
        ));
    }
    if signature.len() != 64
        || !signature
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "Signature is not 64 lowercase hex digits: {signature:?}"
        ));
    }
    Ok(Authorization {
        access_key: access_key.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers,
        signature,
    })
}

/// The canonical request for `req` with these signed headers and payload hash.
pub fn canonical_request(
    req: &Recorded,
    signed_headers: &[String],
    payload_hash: &str,
) -> Result<String, String> {
    let (path, query) = req
        .target
        .split_once('?')
        .unwrap_or((req.target.as_str(), ""));
    let mut out = format!(
        "{}\n{}\n{}\n",
        req.method,
        canonical_uri(path),
        canonical_query(query)
    );
    for name in signed_headers {
        let values = req.header_all(name);
        if values.is_empty() {
            return Err(format!("signed header {name:?} is not in the request"));
        }
        let joined: Vec<String> = values.iter().map(|v| canonical_header_value(v)).collect();
        out.push_str(&format!("{name}:{}\n", joined.join(",")));
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

fn is_amz_date(d: &str) -> bool {
    let b = d.as_bytes();
    b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[9..15].iter().all(u8::is_ascii_digit)
}

fn only_header<'a>(req: &'a Recorded, name: &str) -> Result<Option<&'a str>, String> {
    let all = req.header_all(name);
    match all.as_slice() {
        [] => Ok(None),
        [v] => Ok(Some(v)),
        many => Err(format!("header {name} sent {} times: {many:?}", many.len())),
    }
}

/// Verifies the SigV4 `authorization` header of `req` for these credentials,
/// region and service. With `session_token` Some, `x-amz-security-token`
/// must carry it (signed or not, as AWS accepts either); with None it must be
/// absent. Err says precisely what differs. The clock is not looked at (see
/// [`check_clock`]), so published test vectors verify.
pub fn verify(
    req: &Recorded,
    access_key: &str,
    secret: &str,
    session_token: Option<&str>,
    region: &str,
    service: &str,
) -> Result<(), String> {
    let header = only_header(req, "authorization")?.ok_or("no authorization header")?;
    let auth = parse_authorization(header)?;
    if auth.access_key != access_key {
        return Err(format!(
            "access key {:?} is not {access_key:?}",
            auth.access_key
        ));
    }
    if auth.region != region {
        return Err(format!(
            "credential scope region {:?} is not {region:?}",
            auth.region
        ));
    }
    if auth.service != service {
        return Err(format!(
            "credential scope service {:?} is not {service:?}",
            auth.service
        ));
    }
    let amz_date = only_header(req, "x-amz-date")?.ok_or("no x-amz-date header")?;
    if !is_amz_date(amz_date) {
        return Err(format!("x-amz-date {amz_date:?} is not YYYYMMDDTHHMMSSZ"));
    }
    if auth.date != amz_date[..8] {
        return Err(format!(
            "credential scope date {:?} is not the day of x-amz-date {amz_date:?}",
            auth.date
        ));
    }
    for must in ["host", "x-amz-date"] {
        if !auth.signed_headers.iter().any(|h| h == must) {
            return Err(format!(
                "SignedHeaders {:?} leaves out {must}",
                auth.signed_headers.join(";")
            ));
        }
    }
    let token = only_header(req, "x-amz-security-token")?;
    match (session_token, token) {
        (Some(want), Some(got)) if want == got => {}
        (Some(_), Some(got)) => {
            return Err(format!(
                "x-amz-security-token {got:?} is not the session token"
            ))
        }
        (Some(_), None) => {
            return Err("session token configured, x-amz-security-token missing".into())
        }
        (None, Some(got)) => {
            return Err(format!(
                "x-amz-security-token {got:?} sent without a session token configured"
            ))
        }
        (None, None) => {}
    }
    let payload_hash = sha256_hex(&req.body);
    if let Some(claimed) = only_header(req, "x-amz-content-sha256")? {
        if claimed != payload_hash {
            return Err(format!(
                "x-amz-content-sha256 {claimed:?} is not the SHA-256 of the {} body bytes received ({payload_hash})",
                req.body.len()
            ));
        }
    }
    let creq = canonical_request(req, &auth.signed_headers, &payload_hash)?;
    let scope = format!("{}/{region}/{service}/aws4_request", auth.date);
    let sts = string_to_sign(amz_date, &scope, &creq);
    let key = signing_key(secret, &auth.date, region, service);
    let expected = hex(&hmac_sha256(&key, sts.as_bytes()));
    if expected != auth.signature {
        return Err(format!(
            "signature mismatch: sent {}, expected {expected}\n--- canonical request:\n{creq}\n--- string to sign:\n{sts}",
            auth.signature
        ));
    }
    Ok(())
}

/// Seconds since the epoch of an `x-amz-date` (`YYYYMMDDTHHMMSSZ`).
pub fn amz_date_secs(d: &str) -> Option<u64> {
    if !is_amz_date(d) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| d[r].parse::<i64>().ok();
    let (y, m, day) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (hh, mm, ss) = (n(9..11)?, n(11..13)?, n(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// AWS refuses a request whose `x-amz-date` is more than 5 minutes off its
/// clock ("Signature expired"); Err when `req`'s is more than `max_skew` off.
pub fn check_clock(req: &Recorded, max_skew: Duration) -> Result<(), String> {
    let d = only_header(req, "x-amz-date")?.ok_or("no x-amz-date header")?;
    let at = amz_date_secs(d).ok_or_else(|| format!("x-amz-date {d:?} is not a date"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let off = now.abs_diff(at);
    if off > max_skew.as_secs() {
        return Err(format!(
            "Signature expired: x-amz-date {d} is {off} s away from now (allowed {} s)",
            max_skew.as_secs()
        ));
    }
    Ok(())
}

/// Builds a [`Recorded`] from an HTTP/1.1 request text ("METHOD TARGET
/// HTTP/1.1", `Name:value` lines, a blank line, the body), as the AWS test
/// suite writes them. Also handy for hand-made requests in tests.
pub fn recorded_from_text(text: &str) -> Recorded {
    let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
    let mut lines = head.lines();
    let first = lines.next().expect("request line");
    let (method, rest) = first.split_once(' ').expect("method");
    let target = rest.strip_suffix(" HTTP/1.1").unwrap_or(rest);
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header line");
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    Recorded {
        seq: 0,
        method: method.to_string(),
        target: target.to_string(),
        headers,
        body: body.as_bytes().to_vec(),
        case: None,
        reported: None,
        outcome: crate::common::fake_provider::Outcome::Completed,
    }
}

mod tests {
    use super::*;

    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const STS_TOKEN: &str = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";

    fn auth(signed: &str, sig: &str) -> String {
        format!("Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders={signed}, Signature={sig}")
    }

    /// (name, signed request text, session token) from AWS's SigV4 test
    /// suite (aws-c-auth's, as shipped in the aws-sigv4 crate), the
    /// "normalize: true" cases (non-S3 services).
    fn vectors() -> Vec<(&'static str, String, Option<&'static str>)> {
        let date = "X-Amz-Date:20150830T123600Z";
        let v = |name, head: &str, signed, sig, body: &str, token| {
            (
                name,
                format!("{head}\n{date}\n{}\n\n{body}", auth(signed, sig)),
                token,
            )
        };
        vec![
            v(
                "get-vanilla",
                "GET / HTTP/1.1\nHost:example.amazonaws.com",
                "host;x-amz-date",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
                "",
                None,
            ),
            v(
                "post-vanilla",
                "POST / HTTP/1.1\nHost:example.amazonaws.com",
                "host;x-amz-date",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
                "",
                None,
            ),
            v(
                "post-x-www-form-urlencoded",
                "POST / HTTP/1.1\nContent-Type:application/x-www-form-urlencoded\nHost:example.amazonaws.com\nContent-Length:13\nx-amz-content-sha256:9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
                "content-length;content-type;host;x-amz-content-sha256;x-amz-date",
                "d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b",
                "Param1=value1",
                None,
            ),
            v(
                "post-x-www-form-urlencoded-parameters",
                "POST / HTTP/1.1\nContent-Type:application/x-www-form-urlencoded; charset=utf-8\nHost:example.amazonaws.com\nContent-Length:13\nx-amz-content-sha256:9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
                "content-length;content-type;host;x-amz-content-sha256;x-amz-date",
                "328d1b9eaadca9f5818ef05e8392801e091653bafec24fcab71e7344e7f51422",
                "Param1=value1",
                None,
            ),
            v(
                "get-vanilla-query-order-key-case",
                "GET /?Param2=value2&Param1=value1 HTTP/1.1\nHost:example.amazonaws.com",
                "host;x-amz-date",
                "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
                "",
                None,
            ),
            v(
                "get-vanilla-query-order-encoded",
                "GET /?Param-3=Value3&Param=Value2&%E1%88%B4=Value1 HTTP/1.1\nHost:example.amazonaws.com",
                "host;x-amz-date",
                "371d3713e185cc334048618a97f809c9ffe339c62934c032af5a0e595648fcac",
                "",
                None,
            ),
            v(
                "get-vanilla-utf8-query",
                "GET /?\u{1234}=bar HTTP/1.1\nHost:example.amazonaws.com",
                "host;x-amz-date",
                "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04",
                "",
                None,
            ),
            v(
                "post-vanilla-query",
                "POST /?Param1=value1 HTTP/1.1\nHost:example.amazonaws.com",
                "host;x-amz-date",
                "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11",
                "",
                None,
            ),
            v(
                "get-header-key-duplicate",
                "GET / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1:value2\nMy-Header1:value2\nMy-Header1:value1",
                "host;my-header1;x-amz-date",
                "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea",
                "",
                None,
            ),
            v(
                "get-header-value-order",
                "GET / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1:value4\nMy-Header1:value1\nMy-Header1:value3\nMy-Header1:value2",
                "host;my-header1;x-amz-date",
                "08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01",
                "",
                None,
            ),
            v(
                "get-header-value-trim",
                "GET / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1: value1\nMy-Header2: \"a   b   c\"",
                "host;my-header1;my-header2;x-amz-date",
                "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
                "",
                None,
            ),
            v(
                "post-header-value-case",
                "POST / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1:VALUE1",
                "host;my-header1;x-amz-date",
                "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d",
                "",
                None,
            ),
            v(
                "get-slashes-normalized",
                "GET //example// HTTP/1.1\nHost:example.amazonaws.com",
                "host;x-amz-date",
                "9a624bd73a37c9a373b5312afbebe7a714a789de108f0bdfe846570885f57e84",
                "",
                None,
            ),
            v(
                "get-relative-relative-normalized",
                "GET /example1/example2/../.. HTTP/1.1\nHost:example.amazonaws.com",
                "host;x-amz-date",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
                "",
                None,
            ),
            v(
                "get-slash-pointless-dot-normalized",
                "GET /./example HTTP/1.1\nHost:example.amazonaws.com",
                "host;x-amz-date",
                "ef75d96142cf21edca26f06005da7988e4f8dc83a165a80865db7089db637ec5",
                "",
                None,
            ),
            v(
                "get-space-normalized",
                "GET /example space/ HTTP/1.1\nHost:example.amazonaws.com",
                "host;x-amz-date",
                "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741",
                "",
                None,
            ),
            v(
                "get-unreserved",
                "GET /-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz HTTP/1.1\nHost:example.amazonaws.com",
                "host;x-amz-date",
                "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f",
                "",
                None,
            ),
            v(
                "get-utf8",
                "GET /\u{1234} HTTP/1.1\nHost:example.amazonaws.com",
                "host;x-amz-date",
                "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
                "",
                None,
            ),
            v(
                "get-vanilla-with-session-token",
                "GET / HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Security-Token:6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267",
                "host;x-amz-date;x-amz-security-token",
                "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8",
                "",
                Some("6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267"),
            ),
            v(
                "post-sts-header-before",
                &format!("POST / HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Security-Token:{STS_TOKEN}"),
                "host;x-amz-date;x-amz-security-token",
                "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead",
                "",
                Some(STS_TOKEN),
            ),
            v(
                "post-sts-header-after",
                &format!("POST / HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Security-Token:{STS_TOKEN}"),
                "host;x-amz-date",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
                "",
                Some(STS_TOKEN),
            ),
        ]
    }

    fn vector(name: &str) -> (&'static str, String, Option<&'static str>) {
        vectors()
            .into_iter()
            .find(|v| v.0 == name)
            .expect("no such vector")
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test cases 1 and 6 (key longer than a block).
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn aws_test_suite_vectors_verify() {
        for (name, text, token) in vectors() {
            let req = recorded_from_text(&text);
            verify(&req, AKID, SECRET, token, "us-east-1", "service")
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn canonical_uri_double_encodes() {
        // The suite's double-encode-path and double-url-encode canonical URIs.
        assert_eq!(
            canonical_uri("/test/@connections/JBDvjfGEIAMCERw%3D"),
            "/test/%40connections/JBDvjfGEIAMCERw%253D"
        );
        assert_eq!(
            canonical_uri("/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-west-2%3A892717189312%3Afunction%3Amy-rusty-fun/invocations"),
            "/2015-03-31/functions/arn%253Aaws%253Alambda%253Aus-west-2%253A892717189312%253Afunction%253Amy-rusty-fun/invocations"
        );
        assert_eq!(
            canonical_uri("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke"),
            "/model/anthropic.claude-3-5-sonnet-20240620-v1%253A0/invoke"
        );
        for (path, want) in [
            ("", "/"),
            ("/", "/"),
            ("//", "/"),
            ("/./", "/"),
            ("/example/..", "/"),
            ("//example//", "/example/"),
            ("/a/b/../c", "/a/c"),
        ] {
            assert_eq!(canonical_uri(path), want, "{path:?}");
        }
        assert_eq!(canonical_query("b=2&a=%7e&a=1&c"), "a=1&a=~&b=2&c=");
        assert_eq!(canonical_query("k=a+b%2Fc&"), "k=a%2Bb%2Fc");
    }

    #[test]
    fn a_changed_byte_secret_or_scope_fails() {
        let (_, text, _) = vector("post-x-www-form-urlencoded");
        let good = recorded_from_text(&text);
        verify(&good, AKID, SECRET, None, "us-east-1", "service").unwrap();

        // One body byte (the x-amz-content-sha256 header no longer matches).
        let mut body = good.clone();
        body.body[0] ^= 1;
        let e = verify(&body, AKID, SECRET, None, "us-east-1", "service").unwrap_err();
        assert!(e.contains("x-amz-content-sha256"), "{e}");
        // One body byte, no content hash header: the signature differs.
        let mut bare = recorded_from_text(&vector("post-vanilla").1);
        bare.body = b"x".to_vec();
        let e = verify(&bare, AKID, SECRET, None, "us-east-1", "service").unwrap_err();
        assert!(e.starts_with("signature mismatch"), "{e}");

        let e = verify(
            &good,
            AKID,
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEz",
            None,
            "us-east-1",
            "service",
        )
        .unwrap_err();
        assert!(e.starts_with("signature mismatch"), "{e}");
        let e = verify(&good, "AKIDOTHER", SECRET, None, "us-east-1", "service").unwrap_err();
        assert!(e.contains("access key"), "{e}");
        let e = verify(&good, AKID, SECRET, None, "us-west-2", "service").unwrap_err();
        assert!(e.contains("region"), "{e}");
        let e = verify(&good, AKID, SECRET, None, "us-east-1", "bedrock").unwrap_err();
        assert!(e.contains("service"), "{e}");
        let e = verify(&good, AKID, SECRET, Some("tok"), "us-east-1", "service").unwrap_err();
        assert!(e.contains("x-amz-security-token missing"), "{e}");

        // A signed header's value, the path, the query, the method.
        let mut header = good.clone();
        header.headers[0].1 = "application/json".into();
        assert!(verify(&header, AKID, SECRET, None, "us-east-1", "service").is_err());
        let mut path = good.clone();
        path.target = "/x".into();
        assert!(verify(&path, AKID, SECRET, None, "us-east-1", "service").is_err());
        let mut method = good.clone();
        method.method = "PUT".into();
        assert!(verify(&method, AKID, SECRET, None, "us-east-1", "service").is_err());

        // A date that is not the scope's day.
        let mut date = good.clone();
        for h in &mut date.headers {
            if h.0 == "x-amz-date" {
                h.1 = "20150831T000000Z".into();
            }
        }
        let e = verify(&date, AKID, SECRET, None, "us-east-1", "service").unwrap_err();
        assert!(e.contains("scope date"), "{e}");

        // A token that was not configured, or a different one.
        let (_, with_token, token) = vector("get-vanilla-with-session-token");
        let with_token = recorded_from_text(&with_token);
        verify(&with_token, AKID, SECRET, token, "us-east-1", "service").unwrap();
        let e = verify(&with_token, AKID, SECRET, None, "us-east-1", "service").unwrap_err();
        assert!(e.contains("without a session token"), "{e}");
        let e = verify(
            &with_token,
            AKID,
            SECRET,
            Some("other"),
            "us-east-1",
            "service",
        )
        .unwrap_err();
        assert!(e.contains("is not the session token"), "{e}");
    }

    #[test]
    fn authorization_parsing_is_strict() {
        for bad in [
            "AWS4-HMAC-SHA1 Credential=A/20150830/r/s/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request, SignedHeaders=x-amz-date;host, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request, SignedHeaders=Host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request, SignedHeaders=host;x-amz-date, Signature=5FA00FA31553B73EBF1942676E86291E8372FF2A2260956D9B8AAE1D763FBF31",
            "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request, SignedHeaders=host;x-amz-date",
        ] {
            assert!(parse_authorization(bad).is_err(), "{bad}");
        }
        let ok = parse_authorization("AWS4-HMAC-SHA256 Credential=AKID/20261206/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31").unwrap();
        assert_eq!(ok.access_key, "AKID");
        assert_eq!(ok.date, "20261206");
        assert_eq!(ok.region, "us-east-1");
        assert_eq!(ok.service, "bedrock");
        assert_eq!(ok.signed_headers, ["content-type", "host", "x-amz-date"]);
    }

    #[test]
    fn amz_dates_convert() {
        assert_eq!(amz_date_secs("19700101T000000Z"), Some(0));
        assert_eq!(amz_date_secs("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(amz_date_secs("20240229T235959Z"), Some(1_709_251_199));
        assert_eq!(amz_date_secs("2015-08-30T12:36:00Z"), None);
    }
}
