//! A real BIND9 (`named`) serving zones the test writes: authoritative only, no recursion, on
//! one address and port (inside a network namespace when given a wrapper such as
//! `ip netns exec <name>`, where it can take port 53).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::peers::has_program;
use crate::{TestDir, wait_until, wrapped_command};

/// A zone file: SOA and NS are written for you; add records in zone-file syntax, relative
/// names to the origin.
#[derive(Clone, Debug)]
pub struct Zone {
    origin: String,
    records: Vec<String>,
}

impl Zone {
    /// `origin` without the trailing dot, e.g. "check.test". The name server is `ns1.<origin>`
    /// at `ns_ip`.
    pub fn new(origin: &str, ns_ip: std::net::IpAddr) -> Zone {
        let a = if ns_ip.is_ipv4() { "A" } else { "AAAA" };
        Zone {
            origin: origin.trim_end_matches('.').to_string(),
            records: vec![format!("ns1 {a} {ns_ip}")],
        }
    }

    /// One record line, e.g. `"_matrix-fed._tcp.srv SRV 10 5 443 fed.srv.check.test."`.
    pub fn record(mut self, line: &str) -> Zone {
        self.records.push(line.to_string());
        self
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn render(&self) -> String {
        let mut z = format!(
            "$ORIGIN {}.\n$TTL 60\n@ IN SOA ns1 hostmaster ( 1 60 60 3600 60 )\n@ IN NS ns1\n",
            self.origin
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
    pub dir: PathBuf,
    wrapper: Vec<String>,
}

impl Bind {
    /// Whether BIND9 and dig are installed.
    pub fn available() -> bool {
        has_program("named") && has_program("dig")
    }

    /// Starts `named` on `addr` serving `zones`, through `wrapper` (empty: directly); waits until
    /// it answers the first zone's SOA. Panics with its log if it does not start.
    pub fn start(dir: &TestDir, addr: SocketAddr, zones: &[Zone], wrapper: &[&str]) -> Bind {
        let bdir = dir.join("bind");
        std::fs::create_dir_all(&bdir).expect("bind dir");
        let d = bdir.display();
        let (v4, v6) = match addr {
            SocketAddr::V4(a) => (format!("{};", a.ip()), "none;".to_string()),
            SocketAddr::V6(a) => ("none;".to_string(), format!("{};", a.ip())),
        };
        let mut conf = format!(
            "options {{\n  directory \"{d}\";\n  pid-file \"{d}/named.pid\";\n  session-keyfile \"{d}/session.key\";\n  \
             managed-keys-directory \"{d}\";\n  listen-on port {port} {{ {v4} }};\n  listen-on-v6 port {port} {{ {v6} }};\n  \
             recursion no;\n  dnssec-validation no;\n  allow-query {{ any; }};\n  allow-transfer {{ none; }};\n  notify no;\n}};\n\
             controls {{ }};\n",
            port = addr.port()
        );
        for z in zones {
            let file = bdir.join(format!("db.{}", z.origin));
            std::fs::write(&file, z.render()).expect("write zone");
            conf.push_str(&format!(
                "zone \"{}\" {{ type primary; file \"{}\"; }};\n",
                z.origin,
                file.display()
            ));
        }
        let conf_path = bdir.join("named.conf");
        std::fs::write(&conf_path, conf).expect("write named.conf");

        let named = crate::peers::which("named").expect("named is installed");
        let mut cmd = wrapped_command(wrapper, &named);
        // -g: foreground, log to stderr; -n 1: one worker (the machine is shared)
        cmd.args(["-g", "-n", "1", "-c"])
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(bdir.join("named.log"))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            );
        let child = cmd.spawn().expect("start named");
        let mut bind = Bind {
            child,
            addr,
            dir: bdir,
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
        };
        let origin = zones.first().map(|z| z.origin.clone()).unwrap_or_default();
        let ready = wait_until(Duration::from_secs(20), || {
            matches!(bind.child.try_wait(), Ok(Some(_))) || bind.dig(&origin, "SOA").contains("ns1")
        });
        if !ready || matches!(bind.child.try_wait(), Ok(Some(_))) {
            panic!(
                "named did not start on {addr}:\n{}",
                std::fs::read_to_string(bind.dir.join("named.log")).unwrap_or_default()
            );
        }
        bind
    }

    /// `dig +short` against this server (through the same wrapper).
    pub fn dig(&self, name: &str, rtype: &str) -> String {
        let wrapper: Vec<&str> = self.wrapper.iter().map(String::as_str).collect();
        let out = wrapped_command(&wrapper, "dig")
            .arg(format!("@{}", self.addr.ip()))
            .args(["-p", &self.addr.port().to_string()])
            .args([name, rtype, "+short", "+time=1", "+tries=1"])
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
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
