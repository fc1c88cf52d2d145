//! What the provider receives: the client's request with the client
//! credential swapped for the provider's, and headers fit for accounting.

use super::ctx::{BodyPhase, Ctx};
use super::respond::header_number;
use crate::providers::{Credential, Endpoint};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts as ReqParts;
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

/// The header edits every upstream request gets, whichever way they are
/// made (see [`edit_headers`]).
trait Edit {
    fn remove(&mut self, name: &HeaderName);
    fn insert(&mut self, name: &HeaderName, value: HeaderValue) -> Result<()>;

    /// Removes every one of `names` (at most 32) present.
    fn remove_all(&mut self, names: &[HeaderName]) {
        names.iter().for_each(|n| self.remove(n));
    }
}

impl Edit for HeaderMap {
    fn remove(&mut self, name: &HeaderName) {
        HeaderMap::remove(self, name);
    }

    /// A request carries a handful of names and one or two of `names`:
    /// comparing its names against the list (a byte for a standard name)
    /// costs less than hashing each of the list's names to look it up.
    fn remove_all(&mut self, names: &[HeaderName]) {
        debug_assert!(names.len() <= 32);
        let mut found = 0u32;
        for key in self.keys() {
            if let Some(i) = names.iter().position(|n| n == key) {
                found |= 1 << i;
            }
        }
        while found != 0 {
            HeaderMap::remove(self, &names[found.trailing_zeros() as usize]);
            found &= found - 1;
        }
    }

    fn insert(&mut self, name: &HeaderName, value: HeaderValue) -> Result<()> {
        self.try_insert(name, value)
            .or_err(ErrorType::InvalidHTTPHeader, "too many request headers")?;
        Ok(())
    }
}

impl Edit for RequestHeader {
    /// Most requests carry one or two of [`REMOVED`]: a lookup by a
    /// prebuilt name is a hash and a probe, where Pingora's removal parses
    /// the name again for each of its two maps.
    fn remove(&mut self, name: &HeaderName) {
        if self.headers.contains_key(name) {
            self.remove_header(name);
        }
    }

    fn insert(&mut self, name: &HeaderName, value: HeaderValue) -> Result<()> {
        self.insert_header(name.clone(), value)
    }
}

/// Makes `edit` on the request's header map directly, which leaves
/// Pingora's case map behind: the request then goes out with the standard
/// names title-cased and every other name lower-case, as over HTTP/2 (the
/// names are case-insensitive). Through the map each name is a prebuilt
/// one; Pingora's `insert_header` parses it and, for a custom name, copies
/// it, once for each of its two maps. A request whose target Pingora keeps
/// verbatim (absolute-form, or not UTF-8) keeps Pingora's header, and
/// `edit` goes through its methods: rebuilt from the map, the target would
/// become the URI's.
fn edit_headers(
    up: &mut RequestHeader,
    edit: impl FnOnce(&mut dyn Edit) -> Result<()>,
) -> Result<()> {
    let verbatim = match up.uri.path_and_query() {
        Some(pq) => up.raw_path() != pq.as_str().as_bytes(),
        None => true,
    };
    if verbatim || !up.raw_path_is_utf8() {
        return edit(up);
    }
    let end_stream = up.send_end_stream();
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts: ReqParts = std::mem::replace(up, placeholder).into();
    let edited = edit(&mut parts.headers);
    *up = RequestHeader::from(parts);
    if let Some(end_stream) = end_stream {
        up.set_send_end_stream(end_stream);
    }
    edited
}

