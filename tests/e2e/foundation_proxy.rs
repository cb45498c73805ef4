//! The proxy path through the binary: byte-exact request-targets over HTTP/1.1 and HTTP/2,
//! headers, Matrix JSON errors, streaming, well-known and host routing.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use myelin_e2e::Myelin;
use myelin_e2e::client::{self, read_response};
use myelin_e2e::upstream::RecordingUpstream;
use tokio::io::{AsyncWriteExt, BufReader};

use crate::common::{Fixture, bin};

/// Request-targets a generic proxy would "fix", each of which breaks a federation signature.
const TARGETS: &[&str] = &[
    "/_matrix/federation/v1/send/%2F%24%21%3A%40%2B%25%23",
    "/_matrix/federation/v1/query/profile?user_id=%40alice%3Aexample.test&field=displayname",
    "/_matrix//federation/v1/version",
    "/_matrix/federation/v1/../v1/version",
    "/_matrix/federation/v1/./version",
    "/_matrix/client/v3/rooms/!abc%3Aexample.test/send/m.room.message/txn+1",
    "/_matrix/key/v2/server?",
    "/_matrix/media/v3/download/example.test/abc?b=2&a=b+c&a=%20&a=1",
    "/_matrix/client/v3/user/%40a%25b%3Aexample.test/filter/%2e%2e",
    "/_matrix/client/v3/search?next_batch=a%2Bb%3D%3D",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_targets_reach_the_upstream_byte_for_byte_over_http1_and_http2() {
    let up = RecordingUpstream::start().await;
    let f = Fixture::new("byte-exact");
    let m = Myelin::start(&bin(), &f.dir, &f.config(&up.url(), "", ""));
    let addr = m.only_addr();

    for target in TARGETS {
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: example.test:8448\r\nAuthorization: X-Matrix origin=\"a.test\",destination=\"example.test\",key=\"ed25519:1\",sig=\"first\"\r\nAuthorization: X-Matrix origin=\"a.test\",destination=\"example.test\",key=\"ed25519:2\",sig=\"second\"\r\nX-Forwarded-For: 203.0.113.66\r\nX-Real-IP: 203.0.113.66\r\nConnection: close\r\n\r\n"
        );
        let resp = f
            .client()
            .h1(addr, "example.test", req.as_bytes())
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{target}: {}", resp.text());
        let seen = up.last();
        assert_eq!(seen.target, *target, "HTTP/1.1 target changed on the way");
        assert_eq!(
            seen.head.lines().next().unwrap(),
            format!("GET {target} HTTP/1.1"),
            "request line"
        );
        let auth = seen.header_values("authorization");
        assert_eq!(
            auth.len(),
            2,
            "both Authorization lines, unmerged: {auth:?}"
        );
        assert!(
            auth[0].ends_with("sig=\"first\"") && auth[1].ends_with("sig=\"second\""),
            "{auth:?}"
        );
        assert_eq!(
            seen.header_values("host"),
            ["example.test:8448"],
            "Host kept, port included"
        );
        assert_eq!(
            seen.header_values("x-forwarded-for"),
            ["127.0.0.1"],
            "client XFF replaced"
        );
        assert!(seen.header_values("x-real-ip").is_empty());
        assert_eq!(seen.header_values("x-forwarded-proto"), ["https"]);
    }

    for target in TARGETS {
        let uri: http::Uri = format!("https://example.test:8448{target}")
            .parse()
            .unwrap();
        assert_eq!(
            uri.path_and_query().unwrap().as_str(),
            *target,
            "the test client itself keeps the target"
        );
        let req = http::Request::get(uri)
            .header(
                "authorization",
                "X-Matrix origin=\"a.test\",key=\"ed25519:1\",sig=\"h2\"",
            )
            .header("x-forwarded-for", "203.0.113.66")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = f.h2_client().h2(addr, "example.test", req).await.unwrap();
        assert_eq!(resp.status(), 200, "{target}");
        let seen = up.last();
        assert_eq!(seen.target, *target, "HTTP/2 target changed on the way");
        assert!(
            seen.head.starts_with(&format!("GET {target} HTTP/1.1\r\n")),
            "HTTP/1.1 upstream"
        );
        assert_eq!(
            seen.header_values("host"),
            ["example.test:8448"],
            ":authority becomes Host"
        );
        assert_eq!(seen.header_values("x-forwarded-for"), ["127.0.0.1"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_myelin_answers_itself_are_matrix_json() {
    let up = RecordingUpstream::start().await;
    let f = Fixture::new("errors");
    let config = f.config(
        &up.url(),
        "max_body_size = \"1K\"\nupstream_timeout = \"1s\"",
        "",
    );
    let m = Myelin::start(&bin(), &f.dir, &config);
    let addr = m.only_addr();
    let c = f.client();

    // 413 by Content-Length, before anything reaches the homeserver
    let before = up.count();
    let r = c
        .h1(
            addr,
            "example.test",
            b"POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["errcode"], "M_TOO_LARGE");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(up.count(), before);

    // 504 when the homeserver takes longer than upstream_timeout
    let r = c
        .h1(
            addr,
            "example.test",
            &client::get("/_matrix/client/v3/delay/3000/sync", "example.test"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["errcode"], "M_UNKNOWN");

    // 404 M_UNRECOGNIZED for paths this server does not serve, never forwarded
    let r = c
        .h1(
            addr,
            "example.test",
            &client::get("/index.php", "example.test"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["errcode"], "M_UNRECOGNIZED");

    // 403 M_FORBIDDEN for the admin API without admin_allow, however it is spelled
    for p in [
        "/_synapse/admin/v1/server_version",
        "/_synapse/%61dmin/v1/server_version",
        "/_matrix/../_synapse/admin/v1/users",
    ] {
        let r = c
            .h1(addr, "example.test", &client::get(p, "example.test"))
            .await
            .unwrap();
        assert_eq!(r.status, 403, "{p}");
        assert_eq!(r.json()["errcode"], "M_FORBIDDEN");
    }

    // 421 for a host no homeserver serves
    let r = c
        .h1(
            addr,
            "example.test",
            &client::get("/_matrix/client/versions", "other.test"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 421);
    assert!(r.json()["error"].as_str().unwrap().contains("other.test"));
    assert_eq!(
        up.seen()
            .iter()
            .filter(|s| !s.target.contains("delay"))
            .count(),
        0,
        "nothing else reached the upstream"
    );

    // 502 when the homeserver is down
    drop(m);
    drop(up);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let f2 = Fixture::new("errors-502");
    let m = Myelin::start(
        &bin(),
        &f2.dir,
        &f2.config(&format!("http://{dead}"), "", ""),
    );
    let r = f2
        .client()
        .h1(
            m.only_addr(),
            "example.test",
            &client::get("/_matrix/client/versions", "example.test"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["errcode"], "M_UNKNOWN");
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("cannot reach the homeserver"),
        "{}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_is_forwarded_only_from_admin_allow() {
    let up = RecordingUpstream::start().await;
    let f = Fixture::new("admin");
    let config = f.config(&up.url(), "admin_allow = [\"127.0.0.2/32\"]", "");
    let m = Myelin::start(&bin(), &f.dir, &config);
    let addr = m.only_addr();
    // from 127.0.0.1: refused
    let r = f
        .client()
        .h1(
            addr,
            "example.test",
            &client::get("/_synapse/admin/v1/server_version", "example.test"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    // from 127.0.0.2: forwarded (a socket bound to that source address)
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let tcp = sock.connect(addr).await.unwrap();
    let cfg = {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::pem::PemObject::pem_slice_iter(f.ca.cert_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
    };
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect("example.test".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let mut s = BufReader::new(tls);
    s.get_mut()
        .write_all(&client::get(
            "/_synapse/admin/v1/server_version",
            "example.test",
        ))
        .await
        .unwrap();
    let r = read_response(&mut s).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header_values("x-forwarded-for"), ["127.0.0.2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways() {
    let up = RecordingUpstream::start().await;
    let f = Fixture::new("streaming");
    let m = Myelin::start(
        &bin(),
        &f.dir,
        &f.config(&up.url(), "max_body_size = \"64M\"", ""),
    );
    let addr = m.only_addr();

    // a 32 MiB chunked upload reaches the upstream whole
    let mut s = BufReader::new(f.client().connect(addr, "example.test").await.unwrap());
    s.get_mut()
        .write_all(b"POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let chunk = vec![b'm'; 1 << 20];
    for _ in 0..32 {
        s.get_mut()
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        s.get_mut().write_all(&chunk).await.unwrap();
        s.get_mut().write_all(b"\r\n").await.unwrap();
    }
    s.get_mut().write_all(b"0\r\n\r\n").await.unwrap();
    // tokio-rustls accepts a write into its buffer and returns when the socket is full: without
    // a flush the body's last TLS records could wait there forever while we read
    s.get_mut().flush().await.unwrap();
    let r = read_response(&mut s)
        .await
        .unwrap_or_else(|e| panic!("upload response: {e}\n{}", m.log_text()));
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.body_len, 32 << 20);
    assert!(
        seen.body_prefix.iter().all(|b| *b == b'm'),
        "body bytes unchanged"
    );
    assert_eq!(
        seen.header_values("content-type"),
        ["application/octet-stream"],
        "Content-Type not rewritten"
    );
    assert_eq!(r.json()["body_len"], 32 << 20);

    // a trickled response reaches the client before the upstream has finished it
    let mut s = BufReader::new(f.client().connect(addr, "example.test").await.unwrap());
    let started = Instant::now();
    s.get_mut()
        .write_all(&client::get(
            "/_matrix/client/v3/trickle/events",
            "example.test",
        ))
        .await
        .unwrap();
    let mut head = String::new();
    use tokio::io::AsyncBufReadExt;
    while !head.ends_with("\r\n\r\n") {
        let mut line = String::new();
        s.read_line(&mut line).await.unwrap();
        head.push_str(&line);
    }
    let mut size = String::new();
    s.read_line(&mut size).await.unwrap();
    let first = started.elapsed();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        first < Duration::from_millis(1200),
        "first chunk after {first:?}: the response was buffered"
    );

    // a long poll longer than the old 30 s habit of proxies is not cut (here 3 s; default limit 300 s)
    let r = f
        .client()
        .h1(
            addr,
            "example.test",
            &client::get(
                "/_matrix/client/v3/delay/3000/sync?timeout=3000",
                "example.test",
            ),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    // a large response streams out whole (64 MiB)
    let r = f
        .client()
        .h1(
            addr,
            "example.test",
            &client::get("/_matrix/media/v3/download/big/67108864/x", "example.test"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 64 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_known_documents_are_served_with_cors_and_never_forwarded() {
    let up = RecordingUpstream::start().await;
    let f = Fixture::new("well-known");
    let wk = r#"
[homeserver.well_known]
server = "matrix.example.test:443"
client_base_url = "https://matrix.example.test"
cache_max_age = "1h"
[homeserver.well_known.client_extra]
"org.matrix.msc3575.proxy" = { url = "https://sliding.example.test" }
[homeserver.well_known.support]
contacts = [{ role = "m.role.admin", matrix_id = "@admin:example.test" }]
"#;
    let mut config = f.config(&up.url(), wk, "");
    config.push_str(
        r#"
[[homeserver]]
server_name = "bare.test"
upstream = "http://127.0.0.1:9"
"#,
    );
    let m = Myelin::start(&bin(), &f.dir, &config);
    let addr = m.only_addr();
    let c = f.client();

    let r = c
        .h1(
            addr,
            "example.test",
            &client::get("/.well-known/matrix/server", "example.test"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!({"m.server": "matrix.example.test:443"})
    );
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("cache-control"), Some("max-age=3600"));
    assert_eq!(r.header("content-type"), Some("application/json"));

    let r = c
        .h1(
            addr,
            "example.test",
            &client::get("/.well-known/matrix/client", "example.test"),
        )
        .await
        .unwrap();
    assert_eq!(
        r.json()["m.homeserver"]["base_url"],
        "https://matrix.example.test"
    );
    assert_eq!(
        r.json()["org.matrix.msc3575.proxy"]["url"],
        "https://sliding.example.test"
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("X-Requested-With, Content-Type, Authorization")
    );

    let r = c
        .h1(
            addr,
            "example.test",
            &client::get("/.well-known/matrix/support", "example.test"),
        )
        .await
        .unwrap();
    assert_eq!(r.json()["contacts"][0]["matrix_id"], "@admin:example.test");

    let r = c
        .h1(
            addr,
            "example.test",
            b"OPTIONS /.well-known/matrix/client HTTP/1.1\r\nHost: example.test\r\nOrigin: https://app.element.io\r\nAccess-Control-Request-Method: GET\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, POST, PUT, DELETE, OPTIONS")
    );

    // the same documents by HTTP/2
    let req = http::Request::get("https://example.test/.well-known/matrix/server")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r2 = f.h2_client().h2(addr, "example.test", req).await.unwrap();
    assert_eq!(r2.json()["m.server"], "matrix.example.test:443");

    // a homeserver with no well-known configured: 404 with CORS, for the host that names it
    let r = c
        .h1(
            addr,
            "example.test",
            &client::get("/.well-known/matrix/server", "bare.test"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));

    assert_eq!(
        up.count(),
        0,
        "well-known requests must not reach the homeserver"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listener_redirects_to_https() {
    let up = RecordingUpstream::start().await;
    let f = Fixture::new("redirect");
    let config = f.config(
        &up.url(),
        "",
        "[[listener]]\nbind = \"127.0.0.1:0\"\ntls = false\nhttps_port = 8443\n",
    );
    let config = config.replacen("bind = \"127.0.0.1:0\"", "bind = \"127.0.0.2:0\"", 1);
    let m = Myelin::start(&bin(), &f.dir, &config);
    let plain = m.addr("127.0.0.1:0");
    let mut s = BufReader::new(tokio::net::TcpStream::connect(plain).await.unwrap());
    s.get_mut()
        .write_all(&client::get(
            "/_matrix/client/versions?x=%2F",
            "matrix.example.test",
        ))
        .await
        .unwrap();
    let r = read_response(&mut s).await.unwrap();
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://matrix.example.test:8443/_matrix/client/versions?x=%2F")
    );
    let mut s = BufReader::new(tokio::net::TcpStream::connect(plain).await.unwrap());
    s.get_mut()
        .write_all(&client::get("/", "evil.test"))
        .await
        .unwrap();
    let r = read_response(&mut s).await.unwrap();
    assert_eq!(r.status, 421, "no redirect for hosts we do not serve");
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_event_per_request_with_token_redacted() {
    let up = RecordingUpstream::start().await;
    let f = Fixture::new("access-log");
    let m = Myelin::start(&bin(), &f.dir, &f.config(&up.url(), "", ""));
    let r = f
        .client()
        .h1(
            m.only_addr(),
            "example.test",
            &client::get(
                "/_matrix/client/v3/sync?access_token=syt_secret_token&timeout=0",
                "example.test",
            ),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let event = m
        .wait_log(Duration::from_secs(5), |v| v["target"] == "myelin::access")
        .expect("an access-log event");
    assert_eq!(event["status"], 200);
    assert_eq!(event["method"], "GET");
    assert_eq!(event["host"], "example.test");
    assert_eq!(event["peer"], "127.0.0.1");
    assert_eq!(event["route"], "matrix");
    assert_eq!(event["upstream"], up.url().as_str());
    assert!(event["bytes"].as_u64().unwrap() > 0);
    assert!(event["duration_ms"].is_number());
    let path = event["path"].as_str().unwrap();
    assert!(
        path.contains("access_token=<redacted>") && !path.contains("syt_secret"),
        "{path}"
    );
    assert!(
        !m.log_text().contains("syt_secret_token"),
        "the token appears nowhere in the logs"
    );
    assert_eq!(m.access_log().len(), 1);
}
