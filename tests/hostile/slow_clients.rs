//! Slow and hostile clients: slowloris, TCP without TLS, a ClientHello trickled, oversized
//! headers, a request body trickled forever, and connections beyond `max_connections`.
//! Each is cut at its configured limit while a well-behaved client keeps its latency.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use myelin_e2e::client::{TlsClient, read_response};
use myelin_e2e::hostile::{Tally, client_hello, figure, size};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::scenario::{Scenario, serial};

/// Opens `n` TLS connections, `parallel` at a time.
async fn connect_many(
    client: &TlsClient,
    addr: SocketAddr,
    n: usize,
    parallel: usize,
) -> Vec<tokio_rustls::client::TlsStream<TcpStream>> {
    let gate = Arc::new(Semaphore::new(parallel));
    let mut set = JoinSet::new();
    for _ in 0..n {
        let (client, gate) = (client.clone(), gate.clone());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            client.connect(addr, "example.test").await
        });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap().expect("attack connection"));
    }
    out
}

/// Reads until the server closes (EOF or error), for at most `limit`; returns when.
async fn until_closed<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Option<Instant> {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(Instant::now()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

/// Checks that every attack connection was cut between `at - 0.2 s` and `at + slack`.
fn assert_cut(test: &str, cuts: &[Option<Duration>], at: Duration, slack: Duration) {
    let never = cuts.iter().filter(|c| c.is_none()).count();
    assert_eq!(
        never, 0,
        "{test}: {never} attack connections were never cut"
    );
    let times: Vec<Duration> = cuts.iter().flatten().copied().collect();
    let early = times
        .iter()
        .filter(|t| **t + Duration::from_millis(200) < at)
        .count();
    let max = times.iter().max().copied().unwrap_or_default();
    let min = times.iter().min().copied().unwrap_or_default();
    figure(test, "attack connections cut", times.len());
    figure(
        test,
        "cut after (min .. max)",
        format!("{:.2} s .. {:.2} s", min.as_secs_f64(), max.as_secs_f64()),
    );
    assert_eq!(early, 0, "{test}: {early} connections cut before the limit");
    assert!(
        max <= at + slack,
        "{test}: a connection was cut only after {max:?} (limit {at:?})"
    );
}

#[test]
fn slowloris_headers_trickled_from_many_connections_are_cut_at_header_read_timeout() {
    let _serial = serial();
    let n = size(2000, 10_000);
    let timeout = size(Duration::from_secs(5), Duration::from_secs(30));
    let limits = format!(
        "header_read_timeout = \"{}s\"\nidle_timeout = \"600s\"\nmax_connections = 20000\n",
        timeout.as_secs()
    );
    let mut s = Scenario::start("slowloris", &limits);
    s.measure_quiet();

    // a kept-alive connection that sits idle through the whole attack: idle is not slow, it
    // must outlive header_read_timeout (only idle_timeout closes it)
    let client = s.f.client();
    let addr = s.addr;
    let ask = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: example.test\r\n\r\n";
    let mut idle = s.rt.block_on(async {
        let mut c = BufReader::new(client.connect(addr, "example.test").await.unwrap());
        c.get_mut().write_all(ask).await.unwrap();
        assert_eq!(read_response(&mut c).await.unwrap().status, 200);
        c
    });
    let idle_since = Instant::now();
    // every connection first completes TLS (idle, not yet an attack), then all start trickling
    let conns = s.rt.block_on(connect_many(&client, addr, n, 64));
    figure(s.name, "attack connections open", conns.len());
    let mut set = JoinSet::new();
    let _guard = s.rt.enter();
    for conn in conns {
        set.spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(conn);
            let started = Instant::now();
            let writer = async {
                let head = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: example.test\r\nX-Slow: ";
                let mut bytes = head.iter().chain(std::iter::repeat(&b'a'));
                loop {
                    let b = *bytes.next().unwrap();
                    if wr.write_all(&[b]).await.is_err() || wr.flush().await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                std::future::pending::<()>().await;
            };
            tokio::select! {
                at = until_closed(&mut rd, timeout + Duration::from_secs(15)) => at.map(|t| t - started),
                _ = writer => None,
            }
        });
    }
    drop(_guard);
    std::thread::sleep(Duration::from_millis(500));
    let comparison = s.measure_attack(5);
    let cuts: Vec<Option<Duration>> = s.rt.block_on(async {
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r.unwrap());
        }
        out
    });
    assert_cut(s.name, &cuts, timeout, Duration::from_secs(3));
    std::thread::sleep((timeout + Duration::from_millis(500)).saturating_sub(idle_since.elapsed()));
    let status = s.rt.block_on(async {
        idle.get_mut().write_all(ask).await?;
        read_response(&mut idle).await
    });
    assert_eq!(
        status.map(|r| r.status).map_err(|e| e.to_string()),
        Ok(200),
        "a kept-alive connection idle for {:?} (longer than header_read_timeout) still serves",
        idle_since.elapsed()
    );
    s.finish(&comparison, size(200, 800));
}

