//! Routing through the real binary to several real upstream processes (each answers with its own
//! name): route order and methods, every balance mode, failover, health checks, and reloads.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use myelin_e2e::client::RawResponse;
use myelin_e2e::named::{self, NamedUpstream};
use myelin_e2e::peers::require;
use myelin_e2e::{Myelin, wait_until};
use serde_json::Value;

use crate::common::{Fixture, bin};

fn have_peers() -> bool {
    require(
        "python3 (for tests/peers/named_upstream.py)",
        named::available(),
    )
}

/// One request over a new TLS connection (from 127.0.0.1 or `from`); the response.
async fn ask(
    f: &Fixture,
    addr: SocketAddr,
    from: Option<IpAddr>,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> RawResponse {
    let mut req =
        format!("{method} {target} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "PUT" || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let resp = match from {
        None => f.client().h1(addr, "example.test", req.as_bytes()).await,
        Some(ip) => {
            f.client()
                .h1_from(ip, addr, "example.test", req.as_bytes())
                .await
        }
    };
    resp.unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

/// The name of the upstream that answered (panics on anything but its 200).
fn served_by(resp: &RawResponse) -> String {
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()["server"]
        .as_str()
        .unwrap_or_else(|| panic!("not an upstream's answer: {}", resp.text()))
        .to_string()
}

fn events<'a>(logs: &'a [Value], message: &str) -> Vec<&'a Value> {
    logs.iter().filter(|v| v["message"] == message).collect()
}

const CANNOT_CONNECT: &str = "cannot connect to upstream server; skipping it for a while";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_in_order_on_the_raw_path_with_methods() {
    if !have_peers() {
        return;
    }
    let f = Fixture::new("routing-order");
    let main = NamedUpstream::start(&f.dir, "main");
    let a = NamedUpstream::start(&f.dir, "a");
    let b = NamedUpstream::start(&f.dir, "b");
    let pools = format!(
        r#"
[homeserver.upstreams.a]
servers = ["{a}"]

[homeserver.upstreams.b]
servers = ["{b}"]

[[homeserver.route]]
path = '^/_matrix/client/v3/rooms/[^/]+/messages$'
methods = ["GET"]
upstream = "a"

[[homeserver.route]]
path = '^/_matrix/client/v3/rooms/'
upstream = "b"

[[homeserver.route]]
path = '^/_matrix/client/v3/rooms/[^/]+/state$'
upstream = "a"

[[homeserver.route]]
path = '^/_matrix/media/v3/download/%21'
upstream = "a"

[[homeserver.route]]
path = '^/_matrix/client/v3/login$'
methods = ["POST"]
upstream = "main"

[[homeserver.route]]
path = '^/_synapse/admin/'
upstream = "a"
"#,
        a = a.url(),
        b = b.url()
    );
    let m = Myelin::start(&bin(), &f.dir, &f.config(&main.url(), &pools, ""));
    let addr = m.only_addr();
    let cases: &[(&str, &str, &str)] = &[
        (
            "GET",
            "/_matrix/client/v3/rooms/!r:example.test/messages?dir=b",
            "a",
        ),
        // the method does not match the first rule: the next that matches wins
        (
            "PUT",
            "/_matrix/client/v3/rooms/!r:example.test/messages",
            "b",
        ),
        // the first match wins, even over a more specific later rule
        ("GET", "/_matrix/client/v3/rooms/!r:example.test/state", "b"),
        (
            "GET",
            "/_matrix/client/v3/rooms/%21r%3Aexample.test/messages",
            "a",
        ),
        // the raw path: "%21" matches, "!" does not
        ("GET", "/_matrix/media/v3/download/%21x", "a"),
        ("GET", "/_matrix/media/v3/download/!x", "main"),
        ("POST", "/_matrix/client/v3/login", "main"),
        ("GET", "/_matrix/client/versions", "main"),
    ];
    for (method, target, want) in cases {
        let resp = ask(&f, addr, None, method, target, &[], "").await;
        assert_eq!(served_by(&resp), *want, "{method} {target}");
        assert_eq!(resp.json()["target"], *target, "the request-target changed");
    }
    // a route does not open what is not served, nor the admin API to who may not reach it
    let resp = ask(
        &f,
        addr,
        None,
        "GET",
        "/_synapse/admin/v1/server_version",
        &[],
        "",
    )
    .await;
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert_eq!(a.count("/_synapse/"), 0);
    // the access log names the pool and the server
    let log = m.access_log();
    let media = log
        .iter()
        .find(|v| v["path"] == "/_matrix/media/v3/download/%21x")
        .expect("access log event");
    assert_eq!(media["pool"], "a");
    assert_eq!(media["upstream"], a.url());
}

