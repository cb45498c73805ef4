//! A recording upstream: a raw HTTP/1.1 server on loopback that keeps the exact bytes of every
//! request head it receives, so tests can compare what left the client with what reached the
//! homeserver's place. Its answer depends on the path:
//! - `.../delay/<ms>/...`: waits that long before answering;
//! - `.../trickle/...`: answers chunked, a first chunk at once and the rest 1.5 s later;
//! - `.../big/<bytes>/...`: answers with that many bytes;
//! - anything else: `200 {"ok":true}`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug)]
pub struct Recorded {
    /// The request line and headers exactly as received.
    pub head: String,
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    pub body_prefix: Vec<u8>,
}

impl Recorded {
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

pub struct RecordingUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingUpstream {
    pub async fn start() -> RecordingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, log.clone()));
            }
        });
        RecordingUpstream { addr, seen, task }
    }

    pub fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.seen()
            .last()
            .cloned()
            .expect("the upstream received a request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(s: TcpStream, log: Arc<Mutex<Vec<Recorded>>>) {
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
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("");
        let mut parts = request_line.splitn(3, ' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let mut body_len = 0usize;
        let mut body_prefix = Vec::new();
        let keep = |chunk: &[u8], total: &mut usize, prefix: &mut Vec<u8>| {
            *total += chunk.len();
            if prefix.len() < 4096 {
                prefix.extend_from_slice(&chunk[..chunk.len().min(4096 - prefix.len())]);
            }
        };
        let mut buf = vec![0u8; 64 << 10];
        if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            let mut left = len;
            while left > 0 {
                let n = match r.read(&mut buf[..left.min(64 << 10)]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                keep(&buf[..n], &mut body_len, &mut body_prefix);
                left -= n;
            }
        } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let mut size = String::new();
                if r.read_line(&mut size).await.unwrap_or(0) == 0 {
                    return;
                }
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                    .unwrap_or(0);
                if n == 0 {
                    let mut end = String::new();
                    let _ = r.read_line(&mut end).await;
                    break;
                }
                let mut left = n;
                while left > 0 {
                    let k = match r.read(&mut buf[..left.min(64 << 10)]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => k,
                    };
                    keep(&buf[..k], &mut body_len, &mut body_prefix);
                    left -= k;
                }
                let mut crlf = [0u8; 2];
                if r.read_exact(&mut crlf).await.is_err() {
                    return;
                }
            }
        }
        log.lock().unwrap().push(Recorded {
            head: head.clone(),
            method,
            target: target.clone(),
            headers: headers.clone(),
            body_len,
            body_prefix,
        });

        let segs: Vec<&str> = target.split('?').next().unwrap_or("").split('/').collect();
        let after = |name: &str| {
            segs.iter()
                .position(|s| *s == name)
                .and_then(|i| segs.get(i + 1))
                .copied()
        };
        if let Some(ms) = after("delay").and_then(|v| v.parse::<u64>().ok()) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let w = r.get_mut();
        let result = if segs.contains(&"trickle") {
            async {
                w.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                    .await?;
                w.flush().await?;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                w.write_all(b"4\r\nlast\r\n0\r\n\r\n").await?;
                w.flush().await
            }
            .await
        } else if let Some(n) = after("big").and_then(|v| v.parse::<usize>().ok()) {
            async {
                w.write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n\r\n").as_bytes())
                    .await?;
                let chunk = vec![b'b'; 64 << 10];
                let mut left = n;
                while left > 0 {
                    let k = left.min(chunk.len());
                    w.write_all(&chunk[..k]).await?;
                    left -= k;
                }
                w.flush().await
            }
            .await
        } else {
            let body = format!("{{\"ok\":true,\"body_len\":{body_len}}}");
            w.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Upstream: recording\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await
        };
        if result.is_err() {
            return;
        }
    }
}
