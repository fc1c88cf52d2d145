//! A few named members of a JSON object, read without building the rest.
//!
//! A `usage` object read into a `serde_json::Value` allocates a map, a
//! string per key and a node per member: about 8k instructions per response
//! (docs/performance.md, "Round 3"), most of it for members nobody reads
//! (`service_tier`, `cache_creation`, `server_tool_use`). [`Picked`] keeps
//! the named members only, each as a `Value` (a number or null costs no
//! allocation), and skips the rest unparsed; [`Members`] lets the usage
//! readers take either.

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;

mod plain;

pub(crate) use plain::plain_string;

/// An object's members by name: a whole `serde_json` map, or [`Picked`].
pub trait Members {
    fn member(&self, key: &str) -> Option<&Value>;
}

impl Members for Map<String, Value> {
    fn member(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }
}

/// The members of one JSON object named in `names` (the last one when a
/// name repeats, as `serde_json::Map` keeps it).
#[derive(Debug)]
pub struct Picked<const N: usize> {
    names: [&'static str; N],
    values: [Option<Value>; N],
}

impl<const N: usize> Members for Picked<N> {
    fn member(&self, key: &str) -> Option<&Value> {
        let i = self.names.iter().position(|n| *n == key)?;
        self.values[i].as_ref()
    }
}

impl<const N: usize> Picked<N> {
    /// `raw`'s members named in `names`. `None` when `raw` is not one JSON
    /// object, as `serde_json::from_slice::<Value>` and `as_object` would
    /// say.
    pub fn from_slice(raw: &[u8], names: [&'static str; N]) -> Option<Self> {
        if let Some(values) = plain::pick(raw, &names) {
            return Some(Self { names, values });
        }
        let mut de = serde_json::Deserializer::from_slice(raw);
        let values = Seed(&names).deserialize(&mut de).ok()?;
        de.end().ok()?;
        Some(Self { names, values })
    }
}

struct Seed<'n, const N: usize>(&'n [&'static str; N]);

impl<'de, const N: usize> DeserializeSeed<'de> for Seed<'_, N> {
    type Value = [Option<Value>; N];

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for Seed<'_, N> {
    type Value = [Option<Value>; N];

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        let mut values: [Option<Value>; N] = std::array::from_fn(|_| None);
        while let Some(Key(k)) = a.next_key()? {
            match self.0.iter().position(|n| *n == k) {
                Some(i) => values[i] = Some(a.next_value()?),
                None => {
                    a.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(values)
    }
}

/// A member name, borrowed from the input unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NAMES: [&str; 3] = ["a", "b", "c"];

    fn via_value(raw: &[u8]) -> Option<[Option<Value>; 3]> {
        let v: Value = serde_json::from_slice(raw).ok()?;
        let o = v.as_object()?;
        Some(NAMES.map(|n| o.get(n).cloned()))
    }

    #[test]
    fn reads_named_members_only() {
        let p = Picked::from_slice(
            br#"{"a":1,"x":{"deep":[1,2,{"y":"z"}]},"b":null,"\u0063":2.5,"a":3}"#,
            NAMES,
        )
        .unwrap();
        assert_eq!(p.member("a"), Some(&Value::from(3)));
        assert_eq!(p.member("b"), Some(&Value::Null));
        assert_eq!(p.member("c"), Some(&Value::from(2.5)));
        assert_eq!(p.member("x"), None);
        for bad in [&b"[1]"[..], b"5", b"{\"a\":1} x", b"{\"a\":}", b"", b"null"] {
            assert!(Picked::from_slice(bad, NAMES).is_none(), "{bad:?}");
        }
    }

    /// serde_json's reading alone, without the plain-shape reader.
    fn via_serde(raw: &[u8]) -> Option<[Option<Value>; 3]> {
        let mut de = serde_json::Deserializer::from_slice(raw);
        let values = Seed(&NAMES).deserialize(&mut de).ok()?;
        de.end().ok()?;
        Some(values)
    }

    #[test]
    fn providers_usage_objects_take_the_plain_reader() {
        let anthropic = br#"{"input_tokens":1200,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":85,"service_tier":"standard"}"#;
        let names = [
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
        ];
        let v = plain::pick(anthropic, &names).expect("plain shape");
        assert_eq!(
            v,
            [
                Some(Value::from(1200)),
                Some(Value::from(85)),
                Some(Value::from(0))
            ]
        );
        let openai = b"{\n  \"prompt_tokens\": 19,\n  \"completion_tokens\": 10,\n  \"total_tokens\": 29,\n  \"prompt_tokens_details\": {\"cached_tokens\": 0, \"audio_tokens\": null},\n  \"completion_tokens_details\": {\"reasoning_tokens\": 0}\n}";
        let names = ["prompt_tokens", "completion_tokens", "total_tokens"];
        assert!(plain::pick(openai, &names).is_some());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        /// Whatever the plain reader answers is serde_json's answer; it
        /// declines (for serde_json to read) anything else.
        #[test]
        fn the_plain_reader_agrees_with_serde_json(
            members in prop::collection::vec(
                (prop::sample::select(&["a", "b", "c", "d", "\\u0061", "é", "a b"][..]),
                 prop::sample::select(&[
                     "1", "0", "00", "01", "12", "18446744073709551615", "18446744073709551616",
                     "99999999999999999999", "1.0", "1e3", "2E1", "-1", "null", "nul", "true",
                     "false", "\"s\"", "\"\"", "\"é\"", "\"a\\\"b\"", "[1]", "{}",
                     "{\"b\":3}", "{\"x\":{\"y\":{\"z\":{}}}}", "{\"a\":1,}", "tru", "1x",
                 ][..]),
                 prop::sample::select(&["", " ", "\n\t", "\r"][..])),
                0..7),
            cut in 0usize..4,
        ) {
            let body: Vec<String> = members
                .iter()
                .map(|(k, v, w)| format!("{w}\"{k}\"{w}:{w}{v}{w}"))
                .collect();
            let mut raw = format!(" {{{}}} ", body.join(",")).into_bytes();
            raw.truncate(raw.len().saturating_sub(cut));
            if let Some(plain) = plain::pick(&raw, &NAMES) {
                prop_assert_eq!(Some(plain), via_serde(&raw));
            }
            prop_assert_eq!(
                Picked::from_slice(&raw, NAMES).map(|p| p.values),
                via_serde(&raw)
            );
        }

        /// Any bytes at all, and strings of JSON's own characters: never a
        /// panic, never an answer serde_json would not give.
        #[test]
        fn the_plain_reader_on_any_bytes(
            raw in prop::collection::vec(any::<u8>(), 0..64),
            json in prop::collection::vec(
                prop::sample::select(&b"{}{}\"\"\":,,01 \nabctruefalsnl.e-[]\\"[..]),
                0..48),
        ) {
            for bytes in [&raw, &json] {
                if let Some(plain) = plain::pick(bytes, &NAMES) {
                    prop_assert_eq!(Some(plain), via_serde(bytes));
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        /// What a whole `Value` would have given, on valid and broken
        /// objects alike.
        #[test]
        fn same_as_a_whole_value(
            members in prop::collection::vec(
                (prop::sample::select(&["a", "b", "c", "d", "\\u0061"][..]),
                 prop::sample::select(&["1", "null", "\"s\"", "[1,{\"a\":2}]", "{\"b\":3}", "-2.5e3", "tru"][..])),
                0..6),
            cut in 0usize..4,
        ) {
            let body: Vec<String> = members.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
            let mut raw = format!(" {{{}}} ", body.join(",")).into_bytes();
            raw.truncate(raw.len().saturating_sub(cut));
            let picked = Picked::from_slice(&raw, NAMES).map(|p| p.values);
            prop_assert_eq!(picked, via_value(&raw));
        }
    }
}
