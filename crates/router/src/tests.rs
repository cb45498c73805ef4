//! The router between a loopback front and a loopback upstream (hyper on both sides).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

#[derive(Clone, Debug, Default)]
struct Seen {
    target: String,
    headers: Vec<(String, String)>,
    body_len: usize,
}

/// An upstream that records what reached it and answers 200 `{"ok":true}`.
async fn recording_upstream(delay: Duration) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let target = req.uri().to_string();
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        tokio::time::sleep(delay).await;
                        log.lock().unwrap().push(Seen {
                            target,
                            headers,
                            body_len: body,
                        });
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                            b"{\"ok\":true}",
                        ))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// A front that hands every request to the router, as the binary does.
async fn front(router: Arc<HomeserverRouter>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, peer)) = listener.accept().await else {
                return;
            };
            let router = router.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let router = router.clone();
                    let ctx = ClientContext {
                        ip: peer.ip(),
                        https: true,
                        h2: false,
                    };
                    async move { Ok::<_, Infallible>(router.handle(req, ctx).await.0) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn settings(upstream: SocketAddr) -> HomeserverSettings {
    HomeserverSettings {
        server_name: "example.test".into(),
        upstream: UpstreamAddr::Tcp {
            host: upstream.ip().to_string(),
            port: upstream.port(),
        },
        max_body_size: 1024,
        upstream_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        body_read_timeout: Duration::from_secs(5),
        body_min_rate: 0,
        upstream_body_timeout: Duration::from_secs(5),
        admin_allow: Vec::new(),
        forward_prefixes: Vec::new(),
        pools: Vec::new(),
        routes: Vec::new(),
    }
}

/// Sends raw bytes, returns (status, body) of the response.
async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn forwards_target_and_replaces_forwarded_for() {
    let (up, seen) = recording_upstream(Duration::ZERO).await;
    let front = front(Arc::new(HomeserverRouter::new(settings(up)).unwrap())).await;
    let (status, body) = raw(
        front,
        b"GET /_matrix/key/v2/query/%2F%40a//b?x=1+2 HTTP/1.1\r\nHost: example.test\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = seen.lock().unwrap()[0].clone();
    assert_eq!(seen.target, "/_matrix/key/v2/query/%2F%40a//b?x=1+2");
    let xff: Vec<_> = seen
        .headers
        .iter()
        .filter(|(k, _)| k == "x-forwarded-for")
        .collect();
    assert_eq!(xff.len(), 1);
    assert_eq!(xff[0].1, "127.0.0.1");
    assert!(
        seen.headers
            .iter()
            .any(|(k, v)| k == "host" && v == "example.test")
    );
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_json() {
    let (up, seen) = recording_upstream(Duration::ZERO).await;
    let front = front(Arc::new(HomeserverRouter::new(settings(up)).unwrap())).await;
    let (status, body) = raw(
        front,
        b"POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 413);
    assert!(body.contains("M_TOO_LARGE"), "{body}");
    // chunked: the limit is found while streaming
    let mut req = b"POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..3 {
        req.extend_from_slice(b"200\r\n");
        req.extend_from_slice(&[b'x'; 512]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let (status, body) = raw(front, &req).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("M_TOO_LARGE"), "{body}");
    // under the limit, chunked, it streams through
    let mut req = b"POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    req.extend_from_slice(b"200\r\n");
    req.extend_from_slice(&[b'x'; 512]);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    let (status, _) = raw(front, &req).await;
    assert_eq!(status, 200);
    assert_eq!(seen.lock().unwrap().last().unwrap().body_len, 512);
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504() {
    // a port with nothing behind it
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let front1 = front(Arc::new(HomeserverRouter::new(settings(dead)).unwrap())).await;
    let (status, body) = raw(
        front1,
        b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 502);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["errcode"], "M_UNKNOWN");
    assert!(
        v["error"].as_str().unwrap().contains("cannot reach"),
        "{body}"
    );

    let (slow, _) = recording_upstream(Duration::from_secs(3)).await;
    let mut s = settings(slow);
    s.upstream_timeout = Duration::from_millis(300);
    let front2 = front(Arc::new(HomeserverRouter::new(s).unwrap())).await;
    let (status, body) = raw(
        front2,
        b"GET /_matrix/client/v3/sync HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("did not answer"), "{body}");
}

#[tokio::test]
async fn admin_needs_an_allowed_address_and_unknown_paths_are_404() {
    let (up, seen) = recording_upstream(Duration::ZERO).await;
    let front1 = front(Arc::new(HomeserverRouter::new(settings(up)).unwrap())).await;
    for path in [
        "/_synapse/admin/v1/server_version",
        "/_synapse/%61dmin/v1/server_version",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (status, body) = raw(front1, req.as_bytes()).await;
        assert_eq!(status, 403, "{path}");
        assert!(body.contains("M_FORBIDDEN"));
    }
    let (status, body) = raw(
        front1,
        b"GET /wp-login.php HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404);
    assert!(body.contains("M_UNRECOGNIZED"));
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );

    let mut s = settings(up);
    s.admin_allow = vec!["127.0.0.0/8".parse().unwrap()];
    let front2 = front(Arc::new(HomeserverRouter::new(s).unwrap())).await;
    let (status, _) = raw(
        front2,
        b"GET /_synapse/admin/v1/server_version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn unix_socket_upstream() {
    let dir = std::env::temp_dir().join(format!("myelin-router-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hs.sock");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let Ok((s, _)) = listener.accept().await else {
            return;
        };
        let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
            let body = format!("{{\"path\":\"{}\"}}", req.uri());
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
        });
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(s), svc)
            .await;
    });
    let mut s = settings("127.0.0.1:1".parse().unwrap());
    s.upstream = UpstreamAddr::Unix(path.clone());
    let front = front(Arc::new(HomeserverRouter::new(s).unwrap())).await;
    let (status, body) = raw(
        front,
        b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("/_matrix/client/versions"), "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn tcp(addr: SocketAddr) -> UpstreamAddr {
    UpstreamAddr::Tcp {
        host: addr.ip().to_string(),
        port: addr.port(),
    }
}

/// A port with nothing listening on it.
async fn dead_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

fn pool(name: &str, servers: &[SocketAddr], balance: Balance) -> PoolSettings {
    PoolSettings {
        name: name.into(),
        servers: servers.iter().map(|a| tcp(*a)).collect(),
        balance,
        health_check: None,
    }
}

fn route(path: &str, methods: &[&str], upstream: &str) -> RouteSettings {
    RouteSettings {
        path: path.into(),
        methods: methods.iter().map(|m| m.parse().unwrap()).collect(),
        upstream: upstream.into(),
    }
}

#[tokio::test]
async fn routes_pick_pools_and_the_rest_goes_to_main() {
    let (main, main_seen) = recording_upstream(Duration::ZERO).await;
    let (w, w_seen) = recording_upstream(Duration::ZERO).await;
    let mut s = settings(main);
    s.pools = vec![pool("sync", &[w], Balance::User)];
    s.routes = vec![route("^/_matrix/client/v3/sync$", &["GET"], "sync")];
    let front = front(Arc::new(HomeserverRouter::new(s).unwrap())).await;
    for req in [
        "GET /_matrix/client/v3/sync?since=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "POST /_matrix/client/v3/sync HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        "GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ] {
        assert_eq!(raw(front, req.as_bytes()).await.0, 200);
    }
    let w_seen = w_seen.lock().unwrap().clone();
    assert_eq!(w_seen.len(), 1);
    assert_eq!(w_seen[0].target, "/_matrix/client/v3/sync?since=1");
    assert_eq!(
        main_seen.lock().unwrap().len(),
        2,
        "POST and the unmatched path"
    );
}

#[tokio::test]
async fn a_refused_connection_is_retried_once_on_another_server() {
    let (live, seen) = recording_upstream(Duration::ZERO).await;
    let dead1 = dead_port().await;
    let (d2, d3, d4) = (dead_port().await, dead_port().await, dead_port().await);
    let mut s = settings(live);
    s.pools = vec![
        pool("a", &[dead1, live], Balance::RoundRobin),
        pool("b", &[d2, d3, d4], Balance::RoundRobin),
    ];
    s.routes = vec![route("^/a/", &[], "a"), route("^/b/", &[], "b")];
    s.forward_prefixes = vec!["/a/".into(), "/b/".into()];
    let router = Arc::new(HomeserverRouter::new(s).unwrap());
    let front = front(router.clone()).await;
    // round robin starts with the first server, which is dead: the body goes to the second
    let (status, body) = raw(
        front,
        b"PUT /a/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen.lock().unwrap()[0].body_len, 5);
    // the dead one is skipped now: the next requests go to the live one at once
    for _ in 0..3 {
        let (status, _) = raw(
            front,
            b"GET /a/y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 200);
    }
    let failures = |pool: usize| -> Vec<u32> {
        router.pools[pool]
            .servers
            .iter()
            .map(|s| s.failures.load(Ordering::Relaxed))
            .collect()
    };
    assert_eq!(failures(1), [1, 0], "the dead server was tried once only");
    // three dead servers: one retry only, so two of them are tried
    let (status, body) = raw(
        front,
        b"GET /b/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("cannot reach"), "{body}");
    assert_eq!(failures(2).iter().sum::<u32>(), 2, "{:?}", failures(2));
}

#[tokio::test]
async fn a_request_that_reached_a_server_is_not_sent_again() {
    // accepts, reads the request head, closes without answering
    let closer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closer_addr = closer.local_addr().unwrap();
    let got = Arc::new(Mutex::new(0usize));
    let got2 = got.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = closer.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            *got2.lock().unwrap() += 1;
        }
    });
    let (live, seen) = recording_upstream(Duration::ZERO).await;
    let mut s = settings(live);
    s.pools = vec![pool("a", &[closer_addr, live], Balance::RoundRobin)];
    s.routes = vec![route("^/_matrix/", &[], "a")];
    let front = front(Arc::new(HomeserverRouter::new(s).unwrap())).await;
    let (status, body) = raw(
        front,
        b"PUT /_matrix/client/v3/rooms/!r:x/send/m.room.message/t1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(*got.lock().unwrap(), 1);
    assert!(
        seen.lock().unwrap().is_empty(),
        "the request was sent twice"
    );
}
