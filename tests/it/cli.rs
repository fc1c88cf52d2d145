//! Command line: `serve`, `check`, `keygen`, `token issue`, `token revoke`;
//! exit codes 0 / 1 (user error, one line on stderr, no panic or backtrace) /
//! 2 (bad usage).

use crate::common::gateway::{path_str, run_cli, run_cli_env, write_config, GatewayBuilder, Setup};
use crate::common::jwt;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use std::time::Duration;

/// A config for commands that never reach the provider.
fn setup() -> Setup {
    GatewayBuilder::new("http://127.0.0.1:9").setup()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn all_output(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(o))
}

fn assert_no_panic(o: &Output) {
    let text = all_output(o).to_lowercase();
    assert!(!text.contains("panicked"), "panic in output: {text}");
    assert!(
        !text.contains("internal error"),
        "panic (caught by the hook) in output: {text}"
    );
    assert!(!text.contains("backtrace"), "backtrace in output: {text}");
}

/// Exit 1, exactly one line on stderr naming `what`, no panic.
fn assert_user_error(o: &Output, what: &str) {
    assert_eq!(o.status.code(), Some(1), "exit code; stderr: {}", stderr(o));
    assert_no_panic(o);
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected a one-line message on stderr, got: {err}"
    );
    assert!(err.contains(what), "stderr should name {what:?}: {err}");
}

fn assert_usage_error(o: &Output, args: &[&str]) {
    assert_eq!(
        o.status.code(),
        Some(2),
        "`tollgate {}` is bad usage and should exit 2; output: {}",
        args.join(" "),
        all_output(o)
    );
    assert_no_panic(o);
}

#[test]
fn keygen_writes_private_0600_and_public_into_a_new_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b/keys");
    let out = run_cli(tmp.path(), &["keygen", "--dir", path_str(&dir)]);
    assert_eq!(out.status.code(), Some(0), "keygen: {}", stderr(&out));
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    let mode = std::fs::metadata(&private)
        .expect("private.pem")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "private.pem mode {:o}", mode & 0o777);
    let private_text = std::fs::read_to_string(&private).unwrap();
    let public_text = std::fs::read_to_string(&public).expect("public.pem");
    assert!(private_text.contains("-----BEGIN") && private_text.contains("PRIVATE KEY"));
    assert!(public_text.contains("-----BEGIN") && public_text.contains("PUBLIC KEY"));
    assert!(
        !public_text.contains("PRIVATE"),
        "public.pem holds a private key"
    );
    // RS256 (2048-bit) by default: the SPKI DER is 294 bytes, ~450 chars of PEM.
    assert!(
        public_text.len() > 400,
        "public key too short for RSA-2048: {public_text}"
    );
}

#[test]
fn keygen_es256_and_eddsa_keys_sign_tokens() {
    for alg in ["ES256", "EdDSA"] {
        let s = setup();
        let dir = s.dir.path().join(format!("keys-{alg}"));
        let out = run_cli(
            s.dir.path(),
            &[
                "keygen",
                "--dir",
                path_str(&dir),
                "--alg",
                alg,
                "--kid",
                "k2",
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "keygen --alg {alg}: {}",
            stderr(&out)
        );
        let mode = std::fs::metadata(dir.join("private.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{alg} private.pem mode");
        let mut config = s.config.clone();
        config["identity"]["algorithms"] = json!([alg]);
        config["identity"]["keys"] = json!([{"kid": "k2", "public_key": dir.join("public.pem")}]);
        config["identity"]["private_key"] = json!(dir.join("private.pem"));
        config["identity"]["signing_kid"] = json!("k2");
        let path = s.dir.path().join(format!("{alg}.yaml"));
        write_config(&path, &config);
        let check = run_cli(s.dir.path(), &["check", "-c", path_str(&path)]);
        assert_eq!(
            check.status.code(),
            Some(0),
            "check with {alg}: {}",
            all_output(&check)
        );
        let token = crate::common::gateway::issue_token(s.dir.path(), &path, "alice", None, None);
        let header = jwt::header(&token);
        assert_eq!(header["alg"], json!(alg), "{header}");
        assert_eq!(header["kid"], json!("k2"), "{header}");
    }
}

#[test]
fn keygen_where_a_file_blocks_the_dir_is_a_user_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let target = file.join("keys");
    let out = run_cli(tmp.path(), &["keygen", "--dir", path_str(&target)]);
    assert_user_error(&out, "");
}

#[test]
fn bad_usage_exits_2() {
    let s = setup();
    let cfg = path_str(&s.config_path);
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["frobnicate"],
        vec!["keygen"],
        vec!["check", "-c", cfg, "--no-such-flag"],
        vec!["serve", "-c", cfg, "--no-such-flag"],
        vec!["token"],
        vec!["token", "issue", "-c", cfg],
        vec!["token", "revoke", "-c", cfg],
        vec!["token", "revoke", "-c", cfg, "--jti", "a", "--sub", "b"],
    ];
    for args in cases {
        let out = run_cli(s.dir.path(), &args);
        assert_usage_error(&out, &args);
    }
}

