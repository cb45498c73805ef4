//! An upstream that fails on demand: a raw HTTP/1.1 server on loopback whose answer depends on
//! the path, and that can be stopped (connections refused) and started again on the same port.
//! - `.../reset-head/...`: half a response head, then a TCP reset;
//! - `.../reset-body/...`: a whole head announcing 1000 bytes, 100 of them, then a reset;
//! - `.../stall-head/...`: never answers;
//! - `.../stall-body/...`: a head announcing 1000 bytes, 10 of them, then nothing;
//! - `.../garbage/...`: bytes that are not HTTP, then close;
//! - anything else: `200 {"ok":true}`.
//!
//! It remembers the `X-Request-Id` of every request it received (whatever it answered).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::task::AbortHandle;

pub struct FaultyUpstream {
    pub addr: SocketAddr,
    handle: Handle,
    state: Arc<State>,
    listener: Mutex<Option<AbortHandle>>,
}

#[derive(Default)]
struct State {
    ids: Mutex<HashSet<String>>,
    requests: AtomicU64,
    conns: Mutex<Vec<AbortHandle>>,
    /// Extra time before each normal answer, ms.
    delay_ms: AtomicU64,
}

impl FaultyUpstream {
    /// Starts on `handle`'s runtime, on a free port of 127.0.0.1.
    pub fn start(handle: &Handle) -> FaultyUpstream {
        let listener = handle
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let up = FaultyUpstream {
            addr,
            handle: handle.clone(),
            state: Arc::new(State::default()),
            listener: Mutex::new(None),
        };
        up.serve(listener);
        up
    }

    fn serve(&self, listener: TcpListener) {
        let state = self.state.clone();
        let task = self.handle.spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let st = state.clone();
                let conn = tokio::spawn(serve(s, st));
                let mut conns = state.conns.lock().unwrap();
                conns.retain(|c| !c.is_finished());
                conns.push(conn.abort_handle());
            }
        });
        *self.listener.lock().unwrap() = Some(task.abort_handle());
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops listening and drops every connection (like a homeserver process that exits).
    pub fn stop(&self) {
        if let Some(l) = self.listener.lock().unwrap().take() {
            l.abort();
        }
        for c in self.state.conns.lock().unwrap().drain(..) {
            c.abort();
        }
        // the aborted listener task drops its socket on the runtime's thread
        std::thread::sleep(Duration::from_millis(50));
    }

    /// Listens again on the same port.
    pub fn restart(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match self.handle.block_on(TcpListener::bind(self.addr)) {
                Ok(l) => break l,
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("cannot listen on {} again: {e}", self.addr)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        self.serve(listener);
    }

    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    pub fn saw(&self, id: &str) -> bool {
        self.state.ids.lock().unwrap().contains(id)
    }

    pub fn ids(&self) -> HashSet<String> {
        self.state.ids.lock().unwrap().clone()
    }

    /// Every normal answer waits this long first.
    pub fn set_delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for FaultyUpstream {
    fn drop(&mut self) {
        if let Some(l) = self.listener.lock().unwrap().take() {
            l.abort();
        }
        for c in self.state.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

async fn serve(s: TcpStream, state: Arc<State>) {
    let mut r = BufReader::new(s);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
            if head.len() > 1 << 20 {
                return;
            }
        }
        let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let header = |name: &str| {
            head.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        };
        state.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(id) = header("x-request-id") {
            state.ids.lock().unwrap().insert(id);
        }
        if let Some(len) = header("content-length").and_then(|v| v.parse::<u64>().ok()) {
            let mut body = (&mut r).take(len);
            if tokio::io::copy(&mut body, &mut tokio::io::sink())
                .await
                .is_err()
            {
                return;
            }
        }
        let w = r.get_mut();
        let has = |seg: &str| target.split('/').any(|s| s == seg);
        if has("reset-head") {
            let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Le").await;
            let _ = w.flush().await;
            reset(r.into_inner());
            return;
        } else if has("reset-body") {
            let _ = w
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n")
                .await;
            let _ = w.write_all(&[b'x'; 100]).await;
            let _ = w.flush().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            reset(r.into_inner());
            return;
        } else if has("stall-head") {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        } else if has("stall-body") {
            let _ = w
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n")
                .await;
            let _ = w.write_all(&[b'x'; 10]).await;
            let _ = w.flush().await;
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        } else if has("garbage") {
            let _ = w
                .write_all(b"\x16\x03\x01\x02\x00 this is not HTTP at all\r\n\r\n\0\0\0")
                .await;
            let _ = w.flush().await;
            return;
        }
        let delay = state.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let body = br#"{"ok":true}"#;
        let mut resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        resp.extend_from_slice(body);
        if w.write_all(&resp).await.is_err() {
            return;
        }
    }
}

/// Closes with a TCP reset (SO_LINGER 0) instead of a FIN.
fn reset(s: TcpStream) {
    let sock = socket2::SockRef::from(&s);
    let _ = sock.set_linger(Some(Duration::ZERO));
    drop(s);
}
