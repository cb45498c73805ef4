//! Private network namespaces, so a test can bind the ports the Matrix spec fixes (443, 8448,
//! DNS on 53) on as many loopback "hosts" (127.x.y.z) as it likes without touching the machine's
//! own ports or disturbing tests that run at the same time.
//!
//! Each namespace has a unique name, its own loopback (up), and optionally its own resolver
//! (`/etc/netns/<name>/resolv.conf`, which `ip netns exec` mounts over `/etc/resolv.conf`).
//! Dropping it ends what still runs inside (only this test's processes can be there), deletes
//! the namespace and its `/etc/netns/<name>` directory, also when the test panics.
//! Needs root (CI runs as root) and iproute2.

use std::ffi::OsStr;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::peers::has_program;

/// Every namespace this harness makes starts with this, followed by the test process id.
const PREFIX: &str = "mye2e-";

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct Netns {
    name: String,
}

impl Netns {
    /// Whether namespaces can be made here: root and `ip` present.
    pub fn available() -> bool {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        root && has_program("ip")
    }

    /// Creates a namespace named `mye2e-<pid>-<n>-<tag>` with loopback up.
    pub fn create(tag: &str) -> Netns {
        sweep_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(24)
            .collect();
        let name = format!("{PREFIX}{}-{n}-{tag}", std::process::id());
        let out = ip_cmd(&["netns", "add", &name]);
        assert!(out.status.success(), "ip netns add {name}: {}", text(&out));
        let ns = Netns { name };
        let out = ip_cmd(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"]);
        assert!(out.status.success(), "lo up in {}: {}", ns.name, text(&out));
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The prefix that runs a program inside: `ip netns exec <name>`.
    pub fn wrapper(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Makes `nameserver` the resolver of programs run inside (`/etc/resolv.conf` there), and
    /// gives them a hosts file with localhost only.
    pub fn set_resolver(&self, nameserver: IpAddr) {
        let dir = self.etc_dir();
        std::fs::create_dir_all(&dir).expect("create /etc/netns/<name>");
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {nameserver}\noptions timeout:2 attempts:2\n"),
        )
        .expect("write resolv.conf");
        std::fs::write(dir.join("hosts"), "127.0.0.1 localhost\n::1 localhost\n")
            .expect("write hosts");
    }

    /// Adds `ip` to the namespace's loopback. Any 127.x address can be bound there without
    /// this, but servers that listen per interface address (BIND) only see configured ones.
    pub fn add_loopback_address(&self, ip: IpAddr) {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        let out = ip_cmd(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "addr",
            "add",
            &format!("{ip}/{prefix}"),
            "dev",
            "lo",
        ]);
        assert!(
            out.status.success(),
            "add {ip} in {}: {}",
            self.name,
            text(&out)
        );
    }

    /// Process ids running inside.
    pub fn pids(&self) -> Vec<u32> {
        let out = ip_cmd(&["netns", "pids", &self.name]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    fn etc_dir(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Whatever still runs inside was started by this test (the namespace is its own).
        let pids = self.pids();
        for pid in &pids {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let out = ip_cmd(&["netns", "del", &self.name]);
        if !out.status.success() {
            eprintln!("warning: ip netns del {}: {}", self.name, text(&out));
        }
        let _ = std::fs::remove_dir_all(self.etc_dir());
    }
}

/// Deletes namespaces of this harness left behind by test processes that no longer exist
/// (killed before they could clean up), when nothing runs in them any more.
fn sweep_stale() {
    let out = ip_cmd(&["netns", "list"]);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = PathBuf::from(format!("/proc/{pid}")).exists();
        let empty = String::from_utf8_lossy(&ip_cmd(&["netns", "pids", name]).stdout)
            .trim()
            .is_empty();
        if !alive && empty {
            let _ = ip_cmd(&["netns", "del", name]);
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(name));
        }
    }
}

fn ip_cmd(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip (iproute2)")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