#[test]
fn help_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_cli(tmp.path(), &["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = all_output(&out);
    for cmd in ["serve", "check", "keygen", "token"] {
        assert!(text.contains(cmd), "--help lists {cmd}: {text}");
    }
}

#[test]
fn check_accepts_a_clean_config() {
    let s = setup();
    let out = run_cli(s.dir.path(), &["check", "-c", path_str(&s.config_path)]);
    assert_eq!(out.status.code(), Some(0), "check: {}", all_output(&out));
    assert_no_panic(&out);
}

/// A tier whose `tokens_per_minute` cannot hold a request naming no
/// `max_tokens` (default_max_tokens plus a typical input) is a warning: such
/// requests would be refused for ever.
#[test]
fn check_warns_about_a_tier_too_small_for_a_default_request() {
    let s = setup();
    let mut config = s.config.clone();
    config["limits"]["tiers"]["narrow"] = json!({"tokens_per_minute": 3000});
    config["limits"]["tiers"]["roomy"] = json!({"tokens_per_minute": 500000});
    write_config(&s.config_path, &config);
    let out = run_cli(s.dir.path(), &["check", "-c", path_str(&s.config_path)]);
    let text = all_output(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a warning, not an error: {text}"
    );
    assert!(
        text.contains("warning: limits.tiers.narrow.tokens_per_minute"),
        "{text}"
    );
    assert!(!text.contains("limits.tiers.roomy"), "{text}");
}

/// `limits.teams` entries are checked like tiers, and a misspelt team
/// limit is an unknown key.
#[test]
fn check_holds_teams_to_the_rules_of_tiers() {
    let s = setup();
    let mut config = s.config.clone();
    config["limits"]["teams"] = json!({
        "research": {"usd_per_day": -1},
        "narrow": {"tokens_per_minute": 3000},
        "default": {"usd_per_day": 200}
    });
    write_config(&s.config_path, &config);
    let out = run_cli(s.dir.path(), &["check", "-c", path_str(&s.config_path)]);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("limits.teams.research.usd_per_day must be a non-negative number"),
        "{text}"
    );
    assert!(
        text.contains("warning: limits.teams.narrow.tokens_per_minute"),
        "{text}"
    );
    assert!(!text.contains("limits.teams.default"), "{text}");
    config["limits"]["teams"] = json!({"research": {"usd_perday": 5}});
    write_config(&s.config_path, &config);
    let out = run_cli(s.dir.path(), &["check", "-c", path_str(&s.config_path)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        all_output(&out).contains("usd_perday"),
        "{}",
        all_output(&out)
    );
}

#[test]
fn check_names_an_unknown_key_and_exits_1() {
    let s = setup();
    let mut config = s.config.clone();
    config["identity"]["frobnicate_level"] = json!(3);
    write_config(&s.config_path, &config);
    let out = run_cli(s.dir.path(), &["check", "-c", path_str(&s.config_path)]);
    assert_eq!(out.status.code(), Some(1), "check: {}", all_output(&out));
    assert_no_panic(&out);
    assert!(
        all_output(&out).contains("frobnicate_level"),
        "names the key: {}",
        all_output(&out)
    );
}

#[test]
fn check_reports_every_problem_in_one_run() {
    let s = setup();
    let missing_key = s.dir.path().join("missing-public.pem");
    let mut config = s.config.clone();
    config["identity"]["keys"][0]["public_key"] = json!(missing_key);
    config["providers"][0]["base_url"] = json!("not a url");
    config["providers"][1]["api_key_env"] = json!("TOLLGATE_E2E_UNSET_VAR");
    write_config(&s.config_path, &config);
    let out = run_cli(s.dir.path(), &["check", "-c", path_str(&s.config_path)]);
    assert_eq!(out.status.code(), Some(1), "check: {}", all_output(&out));
    assert_no_panic(&out);
    let text = all_output(&out);
    assert!(
        text.contains("missing-public.pem"),
        "names the unreadable key file: {text}"
    );
    assert!(
        text.contains("TOLLGATE_E2E_UNSET_VAR"),
        "names the missing env var: {text}"
    );
    assert!(text.contains("not a url"), "names the bad URL: {text}");
    assert!(
        !text.contains(crate::common::PROVIDER_KEY),
        "check printed the provider key"
    );
}

#[test]
fn check_on_a_missing_file_is_a_user_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_cli(tmp.path(), &["check", "-c", "does-not-exist.yaml"]);
    // `check` prints a report (one line per problem, maybe a summary), so
    // only the exit code and the named file are checked here.
    assert_eq!(out.status.code(), Some(1), "check: {}", all_output(&out));
    assert_no_panic(&out);
    assert!(
        all_output(&out).contains("does-not-exist.yaml"),
        "{}",
        all_output(&out)
    );
}

