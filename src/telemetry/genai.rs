//! The OpenTelemetry GenAI semantic conventions, and tollgate's own
//! attributes, taken from a finished request's usage record.

use crate::usage::UsageRecord;
use opentelemetry::KeyValue;

/// `gen_ai.system` of a provider kind (its config name, `Kind::name`).
pub fn system(kind: &str) -> &'static str {
    match kind {
        "anthropic" => "anthropic",
        "openai" => "openai",
        "azure_openai" => "az.ai.openai",
        "bedrock" => "aws.bedrock",
        "vertex" => "gcp.vertex_ai",
        // A kind added without a mapping still says where it went.
        _ => "_OTHER",
    }
}

/// `gen_ai.operation.name` of a catalogue endpoint (the record's `endpoint`).
pub fn operation(endpoint: &str) -> &'static str {
    match endpoint {
        "embeddings" => "embeddings",
        _ => "chat",
    }
}

/// All input the provider read, cached included: the record's
/// `input_tokens` counts uncached input only.
pub fn input_tokens(r: &UsageRecord) -> u64 {
    r.input_tokens
        .saturating_add(r.cache_read_input_tokens)
        .saturating_add(r.cache_creation_input_tokens)
}

/// The span name the conventions ask for: `{operation} {model}`.
pub fn span_name(operation: &str, model: Option<&str>) -> String {
    match model {
        Some(m) if !m.is_empty() => format!("{operation} {m}"),
        _ => operation.to_string(),
    }
}

/// OpenTelemetry attribute values are signed.
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The request span's attributes.
pub fn request_attributes(r: &UsageRecord, kind: &str) -> Vec<KeyValue> {
    let mut a = Vec::with_capacity(22);
    a.push(KeyValue::new("gen_ai.system", system(kind)));
    a.push(KeyValue::new(
        "gen_ai.operation.name",
        operation(r.endpoint),
    ));
    if let Some(m) = &r.model {
        a.push(KeyValue::new("gen_ai.request.model", m.clone()));
    }
    if let Some(m) = r.upstream_model.as_ref().or(r.model.as_ref()) {
        a.push(KeyValue::new("gen_ai.response.model", m.clone()));
    }
    a.push(KeyValue::new(
        "gen_ai.usage.input_tokens",
        int(input_tokens(r)),
    ));
    a.push(KeyValue::new(
        "gen_ai.usage.output_tokens",
        int(r.output_tokens),
    ));
    a.push(KeyValue::new("tollgate.user", r.sub.clone()));
    if let Some(t) = &r.team {
        a.push(KeyValue::new("tollgate.team", t.clone()));
    }
    a.push(KeyValue::new("tollgate.cost_usd", r.cost_usd));
    a.push(KeyValue::new("tollgate.request_id", r.request_id.clone()));
    a.push(KeyValue::new("tollgate.tier", r.tier.clone()));
    a.push(KeyValue::new("tollgate.provider", r.provider.clone()));
    a.push(KeyValue::new("tollgate.endpoint", r.endpoint));
    a.push(KeyValue::new("tollgate.stream", r.stream));
    a.push(KeyValue::new("tollgate.attempts", i64::from(r.attempts)));
    a.push(KeyValue::new("tollgate.usage_complete", r.usage_complete));
    a.push(KeyValue::new(
        "tollgate.client_disconnected",
        r.client_disconnected,
    ));
    a.push(KeyValue::new(
        "tollgate.cache_read_input_tokens",
        int(r.cache_read_input_tokens),
    ));
    a.push(KeyValue::new(
        "tollgate.cache_creation_input_tokens",
        int(r.cache_creation_input_tokens),
    ));
    if let Some(s) = r.status {
        a.push(KeyValue::new("http.response.status_code", i64::from(s)));
    }
    a.push(KeyValue::new("url.path", r.path.clone()));
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::Value;

    fn record() -> UsageRecord {
        UsageRecord {
            ts: String::new(),
            request_id: "req_1".into(),
            sub: "alice".into(),
            role: None,
            tier: "default".into(),
            team: Some("red".into()),
            jti: String::new(),
            provider: "anthropic".into(),
            model: Some("claude-x".into()),
            path: "/v1/messages".into(),
            status: Some(200),
            stream: true,
            input_tokens: 10,
            output_tokens: 20,
            cache_creation_input_tokens: 3,
            cache_read_input_tokens: 4,
            cost_usd: 0.25,
            duration_ms: 1,
            ttfb_ms: None,
            client_disconnected: false,
            usage_complete: true,
            endpoint: "messages",
            attempts: 2,
            upstream_model: Some("claude-x-2".into()),
            cache_hit: false,
            interrupted: false,
            guard: Vec::new(),
            journal: None,
        }
    }

    fn get<'a>(a: &'a [KeyValue], key: &str) -> Option<&'a Value> {
        a.iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn genai_system_per_kind() {
        for (kind, want) in [
            ("anthropic", "anthropic"),
            ("openai", "openai"),
            ("azure_openai", "az.ai.openai"),
            ("bedrock", "aws.bedrock"),
            ("vertex", "gcp.vertex_ai"),
        ] {
            assert_eq!(system(kind), want);
        }
        // Every configurable kind has its own value.
        for k in [
            crate::config::ProviderKind::Anthropic,
            crate::config::ProviderKind::Openai,
            crate::config::ProviderKind::AzureOpenai,
            crate::config::ProviderKind::Bedrock,
            crate::config::ProviderKind::Vertex,
        ] {
            assert_ne!(system(crate::providers::kind(k).name()), "_OTHER");
        }
    }

    #[test]
    fn genai_operation_per_endpoint() {
        assert_eq!(operation("embeddings"), "embeddings");
        for e in ["messages", "chat_completions", "responses", "completions"] {
            assert_eq!(operation(e), "chat");
        }
    }

    #[test]
    fn genai_input_tokens_include_cached_input() {
        let r = record();
        assert_eq!(input_tokens(&r), 17);
        let huge = UsageRecord {
            input_tokens: u64::MAX,
            ..record()
        };
        assert_eq!(input_tokens(&huge), u64::MAX);
    }

    #[test]
    fn genai_request_attributes() {
        let a = request_attributes(&record(), "bedrock");
        assert_eq!(get(&a, "gen_ai.system"), Some(&Value::from("aws.bedrock")));
        assert_eq!(get(&a, "gen_ai.operation.name"), Some(&Value::from("chat")));
        assert_eq!(
            get(&a, "gen_ai.request.model"),
            Some(&Value::from("claude-x"))
        );
        assert_eq!(
            get(&a, "gen_ai.response.model"),
            Some(&Value::from("claude-x-2"))
        );
        assert_eq!(get(&a, "gen_ai.usage.input_tokens"), Some(&Value::I64(17)));
        assert_eq!(get(&a, "gen_ai.usage.output_tokens"), Some(&Value::I64(20)));
        assert_eq!(get(&a, "tollgate.user"), Some(&Value::from("alice")));
        assert_eq!(get(&a, "tollgate.team"), Some(&Value::from("red")));
        assert_eq!(get(&a, "tollgate.cost_usd"), Some(&Value::F64(0.25)));
        let solo = UsageRecord {
            team: None,
            model: None,
            upstream_model: None,
            ..record()
        };
        let a = request_attributes(&solo, "openai");
        assert!(get(&a, "tollgate.team").is_none());
        assert!(get(&a, "gen_ai.request.model").is_none());
    }

    #[test]
    fn genai_span_name() {
        assert_eq!(span_name("chat", Some("gpt-4o")), "chat gpt-4o");
        assert_eq!(span_name("embeddings", None), "embeddings");
    }
}
