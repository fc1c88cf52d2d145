//! AWS Signature Version 4 for Bedrock requests, over the exact bytes sent.
//! The signing itself is the `aws-sigv4` crate's (AWS's own); this module
//! holds the credentials and says which headers are signed.

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4::SigningParams;
use aws_smithy_runtime_api::client::identity::Identity;
use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use std::time::SystemTime;

/// The service name Bedrock's runtime signs for.
const SERVICE: &str = "bedrock";

/// AWS credentials and the region they sign for. Loaded once, from the
/// environment variables the provider names.
pub struct AwsSigner {
    identity: Identity,
    region: String,
}

impl std::fmt::Debug for AwsSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsSigner")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl AwsSigner {
    pub fn new(
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
        region: String,
    ) -> Self {
        crate::oplog::register_secret(&secret_access_key);
        if let Some(t) = &session_token {
            crate::oplog::register_secret(t);
        }
        let creds = Credentials::new(
            access_key_id,
            secret_access_key,
            session_token,
            None,
            "tollgate-config",
        );
        Self {
            identity: creds.into(),
            region,
        }
    }

    /// Adds `x-amz-date`, `x-amz-security-token` (with a session token) and
    /// `authorization` to `up`, whose URI, `host` and `content-type` are
    /// final and signed along with `body`.
    pub fn sign(&self, up: &mut RequestHeader, body: &[u8], now: SystemTime) -> Result<()> {
        let fail = |what: &str| Error::explain(ErrorType::InternalError, format!("SigV4: {what}"));
        let host = header_str(up, "host").ok_or_else(|| fail("no host"))?;
        let content_type = header_str(up, "content-type");
        let path = up
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string();
        let url = format!("https://{host}{path}");
        let mut signed: Vec<(&str, &str)> = vec![("host", host)];
        if let Some(ct) = content_type {
            signed.push(("content-type", ct));
        }
        let request = SignableRequest::new(
            up.method.as_str(),
            url.as_str(),
            signed.into_iter(),
            SignableBody::Bytes(body),
        )
        .map_err(|_| fail("unsignable request"))?;
        let params = SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name(SERVICE)
            .time(now)
            .settings(SigningSettings::default())
            .build()
            .map_err(|_| fail("incomplete signing parameters"))?
            .into();
        let (instructions, _signature) = sign(request, &params)
            .map_err(|_| fail("signing failed"))?
            .into_parts();
        let (headers, _params) = instructions.into_parts();
        for h in headers {
            let mut value =
                HeaderValue::from_str(h.value()).map_err(|_| fail("invalid header value"))?;
            value.set_sensitive(h.sensitive() || h.name() == "authorization");
            up.insert_header(h.name(), value)?;
        }
        Ok(())
    }
}

fn header_str<'a>(up: &'a RequestHeader, name: &str) -> Option<&'a str> {
    up.headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn request(path: &str) -> RequestHeader {
        let mut up = RequestHeader::build("POST", path.as_bytes(), None).unwrap();
        up.insert_header("host", "bedrock-runtime.us-east-1.amazonaws.com")
            .unwrap();
        up.insert_header("content-type", "application/json")
            .unwrap();
        up
    }

    #[test]
    fn signs_host_content_type_and_date() {
        let s = AwsSigner::new(
            "AKIDEXAMPLE".into(),
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            None,
            "us-east-1".into(),
        );
        let mut up = request("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke");
        let now = UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        s.sign(&mut up, b"{}", now).unwrap();
        let auth = up.headers.get("authorization").unwrap().to_str().unwrap();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"));
        assert!(auth.contains("/us-east-1/bedrock/aws4_request"));
        assert!(auth.contains("SignedHeaders=content-type;host;x-amz-date,"));
        assert!(up.headers.get("authorization").unwrap().is_sensitive());
        assert!(up.headers.contains_key("x-amz-date"));
        assert!(!up.headers.contains_key("x-amz-security-token"));
        // The same request signed twice at the same time signs the same.
        let mut again = request("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke");
        s.sign(&mut again, b"{}", now).unwrap();
        assert_eq!(
            up.headers.get("authorization"),
            again.headers.get("authorization")
        );
        // Another body, another signature.
        let mut other = request("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke");
        s.sign(&mut other, b"{ }", now).unwrap();
        assert_ne!(
            up.headers.get("authorization"),
            other.headers.get("authorization")
        );
    }

    #[test]
    fn a_session_token_is_sent_and_signed() {
        let s = AwsSigner::new(
            "AKID".into(),
            "secret".into(),
            Some("tok".into()),
            "eu-west-1".into(),
        );
        let mut up = request("/model/m/invoke");
        s.sign(&mut up, b"{}", SystemTime::now()).unwrap();
        assert_eq!(up.headers.get("x-amz-security-token").unwrap(), "tok");
        let auth = up.headers.get("authorization").unwrap().to_str().unwrap();
        assert!(auth.contains("x-amz-security-token"), "{auth}");
        assert!(!format!("{s:?}").contains("secret"));
    }
}
