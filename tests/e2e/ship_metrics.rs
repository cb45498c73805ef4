//! The Prometheus endpoint of the real binary: counters move with real requests, the certificate
//! expiry gauge follows the certificates served (across reloads), the endpoint has a socket of its
//! own (`/metrics` on a public listener is a 404) and moves when `[metrics] bind` changes.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use myelin_e2e::client::get;
use myelin_e2e::prometheus::{Scrape, http_get, scrape};
use myelin_e2e::upstream::RecordingUpstream;
use myelin_e2e::{Myelin, TestDir, free_port};

use crate::common::{Fixture, bin, config_with_cert};

const DAY: u64 = 86_400;
const EXPIRY: &str = "myelin_certificate_expiry_timestamp_seconds";
const REQUESTS: &str = "myelin_requests_total";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Scrapes until `done` holds (counters are written when a response body is finished, which can
/// be a moment after the client has read it); panics with the last scrape after 10 s.
async fn scrape_until(addr: SocketAddr, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = scrape(addr).await;
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {what}:\n{}",
            s.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The expiry gauge, name by name.
fn expiry(s: &Scrape) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = s
        .matching(EXPIRY, &[])
        .into_iter()
        .map(|x| (x.labels["name"].clone(), x.value))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Asserts each name's expiry is `days` after a moment within [from, to] (X.509 keeps seconds).
fn assert_expiry(s: &Scrape, names: &[&str], days: u64, from: u64, to: u64) {
    let got = expiry(s);
    let mut want: Vec<&str> = names.to_vec();
    want.sort();
    assert_eq!(
        got.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        want,
        "names with an expiry gauge:\n{}",
        s.text
    );
    for (name, at) in got {
        let at = at as u64;
        assert!(
            (from + days * DAY - 1..=to + days * DAY + 1).contains(&at),
            "{name}: expiry {at} is not {days} days after the certificate was made ({from}..{to})"
        );
    }
}

fn with_metrics(config: String, bind: &str) -> String {
    format!("{config}\n[metrics]\nbind = \"{bind}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_real_requests_and_follow_certificates_across_reloads() {
    let up = RecordingUpstream::start().await;
    let f = Fixture::new("metrics");
    let example_names = [
        "example.test",
        "matrix.example.test",
        "localhost",
        "127.0.0.1",
    ];
    // A second certificate with another lifetime, so each name must show its own.
    let made_from = unix_now();
    let other = f.ca.leaf_valid(&["*.other.test"], 30);
    let made_to = unix_now();
    let other_cert = f.dir.write("other.pem", &other.cert_pem);
    let other_key = f.dir.write("other.key", &other.key_pem);
    let base = f.config(
        &up.url(),
        "[homeserver.well_known]\nserver = \"matrix.example.test:443\"",
        &format!(
            "[[certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
            other_cert.display(),
            other_key.display()
        ),
    );
    let m = Myelin::start(&bin(), &f.dir, &with_metrics(base.clone(), "127.0.0.1:0"));
    let public = m.addr("127.0.0.1:0");
    let metrics = m.metrics_addr();
    assert_ne!(public, metrics);

    let s0 = scrape(metrics).await;
    assert_eq!(
        s0.value(
            "myelin_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // The fixture's leaf was made (90 days) before Myelin started; the other one just above.
    let g = expiry(&s0);
    assert_eq!(g.len(), 5, "{}", s0.text);
    let other_at = s0.value(EXPIRY, &[("name", "*.other.test")]) as u64;
    assert!(
        (made_from + 30 * DAY - 1..=made_to + 30 * DAY + 1).contains(&other_at),
        "*.other.test expires at {other_at}, not 30 days after {made_from}"
    );
    let example_at = g.iter().find(|(n, _)| n == "example.test").unwrap().1 as u64;
    assert!(
        (made_from + 90 * DAY - 120..=made_to + 90 * DAY).contains(&example_at),
        "example.test expires at {example_at}"
    );
    for name in example_names {
        assert_eq!(
            s0.value(EXPIRY, &[("name", name)]) as u64,
            example_at,
            "{name} is served by the example certificate"
        );
    }
    assert!(
        s0.text.contains(&format!("# TYPE {EXPIRY} gauge\n")),
        "{}",
        s0.text
    );

    // Real requests: forwarded ones, well-known ones, and /metrics asked of the public listener.
    let client = f.client();
    for _ in 0..5 {
        let r = client
            .h1(
                public,
                "example.test",
                &get("/_matrix/client/versions", "example.test"),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for _ in 0..2 {
        let r = client
            .h1(
                public,
                "example.test",
                &get("/.well-known/matrix/server", "example.test"),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = client
        .h1(public, "example.test", &get("/metrics", "example.test"))
        .await
        .unwrap();
    assert_eq!(
        r.status,
        404,
        "/metrics must not be served publicly: {}",
        r.text()
    );
    assert!(!r.text().contains(REQUESTS), "{}", r.text());

    let hs = ("homeserver", "example.test");
    // The duration is recorded just after the count: wait for both.
    let s1 = scrape_until(metrics, "8 requests", |s| {
        s.sum("myelin_request_duration_seconds_count", &[hs]) >= 8.0
    })
    .await;
    assert_eq!(
        s1.value(
            REQUESTS,
            &[hs, ("route", "matrix"), ("status_class", "2xx")]
        ),
        5.0,
        "{}",
        s1.text
    );
    assert_eq!(
        s1.value(
            REQUESTS,
            &[hs, ("route", "well_known"), ("status_class", "2xx")]
        ),
        2.0
    );
    assert_eq!(
        s1.value(
            REQUESTS,
            &[hs, ("route", "not_served"), ("status_class", "4xx")]
        ),
        1.0
    );
    assert_eq!(s1.sum(REQUESTS, &[]), 8.0, "{}", s1.text);
    assert_eq!(
        s1.value("myelin_upstream_duration_seconds_count", &[hs]),
        5.0,
        "{}",
        s1.text
    );
    assert_eq!(
        s1.value(
            "myelin_upstream_duration_seconds_bucket",
            &[hs, ("le", "+Inf")]
        ),
        5.0
    );
    assert!(s1.value("myelin_upstream_duration_seconds_sum", &[hs]) > 0.0);
    assert_eq!(
        s1.value(
            "myelin_request_duration_seconds_count",
            &[hs, ("route", "matrix")]
        ),
        5.0
    );
    assert_eq!(
        s1.value("myelin_tls_handshakes_total", &[("result", "ok")]),
        8.0,
        "{}",
        s1.text
    );
    assert_eq!(
        up.count(),
        5,
        "only the forwarded requests reached the upstream"
    );

    // An open connection shows on its listener's gauge, and leaves it when closed.
    let listener = ("listener", "127.0.0.1:0");
    let held = client.connect(public, "example.test").await.unwrap();
    scrape_until(metrics, "one active connection", |s| {
        s.value("myelin_connections_active", &[listener]) == 1.0
    })
    .await;
    drop(held);
    scrape_until(metrics, "no active connection", |s| {
        s.value("myelin_connections_active", &[listener]) == 0.0
    })
    .await;

    // The endpoint answers /metrics and nothing else.
    let r = http_get(metrics, "/_matrix/client/versions").await.unwrap();
    assert_eq!(r.status, 404);
    let r = http_get(metrics, "/").await.unwrap();
    assert_eq!(r.status, 404);

    // Reload with a renewed example certificate and without the other one: the gauge follows.
    let renewed_from = unix_now();
    let renewed = f.ca.leaf_valid(&example_names, 45);
    let renewed_to = unix_now();
    let cert = f.dir.write("renewed.pem", &renewed.cert_pem);
    let key = f.dir.write("renewed.key", &renewed.key_pem);
    let renewed_config = with_metrics(
        config_with_cert(&cert, &key, &up.url(), "", ""),
        "127.0.0.1:0",
    );
    assert!(m.reload(Some(&renewed_config)));
    let s2 = scrape(metrics).await;
    assert_expiry(&s2, &example_names, 45, renewed_from, renewed_to);
    assert_eq!(
        s2.value("myelin_config_reloads_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        s2.value(
            REQUESTS,
            &[hs, ("route", "matrix"), ("status_class", "2xx")]
        ),
        5.0,
        "counters survive a reload"
    );

    // A refused reload is counted and changes nothing else.
    assert!(!m.reload(Some("[[listener]\n")));
    let s3 = scrape(metrics).await;
    assert_eq!(
        s3.value("myelin_config_reloads_total", &[("result", "error")]),
        1.0
    );
    assert_eq!(expiry(&s3), expiry(&s2));

    // A [metrics] bind that cannot be bound refuses the whole reload: a listener the same
    // reload added is closed again, and the endpoint stays where it was.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let extra_port = free_port();
    let blocked = with_metrics(
        format!(
            "{}\n[[listener]]\nbind = \"127.0.0.1:{extra_port}\"\n",
            config_with_cert(&cert, &key, &up.url(), "", "")
        ),
        &taken.local_addr().unwrap().to_string(),
    );
    assert!(!m.reload(Some(&blocked)));
    assert!(
        m.wait_log(Duration::from_secs(5), |v| v["message"]
            .as_str()
            .is_some_and(|s| s.starts_with(
                "reload refused: the metrics endpoint cannot be bound"
            )))
        .is_some(),
        "{}",
        m.log_text()
    );
    let extra = format!("127.0.0.1:{extra_port}");
    assert!(
        m.logs()
            .iter()
            .any(|v| v["message"] == "listening" && v["bind"] == extra.as_str()),
        "the reload bound its new listener before it tried the metrics address"
    );
    assert!(
        wait_refused(SocketAddr::from(([127, 0, 0, 1], extra_port))).await,
        "the listener added by the refused reload is still open"
    );
    let s3b = scrape(metrics).await;
    assert_eq!(
        s3b.value("myelin_config_reloads_total", &[("result", "error")]),
        2.0
    );
    drop(taken);

    // A new [metrics] bind moves the endpoint; the old socket closes.
    let port = free_port();
    let moved = with_metrics(
        config_with_cert(&cert, &key, &up.url(), "", ""),
        &format!("127.0.0.1:{port}"),
    );
    assert!(m.reload(Some(&moved)));
    let new_metrics = m.metrics_addr();
    assert_eq!(new_metrics, SocketAddr::from(([127, 0, 0, 1], port)));
    let s4 = scrape(new_metrics).await;
    assert_eq!(
        s4.value("myelin_config_reloads_total", &[("result", "ok")]),
        2.0
    );
    assert!(
        wait_refused(metrics).await,
        "the old metrics address still answers"
    );

    // Without [metrics], nothing serves them.
    assert!(m.reload(Some(&config_with_cert(&cert, &key, &up.url(), "", ""))));
    assert!(
        wait_refused(new_metrics).await,
        "metrics still served after [metrics] was removed"
    );
}

/// Waits (up to 5 s) until nothing accepts connections at `addr`.
async fn wait_refused(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[test]
fn a_metrics_port_in_use_stops_the_start_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let f = Fixture::new("metrics-port-in-use");
    let config = with_metrics(
        f.config("http://127.0.0.1:9", "", ""),
        &format!("127.0.0.1:{port}"),
    );
    let (code, stderr) = run_to_exit(&bin(), &f.dir, &config);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port} for [metrics]"))
            && stderr.contains("pick another [metrics] bind"),
        "{stderr}"
    );
}

/// Runs `myelin run` on `config` and waits (up to 20 s) for it to exit by itself.
fn run_to_exit(bin: &Path, dir: &TestDir, config: &str) -> (Option<i32>, String) {
    let path = dir.write("myelin.toml", config);
    let err_path = dir.join("stderr.log");
    let mut child = Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, std::fs::read_to_string(err_path).unwrap_or_default())
}
