//! The usage record as one JSON line, written field by field.
//!
//! serde_json's derived serializer escapes every string byte by byte
//! through a table and goes through its `Serializer` per field: 7.7k
//! instructions per record in the 2026-12-07 profile (docs/performance.md,
//! "Round 3"). A record's strings almost never need escaping, so each is
//! checked with one branch-free pass and copied whole; the rare one that
//! does goes through serde_json, so the bytes are exactly what the derive
//! wrote (the tests compare the two on generated records).

use super::UsageRecord;

impl UsageRecord {
    pub(super) fn write_fields(&self, out: &mut Vec<u8>) {
        out.reserve(640);
        out.extend_from_slice(b"{\"ts\":");
        string(out, &self.ts);
        out.extend_from_slice(b",\"request_id\":");
        string(out, &self.request_id);
        out.extend_from_slice(b",\"sub\":");
        string(out, &self.sub);
        out.extend_from_slice(b",\"role\":");
        opt_string(out, self.role.as_deref());
        out.extend_from_slice(b",\"tier\":");
        string(out, &self.tier);
        out.extend_from_slice(b",\"team\":");
        opt_string(out, self.team.as_deref());
        out.extend_from_slice(b",\"jti\":");
        string(out, &self.jti);
        out.extend_from_slice(b",\"provider\":");
        string(out, &self.provider);
        out.extend_from_slice(b",\"model\":");
        opt_string(out, self.model.as_deref());
        out.extend_from_slice(b",\"path\":");
        string(out, &self.path);
        out.extend_from_slice(b",\"status\":");
        opt_uint(out, self.status.map(u64::from));
        out.extend_from_slice(b",\"stream\":");
        boolean(out, self.stream);
        out.extend_from_slice(b",\"input_tokens\":");
        uint(out, self.input_tokens);
        out.extend_from_slice(b",\"output_tokens\":");
        uint(out, self.output_tokens);
        out.extend_from_slice(b",\"cache_creation_input_tokens\":");
        uint(out, self.cache_creation_input_tokens);
        out.extend_from_slice(b",\"cache_read_input_tokens\":");
        uint(out, self.cache_read_input_tokens);
        out.extend_from_slice(b",\"cost_usd\":");
        float(out, self.cost_usd);
        out.extend_from_slice(b",\"duration_ms\":");
        uint(out, self.duration_ms);
        out.extend_from_slice(b",\"ttfb_ms\":");
        opt_uint(out, self.ttfb_ms);
        out.extend_from_slice(b",\"client_disconnected\":");
        boolean(out, self.client_disconnected);
        out.extend_from_slice(b",\"usage_complete\":");
        boolean(out, self.usage_complete);
        out.extend_from_slice(b",\"endpoint\":");
        string(out, self.endpoint);
        out.extend_from_slice(b",\"attempts\":");
        uint(out, u64::from(self.attempts));
        out.extend_from_slice(b",\"upstream_model\":");
        opt_string(out, self.upstream_model.as_deref());
        out.extend_from_slice(b",\"cache_hit\":");
        boolean(out, self.cache_hit);
        out.extend_from_slice(b",\"interrupted\":");
        boolean(out, self.interrupted);
        out.extend_from_slice(b",\"guard\":[");
        for (i, g) in self.guard.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, g);
        }
        out.extend_from_slice(b"]}");
    }
}

/// Whether JSON needs an escape for any byte: control characters, `"` and
/// `\` (serde_json escapes exactly these). No early exit, so it vectorises.
fn needs_escape(s: &[u8]) -> bool {
    s.iter().fold(false, |acc, &c| {
        acc | (c < 0x20) | (c == b'"') | (c == b'\\')
    })
}

fn string(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        // Serializing a `str` into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
        return;
    }
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn uint(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn opt_uint(out: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => uint(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

/// Through serde_json itself: its float format is its own (and changed
/// between releases), and `null` when not finite.
fn float(out: &mut Vec<u8>, f: f64) {
    // Serializing an `f64` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &f);
}

fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9@._-]{0,24}",
            any::<String>(),
            Just("quote\" back\\slash \n\t\u{1}\u{7f} é ✓".to_owned()),
        ]
    }

    prop_compose! {
        fn record()(
            strings in prop::collection::vec(text(), 8),
            opts in prop::collection::vec(prop::option::of(text()), 4),
            status in prop::option::of(any::<u16>()),
            counts in prop::collection::vec(any::<u64>(), 5),
            ttfb in prop::option::of(any::<u64>()),
            cost in prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY), Just(0.0), Just(-0.0), Just(1e-7), Just(123.456)],
            flags in prop::collection::vec(any::<bool>(), 5),
            attempts in any::<u32>(),
            guard in prop::collection::vec(text(), 0..3),
        ) -> UsageRecord {
            let mut s = strings.into_iter();
            let mut next = || s.next().unwrap_or_default();
            let mut o = opts.into_iter();
            let mut opt = || o.next().flatten();
            UsageRecord {
                ts: next(), request_id: next(), sub: next(), role: opt(), tier: next(),
                team: opt(), jti: next(), provider: next(), model: opt(), path: next(),
                status, stream: flags[0],
                input_tokens: counts[0], output_tokens: counts[1],
                cache_creation_input_tokens: counts[2], cache_read_input_tokens: counts[3],
                cost_usd: cost, duration_ms: counts[4], ttfb_ms: ttfb,
                client_disconnected: flags[1], usage_complete: flags[2],
                endpoint: "chat_completions", attempts, upstream_model: opt(),
                cache_hit: flags[3], interrupted: flags[4], guard, journal: None,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        /// Byte for byte what the derived serializer writes.
        #[test]
        fn same_bytes_as_serde(r in record()) {
            let mut ours = Vec::new();
            r.write_fields(&mut ours);
            let derived = serde_json::to_vec(&r).unwrap();
            prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&derived));
        }
    }
}
