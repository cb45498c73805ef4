//! One connection: TLS handshake (with its time limit), then HTTP/2 or HTTP/1.1 until the client
//! leaves, the connection idles out, or shutdown asks it to finish.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::LazyConfigAcceptor;
use tracing::debug;

use crate::head_watch::HeadWatchIo;
use crate::linger::LingeringStream;
use crate::server::{ActiveGuard, Inner};
use crate::{ACME_TLS_ALPN, BoxError, ConnInfo, Handler, Limits};

pub(crate) async fn serve<H: Handler>(
    inner: Arc<Inner<H>>,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    tls: bool,
    listener: Arc<str>,
    guard: ActiveGuard<H>,
) {
    let _ = stream.set_nodelay(true);
    let limits = inner.limits.load_full();
    let mut stream = LingeringStream::new(stream, inner.tracker.clone());
    if !tls {
        let info = ConnInfo {
            peer,
            local,
            tls: false,
            sni: None,
            h2: false,
            listener,
        };
        stream.linger_on_close();
        serve_http(&inner, stream, info, &limits).await;
        // the connection lingers on in a task of its own, no longer counted in max_connections
        drop(guard);
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
    tls_stream.get_mut().0.linger_on_close();
    let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let info = ConnInfo {
        peer,
        local,
        tls: true,
        sni,
        h2,
        listener,
    };
    serve_http(&inner, tls_stream, info, &limits).await;
    drop(guard);
}

fn handshake_result(result: &'static str) {
    metrics::counter!("myelin_tls_handshakes_total", "result" => result).increment(1);
}

async fn serve_http<H, S>(inner: &Arc<Inner<H>>, io: S, info: ConnInfo, limits: &Limits)
where
    H: Handler,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let h2 = info.h2;
    let info = Arc::new(info);
    let activity = Arc::new(Activity::new(limits.h2_max_resets));
    let io = TokioIo::new(HeadWatchIo::new(io, activity.clone(), h2));
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
            limits,
            &info,
        )
        .await;
    } else {
        // No hyper header_read_timeout (it defaults to 30 s once a timer is set): hyper's runs
        // from the end of the previous response, so it would also close idle keep-alive
        // connections. `drive` times request heads instead, from their first byte.
        let mut b = http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_headers(limits.max_headers)
            .max_buf_size(limits.max_header_size.max(8192))
            .keep_alive(true)
            .half_close(false);
        drive(
            b.serve_connection(io, service),
            inner,
            &activity,
            limits,
            &info,
        )
        .await;
    }
}

/// Runs a connection until it ends, asking it to finish gracefully on shutdown or when idle,
/// and cutting it when a request head takes longer than `header_read_timeout` to arrive.
async fn drive<H, C>(
    conn: C,
    inner: &Arc<Inner<H>>,
    activity: &Activity,
    limits: &Limits,
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
            _ = activity.idle_expired(limits.idle_timeout), if !closing => {
                debug!(peer = %info.peer, "closing idle connection");
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = activity.resets_exceeded(), if info.h2 => {
                debug!(peer = %info.peer, limit = limits.h2_max_resets,
                    "too many HTTP/2 streams cancelled by the client; closing the connection");
                metrics::counter!("myelin_connections_cut_total", "reason" => "h2_resets").increment(1);
                conn.as_mut().graceful_shutdown();
                break;
            }
            _ = activity.head_expired(limits.header_read_timeout) => {
                debug!(peer = %info.peer, h2 = info.h2, timeout_s = limits.header_read_timeout.as_secs_f64(),
                    "request head not received in time; closing the connection");
                metrics::counter!("myelin_connections_cut_total", "reason" => "header_timeout").increment(1);
                return;
            }
        }
    }
    // Too many resets: the GOAWAY is queued; give it a moment to leave, then cut.
    let _ = tokio::time::timeout(Duration::from_millis(100), conn.as_mut()).await;
}

/// Requests in flight on one connection, since when it has had none, and since when a request
/// head has been arriving.
///
/// The request path only touches atomics: the watchers in [`drive`] sleep until the deadline
/// they last saw and look again when they wake, so a request never wakes the connection's task
/// on their account (a `Notify` per request cost more than the rest of the bookkeeping).
pub(crate) struct Activity {
    active: AtomicUsize,
    born: Instant,
    /// When the last request finished, in milliseconds after `born`.
    idle_since_ms: AtomicU64,
    /// When the request head now arriving began, in milliseconds after `born`, plus one; 0 when
    /// no head is arriving.
    head_since_ms: AtomicU64,
    /// Requests the client abandoned before their answer was complete (HTTP/2 RST_STREAM).
    resets: Mutex<Resets>,
    max_resets: u32,
    resets_exceeded: Notify,
}

