use super::*;
use serde_json::{json, Value};
use Endpoint::*;

fn ok(e: Endpoint, body: &str) -> RequestInfo {
    inspect(e, body.as_bytes()).unwrap()
}

fn err(e: Endpoint, body: &str) -> String {
    inspect(e, body.as_bytes()).unwrap_err().to_string()
}

#[test]
fn reads_fields() {
    let i = ok(
        Messages,
        r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(i.model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(i.max_tokens, Some(1024));
    assert!(i.stream);
    assert!(i.input_estimate > 0);
    let i = ok(
        ChatCompletions,
        r#"{"model":"gpt-\u0034o","max_completion_tokens":50,"max_tokens":null}"#,
    );
    assert_eq!(i.model.as_deref(), Some("gpt-4o"));
    assert_eq!(i.max_tokens, Some(50));
    assert!(!i.stream);
    let i = ok(
        Responses,
        r#"{"model":"gpt-4.1","max_output_tokens":77.0,"stream":false}"#,
    );
    assert_eq!(i.max_tokens, Some(77));
    assert_eq!(ok(Messages, " \n"), RequestInfo::default());
    assert_eq!(ok(Messages, ""), RequestInfo::default());
}

#[test]
fn each_endpoint_reads_its_own_cap() {
    // Chat: max_completion_tokens wins over max_tokens, either order.
    let i = ok(
        ChatCompletions,
        r#"{"max_tokens":10,"max_completion_tokens":20}"#,
    );
    assert_eq!(i.max_tokens, Some(20));
    let i = ok(
        ChatCompletions,
        r#"{"max_completion_tokens":5,"max_tokens":900}"#,
    );
    assert_eq!(i.max_tokens, Some(5));
    let i = ok(ChatCompletions, r#"{"max_tokens":900}"#);
    assert_eq!(i.max_tokens, Some(900));
    // Fields of other endpoints are not read (nor checked).
    assert_eq!(
        ok(Messages, r#"{"max_completion_tokens":"x"}"#).max_tokens,
        None
    );
    assert_eq!(ok(Messages, r#"{"max_output_tokens":99}"#).max_tokens, None);
    assert_eq!(ok(Responses, r#"{"max_tokens":99}"#).max_tokens, None);
    assert_eq!(
        ok(Responses, r#"{"max_output_tokens":99}"#).max_tokens,
        Some(99)
    );
    assert_eq!(ok(Completions, r#"{"max_tokens":7}"#).max_tokens, Some(7));
    assert_eq!(
        ok(Embeddings, r#"{"max_tokens":7,"input":"x"}"#).max_tokens,
        None
    );
    assert_eq!(ok(CountTokens, r#"{"max_tokens":7}"#).max_tokens, None);
}

#[test]
fn choices_multiply_the_cap() {
    let i = ok(ChatCompletions, r#"{"max_tokens":100,"n":3}"#);
    assert_eq!((i.choices, i.output_reservation(4096)), (3, 300));
    let i = ok(ChatCompletions, r#"{"n":2}"#);
    assert_eq!(i.output_reservation(4096), 8192);
    let i = ok(ChatCompletions, r#"{"max_tokens":100,"n":0}"#);
    assert_eq!(i.output_reservation(4096), 100);
    let i = ok(Completions, r#"{"max_tokens":100,"n":2,"best_of":5}"#);
    assert_eq!(i.output_reservation(4096), 500);
    let i = ok(Completions, r#"{"max_tokens":100,"n":4}"#);
    assert_eq!(i.output_reservation(4096), 400);
    // n means nothing to the Messages API.
    let i = ok(Messages, r#"{"max_tokens":100,"n":4}"#);
    assert_eq!(i.output_reservation(4096), 100);
    // The largest allowed values never overflow.
    let i = ok(
        Completions,
        r#"{"max_tokens":2147483647,"n":2147483647,"best_of":2147483647}"#,
    );
    assert_eq!(i.output_reservation(0), MAX_CAP * MAX_CAP);
}

#[test]
fn caps_outside_int32_are_refused() {
    let want = |f: &str| format!("`{f}` must be an integer from 0 to 2147483647");
    for (e, body, field) in [
        (
            Messages,
            r#"{"max_tokens":18446744073709551615}"#,
            "max_tokens",
        ),
        (Messages, r#"{"max_tokens":2147483648}"#, "max_tokens"),
        (Messages, r#"{"max_tokens":-1}"#, "max_tokens"),
        (Messages, r#"{"max_tokens":1e300}"#, "max_tokens"),
        (Messages, r#"{"max_tokens":"10"}"#, "max_tokens"),
        (ChatCompletions, r#"{"max_tokens":1.5}"#, "max_tokens"),
        (
            ChatCompletions,
            r#"{"max_completion_tokens":4294967296}"#,
            "max_completion_tokens",
        ),
        (ChatCompletions, r#"{"n":-2}"#, "n"),
        (ChatCompletions, r#"{"n":2147483648}"#, "n"),
        (Completions, r#"{"best_of":1e10}"#, "best_of"),
        (
            Responses,
            r#"{"max_output_tokens":1.5}"#,
            "max_output_tokens",
        ),
    ] {
        assert_eq!(err(e, body), want(field), "{body}");
    }
    assert_eq!(
        ok(Messages, r#"{"max_tokens":2147483647}"#).max_tokens,
        Some(MAX_CAP)
    );
    assert_eq!(ok(Messages, r#"{"max_tokens":0}"#).max_tokens, Some(0));
}

#[test]
fn background_responses_are_refused() {
    assert!(matches!(
        inspect(Responses, br#"{"model":"gpt-4.1","background":true}"#),
        Err(BodyError::Background)
    ));
    assert!(inspect(Responses, br#"{"background":false}"#).is_ok());
    assert!(inspect(Responses, br#"{"background":null}"#).is_ok());
    assert_eq!(
        err(Responses, r#"{"background":1}"#),
        "`background` must be a boolean"
    );
    // Other endpoints have no such field.
    assert!(inspect(ChatCompletions, br#"{"background":true}"#).is_ok());
}

#[test]
fn errors() {
    assert!(err(Messages, "not json").contains("not valid JSON"));
    assert!(err(Messages, r#"{"model":"x""#).contains("not valid JSON"));
    assert!(err(Messages, r#"{"model":"x"} trailing"#).contains("not valid JSON"));
    assert_eq!(err(Messages, "[1,2]"), "request body must be a JSON object");
    assert_eq!(
        err(Messages, "\"str\""),
        "request body must be a JSON object"
    );
    assert_eq!(err(Messages, r#"{"model":5}"#), "`model` must be a string");
    assert_eq!(
        err(Messages, r#"{"model":["a"]}"#),
        "`model` must be a string"
    );
    assert_eq!(
        err(Messages, r#"{"stream":"yes"}"#),
        "`stream` must be a boolean"
    );
    assert!(err(Messages, r#"{"model":"a","model":"b"}"#).contains("duplicate field `model`"));
    assert!(err(ChatCompletions, r#"{"n":1,"n":5}"#).contains("duplicate field `n`"));
    assert!(inspect(Messages, b"{\"model\":\"\xff\"}").is_err());
}

#[test]
fn one_mib_body() {
    let text = "lorem ipsum dolor sit amet ".repeat(40_000);
    let body = json!({"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":text}],
        "metadata":{"deep":[[[{"x":[1,2,3]}]]]}});
    let bytes = serde_json::to_vec(&body).unwrap();
    assert!(bytes.len() > 1 << 20);
    let i = inspect(Messages, &bytes).unwrap();
    assert_eq!(i.model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(i.input_estimate, (bytes.len() as u64).div_ceil(3));
}

#[test]
fn media_is_not_counted_by_bytes() {
    let png = format!("iVBORw0KGgo{}", "A".repeat(3 << 20));
    let body = json!({"model":"m","messages":[{"role":"user","content":[
        {"type":"image","source":{"type":"base64","media_type":"image/png","data":png}},
        {"type":"image_url","image_url":{"url":format!("data:image/jpeg;base64,/9j/{}", "B".repeat(1 << 20))}},
        {"type":"input_image","image_url":format!("data:image/png;base64,iVBORw0KGgo{}", "C".repeat(1 << 20))},
        {"type":"text","text":"what is this?"}]}]});
    let bytes = serde_json::to_vec(&body).unwrap();
    let e = inspect(Messages, &bytes).unwrap().input_estimate;
    assert!(
        (3 * MEDIA_TOKEN_ESTIMATE..3 * MEDIA_TOKEN_ESTIMATE + 300).contains(&e),
        "{e}"
    );
    // A small image counts by bytes.
    assert_eq!(estimate_input_tokens(br#"{"data":"iVBORw0KGgoAAAA"}"#), 9);
    let pdf = format!(r#"{{"data":"JVBERi0{}"}}"#, "C".repeat(3000));
    assert_eq!(
        estimate_input_tokens(pdf.as_bytes()),
        (pdf.len() as u64).div_ceil(3)
    );
    // Escapes are followed: a quote inside a string does not end it.
    let tricky = format!(r#"{{"data":"\"iVBORw0KGgo{}"}}"#, "A".repeat(2000));
    assert_eq!(
        estimate_input_tokens(tricky.as_bytes()),
        (tricky.len() as u64).div_ceil(3)
    );
}

#[test]
fn text_that_looks_like_media_is_text() {
    // A text block (or any other field) starting like base64 JPEG is
    // billed as text: it must reserve by its bytes.
    let jpeg_like = format!("/9j/{}", "x".repeat(60_000));
    for body in [
        json!({"messages":[{"role":"user","content":[{"type":"text","text":jpeg_like}]}]}),
        json!({"messages":[{"role":"user","content":jpeg_like}]}),
        json!({"system":jpeg_like}),
        json!({"data":[jpeg_like]}),
    ] {
        let bytes = serde_json::to_vec(&body).unwrap();
        assert_eq!(
            estimate_input_tokens(&bytes),
            (bytes.len() as u64).div_ceil(3),
            "{}",
            &String::from_utf8_lossy(&bytes)[..40]
        );
    }
}

#[test]
fn rewrite_only_for_openai_streaming_completions() {
    let body = br#"{"model":"gpt-4o","stream":true,"messages":[]}"#;
    let info = inspect(ChatCompletions, body).unwrap();
    for e in [ChatCompletions, Completions] {
        let out = rewrite_for_usage(e, body, &info).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "gpt-4o");
        assert_eq!(v["stream"], true);
        assert_eq!(v["messages"], json!([]));
    }
    for e in [Responses, Embeddings, Messages, CountTokens, Models] {
        assert!(rewrite_for_usage(e, body, &info).is_none());
    }
    let not_stream = RequestInfo {
        stream: false,
        ..info.clone()
    };
    assert!(rewrite_for_usage(ChatCompletions, body, &not_stream).is_none());
}

#[test]
fn a_deployment_renames_the_model() {
    let body =
        br#"{"model":"claude-fast","max_tokens":5,"messages":[{"role":"user","content":"model"}]}"#;
    let out = with_model(body, "claude-haiku-4-5").unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["model"], "claude-haiku-4-5");
    assert_eq!(v["messages"][0]["content"], "model");
    assert_eq!(v["max_tokens"], 5);
    let odd = with_model(br#" {"mod\u0065l" : "x"} "#, "a\"b").unwrap();
    let v: Value = serde_json::from_slice(&odd).unwrap();
    assert_eq!(v["model"], "a\"b");
    assert!(with_model(br#"{"messages":[]}"#, "x").is_none());
    assert!(with_model(b"not json", "x").is_none());
}

#[test]
fn temperature_zero_is_read_whatever_its_spelling() {
    for (body, zero) in [
        (r#"{"model":"m","temperature":0}"#, true),
        (r#"{"model":"m","temperature":0.0}"#, true),
        (r#"{"model":"m","temperature":-0.0}"#, true),
        (r#"{"model":"m","temperature":0.2}"#, false),
        (r#"{"model":"m","temperature":1}"#, false),
        (r#"{"model":"m","temperature":"0"}"#, false),
        (r#"{"model":"m","temperature":null}"#, false),
        (r#"{"model":"m"}"#, false),
    ] {
        assert_eq!(ok(Messages, body).temperature_zero, zero, "{body}");
    }
}

mod against_serde {
    //! The scan against the serde_json reading it replaced
    //! (`body_reference.rs`), on generated bodies: valid ones built from
    //! the fields limits read, escapes, media and deep nesting, and the same
    //! with a few bytes broken. The two must accept the same bodies and
    //! read the same fields and estimate from them.

    use super::super::reference;
    use super::*;
    use proptest::prelude::*;

    const KEYS: [&str; 14] = [
        "model",
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "n",
        "best_of",
        "stream",
        "background",
        "temperature",
        "mod\\u0065l",
        "data",
        "url",
        "messages",
        "\\ud800x",
    ];

    fn scalar() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            (0u64..5000).prop_map(|n| n.to_string()),
            Just("-3".to_owned()),
            Just("0.0".to_owned()),
            Just("1024.0".to_owned()),
            Just("1e3".to_owned()),
            Just("-0.5E-2".to_owned()),
            Just("1e400".to_owned()),
            Just("4294967296".to_owned()),
            Just("\"claude-sonnet-4-5\"".to_owned()),
            Just("\"a\\\"b\\\\c\\/\\n\\u00e9\"".to_owned()),
            Just("\"\\ud83d\\ude00\"".to_owned()),
            Just("\"\\udc00\"".to_owned()),
            Just("\"héllo ✓\"".to_owned()),
            (0usize..3).prop_map(|k| format!(
                "\"{}{}\"",
                ["iVBORw0KGgo", "data:image/png;base64,/9j/", "plain "][k],
                "A".repeat(1100)
            )),
            "[a-z ]{0,40}".prop_map(|s| format!("\"{s}\"")),
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        scalar().prop_recursive(6, 48, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((prop::sample::select(&KEYS[..]), inner), 0..5).prop_map(
                    |m| {
                        let members: Vec<String> =
                            m.iter().map(|(k, v)| format!("\"{k}\" : {v}")).collect();
                        format!("{{ {} }}", members.join(",\n"))
                    }
                ),
            ]
        })
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        let object = prop::collection::vec((prop::sample::select(&KEYS[..]), value()), 0..7)
            .prop_map(|m| {
                let members: Vec<String> = m.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!(" {{{}}}\t", members.join(", ")).into_bytes()
            });
        let edit = (
            any::<prop::sample::Index>(),
            0usize..3,
            prop::sample::select(b"{}[]\",:\\ \x0c\x01\xff\xc3u0.e-+tfn5".to_vec()),
        );
        (object, prop::collection::vec(edit, 0..3)).prop_map(|(mut b, edits)| {
            for (at, kind, byte) in edits {
                let i = at.index(b.len() + 1);
                match kind {
                    0 => b.insert(i, byte),
                    1 if i < b.len() => b[i] = byte,
                    _ if i < b.len() => {
                        b.remove(i);
                    }
                    _ => {}
                }
            }
            b
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn accepts_and_reads_what_serde_did(b in body()) {
            for e in [Messages, ChatCompletions, Completions, Responses] {
                let new = inspect(e, &b);
                let old = reference::inspect(e, &b);
                match (&new, &old) {
                    (Ok(n), Ok(o)) => prop_assert_eq!(n, o),
                    (Err(_), Err(_)) => {}
                    _ => prop_assert!(false, "scan {:?}, serde {:?} on {:?}", new, old,
                        String::from_utf8_lossy(&b)),
                }
                if old.is_ok() {
                    prop_assert_eq!(estimate_input_tokens(&b), reference::estimate(&b));
                }
            }
        }
    }

    #[test]
    fn deep_nesting_is_walked_without_recursion() {
        let depth = 100_000;
        let body = format!(
            "{{\"model\":\"m\",\"x\":{}1{}}}",
            "[{\"a\":".repeat(depth),
            "}]".repeat(depth)
        );
        assert_eq!(ok(Messages, &body).model.as_deref(), Some("m"));
        let broken = format!("{{\"x\":{}1{}}}", "[".repeat(depth), "]".repeat(depth - 1));
        assert!(err(Messages, &broken).contains("not valid JSON"));
    }

    #[test]
    fn syntax_errors_say_where() {
        assert_eq!(
            err(Messages, "{\"model\":\"x\",\n \"n\" 1}"),
            "request body is not valid JSON: expected `:` at line 2 column 6"
        );
        assert!(err(Messages, "{\"a\":\"\x01\"}").contains("control character"));
        assert!(err(Messages, r#"{"a":"\x"}"#).contains("invalid escape"));
        assert!(err(Messages, r#"{"a":01}"#).contains("invalid number"));
        assert!(err(Messages, r#"{"a":[1,]}"#).contains("expected value"));
        assert!(err(Messages, r#"{"a":1,}"#).contains("key must be a string"));
        assert!(err(Messages, "\x0c{}").contains("not valid JSON"));
    }
}
