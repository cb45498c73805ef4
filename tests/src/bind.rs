//! BIND9 (`named`) as the DNS of a test: the zones the test writes, plus a local root zone so no
//! query leaves the machine. It is both the zones' authoritative server (for Myelin's DNS-01
//! propagation check and `myelin check`) and the resolver Pebble, Synapse and Myelin ask
//! (recursion on for loopback, so CNAMEs are chased across the test zones). Every zone accepts
//! RFC 2136 TXT updates signed with a TSIG key the harness generates.
//!
//! Two ways to run it:
//! - [`Bind::start`]: on 127.0.0.1 and a free port, on this machine (the ACME tests);
//! - [`Bind::start_at`]: on a given address, through a wrapper such as `ip netns exec NAME`,
//!   where it can take port 53 and be the namespace's resolver (the check and federation tests).
//!
//! ```ignore
//! let dns = Bind::start(&dir, &[Zone::new("example.test").record("matrix A 127.0.0.1")]);
//! dns.txt("_acme-challenge.matrix.example.test") // what the server serves now
//! ```
//!
//! Each zone's name server is `ns1.<zone>`, with the address BIND listens on.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::{TestDir, free_port, peers, wait_until, wrapped_command};

/// Name of the TSIG key every zone grants TXT updates to.
pub const TSIG_KEY_NAME: &str = "acme-key";

/// A zone to serve: SOA, NS and the name server's address are written for you; add records in
/// zone-file syntax, names relative to the origin.
#[derive(Clone, Debug)]
pub struct Zone {
    origin: String,
    records: Vec<String>,
}

impl Zone {
    /// `origin` without the trailing dot, e.g. "example.test".
    pub fn new(origin: &str) -> Zone {
        Zone {
            origin: origin.trim_end_matches('.').to_string(),
            records: Vec::new(),
        }
    }

    /// One record line, e.g. `"_matrix-fed._tcp SRV 10 5 8448 fed.example.test."`.
    pub fn record(mut self, line: &str) -> Zone {
        self.records.push(line.to_string());
        self
    }

    /// Several record lines at once.
    pub fn records(mut self, text: &str) -> Zone {
        self.records.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
        self
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn render(&self, ns_ip: IpAddr) -> String {
        let a = if ns_ip.is_ipv4() { "A" } else { "AAAA" };
        let mut z = format!(
            "$ORIGIN {o}.\n$TTL 60\n@ IN SOA ns1.{o}. hostmaster.{o}. ( 1 60 60 3600 60 )\n@ IN NS ns1.{o}.\nns1 IN {a} {ns_ip}\n",
            o = self.origin
        );
        for r in &self.records {
            z.push_str(r);
            z.push('\n');
        }
        z
    }
}

pub struct Bind {
    child: Child,
    pub addr: SocketAddr,
    /// The TSIG secret (base64), as `tsig-keygen` prints it.
    pub tsig_secret: String,
    pub dir: PathBuf,
    wrapper: Vec<String>,
}

impl Bind {
    /// Whether `named` and `dig` are installed (else skip, or fail under CI).
    pub fn available() -> bool {
        peers::require(
            "BIND9 (named, dig)",
            peers::has_program("named") && peers::has_program("dig"),
        )
    }

    /// Starts `named` on 127.0.0.1 and a free port, serving `zones`; waits until every zone
    /// answers. Its files (config, zones, log) live in `<dir>/bind`.
    pub fn start(dir: &TestDir, zones: &[Zone]) -> Bind {
        // A free port can be taken by someone else before named binds it: try a few.
        for attempt in 1..=5 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            match Bind::try_start(dir, addr, zones, &[]) {
                Ok(b) => return b,
                Err(log) => eprintln!("named did not start on {addr} (attempt {attempt}):\n{log}"),
            }
        }
        panic!("named did not start; see {}", dir.join("bind").display());
    }

    /// Starts `named` on `addr` through `wrapper` (e.g. `ip netns exec NAME`; empty: directly).
    /// Panics with its log if it does not start.
    pub fn start_at(dir: &TestDir, addr: SocketAddr, zones: &[Zone], wrapper: &[&str]) -> Bind {
        Bind::try_start(dir, addr, zones, wrapper)
            .unwrap_or_else(|log| panic!("named did not start on {addr}:\n{log}"))
    }

