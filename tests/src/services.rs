//! Services a Synapse with workers needs: PostgreSQL (workers only work with it) and Redis (the
//! replication bus). Each is started by the test on a free loopback port, with its own
//! configuration and data under the test directory, and stopped when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::peers::which;
use crate::{TestDir, free_port, wait_until};

/// A PostgreSQL server with one database, `synapse`, owned by the trusted user `synapse`.
pub struct Postgres {
    child: Child,
    pub port: u16,
}

/// Debian's server binaries (`/usr/lib/postgresql/<version>/bin`), newest version first.
fn pg_bin(name: &str) -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    versions.sort_by_key(|p| {
        std::cmp::Reverse(
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    versions
        .into_iter()
        .map(|v| v.join("bin").join(name))
        .find(|p| p.is_file())
        .or_else(|| which(name))
}

pub fn postgres_available() -> bool {
    ["initdb", "postgres", "createdb"]
        .iter()
        .all(|b| pg_bin(b).is_some())
}

/// PostgreSQL refuses to run as root: as root, run it as the `postgres` system user.
fn as_postgres_user(program: PathBuf) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Postgres {
    pub fn start(dir: &TestDir) -> Postgres {
        let base = dir.join("postgres");
        let data = base.join("data");
        let sockets = base.join("sockets");
        std::fs::create_dir_all(&sockets).expect("postgres dir");
        let owned = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&base)
            .status();
        // not root: chown fails and the files stay ours, which is what we need then
        let _ = owned;
        let initdb = as_postgres_user(pg_bin("initdb").expect("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "synapse", "--auth=trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run initdb");
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.join("postgres.log")).expect("postgres log");
        let child = as_postgres_user(pg_bin("postgres").expect("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
            .arg(&sockets)
            // a test database: speed over durability
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=50"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start postgres");
        let mut pg = Postgres { child, port };
        let created = wait_until(Duration::from_secs(30), || {
            if matches!(pg.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            Command::new(pg_bin("createdb").expect("createdb"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "synapse"])
                .args(["-E", "UTF8", "--locale=C", "-T", "template0", "synapse"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        });
        if !created || matches!(pg.child.try_wait(), Ok(Some(_))) {
            panic!(
                "PostgreSQL did not start:\n{}",
                std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default()
            );
        }
        pg
    }

    /// Synapse's `database:` section for this server.
    pub fn synapse_database_yaml(&self) -> String {
        format!(
            "database:\n  name: psycopg2\n  args:\n    user: synapse\n    database: synapse\n    host: 127.0.0.1\n    port: {}\n    cp_min: 1\n    cp_max: 5\n",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // fast shutdown (SIGINT) lets the server end its backends; then make sure
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let stopped = wait_until(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn redis_available() -> bool {
    which("redis-server").is_some()
}

/// A Redis server on loopback: no persistence, no other listener.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start(dir: &TestDir) -> Redis {
        let port = free_port();
        let rdir = dir.join("redis");
        std::fs::create_dir_all(&rdir).expect("redis dir");
        let conf = dir.write(
            "redis.conf",
            format!(
                "bind 127.0.0.1\nport {port}\nprotected-mode yes\ndaemonize no\nsave \"\"\nappendonly no\ndir {}\nlogfile {}\n",
                rdir.display(),
                dir.join("redis.log").display()
            ),
        );
        let child = Command::new(which("redis-server").expect("redis-server"))
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let mut r = Redis { child, port };
        let ready = wait_until(Duration::from_secs(10), || r.ping());
        if !ready || matches!(r.child.try_wait(), Ok(Some(_))) {
            panic!(
                "Redis did not start:\n{}",
                std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default()
            );
        }
        r
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
