//! What the provider receives: the client's request with the client
//! credential swapped for the provider's, and headers fit for accounting.

use super::ctx::{BodyPhase, Ctx};
use crate::providers::{Credential, Endpoint};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::prelude::*;

/// Client headers that never reach a provider: credentials (ours or any
/// other); OpenAI's organisation and project, which are the gateway's to
/// choose (a provider's `organization` / `project` keys); and `Expect`, which
/// the gateway answers itself since it reads the body first; and the
/// gateway's own cache directive.
static REMOVED: [HeaderName; 7] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
    header::EXPECT,
    HeaderName::from_static(crate::cache::HEADER),
];

/// Removes `name` when the request has it. Most requests carry one or two
/// of [`REMOVED`]: a lookup by a prebuilt name is a hash and a probe, where
/// Pingora's removal parses the name again for each of its two maps.
fn remove_if_present(up: &mut RequestHeader, name: &HeaderName) {
    if up.headers.contains_key(name) {
        up.remove_header(name);
    }
}

pub fn prepare_request(
    client: &RequestHeader,
    up: &mut RequestHeader,
    ctx: &mut Ctx,
) -> Result<()> {
    let Some(route) = &ctx.route else {
        return Ok(());
    };
    let (p, endpoint) = (route.provider.clone(), route.endpoint);
    for name in &REMOVED {
        remove_if_present(up, name);
    }
    let stream = ctx.info.as_ref().is_some_and(|i| i.stream);
    if let Credential::Header(name, value) = &p.credential {
        up.insert_header(*name, value.clone())?;
    }
    p.kind.upstream_headers(client, up, &p, stream)?;
    up.insert_header("host", p.upstream.authority.clone())?;
    // Usage is read from the body: ask for it uncompressed.
    up.insert_header("accept-encoding", HeaderValue::from_static("identity"))?;
    let pq = client
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let path = if p.kind.rewrites_path() {
        let model = ctx.attempts.upstream_model.as_deref();
        Some(
            p.kind
                .upstream_path(&p, endpoint, model, stream, pq)
                .ok_or_else(|| {
                    Error::explain(
                        ErrorType::InternalError,
                        "no upstream path for this request",
                    )
                })?,
        )
    } else {
        (!p.upstream.base_path.is_empty()).then(|| format!("{}{pq}", p.upstream.base_path))
    };
    if let Some(path) = path {
        let uri: http::Uri = path
            .parse()
            .map_err(|_| Error::explain(ErrorType::InternalError, "invalid upstream path"))?;
        up.set_uri(uri);
    }
    if let Some(translated) = ctx
        .attempts
        .body
        .as_ref()
        .and_then(|b| p.kind.translate_body(b, client))
    {
        ctx.attempts.body = Some(Bytes::from(translated));
    }
    match &ctx.body {
        BodyPhase::Approved(b) => {
            let len = ctx.attempts.body.as_ref().map_or(b.len(), Bytes::len);
            remove_if_present(up, &header::TRANSFER_ENCODING);
            up.insert_header("content-length", len)?;
        }
        BodyPhase::Collecting(_)
            if matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions) =>
        {
            // The approved body may be rewritten (stream_options), so its
            // length is unknown until the end: send it chunked.
            remove_if_present(up, &header::CONTENT_LENGTH);
            up.insert_header("transfer-encoding", HeaderValue::from_static("chunked"))?;
        }
        _ => {}
    }
    match &p.credential {
        Credential::Header(..) => {}
        Credential::Aws(signer) => {
            let body = match &ctx.body {
                BodyPhase::Approved(b) => ctx.attempts.body.as_ref().unwrap_or(b).clone(),
                _ => Bytes::new(),
            };
            signer.sign(up, &body, std::time::SystemTime::now())?;
        }
        Credential::Google(_) => {
            let bearer = ctx.attempts.bearer.clone().ok_or_else(|| {
                Error::explain(ErrorType::InternalError, "no access token for the attempt")
            })?;
            up.insert_header("authorization", bearer)?;
        }
    }
    Ok(())
}
