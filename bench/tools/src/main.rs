//! Load tools for `bench/run`. Every front (Myelin, nginx, Caddy, HAProxy) is measured with the
//! same tools against the same backend:
//! - `backend`: the tiny upstream all fronts forward to (answers a small JSON, discards bodies);
//! - `handshakes`: full TLS handshakes per second (no session cache, no tickets: every
//!   connection is a new handshake, unlike wrk and h2load which resume sessions);
//! - `idle`: holds N idle TLS connections open, each after one request;
//! - `upload`: streams a large body through the front while sampling the front's RSS;
//! - `rss`: resident memory of a process and its children.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::BodyExt;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Parser)]
#[command(name = "myelin-bench")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The backend every front forwards to.
    Backend {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Full TLS handshakes per second, one request per connection.
    Handshakes {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value = "localhost")]
        sni: String,
        #[arg(long, default_value = "/_matrix/client/versions")]
        path: String,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Opens `count` TLS connections, one request on each, and holds them idle.
    Idle {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value = "localhost")]
        sni: String,
        #[arg(long, default_value = "/_matrix/client/versions")]
        path: String,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Written with the number of open connections once all are open.
        #[arg(long)]
        ready_file: PathBuf,
        #[arg(long, default_value_t = 20)]
        hold_seconds: u64,
    },
    /// Streams a body of `size` bytes through the front; samples the RSS of `watch` meanwhile.
    Upload {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value = "localhost")]
        sni: String,
        #[arg(long, default_value = "/_matrix/media/v3/upload")]
        path: String,
        #[arg(long)]
        size: u64,
        /// Process whose RSS (with its children) is sampled.
        #[arg(long)]
        watch: u32,
    },
    /// Resident memory (KiB) of a process and its descendants.
    Rss {
        #[arg(long)]
        pid: u32,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = match &cli.cmd {
        // one thread, the same for every front
        Cmd::Backend { .. } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        _ => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?,
    };
    rt.block_on(async {
        match cli.cmd {
            Cmd::Backend { listen } => backend(listen).await,
            Cmd::Handshakes {
                addr,
                sni,
                path,
                seconds,
                concurrency,
            } => handshakes(addr, &sni, &path, Duration::from_secs(seconds), concurrency).await,
            Cmd::Idle {
                addr,
                sni,
                path,
                count,
                ready_file,
                hold_seconds,
            } => {
                idle(
                    addr,
                    &sni,
                    &path,
                    count,
                    &ready_file,
                    Duration::from_secs(hold_seconds),
                )
                .await
            }
            Cmd::Upload {
                addr,
                sni,
                path,
                size,
                watch,
            } => upload(addr, &sni, &path, size, watch).await,
            Cmd::Rss { pid } => {
                println!("{}", tree_rss_kib(pid));
                Ok(())
            }
        }
    })
}

async fn backend(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .context("bind backend")?;
    eprintln!("backend listening on {listen}");
    loop {
        let (s, _) = listener.accept().await?;
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let mut body = req.into_body();
                    let mut n: u64 = 0;
                    while let Some(frame) = body.frame().await {
                        match frame {
                            Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                            Err(_) => break,
                        }
                    }
                    let text = if n == 0 {
                        Bytes::from_static(b"{\"versions\":[\"v1.11\"]}")
                    } else {
                        Bytes::from(format!("{{\"received\":{n}}}"))
                    };
                    let mut resp = http::Response::new(http_body_util::Full::new(text));
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(resp)
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
        });
    }
}

/// A client config that does full handshakes every time and does not spend time verifying
/// (the cost measured is the server's).
fn client_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|_| unreachable_config())
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

fn unreachable_config() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier> {
    // TLS 1.3 with the default provider is always supported.
    eprintln!("TLS 1.3 is not supported by the crypto provider");
    std::process::exit(2)
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn connect(
    cfg: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    sni: &str,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(sni.to_string())?;
    Ok(TlsConnector::from(cfg.clone()).connect(name, tcp).await?)
}

/// Reads one response with a Content-Length or chunked body; returns the status.
async fn read_one<R: tokio::io::AsyncRead + Unpin>(r: &mut BufReader<R>) -> anyhow::Result<u16> {
    let mut line = String::new();
    r.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    let mut len = None;
    let mut chunked = false;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).await? == 0 {
            bail!("connection closed in the response head");
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse::<usize>().ok();
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    if let Some(n) = len {
        let mut buf = vec![0u8; n];
        r.read_exact(&mut buf).await?;
    } else if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).await?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut buf = vec![0u8; n + 2];
            r.read_exact(&mut buf).await?;
            if n == 0 {
                break;
            }
        }
    }
    Ok(status)
}

