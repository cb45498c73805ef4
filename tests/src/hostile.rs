//! Tools for the hostile-client and failure tests (`tests/hostile`): the size of a run (bounded
//! for CI, full with `MYELIN_HOSTILE_FULL=1`), the memory of the Myelin process, a well-behaved
//! client that measures its latency while an attack runs, and raw HTTP/2 frames.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufReader};

use crate::client::{TlsClient, read_response};

/// `MYELIN_HOSTILE_FULL=1`: the long version of every hostile test (bigger counts, the default
/// limits, longer runs). Without it, the bounded CI mode.
pub fn full_mode() -> bool {
    std::env::var("MYELIN_HOSTILE_FULL").is_ok_and(|v| v == "1" || v == "true")
}

/// `ci` in the bounded mode, `full` with `MYELIN_HOSTILE_FULL=1`.
pub fn size<T>(ci: T, full: T) -> T {
    if full_mode() { full } else { ci }
}

/// Prints a measured figure in a fixed form (`figure: test: name = value`), for the report.
pub fn figure(test: &str, name: &str, value: impl std::fmt::Display) {
    eprintln!("figure: {test}: {name} = {value}");
}

/// A process's memory from `/proc/PID/status`, in KiB: (VmRSS now, VmHWM = peak so far).
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system) a process used so far, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the command name (which is in parentheses and may contain spaces)
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state
    let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Samples a process's resident memory every 50 ms on a thread of its own until dropped.
pub struct RssSampler {
    pid: u32,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some((rss, _)) = memory_kib(pid) {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssSampler {
            pid,
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// Resident memory now, KiB.
    pub fn now_kib(&self) -> u64 {
        memory_kib(self.pid).map_or(0, |(rss, _)| rss)
    }

    /// The highest of the samples and the kernel's high-water mark (VmHWM), KiB.
    pub fn peak_kib(&self) -> u64 {
        let hwm = memory_kib(self.pid).map_or(0, |(_, hwm)| hwm);
        self.peak.load(Ordering::Relaxed).max(hwm)
    }

    /// Forgets the peak so far (VmHWM cannot be reset, so only the samples count after this).
    pub fn reset(&self) {
        self.peak.store(self.now_kib(), Ordering::Relaxed);
    }

    /// The highest sample since the last reset, KiB.
    pub fn sampled_peak_kib(&self) -> u64 {
        self.peak.load(Ordering::Relaxed).max(self.now_kib())
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Latencies of one round of the well-behaved client.
#[derive(Clone, Debug, Default)]
pub struct Round {
    /// Requests on kept-alive connections.
    pub keep_alive: Vec<Duration>,
    /// Requests each on a new connection (TCP + TLS handshake + request).
    pub new_conn: Vec<Duration>,
    pub errors: Vec<String>,
}

impl Round {
    pub fn p99(&self) -> Duration {
        percentile(&self.keep_alive, 0.99)
    }

    pub fn new_conn_p99(&self) -> Duration {
        percentile(&self.new_conn, 0.99)
    }
}

/// The `q` quantile (nearest rank) of `samples`.
pub fn percentile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut s = samples.to_vec();
    s.sort();
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// A well-behaved client: on a thread and runtime of its own (so the attack's tasks in the test
/// process do not delay it), two kept-alive HTTP/1.1 connections ask in turn, one request at a
/// time; every tenth request also goes on a new connection.
pub struct Prober {
    pub client: TlsClient,
    pub addr: SocketAddr,
    pub sni: String,
    pub request: Vec<u8>,
}

impl Prober {
    pub fn new(client: TlsClient, addr: SocketAddr, sni: &str, path: &str) -> Prober {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {sni}\r\nUser-Agent: well-behaved\r\n\r\n")
                .into_bytes();
        Prober {
            client,
            addr,
            sni: sni.to_string(),
            request,
        }
    }

    /// One round of `requests` kept-alive requests (and a tenth as many on new connections).
    pub fn round(&self, requests: usize) -> Round {
        let client = self.client.clone();
        let addr = self.addr;
        let sni = self.sni.clone();
        let request = self.request.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("prober runtime");
            rt.block_on(probe(client, addr, sni, request, requests))
        })
        .join()
        .expect("prober thread")
    }
}

/// A well-behaved client that keeps its connections through several rounds: for a server that
/// accepts no new connection (full), where only kept-alive connections can be served.
pub struct KeptProber {
    /// Signalled once both connections are open.
    pub ready: std::sync::mpsc::Receiver<()>,
    /// Send once to start the rounds.
    pub go: std::sync::mpsc::Sender<()>,
    /// The rounds, once done (the connections stay open until `release` is sent or dropped).
    pub rounds: std::sync::mpsc::Receiver<Vec<Round>>,
    pub release: std::sync::mpsc::Sender<()>,
}

impl Prober {
    /// Opens two kept-alive connections now, then runs `rounds` rounds on them when told to go.
    pub fn kept(&self, rounds: usize, requests: usize) -> KeptProber {
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let (rounds_tx, rounds_rx) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let client = self.client.clone();
        let addr = self.addr;
        let sni = self.sni.clone();
        let request = self.request.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("prober runtime");
            rt.block_on(async move {
                let mut conns = Vec::new();
                for _ in 0..2 {
                    conns.push(BufReader::new(
                        client.connect(addr, &sni).await.expect("prober connects"),
                    ));
                }
                for c in conns.iter_mut() {
                    ask(c, &request).await.expect("warm-up");
                }
                let _ = ready_tx.send(());
                let _ = go_rx.recv();
                let mut out = Vec::new();
                for _ in 0..rounds {
                    let mut round = Round::default();
                    for i in 0..requests {
                        let c = &mut conns[i % 2];
                        let started = Instant::now();
                        match ask(c, &request).await {
                            Ok(()) => round.keep_alive.push(started.elapsed()),
                            Err(e) => round.errors.push(format!("request {i} (kept alive): {e}")),
                        }
                    }
                    out.push(round);
                }
                let _ = rounds_tx.send(out);
                let _ = release_rx.recv();
                drop(conns);
            })
        });
        KeptProber {
            ready,
            go,
            rounds: rounds_rx,
            release,
        }
    }
}

