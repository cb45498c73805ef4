//! The HTTP/1.1 client to one upstream server: hyper's connection-level client with a small pool
//! of kept-alive connections of its own.
//!
//! hyper-util's general-purpose client keys its pool by scheme and authority in a hash map, boxes
//! every request future and races checkout against connect; one server and one protocol need
//! none of that. A connection goes back to the pool when the response body has been read to its
//! end (hyper keeps the connection only then); a request that was never written to a pooled
//! connection which turned out to be closed is sent again on a new one.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};

use crate::retry::RetryableBody;
use crate::upstream::{UpstreamAddr, UpstreamIo};

/// How long an unused connection stays in the pool.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per server.
const MAX_IDLE: usize = 512;
/// TCP keep-alive probes on upstream connections.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Why an exchange with the upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing was sent: the server could not be reached.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// The request may have reached the server.
    #[error("{0}")]
    Http(#[source] hyper::Error),
}

impl ClientError {
    pub fn is_connect(&self) -> bool {
        matches!(self, ClientError::Connect { .. })
    }
}

type Sender = SendRequest<RetryableBody>;

struct Idle {
    sender: Sender,
    since: Instant,
}

/// Kept-alive connections to one server.
pub(crate) struct UpstreamClient {
    inner: Arc<Inner>,
}

struct Inner {
    addr: UpstreamAddr,
    label: String,
    connect_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
}

impl UpstreamClient {
    pub(crate) fn new(addr: &UpstreamAddr, connect_timeout: Duration) -> UpstreamClient {
        UpstreamClient {
            inner: Arc::new(Inner {
                addr: addr.clone(),
                label: addr.to_string(),
                connect_timeout,
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Sends `req` and returns the response head; the body streams from the returned response.
    pub(crate) async fn request(
        &self,
        mut req: Request<RetryableBody>,
    ) -> Result<Response<PooledBody>, ClientError> {
        loop {
            let (mut sender, pooled) = match self.inner.checkout().await {
                Some(s) => (s, true),
                None => (self.inner.connect().await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let pool = self.inner.clone();
                    return Ok(resp.map(|body| PooledBody {
                        inner: body,
                        release: Some((sender, pool)),
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // A kept-alive connection the server had closed: nothing was written.
                    Some(unsent) if pooled => req = unsent,
                    _ => return Err(ClientError::Http(e.into_error())),
                },
            }
        }
    }
}

impl Inner {
    /// The most recently used live connection, ready for a request.
    async fn checkout(&self) -> Option<Sender> {
        loop {
            let Idle { mut sender, since } = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()?;
            if sender.is_closed() || since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            // Just returned connections become ready as soon as their task has seen the
            // response end; a closed one errors.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    fn checkin(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() >= MAX_IDLE {
            // the oldest is at the bottom
            idle.remove(0);
        }
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    async fn connect(&self) -> Result<Sender, ClientError> {
        let fail = |source: io::Error| ClientError::Connect {
            addr: self.label.clone(),
            source,
        };
        let connecting = async {
            match &self.addr {
                UpstreamAddr::Tcp { host, port } => {
                    let s = TcpStream::connect((host.as_str(), *port)).await?;
                    s.set_nodelay(true)?;
                    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
                    socket2::SockRef::from(&s).set_tcp_keepalive(&keepalive)?;
                    Ok::<_, io::Error>(UpstreamIo::Tcp(TokioIo::new(s)))
                }
                UpstreamAddr::Unix(path) => UnixStream::connect(path)
                    .await
                    .map(|s| UpstreamIo::Unix(TokioIo::new(s)))
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
            }
        };
        let io = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| {
                fail(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", self.connect_timeout),
                ))
            })?
            .map_err(fail)?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| fail(io::Error::other(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// The upstream's response body; puts the connection back in the pool once read to its end.
pub struct PooledBody {
    inner: Incoming,
    release: Option<(Sender, Arc<Inner>)>,
}

impl PooledBody {
    fn done(&mut self) {
        if let Some((sender, pool)) = self.release.take() {
            pool.checkin(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.done(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.done(),
            Poll::Ready(Some(Err(_))) => this.release = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body with no content (204, 304, HEAD, Content-Length: 0) is never polled.
        if self.inner.is_end_stream() {
            self.done();
        }
    }
}
