//! Knows, from the bytes a client sends, when a request head is on its way, so that a client
//! that starts one and never finishes it (slowloris, a HEADERS block left open) is cut at
//! `header_read_timeout` while an idle keep-alive connection is left alone until `idle_timeout`.
//!
//! - HTTP/1.1: the first bytes read while the connection has no request in flight start a
//!   request head; the head is done when the handler is called.
//! - HTTP/2: the frame headers are followed (9 bytes each, after the 24-byte preface): a HEADERS
//!   or PUSH_PROMISE frame without END_HEADERS opens a header block, the CONTINUATION frame with
//!   END_HEADERS closes it. Nothing else may come in between (RFC 9113 §6.10), so an open block
//!   is a request that is not arriving.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn::Activity;

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_PUSH_PROMISE: u8 = 0x5;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_HEADERS: u8 = 0x4;

pin_project_lite::pin_project! {
    /// The client's stream, watched on its way into hyper.
    pub(crate) struct HeadWatchIo<S> {
        #[pin]
        inner: S,
        activity: Arc<Activity>,
        h2: Option<H2Frames>,
    }
}

impl<S> HeadWatchIo<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>, h2: bool) -> Self {
        HeadWatchIo {
            inner,
            activity,
            h2: h2.then(H2Frames::default),
        }
    }
}

impl<S: AsyncRead> AsyncRead for HeadWatchIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                match this.h2 {
                    None => {
                        if this.activity.in_flight() == 0 {
                            this.activity.head_started();
                        }
                    }
                    Some(frames) => {
                        for event in frames.feed(new) {
                            match event {
                                BlockEvent::Opened => this.activity.head_started(),
                                BlockEvent::Closed => this.activity.head_done(),
                            }
                        }
                    }
                }
            }
        }
        res
    }
}

impl<S: AsyncWrite> AsyncWrite for HeadWatchIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Where the reader is in the client's HTTP/2 byte stream.
#[derive(Default, Debug)]
pub(crate) struct H2Frames {
    preface_left: Option<usize>,
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    payload_left: usize,
    block_open: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BlockEvent {
    Opened,
    Closed,
}

impl H2Frames {
    /// Follows `bytes`; returns the header-block openings and closings they contain.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Vec<BlockEvent> {
        let mut events = Vec::new();
        let preface = self.preface_left.get_or_insert(PREFACE_LEN);
        if *preface > 0 {
            let n = (*preface).min(bytes.len());
            *preface -= n;
            bytes = &bytes[n..];
        }
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (FRAME_HEADER_LEN - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len < FRAME_HEADER_LEN {
                break;
            }
            self.header_len = 0;
            let h = self.header;
            self.payload_left =
                (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            let (kind, flags) = (h[3], h[4]);
            let ends = flags & FLAG_END_HEADERS != 0;
            match kind {
                TYPE_HEADERS | TYPE_PUSH_PROMISE if !ends && !self.block_open => {
                    self.block_open = true;
                    events.push(BlockEvent::Opened);
                }
                TYPE_CONTINUATION if ends && self.block_open => {
                    self.block_open = false;
                    events.push(BlockEvent::Closed);
                }
                _ => {}
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: usize) -> Vec<u8> {
        let mut f = vec![
            (payload >> 16) as u8,
            (payload >> 8) as u8,
            payload as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.resize(FRAME_HEADER_LEN + payload, 0xaa);
        f
    }

    #[test]
    fn header_blocks_open_and_close_across_any_read_boundaries() {
        let mut stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        stream.extend(frame(0x4, 0, 18)); // SETTINGS
        stream.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 30)); // a whole head
        stream.extend(frame(TYPE_HEADERS, 0, 16_384)); // a block left open...
        stream.extend(frame(TYPE_CONTINUATION, 0, 100));
        stream.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 7)); // ...closed
        stream.extend(frame(0x0, 0x1, 5)); // DATA
        stream.extend(frame(TYPE_HEADERS, 0, 3)); // open at the end
        for step in [1, 2, 9, 10, 4096, stream.len()] {
            let mut f = H2Frames::default();
            let events: Vec<BlockEvent> = stream.chunks(step).flat_map(|c| f.feed(c)).collect();
            assert_eq!(
                events,
                [BlockEvent::Opened, BlockEvent::Closed, BlockEvent::Opened],
                "read in pieces of {step}"
            );
        }
    }
}
