//! Reloads and restarts under load: wrk at full speed while SIGHUP is sent 20 times with the
//! configuration and the certificates changing; SIGTERM while clients send requests on
//! kept-alive connections: every request either completes or is refused before it is read.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use myelin_e2e::Myelin;
use myelin_e2e::client::TlsClient;
use myelin_e2e::faulty::FaultyUpstream;
use myelin_e2e::hostile::{figure, runtime, size};
use myelin_e2e::peers;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::common::{Fixture, bin, config_with_cert};
use crate::scenario::serial;

/// The configuration of reload number `i`: certificate files, well-known, limits and a second
/// homeserver change from one to the next.
fn reload_config(f: &Fixture, upstream: &str, i: usize) -> String {
    let stem = format!("cert-{}", i % 2);
    let (cert, key) = f.ca.write_leaf(
        &f.dir,
        &stem,
        &[
            "example.test",
            "matrix.example.test",
            "localhost",
            "127.0.0.1",
            "other.test",
        ],
    );
    let homeserver_extra =
        format!("[homeserver.well_known]\nclient_base_url = \"https://matrix{i}.example.test\"\n");
    let other = if i.is_multiple_of(2) {
        format!("[[homeserver]]\nserver_name = \"other.test\"\nupstream = \"{upstream}\"\n")
    } else {
        String::new()
    };
    let extra = format!(
        "{other}\n[limits]\nmax_headers = {}\nidle_timeout = \"{}s\"\n\n[log]\naccess_log = false\n",
        100 + i,
        60 + i
    );
    config_with_cert(&cert, &key, upstream, &homeserver_extra, &extra)
}

/// wrk's summary: (requests, non-2xx/3xx responses, socket errors line).
fn parse_wrk(out: &str) -> (u64, u64, Option<String>) {
    let requests = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let non2xx = out
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let socket = out
        .lines()
        .find(|l| l.contains("Socket errors"))
        .map(|l| l.trim().to_string());
    (requests, non2xx, socket)
}

