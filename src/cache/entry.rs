//! One cached answer, and its encoding for a shared store (compressed).

use crate::usage::Usage;
use bytes::Bytes;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use flate2::Compression;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};

/// A complete 200 answer with complete usage.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// As the provider (or the kind's rewrite) sent it: JSON, or an SSE
    /// stream replayed as one.
    pub content_type: String,
    pub body: Bytes,
    /// The original answer's usage, reported again by every hit's record.
    pub usage: Usage,
    /// The model the provider named in its answer.
    pub model: Option<String>,
    /// The model name sent upstream when a deployment renamed it.
    pub upstream_model: Option<String>,
    /// The provider that answered.
    pub provider: String,
}

/// Per-entry bookkeeping counted against `max_bytes` besides the body.
const OVERHEAD: usize = 256;

impl Entry {
    /// What the entry costs the in-process cache.
    pub fn weight(&self) -> usize {
        self.body.len()
            + self.content_type.len()
            + self.provider.len()
            + self.model.as_ref().map_or(0, String::len)
            + self.upstream_model.as_ref().map_or(0, String::len)
            + OVERHEAD
    }
}

#[derive(Serialize, Deserialize)]
struct Head {
    content_type: String,
    input_tokens: u64,
    output_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    model: Option<String>,
    upstream_model: Option<String>,
    provider: String,
}

/// Format version: a replica reading another version's entry treats it as
/// a miss.
const VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("cache entry is corrupt")]
    Corrupt,
    #[error("cache entry has another format version")]
    Version,
    #[error("cache entry is larger than any stored entry")]
    TooLarge,
}

/// `[version][head length u32 LE][head JSON][body]`, deflated.
pub fn encode(e: &Entry) -> std::io::Result<Vec<u8>> {
    let head = Head {
        content_type: e.content_type.clone(),
        input_tokens: e.usage.input_tokens,
        output_tokens: e.usage.output_tokens,
        cache_creation_input_tokens: e.usage.cache_creation_input_tokens,
        cache_read_input_tokens: e.usage.cache_read_input_tokens,
        model: e.model.clone(),
        upstream_model: e.upstream_model.clone(),
        provider: e.provider.clone(),
    };
    let head = serde_json::to_vec(&head)?;
    let head_len = u32::try_from(head.len())
        .map_err(|_| std::io::Error::other("cache entry head too large"))?;
    // Level 1: LLM text still shrinks about threefold, at a fraction of
    // the default level's time.
    let mut z = DeflateEncoder::new(Vec::with_capacity(e.body.len() / 2), Compression::fast());
    z.write_all(&[VERSION])?;
    z.write_all(&head_len.to_le_bytes())?;
    z.write_all(&head)?;
    z.write_all(&e.body)?;
    z.finish()
}

/// Reads back an [`encode`]d entry, inflating at most `limit` bytes (a
/// value that would inflate further is refused, not allocated).
pub fn decode(raw: &[u8], limit: usize) -> Result<Entry, DecodeError> {
    let mut out = Vec::new();
    let mut z = DeflateDecoder::new(raw).take(limit as u64 + 1);
    z.read_to_end(&mut out).map_err(|_| DecodeError::Corrupt)?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge);
    }
    let (&version, rest) = out.split_first().ok_or(DecodeError::Corrupt)?;
    if version != VERSION {
        return Err(DecodeError::Version);
    }
    let len_bytes: [u8; 4] = rest
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(DecodeError::Corrupt)?;
    let head_len = u32::from_le_bytes(len_bytes) as usize;
    let head_end = 4usize.checked_add(head_len).ok_or(DecodeError::Corrupt)?;
    let head = rest.get(4..head_end).ok_or(DecodeError::Corrupt)?;
    let head: Head = serde_json::from_slice(head).map_err(|_| DecodeError::Corrupt)?;
    let body_start = 1 + head_end;
    let body = Bytes::from(out).slice(body_start..);
    Ok(Entry {
        content_type: head.content_type,
        body,
        usage: Usage {
            input_tokens: head.input_tokens,
            output_tokens: head.output_tokens,
            cache_creation_input_tokens: head.cache_creation_input_tokens,
            cache_read_input_tokens: head.cache_read_input_tokens,
        },
        model: head.model,
        upstream_model: head.upstream_model,
        provider: head.provider,
    })
}

#[cfg(test)]
pub(crate) fn sample(body: &[u8]) -> Entry {
    Entry {
        content_type: "text/event-stream; charset=utf-8".into(),
        body: Bytes::copy_from_slice(body),
        usage: Usage {
            input_tokens: 1,
            output_tokens: 2,
            cache_creation_input_tokens: 3,
            cache_read_input_tokens: 4,
        },
        model: Some("claude-sonnet-4-5".into()),
        upstream_model: None,
        provider: "anthropic".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_compression() {
        let text = "event: content_block_delta\ndata: {\"text\":\"hello world\"}\n\n".repeat(200);
        let e = sample(text.as_bytes());
        let raw = encode(&e).unwrap();
        assert!(
            raw.len() * 5 < text.len(),
            "{} vs {}",
            raw.len(),
            text.len()
        );
        assert_eq!(decode(&raw, 1 << 20).unwrap(), e);
    }

    #[test]
    fn bad_values_are_errors_not_panics() {
        let e = sample(&[b'a'; 4096]);
        let raw = encode(&e).unwrap();
        assert!(matches!(decode(&raw, 1000), Err(DecodeError::TooLarge)));
        assert!(decode(b"not deflate at all", 1 << 20).is_err());
        assert!(decode(&raw[..raw.len() / 2], 1 << 20).is_err());
        for cut in [0usize, 1, 3, 5, 20] {
            let mut z = DeflateEncoder::new(Vec::new(), Compression::fast());
            let full = {
                let mut v = vec![VERSION];
                v.extend_from_slice(&1000u32.to_le_bytes());
                v.extend_from_slice(b"{}");
                v
            };
            z.write_all(&full[..cut.min(full.len())]).unwrap();
            assert!(decode(&z.finish().unwrap(), 1 << 20).is_err(), "{cut}");
        }
        let mut z = DeflateEncoder::new(Vec::new(), Compression::fast());
        z.write_all(&[VERSION + 1, 0, 0, 0, 0]).unwrap();
        assert!(matches!(
            decode(&z.finish().unwrap(), 1 << 20),
            Err(DecodeError::Version)
        ));
    }
}
