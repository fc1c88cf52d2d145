//! Rewriting matched spans to `[REDACTED:NAME]`: inside one decoded JSON
//! string, then that string literal re-encoded in place of the original in
//! the body. Every other byte of the body stays as it was.

use super::json::Span;
use super::scan::Hit;

/// `text` with each hit replaced by `[REDACTED:name]` (overlapping hits
/// merged, the first one naming the merge), as a JSON string literal.
pub fn redact_literal(text: &str, hits: &mut [Hit], names: &[String]) -> Option<Vec<u8>> {
    hits.sort_by_key(|h| (h.span.start, std::cmp::Reverse(h.span.end)));
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    let mut i = 0;
    while i < hits.len() {
        let rule = hits[i].rule;
        let mut start = hits[i].span.start.min(text.len());
        let mut end = hits[i].span.end.min(text.len());
        i += 1;
        while i < hits.len() && hits[i].span.start < end {
            end = end.max(hits[i].span.end.min(text.len()));
            i += 1;
        }
        // A pattern over bytes may stop inside a character: widen to whole ones.
        while start > 0 && !text.is_char_boundary(start) {
            start -= 1;
        }
        while end < text.len() && !text.is_char_boundary(end) {
            end += 1;
        }
        if start < pos {
            start = pos;
        }
        if end <= start {
            continue;
        }
        out.push_str(text.get(pos..start)?);
        out.push_str("[REDACTED:");
        out.push_str(names.get(rule).map_or("guard", String::as_str));
        out.push(']');
        pos = end;
    }
    out.push_str(text.get(pos..)?);
    serde_json::to_vec(&out).ok()
}

/// `body` with each (span, literal) edit applied. Edits are the spans of
/// distinct string literals, in any order; an overlapping one is dropped.
pub fn apply(body: &[u8], edits: &mut [(Span, Vec<u8>)]) -> Vec<u8> {
    edits.sort_by_key(|(s, _)| s.start);
    let grown: usize = edits.iter().map(|(_, r)| r.len()).sum();
    let mut out = Vec::with_capacity(body.len() + grown);
    let mut pos = 0;
    for (span, lit) in edits.iter() {
        if span.start < pos || span.end > body.len() {
            continue;
        }
        out.extend_from_slice(&body[pos..span.start]);
        out.extend_from_slice(lit);
        pos = span.end;
    }
    out.extend_from_slice(&body[pos..]);
    out
}