#[test]
fn token_issue_prints_a_signed_token_with_the_spec_claims() {
    let s = setup();
    let before = crate::common::now_secs();
    let token = crate::common::gateway::issue_token(
        s.dir.path(),
        &s.config_path,
        "alice@example.com",
        Some("admin"),
        Some("1h"),
    );
    let (header, claims, sig) = jwt::split(&token);
    assert_eq!(header["alg"], json!("RS256"), "{header}");
    assert_eq!(header["kid"], json!("k1"), "{header}");
    assert_eq!(sig.len(), 256, "RSA-2048 signature");
    assert_eq!(claims["sub"], json!("alice@example.com"), "{claims}");
    assert_eq!(claims["role"], json!("admin"), "{claims}");
    assert_eq!(claims["iss"], json!("tollgate"), "{claims}");
    let aud_ok = claims["aud"] == json!("llm-gateway")
        || claims["aud"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("llm-gateway")));
    assert!(aud_ok, "aud names the configured audience: {claims}");
    let iat = claims["iat"].as_u64().expect("iat");
    assert!(
        iat + 2 >= before && iat <= crate::common::now_secs() + 2,
        "iat {iat} is now"
    );
    assert_eq!(claims["exp"].as_u64().expect("exp") - iat, 3600, "--ttl 1h");
    assert!(!jwt::jti(&token).is_empty());

    let default_ttl =
        crate::common::gateway::issue_token(s.dir.path(), &s.config_path, "bob", None, None);
    let c = jwt::claims(&default_ttl);
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        7200,
        "default_ttl 2h: {c}"
    );
    assert_ne!(
        jwt::jti(&default_ttl),
        jwt::jti(&token),
        "every token has its own jti"
    );
}

#[test]
fn token_issue_without_a_private_key_is_a_user_error() {
    let s = setup();
    let mut config = s.config.clone();
    config["identity"]
        .as_object_mut()
        .unwrap()
        .remove("private_key");
    write_config(&s.config_path, &config);
    let out = run_cli(
        s.dir.path(),
        &[
            "token",
            "issue",
            "-c",
            path_str(&s.config_path),
            "--sub",
            "x",
        ],
    );
    assert_user_error(&out, "");
    assert!(out.stdout.is_empty(), "no token printed");
}

#[test]
fn token_issue_with_a_bad_ttl_fails_cleanly() {
    let s = setup();
    let cfg = path_str(&s.config_path);
    let out = run_cli(
        s.dir.path(),
        &["token", "issue", "-c", cfg, "--sub", "x", "--ttl", "banana"],
    );
    assert!(
        matches!(out.status.code(), Some(1) | Some(2)),
        "exit: {}",
        all_output(&out)
    );
    assert_no_panic(&out);
    assert!(out.stdout.is_empty(), "no token printed");
}

