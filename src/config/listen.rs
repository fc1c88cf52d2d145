//! Listener entries: `127.0.0.1:8080` (plain HTTP/1.1) or
//! `{ addr: 0.0.0.0:8443, tls: { cert, key, client_ca } }` (TLS, with h2 and
//! HTTP/1.1 offered by ALPN).
//!
//! The two forms are told apart by hand rather than with `#[serde(untagged)]`:
//! an untagged enum swallows the inner error, so a typo such as `certt` would
//! read "data did not match any variant" instead of naming the key.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// One listener: an address, and TLS when configured.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ListenEntry {
    Plain(String),
    Spec(ListenSpec),
}

/// The object form of a listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenSpec {
    pub addr: String,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// A listener's certificate and key (PEM files; `cert` may hold the whole
/// chain, leaf first) and, optionally, the CA that client certificates must
/// be signed by (mutual TLS).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl ListenEntry {
    pub fn addr(&self) -> &str {
        match self {
            ListenEntry::Plain(a) => a,
            ListenEntry::Spec(s) => &s.addr,
        }
    }

    pub fn tls(&self) -> Option<&TlsConfig> {
        match self {
            ListenEntry::Plain(_) => None,
            ListenEntry::Spec(s) => s.tls.as_ref(),
        }
    }
}

impl<'de> Deserialize<'de> for ListenEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EntryVisitor)
    }
}

struct EntryVisitor;

impl<'de> Visitor<'de> for EntryVisitor {
    type Value = ListenEntry;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an address (host-ip:port) or { addr, tls: { cert, key, client_ca } }")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(ListenEntry::Plain(v.to_string()))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        ListenSpec::deserialize(de::value::MapAccessDeserializer::new(map)).map(ListenEntry::Spec)
    }
}

/// `listen:` — one entry or a list of them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(ListenEntry),
    Many(Vec<ListenEntry>),
}

impl OneOrMany {
    pub fn entries(&self) -> &[ListenEntry] {
        match self {
            OneOrMany::One(e) => std::slice::from_ref(e),
            OneOrMany::Many(v) => v,
        }
    }

    pub fn addrs(&self) -> Vec<String> {
        self.entries()
            .iter()
            .map(|e| e.addr().to_string())
            .collect()
    }
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ListVisitor)
    }
}

struct ListVisitor;

impl<'de> Visitor<'de> for ListVisitor {
    type Value = OneOrMany;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a listener entry or a list of them")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        EntryVisitor.visit_str(v).map(OneOrMany::One)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        EntryVisitor.visit_map(map).map(OneOrMany::One)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut v = Vec::new();
        while let Some(e) = seq.next_element::<ListenEntry>()? {
            v.push(e);
        }
        Ok(OneOrMany::Many(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<OneOrMany, String> {
        serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn string_object_and_mixed_lists() {
        assert_eq!(
            parse("127.0.0.1:8080").expect("string"),
            OneOrMany::One(ListenEntry::Plain("127.0.0.1:8080".into()))
        );
        let one = parse("{ addr: 0.0.0.0:8443, tls: { cert: c.pem, key: k.pem } }").expect("obj");
        let e = &one.entries()[0];
        assert_eq!(e.addr(), "0.0.0.0:8443");
        let tls = e.tls().expect("tls");
        assert_eq!(tls.cert, PathBuf::from("c.pem"));
        assert_eq!(tls.client_ca, None);
        let many = parse(
            "- 127.0.0.1:8080\n- { addr: 0.0.0.0:8443, tls: { cert: c, key: k, client_ca: ca } }\n",
        )
        .expect("list");
        assert_eq!(many.addrs(), ["127.0.0.1:8080", "0.0.0.0:8443"]);
        assert_eq!(many.entries()[0].tls(), None);
        assert_eq!(
            many.entries()[1].tls().and_then(|t| t.client_ca.clone()),
            Some(PathBuf::from("ca"))
        );
        let no_tls = parse("{ addr: 127.0.0.1:1 }").expect("addr only");
        assert_eq!(no_tls.entries()[0].tls(), None);
    }

    #[test]
    fn typos_are_named_in_either_form() {
        let err = parse("{ addr: 0.0.0.0:8443, tls: { certt: c, key: k } }").unwrap_err();
        assert!(err.contains("certt"), "{err}");
        let err = parse("- 127.0.0.1:1\n- { adr: 0.0.0.0:8443 }\n").unwrap_err();
        assert!(err.contains("adr"), "{err}");
        let err = parse("{ addr: 0.0.0.0:8443, tls: { cert: c } }").unwrap_err();
        assert!(err.contains("key"), "{err}");
    }
}
