use super::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use std::path::Path;
use time::{Duration, OffsetDateTime};

/// A CA, and a leaf it signed valid from `from` to `to` days from now.
fn leaf(dir: &Path, name: &str, from: i64, to: i64) -> TlsFiles {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    let now = OffsetDateTime::now_utc();
    p.not_before = now + Duration::days(from);
    p.not_after = now + Duration::days(to);
    let cert = p.signed_by(&key, &issuer).expect("leaf");
    let files = TlsFiles {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
        client_ca: Some(dir.join(format!("{name}-ca.crt"))),
    };
    std::fs::write(&files.cert, cert.pem() + &ca_cert.pem()).expect("write cert");
    std::fs::write(&files.key, key.serialize_pem()).expect("write key");
    std::fs::write(files.client_ca.as_ref().expect("ca"), ca_cert.pem()).expect("write ca");
    files
}

fn errors(f: &[Finding]) -> Vec<&str> {
    f.iter()
        .filter_map(|f| match f {
            Finding::Error(m) => Some(m.as_str()),
            Finding::Warning(_) => None,
        })
        .collect()
}

fn warnings(f: &[Finding]) -> Vec<&str> {
    f.iter()
        .filter_map(|f| match f {
            Finding::Warning(m) => Some(m.as_str()),
            Finding::Error(_) => None,
        })
        .collect()
}

#[test]
fn a_valid_pair_with_its_chain_and_client_ca_loads_clean() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = leaf(dir.path(), "ok", -1, 90);
    let loaded = ListenerTls::load(&files).expect("loads");
    assert_eq!(loaded.chain().len(), 2, "leaf and CA from one file");
    assert!(loaded.settings().is_ok());
    assert_eq!(check_files(&files, now_unix()), Vec::new());
}

#[test]
fn a_key_of_another_pair_is_refused_naming_both_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = leaf(dir.path(), "a", -1, 90);
    let b = leaf(dir.path(), "b", -1, 90);
    let mixed = TlsFiles {
        key: b.key.clone(),
        ..a.clone()
    };
    let err = ListenerTls::load(&mixed).expect_err("mismatch").to_string();
    assert!(err.contains("does not match"), "{err}");
    assert!(err.contains(&*a.cert.to_string_lossy()), "{err}");
    assert!(err.contains(&*b.key.to_string_lossy()), "{err}");
    let key_pem = std::fs::read_to_string(&b.key).expect("key");
    let body = key_pem.lines().nth(1).expect("a base64 line");
    assert!(!err.contains(body), "no key material in {err}");
}

#[test]
fn expiry_is_an_error_and_near_expiry_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = now_unix();
    let expired = check_files(&leaf(dir.path(), "old", -30, -1), now);
    let e = errors(&expired);
    assert_eq!(e.len(), 1, "{expired:?}");
    assert!(
        e[0].contains("old.crt") && e[0].contains("expired on"),
        "{e:?}"
    );

    let soon = check_files(&leaf(dir.path(), "soon", -30, 3), now);
    assert!(errors(&soon).is_empty(), "{soon:?}");
    let w = warnings(&soon);
    assert_eq!(w.len(), 1, "{soon:?}");
    assert!(
        w[0].contains("soon.crt") && w[0].contains("(in 3 day(s)): renew it"),
        "{w:?}"
    );

    let future = check_files(&leaf(dir.path(), "future", 2, 90), now);
    assert!(
        errors(&future)
            .iter()
            .any(|m| m.contains("future.crt") && m.contains("not valid before")),
        "{future:?}"
    );
    let fine = check_files(&leaf(dir.path(), "fine", -1, 15), now);
    assert!(fine.is_empty(), "15 days left: {fine:?}");
}

#[test]
fn unreadable_or_empty_files_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = leaf(dir.path(), "g", -1, 90);
    let missing = TlsFiles {
        cert: dir.path().join("nope.crt"),
        ..good.clone()
    };
    let err = ListenerTls::load(&missing)
        .expect_err("missing")
        .to_string();
    assert!(
        err.contains("cannot read tls cert") && err.contains("nope.crt"),
        "{err}"
    );

    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "nothing here\n").expect("write");
    let err = ListenerTls::load(&TlsFiles {
        cert: empty.clone(),
        ..good.clone()
    })
    .expect_err("no cert")
    .to_string();
    assert!(
        err.contains("holds no PEM certificate") && err.contains("empty.pem"),
        "{err}"
    );
    let err = ListenerTls::load(&TlsFiles {
        key: empty.clone(),
        ..good.clone()
    })
    .expect_err("no key")
    .to_string();
    assert!(err.contains("holds no PEM private key"), "{err}");
    let err = ListenerTls::load(&TlsFiles {
        client_ca: Some(empty),
        ..good
    })
    .expect_err("no ca")
    .to_string();
    assert!(
        err.contains("tls client_ca") && err.contains("empty.pem"),
        "{err}"
    );
}
