//! Bedrock errors in the Anthropic shape, so that clients of `/v1/messages`
//! raise the same typed exceptions whichever cloud served them (SDKs map by
//! HTTP status and surface the body's `error.type`).
//!
//! Bedrock names its error in the `x-amzn-errortype` header of an HTTP error
//! (`ThrottlingException:http://internal.amazon.com/coral/…`) and in the
//! `:exception-type` header of an event-stream exception (`throttlingException`,
//! lowerCamel); both read the same here.
//!
//! | Bedrock error type | status | Anthropic `type` | why |
//! |---|---:|---|---|
//! | `ThrottlingException` | 429 | `rate_limit_error` | |
//! | `ServiceQuotaExceededException` | 429 | `rate_limit_error` | Bedrock says 400; a quota is a rate limit to the caller, who should back off, not fix the request |
//! | `ValidationException` | 400 | `invalid_request_error` | |
//! | `AccessDeniedException` | 403 | `permission_error` | |
//! | `ResourceNotFoundException` | 404 | `not_found_error` | |
//! | `ModelNotReadyException` | 503 | `overloaded_error` | Bedrock says 429; the model is warming up, retry later |
//! | `ServiceUnavailableException` | 503 | `overloaded_error` | |
//! | `ModelTimeoutException` | 504 | `api_error` | Bedrock says 408, which SDKs read as the client's own timeout; the model behind the gateway timed out (the gateway's own timeouts answer 504 too) |
//! | `InternalServerException` | 500 | `api_error` | |
//! | `ModelErrorException`, `ModelStreamErrorException` | 502 | `api_error` | Bedrock says 424; the model behind Bedrock failed, a bad gateway to the caller |
//! | anything else, or none | as received | by status: 400 `invalid_request_error`, 401 `authentication_error`, 403 `permission_error`, 404 `not_found_error`, 413 `request_too_large`, 429 `rate_limit_error`, 503 and 529 `overloaded_error`, else `api_error` | |

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

/// The status the client is answered with and the Anthropic error `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    pub status: u16,
    pub kind: &'static str,
}

/// The longest provider message passed on (in characters).
const MAX_MESSAGE: usize = 1000;

/// The named rows of the module's table.
const KNOWN: &[(&str, u16, &str)] = &[
    ("ThrottlingException", 429, "rate_limit_error"),
    ("ServiceQuotaExceededException", 429, "rate_limit_error"),
    ("ValidationException", 400, "invalid_request_error"),
    ("AccessDeniedException", 403, "permission_error"),
    ("ResourceNotFoundException", 404, "not_found_error"),
    ("ModelNotReadyException", 503, "overloaded_error"),
    ("ServiceUnavailableException", 503, "overloaded_error"),
    ("ModelTimeoutException", 504, "api_error"),
    ("InternalServerException", 500, "api_error"),
    ("ModelErrorException", 502, "api_error"),
    ("ModelStreamErrorException", 502, "api_error"),
];

/// From the `x-amzn-errortype` response header (e.g.
/// `"ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"`)
/// or an event-stream `:exception-type` (e.g. `"throttlingException"`), and
/// the HTTP status; see the module's table.
pub fn map(error_type: Option<&str>, status: u16) -> Mapped {
    if let Some(name) = error_type.map(bare_name) {
        if let Some(&(_, status, kind)) = KNOWN
            .iter()
            .find(|(known, _, _)| known.eq_ignore_ascii_case(name))
        {
            return Mapped { status, kind };
        }
    }
    Mapped {
        status,
        kind: kind_for_status(status),
    }
}

/// The shape name alone: AWS appends `:` and a namespace URI to the header,
/// and some services prefix `namespace#` (the restJson1 rules strip both).
fn bare_name(t: &str) -> &str {
    let t = t.split_once(':').map_or(t, |(name, _)| name);
    let t = t.rsplit_once('#').map_or(t, |(_, name)| name);
    t.trim()
}

