//! The real `myelin` binary as a child process: started with a config written by the test,
//! JSON logs captured and searchable, signals sent with `kill`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::TestDir;

pub struct Myelin {
    child: Child,
    pub config_path: PathBuf,
    logs: Arc<Mutex<Vec<Value>>>,
    /// Configured bind → bound address.
    listeners: HashMap<String, SocketAddr>,
}

impl Myelin {
    /// Writes `config` to `<dir>/myelin.toml` and starts `bin run` on it; waits until every
    /// `[[listener]]` reports it is listening. Panics with the logs if Myelin does not start.
    pub fn start(bin: &Path, dir: &TestDir, config: &str) -> Myelin {
        Self::start_with(bin, dir, config, &[])
    }

    pub fn start_with(bin: &Path, dir: &TestDir, config: &str, env: &[(&str, &str)]) -> Myelin {
        Self::start_wrapped(bin, dir, config, env, &[])
    }

    /// Like [`Myelin::start_with`], run through `wrapper` (e.g. `ip netns exec NAME`, which
    /// execs the program, so the child's id stays Myelin's).
    pub fn start_wrapped(
        bin: &Path,
        dir: &TestDir,
        config: &str,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Myelin {
        let config_path = dir.write("myelin.toml", config);
        let expected = config.matches("[[listener]]").count();
        let mut cmd = crate::wrapped_command(wrapper, bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .arg("--log-format")
            .arg("json")
            .env(
                "RUST_LOG",
                std::env::var("MYELIN_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn myelin");
        let stderr = child.stderr.take().expect("stderr is piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let log_file = dir.join("myelin.log");
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(log_file).ok();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(f) = file.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                let v = serde_json::from_str::<Value>(&line).unwrap_or(Value::String(line));
                sink.lock().unwrap().push(v);
            }
        });
        let mut m = Myelin {
            child,
            config_path,
            logs,
            listeners: HashMap::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            m.listeners = m
                .logs()
                .iter()
                .filter(|v| v["message"] == "listening")
                .filter_map(|v| {
                    let bind = v["bind"].as_str()?.to_string();
                    let local = v["local"].as_str()?.parse().ok()?;
                    Some((bind, local))
                })
                .collect();
            if m.listeners.len() >= expected && expected > 0 {
                return m;
            }
            if let Ok(Some(status)) = m.child.try_wait() {
                panic!(
                    "myelin exited during start-up ({status}):\n{}",
                    m.log_text()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "myelin did not start listening within 30 s:\n{}",
                    m.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The bound address of the listener configured as `bind` (e.g. "127.0.0.1:0").
    pub fn addr(&self, bind: &str) -> SocketAddr {
        *self
            .listeners
            .get(bind)
            .unwrap_or_else(|| panic!("no listener {bind}; have {:?}", self.listeners))
    }

    /// The only listener's address (panics when there are several).
    pub fn only_addr(&self) -> SocketAddr {
        assert_eq!(
            self.listeners.len(),
            1,
            "several listeners: {:?}",
            self.listeners
        );
        *self.listeners.values().next().expect("one listener")
    }

    /// Where the `[metrics]` endpoint listens now (the latest "metrics endpoint listening" event;
    /// waits up to 10 s for it).
    pub fn metrics_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .logs()
                .iter()
                .rev()
                .filter(|v| {
                    v["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("metrics endpoint listening"))
                })
                .find_map(|v| v["local"].as_str()?.parse().ok());
            if let Some(a) = found {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "no metrics endpoint is listening:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> Vec<Value> {
        self.logs.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        self.logs()
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for a log event matching `pred` after the first `skip` events.
    pub fn wait_log_after(
        &self,
        skip: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.logs().into_iter().skip(skip).find(|v| pred(v)) {
                return Some(v);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_log(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.wait_log_after(0, timeout, pred)
    }

    /// Access-log events so far.
    pub fn access_log(&self) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|v| v["target"] == "myelin::access")
            .collect()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg("-s")
            .arg(sig)
            .arg(self.pid().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -s {sig} {} failed", self.pid());
    }

    /// Writes a new configuration (if given), sends SIGHUP, and waits for the outcome.
    /// Returns `true` when the reload was accepted.
    pub fn reload(&self, config: Option<&str>) -> bool {
        if let Some(c) = config {
            std::fs::write(&self.config_path, c).expect("write new config");
        }
        let skip = self.logs().len();
        self.signal("HUP");
        let outcome = self
            .wait_log_after(skip, Duration::from_secs(20), |v| {
                let m = v["message"].as_str().unwrap_or("");
                m.starts_with("reloaded") || m.starts_with("reload refused")
            })
            .unwrap_or_else(|| panic!("no reload outcome logged:\n{}", self.log_text()));
        outcome["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("reloaded")
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the process to exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal("TERM");
        self.wait_exit(timeout)
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Myelin {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `myelin check-config PATH`; returns (exit code, stdout, stderr).
pub fn check_config(bin: &Path, path: &Path) -> (i32, String, String) {
    let out = Command::new(bin)
        .arg("check-config")
        .arg(path)
        .output()
        .expect("run myelin check-config");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
