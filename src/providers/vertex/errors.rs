//! Vertex errors in the Anthropic shape. Errors from the model itself
//! already come in it and pass unchanged; Google's own (quota, auth, a
//! model not enabled in the project) come as
//! `{"error":{"code":429,"message":"…","status":"RESOURCE_EXHAUSTED"}}`.

use crate::providers::bedrock::errors::Mapped;
use bytes::Bytes;
use serde_json::{json, Value};

/// The longest provider message passed on.
const MAX_MESSAGE: usize = 1000;

pub fn anthropic_error_body(mapped: &Mapped, body: &[u8]) -> Bytes {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    if let Some(v) = &v {
        if v["type"] == "error" && v["error"]["type"].is_string() {
            return Bytes::copy_from_slice(body);
        }
    }
    let message = v
        .as_ref()
        .and_then(|v| {
            v["error"]["message"]
                .as_str()
                .or_else(|| v["message"].as_str())
                .or_else(|| v[0]["error"]["message"].as_str())
        })
        .map(truncate)
        .unwrap_or_else(|| format!("Vertex AI answered {}", mapped.status));
    let out = json!({
        "type": "error",
        "error": { "type": mapped.kind, "message": message },
    });
    Bytes::from(out.to_string())
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_MESSAGE) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(status: u16, kind: &'static str) -> Mapped {
        Mapped { status, kind }
    }

    #[test]
    fn anthropic_errors_pass_unchanged() {
        let body =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(
            anthropic_error_body(&mapped(529, "overloaded_error"), body),
            &body[..]
        );
    }

    #[test]
    fn google_errors_take_the_anthropic_shape() {
        let body = br#"{"error":{"code":429,"message":"Quota exceeded for aiplatform.googleapis.com","status":"RESOURCE_EXHAUSTED"}}"#;
        let out: Value = serde_json::from_slice(&anthropic_error_body(
            &mapped(429, "rate_limit_error"),
            body,
        ))
        .unwrap();
        assert_eq!(out["type"], "error");
        assert_eq!(out["error"]["type"], "rate_limit_error");
        assert_eq!(
            out["error"]["message"],
            "Quota exceeded for aiplatform.googleapis.com"
        );
        // Google sometimes answers a one-element array.
        let body = br#"[{"error":{"code":403,"message":"denied","status":"PERMISSION_DENIED"}}]"#;
        let out: Value = serde_json::from_slice(&anthropic_error_body(
            &mapped(403, "permission_error"),
            body,
        ))
        .unwrap();
        assert_eq!(out["error"]["message"], "denied");
    }

    #[test]
    fn anything_else_gets_a_generic_message() {
        for body in [&b""[..], b"<html>", b"\xff\xfe", b"{\"error\":7}"] {
            let out: Value =
                serde_json::from_slice(&anthropic_error_body(&mapped(502, "api_error"), body))
                    .unwrap();
            assert_eq!(out["error"]["message"], "Vertex AI answered 502");
        }
    }
}
