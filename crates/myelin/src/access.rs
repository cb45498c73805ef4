//! One access-log event and one set of request metrics per request, written when the response
//! body is finished (or abandoned), so bytes and duration are the real ones.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use myelin_listener::{BoxError, ConnInfo};
use myelin_router::ProxyBody;

/// Target of access-log events (filter on it, e.g. `RUST_LOG=myelin::access=off`).
pub const ACCESS_TARGET: &str = "myelin::access";

pub struct AccessRecord {
    pub enabled: bool,
    pub peer: IpAddr,
    pub host: Option<String>,
    pub method: http::Method,
    pub path: String,
    pub version: &'static str,
    pub status: u16,
    pub started: Instant,
    pub route: &'static str,
    pub upstream: Option<Arc<str>>,
    /// The upstream pool the route table chose.
    pub pool: Option<Arc<str>>,
    pub homeserver: Option<String>,
    pub listener: Arc<str>,
}

impl AccessRecord {
    pub fn new(
        req: &Request<Incoming>,
        conn: &ConnInfo,
        peer: IpAddr,
        host: Option<String>,
        started: Instant,
    ) -> Self {
        AccessRecord {
            enabled: true,
            peer,
            host,
            method: req.method().clone(),
            path: redact(req.uri().path_and_query().map_or("", |p| p.as_str())),
            version: if conn.h2 { "HTTP/2" } else { "HTTP/1.1" },
            status: 0,
            started,
            route: "",
            upstream: None,
            pool: None,
            homeserver: None,
            listener: conn.listener.clone(),
        }
    }
}

/// The path and query with `access_token` values hidden, bounded in length, no control characters.
pub fn redact(path_and_query: &str) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut out = myelin_router::paths::for_log(path);
    if let Some(q) = query {
        out.push('?');
        let parts: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k == "access_token" => format!("{k}=<redacted>"),
                _ => myelin_router::paths::for_log(kv),
            })
            .collect();
        out.push_str(&parts.join("&"));
    }
    out
}

pin_project_lite::pin_project! {
    /// The response body, counting what goes out; logs the request when dropped.
    pub struct LoggedBody {
        #[pin]
        inner: ProxyBody,
        bytes: u64,
        record: AccessRecord,
        complete: bool,
    }

    impl PinnedDrop for LoggedBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            finish(this.record, *this.bytes, *this.complete);
        }
    }
}

impl LoggedBody {
    pub fn new(inner: ProxyBody, record: AccessRecord) -> Self {
        let complete = inner.is_end_stream();
        LoggedBody {
            inner,
            bytes: 0,
            record,
            complete,
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let mut inner = this.inner;
        let polled = inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    *this.bytes += d.len() as u64;
                }
                if inner.is_end_stream() {
                    *this.complete = true;
                }
            }
            Poll::Ready(None) => *this.complete = true,
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

fn finish(r: &AccessRecord, bytes: u64, complete: bool) {
    let elapsed = r.started.elapsed();
    let homeserver = r.homeserver.clone().unwrap_or_default();
    let class = match r.status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!(
        "myelin_requests_total",
        "homeserver" => homeserver.clone(),
        "route" => r.route,
        "status_class" => class
    )
    .increment(1);
    metrics::histogram!("myelin_request_duration_seconds", "homeserver" => homeserver, "route" => r.route)
        .record(elapsed.as_secs_f64());
    if !r.enabled {
        return;
    }
    tracing::info!(
        target: ACCESS_TARGET,
        peer = %r.peer,
        host = r.host.as_deref().unwrap_or("-"),
        method = %r.method,
        path = %r.path,
        version = r.version,
        status = r.status,
        bytes,
        duration_ms = (elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        route = r.route,
        upstream = r.upstream.as_deref().unwrap_or("-"),
        pool = r.pool.as_deref().unwrap_or("-"),
        listener = %r.listener,
        complete,
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_tokens_are_redacted() {
        assert_eq!(
            redact("/_matrix/client/v3/sync?timeout=30000&access_token=syt_secret&since=s1"),
            "/_matrix/client/v3/sync?timeout=30000&access_token=<redacted>&since=s1"
        );
        assert_eq!(
            redact("/_matrix/client/versions"),
            "/_matrix/client/versions"
        );
        assert_eq!(redact("/x?access_token"), "/x?access_token");
    }
}