async fn probe(
    client: TlsClient,
    addr: SocketAddr,
    sni: String,
    request: Vec<u8>,
    requests: usize,
) -> Round {
    let mut round = Round::default();
    let mut conns = Vec::new();
    for _ in 0..2 {
        match client.connect(addr, &sni).await {
            Ok(s) => conns.push(BufReader::new(s)),
            Err(e) => {
                round.errors.push(format!("connect: {e}"));
                return round;
            }
        }
    }
    // warm-up, not counted
    for c in conns.iter_mut() {
        if let Err(e) = ask(c, &request).await {
            round.errors.push(format!("warm-up: {e}"));
            return round;
        }
    }
    for i in 0..requests {
        let c = &mut conns[i % 2];
        let started = Instant::now();
        match ask(c, &request).await {
            Ok(()) => round.keep_alive.push(started.elapsed()),
            Err(e) => {
                round.errors.push(format!("request {i} (kept alive): {e}"));
                if let Ok(s) = client.connect(addr, &sni).await {
                    *c = BufReader::new(s);
                }
            }
        }
        if i % 10 == 9 {
            let started = Instant::now();
            let fresh = async {
                let mut s = BufReader::new(client.connect(addr, &sni).await?);
                ask(&mut s, &request).await
            };
            match fresh.await {
                Ok(()) => round.new_conn.push(started.elapsed()),
                Err(e) => round
                    .errors
                    .push(format!("request {i} (new connection): {e}")),
            }
        }
    }
    round
}