/// A Synapse-style access token of `user` (two calls give two tokens of one user).
fn token(user: &str, device: usize) -> String {
    let b64: String = user.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    format!("syt_{b64}_{:020}_{device:06}", device * 7919)
}

/// Each balance mode's request for key `i` (variant `v` spells the same key another way).
async fn keyed(f: &Fixture, addr: SocketAddr, mode: &str, i: usize, v: usize) -> String {
    let resp = match mode {
        "user" => {
            let t = token(&format!("user{i}"), v);
            if v.is_multiple_of(2) {
                let auth = format!("Bearer {t}");
                ask(
                    f,
                    addr,
                    None,
                    "GET",
                    "/_matrix/client/v3/sync",
                    &[("Authorization", &auth)],
                    "",
                )
                .await
            } else {
                let target = format!("/_matrix/client/v3/sync?since=s{v}&access_token={t}");
                ask(f, addr, None, "GET", &target, &[], "").await
            }
        }
        "room" => {
            let room = if v.is_multiple_of(2) {
                format!("!room{i}:example.test")
            } else {
                format!("%21room{i}%3Aexample.test")
            };
            let target = format!("/_matrix/client/v3/rooms/{room}/messages?from=t{v}");
            ask(f, addr, None, "GET", &target, &[], "").await
        }
        "origin" => {
            let auth = format!(
                "X-Matrix origin=\"server{i}.test\",destination=\"example.test\",key=\"ed25519:k{v}\",sig=\"s{v}\""
            );
            let target = format!("/_matrix/federation/v1/send/txn{v}");
            ask(
                f,
                addr,
                None,
                "PUT",
                &target,
                &[("Authorization", &auth)],
                "{}",
            )
            .await
        }
        "ip" => {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 10 + i as u8));
            let target = format!("/_matrix/client/v3/profile/@u{v}:example.test");
            ask(f, addr, Some(ip), "GET", &target, &[], "").await
        }
        other => panic!("{other}"),
    };
    served_by(&resp)
}

const MODES: [&str; 4] = ["user", "room", "origin", "ip"];
const KEYS: usize = 30;

