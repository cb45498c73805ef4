//! Fixtures shared by the scenarios.

use std::path::{Path, PathBuf};

use myelin_e2e::client::TlsClient;
use myelin_e2e::{TestCa, TestDir};

/// The addresses (`ip:port`) a `myelin check --json` report found working, in order.
pub fn working_addresses(report: &serde_json::Value) -> Vec<&str> {
    report["resolution"]["targets"]
        .as_array()
        .map(|targets| {
            targets
                .iter()
                .filter_map(|t| t["working"].as_str())
                .collect()
        })
        .unwrap_or_default()
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_myelin"))
}

/// A test directory with a CA and a certificate for `example.test` (+ matrix.example.test,
/// localhost, 127.0.0.1) written to `example.pem` / `example.key`.
pub struct Fixture {
    pub dir: TestDir,
    pub ca: TestCa,
    pub ca_path: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Fixture {
    pub fn new(name: &str) -> Fixture {
        let dir = TestDir::new(name);
        let ca = TestCa::new();
        let ca_path = ca.write_ca(&dir);
        let (cert, key) = ca.write_leaf(
            &dir,
            "example",
            &[
                "example.test",
                "matrix.example.test",
                "localhost",
                "127.0.0.1",
            ],
        );
        Fixture {
            dir,
            ca,
            ca_path,
            cert,
            key,
        }
    }

    pub fn client(&self) -> TlsClient {
        TlsClient::new(&self.ca.cert_pem, &["http/1.1"])
    }

    pub fn h2_client(&self) -> TlsClient {
        TlsClient::new(&self.ca.cert_pem, &["h2"])
    }

    /// One TLS listener on a free port, the example certificate, one homeserver `example.test`
    /// in front of `upstream`. `homeserver_extra` goes into the [[homeserver]] block, `extra`
    /// at the end of the file.
    pub fn config(&self, upstream: &str, homeserver_extra: &str, extra: &str) -> String {
        config_with_cert(&self.cert, &self.key, upstream, homeserver_extra, extra)
    }
}

pub fn config_with_cert(
    cert: &Path,
    key: &Path,
    upstream: &str,
    homeserver_extra: &str,
    extra: &str,
) -> String {
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"

[[certificate]]
cert = "{cert}"
key = "{key}"

[[homeserver]]
server_name = "example.test"
hosts = ["matrix.example.test", "localhost", "127.0.0.1"]
upstream = "{upstream}"
{homeserver_extra}

{extra}
"#,
        cert = cert.display(),
        key = key.display(),
    )
}