#[test]
fn connections_that_never_start_tls_are_cut_at_the_handshake_timeout() {
    let _serial = serial();
    let n = size(1000, 5000);
    let timeout = size(Duration::from_secs(3), Duration::from_secs(10));
    let limits = format!(
        "tls_handshake_timeout = \"{}s\"\nmax_connections = 20000\n",
        timeout.as_secs()
    );
    let mut s = Scenario::start("no-tls", &limits);
    s.measure_quiet();
    let addr = s.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = JoinSet::new();
    let _guard = s.rt.enter();
    // each attacker opens a connection again when one is cut, until the measurement is done
    for i in 0..n {
        // staggered: the attackers' cuts and reconnects spread evenly over the limit's period
        let offset = timeout * i as u32 / n as u32;
        let stop = stop.clone();
        set.spawn(async move {
            tokio::time::sleep(offset).await;
            let mut cuts = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut tcp) = TcpStream::connect(addr).await else {
                    cuts.push(None);
                    break;
                };
                let started = Instant::now();
                cuts.push(
                    until_closed(&mut tcp, timeout + Duration::from_secs(15))
                        .await
                        .map(|t| t - started),
                );
            }
            cuts
        });
    }
    drop(_guard);
    // every attacker is at it before the measurement starts
    std::thread::sleep(timeout + Duration::from_millis(300));
    let comparison = s.measure_attack(5);
    stop.store(true, Ordering::Relaxed);
    let cuts: Vec<Option<Duration>> = s.rt.block_on(async {
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.extend(r.unwrap());
        }
        out
    });
    assert_cut(s.name, &cuts, timeout, Duration::from_secs(3));
    s.finish(&comparison, size(100, 400));
}

