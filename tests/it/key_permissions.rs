//! Secrets on disk (issue 6, item 5): `tollgate keygen` writes the private
//! key mode 0600 whatever the umask; a private key that group or others can
//! read stops `serve` (exit 1, one line naming the file and the fix), and
//! `check` and `token issue` report it too.

use crate::common::gateway::{
    path_str, run_cli, GatewayBuilder, Setup, BIN, PROVIDER_KEY, PROVIDER_KEY_ENV,
};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A config and keys, not served (the provider URL is never contacted).
fn setup() -> Setup {
    GatewayBuilder::new("http://127.0.0.1:9").setup()
}

/// `tollgate serve -c CONFIG`, which must exit on its own within 10 s (it
/// is killed, and the test fails, if it starts serving instead).
fn serve_expecting_exit(s: &Setup) -> Output {
    let mut child = Command::new(BIN)
        .args(["serve", "-c", path_str(&s.config_path)])
        .current_dir(s.dir.path())
        .env(PROVIDER_KEY_ENV, PROVIDER_KEY)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tollgate serve");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "tollgate serve started with a world-readable private key; stderr:\n{}",
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Exit 1, and exactly one non-empty stderr line that names `file` and says
/// how to fix it (`chmod 600` or `chmod 0600`); no panic, no backtrace.
fn assert_refuses_naming(out: &Output, file: &Path, what: &str) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: exit {:?}, stderr:\n{err}",
        out.status
    );
    assert!(
        !err.contains("panicked") && !err.contains("stack backtrace"),
        "{what}:\n{err}"
    );
    assert!(
        err.contains(path_str(file)) || err.contains(file.file_name().unwrap().to_str().unwrap()),
        "{what}: does not name {}:\n{err}",
        file.display()
    );
    assert!(
        err.contains("chmod 600") || err.contains("chmod 0600") || err.contains("chmod go-rwx"),
        "{what}: does not say how to fix it:\n{err}"
    );
}

#[test]
fn keygen_writes_the_private_key_0600_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    for alg in ["RS256", "ES256", "EdDSA"] {
        for umask in ["000", "022", "077"] {
            let dir = tmp.path().join(format!("keys-{alg}-{umask}"));
            let status = Command::new("sh")
                .args([
                    "-c",
                    r#"umask "$1"; exec "$2" keygen --dir "$3" --alg "$4""#,
                    "keygen",
                    umask,
                    BIN,
                    path_str(&dir),
                    alg,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .expect("run keygen");
            assert!(
                status.status.success(),
                "keygen {alg} umask {umask}: {}",
                stderr(&status)
            );
            let private = dir.join("private.pem");
            assert_eq!(
                mode(&private),
                0o600,
                "{alg} private.pem with umask {umask}: mode {:o}",
                mode(&private)
            );
            let public = std::fs::read_to_string(dir.join("public.pem")).unwrap();
            assert!(
                !public.contains("PRIVATE"),
                "public.pem holds a private key"
            );
        }
    }
}

#[test]
fn keygen_never_overwrites_nor_loosens_an_existing_private_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    let out = run_cli(tmp.path(), &["keygen", "--dir", path_str(&dir)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let private = dir.join("private.pem");
    let before = std::fs::read(&private).unwrap();
    let again = run_cli(tmp.path(), &["keygen", "--dir", path_str(&dir)]);
    assert_eq!(
        again.status.code(),
        Some(1),
        "second keygen: {}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read(&private).unwrap(),
        before,
        "the private key was replaced"
    );
    assert_eq!(mode(&private), 0o600);
}

#[test]
fn serve_refuses_a_world_readable_private_key_with_one_clear_line() {
    let s = setup();
    let private = s.keys_dir.join("private.pem");
    assert_eq!(mode(&private), 0o600, "the harness key starts private");
    chmod(&private, 0o644);
    let out = serve_expecting_exit(&s);
    assert_refuses_naming(&out, &private, "serve with a 0644 private key");
    assert_eq!(
        stderr(&out).trim().lines().count(),
        1,
        "one line:\n{}",
        stderr(&out)
    );
    // And the fix works.
    chmod(&private, 0o600);
    let out = run_cli(s.dir.path(), &["check", "-c", path_str(&s.config_path)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "check after chmod 600: {}",
        stderr(&out)
    );
}

#[test]
fn serve_refuses_group_or_other_access_of_any_kind() {
    let s = setup();
    let private = s.keys_dir.join("private.pem");
    for m in [0o640, 0o604, 0o620, 0o602, 0o660, 0o666, 0o777] {
        chmod(&private, m);
        let out = serve_expecting_exit(&s);
        assert_refuses_naming(&out, &private, &format!("serve with mode {m:o}"));
    }
    // Owner-only modes are fine.
    chmod(&private, 0o400);
    let out = run_cli(s.dir.path(), &["check", "-c", path_str(&s.config_path)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "check with mode 0400: {}",
        stderr(&out)
    );
}

#[test]
fn check_reports_a_world_readable_private_key() {
    let s = setup();
    let private = s.keys_dir.join("private.pem");
    chmod(&private, 0o644);
    let out = run_cli(s.dir.path(), &["check", "-c", path_str(&s.config_path)]);
    assert_refuses_naming(&out, &private, "check with a 0644 private key");
}

#[test]
fn token_issue_refuses_a_world_readable_private_key() {
    let s = setup();
    let private = s.keys_dir.join("private.pem");
    chmod(&private, 0o644);
    let out = run_cli(
        s.dir.path(),
        &[
            "token",
            "issue",
            "-c",
            path_str(&s.config_path),
            "--sub",
            "alice",
        ],
    );
    assert_refuses_naming(&out, &private, "token issue with a 0644 private key");
    assert!(out.stdout.is_empty(), "a token was printed");
}

#[test]
fn a_symlink_to_a_world_readable_private_key_is_refused() {
    let s = setup();
    let private = s.keys_dir.join("private.pem");
    let real = s.keys_dir.join("real-private.pem");
    std::fs::rename(&private, &real).unwrap();
    chmod(&real, 0o644);
    std::os::unix::fs::symlink(&real, &private).unwrap();
    let out = serve_expecting_exit(&s);
    assert_eq!(out.status.code(), Some(1), "serve: {}", stderr(&out));
    assert!(
        stderr(&out).contains("private") && !stderr(&out).contains("panicked"),
        "{}",
        stderr(&out)
    );
}
