//! A request body that can be sent again when the first server could not even be connected to:
//! it stays in a shared slot until the connection is up and the client starts reading it. If the
//! connection fails first, the body is still there, untouched, for another server. Once read, it
//! is gone and the request cannot be retried (it may have reached the server).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::body::{BodyError, RequestBody};

type Slot = Arc<Mutex<Option<RequestBody>>>;

/// The body handed to the upstream client.
pub struct RetryableBody {
    slot: Slot,
    active: Option<RequestBody>,
    /// What the body said before it was taken (hyper asks before sending, to choose between
    /// `Content-Length`, chunked or no body: it must see the client's body as it is).
    end: bool,
    hint: SizeHint,
}

/// The other end of the slot: gives the body back if nothing of it was sent.
pub(crate) struct Unsent(Slot);

impl RetryableBody {
    pub(crate) fn new(body: RequestBody) -> (RetryableBody, Unsent) {
        let end = body.is_end_stream();
        let hint = body.size_hint();
        let slot = Arc::new(Mutex::new(Some(body)));
        (
            RetryableBody {
                slot: slot.clone(),
                active: None,
                end,
                hint,
            },
            Unsent(slot),
        )
    }
}

impl Unsent {
    /// The body, if the client never started to send it.
    pub(crate) fn take(&self) -> Option<RequestBody> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl Body for RetryableBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.active.is_none() {
            this.active = this
                .slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
        }
        match this.active.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            // Taken for another attempt: this request was abandoned before it was sent.
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.active {
            Some(b) => b.is_end_stream(),
            None => self.end,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.active {
            Some(b) => b.size_hint(),
            None => self.hint,
        }
    }
}