#[test]
fn a_client_hello_trickled_byte_by_byte_is_cut_at_the_handshake_timeout() {
    let _serial = serial();
    let n = size(200, 2000);
    let timeout = size(Duration::from_secs(3), Duration::from_secs(10));
    // one byte per `pace`: the hello would take minutes
    let pace = size(Duration::from_millis(200), Duration::from_secs(1));
    let limits = format!(
        "tls_handshake_timeout = \"{}s\"\nmax_connections = 20000\n",
        timeout.as_secs()
    );
    let mut s = Scenario::start("clienthello-trickle", &limits);
    s.measure_quiet();
    let hello = Arc::new(client_hello("example.test"));
    figure(s.name, "ClientHello bytes", hello.len());
    let addr = s.addr;
    let mut set = JoinSet::new();
    let _guard = s.rt.enter();
    let stop = Arc::new(AtomicBool::new(false));
    for i in 0..n {
        // staggered: the attackers' cuts and reconnects spread evenly over the limit's period
        let offset = timeout * i as u32 / n as u32;
        let (hello, stop) = (hello.clone(), stop.clone());
        set.spawn(async move {
            tokio::time::sleep(offset).await;
            let mut cuts = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Ok(tcp) = TcpStream::connect(addr).await else {
                    cuts.push(None);
                    break;
                };
                let (mut rd, mut wr) = tcp.into_split();
                let started = Instant::now();
                let writer = async {
                    for b in hello.iter() {
                        if wr.write_all(&[*b]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(pace).await;
                    }
                    std::future::pending::<()>().await;
                };
                cuts.push(tokio::select! {
                    at = until_closed(&mut rd, timeout + Duration::from_secs(15)) => at.map(|t| t - started),
                    _ = writer => None,
                });
            }
            cuts
        });
    }
    drop(_guard);
    // every attacker is at it before the measurement starts
    std::thread::sleep(timeout + Duration::from_millis(300));
    let comparison = s.measure_attack(5);
    stop.store(true, Ordering::Relaxed);
    let cuts: Vec<Option<Duration>> = s.rt.block_on(async {
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.extend(r.unwrap());
        }
        out
    });
    assert_cut(s.name, &cuts, timeout, Duration::from_secs(3));
    s.finish(&comparison, size(100, 400));
}

/// Sends `head` while reading the answer at the same time (as a browser does); returns the
/// status Myelin answered, or the error, and when the connection ended.
async fn oversized(
    client: &TlsClient,
    addr: SocketAddr,
    head: Arc<Vec<u8>>,
) -> (Result<u16, String>, Duration) {
    let started = Instant::now();
    let conn = match client.connect(addr, "example.test").await {
        Ok(c) => c,
        Err(e) => return (Err(format!("connect: {e}")), started.elapsed()),
    };
    let (rd, mut wr) = tokio::io::split(conn);
    let writer = tokio::spawn(async move {
        for chunk in head.chunks(16 << 10) {
            if wr.write_all(chunk).await.is_err() {
                return;
            }
        }
        let _ = wr.flush().await;
        // keep the write half open: the server must end the connection
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let mut rd = BufReader::new(rd);
    let status = read_response(&mut rd)
        .await
        .map(|r| r.status)
        .map_err(|e| e.to_string());
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut rest)).await;
    writer.abort();
    (status, started.elapsed())
}

#[test]
fn oversized_header_blocks_and_ten_thousand_headers_get_431_and_are_closed() {
    let _serial = serial();
    let mut s = Scenario::start("oversized-headers", "max_connections = 20000\n");
    s.measure_quiet();
    // a 1 MiB header block (one huge header), and 10,000 small headers
    let mut huge =
        b"GET /_matrix/client/versions HTTP/1.1\r\nHost: example.test\r\nX-Huge: ".to_vec();
    huge.extend(std::iter::repeat_n(b'h', 1 << 20));
    huge.extend_from_slice(b"\r\n\r\n");
    let mut many = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: example.test\r\n".to_vec();
    for i in 0..10_000 {
        many.extend_from_slice(format!("x{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let attacks = [
        ("1 MiB header block", Arc::new(huge)),
        ("10,000 headers", Arc::new(many)),
    ];

    // the attacker sends them again and again, one of each at a time with a pause (each attempt is a new
    // TLS handshake: back to back they would measure a handshake flood, which no limit on
    // headers can answer), while the client measures
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = s.f.client();
    let addr = s.addr;
    let mut set = JoinSet::new();
    let _guard = s.rt.enter();
    for worker in 0..size(2, 8) {
        let (tally, stop, client) = (tally.clone(), stop.clone(), client.clone());
        let (label, head) = attacks[worker % 2].clone();
        set.spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, took) = oversized(&client, addr, head.clone()).await;
                match status {
                    Ok(431) => tally.add(&format!("{label}: 431"), 1),
                    Ok(other) => tally.add(&format!("{label}: status {other}"), 1),
                    Err(e) => tally.add(&format!("{label}: error {e}"), 1),
                }
                if took > Duration::from_secs(3) {
                    tally.add(&format!("{label}: slow close"), 1);
                }
                tokio::time::sleep(size(Duration::from_millis(100), Duration::from_millis(20)))
                    .await;
            }
        });
    }
    drop(_guard);
    std::thread::sleep(Duration::from_millis(300));
    let comparison = s.measure_attack(5);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    s.rt.block_on(async { while set.join_next().await.is_some() {} });
    let counts = tally.counts.lock().unwrap().clone();
    figure(s.name, "attack outcomes", format!("{counts:?}"));
    for (label, _) in &attacks {
        assert!(
            tally.get(&format!("{label}: 431")) > 0,
            "{label}: never answered 431: {counts:?}"
        );
    }
    assert!(
        counts.keys().all(|k| k.ends_with(": 431")),
        "every oversized request gets a 431 and its connection is closed promptly: {counts:?}"
    );
    s.finish(&comparison, size(100, 400));
}

