//! The connection to a homeserver (or worker): TCP or a Unix socket, pooled and kept alive.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};

/// Where an upstream listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamAddr {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl UpstreamAddr {
    /// The scheme and authority used in request URIs (the pool key; a Unix socket gets a fixed name).
    pub(crate) fn authority(&self) -> String {
        match self {
            UpstreamAddr::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            UpstreamAddr::Tcp { host, port } => format!("{host}:{port}"),
            UpstreamAddr::Unix(_) => "unix-socket".into(),
        }
    }
}

impl std::fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamAddr::Tcp { .. } => write!(f, "http://{}", self.authority()),
            UpstreamAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The connector for one upstream address.
pub(crate) fn connector(addr: &UpstreamAddr, connect_timeout: Duration) -> UpstreamConnector {
    match addr {
        UpstreamAddr::Tcp { .. } => {
            let mut http = HttpConnector::new();
            http.set_nodelay(true);
            http.set_connect_timeout(Some(connect_timeout));
            http.set_keepalive(Some(Duration::from_secs(60)));
            UpstreamConnector::Tcp(http)
        }
        UpstreamAddr::Unix(path) => UpstreamConnector::Unix {
            path: Arc::new(path.clone()),
            timeout: connect_timeout,
        },
    }
}

/// Connects to a TCP or Unix-socket upstream.
#[derive(Clone)]
pub enum UpstreamConnector {
    Tcp(HttpConnector),
    Unix {
        path: Arc<PathBuf>,
        timeout: Duration,
    },
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<UpstreamIo, io::Error>> + Send>>;

impl tower_service::Service<Uri> for UpstreamConnector {
    type Response = UpstreamIo;
    type Error = io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        match self {
            UpstreamConnector::Tcp(c) => c.poll_ready(cx).map_err(io::Error::other),
            UpstreamConnector::Unix { .. } => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, uri: Uri) -> ConnectFuture {
        match self {
            UpstreamConnector::Tcp(c) => {
                let fut = c.call(uri);
                Box::pin(async move {
                    let io = fut.await.map_err(|e| {
                        // keep the OS error (refused, unreachable) visible to the caller
                        let msg = error_chain(&e);
                        io::Error::new(io::ErrorKind::ConnectionRefused, msg)
                    })?;
                    Ok(UpstreamIo::Tcp(io))
                })
            }
            UpstreamConnector::Unix { path, timeout } => {
                let path = path.clone();
                let timeout = *timeout;
                Box::pin(async move {
                    let stream = tokio::time::timeout(timeout, UnixStream::connect(path.as_path()))
                        .await
                        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
                        .map_err(|e| {
                            io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                        })?;
                    Ok(UpstreamIo::Unix(TokioIo::new(stream)))
                })
            }
        }
    }
}

/// The causes of an error, joined: "a: b: c".
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// A connection to an upstream.
pub enum UpstreamIo {
    Tcp(TokioIo<TcpStream>),
    Unix(TokioIo<UnixStream>),
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        match self {
            UpstreamIo::Tcp(s) => s.connected(),
            UpstreamIo::Unix(_) => Connected::new(),
        }
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Tcp(s) => s.is_write_vectored(),
            UpstreamIo::Unix(s) => s.is_write_vectored(),
        }
    }
}
