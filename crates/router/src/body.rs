//! Bodies on their way through: the client's request body (size-limited, with a stall timeout)
//! and the response body (the upstream's stream, or one Myelin wrote).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use tokio::time::{Instant, Sleep};

/// Boxed error type of bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request body was cut off.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("request body stalled for {0:?}")]
    Stalled(Duration),
    #[error("request body arrived at less than {min_rate} bytes/s over {window:?}")]
    TooSlow { min_rate: u64, window: Duration },
    #[error("request body: {0}")]
    Client(#[from] hyper::Error),
}

/// The client's request body as sent upstream: streamed, never buffered whole.
///
/// Two rules keep a client from holding a request open by sending its body slowly. Time counts
/// only while Myelin waits for the client (not while the upstream is slow to take the body):
/// - a wait longer than `window` (`body_read_timeout`) ends the request ([`BodyError::Stalled`]);
/// - each `window` of waiting must bring at least `min_rate` bytes per second
///   ([`BodyError::TooSlow`]), so a body trickled a byte at a time is cut too.
pub struct RequestBody {
    inner: Incoming,
    limit: u64,
    seen: u64,
    pace: Pace,
}

impl RequestBody {
    /// `min_rate` in bytes per second; 0 keeps only the stall rule.
    pub fn new(inner: Incoming, limit: u64, window: Duration, min_rate: u64) -> Self {
        RequestBody {
            inner,
            limit,
            seen: 0,
            pace: Pace::new(window, min_rate),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                this.seen += len;
                if this.seen > this.limit {
                    return Poll::Ready(Some(Err(BodyError::TooLarge { limit: this.limit })));
                }
                if let Err(e) = this.pace.arrived(len, Instant::now()) {
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Client(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.pace.waiting(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Some(Err(e))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The two rules of [`RequestBody`]: time spent waiting for the client, and bytes it brought,
/// in the current window.
struct Pace {
    window: Duration,
    min_rate: u64,
    /// Waiting time in this window, not counting the wait in progress.
    waited: Duration,
    bytes: u64,
    wait: Option<Wait>,
    timer: Option<Pin<Box<Sleep>>>,
}

/// A wait for the client in progress.
#[derive(Clone, Copy)]
struct Wait {
    started: Instant,
    /// Its time counts towards the current window from here (a window may end during a wait).
    counted_from: Instant,
}

impl Pace {
    fn new(window: Duration, min_rate: u64) -> Self {
        Pace {
            window,
            min_rate,
            waited: Duration::ZERO,
            bytes: 0,
            wait: None,
            timer: None,
        }
    }

    fn min_bytes(&self) -> u64 {
        (self.min_rate as f64 * self.window.as_secs_f64()) as u64
    }

    /// `len` bytes arrived at `now`.
    fn arrived(&mut self, len: u64, now: Instant) -> Result<(), BodyError> {
        if let Some(w) = self.wait.take() {
            self.waited += now.saturating_duration_since(w.counted_from);
        }
        self.bytes += len;
        if self.waited >= self.window {
            self.close_window()?;
        }
        Ok(())
    }

    /// Ends a window: too few bytes is an error, else a new window begins.
    fn close_window(&mut self) -> Result<(), BodyError> {
        if self.bytes == 0 {
            return Err(BodyError::Stalled(self.window));
        }
        if self.bytes < self.min_bytes() {
            return Err(BodyError::TooSlow {
                min_rate: self.min_rate,
                window: self.window,
            });
        }
        self.waited = Duration::ZERO;
        self.bytes = 0;
        Ok(())
    }

    /// The client has nothing for us now: arms the timer for the end of the window or of this
    /// wait, whichever comes first, and judges what is due.
    fn waiting(&mut self, cx: &mut Context<'_>) -> Result<(), BodyError> {
        loop {
            let now = Instant::now();
            let w = *self.wait.get_or_insert(Wait {
                started: now,
                counted_from: now,
            });
            let window_end = w.counted_from + self.window.saturating_sub(self.waited);
            let stall_end = w.started + self.window;
            let deadline = window_end.min(stall_end);
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            if deadline == stall_end {
                return Err(BodyError::Stalled(self.window));
            }
            // The window's waiting time is used up during this wait: judge it, go on in a new one.
            self.waited = self.window;
            self.close_window()?;
            self.wait = Some(Wait {
                started: w.started,
                counted_from: window_end,
            });
        }
    }
}

/// A response body: the upstream's, streamed as it arrives, or a small one of Myelin's own.
pub enum ProxyBody {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
}

impl ProxyBody {
    pub fn full(data: Bytes) -> Self {
        ProxyBody::Full(if data.is_empty() { None } else { Some(data) })
    }

    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }

    /// The upstream's body; a pause longer than `idle` while Myelin waits for more of it ends
    /// the response with an error (the client sees it cut, not hanging forever).
    pub fn upstream(body: crate::client::PooledBody, idle: Duration) -> Self {
        ProxyBody::Upstream(UpstreamBody {
            inner: body,
            idle,
            timer: None,
        })
    }
}

/// The upstream's response body with its idle timeout.
pub struct UpstreamBody {
    inner: crate::client::PooledBody,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

/// The upstream paused longer than `upstream_body_timeout` in the middle of its answer.
#[derive(Debug, thiserror::Error)]
#[error("the homeserver's response body stalled for {0:?}")]
pub struct UpstreamStalled(pub Duration);

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Upstream(up) => match Pin::new(&mut up.inner).poll_frame(cx) {
                Poll::Ready(f) => {
                    up.timer = None;
                    Poll::Ready(f.map(|r| r.map_err(|e| Box::new(e) as BoxError)))
                }
                Poll::Pending => {
                    let idle = up.idle;
                    let timer = up
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                    match timer.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            Poll::Ready(Some(Err(Box::new(UpstreamStalled(idle)) as BoxError)))
                        }
                        Poll::Pending => Poll::Pending,
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(d) => d.is_none(),
            ProxyBody::Upstream(up) => up.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            ProxyBody::Upstream(up) => up.inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    /// Waits (as the body does when the client has nothing) for `d` of paused time.
    async fn wait(p: &mut Pace, d: Duration) -> Result<(), BodyError> {
        let mut cx = Context::from_waker(Waker::noop());
        p.waiting(&mut cx)?;
        tokio::time::advance(d).await;
        p.waiting(&mut cx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_trickled_a_byte_a_second_is_cut_at_the_end_of_a_window() {
        let mut p = Pace::new(Duration::from_secs(2), 512);
        let mut cut = None;
        for second in 1..10 {
            if let Err(e) = wait(&mut p, Duration::from_secs(1)).await {
                cut = Some((second, e));
                break;
            }
            p.arrived(1, Instant::now())
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let (second, e) = cut.expect("cut");
        assert!(matches!(e, BodyError::TooSlow { min_rate: 512, .. }), "{e}");
        assert_eq!(second, 2, "at the end of the first window");
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_body_passes_window_after_window() {
        let mut p = Pace::new(Duration::from_secs(2), 512);
        for _ in 0..100 {
            wait(&mut p, Duration::from_millis(100)).await.unwrap();
            p.arrived(200, Instant::now()).unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_is_stalled_and_a_slow_upstream_does_not_count() {
        let mut p = Pace::new(Duration::from_secs(2), 512);
        wait(&mut p, Duration::from_millis(500)).await.unwrap();
        p.arrived(4096, Instant::now()).unwrap();
        // the upstream takes its time to read on: no waiting for the client, no judgement
        tokio::time::advance(Duration::from_secs(30)).await;
        p.arrived(4096, Instant::now()).unwrap();
        // then the client stops: a stall
        let e = wait(&mut p, Duration::from_secs(3)).await.unwrap_err();
        assert!(matches!(e, BodyError::Stalled(_)), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn no_minimum_rate_keeps_only_the_stall_rule() {
        let mut p = Pace::new(Duration::from_secs(2), 0);
        for _ in 0..20 {
            wait(&mut p, Duration::from_millis(1900)).await.unwrap();
            p.arrived(1, Instant::now()).unwrap();
        }
        assert!(wait(&mut p, Duration::from_secs(2)).await.is_err());
    }
}
