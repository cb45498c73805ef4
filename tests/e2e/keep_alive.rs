//! An idle kept-alive connection is governed by `idle_timeout` only: neither Myelin's own
//! `header_read_timeout` nor hyper's built-in 30 s header timeout (which runs from the end of the
//! previous response) may close it, while a request head that starts and stalls is still cut.

use std::time::{Duration, Instant};

use myelin_e2e::Myelin;
use myelin_e2e::client::read_response;
use myelin_e2e::upstream::RecordingUpstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

use crate::common::{Fixture, bin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_outlives_header_timeouts_until_idle_timeout() {
    let up = RecordingUpstream::start().await;
    let f = Fixture::new("keep-alive-idle");
    let limits = "[limits]\nheader_read_timeout = \"2s\"\nidle_timeout = \"60s\"\n";
    let m = Myelin::start(&bin(), &f.dir, &f.config(&up.url(), "", limits));
    let addr = m.only_addr();
    let ask = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: example.test\r\n\r\n";

    let mut idle = BufReader::new(f.client().connect(addr, "example.test").await.unwrap());
    idle.get_mut().write_all(ask).await.unwrap();
    assert_eq!(read_response(&mut idle).await.unwrap().status, 200);

    // meanwhile, a head that starts and stalls is cut at header_read_timeout
    let mut slow = f.client().connect(addr, "example.test").await.unwrap();
    slow.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: ex")
        .await
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "a stalled head was cut after {took:?}"
    );

    // idle past hyper's own 30 s default: still served
    tokio::time::sleep(Duration::from_secs(32).saturating_sub(started.elapsed())).await;
    idle.get_mut().write_all(ask).await.unwrap();
    let r = read_response(&mut idle).await;
    assert_eq!(
        r.map(|r| r.status).map_err(|e| e.to_string()),
        Ok(200),
        "an idle kept-alive connection was closed before idle_timeout"
    );
}
