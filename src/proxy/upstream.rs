//! What the provider receives: the client's request with the client
//! credential swapped for the provider's, and headers fit for accounting.

use super::ctx::{BodyPhase, Ctx};
use crate::config::ProviderKind;
use pingora::http::RequestHeader;
use pingora::prelude::*;

pub fn prepare_request(client: &RequestHeader, up: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
    let Some(p) = &ctx.provider else {
        return Ok(());
    };
    up.remove_header("authorization");
    up.remove_header("x-api-key");
    up.remove_header("proxy-authorization");
    match p.kind {
        ProviderKind::Anthropic => {
            up.insert_header("x-api-key", p.upstream.credential.clone())?;
            if !client.headers.contains_key("anthropic-version") {
                up.insert_header("anthropic-version", "2023-06-01")?;
            }
        }
        ProviderKind::Openai => {
            up.insert_header("authorization", p.upstream.credential.clone())?;
        }
    }
    up.insert_header("host", p.upstream.authority.clone())?;
    // Usage is read from the body: ask for it uncompressed.
    up.insert_header("accept-encoding", "identity")?;
    if !p.upstream.base_path.is_empty() {
        let pq = client
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let uri: http::Uri = format!("{}{}", p.upstream.base_path, pq)
            .parse()
            .map_err(|_| Error::explain(ErrorType::InternalError, "invalid upstream path"))?;
        up.set_uri(uri);
    }
    match &ctx.body {
        BodyPhase::Prepared(b) => {
            up.remove_header("transfer-encoding");
            up.insert_header("content-length", b.len())?;
        }
        BodyPhase::Collecting(_) if p.kind == ProviderKind::Openai => {
            // The approved body may be rewritten (stream_options), so its
            // length is unknown until the end: send it chunked.
            up.remove_header("content-length");
            up.insert_header("transfer-encoding", "chunked")?;
        }
        _ => {}
    }
    Ok(())
}