/// How the request body is framed upstream.
enum Framing {
    /// The approved body, whole: its length.
    Length(usize),
    Chunked,
    /// As the client framed it.
    AsIs,
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
    if let Some(translated) = ctx
        .attempts
        .body
        .as_ref()
        .and_then(|b| p.kind.translate_body(b, client))
    {
        ctx.attempts.body = Some(Bytes::from(translated));
    }
    let framing = match &ctx.body {
        BodyPhase::Approved(b) => {
            Framing::Length(ctx.attempts.body.as_ref().map_or(b.len(), Bytes::len))
        }
        // The approved body may be rewritten (stream_options), so its
        // length is unknown until the end: send it chunked.
        BodyPhase::Collecting(_)
            if matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions) =>
        {
            Framing::Chunked
        }
        _ => Framing::AsIs,
    };
    edit_headers(up, |h| {
        h.remove_all(&REMOVED);
        if let Credential::Header(name, value) = &p.credential {
            h.insert(name, value.clone())?;
        }
        h.insert(&header::HOST, p.upstream.authority.clone())?;
        // Usage is read from the body: ask for it uncompressed.
        h.insert(
            &header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        )?;
        match framing {
            Framing::Length(len) => {
                h.remove(&header::TRANSFER_ENCODING);
                h.insert(&header::CONTENT_LENGTH, header_number(len as u64))
            }
            Framing::Chunked => {
                h.remove(&header::CONTENT_LENGTH);
                h.insert(
                    &header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                )
            }
            Framing::AsIs => Ok(()),
        }
    })?;
    let stream = ctx.info.as_ref().is_some_and(|i| i.stream);
    p.kind.upstream_headers(client, up, &p, stream)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn edited(target: &[u8]) -> RequestHeader {
        let mut up = RequestHeader::build("POST", target, None).unwrap();
        up.append_header("X-Client-Thing", "kept").unwrap();
        up.append_header("Authorization", "Bearer client-token")
            .unwrap();
        edit_headers(&mut up, |h| {
            h.remove_all(&REMOVED);
            h.insert(
                &HeaderName::from_static("x-api-key"),
                HeaderValue::from_static("k"),
            )?;
            h.insert(&header::HOST, HeaderValue::from_static("provider.example"))
        })
        .unwrap();
        up
    }

    fn check_headers(up: &RequestHeader) {
        assert_eq!(up.headers["x-client-thing"], "kept");
        assert_eq!(up.headers["x-api-key"], "k");
        assert_eq!(up.headers["host"], "provider.example");
        assert!(!up.headers.contains_key("authorization"));
        assert_eq!(up.method, "POST");
    }

    #[test]
    fn an_origin_form_request_is_edited_in_its_map() {
        let up = edited(b"/v1/messages?beta=true");
        check_headers(&up);
        assert_eq!(up.raw_path(), b"/v1/messages?beta=true");
        assert!(!up.has_case());
        let mut wire = Vec::new();
        up.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(wire.contains("x-client-thing: kept\r\n"), "{wire}");
        assert!(wire.contains("Host: provider.example\r\n"), "{wire}");
    }

    #[test]
    fn a_verbatim_target_keeps_pingoras_header() {
        for target in [
            &b"http://client.example/v1/messages"[..],
            &b"/v1/messages?q=\xff"[..],
        ] {
            let up = edited(target);
            check_headers(&up);
            assert_eq!(up.raw_path(), target);
            assert!(up.has_case());
        }
    }

    #[test]
    fn an_h2_request_keeps_its_end_of_stream_choice() {
        let mut up = RequestHeader::build("POST", b"/v1/messages", None).unwrap();
        up.set_version(http::Version::HTTP_2);
        up.set_send_end_stream(false);
        edit_headers(&mut up, |h| {
            h.insert(&header::HOST, HeaderValue::from_static("p"))
        })
        .unwrap();
        assert_eq!(up.send_end_stream(), Some(false));
        assert_eq!(up.version, http::Version::HTTP_2);
    }

    /// Every value of every listed name goes, whatever the case it came
    /// in and wherever it stands; other names stay with their values.
    #[test]
    fn remove_all_takes_every_listed_name() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("content-type", "application/json"),
            ("Authorization", "Bearer a"),
            ("x-client-thing", "1"),
            ("authorization", "Bearer b"),
            ("X-Api-Key", "k"),
            ("openai-project", "p"),
            ("x-client-thing", "2"),
        ] {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_static(v),
            );
        }
        let mut by_lookup = h.clone();
        Edit::remove_all(&mut h, &REMOVED);
        for name in &REMOVED {
            Edit::remove(&mut by_lookup, name);
        }
        assert_eq!(h, by_lookup);
        assert_eq!(h.len(), 3);
        assert!(REMOVED.iter().all(|n| !h.contains_key(n)));
        assert_eq!(
            h.get_all("x-client-thing").iter().collect::<Vec<_>>(),
            ["1", "2"]
        );
    }
}