fn kind_for_status(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// The Anthropic error body `{"type":"error","error":{"type":kind,"message":msg}}`
/// for a Bedrock error body (`{"message":"..."}` or `{"Message":"..."}`);
/// anything else gets a generic message naming the status. Messages are
/// cut to 1,000 characters.
pub fn anthropic_error_body(mapped: &Mapped, bedrock_body: &[u8]) -> Bytes {
    let v: Option<Value> = serde_json::from_slice(bedrock_body).ok();
    let message = v.as_ref().and_then(|v| {
        ["message", "Message"]
            .iter()
            .find_map(|k| v.get(k).and_then(Value::as_str))
            .filter(|m| !m.trim().is_empty())
    });
    match message {
        Some(m) => anthropic_error_body_with_message(mapped, m),
        None => anthropic_error_body_with_message(
            mapped,
            &format!(
                "AWS Bedrock answered with an error (status {})",
                mapped.status
            ),
        ),
    }
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    message: &'a str,
}

/// The Anthropic error body with `message` (cut to 1,000 characters): for
/// an event-stream `error` message, whose text is in its `:error-message`
/// header rather than a body.
pub fn anthropic_error_body_with_message(mapped: &Mapped, message: &str) -> Bytes {
    let body = Body {
        ty: "error",
        error: Inner {
            ty: mapped.kind,
            message: truncate(message),
        },
    };
    // Serializing two strings cannot fail; the fallback keeps the shape.
    serde_json::to_vec(&body).map_or_else(
        |_| Bytes::from_static(br#"{"type":"error","error":{"type":"api_error","message":"AWS Bedrock answered with an error"}}"#),
        Bytes::from,
    )
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(MAX_MESSAGE) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(mapped: Mapped, bedrock: &[u8]) -> Value {
        serde_json::from_slice(&anthropic_error_body(&mapped, bedrock)).unwrap()
    }

    #[test]
    fn the_product_spec_rows() {
        for (ty, status, want_status, want_kind) in [
            ("ThrottlingException", 400, 429, "rate_limit_error"),
            ("ValidationException", 400, 400, "invalid_request_error"),
            ("AccessDeniedException", 403, 403, "permission_error"),
            ("ModelNotReadyException", 429, 503, "overloaded_error"),
            ("ServiceUnavailableException", 503, 503, "overloaded_error"),
            ("ResourceNotFoundException", 404, 404, "not_found_error"),
            (
                "ServiceQuotaExceededException",
                400,
                429,
                "rate_limit_error",
            ),
            ("ModelTimeoutException", 408, 504, "api_error"),
            ("InternalServerException", 500, 500, "api_error"),
            ("ModelErrorException", 424, 502, "api_error"),
            ("ModelStreamErrorException", 424, 502, "api_error"),
        ] {
            assert_eq!(
                map(Some(ty), status),
                Mapped {
                    status: want_status,
                    kind: want_kind
                },
                "{ty}"
            );
        }
    }

    #[test]
    fn header_and_stream_spellings_read_the_same() {
        let want = Mapped {
            status: 429,
            kind: "rate_limit_error",
        };
        for ty in [
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
            "throttlingException",
            "THROTTLINGEXCEPTION",
            " ThrottlingException ",
            "com.amazon.bedrock#ThrottlingException",
            "aws.protocols#ThrottlingException:http://internal.amazon.com/coral/",
        ] {
            assert_eq!(map(Some(ty), 400), want, "{ty:?}");
        }
    }

    #[test]
    fn unknown_types_keep_the_status_and_take_its_kind() {
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (503, "overloaded_error"),
            (529, "overloaded_error"),
            (500, "api_error"),
            (502, "api_error"),
            (418, "api_error"),
            (200, "api_error"),
        ] {
            for ty in [
                None,
                Some(""),
                Some(":"),
                Some("UnrecognizedClientException:http://internal.amazon.com/"),
                Some("Throttling"),
            ] {
                assert_eq!(map(ty, status), Mapped { status, kind }, "{ty:?} {status}");
            }
        }
    }

    #[test]
    fn bedrock_bodies_take_the_anthropic_shape() {
        let m = map(Some("ValidationException"), 400);
        let out = body(m, br#"{"message":"max_tokens: Field required"}"#);
        assert_eq!(
            out,
            serde_json::json!({"type": "error", "error": {
                "type": "invalid_request_error", "message": "max_tokens: Field required"}})
        );
        // Some AWS services capitalise the member.
        let out = body(m, br#"{"Message":"Too many requests, please wait."}"#);
        assert_eq!(out["error"]["message"], "Too many requests, please wait.");
        // Escapes and quotes survive as text.
        let out = body(m, br#"{"message":"a \"quoted\"\nline \u00e9"}"#);
        assert_eq!(out["error"]["message"], "a \"quoted\"\nline é");
    }

    #[test]
    fn anything_else_gets_a_generic_message() {
        let m = Mapped {
            status: 502,
            kind: "api_error",
        };
        for b in [
            &b""[..],
            b"<html>",
            b"\xff\xfe",
            b"{\"message\":7}",
            b"{\"message\":\"  \"}",
            b"[\"message\"]",
            b"{\"msg\":\"x\"}",
            b"{\"message\":\"x\"",
        ] {
            let out = body(m, b);
            assert_eq!(out["type"], "error");
            assert_eq!(out["error"]["type"], "api_error");
            assert_eq!(
                out["error"]["message"], "AWS Bedrock answered with an error (status 502)",
                "{b:?}"
            );
        }
    }

    #[test]
    fn messages_are_cut_to_a_thousand_characters() {
        let m = map(None, 400);
        let long = "é".repeat(1500);
        let out = body(
            m,
            serde_json::json!({ "message": long })
                .to_string()
                .as_bytes(),
        );
        let msg = out["error"]["message"].as_str().unwrap();
        assert_eq!(msg.chars().count(), 1000);
        assert!(msg.chars().all(|c| c == 'é'));
        let exact = "x".repeat(1000);
        let out = body(
            m,
            serde_json::json!({ "message": exact })
                .to_string()
                .as_bytes(),
        );
        assert_eq!(out["error"]["message"], exact);
    }
}