async fn handshakes(
    addr: SocketAddr,
    sni: &str,
    path: &str,
    dur: Duration,
    concurrency: usize,
) -> anyhow::Result<()> {
    let cfg = client_config();
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (cfg, ok, errors, stop, request, sni) = (
            cfg.clone(),
            ok.clone(),
            errors.clone(),
            stop.clone(),
            request.clone(),
            sni.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let one = async {
                    let s = connect(&cfg, addr, &sni).await?;
                    let mut r = BufReader::new(s);
                    r.get_mut().write_all(request.as_bytes()).await?;
                    let status = read_one(&mut r).await?;
                    anyhow::ensure!(status == 200, "status {status}");
                    Ok::<_, anyhow::Error>(())
                };
                match tokio::time::timeout(Duration::from_secs(10), one).await {
                    Ok(Ok(())) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "handshakes_per_sec={:.0} ok={} errors={}",
        ok.load(Ordering::Relaxed) as f64 / secs,
        ok.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn idle(
    addr: SocketAddr,
    sni: &str,
    path: &str,
    count: usize,
    ready_file: &std::path::Path,
    hold: Duration,
) -> anyhow::Result<()> {
    let cfg = client_config();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {sni}\r\n\r\n");
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let (cfg, gate, request, sni) =
            (cfg.clone(), gate.clone(), request.clone(), sni.to_string());
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.ok()?;
            let open = async {
                let s = connect(&cfg, addr, &sni).await?;
                let mut r = BufReader::new(s);
                r.get_mut().write_all(request.as_bytes()).await?;
                let status = read_one(&mut r).await?;
                anyhow::ensure!(status == 200, "status {status}");
                Ok::<_, anyhow::Error>(r)
            };
            let conn = tokio::time::timeout(Duration::from_secs(20), open)
                .await
                .ok()?
                .ok();
            drop(permit);
            conn
        }));
    }
    let mut conns = Vec::with_capacity(count);
    for t in tasks {
        if let Ok(Some(c)) = t.await {
            conns.push(c);
        }
    }
    std::fs::write(ready_file, conns.len().to_string())?;
    println!("idle_open={} failed={}", conns.len(), count - conns.len());
    tokio::time::sleep(hold).await;
    drop(conns);
    Ok(())
}

async fn upload(
    addr: SocketAddr,
    sni: &str,
    path: &str,
    size: u64,
    watch: u32,
) -> anyhow::Result<()> {
    let cfg = client_config();
    let baseline = tree_rss_kib(watch);
    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(tree_rss_kib(watch), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let started = Instant::now();
    let s = connect(&cfg, addr, sni).await?;
    let mut r = BufReader::new(s);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {sni}\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    r.get_mut().write_all(head.as_bytes()).await?;
    let chunk = vec![0u8; 256 << 10];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        r.get_mut().write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    r.get_mut().flush().await?;
    let status = read_one(&mut r).await?;
    let secs = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    println!(
        "upload_status={status} upload_seconds={secs:.2} baseline_rss_kib={baseline} peak_rss_kib={}",
        peak.load(Ordering::Relaxed)
    );
    if status != 200 {
        bail!("upload answered {status}");
    }
    Ok(())
}

/// RSS in KiB of `pid` and all its descendants (nginx and HAProxy run several processes).
fn tree_rss_kib(pid: u32) -> u64 {
    let mut total = 0;
    let mut stack = vec![pid];
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
                // ppid is the 2nd field after the ")" that closes the command name
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u32>().ok());
                if let Some(ppid) = ppid {
                    all.push((p, ppid));
                }
            }
        }
    }
    while let Some(p) = stack.pop() {
        total += rss_kib(p);
        stack.extend(all.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
    }
    total
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
