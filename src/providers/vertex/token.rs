//! OAuth access tokens for Vertex AI from a Google service-account key: the
//! JWT bearer grant (RFC 7523) in the form Google's token endpoint takes it.
//!
//! [`TokenSource::authorization`] runs on every proxied Vertex request, so
//! its usual answer is one atomic load of the cached header. Refreshes run
//! in a task of their own, one at a time per source: a caller that gives up
//! (timeout, client gone) neither cancels the refresh others wait for nor
//! leaves the source stuck.

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use jsonwebtoken::EncodingKey;
use parking_lot::Mutex;
use serde_json::Value;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// `urn:ietf:params:oauth:grant-type:jwt-bearer`, form-encoded.
const GRANT_TYPE_FORM: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";

/// A cached token is replaced once it has less than this left (or less than
/// a tenth of its lifetime, for short-lived tokens).
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// A token about to expire is not handed out even while its replacement is
/// on its way: the request could reach Google after it expired.
const USABLE_MARGIN: Duration = Duration::from_secs(30);

/// After a failed refresh, callers get that error for this long instead of
/// a new attempt, so a broken endpoint sees at most one request a second.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// A token endpoint that claims a longer life is not believed: the source
/// still refreshes daily.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Key files are ~2.3 KB.
const MAX_KEY_FILE: u64 = 1024 * 1024;

/// OAuth `error` / `error_description` text kept in an error message.
const MAX_OAUTH_FIELD: usize = 300;

/// Fixed because the client outlives any one call; each request is further
/// bounded by its caller's timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no token (or no source). Messages never carry the private key, an
/// assertion or an access token.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The key file (named) could not be read or used.
    #[error("credentials_file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    /// A key given as bytes (not a file) is malformed or unusable.
    #[error("service-account key: {0}")]
    ServiceAccount(String),
    #[error("tls_ca_file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("cannot build the token endpoint's HTTP client: {0}")]
    Client(String),
    #[error("cannot sign the token request: {0}")]
    Sign(String),
    /// No answer: connection refused, reset, TLS failure, ...
    #[error("token endpoint {uri}: {reason}")]
    Transport { uri: String, reason: String },
    #[error("token endpoint {uri}: no token within {after:?}")]
    Timeout { uri: String, after: Duration },
    /// The endpoint refused; `error` / `error_description` are its OAuth
    /// fields (sanitised, truncated), nothing else of its body.
    #[error(
        "token endpoint {uri} answered {status}{}",
        oauth_suffix(error, description)
    )]
    Status {
        uri: String,
        status: u16,
        error: Option<String>,
        description: Option<String>,
    },
    /// A success status whose body is no usable token.
    #[error("token endpoint answer: {0}")]
    Response(&'static str),
    /// The refresh task ended without an answer (its runtime shut down).
    #[error("token refresh abandoned")]
    Abandoned,
    #[error("access tokens need a Tokio runtime")]
    NoRuntime,
}

fn oauth_suffix(error: &Option<String>, description: &Option<String>) -> String {
    match (error, description) {
        (Some(e), Some(d)) => format!(" ({e}: {d})"),
        (Some(e), None) => format!(" ({e})"),
        (None, Some(d)) => format!(" ({d})"),
        (None, None) => String::new(),
    }
}

mod account;
mod response;

use account::{parse_account, register_key, sign_assertion};
pub use account::{ServiceAccount, CLOUD_PLATFORM_SCOPE};
use response::MAX_RESPONSE;
pub use response::{parse_token_response, AccessToken};

/// Access tokens of one service account, cached and refreshed.
pub struct TokenSource {
    inner: Arc<Inner>,
}

struct Inner {
    provider: String,
    client_email: String,
    key_id: String,
    /// As in the key file: the assertion's `aud` must match it exactly.
    token_uri: String,
    url: reqwest::Url,
    key: EncodingKey,
    client: reqwest::Client,
    cached: ArcSwapOption<Cached>,
    state: Mutex<State>,
}

struct Cached {
    header: HeaderValue,
    /// Served without further thought until then.
    fresh_until: Instant,
    /// Served while a refresh runs until then.
    usable_until: Instant,
}