    fn try_start(
        dir: &TestDir,
        addr: SocketAddr,
        zones: &[Zone],
        wrapper: &[&str],
    ) -> Result<Bind, String> {
        let root = dir.join("bind");
        std::fs::create_dir_all(&root).expect("bind dir");
        let secret = random_secret();
        write_config(&root, addr, &secret, zones);
        let log = root.join("named.log");
        let named = peers::which("named").expect("named is installed");
        let mut cmd = wrapped_command(wrapper, &named);
        // -g: foreground, log to stderr; -n 1: one worker (the machine is shared)
        cmd.args(["-g", "-n", "1", "-c"])
            .arg(root.join("named.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(&log)
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            );
        let child = cmd.spawn().expect("start named");
        let mut bind = Bind {
            child,
            addr,
            tsig_secret: secret,
            dir: root,
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
        };
        let ready = wait_until(Duration::from_secs(20), || {
            matches!(bind.child.try_wait(), Ok(Some(_)))
                || zones
                    .iter()
                    .all(|z| !bind.dig(z.origin(), "SOA").is_empty())
        });
        if ready && matches!(bind.child.try_wait(), Ok(None)) {
            return Ok(bind);
        }
        let _ = bind.child.kill();
        let _ = bind.child.wait();
        Err(bind.log())
    }

    /// The port it answers on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes the TSIG secret to `<dir>/<name>` (mode 0600) and returns its path.
    pub fn write_secret(&self, dir: &TestDir, name: &str) -> PathBuf {
        let p = dir.write(name, format!("{}\n", self.tsig_secret));
        set_mode(&p, 0o600);
        p
    }

    /// `dig +short` answers for `name` and `rtype` from this server (through its wrapper), one
    /// per line.
    pub fn dig(&self, name: &str, rtype: &str) -> Vec<String> {
        let wrapper: Vec<&str> = self.wrapper.iter().map(String::as_str).collect();
        let out = wrapped_command(&wrapper, "dig")
            .arg(format!("@{}", self.addr.ip()))
            .args(["-p", &self.addr.port().to_string()])
            .args(["+short", "+time=2", "+tries=1", name, rtype])
            .stdin(Stdio::null())
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

    /// The `-y` argument of `nsupdate` that signs with the zones' TSIG key.
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

fn write_config(root: &Path, addr: SocketAddr, secret: &str, zones: &[Zone]) {
    let r = root.display();
    let port = addr.port();
    let (v4, v6) = match addr {
        SocketAddr::V4(a) => (format!("{};", a.ip()), "none;".to_string()),
        SocketAddr::V6(a) => ("none;".to_string(), format!("{};", a.ip())),
    };
    let mut conf = format!(
        r#"key "{TSIG_KEY_NAME}" {{ algorithm hmac-sha256; secret "{secret}"; }};
options {{
    directory "{r}";
    pid-file "{r}/named.pid";
    session-keyfile "{r}/session.key";
    managed-keys-directory "{r}";
    listen-on port {port} {{ {v4} }};
    listen-on-v6 port {port} {{ {v6} }};
    // Recursion on, so CNAMEs are chased across the test zones as a resolver would; the root
    // zone below is local, so nothing leaves this machine.
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
        let file = format!("db.{}", z.origin);
        conf.push_str(&format!(
            "zone \"{name}\" {{ type primary; file \"{r}/{file}\"; update-policy {{ grant {TSIG_KEY_NAME} zonesub TXT; }}; }};\n",
            name = z.origin
        ));
        std::fs::write(root.join(&file), z.render(addr.ip())).expect("zone file");
        let _ = std::fs::remove_file(root.join(format!("{file}.jnl")));
    }
    std::fs::write(root.join("named.conf"), conf).expect("named.conf");
}

/// 32 random bytes, base64, from the kernel.
fn random_secret() -> String {
    use base64::Engine;
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}