async fn ask<S>(s: &mut BufReader<S>, request: &[u8]) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.get_mut().write_all(request).await?;
    s.get_mut().flush().await?;
    let r = read_response(s).await?;
    if r.status != 200 {
        return Err(std::io::Error::other(format!(
            "status {}: {}",
            r.status,
            r.text()
        )));
    }
    Ok(())
}

/// What the well-behaved client saw: quiet, then under attack.
#[derive(Debug)]
pub struct Comparison {
    pub quiet_p99: Duration,
    pub attack_p99: Duration,
    pub quiet_new_conn_p99: Duration,
    pub attack_new_conn_p99: Duration,
    pub errors: Vec<String>,
}

/// Latencies below this are scheduler noise on a shared 2-core machine, not a signal: the
/// bound is twice the quiet p99, but never less than twice this.
pub const P99_FLOOR: Duration = Duration::from_millis(1);

/// The quiet p99: the median of three rounds (one noisy round does not make the bar loose).
pub fn quiet_p99(prober: &Prober, requests: usize) -> (Duration, Duration, Vec<String>) {
    let mut p = Vec::new();
    let mut n = Vec::new();
    let mut errors = Vec::new();
    for _ in 0..3 {
        let r = prober.round(requests);
        p.push(r.p99());
        n.push(r.new_conn_p99());
        errors.extend(r.errors);
    }
    p.sort();
    n.sort();
    (p[1], n[1], errors)
}

/// Rounds under attack until one is within twice the quiet p99 (at most `max_rounds`): the best
/// is what the attack costs, the others saw the machine's other load too. Every round must be
/// free of errors.
pub fn attack_p99(
    prober: &Prober,
    requests: usize,
    quiet: Duration,
    max_rounds: usize,
) -> (Duration, Duration, Vec<String>) {
    let bound = 2 * quiet.max(P99_FLOOR);
    let mut best: Option<(Duration, Duration)> = None;
    let mut errors = Vec::new();
    for _ in 0..max_rounds {
        let r = prober.round(requests);
        errors.extend(r.errors.iter().cloned());
        let this = (r.p99(), r.new_conn_p99());
        if best.is_none_or(|b| this.0 < b.0) {
            best = Some(this);
        }
        if this.0 <= bound {
            break;
        }
    }
    let (p, n) = best.unwrap_or_default();
    (p, n, errors)
}

/// Asserts the comparison: no error, and the p99 under attack within twice the quiet one.
pub fn assert_unharmed(test: &str, c: &Comparison) {
    figure(test, "well-behaved p99 quiet", ms(c.quiet_p99));
    figure(test, "well-behaved p99 under attack", ms(c.attack_p99));
    figure(
        test,
        "well-behaved p99 new connection quiet",
        ms(c.quiet_new_conn_p99),
    );
    figure(
        test,
        "well-behaved p99 new connection under attack",
        ms(c.attack_new_conn_p99),
    );
    assert!(
        c.errors.is_empty(),
        "{test}: the well-behaved client saw errors: {:?}",
        &c.errors[..c.errors.len().min(10)]
    );
    let bound = 2 * c.quiet_p99.max(P99_FLOOR);
    assert!(
        c.attack_p99 <= bound,
        "{test}: p99 under attack {} > 2 × quiet {} (bound {})",
        ms(c.attack_p99),
        ms(c.quiet_p99),
        ms(bound)
    );
}

/// Runs `attack` in the background on `rt` while the prober measures; returns the comparison
/// and what the attack returned.
pub struct Measured<T> {
    pub comparison: Comparison,
    pub attack: T,
}

