//! A stand-in for systemd's notification socket: a unix datagram socket of the test's own, whose
//! path goes to Myelin as `$NOTIFY_SOCKET`, and which collects what Myelin says (sd_notify(3)).

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::TestDir;

pub struct NotifySocket {
    pub path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    /// Binds `<dir>/notify.sock`.
    pub fn bind(dir: &TestDir) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket =
            UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        NotifySocket { path, socket }
    }

    /// The next message, as its `KEY=VALUE` lines; `None` when nothing arrives in `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            self.socket
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok()?;
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    return Some(
                        String::from_utf8_lossy(&buf[..n])
                            .lines()
                            .map(str::to_string)
                            .collect(),
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return None,
            }
        }
    }
}
