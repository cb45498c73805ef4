//! sd_notify through the real binary: a socket of the test's own stands in for systemd's
//! `$NOTIFY_SOCKET` and hears READY, RELOADING + READY on SIGHUP (also a refused one), and
//! STOPPING on SIGTERM, in that order and nothing else.

use std::time::Duration;

use myelin_e2e::Myelin;
use myelin_e2e::notify::NotifySocket;
use myelin_e2e::upstream::RecordingUpstream;

use crate::common::{Fixture, bin};

const WAIT: Duration = Duration::from_secs(10);

fn has(msg: &[String], line: &str) -> bool {
    msg.iter().any(|l| l == line)
}

fn value<'a>(msg: &'a [String], key: &str) -> Option<&'a str> {
    msg.iter()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// CLOCK_BOOTTIME in µs, which CLOCK_MONOTONIC never exceeds.
fn boottime_usec() -> u64 {
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap();
    let secs: f64 = uptime.split_whitespace().next().unwrap().parse().unwrap();
    (secs * 1e6) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_reloading_ready_and_stopping() {
    let up = RecordingUpstream::start().await;
    let f = Fixture::new("sd-notify");
    let sock = NotifySocket::bind(&f.dir);
    let config = f.config(&up.url(), "", "");
    let mut m = Myelin::start_with(
        &bin(),
        &f.dir,
        &config,
        &[("NOTIFY_SOCKET", sock.path.to_str().unwrap())],
    );

    let ready = sock.recv(WAIT).expect("READY=1 after start");
    assert!(has(&ready, "READY=1"), "{ready:?}");
    let status = value(&ready, "STATUS").unwrap_or("");
    assert!(
        status.starts_with("serving: 1 listener") && status.contains("example.test"),
        "{ready:?}"
    );
    // Listeners are bound when READY is sent: a request succeeds right away.
    let r = f
        .client()
        .h1(
            m.only_addr(),
            "example.test",
            &myelin_e2e::client::get("/_matrix/client/versions", "example.test"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        sock.recv(Duration::from_millis(300)),
        None,
        "only one READY"
    );

    // SIGHUP: RELOADING=1 with the monotonic time of the reload, then READY=1.
    let before = boottime_usec();
    assert!(m.reload(None));
    let reloading = sock.recv(WAIT).expect("RELOADING=1 on SIGHUP");
    assert!(has(&reloading, "RELOADING=1"), "{reloading:?}");
    let usec: u64 = value(&reloading, "MONOTONIC_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("MONOTONIC_USEC missing: {reloading:?}"));
    assert!(
        usec > 0 && usec <= boottime_usec() + 1_000_000,
        "MONOTONIC_USEC={usec} is not a monotonic clock reading (boot time before: {before})"
    );
    let ready = sock.recv(WAIT).expect("READY=1 after the reload");
    assert!(has(&ready, "READY=1"), "{ready:?}");
    assert!(
        value(&ready, "STATUS").is_some_and(|s| s.starts_with("serving: ")),
        "{ready:?}"
    );

    // A refused reload ends in READY=1 too (the old configuration serves), and says so.
    assert!(!m.reload(Some("[[listener]]\nbind = 443\n")));
    let reloading = sock.recv(WAIT).expect("RELOADING=1 on the second SIGHUP");
    assert!(has(&reloading, "RELOADING=1"), "{reloading:?}");
    let ready = sock.recv(WAIT).expect("READY=1 after the refused reload");
    assert!(has(&ready, "READY=1"), "{ready:?}");
    assert!(
        value(&ready, "STATUS").is_some_and(|s| s.contains("reload was refused")),
        "{ready:?}"
    );

    // SIGTERM: STOPPING=1 when the drain begins; then the process ends cleanly.
    m.signal("TERM");
    let stopping = sock.recv(WAIT).expect("STOPPING=1 on SIGTERM");
    assert!(has(&stopping, "STOPPING=1"), "{stopping:?}");
    let status = m.wait_exit(Duration::from_secs(20)).expect("myelin exits");
    assert!(status.success(), "{status}");
    assert_eq!(
        sock.recv(Duration::from_millis(300)),
        None,
        "nothing after STOPPING"
    );
}