/// With the in-process store the CLI cannot reach a running gateway's memory;
/// it must still answer cleanly (0, or 1 with a one-line explanation).
#[test]
fn token_revoke_exit_codes() {
    let s = setup();
    let cfg = path_str(&s.config_path);
    for flag in ["--jti", "--sub"] {
        let out = run_cli(
            s.dir.path(),
            &["token", "revoke", "-c", cfg, flag, "someone"],
        );
        match out.status.code() {
            Some(0) => assert_no_panic(&out),
            Some(1) => assert_user_error(&out, ""),
            other => panic!("token revoke {flag}: exit {other:?}: {}", all_output(&out)),
        }
    }
    let missing = run_cli(
        s.dir.path(),
        &["token", "revoke", "-c", "nope.yaml", "--jti", "x"],
    );
    assert_user_error(&missing, "nope.yaml");
}

#[test]
fn serve_with_a_missing_config_is_a_user_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_cli(tmp.path(), &["serve", "-c", "absent.yaml"]);
    assert_user_error(&out, "absent.yaml");
}

#[test]
fn serve_with_an_unknown_key_names_it() {
    let s = setup();
    let mut config = s.config.clone();
    config["limits"]["max_body_byte"] = json!(5);
    write_config(&s.config_path, &config);
    let out = run_cli(s.dir.path(), &["serve", "-c", path_str(&s.config_path)]);
    assert_eq!(out.status.code(), Some(1), "serve: {}", all_output(&out));
    assert_no_panic(&out);
    assert!(
        stderr(&out).contains("max_body_byte"),
        "names the key: {}",
        stderr(&out)
    );
}

#[test]
fn serve_with_an_unreadable_key_file_is_a_user_error() {
    let s = setup();
    let mut config = s.config.clone();
    config["identity"]["keys"][0]["public_key"] = json!(s.dir.path().join("gone.pem"));
    write_config(&s.config_path, &config);
    let out = run_cli(s.dir.path(), &["serve", "-c", path_str(&s.config_path)]);
    assert_eq!(out.status.code(), Some(1), "serve: {}", all_output(&out));
    assert_no_panic(&out);
    assert!(
        stderr(&out).contains("gone.pem"),
        "names the file: {}",
        stderr(&out)
    );
}

#[test]
fn serve_exits_0_on_sigterm() {
    let mut gw = GatewayBuilder::new("http://127.0.0.1:9").start();
    gw.signal("TERM");
    let status = gw
        .wait_exit(Duration::from_secs(15))
        .expect("serve did not exit within 15 s of SIGTERM (grace periods are 1 s)");
    assert_eq!(status.code(), Some(0), "serve exit after SIGTERM: {status}");
    assert!(!gw.stderr_log().contains("panicked"), "{}", gw.stderr_log());
}

#[test]
fn missing_provider_env_var_is_reported_by_check() {
    let s = setup();
    let out = run_cli_env(
        s.dir.path(),
        &["check", "-c", path_str(&s.config_path)],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "check without {}: {}",
        crate::common::gateway::PROVIDER_KEY_ENV,
        all_output(&out)
    );
    assert!(
        all_output(&out).contains(crate::common::gateway::PROVIDER_KEY_ENV),
        "{}",
        all_output(&out)
    );
    assert_no_panic(&out);
}

/// The shipped example, `conf/tollgate.yaml`, passes `check` with only the
/// keys `scripts/dev.sh` provides: no errors and no warnings.
#[test]
fn the_example_config_passes_check_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    crate::common::gateway::keygen(tmp.path(), &tmp.path().join("keys"));
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/tollgate.yaml"))
            .expect("read conf/tollgate.yaml");
    // Its own listener ports may be taken on a shared machine.
    let [a, b, c] = crate::common::gateway::free_ports();
    let text = example
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{a}"))
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{b}"))
        .replace("127.0.0.1:9464", &format!("127.0.0.1:{c}"))
        .replace("/tmp/tollgate.pid", path_str(&tmp.path().join("t.pid")))
        .replace(
            "/tmp/tollgate_upgrade.sock",
            path_str(&tmp.path().join("u.sock")),
        );
    let path = tmp.path().join("tollgate.yaml");
    std::fs::write(&path, text).expect("write");
    let out = run_cli_env(
        tmp.path(),
        &["check", "-c", path_str(&path)],
        &[
            ("ANTHROPIC_API_KEY", "x"),
            ("ANTHROPIC_API_KEY_2", "x"),
            ("OPENAI_API_KEY", "x"),
            ("AZURE_OPENAI_KEY", "x"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", all_output(&out));
    assert!(
        !all_output(&out).contains("warning"),
        "{}",
        all_output(&out)
    );
}