#[test]
fn twenty_reloads_under_wrk_lose_no_request() {
    let _serial = serial();
    if !peers::require("wrk", peers::has_program("wrk")) {
        return;
    }
    let up_rt = runtime(1);
    let up = FaultyUpstream::start(up_rt.handle());
    let f = Fixture::new("reload-under-load");
    let m = Myelin::start(&bin(), &f.dir, &reload_config(&f, &up.url(), 0));
    let addr = m.only_addr();
    let duration = size(Duration::from_secs(8), Duration::from_secs(60));
    let wrk = Command::new("wrk")
        .args(["-t2", "-c32", "--timeout", "5s", "--latency"])
        .arg(format!("-d{}s", duration.as_secs()))
        .args(["-H", "Host: example.test"])
        .arg(format!(
            "https://127.0.0.1:{}/_matrix/client/versions",
            addr.port()
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start wrk");
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let reloads = 20;
    let gap = (duration - Duration::from_secs(2)) / reloads as u32;
    let mut last_cert = String::new();
    for i in 1..=reloads {
        let config = reload_config(&f, &up.url(), i);
        last_cert = std::fs::read_to_string(f.dir.join(&format!("cert-{}.pem", i % 2))).unwrap();
        assert!(
            m.reload(Some(&config)),
            "reload {i} refused:\n{}",
            m.log_text()
        );
        std::thread::sleep(gap.saturating_sub(Duration::from_millis(50)));
    }
    let reload_time = started.elapsed();
    let out = wrk.wait_with_output().expect("wrk finished");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}");
    let (requests, non2xx, socket) = parse_wrk(&text);
    figure("reload-under-load", "reloads (SIGHUP)", reloads);
    figure(
        "reload-under-load",
        "reloads done within",
        format!("{:.1} s", reload_time.as_secs_f64()),
    );
    figure("reload-under-load", "wrk requests", requests);
    figure("reload-under-load", "wrk non-2xx", non2xx);
    figure(
        "reload-under-load",
        "wrk socket errors",
        socket.as_deref().unwrap_or("none"),
    );
    assert!(
        out.status.success(),
        "wrk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(requests > 1000, "wrk ran: {text}");
    assert_eq!(non2xx, 0, "non-2xx responses during reloads:\n{text}");
    assert!(socket.is_none(), "socket errors during reloads:\n{text}");

    // the reloads took effect: a new connection gets the last certificate and well-known
    let rt = runtime(1);
    rt.block_on(async {
        let tls = f.client().connect(addr, "example.test").await.unwrap();
        let served = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        let wanted = CertificateDer::pem_slice_iter(last_cert.as_bytes())
            .next()
            .unwrap()
            .unwrap()
            .to_vec();
        assert_eq!(served, wanted, "the last certificate is served");
        let r = f
            .client()
            .h1(
                addr,
                "example.test",
                &myelin_e2e::client::get("/.well-known/matrix/client", "example.test"),
            )
            .await
            .unwrap();
        assert_eq!(
            r.json()["m.homeserver"]["base_url"],
            format!("https://matrix{reloads}.example.test")
        );
    });
}

/// How one request of the SIGTERM test ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// A whole response.
    Complete(u16),
    /// The connection ended before any byte of a response.
    NoResponse(String),
    /// Part of a response, then the connection ended: a request cut in the middle.
    Cut(String),
}

/// Sends one request with its id on `s`; reads the whole response.
async fn request<S>(s: &mut BufReader<S>, id: &str) -> (Outcome, bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let req = format!(
        "GET /_matrix/client/versions HTTP/1.1\r\nHost: example.test\r\nX-Request-Id: {id}\r\n\r\n"
    );
    if let Err(e) = s.get_mut().write_all(req.as_bytes()).await {
        return (Outcome::NoResponse(format!("write: {e}")), true);
    }
    let mut status_line = String::new();
    match tokio::time::timeout(Duration::from_secs(30), s.read_line(&mut status_line)).await {
        Err(_) => return (Outcome::NoResponse("no answer in 30 s".into()), true),
        Ok(Err(e)) if status_line.is_empty() => return (Outcome::NoResponse(e.to_string()), true),
        Ok(Ok(0)) => return (Outcome::NoResponse("closed".into()), true),
        Ok(Err(e)) => return (Outcome::Cut(format!("in the status line: {e}")), true),
        Ok(Ok(_)) => {}
    }
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut len = None;
    let mut close = false;
    loop {
        let mut line = String::new();
        match s.read_line(&mut line).await {
            Ok(0) | Err(_) => return (Outcome::Cut(format!("in the head: {status_line:?}")), true),
            Ok(_) => {}
        }
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse::<usize>().ok();
        }
        if l.starts_with("connection:") && l.contains("close") {
            close = true;
        }
    }
    let Some(len) = len else {
        return (Outcome::Cut("no content-length".into()), true);
    };
    let mut body = vec![0u8; len];
    if let Err(e) = s.read_exact(&mut body).await {
        return (Outcome::Cut(format!("in the body: {e}")), true);
    }
    (Outcome::Complete(status), close)
}

