//! Deployment gates (issue 4, items 1 and 6):
//!
//! - `scripts/verify-unit.sh` (systemd-analyze verify + security + agreement
//!   with the packaged config) passes on `conf/tollgate.service` with the
//!   binary under test; exit 77 (no systemd-analyze) is a skip.
//! - `tollgate check` as a deploy gate: a listener address held by another
//!   process, or a private key that matches no configured public key, is an
//!   error (exit 1) naming it; an unreachable store is only a warning.

use crate::common::gateway::{keygen, path_str, run_cli, write_config, GatewayBuilder, BIN};
use serde_json::json;
use std::process::{Command, Output};

fn all_output(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_no_panic(o: &Output) {
    let text = all_output(o);
    assert!(
        !text.contains("panicked") && !text.contains("stack backtrace"),
        "panic or backtrace: {text}"
    );
}

#[test]
fn verify_unit_script_passes_on_the_packaged_unit() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/verify-unit.sh"))
        .arg(BIN)
        .current_dir(root)
        .output()
        .expect("run scripts/verify-unit.sh");
    let text = all_output(&out);
    match out.status.code() {
        Some(0) => eprintln!("{text}"),
        Some(77) => eprintln!("SKIPPED: systemd-analyze is not installed\n{text}"),
        other => panic!("scripts/verify-unit.sh exited {other:?}:\n{text}"),
    }
}

#[test]
fn check_passes_a_clean_config() {
    let s = GatewayBuilder::new("http://127.0.0.1:9").setup();
    let out = run_cli(s.dir.path(), &["check", "-c", path_str(&s.config_path)]);
    assert_eq!(out.status.code(), Some(0), "{}", all_output(&out));
}

#[test]
fn check_fails_on_a_listener_address_held_by_another_process() {
    let s = GatewayBuilder::new("http://127.0.0.1:9").setup();
    for (key, port) in [
        ("listen", s.proxy_port),
        ("admin_listen", s.admin_port),
        ("metrics_listen", s.metrics_port),
    ] {
        let held = std::net::TcpListener::bind(("127.0.0.1", port));
        let Ok(_held) = held else {
            // Someone else took the port since the config was written: also held.
            eprintln!("port {port} already taken; checking anyway");
            continue;
        };
        let out = run_cli(s.dir.path(), &["check", "-c", path_str(&s.config_path)]);
        assert_no_panic(&out);
        let text = all_output(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "check with {key} 127.0.0.1:{port} held: {text}"
        );
        assert!(
            text.contains(&format!("127.0.0.1:{port}")),
            "check names the held address of {key}: {text}"
        );
        assert!(
            text.contains(key),
            "check names the config key {key}: {text}"
        );
    }
}

#[test]
fn check_fails_on_a_private_key_that_matches_no_public_key() {
    let s = GatewayBuilder::new("http://127.0.0.1:9").setup();
    let other = s.dir.path().join("other-keys");
    keygen(s.dir.path(), &other);
    let foreign = other.join("private.pem");

    // Signing as k1 with a key that is not k1's private half.
    let mut c = s.config.clone();
    c["identity"]["private_key"] = json!(foreign);
    let mismatched = s.dir.path().join("mismatched.yaml");
    write_config(&mismatched, &c);
    let out = run_cli(s.dir.path(), &["check", "-c", path_str(&mismatched)]);
    assert_no_panic(&out);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("private_key") && text.contains(path_str(&foreign)),
        "names the private key: {text}"
    );
    assert!(text.contains("k1"), "names the key it should match: {text}");
    assert!(
        !text.contains("PRIVATE KEY"),
        "never prints key material: {text}"
    );

    // Without signing_kid: a key that matches none of the configured keys.
    let mut c = s.config.clone();
    c["identity"]["private_key"] = json!(foreign);
    c["identity"].as_object_mut().unwrap().remove("signing_kid");
    let unmatched = s.dir.path().join("unmatched.yaml");
    write_config(&unmatched, &c);
    let out = run_cli(s.dir.path(), &["check", "-c", path_str(&unmatched)]);
    assert_no_panic(&out);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("private_key") && text.contains(path_str(&foreign)),
        "names the private key: {text}"
    );

    // `serve` refuses it as well, with the same first error.
    let out = run_cli(s.dir.path(), &["serve", "-c", path_str(&mismatched)]);
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1), "{}", all_output(&out));
    assert!(all_output(&out).contains("private_key"));
}

#[test]
fn check_only_warns_about_an_unreachable_store() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = dead.local_addr().unwrap().port();
    drop(dead); // nothing listens there now
    let url = format!("redis://127.0.0.1:{port}");
    let s = GatewayBuilder::new("http://127.0.0.1:9")
        .store(&url, "fail_closed")
        .setup();
    let out = run_cli(s.dir.path(), &["check", "-c", path_str(&s.config_path)]);
    assert_no_panic(&out);
    let text = all_output(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a down store is not a config error: {text}"
    );
    assert!(
        text.contains("warning") && text.to_lowercase().contains("redis"),
        "check warns that the store is unreachable: {text}"
    );
}