#[derive(Default)]
struct State {
    /// The refresh in flight (its id) and where its outcome appears.
    refresh: Option<(u64, watch::Receiver<Option<Outcome>>)>,
    last_id: u64,
    /// The last refresh's failure and when it ended; cleared by a success.
    failure: Option<(Instant, TokenError)>,
}

type Outcome = Result<HeaderValue, TokenError>;

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        let valid_for = i
            .cached
            .load()
            .as_ref()
            .map(|c| c.usable_until.saturating_duration_since(Instant::now()));
        f.debug_struct("TokenSource")
            .field("provider", &i.provider)
            .field("client_email", &i.client_email)
            .field("private_key_id", &i.key_id)
            .field("token_uri", &i.token_uri)
            .field("token_valid_for", &valid_for)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// `provider` names the source in log lines (errors leave it to the
    /// caller, which prefixes its own context). `ca_file` is a PEM bundle
    /// trusted for `token_uri` besides the system roots.
    pub fn new(
        provider: &str,
        sa: ServiceAccount,
        ca_file: Option<&Path>,
    ) -> Result<Self, TokenError> {
        let bad = TokenError::ServiceAccount;
        register_key(&sa.private_key);
        if sa.client_email.is_empty() {
            return Err(bad("needs \"client_email\" (a non-empty string)".into()));
        }
        let url = token_url(&sa.token_uri).map_err(bad)?;
        let key = EncodingKey::from_rsa_pem(sa.private_key.as_bytes()).map_err(|_| {
            bad("\"private_key\" is not a PEM RSA private key (-----BEGIN PRIVATE KEY-----)".into())
        })?;
        // from_rsa_pem only unwraps the PEM; a trial signature finds a key
        // too short or malformed now rather than at the first request.
        sign_assertion(&key, &sa.private_key_id, &sa.client_email, &sa.token_uri).map_err(|_| {
            bad("\"private_key\" is unusable for RS256 (it must be an RSA key of 2048 bits or more)".into())
        })?;
        let client = http_client(ca_file)?;
        Ok(Self {
            inner: Arc::new(Inner {
                provider: provider.to_string(),
                client_email: sa.client_email,
                key_id: sa.private_key_id,
                token_uri: sa.token_uri,
                url,
                key,
                client,
                cached: ArcSwapOption::empty(),
                state: Mutex::new(State::default()),
            }),
        })
    }

    /// Loads a key file. Errors name the file, never its contents.
    pub fn from_file(
        provider: &str,
        path: &Path,
        ca_file: Option<&Path>,
    ) -> Result<Self, TokenError> {
        let file_err = |reason: String| TokenError::File {
            path: path.to_path_buf(),
            reason,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_KEY_FILE + 1).read_to_end(&mut bytes))
            .map_err(|e| file_err(format!("cannot read it ({e})")))?;
        if bytes.len() as u64 > MAX_KEY_FILE {
            return Err(file_err(
                "larger than 1 MiB: not a service-account key".into(),
            ));
        }
        let sa = parse_account(&bytes).map_err(file_err)?;
        Self::new(provider, sa, ca_file).map_err(|e| match e {
            TokenError::ServiceAccount(reason) => file_err(reason),
            other => other,
        })
    }

    /// The `Authorization` value `Bearer <token>` (marked sensitive).
    ///
    /// Cached until the token has less than 5 minutes (or a tenth of its
    /// lifetime) left. Then one refresh runs; callers meanwhile keep the old
    /// token while it has more than 30 s (or a twentieth) left, and
    /// otherwise wait for the refresh, at most `timeout`. A failed refresh
    /// is reported to the callers of the next second without a new attempt.
    pub async fn authorization(&self, timeout: Duration) -> Result<HeaderValue, TokenError> {
        let inner = &self.inner;
        let now = Instant::now();
        if let Some(c) = &*inner.cached.load() {
            if now < c.fresh_until {
                return Ok(c.header.clone());
            }
            if now < c.usable_until {
                // A held lock means another caller is seeing to the refresh.
                if let Some(mut st) = inner.state.try_lock() {
                    // A refresh refused for the failure pause changes nothing:
                    // the token still works.
                    let _ = inner.start_refresh(&mut st, now, timeout);
                }
                return Ok(c.header.clone());
            }
        }
        let mut rx = {
            let mut st = inner.state.lock();
            // A refresh may have ended between the load above and the lock;
            // it stores the token before it clears `refresh`.
            let now = Instant::now();
            if let Some(c) = &*inner.cached.load() {
                if now < c.usable_until {
                    if now >= c.fresh_until {
                        let _ = inner.start_refresh(&mut st, now, timeout);
                    }
                    return Ok(c.header.clone());
                }
            }
            inner.start_refresh(&mut st, now, timeout)?
        };
        let outcome = match tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => outcome.clone().unwrap_or(Err(TokenError::Abandoned)),
            Ok(Err(_)) => Err(TokenError::Abandoned),
            Err(_) => Err(TokenError::Timeout {
                uri: inner.token_uri.clone(),
                after: timeout,
            }),
        };
        outcome
    }
}

