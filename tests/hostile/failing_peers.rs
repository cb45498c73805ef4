//! Failing peers: the upstream resets, stalls, answers garbage, refuses, restarts, all while a
//! steady load runs. The affected requests get Matrix JSON 502/504 (or, once the answer has
//! started, a cut response); the others are untouched; Myelin recovers within a second of the
//! upstream's return.

use std::time::{Duration, Instant};

use myelin_e2e::Myelin;
use myelin_e2e::client::{self, TlsClient, read_response};
use myelin_e2e::faulty::FaultyUpstream;
use myelin_e2e::hostile::{Load, Sample, figure, runtime, size};
use tokio::io::{AsyncWriteExt, BufReader};

use crate::common::{Fixture, bin};
use crate::scenario::serial;

const LIMITS: &str = r#"upstream_timeout = "2s"
upstream_body_timeout = "2s"
connect_timeout = "1s""#;

/// One request on a new connection: the status and JSON `errcode`, or the error, and the time.
async fn one(
    client: &TlsClient,
    addr: std::net::SocketAddr,
    path: &str,
) -> (Result<(u16, String), String>, Duration) {
    let started = Instant::now();
    let r = client
        .h1(addr, "example.test", &client::get(path, "example.test"))
        .await
        .map(|r| {
            (
                r.status,
                r.json()["errcode"].as_str().unwrap_or("").to_string(),
            )
        })
        .map_err(|e| e.to_string());
    (r, started.elapsed())
}

fn errors(samples: &[Sample]) -> Vec<&Sample> {
    samples.iter().filter(|s| s.status != Some(200)).collect()
}

