//! Gateway error bodies in the calling provider's shape, so that official
//! SDKs raise their usual typed exceptions (they map by HTTP status, and
//! surface `type` / `code` to the caller).

use super::Dialect;
pub use crate::store::LimitKind;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Authentication,
    Permission,
    NotFound,
    RateLimit,
    InvalidRequest,
    RequestTooLarge,
    /// A failure on our side of the provider: the store (send 503) or the
    /// upstream connection (502, the default).
    Api,
    Timeout,
    Overloaded,
}

impl ErrorKind {
    pub fn default_status(self) -> u16 {
        match self {
            ErrorKind::Authentication => 401,
            ErrorKind::Permission => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::RateLimit => 429,
            ErrorKind::InvalidRequest => 400,
            ErrorKind::RequestTooLarge => 413,
            ErrorKind::Api => 502,
            ErrorKind::Timeout => 504,
            // Anthropic's own status for overloaded_error.
            ErrorKind::Overloaded => 529,
        }
    }

    fn anthropic_type(self) -> &'static str {
        match self {
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::Permission => "permission_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::RateLimit => "rate_limit_error",
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::RequestTooLarge => "request_too_large",
            ErrorKind::Api | ErrorKind::Timeout => "api_error",
            ErrorKind::Overloaded => "overloaded_error",
        }
    }

    /// (`type`, `code`) as OpenAI's API returns them for the same situation.
    fn openai_type_code(self) -> (&'static str, Option<&'static str>) {
        match self {
            ErrorKind::Authentication => ("invalid_request_error", Some("invalid_api_key")),
            ErrorKind::Permission => ("invalid_request_error", None),
            ErrorKind::NotFound => ("invalid_request_error", None),
            ErrorKind::RateLimit => ("requests", Some("rate_limit_exceeded")),
            ErrorKind::InvalidRequest => ("invalid_request_error", None),
            ErrorKind::RequestTooLarge => ("invalid_request_error", Some("request_too_large")),
            ErrorKind::Api | ErrorKind::Timeout | ErrorKind::Overloaded => ("server_error", None),
        }
    }
}

#[derive(Serialize)]
struct AnthropicBody<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    error: AnthropicError<'a>,
}

#[derive(Serialize)]
struct AnthropicError<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    message: &'a str,
}

#[derive(Serialize)]
struct OpenaiBody<'a> {
    error: OpenaiError<'a>,
}

#[derive(Serialize)]
struct OpenaiError<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    ty: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

/// The JSON error body for `err` in `kind`'s shape. Anthropic:
/// `{"type":"error","error":{"type":T,"message":M}}`; OpenAI:
/// `{"error":{"message":M,"type":T,"param":null,"code":C}}`.
pub fn error_body(dialect: Dialect, err: ErrorKind, message: &str) -> Vec<u8> {
    match dialect {
        Dialect::Anthropic => anthropic(err.anthropic_type(), message),
        Dialect::Openai => {
            let (ty, code) = err.openai_type_code();
            openai(ty, code, message)
        }
    }
}

/// A 429 body naming the limit, where the shape can say it: OpenAI tells
/// request-rate (`requests`) from token-rate (`tokens`) limits and reports a
/// spent budget as `insufficient_quota`. Anthropic has one type for all.
pub fn rate_limit_body(dialect: Dialect, limit: LimitKind, message: &str) -> Vec<u8> {
    match dialect {
        Dialect::Anthropic => anthropic(ErrorKind::RateLimit.anthropic_type(), message),
        Dialect::Openai => {
            let (ty, code) = match limit {
                LimitKind::Requests | LimitKind::Concurrent => ("requests", "rate_limit_exceeded"),
                LimitKind::Tokens => ("tokens", "rate_limit_exceeded"),
                LimitKind::Budget => ("insufficient_quota", "insufficient_quota"),
            };
            openai(ty, Some(code), message)
        }
    }
}

fn anthropic(ty: &'static str, message: &str) -> Vec<u8> {
    to_json(&AnthropicBody {
        ty: "error",
        error: AnthropicError { ty, message },
    })
}

fn openai(ty: &'static str, code: Option<&'static str>, message: &str) -> Vec<u8> {
    to_json(&OpenaiBody {
        error: OpenaiError {
            message,
            ty,
            param: None,
            code,
        },
    })
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing strings into a Vec cannot fail; keep a valid body anyway.
    serde_json::to_vec(v).unwrap_or_else(|_| br#"{"error":{"message":"error"}}"#.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const ALL: [ErrorKind; 9] = [
        ErrorKind::Authentication,
        ErrorKind::Permission,
        ErrorKind::NotFound,
        ErrorKind::RateLimit,
        ErrorKind::InvalidRequest,
        ErrorKind::RequestTooLarge,
        ErrorKind::Api,
        ErrorKind::Timeout,
        ErrorKind::Overloaded,
    ];

    fn parse(b: Vec<u8>) -> Value {
        serde_json::from_slice(&b).unwrap()
    }

    #[test]
    fn anthropic_shape() {
        let want = [
            "authentication_error",
            "permission_error",
            "not_found_error",
            "rate_limit_error",
            "invalid_request_error",
            "request_too_large",
            "api_error",
            "api_error",
            "overloaded_error",
        ];
        for (k, t) in ALL.iter().zip(want) {
            let v = parse(error_body(Dialect::Anthropic, *k, "token expired"));
            assert_eq!(
                v,
                json!({"type":"error","error":{"type":t,"message":"token expired"}})
            );
        }
    }

    #[test]
    fn openai_shape() {
        for k in ALL {
            let v = parse(error_body(Dialect::Openai, k, "msg"));
            let e = v["error"].as_object().unwrap();
            assert_eq!(e["message"], "msg");
            assert!(e["type"].is_string());
            assert!(e["code"].is_string() || e["code"].is_null());
            assert!(e.contains_key("param"));
        }
        let v = parse(error_body(Dialect::Openai, ErrorKind::Authentication, "m"));
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "invalid_api_key");
        let v = parse(error_body(Dialect::Openai, ErrorKind::Api, "m"));
        assert_eq!(v["error"]["type"], "server_error");
        assert_eq!(v["error"]["code"], Value::Null);
    }

    #[test]
    fn rate_limit_kinds() {
        let v = parse(rate_limit_body(Dialect::Openai, LimitKind::Tokens, "m"));
        assert_eq!(v["error"]["type"], "tokens");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        let v = parse(rate_limit_body(Dialect::Openai, LimitKind::Budget, "m"));
        assert_eq!(v["error"]["type"], "insufficient_quota");
        let v = parse(rate_limit_body(Dialect::Anthropic, LimitKind::Budget, "m"));
        assert_eq!(v["error"]["type"], "rate_limit_error");
    }

    #[test]
    fn messages_are_escaped() {
        let m = "bad \"quote\" \\ new\nline \u{1} é";
        for kind in [Dialect::Anthropic, Dialect::Openai] {
            let v = parse(error_body(kind, ErrorKind::InvalidRequest, m));
            assert_eq!(v["error"]["message"], m);
        }
    }

    #[test]
    fn statuses() {
        let s: Vec<u16> = ALL.iter().map(|k| k.default_status()).collect();
        assert_eq!(s, [401, 403, 404, 429, 400, 413, 502, 504, 529]);
    }
}
