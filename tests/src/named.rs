//! Small upstream processes that answer with their own name (`tests/peers/named_upstream.py`),
//! for routing tests: several real servers on loopback, each a separate process.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::peers::has_program;
use crate::{TestDir, repo_root, wait_until};

pub fn available() -> bool {
    has_program("python3")
}

pub struct NamedUpstream {
    pub name: String,
    pub port: u16,
    child: Child,
    log: PathBuf,
    down_file: PathBuf,
}

impl NamedUpstream {
    /// Starts the process; returns once it listens.
    pub fn start(dir: &TestDir, name: &str) -> NamedUpstream {
        let port_file = dir.join(&format!("{name}.port"));
        let log = dir.join(&format!("{name}.requests"));
        let down_file = dir.join(&format!("{name}.down"));
        let _ = std::fs::remove_file(&port_file);
        let child = Command::new("python3")
            .arg(repo_root().join("tests/peers/named_upstream.py"))
            .args(["--name", name])
            .arg("--port-file")
            .arg(&port_file)
            .arg("--log")
            .arg(&log)
            .arg("--down-file")
            .arg(&down_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.join(&format!("{name}.stderr")))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            )
            .spawn()
            .expect("start named_upstream.py");
        let mut u = NamedUpstream {
            name: name.to_string(),
            port: 0,
            child,
            log,
            down_file,
        };
        let ok = wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .map(|p| u.port = p)
                .is_some()
        });
        assert!(ok, "upstream {name} did not start listening");
        u
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Makes `/health` answer 200 (true) or 503 (false).
    pub fn set_healthy(&self, healthy: bool) {
        if healthy {
            let _ = std::fs::remove_file(&self.down_file);
        } else {
            std::fs::write(&self.down_file, "down").expect("write down file");
        }
    }

    /// Requests received so far, one "METHOD TARGET BODY_LEN" line each.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Requests received so far whose target starts with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|l| l.split(' ').nth(1).is_some_and(|t| t.starts_with(prefix)))
            .count()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NamedUpstream {
    fn drop(&mut self) {
        self.stop();
    }
}