#[test]
fn upstream_failures_affect_only_their_requests_and_myelin_recovers_at_once() {
    let _serial = serial();
    let up_rt = runtime(1);
    let up = FaultyUpstream::start(up_rt.handle());
    let f = Fixture::new("failing-peers");
    let config = f.config(&up.url(), LIMITS, "[log]\naccess_log = false\n");
    let mut m = Myelin::start(&bin(), &f.dir, &config);
    let addr = m.only_addr();
    let rt = runtime(2);
    let c = f.client();

    // 1. faults of single requests while a steady load runs: only they fail
    let load = Load::start(
        c.clone(),
        addr,
        "example.test",
        "/_matrix/client/versions",
        4,
    );
    std::thread::sleep(Duration::from_millis(300));
    let cases: [(&str, &str); 5] = [
        ("reset before the head", "/_matrix/client/v3/reset-head/x"),
        ("garbage instead of HTTP", "/_matrix/client/v3/garbage/x"),
        ("stall before the head", "/_matrix/client/v3/stall-head/x"),
        (
            "reset in the body",
            "/_matrix/media/v3/download/reset-body/x",
        ),
        (
            "stall in the body",
            "/_matrix/media/v3/download/stall-body/x",
        ),
    ];
    let outcomes: Vec<_> = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (i, (label, path)) in cases.iter().enumerate() {
            let (c, label, path) = (c.clone(), *label, *path);
            set.spawn(async move { (i, label, one(&c, addr, path).await) });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r.unwrap());
        }
        out.sort_by_key(|o| o.0);
        out
    });
    let samples = load.stop();
    for (_, label, (result, took)) in &outcomes {
        figure(
            "failing-peers",
            label,
            format!("{result:?} after {:.2} s", took.as_secs_f64()),
        );
    }
    let get = |i: usize| outcomes[i].2.clone();
    assert_eq!(
        get(0).0,
        Ok((502, "M_UNKNOWN".to_string())),
        "reset before the head"
    );
    assert_eq!(get(1).0, Ok((502, "M_UNKNOWN".to_string())), "garbage");
    let (stall, took) = get(2);
    assert_eq!(
        stall,
        Ok((504, "M_UNKNOWN".to_string())),
        "stall before the head"
    );
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "504 after {took:?}"
    );
    // once the answer started, the status is gone: the client sees the response cut, never a hang
    let (reset, took) = get(3);
    assert!(
        reset.is_err(),
        "a reset in the body cuts the response: {reset:?}"
    );
    assert!(took < Duration::from_secs(2), "cut after {took:?}");
    let (stalled, took) = get(4);
    assert!(stalled.is_err(), "a stalled body is cut: {stalled:?}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "cut at upstream_body_timeout, after {took:?}"
    );
    let bad = errors(&samples);
    figure(
        "failing-peers",
        "load requests beside the faults",
        samples.len(),
    );
    assert!(samples.len() > 50, "the load ran: {}", samples.len());
    assert!(
        bad.is_empty(),
        "requests beside the faults were affected: {:?}",
        &bad[..bad.len().min(5)]
    );

    // 2. the upstream refuses connections for a while, then comes back; then it restarts
    //    (stops and is back at once), both during the load
    for (label, down_for) in [
        ("refuses", Duration::from_millis(1500)),
        ("restarts", Duration::ZERO),
    ] {
        let load = Load::start(
            c.clone(),
            addr,
            "example.test",
            "/_matrix/client/versions",
            4,
        );
        std::thread::sleep(Duration::from_millis(500));
        let stopped = Instant::now();
        up.stop();
        std::thread::sleep(down_for);
        up.restart();
        let back = Instant::now();
        std::thread::sleep(size(Duration::from_secs(2), Duration::from_secs(10)));
        let samples = load.stop();
        let bad = errors(&samples);
        // every failure is a Matrix 502, during the outage or the second after it
        for s in &bad {
            assert!(
                s.status == Some(502) && s.errcode.as_deref() == Some("M_UNKNOWN"),
                "{label}: a failed request was not a Matrix 502: {s:?}"
            );
            assert!(
                s.at + Duration::from_millis(100) >= stopped
                    && s.at <= back + Duration::from_secs(1),
                "{label}: a request failed {:?} after the upstream's return",
                s.at.saturating_duration_since(back)
            );
        }
        let last_failure = bad.iter().map(|s| s.at).max();
        let recovered_after =
            last_failure.map_or(Duration::ZERO, |t| t.saturating_duration_since(back));
        let ok_after = samples
            .iter()
            .filter(|s| s.at > back + Duration::from_secs(1))
            .count();
        figure(
            "failing-peers",
            &format!("{label}: failed requests (all 502 M_UNKNOWN)"),
            bad.len(),
        );
        figure(
            "failing-peers",
            &format!("{label}: recovered after the upstream's return"),
            format!("{:.0} ms", recovered_after.as_secs_f64() * 1000.0),
        );
        figure(
            "failing-peers",
            &format!("{label}: requests served in the load"),
            samples.len() - bad.len(),
        );
        assert!(
            ok_after > 20,
            "{label}: served again after the return: {ok_after}"
        );
        if label == "refuses" {
            assert!(!bad.is_empty(), "the outage was seen");
        }
    }

    // 3. a request in flight when the upstream dies gets its 502 too
    up.set_delay(Duration::from_millis(500));
    let in_flight = rt.spawn({
        let c = c.clone();
        async move { one(&c, addr, "/_matrix/client/v3/slow").await }
    });
    std::thread::sleep(Duration::from_millis(200));
    up.stop();
    let (r, _) = rt.block_on(in_flight).unwrap();
    assert_eq!(
        r,
        Ok((502, "M_UNKNOWN".to_string())),
        "in flight when the upstream died"
    );
    up.restart();
    up.set_delay(Duration::ZERO);
    let (r, _) = rt.block_on(one(&c, addr, "/_matrix/client/versions"));
    assert_eq!(r.map(|r| r.0), Ok(200));

    assert!(m.is_running(), "myelin died:\n{}", m.log_text());
    assert!(!m.log_text().contains("panicked"), "{}", m.log_text());
    // a kept-alive client connection outlives all of it
    rt.block_on(async {
        let mut s = BufReader::new(c.connect(addr, "example.test").await.unwrap());
        s.get_mut()
            .write_all(b"GET /_matrix/client/v3/garbage/x HTTP/1.1\r\nHost: example.test\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut s).await.unwrap().status, 502);
        s.get_mut()
            .write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: example.test\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            read_response(&mut s).await.unwrap().status,
            200,
            "same connection after a 502"
        );
    });
}
