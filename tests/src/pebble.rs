//! Pebble, Let's Encrypt's ACME test server, as the CA for tests: its own HTTPS certificate
//! from a [`TestCa`], validation ports and DNS server chosen by the test, the environment that
//! makes it deterministic, and its per-start root fetched from the management port.
//!
//! Pebble validates HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` of the address the
//! name resolves to through `dns_server`, and prefers IPv6 when the name has an AAAA record.
//! Its ACME and management ports are on 127.0.0.1 (of the namespace, when run in one).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::{TestCa, TestDir, free_port, peers};

#[derive(Clone, Debug)]
pub struct PebbleConfig {
    /// Where Pebble connects for HTTP-01 (Myelin's plain listener).
    pub http_port: u16,
    /// Where Pebble connects for TLS-ALPN-01 (Myelin's TLS listener).
    pub tls_port: u16,
    /// The DNS server Pebble resolves names and DNS-01 records with.
    pub dns_server: SocketAddr,
    /// Certificate lifetime in seconds (Pebble's default: 5 years).
    pub validity_secs: Option<u64>,
    /// The ACME port (chosen free when `None`; give the old one to restart "the same" CA).
    pub listen_port: Option<u16>,
    /// Require external account binding with this key ID and base64url HMAC key.
    pub external_account: Option<(String, String)>,
    /// Run Pebble (and the `curl` that asks it) through this prefix, e.g. `ip netns exec NAME`:
    /// inside a namespace it validates on the namespace's addresses and resolves through the
    /// namespace's DNS. Empty: directly.
    pub wrapper: Vec<String>,
}

pub struct Pebble {
    child: Option<Child>,
    pub config: PebbleConfig,
    pub port: u16,
    pub management_port: u16,
    /// Trust anchor for Pebble's own HTTPS (give it to the ACME client).
    pub https_ca: PathBuf,
    dir: PathBuf,
}

impl Pebble {
    /// Whether `pebble` and `curl` are installed (else skip, or fail under CI).
    pub fn available() -> bool {
        peers::require(
            "pebble (ACME test CA) and curl",
            peers::has_program("pebble") && peers::has_program("curl"),
        )
    }

    /// The ports Pebble would use, chosen now, for a CA that must be known before it runs.
    pub fn reserve_port() -> u16 {
        free_port()
    }

    /// Starts Pebble with files in `<dir>/pebble`; waits until its directory answers.
    pub fn start(dir: &TestDir, ca: &TestCa, config: PebbleConfig) -> Pebble {
        let root = dir.join("pebble");
        std::fs::create_dir_all(&root).expect("pebble dir");
        let leaf = ca.leaf(&["localhost", "127.0.0.1"]);
        let cert = root.join("pebble-https.pem");
        let key = root.join("pebble-https.key");
        std::fs::write(&cert, &leaf.cert_pem).expect("pebble cert");
        std::fs::write(&key, &leaf.key_pem).expect("pebble key");
        let https_ca = root.join("https-ca.pem");
        std::fs::write(&https_ca, &ca.cert_pem).expect("pebble https ca");
        let port = config.listen_port.unwrap_or_else(free_port);
        let management_port = free_port();
        let validity = config
            .validity_secs
            .map(|v| format!(",\n    \"certificateValidityPeriod\": {v}"))
            .unwrap_or_default();
        let eab_required = config.external_account.is_some();
        let eab_keys = config
            .external_account
            .as_ref()
            .map(|(kid, key)| {
                format!(",\n    \"externalAccountMACKeys\": {{ \"{kid}\": \"{key}\" }}")
            })
            .unwrap_or_default();
        let json = format!(
            r#"{{
  "pebble": {{
    "listenAddress": "127.0.0.1:{port}",
    "managementListenAddress": "127.0.0.1:{management_port}",
    "certificate": "{cert}",
    "privateKey": "{key}",
    "httpPort": {http},
    "tlsPort": {tls},
    "ocspResponderURL": "",
    "externalAccountBindingRequired": {eab_required}{eab_keys}{validity}
  }}
}}
"#,
            cert = cert.display(),
            key = key.display(),
            http = config.http_port,
            tls = config.tls_port,
        );
        let conf_path = root.join("pebble-config.json");
        std::fs::write(&conf_path, json).expect("pebble config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("pebble.log"))
            .expect("pebble.log");
        let wrapper: Vec<&str> = config.wrapper.iter().map(String::as_str).collect();
        let child = crate::wrapped_command(&wrapper, "pebble")
            .arg("-config")
            .arg(&conf_path)
            .arg("-dnsserver")
            .arg(config.dns_server.to_string())
            .arg("-strict=false")
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn pebble");
        let mut p = Pebble {
            child: Some(child),
            config,
            port,
            management_port,
            https_ca,
            dir: root,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if p.curl(&p.directory_url()).is_some() {
                return p;
            }
            if let Some(Ok(Some(status))) = p.child.as_mut().map(|c| c.try_wait()) {
                panic!("pebble exited ({status}):\n{}", p.log());
            }
            if Instant::now() > deadline {
                panic!("pebble did not answer within 15 s:\n{}", p.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The root that signs this run's certificates (new at every start).
    pub fn root_pem(&self) -> String {
        self.curl(&format!(
            "https://127.0.0.1:{}/roots/0",
            self.management_port
        ))
        .expect("pebble /roots/0")
    }

    /// The intermediate that signs this run's leaf certificates.
    pub fn intermediate_pem(&self) -> String {
        self.curl(&format!(
            "https://127.0.0.1:{}/intermediates/0",
            self.management_port
        ))
        .expect("pebble /intermediates/0")
    }

    fn curl(&self, url: &str) -> Option<String> {
        let wrapper: Vec<&str> = self.config.wrapper.iter().map(String::as_str).collect();
        let out = crate::wrapped_command(&wrapper, "curl")
            .args(["-fsS", "--max-time", "5", "--cacert"])
            .arg(&self.https_ca)
            .arg(url)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops Pebble (a CA that is down).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}
