//! The cache key: SHA-256 over everything that makes two requests the same
//! question to the same provider, asked for the same audience.

use sha2::{Digest, Sha256};

/// Whose answers a key is shared by (`cache.scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience<'a> {
    /// One caller: its `sub`.
    User(&'a str),
    /// Every caller of one tier: its name.
    Tier(&'a str),
}

/// What the key covers.
#[derive(Debug, Clone, Copy)]
pub struct KeyParts<'a> {
    /// The provider kind (`anthropic`, `openai`, …).
    pub kind: &'a str,
    /// The catalogue endpoint (`messages`, …).
    pub endpoint: &'a str,
    /// The request body exactly as approved (what goes upstream).
    pub body: &'a [u8],
    pub anthropic_version: Option<&'a [u8]>,
    /// Every `anthropic-beta` value, in order, joined by `,`.
    pub anthropic_beta: Option<&'a [u8]>,
    pub audience: Audience<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 32]);

impl Key {
    pub fn new(p: &KeyParts<'_>) -> Self {
        let mut h = Sha256::new();
        // Every part is length-prefixed and every optional one tagged, so no
        // two different sets of parts can hash the same bytes.
        let mut part = |tag: u8, bytes: Option<&[u8]>| {
            h.update([tag]);
            match bytes {
                None => h.update([0]),
                Some(b) => {
                    h.update([1]);
                    h.update((b.len() as u64).to_le_bytes());
                    h.update(b);
                }
            }
        };
        part(b'k', Some(p.kind.as_bytes()));
        part(b'e', Some(p.endpoint.as_bytes()));
        part(b'b', Some(p.body));
        part(b'v', p.anthropic_version);
        part(b'B', p.anthropic_beta);
        match p.audience {
            Audience::User(sub) => part(b'u', Some(sub.as_bytes())),
            Audience::Tier(tier) => part(b't', Some(tier.as_bytes())),
        }
        Key(h.finalize().into())
    }

    pub fn hex(&self) -> String {
        crate::hex::encode(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> KeyParts<'static> {
        KeyParts {
            kind: "anthropic",
            endpoint: "messages",
            body: br#"{"model":"m","temperature":0}"#,
            anthropic_version: Some(b"2023-06-01"),
            anthropic_beta: None,
            audience: Audience::User("alice"),
        }
    }

    #[test]
    fn every_part_changes_the_key() {
        let k = Key::new(&base());
        assert_eq!(k, Key::new(&base()), "deterministic");
        let variants = [
            KeyParts {
                kind: "openai",
                ..base()
            },
            KeyParts {
                endpoint: "chat_completions",
                ..base()
            },
            KeyParts {
                body: br#"{"model":"m","temperature":0 }"#,
                ..base()
            },
            KeyParts {
                anthropic_version: Some(b"2024-01-01"),
                ..base()
            },
            KeyParts {
                anthropic_version: None,
                ..base()
            },
            KeyParts {
                anthropic_beta: Some(b"prompt-caching-2024-07-31"),
                ..base()
            },
            KeyParts {
                anthropic_beta: Some(b""),
                ..base()
            },
            KeyParts {
                audience: Audience::User("bob"),
                ..base()
            },
            KeyParts {
                audience: Audience::Tier("alice"),
                ..base()
            },
        ];
        let mut seen = vec![k];
        for v in &variants {
            let kv = Key::new(v);
            assert!(!seen.contains(&kv), "{v:?} collides");
            seen.push(kv);
        }
    }

    #[test]
    fn parts_cannot_slide_into_each_other() {
        let a = KeyParts {
            kind: "ab",
            endpoint: "c",
            ..base()
        };
        let b = KeyParts {
            kind: "a",
            endpoint: "bc",
            ..base()
        };
        assert_ne!(Key::new(&a), Key::new(&b));
        assert_eq!(Key::new(&base()).hex().len(), 64);
    }
}