#[test]
fn a_request_body_trickled_forever_is_cut_by_the_minimum_rate() {
    let _serial = serial();
    let n = size(200, 2000);
    let window = size(Duration::from_secs(2), Duration::from_secs(60));
    // 512 bytes/s (the default) over each window; the attacker sends 1 byte/s
    let limits = format!(
        "body_read_timeout = \"{}s\"\nbody_min_rate = \"512\"\nmax_connections = 20000\n",
        window.as_secs()
    );
    let mut s = Scenario::start("body-trickle", &limits);
    s.measure_quiet();
    let client = s.f.client();
    let addr = s.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = JoinSet::new();
    let _guard = s.rt.enter();
    // each attacker starts a new upload when one is cut, until the measurement is done
    for i in 0..n {
        // staggered: the attackers' cuts and reconnects spread evenly over the limit's period
        let offset = window * i as u32 / n as u32;
        let (client, stop) = (client.clone(), stop.clone());
        set.spawn(async move {
            tokio::time::sleep(offset).await;
          let mut results = Vec::new();
          while !stop.load(Ordering::Relaxed) {
            let Ok(conn) = client.connect(addr, "example.test").await else {
                results.push((None, None));
                break;
            };
            let (rd, mut wr) = tokio::io::split(conn);
            let started = Instant::now();
            let head = b"POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: example.test\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n";
            if wr.write_all(head).await.is_err() || wr.flush().await.is_err() {
                results.push((None, None));
                continue;
            }
            let writer = async {
                loop {
                    if wr.write_all(b"b").await.is_err() || wr.flush().await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                std::future::pending::<()>().await;
            };
            let mut rd = BufReader::new(rd);
            let reader = async {
                // the answer comes after a window (a minute in the full mode): wait for it first
                let status = match tokio::time::timeout(2 * window + Duration::from_secs(10), rd.fill_buf()).await {
                    Ok(Ok(b)) if !b.is_empty() => read_response(&mut rd).await.ok().map(|r| (r.status, r.json())),
                    _ => None,
                };
                let closed = until_closed(&mut rd, Duration::from_secs(20)).await;
                (status, closed.map(|t| t - started))
            };
            results.push(tokio::select! {
                r = reader => r,
                _ = writer => (None, None),
            });
          }
          results
        });
    }
    drop(_guard);
    // every attacker is at it before the measurement starts
    std::thread::sleep(window + Duration::from_millis(300));
    let comparison = s.measure_attack(5);
    stop.store(true, Ordering::Relaxed);
    let results: Vec<_> = s.rt.block_on(async {
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.extend(r.unwrap());
        }
        out
    });
    let answered_408 = results
        .iter()
        .filter(|(st, _)| {
            st.as_ref()
                .is_some_and(|(code, json)| *code == 408 && json["errcode"] == "M_UNKNOWN")
        })
        .count();
    figure(
        s.name,
        "trickled bodies answered 408 M_UNKNOWN",
        answered_408,
    );
    assert_eq!(
        answered_408,
        results.len(),
        "every trickled body gets a Matrix 408: {:?}",
        results
            .iter()
            .filter(|(st, _)| st.as_ref().is_none_or(|(c, _)| *c != 408))
            .take(5)
            .collect::<Vec<_>>()
    );
    let cuts: Vec<Option<Duration>> = results.iter().map(|(_, c)| *c).collect();
    assert_cut(s.name, &cuts, window, Duration::from_secs(3));
    s.finish(&comparison, size(100, 400));
}

