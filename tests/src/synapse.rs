//! A real Synapse (from the venv `tests/setup` made) on a loopback port, with a fresh SQLite
//! database per test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::peers::{has_python_module, venv_bin};
use crate::{TestDir, free_port, repo_root, wait_until};

pub const SHARED_SECRET: &str = "myelin-e2e-shared-secret";

pub fn available() -> bool {
    has_python_module("synapse")
}

pub struct Synapse {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    pub server_name: String,
    /// The prefix it runs through (its tools run through it too).
    wrapper: Vec<String>,
}

pub struct SynapseOptions<'a> {
    pub server_name: &'a str,
    pub public_baseurl: &'a str,
    /// Address Synapse binds (default 127.0.0.1).
    pub bind: &'a str,
    /// Port (default: a free one).
    pub port: Option<u16>,
    /// YAML appended to the generated configuration.
    pub extra_yaml: &'a str,
    /// Run the process through this prefix (e.g. `ip netns exec NAME`).
    pub wrapper: &'a [&'a str],
    /// Environment for the process (e.g. SSL_CERT_FILE).
    pub env: &'a [(&'a str, &'a str)],
}

impl Default for SynapseOptions<'_> {
    fn default() -> Self {
        SynapseOptions {
            server_name: "example.test",
            public_baseurl: "https://example.test/",
            bind: "127.0.0.1",
            port: None,
            extra_yaml: "",
            wrapper: &[],
            env: &[],
        }
    }
}

