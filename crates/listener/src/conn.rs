//! One connection: TLS handshake (with its time limit), then HTTP/2 or HTTP/1.1 until the client
//! leaves, the connection idles out, or shutdown asks it to finish.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::LazyConfigAcceptor;
use tracing::debug;

use crate::server::{ActiveGuard, Inner};
use crate::{ACME_TLS_ALPN, BoxError, ConnInfo, Handler, Limits};

pub(crate) async fn serve<H: Handler>(
    inner: Arc<Inner<H>>,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    tls: bool,
    listener: Arc<str>,
    _guard: ActiveGuard<H>,
) {
    let _ = stream.set_nodelay(true);
    let limits = inner.limits.load_full();
    if !tls {
        let info = ConnInfo {
            peer,
            local,
            tls: false,
            sni: None,
            h2: false,
            listener,
        };
        serve_http(&inner, TokioIo::new(stream), info, &limits).await;
        return;
    }

    let handshake = tokio::time::timeout(limits.tls_handshake_timeout, async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
        let hello = start.client_hello();
        let sni: Option<Arc<str>> = hello.server_name().map(Arc::from);
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        let config = if acme {
            inner.tls.challenge.clone()
        } else {
            inner.tls.main.clone()
        };
        let known = sni
            .as_deref()
            .is_none_or(|n| inner.store.current().serves(n));
        let tls = start.into_stream(config).await?;
        Ok::<_, std::io::Error>((tls, sni, acme, known))
    })
    .await;

    let (mut tls_stream, sni, acme, known) = match handshake {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            handshake_result("error");
            debug!(peer = %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            handshake_result("timeout");
            debug!(peer = %peer, "TLS handshake timed out");
            return;
        }
    };
    handshake_result(if known { "ok" } else { "unknown_sni" });
    if acme {
        // TLS-ALPN-01: the handshake itself was the answer.
        debug!(peer = %peer, sni = sni.as_deref().unwrap_or(""), "answered an acme-tls/1 challenge handshake");
        let _ = tls_stream.shutdown().await;
        return;
    }
    let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let info = ConnInfo {
        peer,
        local,
        tls: true,
        sni,
        h2,
        listener,
    };
    serve_http(&inner, TokioIo::new(tls_stream), info, &limits).await;
}

fn handshake_result(result: &'static str) {
    metrics::counter!("myelin_tls_handshakes_total", "result" => result).increment(1);
}

async fn serve_http<H, S>(inner: &Arc<Inner<H>>, io: TokioIo<S>, info: ConnInfo, limits: &Limits)
where
    H: Handler,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let h2 = info.h2;
    let info = Arc::new(info);
    let activity = Arc::new(Activity::new());
    let handler = inner.handler.clone();
    let svc_activity = activity.clone();
    let svc_info = info.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let guard = svc_activity.begin();
        let fut = handler.call(req, &svc_info);
        async move {
            let resp = fut.await;
            Ok::<_, Infallible>(resp.map(|body| TrackedBody {
                body,
                _guard: guard,
            }))
        }
    });

    if h2 {
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_header_list_size(limits.max_header_size as u32)
            .keep_alive_interval(Some(Duration::from_secs(60)))
            .keep_alive_timeout(Duration::from_secs(20))
            .max_pending_accept_reset_streams(Some(50))
            .max_local_error_reset_streams(Some(256))
            .adaptive_window(true);
        drive(
            b.serve_connection(io, service),
            inner,
            &activity,
            limits.idle_timeout,
            &info,
        )
        .await;
    } else {
        let mut b = http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_headers(limits.max_headers)
            .max_buf_size(limits.max_header_size.max(8192))
            .keep_alive(true)
            .half_close(false);
        drive(
            b.serve_connection(io, service),
            inner,
            &activity,
            limits.idle_timeout,
            &info,
        )
        .await;
    }
}

/// Runs a connection until it ends, asking it to finish gracefully on shutdown or when idle.
async fn drive<H, C>(
    conn: C,
    inner: &Arc<Inner<H>>,
    activity: &Activity,
    idle: Duration,
    info: &ConnInfo,
) where
    H: Handler,
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(conn);
    let mut closing_rx = inner.closing.clone();
    let mut closing = *closing_rx.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    debug!(peer = %info.peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = closing_rx.wait_for(|c| *c), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = activity.idle_expired(idle), if !closing => {
                debug!(peer = %info.peer, "closing idle connection");
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Requests in flight on one connection, and since when it has had none. Requests only touch
/// two atomics; the idle watcher wakes on its own deadline, not on every request.
struct Activity {
    active: AtomicUsize,
    born: Instant,
    /// When the last request finished, in milliseconds after `born`.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            active: AtomicUsize::new(0),
            born: Instant::now(),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActivityGuard(self.clone())
    }

    fn idle_since(&self) -> Instant {
        self.born + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
    }

    /// Resolves once the connection has had no request in flight for `idle`. While requests
    /// are in flight it looks again every `idle`, so a connection that goes quiet is closed
    /// between `idle` and twice `idle` after its last request.
    async fn idle_expired(&self, idle: Duration) {
        loop {
            let deadline = if self.active.load(Ordering::Acquire) == 0 {
                self.idle_since() + idle
            } else {
                Instant::now() + idle
            };
            tokio::time::sleep_until(deadline).await;
            if self.active.load(Ordering::Acquire) == 0
                && Instant::now() >= self.idle_since() + idle
            {
                return;
            }
        }
    }
}

struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let a = &self.0;
        // Mark the time first, then leave: the watcher never sees "idle" with a stale time.
        let ms = a.born.elapsed().as_millis() as u64;
        a.idle_since_ms.fetch_max(ms, Ordering::AcqRel);
        a.active.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until it is finished or dropped.
    struct TrackedBody<B> {
        #[pin]
        body: B,
        _guard: ActivityGuard,
    }
}

impl<B> hyper::body::Body for TrackedBody<B>
where
    B: hyper::body::Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
