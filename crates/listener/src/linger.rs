//! Lingering close: when Myelin ends a connection, it sends FIN and then reads (and throws away)
//! what the client still sends for a moment before it closes the socket.
//!
//! Closing a socket that has unread data makes the kernel answer with RST, and an RST makes the
//! client's kernel throw away data it received but the client has not read yet: the last
//! response (a 431, a `Connection: close` answer during a drain) would be lost. A request that a
//! keep-alive client sent just as the connection was closed is thus refused before it was read
//! (the client sees the connection end without an answer), never half answered.

use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The longest a closed connection is read from.
pub(crate) const LINGER: Duration = Duration::from_secs(2);
/// The most bytes read from it.
const LINGER_MAX_BYTES: usize = 256 << 10;

/// A second handle on a connection's socket, taken before the connection is handed to TLS and
/// hyper, so that the socket outlives them.
pub(crate) struct Linger(Option<OwnedFd>);

impl Linger {
    pub(crate) fn new(stream: &TcpStream) -> Self {
        Linger(stream.as_fd().try_clone_to_owned().ok())
    }

    /// Sends FIN (after whatever is still queued), then discards what arrives until the client
    /// closes its side, [`LINGER`] passes, or [`LINGER_MAX_BYTES`] were read.
    pub(crate) async fn close(self) {
        let Some(fd) = self.0 else { return };
        let std = std::net::TcpStream::from(fd);
        let _ = std.shutdown(Shutdown::Write);
        if std.set_nonblocking(true).is_err() {
            return;
        }
        let Ok(mut stream) = TcpStream::from_std(std) else {
            return;
        };
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
}