fn balance_config(servers: &[&NamedUpstream]) -> String {
    let list = servers
        .iter()
        .map(|s| format!("\"{}\"", s.url()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = String::new();
    for mode in MODES.iter().chain(&["round_robin"]) {
        out.push_str(&format!(
            "[homeserver.upstreams.by_{mode}]\nservers = [{list}]\nbalance = \"{mode}\"\n\n"
        ));
    }
    for (path, pool) in [
        ("^/_matrix/client/v3/sync$", "user"),
        ("^/_matrix/client/v3/rooms/[^/]+/messages$", "room"),
        ("^/_matrix/federation/v1/send/", "origin"),
        ("^/_matrix/client/v3/profile/", "ip"),
        ("^/_matrix/client/v3/publicRooms$", "round_robin"),
    ] {
        out.push_str(&format!(
            "[[homeserver.route]]\npath = '{path}'\nupstream = \"by_{pool}\"\n\n"
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_balance_mode_is_sticky_spreads_and_moves_only_a_removed_servers_keys() {
    if !have_peers() {
        return;
    }
    let f = Fixture::new("routing-balance");
    let main = NamedUpstream::start(&f.dir, "main");
    let x = NamedUpstream::start(&f.dir, "x");
    let y = NamedUpstream::start(&f.dir, "y");
    let z = NamedUpstream::start(&f.dir, "z");
    let config = |servers: &[&NamedUpstream]| f.config(&main.url(), &balance_config(servers), "");
    let m = Myelin::start(&bin(), &f.dir, &config(&[&x, &y, &z]));
    let addr = m.only_addr();
    let started = Instant::now();

    // round robin: in turn
    let mut turns = Vec::new();
    for _ in 0..6 {
        turns.push(served_by(
            &ask(
                &f,
                addr,
                None,
                "GET",
                "/_matrix/client/v3/publicRooms",
                &[],
                "",
            )
            .await,
        ));
    }
    assert_eq!(
        turns[..3],
        turns[3..],
        "round robin is not in turn: {turns:?}"
    );
    let mut distinct = turns.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct, ["x", "y", "z"]);

    let mut owners: HashMap<&str, Vec<String>> = HashMap::new();
    for mode in MODES {
        let mut first = Vec::new();
        for i in 0..KEYS {
            let a = keyed(&f, addr, mode, i, 0).await;
            let b = keyed(&f, addr, mode, i, 1).await;
            assert_eq!(a, b, "{mode}: key {i} went to {a}, then to {b}");
            first.push(a);
        }
        for s in ["x", "y", "z"] {
            assert!(
                first.iter().any(|o| o == s),
                "{mode}: no key of {KEYS} on {s}: {first:?}"
            );
        }
        owners.insert(mode, first);
    }
    // without a key: round robin (no error)
    for _ in 0..3 {
        served_by(&ask(&f, addr, None, "GET", "/_matrix/client/v3/sync", &[], "").await);
    }

    // take z out of every pool
    assert!(m.reload(Some(&config(&[&x, &y]))), "{}", m.log_text());
    let z_before = z.requests().len();
    for mode in MODES {
        for (i, before) in owners[mode].iter().enumerate() {
            let now = keyed(&f, addr, mode, i, 2).await;
            if before == "z" {
                assert_ne!(now, "z");
            } else {
                assert_eq!(
                    &now, before,
                    "{mode}: key {i} moved although {before} stayed"
                );
            }
        }
    }
    assert_eq!(
        z.requests().len(),
        z_before,
        "a removed server got requests"
    );
    eprintln!("balance scenario took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_servers_are_skipped_and_unsent_requests_retried_once_on_another() {
    if !have_peers() {
        return;
    }
    let f = Fixture::new("routing-failover");
    let main = NamedUpstream::start(&f.dir, "main");
    let live = NamedUpstream::start(&f.dir, "live");
    let first = NamedUpstream::start(&f.dir, "first");
    let second = NamedUpstream::start(&f.dir, "second");
    let dead: Vec<String> = (0..4)
        .map(|_| format!("http://127.0.0.1:{}", myelin_e2e::free_port()))
        .collect();
    let pools = format!(
        r#"
[homeserver.upstreams.flaky]
servers = ["{d0}", "{live}"]

[homeserver.upstreams.all_dead]
servers = ["{d1}", "{d2}", "{d3}"]

[homeserver.upstreams.closing]
servers = ["{first}", "{second}"]

[[homeserver.route]]
path = '^/_matrix/client/v3/rooms/[^/]+/send/'
upstream = "flaky"

[[homeserver.route]]
path = '^/_matrix/client/v3/publicRooms$'
upstream = "all_dead"

[[homeserver.route]]
path = '^/_matrix/client/v3/_test/'
upstream = "closing"
"#,
        d0 = dead[0],
        d1 = dead[1],
        d2 = dead[2],
        d3 = dead[3],
        live = live.url(),
        first = first.url(),
        second = second.url(),
    );
    let m = Myelin::start(&bin(), &f.dir, &f.config(&main.url(), &pools, ""));
    let addr = m.only_addr();
    let send =
        |n: usize| format!("/_matrix/client/v3/rooms/!r:example.test/send/m.room.message/txn{n}");
    let body = r#"{"msgtype":"m.text","body":"hello"}"#;

    // round robin starts with the dead server: the request (and its body) goes to the live one
    let resp = ask(&f, addr, None, "PUT", &send(0), &[], body).await;
    assert_eq!(served_by(&resp), "live");
    assert_eq!(resp.json()["body_len"], body.len());
    let logs = m.logs();
    let failed = events(&logs, CANNOT_CONNECT);
    assert_eq!(failed.len(), 1, "{}", m.log_text());
    assert_eq!(failed[0]["server"], dead[0]);
    assert_eq!(failed[0]["retry"], true);
    // skipped from now on: no new attempt on it while its backoff runs
    for n in 1..6 {
        let resp = ask(&f, addr, None, "PUT", &send(n), &[], body).await;
        assert_eq!(served_by(&resp), "live");
    }
    assert_eq!(
        events(&m.logs(), CANNOT_CONNECT).len(),
        1,
        "{}",
        m.log_text()
    );
    let access = m.access_log();
    assert!(
        access
            .iter()
            .filter(|v| v["pool"] == "flaky")
            .all(|v| v["upstream"] == live.url())
    );
    // ... and tried again later (backoff 1 s), still retried on the live one
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut n = 6;
    let retried_later = loop {
        let resp = ask(&f, addr, None, "PUT", &send(n), &[], body).await;
        assert_eq!(served_by(&resp), "live");
        if events(&m.logs(), CANNOT_CONNECT).len() == 2 {
            break true;
        }
        n += 1;
        if n > 10 {
            break false;
        }
    };
    assert!(
        retried_later,
        "the dead server was never tried again: {}",
        m.log_text()
    );
    assert_eq!(
        live.count("/_matrix/client/v3/rooms/"),
        n + 1,
        "every request once"
    );

    // three dead servers: one retry, not more; Matrix JSON 502
    let skip = m.logs().len();
    let resp = ask(
        &f,
        addr,
        None,
        "GET",
        "/_matrix/client/v3/publicRooms",
        &[],
        "",
    )
    .await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(resp.json()["errcode"], "M_UNKNOWN");
    // the log lines reach the test through a pipe and a reader thread: wait for them a moment
    myelin_e2e::wait_until(Duration::from_secs(5), || {
        events(&m.logs()[skip..], CANNOT_CONNECT).len() >= 2
    });
    let logs = m.logs();
    let failed = events(&logs[skip..], CANNOT_CONNECT);
    assert_eq!(failed.len(), 2, "one attempt and one retry: {failed:?}");
    assert_ne!(failed[0]["server"], failed[1]["server"]);
    assert_eq!(failed[0]["retry"], true);
    assert_eq!(failed[1]["retry"], false);

    // the request reached a server that then dropped the connection: 502, never sent again
    let resp = ask(
        &f,
        addr,
        None,
        "POST",
        "/_matrix/client/v3/_test/close",
        &[],
        "{\"once\":1}",
    )
    .await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    let got = first.count("/_matrix/client/v3/_test/") + second.count("/_matrix/client/v3/_test/");
    assert_eq!(got, 1, "the request was sent {got} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_servers_out_and_back_and_stop_on_reload() {
    if !have_peers() {
        return;
    }
    let f = Fixture::new("routing-health");
    let main = NamedUpstream::start(&f.dir, "main");
    let ups: Vec<NamedUpstream> = ["x", "y", "z"]
        .iter()
        .map(|n| NamedUpstream::start(&f.dir, n))
        .collect();
    let config = |check: &str| {
        let list = ups
            .iter()
            .map(|s| format!("\"{}\"", s.url()))
            .collect::<Vec<_>>()
            .join(", ");
        f.config(
            &main.url(),
            &format!(
                "[homeserver.upstreams.sync]\nservers = [{list}]\nbalance = \"user\"\nhealth_check = \"{check}\"\nhealth_check_interval = \"200ms\"\nhealth_check_timeout = \"1s\"\n\n[[homeserver.route]]\npath = '^/_matrix/client/v3/sync$'\nupstream = \"sync\"\n"
            ),
            "",
        )
    };
    let m = Myelin::start(&bin(), &f.dir, &config("/health"));
    let addr = m.only_addr();
    assert!(
        wait_until(Duration::from_secs(5), || ups
            .iter()
            .all(|u| u.count("/health") >= 2)),
        "no health checks reached the servers"
    );
    let owners = |tag: usize| {
        let f = &f;
        async move {
            let mut out = Vec::new();
            for i in 0..KEYS {
                out.push(keyed(f, addr, "user", i, tag).await);
            }
            out
        }
    };
    let before = owners(0).await;
    let y = &ups[1];
    assert!(before.iter().any(|o| o == "y"), "{before:?}");

    // y fails its check: out of the pool, only its keys move
    y.set_healthy(false);
    let out = m.wait_log(Duration::from_secs(10), |v| {
        v["message"] == "upstream server failed its health check: out of the pool until it passes"
            && v["server"] == y.url()
    });
    assert!(out.is_some(), "{}", m.log_text());
    let y_requests = y.count("/_matrix/");
    let during = owners(1).await;
    for (i, (b, d)) in before.iter().zip(&during).enumerate() {
        if b == "y" {
            assert_ne!(d, "y", "key {i}");
        } else {
            assert_eq!(b, d, "key {i} moved although its server is healthy");
        }
    }
    assert_eq!(
        y.count("/_matrix/"),
        y_requests,
        "an unhealthy server got requests"
    );

    // it passes again: back in, every key where it was
    y.set_healthy(true);
    let back = m.wait_log(Duration::from_secs(10), |v| {
        v["message"] == "upstream server passed its health check: back in the pool"
            && v["server"] == y.url()
    });
    assert!(back.is_some(), "{}", m.log_text());
    assert_eq!(owners(2).await, before);

    // a reload replaces the checks: the old ones stop, none is left running
    assert!(
        m.reload(Some(&config("/health?after-reload"))),
        "{}",
        m.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(5), || ups
            .iter()
            .all(|u| u.count("/health?after-reload") >= 2)),
        "the new checks did not start"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old: Vec<usize> = ups.iter().map(|u| exact(u, "/health")).collect();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let later: Vec<usize> = ups.iter().map(|u| exact(u, "/health")).collect();
    assert_eq!(
        old, later,
        "the replaced configuration's health checks still run"
    );
    // twice the same reload: still one check per server and interval (no doubled tasks)
    assert!(m.reload(None));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n0 = exact(&ups[0], "/health?after-reload");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rate = exact(&ups[0], "/health?after-reload") - n0;
    assert!(
        (6..=14).contains(&rate),
        "{rate} checks in 2 s at a 200 ms interval"
    );
}

/// Requests whose target is exactly `target`.
fn exact(u: &NamedUpstream, target: &str) -> usize {
    u.requests()
        .iter()
        .filter(|l| l.split(' ').nth(1) == Some(target))
        .count()
}