impl Inner {
    /// Joins the refresh in flight or starts one, unless the last one failed
    /// less than [`RETRY_AFTER_FAILURE`] ago.
    fn start_refresh(
        self: &Arc<Self>,
        st: &mut State,
        now: Instant,
        timeout: Duration,
    ) -> Result<watch::Receiver<Option<Outcome>>, TokenError> {
        if let Some((_, rx)) = &st.refresh {
            return Ok(rx.clone());
        }
        if let Some((at, e)) = &st.failure {
            if now.saturating_duration_since(*at) < RETRY_AFTER_FAILURE {
                return Err(e.clone());
            }
        }
        let rt = tokio::runtime::Handle::try_current().map_err(|_| TokenError::NoRuntime)?;
        st.last_id += 1;
        let id = st.last_id;
        let (tx, rx) = watch::channel(None);
        st.refresh = Some((id, rx.clone()));
        let guard = RefreshSlot {
            inner: self.clone(),
            id,
        };
        rt.spawn(async move {
            let outcome = guard.inner.refresh(timeout).await;
            guard.finish(&outcome);
            drop(guard);
            let _ = tx.send(Some(outcome));
        });
        Ok(rx)
    }

    async fn refresh(&self, timeout: Duration) -> Outcome {
        let sent = Instant::now();
        let token = match tokio::time::timeout(timeout, self.fetch(timeout)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(TokenError::Timeout {
                    uri: self.token_uri.clone(),
                    after: timeout,
                })
            }
        };
        crate::oplog::register_secret(&token.token);
        let mut header = HeaderValue::from_str(&format!("Bearer {}", token.token))
            .map_err(|_| TokenError::Response("access_token is not a header value"))?;
        header.set_sensitive(true);
        // Counted from the request, not the answer: the endpoint's clock
        // started no earlier.
        let lifetime = token.expires_in.min(MAX_LIFETIME);
        let expires = sent + lifetime;
        let cached = Cached {
            header: header.clone(),
            fresh_until: expires - REFRESH_MARGIN.min(lifetime / 10),
            usable_until: expires - USABLE_MARGIN.min(lifetime / 20),
        };
        self.cached.store(Some(Arc::new(cached)));
        log::debug!(
            "provider {}: new access token for {}, valid {}s",
            self.provider,
            self.client_email,
            lifetime.as_secs()
        );
        Ok(header)
    }

    async fn fetch(&self, timeout: Duration) -> Result<AccessToken, TokenError> {
        let assertion =
            sign_assertion(&self.key, &self.key_id, &self.client_email, &self.token_uri)?;
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                TokenError::Timeout {
                    uri: self.token_uri.clone(),
                    after: timeout,
                }
            } else {
                TokenError::Transport {
                    uri: self.token_uri.clone(),
                    reason: error_chain(&e.without_url()),
                }
            }
        };
        let mut resp = self
            .client
            .post(self.url.clone())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .timeout(timeout)
            .body(format!(
                "grant_type={GRANT_TYPE_FORM}&assertion={assertion}"
            ))
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_RESPONSE {
                return Err(TokenError::Transport {
                    uri: self.token_uri.clone(),
                    reason: format!("answered {} with a body over 64 KiB", status.as_u16()),
                });
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let (error, description) = oauth_error(&body, &assertion);
            return Err(TokenError::Status {
                uri: self.token_uri.clone(),
                status: status.as_u16(),
                error,
                description,
            });
        }
        parse_token_response(&body)
    }
}

