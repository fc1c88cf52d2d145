//! Validly signed hostile tokens. `tollgate token issue` refuses to sign
//! odd claims (control characters) and never writes odd headers (`jku`,
//! `crit`, ...), and the tests have no crypto crate, so these are signed with
//! the `openssl` command line: RS256 is `openssl dgst -sha256 -sign` over
//! `header.payload` (PKCS#1 v1.5), which is exactly what a JWT library does.
//! A token that the gateway refuses is then refused for its content, not for
//! a bad signature (see the control case in tests/hostile_requests.rs).

use crate::common::jwt::b64url;
use crate::common::now_secs;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Whether the `openssl` binary can be run.
pub fn openssl_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Claims the test gateway accepts (`iss` tollgate, `aud` llm-gateway),
/// valid for an hour, for `sub`.
pub fn claims_for(sub: &str) -> Value {
    let now = now_secs();
    json!({
        "iss": "tollgate",
        "aud": "llm-gateway",
        "sub": sub,
        "iat": now,
        "exp": now + 3600,
        "jti": crate::common::unique("forged-jti"),
    })
}

/// `{"alg":"RS256","typ":"JWT","kid":kid}`.
pub fn rs256_header(kid: &str) -> Value {
    json!({"alg": "RS256", "typ": "JWT", "kid": kid})
}

/// RS256 signature of `input` with the PEM private key at `key`.
pub fn rs256_signature(key: &Path, input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl dgst");
    child
        .stdin
        .take()
        .expect("openssl stdin")
        .write_all(input)
        .expect("write to openssl");
    let out = child.wait_with_output().expect("openssl output");
    assert!(
        out.status.success(),
        "openssl dgst -sign failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A compact JWS of exactly this header and payload (serialized as given),
/// signed RS256 with the private key at `key`.
pub fn sign_rs256(key: &Path, header: &Value, payload: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(payload.to_string().as_bytes())
    );
    let sig = rs256_signature(key, input.as_bytes());
    format!("{input}.{}", b64url(&sig))
}

/// The public RSA key of a PEM private key as a JWK (`kty`, `n`, `e`).
pub fn rsa_public_jwk(key: &Path) -> Value {
    let out = Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(key)
        .output()
        .expect("openssl rsa -modulus");
    assert!(
        out.status.success(),
        "openssl rsa -modulus: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("modulus hex"))
        .collect();
    // e = 65537, what every RSA key generator uses.
    json!({"kty": "RSA", "n": b64url(&n), "e": "AQAB", "alg": "RS256", "use": "sig"})
}