#[test]
fn beyond_max_connections_new_connections_are_refused_at_once() {
    let _serial = serial();
    let held_count = size(300, 5000);
    // the server is full with the attacker's connections and the well-behaved client's two
    let limits = format!("max_connections = {}\n", held_count + 2);
    let mut s = Scenario::start("max-connections", &limits);
    s.measure_quiet();
    std::thread::sleep(Duration::from_millis(300));
    let kept = s.prober.kept(5, crate::scenario::probe_requests());
    kept.ready
        .recv()
        .expect("the well-behaved client connected");
    let client = s.f.client();
    let addr = s.addr;
    let held = s.rt.block_on(connect_many(&client, addr, held_count, 32));
    // beyond the limit: each new connection is closed at once, none waits in a queue
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut set = JoinSet::new();
    let _guard = s.rt.enter();
    for _ in 0..8 {
        let stop = stop.clone();
        set.spawn(async move {
            // Ok(Some(time to refusal)), Ok(None): served, Err: neither served nor closed
            let mut out: Vec<Result<Option<Duration>, String>> = Vec::new();
            let hello = client_hello("example.test");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let r = async {
                    let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                    let _ = tcp.write_all(&hello).await;
                    let mut buf = [0u8; 1024];
                    match tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => Ok(Some(started.elapsed())),
                        Ok(Ok(_)) => Ok(None),
                        Err(_) => Err("neither served nor closed after 3 s".to_string()),
                    }
                }
                .await;
                out.push(r);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            out
        });
    }
    drop(_guard);
    std::thread::sleep(Duration::from_millis(300));
    let flood_started = Instant::now();
    kept.go.send(()).unwrap();
    let rounds = kept.rounds.recv().unwrap();
    std::thread::sleep(Duration::from_secs(2).saturating_sub(flood_started.elapsed()));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let attempts: Vec<Result<Option<Duration>, String>> = s.rt.block_on(async {
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.extend(r.unwrap());
        }
        out
    });
    let _ = kept.release.send(());
    let refusals: Vec<Duration> = attempts
        .iter()
        .filter_map(|r| r.clone().ok().flatten())
        .collect();
    let served = attempts.iter().filter(|r| matches!(r, Ok(None))).count();
    let slowest = refusals.iter().max().copied().unwrap_or_default();
    figure(s.name, "connections held", held.len());
    figure(s.name, "connections refused", refusals.len());
    figure(
        s.name,
        "slowest refusal",
        format!("{:.1} ms", slowest.as_secs_f64() * 1000.0),
    );
    let open: Vec<_> = attempts.iter().filter(|r| r.is_err()).take(3).collect();
    assert!(
        open.is_empty(),
        "connections beyond the limit stayed open: {open:?}"
    );
    assert_eq!(served, 0, "connections beyond the limit were served");
    assert!(
        refusals.len() >= 100,
        "too few attempts to judge: {}",
        refusals.len()
    );
    assert!(
        slowest < Duration::from_millis(500),
        "a refusal took {slowest:?}: connections are queued, not refused"
    );
    // the well-behaved client's kept-alive connections were served all along
    let mut comparison = s.measure_kept(&rounds);
    // once the held connections leave, new ones are served again
    drop(held);
    std::thread::sleep(Duration::from_millis(500));
    let after = s.prober.round(50);
    comparison.errors.extend(after.errors);
    s.finish(&comparison, size(100, 400));
}