/// Owns a source's refresh slot for one refresh: dropped without
/// [`finish`](Self::finish) (the task panicked, or its runtime dropped it),
/// it still frees the slot, so no refresh can leave a source stuck.
struct RefreshSlot {
    inner: Arc<Inner>,
    id: u64,
}

impl RefreshSlot {
    fn finish(&self, outcome: &Outcome) {
        let inner = &self.inner;
        let mut st = inner.state.lock();
        match outcome {
            Ok(_) => st.failure = None,
            Err(e) => {
                st.failure = Some((Instant::now(), e.clone()));
                // Callers waiting for it log the error themselves; one
                // still served the old token would otherwise never know.
                let still_valid = inner
                    .cached
                    .load()
                    .as_ref()
                    .map(|c| c.usable_until.saturating_duration_since(Instant::now()))
                    .filter(|d| !d.is_zero());
                if let Some(d) = still_valid {
                    log::warn!(
                        "provider {}: access token refresh failed ({e}); the current token stays in use for {}s",
                        inner.provider,
                        d.as_secs()
                    );
                }
            }
        }
    }
}

impl Drop for RefreshSlot {
    fn drop(&mut self) {
        let mut st = self.inner.state.lock();
        if matches!(st.refresh, Some((id, _)) if id == self.id) {
            st.refresh = None;
        }
    }
}

/// `token_uri` as a URL: https, or plain http to this host only (tests,
/// a local metadata proxy). The assertion is a bearer credential for an
/// hour and must not cross a network in the clear.
fn token_url(uri: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(uri).map_err(|_| "\"token_uri\" is not a URL".to_string())?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("\"token_uri\" must not carry credentials".into());
    }
    let host = url.host_str().unwrap_or("");
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(format!(
            "\"token_uri\" {uri:?} must be an https URL (http only to localhost)"
        )),
    }
}

fn http_client(ca_file: Option<&Path>) -> Result<reqwest::Client, TokenError> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(CONNECT_TIMEOUT)
        // A redirect would carry the assertion (307/308) somewhere else.
        .redirect(reqwest::redirect::Policy::none())
        // Like the proxied traffic, which ignores HTTP(S)_PROXY too.
        .no_proxy()
        // One request an hour: a pooled connection would only go stale,
        // and pooled connections are tied to the runtime that opened them.
        .pool_max_idle_per_host(0)
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let ca_err = |reason: String| TokenError::CaFile {
            path: path.to_path_buf(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| ca_err(format!("cannot read it ({e})")))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|_| ca_err("not a PEM certificate bundle".into()))?;
        if certs.is_empty() {
            return Err(ca_err("holds no certificate".into()));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| match ca_file {
        Some(path) => TokenError::CaFile {
            path: path.to_path_buf(),
            reason: error_chain(&e),
        },
        None => TokenError::Client(error_chain(&e)),
    })
}

/// An error and its sources, `: `-joined (reqwest's own message alone says
/// only "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let s_text = s.to_string();
        if !out.ends_with(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        next = s.source();
    }
    out
}

/// The OAuth `error` and `error_description` of a refusal, when its body is
/// a JSON object with them as strings; control characters dropped, long
/// text cut, and withheld if it echoes any part of our assertion.
fn oauth_error(body: &[u8], assertion: &str) -> (Option<String>, Option<String>) {
    let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(body) else {
        return (None, None);
    };
    let field = |name: &str| -> Option<String> {
        let s = o.get(name)?.as_str()?;
        let echoes = assertion
            .split('.')
            .any(|part| part.len() >= 16 && s.contains(part));
        if echoes {
            return Some("[withheld: it quotes the assertion]".into());
        }
        let clean: String = s
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_OAUTH_FIELD)
            .collect();
        (!clean.is_empty()).then_some(clean)
    };
    (field("error"), field("error_description"))
}

#[cfg(test)]
mod tests;
