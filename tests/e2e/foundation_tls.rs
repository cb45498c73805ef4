//! TLS through the binary: certificates by SNI, ALPN, protocol versions, live certificate reload,
//! and the connection limits.

use std::time::{Duration, Instant};

use myelin_e2e::Myelin;
use myelin_e2e::client::{self, TlsClient, read_response};
use myelin_e2e::upstream::RecordingUpstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::common::{Fixture, bin, config_with_cert};

fn leaf_serial(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    let certs = tls
        .get_ref()
        .1
        .peer_certificates()
        .expect("server sent certificates");
    certs[0].as_ref().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_alpn_picks_the_protocol() {
    let up = RecordingUpstream::start().await;
    let f = Fixture::new("sni");
    let (b_cert, b_key) = f.ca.write_leaf(&f.dir, "b", &["b.test", "*.wild.test"]);
    let mut config = f.config(&up.url(), "", "");
    config.push_str(&format!(
        "\n[[certificate]]\ncert = \"{}\"\nkey = \"{}\"\n\n[[homeserver]]\nserver_name = \"b.test\"\nhosts = [\"x.wild.test\"]\nupstream = \"{}\"\n",
        b_cert.display(),
        b_key.display(),
        up.url()
    ));
    let m = Myelin::start(&bin(), &f.dir, &config);
    let addr = m.only_addr();
    let a_der = leaf_serial(&f.client().connect(addr, "example.test").await.unwrap());
    let b_der = leaf_serial(&f.client().connect(addr, "b.test").await.unwrap());
    let w_der = leaf_serial(&f.client().connect(addr, "x.wild.test").await.unwrap());
    assert_ne!(a_der, b_der, "SNI b.test gets b's certificate");
    assert_eq!(b_der, w_der, "a wildcard SAN serves x.wild.test");
    // the client verified each against its name, so these connections prove the right cert was chosen.
    // unknown SNI: the first certificate, which the client then rejects for that name
    let err = f.client().connect(addr, "unknown.test").await.unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    let unknown = TlsClient::new(&f.ca.cert_pem, &[]);
    assert!(unknown.connect(addr, "example.test").await.is_ok());

    // ALPN: h2 when offered, http/1.1 otherwise, and HTTP/1.1 with no ALPN at all
    let h2 = TlsClient::new(&f.ca.cert_pem, &["h2", "http/1.1"])
        .connect(addr, "example.test")
        .await
        .unwrap();
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let h1 = f.client().connect(addr, "example.test").await.unwrap();
    assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let none = unknown
        .h1(
            addr,
            "example.test",
            &client::get("/_matrix/client/versions", "example.test"),
        )
        .await
        .unwrap();
    assert_eq!(none.status, 200);

    // TLS 1.2 and 1.3 both work
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let c = TlsClient::with_versions(&f.ca.cert_pem, &["http/1.1"], &[v]);
        let s = c.connect(addr, "example.test").await.unwrap();
        assert_eq!(s.get_ref().1.protocol_version(), Some(v.version));
    }
    // TLS 1.1 and below are refused (openssl's client, when this openssl can still speak 1.1)
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "example.test",
            "-tls1_1",
        ])
        .stdin(std::process::Stdio::null())
        .output();
    if let Ok(out) = out {
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() || text.contains("Cipher is (NONE)"),
            "TLS 1.1 accepted:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_and_open_connections_keep_working() {
    let up = RecordingUpstream::start().await;
    let f = Fixture::new("reload-cert");
    let m = Myelin::start(&bin(), &f.dir, &f.config(&up.url(), "", ""));
    let addr = m.only_addr();

    // an open keep-alive connection, used once before the reload
    let old_tls = f.client().connect(addr, "example.test").await.unwrap();
    let old_der = leaf_serial(&old_tls);
    let mut old = BufReader::new(old_tls);
    let keep = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: example.test\r\n\r\n";
    old.get_mut().write_all(keep).await.unwrap();
    assert_eq!(read_response(&mut old).await.unwrap().status, 200);

    // new certificate files in place, then SIGHUP
    let leaf = f.ca.leaf(&[
        "example.test",
        "matrix.example.test",
        "localhost",
        "127.0.0.1",
    ]);
    std::fs::write(&f.cert, &leaf.cert_pem).unwrap();
    std::fs::write(&f.key, &leaf.key_pem).unwrap();
    assert!(m.reload(None), "reload accepted:\n{}", m.log_text());

    let new_der = leaf_serial(&f.client().connect(addr, "example.test").await.unwrap());
    assert_ne!(new_der, old_der, "a new handshake sees the new certificate");
    // the connection opened before keeps working
    old.get_mut().write_all(keep).await.unwrap();
    assert_eq!(read_response(&mut old).await.unwrap().status, 200);

    // a broken configuration is refused; the old one keeps serving
    let broken = std::fs::read_to_string(&m.config_path)
        .unwrap()
        .replace("upstream = ", "upstrem = ");
    assert!(!m.reload(Some(&broken)));
    assert!(
        m.log_text().contains("upstrem"),
        "the error names the bad key:\n{}",
        m.log_text()
    );
    let r = f
        .client()
        .h1(
            addr,
            "example.test",
            &client::get("/_matrix/client/versions", "example.test"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    old.get_mut().write_all(keep).await.unwrap();
    assert_eq!(read_response(&mut old).await.unwrap().status, 200);

    // a certificate file that is now unreadable is refused the same way
    let good = std::fs::read_to_string(&m.config_path)
        .unwrap()
        .replace("upstrem = ", "upstream = ");
    let missing = good.replace(&f.key.display().to_string(), "/nonexistent/example.key");
    assert!(!m.reload(Some(&missing)));
    assert!(m.log_text().contains("/nonexistent/example.key"));
    assert!(m.reload(Some(&good)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_listeners_and_homeservers() {
    let up = RecordingUpstream::start().await;
    let f = Fixture::new("reload-listeners");
    let m = Myelin::start(&bin(), &f.dir, &f.config(&up.url(), "", ""));
    let addr = m.only_addr();
    let port = myelin_e2e::free_port();
    let mut config = config_with_cert(&f.cert, &f.key, &up.url(), "", "");
    config.push_str(&format!(
        "\n[[listener]]\nbind = \"127.0.0.1:{port}\"\n\n[[homeserver]]\nserver_name = \"second.test\"\nupstream = \"{}\"\n",
        up.url()
    ));
    assert!(m.reload(Some(&config)), "{}", m.log_text());
    let second: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let r = f
        .client()
        .h1(
            second,
            "example.test",
            &client::get("/_matrix/client/versions", "second.test"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "new listener and new homeserver serve");
    let r = f
        .client()
        .h1(
            addr,
            "example.test",
            &client::get("/_matrix/client/versions", "example.test"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "the kept listener still serves");
    // remove the first listener
    let only_second = config.replacen("[[listener]]\nbind = \"127.0.0.1:0\"\n", "", 1);
    assert_ne!(only_second, config);
    assert!(m.reload(Some(&only_second)), "{}", m.log_text());
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "removed listener no longer accepts"
    );
    let r = f
        .client()
        .h1(
            second,
            "example.test",
            &client::get("/_matrix/client/versions", "second.test"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_are_enforced() {
    let up = RecordingUpstream::start().await;
    let f = Fixture::new("limits");
    let limits = r#"
[limits]
tls_handshake_timeout = "1s"
header_read_timeout = "2s"
idle_timeout = "2s"
max_header_size = "16K"
max_headers = 50
max_connections = 4
"#;
    let m = Myelin::start(&bin(), &f.dir, &f.config(&up.url(), "", limits));
    let addr = m.only_addr();

    // a client that never starts TLS is cut at the handshake timeout
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "cut after {took:?}"
    );

    // a header block over max_header_size: 431
    let big = format!(
        "GET /_matrix/client/versions HTTP/1.1\r\nHost: example.test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(32 << 10)
    );
    let r = f
        .client()
        .h1(addr, "example.test", big.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 431);
    // more headers than max_headers: 431
    let mut many = String::from("GET /_matrix/client/versions HTTP/1.1\r\nHost: example.test\r\n");
    for i in 0..80 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("Connection: close\r\n\r\n");
    let r = f
        .client()
        .h1(addr, "example.test", many.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 431);

    // headers trickled past header_read_timeout: the connection is closed
    let mut slow = BufReader::new(f.client().connect(addr, "example.test").await.unwrap());
    slow.get_mut()
        .write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: exa")
        .await
        .unwrap();
    let started = Instant::now();
    let res = read_response(&mut slow).await;
    let took = started.elapsed();
    assert!(
        res.map(|r| r.status == 408).unwrap_or(true),
        "no response but a timeout"
    );
    assert!(
        took < Duration::from_secs(6),
        "slow headers were cut after {took:?}"
    );

    // an idle keep-alive connection is closed after idle_timeout
    let mut ka = BufReader::new(f.client().connect(addr, "example.test").await.unwrap());
    ka.get_mut()
        .write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: example.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut ka).await.unwrap().status, 200);
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), ka.read_to_end(&mut rest)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "idle close after {took:?}"
    );

    // beyond max_connections, new connections are closed at once instead of queued
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(f.client().connect(addr, "example.test").await.unwrap());
    }
    let started = Instant::now();
    let refused = f.client().connect(addr, "example.test").await;
    assert!(refused.is_err(), "a fifth connection was served");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "refused quickly: {:?}",
        started.elapsed()
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = f
        .client()
        .h1(
            addr,
            "example.test",
            &client::get("/_matrix/client/versions", "example.test"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "served again once connections closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish() {
    let up = RecordingUpstream::start().await;
    let f = Fixture::new("drain");
    let mut m = Myelin::start(
        &bin(),
        &f.dir,
        &f.config(&up.url(), "", "[limits]\nshutdown_timeout = \"10s\"\n"),
    );
    let addr = m.only_addr();
    let client = f.client();
    let in_flight = tokio::spawn(async move {
        client
            .h1(
                addr,
                "example.test",
                &client::get("/_matrix/client/v3/delay/1500/sync", "example.test"),
            )
            .await
    });
    // wait until the request reached the upstream, then ask Myelin to stop
    assert!(myelin_e2e::wait_until(Duration::from_secs(5), || up
        .count()
        == 1));
    m.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connections once draining"
    );
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(r.status, 200, "the request in flight completed");
    let status = m.wait_exit(Duration::from_secs(10)).expect("myelin exited");
    assert!(status.success(), "{status}");
    assert!(m.log_text().contains("\"abandoned\":0"), "{}", m.log_text());
}
