//! BIND9 (`named`) as the DNS of a test: the zones the test writes (and a local root zone, so no
//! query leaves the machine), on a free loopback port, accepting RFC 2136 updates signed with a
//! TSIG key the harness generates. It answers recursively for its own zones, so it serves both
//! as the zones' authoritative server and as the resolver Pebble and Myelin ask.
//!
//! ```ignore
//! let dns = Bind::start(&dir, &[Zone::new("example.test", "matrix IN A 127.0.0.1\n")]);
//! dns.txt("_acme-challenge.matrix.example.test") // what the server serves now
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{TestDir, free_port, peers};

/// Name of the TSIG key every zone grants TXT updates to.
pub const TSIG_KEY_NAME: &str = "acme-key";

/// A zone to serve: its apex and the records after SOA and NS (zone-file syntax, relative names).
#[derive(Clone, Debug)]
pub struct Zone {
    pub name: String,
    pub records: String,
}

impl Zone {
    pub fn new(name: &str, records: &str) -> Zone {
        Zone {
            name: name.trim_end_matches('.').to_string(),
            records: records.to_string(),
        }
    }
}

pub struct Bind {
    child: Child,
    pub port: u16,
    /// The TSIG secret (base64), as `tsig-keygen` prints it.
    pub tsig_secret: String,
    pub dir: PathBuf,
}

impl Bind {
    /// Whether `named` and `dig` are installed (else skip, or fail under CI).
    pub fn available() -> bool {
        peers::require(
            "BIND9 (named, dig)",
            peers::has_program("named") && peers::has_program("dig"),
        )
    }

    /// Starts `named` serving `zones` on 127.0.0.1 (UDP and TCP) on a free port; waits until
    /// every zone answers. Its files (config, zones, log) live in `<dir>/bind`.
    pub fn start(dir: &TestDir, zones: &[Zone]) -> Bind {
        let secret = random_secret();
        let root = dir.join("bind");
        std::fs::create_dir_all(&root).expect("bind dir");
        for attempt in 0..5 {
            let port = free_port();
            write_config(&root, port, &secret, zones);
            let log = std::fs::File::create(root.join("named.log")).expect("named.log");
            let child = Command::new(peers::which("named").expect("named"))
                .arg("-g")
                .arg("-c")
                .arg(root.join("named.conf"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn named");
            let mut bind = Bind {
                child,
                port,
                tsig_secret: secret.clone(),
                dir: root.clone(),
            };
            if bind.wait_ready(zones, Duration::from_secs(10)) {
                return bind;
            }
            let _ = bind.child.kill();
            let _ = bind.child.wait();
            eprintln!(
                "named did not start on port {port} (attempt {}): {}",
                attempt + 1,
                std::fs::read_to_string(root.join("named.log")).unwrap_or_default()
            );
        }
        panic!("named did not start; see {}", root.display());
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Writes the TSIG secret to `<dir>/<name>` (mode 0600) and returns its path.
    pub fn write_secret(&self, dir: &TestDir, name: &str) -> PathBuf {
        let p = dir.write(name, format!("{}\n", self.tsig_secret));
        set_mode(&p, 0o600);
        p
    }

    fn wait_ready(&mut self, zones: &[Zone], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if zones.iter().all(|z| !self.dig(&z.name, "SOA").is_empty()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// `dig +short` answers for `name` and `rtype`, one per line.
    pub fn dig(&self, name: &str, rtype: &str) -> Vec<String> {
        let out = Command::new("dig")
            .arg(format!("@{}", "127.0.0.1"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("+short")
            .arg("+time=2")
            .arg("+tries=1")
            .arg(name)
            .arg(rtype)
            .output();
        match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty() && !l.starts_with(';'))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The TXT values served at `name` (quotes removed).
    pub fn txt(&self, name: &str) -> Vec<String> {
        self.dig(name, "TXT")
            .into_iter()
            .map(|l| l.trim_matches('"').to_string())
            .collect()
    }

    /// `nsupdate` command arguments that authenticate with the zone's TSIG key.
    pub fn nsupdate_key(&self) -> String {
        format!("hmac-sha256:{TSIG_KEY_NAME}:{}", self.tsig_secret)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("named.log")).unwrap_or_default()
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(root: &std::path::Path, port: u16, secret: &str, zones: &[Zone]) {
    let r = root.display();
    let mut conf = format!(
        r#"key "{TSIG_KEY_NAME}" {{ algorithm hmac-sha256; secret "{secret}"; }};
options {{
    directory "{r}";
    pid-file "{r}/named.pid";
    session-keyfile "{r}/session.key";
    managed-keys-directory "{r}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    // Recursion on, so CNAMEs are chased across the test zones as a resolver would (Pebble
    // uses this server as its resolver); the root zone below is local, so nothing leaves
    // this machine.
    recursion yes;
    allow-recursion {{ 127.0.0.0/8; ::1; }};
    dnssec-validation no;
    allow-query {{ 127.0.0.0/8; ::1; }};
    allow-transfer {{ none; }};
    notify no;
    minimal-responses no;
}};
controls {{ }};
zone "." {{ type primary; file "{r}/db.root"; }};
"#
    );
    std::fs::write(
        root.join("db.root"),
        "$TTL 60\n@ IN SOA ns1.root-servers.invalid. hostmaster.invalid. ( 1 60 60 3600 60 )\n@ IN NS ns1.root-servers.invalid.\nns1.root-servers.invalid. IN A 127.0.0.1\n",
    )
    .expect("root zone");
    for z in zones {
        let file = format!("db.{}", z.name);
        conf.push_str(&format!(
            "zone \"{name}\" {{ type primary; file \"{r}/{file}\"; update-policy {{ grant {TSIG_KEY_NAME} zonesub TXT; }}; }};\n",
            name = z.name
        ));
        let zone_text = format!(
            "$ORIGIN {name}.\n$TTL 60\n@ IN SOA ns1.{name}. hostmaster.{name}. ( 1 60 60 3600 60 )\n@ IN NS ns1.{name}.\nns1 IN A 127.0.0.1\n{records}\n",
            name = z.name,
            records = z.records
        );
        std::fs::write(root.join(&file), zone_text).expect("zone file");
        let _ = std::fs::remove_file(root.join(format!("{file}.jnl")));
    }
    std::fs::write(root.join("named.conf"), conf).expect("named.conf");
}

/// 32 random bytes, base64, from the kernel.
fn random_secret() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom");
    base64(&bytes)
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}