#[test]
fn sigterm_under_load_completes_or_refuses_every_request_and_cuts_none() {
    let _serial = serial();
    let up_rt = runtime(1);
    let up = FaultyUpstream::start(up_rt.handle());
    // answers take a while, so that many are in flight when SIGTERM comes
    up.set_delay(Duration::from_millis(30));
    let f = Fixture::new("sigterm-under-load");
    let config = f.config(
        &up.url(),
        "",
        "[limits]\nshutdown_timeout = \"20s\"\n\n[log]\naccess_log = false\n",
    );
    let mut m = Myelin::start(&bin(), &f.dir, &config);
    let addr = m.only_addr();
    let workers = size(32, 128);
    let rt = runtime(2);
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = tokio::task::JoinSet::new();
    let _guard = rt.enter();
    for w in 0..workers {
        let (client, stop): (TlsClient, _) = (f.client(), stop.clone());
        set.spawn(async move {
            let mut results: Vec<(String, Outcome, Instant)> = Vec::new();
            let mut n = 0;
            let mut refused_since: Option<Instant> = None;
            while !stop.load(Ordering::Relaxed) {
                let Ok(tls) = client.connect(addr, "example.test").await else {
                    // draining: the listener is gone; once refused for a while, stop
                    let since = *refused_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(1) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                refused_since = None;
                let mut s = BufReader::new(tls);
                loop {
                    let id = format!("w{w}-{n}");
                    n += 1;
                    let (outcome, close) = request(&mut s, &id).await;
                    let at = Instant::now();
                    let ended = !matches!(outcome, Outcome::Complete(_)) || close;
                    results.push((id, outcome, at));
                    if ended || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    // a pause now and then: kept-alive connections sit idle at times, which is
                    // where a request and the server's close can cross
                    if n % 3 == 0 {
                        tokio::time::sleep(Duration::from_millis(7)).await;
                    }
                }
            }
            results
        });
    }
    drop(_guard);
    std::thread::sleep(Duration::from_millis(1500));
    let term_at = Instant::now();
    m.signal("TERM");
    let status = m
        .wait_exit(Duration::from_secs(30))
        .expect("myelin exited after SIGTERM");
    let exited_after = term_at.elapsed();
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(String, Outcome, Instant)> = rt.block_on(async {
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.extend(r.unwrap());
        }
        out
    });
    let seen = up.ids();
    let complete = results
        .iter()
        .filter(|r| matches!(r.1, Outcome::Complete(200)))
        .count();
    let completed_after_term = results
        .iter()
        .filter(|r| matches!(r.1, Outcome::Complete(200)) && r.2 > term_at)
        .count();
    let refused: Vec<_> = results
        .iter()
        .filter(|r| matches!(r.1, Outcome::NoResponse(_)))
        .collect();
    let cut: Vec<_> = results
        .iter()
        .filter(|r| matches!(r.1, Outcome::Cut(_)))
        .collect();
    let other: Vec<_> = results
        .iter()
        .filter(|r| matches!(r.1, Outcome::Complete(s) if s != 200))
        .collect();
    // refused requests never reached the homeserver: they were not read
    let refused_but_forwarded: Vec<_> = refused.iter().filter(|r| seen.contains(&r.0)).collect();
    let answered: HashSet<&str> = results
        .iter()
        .filter(|r| matches!(r.1, Outcome::Complete(_)))
        .map(|r| r.0.as_str())
        .collect();
    let forwarded_unanswered: Vec<_> = seen
        .iter()
        .filter(|id| !answered.contains(id.as_str()))
        .collect();
    figure("sigterm-under-load", "requests completed", complete);
    figure(
        "sigterm-under-load",
        "completed after SIGTERM",
        completed_after_term,
    );
    figure(
        "sigterm-under-load",
        "refused before being read",
        refused.len(),
    );
    figure("sigterm-under-load", "cut in the middle", cut.len());
    figure(
        "sigterm-under-load",
        "exit after SIGTERM",
        format!("{:.2} s", exited_after.as_secs_f64()),
    );
    assert!(status.success(), "{status}:\n{}", m.log_text());
    assert!(m.log_text().contains("\"abandoned\":0"), "{}", m.log_text());
    assert!(
        complete > 100 && completed_after_term > 0,
        "the load ran through SIGTERM"
    );
    assert!(
        cut.is_empty(),
        "requests cut in the middle: {:?}",
        &cut[..cut.len().min(5)]
    );
    assert!(
        other.is_empty(),
        "requests answered with an error: {:?}",
        &other[..other.len().min(5)]
    );
    assert!(
        refused_but_forwarded.is_empty(),
        "requests reached the homeserver but got no answer: {:?}",
        &refused_but_forwarded[..refused_but_forwarded.len().min(5)]
    );
    assert!(
        forwarded_unanswered.is_empty(),
        "the homeserver saw requests whose answer was lost: {forwarded_unanswered:?}"
    );
}
