//! Lingering close: when Myelin ends a connection, it sends FIN and then reads (and throws away)
//! what the client still sends for a moment before it closes the socket.
//!
//! Closing a socket that has unread data makes the kernel answer with RST, and an RST makes the
//! client's kernel throw away data it received but the client has not read yet: the last
//! response (a 431, a `Connection: close` answer during a drain) would be lost. A request that a
//! keep-alive client sent just as the connection was closed is thus refused before it was read
//! (the client sees the connection end without an answer), never half answered.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

/// The longest a closed connection is read from.
pub(crate) const LINGER: Duration = Duration::from_secs(2);
/// The most bytes read from it.
const LINGER_MAX_BYTES: usize = 256 << 10;

/// The client's socket, handed to TLS and hyper. When they drop it after HTTP was spoken, the
/// socket is not closed at once but given to a lingering task (tracked, so a drain waits for it).
pub(crate) struct LingeringStream {
    stream: Option<TcpStream>,
    tracker: TaskTracker,
    linger: bool,
}

impl LingeringStream {
    pub(crate) fn new(stream: TcpStream, tracker: TaskTracker) -> Self {
        LingeringStream {
            stream: Some(stream),
            tracker,
            linger: false,
        }
    }

    /// HTTP is spoken on this connection from now on: close it lingering.
    pub(crate) fn linger_on_close(&mut self) {
        self.linger = true;
    }

    fn io(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Drop for LingeringStream {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            if self.linger && tokio::runtime::Handle::try_current().is_ok() {
                self.tracker.spawn(close(stream));
            }
        }
    }
}

/// Sends FIN (after whatever is still queued), then discards what arrives until the client
/// closes its side, [`LINGER`] passes, or [`LINGER_MAX_BYTES`] were read.
async fn close(mut stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    let mut read = 0;
    while read < LINGER_MAX_BYTES {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => read += n,
            _ => break,
        }
    }
}

impl AsyncRead for LingeringStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for LingeringStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().io() {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().io() {
            Ok(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }
}