/// Counts kept in one place by attack tasks.
#[derive(Default, Debug)]
pub struct Tally {
    pub counts: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Tally {
    pub fn add(&self, key: &str, n: u64) {
        *self
            .counts
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_default() += n;
    }

    pub fn get(&self, key: &str) -> u64 {
        self.counts.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

/// HTTP/2 frames written by hand, for attacks a well-behaved library would never send.
pub mod h2 {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// The client preface with an empty SETTINGS frame.
    pub fn preface() -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        out
    }

    /// A HPACK literal header field without indexing, new name, no Huffman coding.
    pub fn literal(name: &str, value: &str) -> Vec<u8> {
        let mut out = vec![0x00];
        out.extend(string(name.as_bytes()));
        out.extend(string(value.as_bytes()));
        out
    }

    /// A HPACK string literal (7-bit prefix length).
    pub fn string(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let len = s.len();
        if len < 127 {
            out.push(len as u8);
        } else {
            out.push(127);
            let mut rest = len - 127;
            while rest >= 128 {
                out.push((rest % 128) as u8 | 0x80);
                rest /= 128;
            }
            out.push(rest as u8);
        }
        out.extend_from_slice(s);
        out
    }

    /// The header block of `GET path` (`:method GET`, `:scheme https` from the static table).
    pub fn get_block(authority: &str, path: &str) -> Vec<u8> {
        let mut out = vec![0x82, 0x87];
        // :path and :authority: literal without indexing, indexed name (4 and 1)
        out.push(0x04);
        out.extend(string(path.as_bytes()));
        out.push(0x01);
        out.extend(string(authority.as_bytes()));
        out
    }
}

/// The bytes of a real TLS ClientHello for `sni` offering h2 and http/1.1 (from rustls).
pub fn client_hello(sni: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("server name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write ClientHello");
    }
    out
}

/// A multi-thread runtime with `threads` workers for attack tasks or helper servers.
pub fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime")
}

/// One request of a [`Load`] run.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Instant,
    pub status: Option<u16>,
    /// `errcode` of a JSON error body.
    pub errcode: Option<String>,
    pub error: Option<String>,
}

/// A steady load of well-behaved clients: `workers` threads, each with a kept-alive connection
/// (a new one after an error), asking one request at a time until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<Sample>>>,
}

impl Load {
    pub fn start(
        client: TlsClient,
        addr: SocketAddr,
        sni: &str,
        path: &str,
        workers: usize,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let request = format!("GET {path} HTTP/1.1\r\nHost: {sni}\r\n\r\n").into_bytes();
        let threads = (0..workers)
            .map(|_| {
                let (stop, client, request, sni) = (
                    stop.clone(),
                    client.clone(),
                    request.clone(),
                    sni.to_string(),
                );
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("load runtime");
                    rt.block_on(async move {
                        let mut samples = Vec::new();
                        let mut conn = None;
                        while !stop.load(Ordering::Relaxed) {
                            let at = Instant::now();
                            if conn.is_none() {
                                match client.connect(addr, &sni).await {
                                    Ok(c) => conn = Some(BufReader::new(c)),
                                    Err(e) => {
                                        samples.push(Sample {
                                            at,
                                            status: None,
                                            errcode: None,
                                            error: Some(format!("connect: {e}")),
                                        });
                                        tokio::time::sleep(Duration::from_millis(20)).await;
                                        continue;
                                    }
                                }
                            }
                            let c = conn.as_mut().expect("connected");
                            let r = async {
                                c.get_mut().write_all(&request).await?;
                                c.get_mut().flush().await?;
                                read_response(c).await
                            }
                            .await;
                            match r {
                                Ok(r) => {
                                    let close = r
                                        .header("connection")
                                        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                                    samples.push(Sample {
                                        at,
                                        status: Some(r.status),
                                        errcode: r.json()["errcode"].as_str().map(str::to_string),
                                        error: None,
                                    });
                                    if close {
                                        conn = None;
                                    }
                                }
                                Err(e) => {
                                    samples.push(Sample {
                                        at,
                                        status: None,
                                        errcode: None,
                                        error: Some(e.to_string()),
                                    });
                                    conn = None;
                                }
                            }
                        }
                        samples
                    })
                })
            })
            .collect();
        Load { stop, threads }
    }

    pub fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<Sample> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().expect("load thread"))
            .collect();
        all.sort_by_key(|s| s.at);
        all
    }
}