/// Client-cancelled requests in the current window of [`RESET_WINDOW`].
struct Resets {
    window_start: Instant,
    count: u32,
    exceeded: bool,
}

/// The window `h2_max_resets` counts over.
pub(crate) const RESET_WINDOW: Duration = Duration::from_secs(10);

impl Activity {
    fn new(max_resets: u32) -> Self {
        let born = Instant::now();
        Activity {
            active: AtomicUsize::new(0),
            born,
            idle_since_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(0),
            resets: Mutex::new(Resets {
                window_start: born,
                count: 0,
                exceeded: false,
            }),
            max_resets,
            resets_exceeded: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn at_ms(&self, ms: u64) -> Instant {
        self.born + Duration::from_millis(ms)
    }

    /// The client abandoned a request before its answer was complete.
    fn reset_by_client(&self) {
        let mut r = self.resets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if now.duration_since(r.window_start) > RESET_WINDOW {
            r.window_start = now;
            r.count = 0;
        }
        r.count += 1;
        if r.count > self.max_resets && !r.exceeded {
            r.exceeded = true;
            drop(r);
            self.resets_exceeded.notify_one();
        }
    }

    /// Resolves once the client cancelled more than `max_resets` requests in one window.
    async fn resets_exceeded(&self) {
        self.resets_exceeded.notified().await;
    }

    fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.head_since_ms.store(0, Ordering::Release);
        ActivityGuard {
            activity: self.clone(),
            finished: AtomicBool::new(false),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// The first bytes of a request head arrived (nothing happens if one is already arriving).
    pub(crate) fn head_started(&self) {
        if self.head_since_ms.load(Ordering::Acquire) == 0 {
            let now = self.now_ms() + 1;
            let _ =
                self.head_since_ms
                    .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// The request head is complete.
    pub(crate) fn head_done(&self) {
        self.head_since_ms.store(0, Ordering::Release);
    }

    /// Resolves once a request head has been arriving for longer than `timeout`. With no head
    /// arriving it looks again every `timeout`: a head that starts in between is still cut at
    /// exactly its start plus `timeout`, since the watcher wakes before that.
    async fn head_expired(&self, timeout: Duration) {
        loop {
            let since = self.head_since_ms.load(Ordering::Acquire);
            if since == 0 {
                tokio::time::sleep(timeout).await;
                continue;
            }
            tokio::time::sleep_until(self.at_ms(since - 1) + timeout).await;
            if self.head_since_ms.load(Ordering::Acquire) == since {
                return;
            }
        }
    }

    /// Resolves once the connection has had no request in flight for `idle`. A request that
    /// ends while the watcher sleeps moves the deadline, which the watcher finds when it wakes;
    /// while requests are in flight it looks again every `idle`, so a connection that goes
    /// quiet then is closed between `idle` and twice `idle` after its last request.
    async fn idle_expired(&self, idle: Duration) {
        loop {
            if self.active.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(idle).await;
                continue;
            }
            let since = self.idle_since_ms.load(Ordering::Acquire);
            tokio::time::sleep_until(self.at_ms(since) + idle).await;
            if self.active.load(Ordering::Acquire) == 0
                && self.idle_since_ms.load(Ordering::Acquire) == since
            {
                return;
            }
        }
    }
}

/// One request in flight; it counts as abandoned by the client if it is dropped before its
/// response body was finished.
struct ActivityGuard {
    activity: Arc<Activity>,
    finished: AtomicBool,
}

impl ActivityGuard {
    fn finish(&self) {
        self.finished.store(true, Ordering::Relaxed);
    }
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        if !self.finished.load(Ordering::Relaxed) {
            self.activity.reset_by_client();
        }
        let a = &self.activity;
        if a.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            a.idle_since_ms.store(a.now_ms(), Ordering::Release);
        }
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
        let this = self.project();
        let frame = this.body.poll_frame(cx);
        // the end, or an error of the response's own (a homeserver that failed mid-body): either
        // way not a request the client abandoned
        if let Poll::Ready(None | Some(Err(_))) = frame {
            this._guard.finish();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        let end = self.body.is_end_stream();
        if end {
            self._guard.finish();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
