//! A test PKI made with rcgen: a root CA, an intermediate that signs the
//! server certificates (so the listener must send its chain), and client
//! certificates signed by the root (for admin mTLS).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;

pub struct Pki {
    pub root_pem: String,
    root: Issuer<'static, KeyPair>,
    intermediate_pem: String,
    intermediate: Issuer<'static, KeyPair>,
}

/// A server certificate written as PEM files.
pub struct ServerFiles {
    /// Leaf then intermediate.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The leaf alone, DER, to compare with what a handshake presents.
    pub leaf_der: Vec<u8>,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    p
}

impl Pki {
    /// A fresh root and intermediate, named `name` (so two PKIs differ).
    pub fn new(name: &str) -> Pki {
        let root_key = KeyPair::generate().expect("root key");
        let root_params = ca_params(&format!("{name} test root"));
        let root_pem = root_params.self_signed(&root_key).expect("root").pem();
        let root = Issuer::new(root_params, root_key);
        let int_key = KeyPair::generate().expect("intermediate key");
        let int_params = ca_params(&format!("{name} test intermediate"));
        let intermediate_pem = int_params
            .signed_by(&int_key, &root)
            .expect("intermediate")
            .pem();
        Pki {
            root_pem,
            root,
            intermediate_pem,
            intermediate: Issuer::new(int_params, int_key),
        }
    }

    /// Writes `ca.pem` (the root) in `dir`.
    pub fn write_root(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, &self.root_pem).expect("write root");
        p
    }

    /// A server certificate for 127.0.0.1 and localhost, valid from
    /// `valid.0` to `valid.1` seconds from now (negative: in the past),
    /// written as `NAME.crt` (leaf + intermediate) and `NAME.key`.
    pub fn server(&self, dir: &Path, name: &str, valid: (i64, i64)) -> ServerFiles {
        let key = KeyPair::generate().expect("server key");
        let mut p = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
            .expect("server params");
        p.distinguished_name
            .push(DnType::CommonName, format!("tollgate test {name}"));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::seconds(valid.0);
        p.not_after = now + time::Duration::seconds(valid.1);
        let leaf = p.signed_by(&key, &self.intermediate).expect("server cert");
        let files = ServerFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            leaf_der: leaf.der().to_vec(),
        };
        std::fs::write(&files.cert, leaf.pem() + &self.intermediate_pem).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }

    /// A server certificate valid for a year.
    pub fn server_ok(&self, dir: &Path, name: &str) -> ServerFiles {
        self.server(dir, name, (-3600, 365 * 86_400))
    }

    /// A client certificate signed by the root, as a reqwest identity.
    pub fn client(&self, cn: &str) -> reqwest::Identity {
        let key = KeyPair::generate().expect("client key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("client params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &self.root).expect("client cert");
        let pem = cert.pem() + &key.serialize_pem();
        reqwest::Identity::from_pem(pem.as_bytes()).expect("client identity")
    }
}

/// An HTTPS client trusting only `root_pem`: ALPN offers h2 then http/1.1
/// (reqwest's default with rustls), one connection per request, the peer's
/// certificate kept (`TlsInfo`).
pub fn https_client(root_pem: &str, identity: Option<reqwest::Identity>) -> reqwest::Client {
    https_builder(root_pem, identity)
        .build()
        .expect("https client")
}

pub fn https_builder(
    root_pem: &str,
    identity: Option<reqwest::Identity>,
) -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem.as_bytes()).expect("root"))
        .tls_info(true)
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30));
    if let Some(id) = identity {
        b = b.identity(id);
    }
    b
}

/// The leaf certificate (DER) the server presented.
pub fn peer_certificate(resp: &reqwest::Response) -> Option<Vec<u8>> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .map(<[u8]>::to_vec)
}

/// A bare TLS connection to `127.0.0.1:port` offering only ALPN `alpn`,
/// trusting `root_pem`: for connection-level cases no HTTP client shows.
pub async fn tls_connect(
    root_pem: &str,
    port: u16,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut root_pem.as_bytes()) {
        roots.add(c.expect("root pem")).expect("root cert");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("tcp connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("server name");
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("tls handshake")
}
