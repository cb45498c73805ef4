//! The command line: `check-config`, `--version`, and start-up failures.

use std::process::Command;

use myelin_e2e::myelin::check_config;
use myelin_e2e::{TestDir, repo_root};

use crate::common::{Fixture, bin};

#[test]
fn version_is_printed() {
    let out = Command::new(bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("myelin {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_lists_every_error_with_line_and_column() {
    let dir = TestDir::new("check-config");
    let path = dir.write(
        "bad.toml",
        r#"[[listener]]
bind = "localhost:443"
tls = "yes"

[[certificate]]
cert = "/nonexistent/cert.pem"
key = "/nonexistent/key.pem"

[[homeserver]]
server_name = "exa mple.com"
upstream = "http://127.0.0.1:8008"
max_body_size = "fifty"
colour = "blue"

[homeserver.well_known]
server = "https://matrix.example.com"
client_base_url = "http://matrix.example.com"
"#,
    );
    let (code, out, err) = check_config(&bin(), &path);
    assert_eq!(code, 64, "stdout: {out}\nstderr: {err}");
    let p = path.display().to_string();
    for expected in [
        format!("{p}:2:8: listener[0].bind"),
        format!("{p}:3:7: listener[0].tls"),
        format!("{p}:12:17: homeserver[0].max_body_size"),
        format!("{p}:13:1: homeserver[0].colour: unknown key \"colour\""),
    ] {
        assert!(err.contains(&expected), "missing `{expected}` in:\n{err}");
    }
    assert!(err.contains("nothing was started"), "{err}");
}

#[test]
fn check_config_reports_semantic_errors_at_their_keys() {
    let dir = TestDir::new("check-config-semantic");
    let path = dir.write(
        "bad.toml",
        r#"[[listener]]
bind = "127.0.0.1:8443"

[[certificate]]
cert = "/nonexistent/cert.pem"
key = "/nonexistent/key.pem"

[[homeserver]]
server_name = "exa mple.com"
upstream = "http://127.0.0.1:8008"

[homeserver.well_known]
server = "https://matrix.example.com"
client_base_url = "http://matrix.example.com"
"#,
    );
    let (code, _, err) = check_config(&bin(), &path);
    assert_eq!(code, 64);
    let p = path.display().to_string();
    for expected in [
        format!("{p}:5:8: certificate[0].cert: cannot read /nonexistent/cert.pem"),
        format!("{p}:9:15: homeserver[0].server_name: invalid server name \"exa mple.com\""),
        format!("{p}:13:10: homeserver[0].well_known.server: invalid server name"),
        format!("{p}:14:19: homeserver[0].well_known.client_base_url: invalid URL"),
    ] {
        assert!(err.contains(&expected), "missing `{expected}` in:\n{err}");
    }
    assert!(err.contains("https://"), "says what was expected: {err}");
}

#[test]
fn example_config_passes_once_its_certificate_exists() {
    let f = Fixture::new("example-config");
    let example = std::fs::read_to_string(repo_root().join("config.example.toml")).unwrap();
    let text = example
        .replace(
            "/etc/myelin/tls/example.com.pem",
            &f.cert.display().to_string(),
        )
        .replace(
            "/etc/myelin/tls/example.com.key",
            &f.key.display().to_string(),
        );
    let path = f.dir.write("example.toml", text);
    let (code, out, err) = check_config(&bin(), &path);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out.lines().count(), 1, "one-line summary: {out}");
    assert!(
        out.starts_with("OK: ") && out.contains("4 listeners") && out.contains("example.com"),
        "{out}"
    );
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let f = Fixture::new("port-in-use");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = f
        .config("http://127.0.0.1:8008", "", "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let path = f.dir.write("myelin.toml", config);
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.contains("already uses this address"), "{err}");
}

#[test]
fn a_missing_config_file_is_named() {
    let out = Command::new(bin())
        .args(["run", "--config", "/nonexistent/myelin.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/myelin.toml: cannot read the configuration file"),
        "{err}"
    );
}