impl Synapse {
    pub fn start(dir: &TestDir, opts: SynapseOptions<'_>) -> Synapse {
        let sdir = dir.join(&format!("synapse-{}", opts.server_name));
        std::fs::create_dir_all(&sdir).expect("synapse dir");
        let port = opts.port.unwrap_or_else(free_port);
        let fill = |t: &str| {
            t.replace("@SERVER_NAME@", opts.server_name)
                .replace("@PUBLIC_BASEURL@", opts.public_baseurl)
                .replace("@DIR@", &sdir.display().to_string())
                .replace("@PORT@", &port.to_string())
                .replace("@BIND@", opts.bind)
                .replace("@SECRET@", SHARED_SECRET)
        };
        let peers = repo_root().join("tests/peers");
        let yaml =
            fill(&std::fs::read_to_string(peers.join("homeserver.yaml.in")).expect("template"));
        std::fs::write(
            sdir.join("homeserver.yaml"),
            format!("{yaml}\n{}\n", opts.extra_yaml),
        )
        .expect("write yaml");
        let log_cfg =
            fill(&std::fs::read_to_string(peers.join("log.config.in")).expect("template"));
        std::fs::write(sdir.join("log.config"), log_cfg).expect("write log config");
        let key = Command::new(venv_bin("generate_signing_key"))
            .arg("-o")
            .arg(sdir.join("signing.key"))
            .status()
            .expect("run generate_signing_key");
        assert!(key.success(), "generate_signing_key failed");

        let mut cmd = crate::wrapped_command(opts.wrapper, venv_bin("python"));
        cmd.args(["-m", "synapse.app.homeserver", "-c"])
            .arg(sdir.join("homeserver.yaml"))
            .stdin(Stdio::null())
            .stdout(
                std::fs::File::create(sdir.join("stdout.log"))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            )
            .stderr(
                std::fs::File::create(sdir.join("stderr.log"))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            );
        for (k, v) in opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start synapse");
        let wrapper: Vec<String> = opts.wrapper.iter().map(|s| s.to_string()).collect();
        let mut s = Synapse {
            child,
            port,
            dir: sdir,
            server_name: opts.server_name.to_string(),
            wrapper: wrapper.clone(),
        };
        let health = format!("http://{}:{port}/health", opts.bind);
        let ready = wait_until(Duration::from_secs(90), || {
            if matches!(s.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            curl_ok(&wrapper, &health)
        });
        if !ready || matches!(s.child.try_wait(), Ok(Some(_))) {
            panic!(
                "Synapse did not become healthy:\n{}\n{}",
                std::fs::read_to_string(s.dir.join("stderr.log")).unwrap_or_default(),
                s.log_tail(40)
            );
        }
        s
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("homeserver.log")).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Registers a user with the shared secret, through `url` (Synapse itself or Myelin), using
    /// Synapse's own `register_new_matrix_user` (run through Synapse's wrapper, so inside its
    /// namespace when it has one). `ca` is trusted for https URLs.
    pub fn register(
        &self,
        url: &str,
        user: &str,
        password: &str,
        admin: bool,
        ca: Option<&Path>,
    ) -> Result<(), String> {
        let wrapper: Vec<&str> = self.wrapper.iter().map(String::as_str).collect();
        let mut cmd = crate::wrapped_command(&wrapper, venv_bin("register_new_matrix_user"));
        cmd.args(["-u", user, "-p", password, "-k", SHARED_SECRET])
            .arg(if admin { "--admin" } else { "--no-admin" })
            .arg(url);
        if let Some(ca) = ca {
            cmd.env("REQUESTS_CA_BUNDLE", ca).env("SSL_CERT_FILE", ca);
        }
        let out = cmd.output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

/// What the main process needs to run with workers: its client listener plus an HTTP
/// replication listener, PostgreSQL, Redis, and the `instance_map`. Pass it as `extra_yaml`
/// (with `port: Some(port)`): its `listeners` and `database` replace the template's.
pub fn shared_worker_yaml(
    port: u16,
    replication_port: u16,
    postgres: &crate::services::Postgres,
    redis: &crate::services::Redis,
    extra: &str,
) -> String {
    format!(
        r#"
listeners:
  - port: {port}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: true
    resources:
      - names: [client, federation]
        compress: false
  - port: {replication_port}
    bind_addresses: ['127.0.0.1']
    type: http
    resources:
      - names: [replication]
{database}
redis:
  enabled: true
  host: 127.0.0.1
  port: {redis}
instance_map:
  main:
    host: 127.0.0.1
    port: {replication_port}
worker_replication_secret: "{SHARED_SECRET}-replication"
{extra}
"#,
        database = postgres.synapse_database_yaml(),
        redis = redis.port,
    )
}

/// A Synapse worker process, sharing the main process's configuration file.
pub struct SynapseWorker {
    child: Child,
    pub name: String,
    pub port: u16,
    log: PathBuf,
    stderr: PathBuf,
}

impl Synapse {
    /// Starts a worker: `app` (e.g. `synapse.app.generic_worker`), named `name`, with one HTTP
    /// listener on a free port serving `resources` (e.g. `["client"]` or `["media"]`). It reads
    /// the main process's homeserver.yaml, then its own file; it logs to its own file.
    /// Returns once its `/health` answers.
    pub fn start_worker(&self, name: &str, app: &str, resources: &[&str]) -> SynapseWorker {
        let port = free_port();
        let log = self.dir.join(format!("worker-{name}.log"));
        let log_cfg = std::fs::read_to_string(repo_root().join("tests/peers/log.config.in"))
            .expect("template")
            .replace("@DIR@/homeserver.log", &log.display().to_string());
        let log_cfg_path = self.dir.join(format!("worker-{name}.log.config"));
        std::fs::write(&log_cfg_path, log_cfg).expect("write worker log config");
        let yaml = format!(
            "worker_app: {app}
worker_name: {name}
worker_listeners:
  - type: http
    port: {port}
    bind_addresses: ['127.0.0.1']
    x_forwarded: true
    resources:
      - names: [{}]
worker_log_config: {}
",
            resources.join(", "),
            log_cfg_path.display()
        );
        let yaml_path = self.dir.join(format!("worker-{name}.yaml"));
        std::fs::write(&yaml_path, yaml).expect("write worker yaml");
        let stderr = self.dir.join(format!("worker-{name}.stderr"));
        let child = Command::new(venv_bin("python"))
            .args(["-m", app, "-c"])
            .arg(self.dir.join("homeserver.yaml"))
            .arg("-c")
            .arg(&yaml_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(&stderr)
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            )
            .spawn()
            .expect("start synapse worker");
        let mut w = SynapseWorker {
            child,
            name: name.to_string(),
            port,
            log,
            stderr,
        };
        let health = format!("http://127.0.0.1:{port}/health");
        let ready = wait_until(Duration::from_secs(90), || {
            matches!(w.child.try_wait(), Ok(Some(_))) || curl_ok(&[], &health)
        });
        if !ready || matches!(w.child.try_wait(), Ok(Some(_))) {
            panic!(
                "Synapse worker {name} did not become healthy:\n{}\n{}",
                std::fs::read_to_string(&w.stderr).unwrap_or_default(),
                w.log()
            );
        }
        w
    }
}

impl SynapseWorker {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The worker's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SynapseWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl_ok(wrapper: &[String], url: &str) -> bool {
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut cmd = crate::wrapped_command(&wrapper, "curl");
    cmd.args(["-fsS", "--max-time", "2", url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs the matrix-nio client scenario (`tests/clients/nio_flow.py`); returns its output and
/// whether it succeeded. Killed (and failed) after 3 minutes.
pub fn nio_flow(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    nio_flow_in(&[], args, env, Duration::from_secs(180))
}

/// [`nio_flow`] through `wrapper` (e.g. inside a network namespace), killed after `timeout`.
pub fn nio_flow_in(
    wrapper: &[&str],
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> (bool, String) {
    let mut cmd = crate::wrapped_command(wrapper, venv_bin("python"));
    cmd.arg(repo_root().join("tests/clients/nio_flow.py"))
        .args(args)
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (code, out, err) = crate::run_bounded(cmd, timeout);
    (code == 0, format!("{out}{err}"))
}
